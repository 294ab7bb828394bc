//! Prometheus metrics of one controller, served as text on `--metrics-listen`.
//!
//! Gauges are read from Raft and the applied state at each scrape, so they cost nothing between
//! scrapes. The placement latency histogram is fed by [`TimedUp`], which wraps the `Client`
//! gRPC service and times every `Up` call this controller serves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use colex_proto as proto;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;

use crate::raft::RaftNode;
use crate::sessions::Sessions;
use crate::state::Desired;
use crate::view;

/// Path of the endpoint, as Prometheus scrapes it by default.
pub const METRICS_PATH: &str = "/metrics";
/// gRPC path of `Client.Up`, whose calls [`TimedUp`] times.
const UP_PATH: &str = "/colex.v1.Client/Up";
/// Upper bounds of the placement latency buckets, in seconds: 1 ms to 10 s.
const PLACEMENT_BUCKETS_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Silo instance states, as the `state` label of `colex_silo_instances` spells them. Every
/// state is exported, with 0 when no instance has it, so every series exists from the first scrape.
const SILO_STATES: [proto::SiloState; 7] = [
    proto::SiloState::Pending,
    proto::SiloState::Starting,
    proto::SiloState::Up,
    proto::SiloState::Exited,
    proto::SiloState::Failed,
    proto::SiloState::Stopping,
    proto::SiloState::Removed,
];

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("failed to listen for metrics on {addr}; pick a free address with --metrics-listen")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to encode the metrics as Prometheus text")]
    Encode(#[source] std::fmt::Error),
}

/// `state` label of the host and silo instance gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

/// The metric families of one controller.
pub struct Metrics {
    registry: Registry,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    hosts: Family<StateLabel, Gauge>,
    silo_instances: Family<StateLabel, Gauge>,
    pending_instances: Gauge,
    placement_latency: Histogram,
    file_contents: Gauge,
    file_content_bytes: Gauge,
    runtime_stalls: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family, with `colex_` as name prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("colex");
        let metrics = Metrics {
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            hosts: Family::default(),
            silo_instances: Family::default(),
            pending_instances: Gauge::default(),
            placement_latency: Histogram::new(PLACEMENT_BUCKETS_SECONDS),
            file_contents: Gauge::default(),
            file_content_bytes: Gauge::default(),
            runtime_stalls: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("raft_term", "Current Raft term of this controller", metrics.raft_term.clone());
        registry.register(
            "raft_leader",
            "1 while this controller is the Raft leader, else 0",
            metrics.raft_leader.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Index of the last Raft log entry this controller knows to be committed",
            metrics.raft_commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Index of the last Raft log entry applied to this controller's state",
            metrics.raft_applied_index.clone(),
        );
        registry.register(
            "hosts",
            "Agent hosts by state (up, down, draining; a draining host also counts as up or down), exported by the Raft leader only because only it holds the agents' sessions",
            metrics.hosts.clone(),
        );
        registry.register(
            "silo_instances",
            "Silo instances in the applied state by state, as colex-cli list shows them",
            metrics.silo_instances.clone(),
        );
        registry.register(
            "pending_instances",
            "Silo instances to run that no host fits yet",
            metrics.pending_instances.clone(),
        );
        registry.register(
            "placement_latency_seconds",
            "Time from receiving an Up call to its response, which follows the commit of the placements",
            metrics.placement_latency.clone(),
        );
        registry.register(
            "file_contents",
            "Distinct file contents in the applied state, each stored once however many silos use it",
            metrics.file_contents.clone(),
        );
        registry.register(
            "file_content_bytes",
            "Sum of the sizes of the distinct file contents in the applied state, in bytes",
            metrics.file_content_bytes.clone(),
        );
        registry.register(
            "runtime_stalls",
            "Times the async runtime's workers were busy for more than 50 ms before a ready task ran, which delays Raft heartbeats",
            metrics.runtime_stalls.clone(),
        );
        Metrics { registry, ..metrics }
    }

    /// Returns the counter that the runtime's stall watch adds to.
    pub fn runtime_stalls(&self) -> Counter {
        self.runtime_stalls.clone()
    }

    /// Records the duration of one successful `Up` call.
    fn observe_placement(&self, seconds: f64) {
        self.placement_latency.observe(seconds);
    }

    /// Reads Raft and the applied state into the gauges.
    async fn refresh(&self, node: &RaftNode, sessions: &Sessions) {
        let raft = node.raft.metrics().borrow().clone();
        let leads = raft.current_leader == Some(node.id);
        self.raft_term.set(to_gauge(raft.current_term));
        self.raft_leader.set(i64::from(leads));
        let applied = raft.last_applied.map_or(0, |log_id| log_id.index);
        self.raft_applied_index.set(to_gauge(applied));
        // openraft 0.9.25's metrics lack the commit index, so it is read from the Raft state.
        // When Raft has stopped, the applied index is the closest value left.
        let committed = node
            .raft
            .with_raft_state(|state| state.committed.map_or(0, |log_id| log_id.index))
            .await
            .unwrap_or(applied);
        self.raft_commit_index.set(to_gauge(committed));

        let live = sessions.live_hosts();
        let state = node.state.read().await;
        self.hosts.clear();
        if leads {
            let mut up = 0;
            let mut draining = 0;
            for host in state.hosts.values() {
                up += i64::from(live.contains(&host.name));
                draining += i64::from(host.draining);
            }
            let total = i64::try_from(state.hosts.len()).unwrap_or(i64::MAX);
            self.set_state(&self.hosts, "up", up);
            self.set_state(&self.hosts, "down", total - up);
            self.set_state(&self.hosts, "draining", draining);
        }

        let mut by_state = [0_i64; SILO_STATES.len()];
        let mut pending = 0;
        for record in state.silos.values() {
            let listed_state = view::silo_state(record);
            if let Some(position) = SILO_STATES.iter().position(|candidate| *candidate == listed_state) {
                by_state[position] += 1;
            }
            pending += i64::from(record.desired == Desired::Run && record.is_pending());
        }
        for (silo_state, count) in SILO_STATES.iter().zip(by_state) {
            self.set_state(&self.silo_instances, &silo_state.label().to_lowercase(), count);
        }
        self.pending_instances.set(pending);

        let (contents, content_bytes) = state.file_content_totals();
        self.file_contents.set(i64::try_from(contents).unwrap_or(i64::MAX));
        self.file_content_bytes.set(to_gauge(content_bytes));
    }

    fn set_state(&self, family: &Family<StateLabel, Gauge>, state: &str, value: i64) {
        family
            .get_or_create(&StateLabel {
                state: state.to_owned(),
            })
            .set(value);
    }

    /// Returns every family in the Prometheus text format 0.0.4.
    async fn render(&self, node: &RaftNode, sessions: &Sessions) -> Result<String, MetricsError> {
        self.refresh(node, sessions).await;
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry).map_err(MetricsError::Encode)?;
        Ok(text)
    }
}

/// Converts a Raft index or term to a gauge value; values above `i64::MAX` do not occur.
fn to_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Binds `addr` for the metrics endpoint, so a taken port fails at start.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` over HTTP/1.1 on `listener` until the runtime stops. A scrape
/// refreshes the gauges; scrapes run one at a time, so two never interleave their refreshes.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, node: RaftNode, sessions: Sessions) {
    let scrape_lock = Arc::new(Mutex::new(()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a metrics connection failed");
                continue;
            }
        };
        // The response is written in small pieces; Nagle's algorithm would hold the last one.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %error, "setting TCP_NODELAY on a metrics connection failed");
        }
        let metrics = Arc::clone(&metrics);
        let node = node.clone();
        let sessions = sessions.clone();
        let scrape_lock = Arc::clone(&scrape_lock);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = Arc::clone(&metrics);
                let node = node.clone();
                let sessions = sessions.clone();
                let scrape_lock = Arc::clone(&scrape_lock);
                async move {
                    let _scrape = scrape_lock.lock().await;
                    Ok::<_, Infallible>(respond(&request, &metrics, &node, &sessions).await)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(%peer, %error, "metrics connection ended with an error");
            }
        });
    }
}

/// Builds the response to one HTTP request of the metrics endpoint.
async fn respond(
    request: &http::Request<hyper::body::Incoming>,
    metrics: &Metrics,
    node: &RaftNode,
    sessions: &Sessions,
) -> http::Response<Full<Bytes>> {
    if request.uri().path() != METRICS_PATH {
        return plain(http::StatusCode::NOT_FOUND, format!("not found; metrics are at {METRICS_PATH}\n"));
    }
    if request.method() != http::Method::GET && request.method() != http::Method::HEAD {
        return plain(http::StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are allowed\n".to_owned());
    }
    match metrics.render(node, sessions).await {
        Ok(text) => {
            let mut response = http::Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "rendering the metrics failed");
            plain(http::StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"))
        }
    }
}

fn plain(status: http::StatusCode, body: String) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// A gRPC service wrapper that records the duration of each successful `Client.Up` call in the
/// placement latency histogram and passes every call through unchanged.
///
/// `Up` returns after the placements are committed, so its duration is the time from receipt
/// to commit, plus the first step of a rolling replacement when the spec changed. A follower
/// forwards `Up` to the leader, so both record the call: the follower's figure includes the
/// forwarding.
#[derive(Clone)]
pub struct TimedUp<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> TimedUp<S> {
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S: NamedService> NamedService for TimedUp<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for TimedUp<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let timed = request.uri().path() == UP_PATH;
        let started = Instant::now();
        let call = self.inner.call(request);
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let response = call.await?;
            // A failed call returns its grpc-status in the headers (a trailers-only
            // response). A successful one carries it in the trailers, so the headers lack it.
            let failed = response
                .headers()
                .get("grpc-status")
                .is_some_and(|status| status.as_bytes() != b"0");
            if timed && !failed {
                metrics.observe_placement(started.elapsed().as_secs_f64());
            }
            Ok(response)
        })
    }
}
