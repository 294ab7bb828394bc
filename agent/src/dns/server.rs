//! The resolver's UDP and TCP servers on one address.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::answer::{answer, error_reply, Reply};
use super::table::SharedNameTable;
use super::{upstream, DnsError};

/// Time each upstream resolver gets to reply before the next one is tried. glibc's resolver
/// waits 5 s per try by default (`timeout` in resolv.conf), so with up to two upstreams the
/// reply arrives within one client try.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests handled at the same time; a UDP request beyond it is dropped and the client
/// retries.
const MAX_REQUESTS_IN_FLIGHT: usize = 256;
/// Largest DNS message over UDP, in bytes.
const MAX_UDP_MESSAGE_BYTES: usize = 4096;
/// Time a TCP client may stay idle between requests before the connection is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of one resolver.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Address and port the resolver listens on, UDP and TCP.
    pub listen: SocketAddr,
    /// Resolvers that names outside the table are forwarded to, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Time each upstream gets to reply.
    pub upstream_timeout: Duration,
}

/// A running resolver. Dropping it stops its servers.
#[derive(Debug)]
pub struct Resolver {
    listen: SocketAddr,
    tasks: JoinSet<()>,
}

/// State shared by every request handler.
#[derive(Debug)]
struct Shared {
    table: SharedNameTable,
    upstreams: Vec<SocketAddr>,
    upstream_timeout: Duration,
    in_flight: Arc<Semaphore>,
}

impl Resolver {
    /// Binds the UDP and TCP sockets on `config.listen` and starts serving from `table`.
    pub async fn start(config: ResolverConfig, table: SharedNameTable) -> Result<Resolver, DnsError> {
        let udp = UdpSocket::bind(config.listen)
            .await
            .map_err(|source| DnsError::BindUdp {
                address: config.listen,
                source,
            })?;
        let tcp = TcpListener::bind(config.listen)
            .await
            .map_err(|source| DnsError::BindTcp {
                address: config.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            table,
            upstreams: config.upstreams.clone(),
            upstream_timeout: config.upstream_timeout,
            in_flight: Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
        });

        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(Arc::new(udp), Arc::clone(&shared)));
        tasks.spawn(serve_tcp(tcp, shared));
        tracing::info!(listen = %config.listen, upstreams = ?config.upstreams, "DNS resolver started");
        Ok(Resolver {
            listen: config.listen,
            tasks,
        })
    }

    /// Returns the address the resolver listens on.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.tasks.abort_all();
        tracing::info!(listen = %self.listen, "DNS resolver stopped");
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buffer = vec![0; MAX_UDP_MESSAGE_BYTES];
    loop {
        let (length, client) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                // Errors such as ICMP errors for earlier replies concern one client only.
                tracing::debug!(%error, "DNS UDP receive failed");
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
            tracing::debug!(%client, "DNS request dropped because too many are in flight");
            continue;
        };
        let request = buffer[..length].to_vec();
        let socket = Arc::clone(&socket);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Some(reply) = handle(&request, &shared).await {
                if let Err(error) = socket.send_to(&reply, client).await {
                    tracing::debug!(%client, %error, "DNS UDP reply failed");
                }
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Such as EMFILE; waiting a little keeps the loop from spinning.
                tracing::warn!(%error, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, &shared).await {
                tracing::debug!(%client, %error, "DNS TCP connection ended");
            }
        });
    }
}

/// Serves the requests of one TCP connection, each framed with a two-byte length, until the
/// client closes it or stays idle for `TCP_IDLE_TIMEOUT`.
async fn serve_connection(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    loop {
        let Ok(length) = tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.read_u16()).await else {
            return Ok(());
        };
        let length = match length {
            Ok(length) => usize::from(length),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error),
        };
        let mut request = vec![0; length];
        stream.read_exact(&mut request).await?;
        let Some(reply) = handle(&request, shared).await else {
            return Ok(());
        };
        let Ok(reply_length) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        stream.write_u16(reply_length).await?;
        stream.write_all(&reply).await?;
    }
}

/// Returns the encoded reply to one encoded request, or `None` for a message that cannot be
/// decoded, which gets no reply.
async fn handle(request: &[u8], shared: &Shared) -> Option<Vec<u8>> {
    let message = match Message::from_vec(request) {
        Ok(message) => message,
        Err(error) => {
            tracing::debug!(%error, "undecodable DNS request ignored");
            return None;
        }
    };
    let reply = {
        // A panic while the lock was held cannot leave the table half written, because
        // `set_names` builds the new map before it replaces the old one.
        let table = shared.table.read().unwrap_or_else(PoisonError::into_inner);
        answer(&message, &table)
    };
    let reply = match reply {
        Reply::Local(reply) => reply,
        Reply::Forward => {
            match upstream::forward(request, &shared.upstreams, shared.upstream_timeout).await {
                Some(reply) => return Some(reply),
                None => {
                    let name = message.queries.first().map(|query| query.name.to_ascii());
                    tracing::debug!(?name, "no upstream resolver replied, so the reply is SERVFAIL");
                    error_reply(&message, ResponseCode::ServFail)
                }
            }
        }
    };
    match reply.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            tracing::warn!(%error, "failed to encode a DNS reply");
            None
        }
    }
}
