//! The metadata service's HTTP/1.1 server on one address.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::counters::read_silo_traffic;
use super::directory::SharedDirectory;
use super::reply::{self, ErrorBody, Listing};
use super::routes::{self, status, Answer, Caller, Failure};
use super::MetadataError;
use crate::runtime::Runtime;

/// Connections served at the same time; a connection beyond it is closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one connection may stay open, keep-alive requests included.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of one metadata service.
#[derive(Debug, Clone)]
pub struct MetadataConfig {
    /// Address and TCP port to listen on: the bridge address and `metadata_port`.
    pub listen: SocketAddr,
    /// This host's name, which distinguishes the silos of this host from those of other hosts.
    pub host_name: String,
}

/// A running metadata service. Dropping it stops the server. Open connections end at the latest
/// after `CONNECTION_TIMEOUT`.
#[derive(Debug)]
pub struct MetadataServer {
    listen: SocketAddr,
    task: JoinHandle<()>,
}

/// State shared by every request.
#[derive(Debug)]
struct Shared {
    host_name: String,
    directory: SharedDirectory,
    runtime: Runtime,
}

/// A running silo of this host, found by its address.
#[derive(Debug, Clone)]
struct LocalSilo {
    silo_id: String,
    host_veth: String,
}

impl MetadataServer {
    /// Binds `config.listen` and starts serving from `directory` and the silos of `runtime`.
    pub async fn start(
        config: MetadataConfig,
        directory: SharedDirectory,
        runtime: Runtime,
    ) -> Result<MetadataServer, MetadataError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| MetadataError::Bind {
                address: config.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            host_name: config.host_name,
            directory,
            runtime,
        });
        let task = tokio::spawn(serve(listener, shared));
        tracing::info!(listen = %config.listen, "metadata service started");
        Ok(MetadataServer {
            listen: config.listen,
            task,
        })
    }

    /// Returns the address the service listens on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.task.abort();
        tracing::info!(listen = %self.listen, "metadata service stopped");
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Such as EMFILE; waiting a little keeps the loop from spinning.
                tracing::warn!(%error, "metadata service accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::debug!(%client, "metadata connection closed because too many are open");
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(request, client.ip(), &shared).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%client, %error, "metadata connection ended with an error"),
                Err(_) => tracing::debug!(%client, "metadata connection closed after its time limit"),
            }
            drop(permit);
        });
    }
}

/// Serves one request from `source`.
async fn handle(request: Request<Incoming>, source: IpAddr, shared: &Shared) -> Response<Full<Bytes>> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let (status, body) = match reply(&method, &path, source, shared).await {
        Ok(body) => (status::OK, body),
        Err(failure) => {
            tracing::debug!(%source, %method, %path, status = failure.status, message = %failure.message, "metadata request rejected");
            (failure.status, to_json(&ErrorBody { error: failure.message }))
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Returns the JSON body for a request, or why it fails.
async fn reply(method: &str, path: &str, source: IpAddr, shared: &Shared) -> Result<String, Failure> {
    let route = routes::route(method, path)?;
    let local = local_silos(&shared.runtime);
    let caller = local.get(&source).map(|silo| Caller {
        silo_id: silo.silo_id.clone(),
    });
    let answer = {
        let directory = shared.directory.read().unwrap_or_else(PoisonError::into_inner);
        routes::answer(&route, source, caller.as_ref(), &directory)?
    };

    match answer {
        Answer::Own(instance) => {
            let started_at = started_at_unix(shared, &instance).await;
            Ok(to_json(&reply::instance_metadata(&instance, started_at)))
        }
        Answer::List(instances) => Ok(to_json(&Listing {
            silos: instances.iter().map(reply::list_entry).collect(),
        })),
        Answer::Others { instances, single } => {
            let local_veths: HashMap<&str, &str> = local
                .values()
                .map(|silo| (silo.silo_id.as_str(), silo.host_veth.as_str()))
                .collect();
            let mut described = Vec::with_capacity(instances.len());
            for instance in &instances {
                let started_at = started_at_unix(shared, instance).await;
                let mut metadata = reply::instance_metadata(instance, started_at);
                let local_veth = local_veths.get(instance.id.as_str()).filter(|_| instance.host == shared.host_name);
                let traffic = match local_veth {
                    Some(veth) => read_silo_traffic(veth).await,
                    None => None,
                };
                metadata.network = Some(match traffic {
                    Some(traffic) => reply::local_counters(traffic, unix_seconds(SystemTime::now()).unwrap_or(0)),
                    None => reply::relayed_counters(instance),
                });
                described.push(metadata);
            }
            match described.first() {
                Some(only) if single => Ok(to_json(only)),
                _ => Ok(to_json(&Listing { silos: described })),
            }
        }
    }
}

/// Returns the running silos of this host by address. A silo being created or removed is
/// missing, and so is one whose program has exited.
fn local_silos(runtime: &Runtime) -> HashMap<IpAddr, LocalSilo> {
    let mut silos = HashMap::new();
    for silo in runtime.silos().into_iter().filter(|silo| silo.exit_code.is_none()) {
        for interface in &silo.interfaces {
            if let Ok(address) = interface.address.parse::<IpAddr>() {
                silos.insert(
                    address,
                    LocalSilo {
                        silo_id: silo.silo_id.clone(),
                        host_veth: interface.name.clone(),
                    },
                );
            }
        }
    }
    silos
}

/// Returns when `instance`'s current PID 1 started, in Unix seconds: read on this host for its
/// own silos, else from the controller's list.
async fn started_at_unix(shared: &Shared, instance: &colex_proto::SiloName) -> Option<u64> {
    if instance.host == shared.host_name {
        if let Ok(stats) = shared.runtime.stats(&instance.id).await {
            if let Some(started_at) = stats.started_at.and_then(unix_seconds) {
                return Some(started_at);
            }
        }
    }
    instance.started_at_unix_ms.map(|millis| millis / 1000)
}

fn unix_seconds(time: SystemTime) -> Option<u64> {
    time.duration_since(SystemTime::UNIX_EPOCH).ok().map(|elapsed| elapsed.as_secs())
}

/// Encodes `value` as one line of JSON with a trailing newline, so shell clients print it whole.
fn to_json<T: Serialize>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(mut json) => {
            json.push('\n');
            json
        }
        // Only maps with non-string keys fail to encode, and the bodies have none.
        Err(error) => format!("{{\"error\":\"failed to encode the reply: {error}\"}}\n"),
    }
}
