//! The AppendEntries link: one framed connection from a leader to each follower, beside gRPC on
//! the controller's port.
//!
//! Every write crosses two AppendEntries hops, and on the gRPC stream each message passes
//! between the HTTP/2 connection's task and the stream's task on both controllers. On this link
//! openraft's replication task writes each request to the socket itself, and on the follower one
//! task reads the socket, hands the request to Raft and writes the response.
//!
//! A connection is a link when it starts with [`HELLO`] (plain) or negotiates the ALPN protocol
//! [`ALPN`] (TLS). The listener routes every other connection to the gRPC server. The follower
//! replies with [`HELLO`] once it accepted the link, or with [`DENIED`] and a reason. A peer that
//! replies anything else runs an older version, and the leader uses the gRPC stream instead.
//!
//! After the hello each message is a frame: 4 bytes of big-endian length, then that many bytes
//! of JSON, the same JSON as the gRPC payloads (see [`super::network`]). One request is in flight
//! at a time: the leader sends the next only after the response to the last.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use colex_proto::MAX_MESSAGE_BYTES;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{watch, RwLock};
use tokio_rustls::server::TlsStream;

use super::TypeConfig;
use crate::applied::AppliedState;
use crate::tls_server::ChainVerifier;

/// First bytes a leader sends on a plain link, and the follower's reply when it accepts.
pub const HELLO: &[u8] = b"colex-raft-link/1\n";
/// Start of the follower's reply when it rejects the link. A reason and a newline follow.
pub const DENIED: &[u8] = b"colex-raft-link/1 denied: ";
/// ALPN protocol of a link under TLS.
pub const ALPN: &[u8] = b"colex-raft-link/1";
/// Maximum length of the hello reply read, in bytes, reason included.
const MAX_ANSWER_BYTES: u64 = 1024;
/// Bytes read from the socket at once, so a frame's header and body usually arrive in one read.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Time a connection gets to show whether it is a link, before it goes to the gRPC server.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between looks at a connection whose first bytes so far match [`HELLO`].
const SNIFF_PAUSE: Duration = Duration::from_millis(1);

/// A byte stream a link runs on: TCP, or TLS over TCP.
pub trait LinkIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> LinkIo for T {}

/// Errors of a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the peer does not offer the AppendEntries link")]
    Unsupported,
    #[error("the peer rejected the AppendEntries link: {0}")]
    Denied(String),
    #[error("frame of {0} bytes is larger than the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge(u64),
    #[error("the peer closed the AppendEntries link")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one frame. `Ok(None)` when the peer closed the connection between frames.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Vec<u8>>, LinkError> {
    let mut header = [0_u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let len = u32::from_be_bytes(header);
    let len = usize::try_from(len).map_err(|_| LinkError::TooLarge(u64::from(len)))?;
    if len > MAX_MESSAGE_BYTES {
        return Err(LinkError::TooLarge(len as u64));
    }
    let mut body = vec![0_u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Writes `body` as one frame, header and body in one write.
async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) -> Result<(), LinkError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(LinkError::TooLarge(body.len() as u64));
    }
    let len = u32::try_from(body.len()).map_err(|_| LinkError::TooLarge(body.len() as u64))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Tells whether `error` means that the peer closed or reset the connection.
fn closed_by_peer(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
    )
}

/// The leader's end of a link to one follower.
pub struct Link {
    io: BufReader<Box<dyn LinkIo>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl Link {
    /// Opens a link on `io`, a fresh connection to the follower. Under TLS the caller has
    /// already negotiated [`ALPN`]. On plain TCP this sends [`HELLO`] first.
    pub async fn open(io: Box<dyn LinkIo>, plain: bool) -> Result<Link, LinkError> {
        let mut io = BufReader::with_capacity(READ_BUFFER_BYTES, io);
        let mut reply = Vec::new();
        let hello = async {
            if plain {
                io.get_mut().write_all(HELLO).await?;
                io.get_mut().flush().await?;
            }
            (&mut io).take(MAX_ANSWER_BYTES).read_until(b'\n', &mut reply).await
        };
        match hello.await {
            Ok(_) => {}
            // An older controller's HTTP/2 server closes the connection at the wrong preface,
            // and may reset it. A connection that fails in this instant for another reason
            // costs only a while on the gRPC stream.
            Err(error) if closed_by_peer(&error) => return Err(LinkError::Unsupported),
            Err(error) => return Err(error.into()),
        }
        if reply == HELLO {
            return Ok(Link { io });
        }
        match reply.strip_prefix(DENIED) {
            Some(reason) => Err(LinkError::Denied(String::from_utf8_lossy(reason).trim_end().to_owned())),
            None => Err(LinkError::Unsupported),
        }
    }

    /// Sends one request and returns the response's bytes.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, LinkError> {
        write_frame(self.io.get_mut(), request).await?;
        read_frame(&mut self.io).await?.ok_or(LinkError::Closed)
    }
}

/// The gRPC method whose callers may open a link under TLS: the link carries that stream's
/// messages, so it admits the same controllers.
const LINK_METHOD: &str = "/colex.v1.Raft/AppendEntriesStream";

/// State of the follower's end of links: the Raft that handles the requests, the signal that
/// ends every link when the server stops, and under TLS what checks a peer's certificate.
#[derive(Clone)]
pub struct LinkServer {
    raft: openraft::Raft<TypeConfig>,
    stopping: watch::Receiver<bool>,
    authorization: Option<(ChainVerifier, Arc<RwLock<AppliedState>>)>,
}

impl LinkServer {
    pub fn new(raft: openraft::Raft<TypeConfig>, stopping: watch::Receiver<bool>) -> LinkServer {
        LinkServer {
            raft,
            stopping,
            authorization: None,
        }
    }

    /// Checks the certificate of every TLS link with `verifier` and the revocation list in
    /// `state`, as [`crate::auth`] does for gRPC calls.
    pub fn with_authorization(mut self, verifier: ChainVerifier, state: Arc<RwLock<AppliedState>>) -> LinkServer {
        self.authorization = Some((verifier, state));
        self
    }

    /// Serves a TLS connection that negotiated [`ALPN`], once its certificate passes the checks
    /// of the gRPC AppendEntries stream.
    pub async fn serve_tls(self, tls: TlsStream<TcpStream>, remote: SocketAddr) {
        let decision = match &self.authorization {
            Some((verifier, state)) => {
                let certificates = tls.get_ref().1.peer_certificates();
                let state = state.read().await;
                crate::auth::authorize(LINK_METHOD, certificates, verifier, &state, crate::auth::now_unix())
                    .map(|_| ())
                    .map_err(|status| status.message().to_owned())
            }
            None => Err("this controller has no authority to check certificates with".to_owned()),
        };
        match decision {
            Ok(()) => self.serve(Box::new(tls), remote).await,
            Err(reason) => {
                tracing::warn!(%remote, %reason, "rejected an AppendEntries link");
                LinkServer::deny(Box::new(tls), &reason).await;
            }
        }
    }

    /// Serves one accepted link until the leader closes it or the server stops. The caller has
    /// already authorized the peer (TLS) or read its [`HELLO`] (plain TCP).
    pub async fn serve(self, io: Box<dyn LinkIo>, remote: SocketAddr) {
        tracing::info!(%remote, "AppendEntries link accepted");
        match self.serve_frames(io).await {
            Ok(()) => tracing::info!(%remote, "AppendEntries link closed"),
            Err(error) => tracing::warn!(%remote, %error, "AppendEntries link failed; the leader opens a new one"),
        }
    }

    async fn serve_frames(mut self, io: Box<dyn LinkIo>) -> Result<(), LinkError> {
        let mut io = BufReader::with_capacity(READ_BUFFER_BYTES, io);
        io.get_mut().write_all(HELLO).await?;
        io.get_mut().flush().await?;
        loop {
            // Stopping comes first: a request that arrived meanwhile is left unanswered, and
            // the leader sends it again on another connection.
            let next = tokio::select! {
                biased;
                Ok(_) = self.stopping.wait_for(|stopping| *stopping) => return Ok(()),
                next = read_frame(&mut io) => next?,
            };
            let Some(request) = next else {
                return Ok(());
            };
            let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> = serde_json::from_slice(&request)
                .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("invalid AppendEntries request: {error}")))?;
            let result = self.raft.append_entries(rpc).await;
            let response = serde_json::to_vec(&result)
                .map_err(|error| std::io::Error::other(format!("cannot encode the AppendEntries response: {error}")))?;
            write_frame(io.get_mut(), &response).await?;
        }
    }

    /// Rejects a link with `reason`, for a peer that failed authorization.
    async fn deny(mut io: Box<dyn LinkIo>, reason: &str) {
        let mut reply = DENIED.to_vec();
        reply.extend_from_slice(reason.replace('\n', " ").as_bytes());
        reply.push(b'\n');
        let _ = io.write_all(&reply).await;
        let _ = io.shutdown().await;
    }
}

/// Returns whether the plain connection `stream` starts with [`HELLO`], without reading from it,
/// so a connection that does not goes to the gRPC server untouched.
pub async fn starts_with_hello(stream: &TcpStream) -> bool {
    let look = async {
        let mut seen = [0_u8; HELLO.len()];
        loop {
            let read = stream.peek(&mut seen).await?;
            // A closed connection or other bytes go to the gRPC server.
            if read == 0 || seen[..read] != HELLO[..read] {
                return Ok::<bool, std::io::Error>(false);
            }
            if read == HELLO.len() {
                return Ok(true);
            }
            // A prefix of the hello so far: peek again once more bytes may have arrived.
            tokio::time::sleep(SNIFF_PAUSE).await;
        }
    };
    matches!(tokio::time::timeout(SNIFF_TIMEOUT, look).await, Ok(Ok(true)))
}

/// Reads the [`HELLO`] that [`starts_with_hello`] saw.
pub async fn consume_hello(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut hello = [0_u8; HELLO.len()];
    stream.read_exact(&mut hello).await.map(|_| ())
}

/// Connections waiting for the gRPC server to take them.
pub const ACCEPTED_QUEUE_LEN: usize = 64;

/// Waits for the next connection on `listener`, with TCP_NODELAY set. Failed accepts are
/// logged and retried.
pub async fn accept(listener: &tokio::net::TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and similar; the next accept may succeed.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // With Nagle's algorithm on, a small response frame waits for the peer's delayed ACK,
        // about 40 ms on Linux.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::warn!(%error, %remote, "cannot set TCP_NODELAY");
        }
        return (stream, remote);
    }
}

/// Accepts plain connections on `listener`, serves the links among them, and yields every other
/// connection to the gRPC server.
pub fn plain_incoming(
    listener: tokio::net::TcpListener,
    links: LinkServer,
) -> tokio_stream::wrappers::ReceiverStream<Result<TcpStream, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(ACCEPTED_QUEUE_LEN);
    tokio::spawn(async move {
        loop {
            let (mut stream, remote) = accept(&listener).await;
            let links = links.clone();
            let queue = sender.clone();
            tokio::spawn(async move {
                if !starts_with_hello(&stream).await {
                    // The server has stopped when the receiver is gone.
                    let _ = queue.send(Ok(stream)).await;
                    return;
                }
                match consume_hello(&mut stream).await {
                    Ok(()) => links.serve(Box::new(stream), remote).await,
                    Err(error) => tracing::warn!(%error, %remote, "AppendEntries link closed during its hello"),
                }
            });
            if sender.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut near, mut far) = tokio::io::duplex(1024);
        write_frame(&mut near, b"{\"a\":1}").await.expect("write");
        write_frame(&mut near, b"").await.expect("write empty");
        drop(near);
        assert_eq!(read_frame(&mut far).await.expect("read"), Some(b"{\"a\":1}".to_vec()));
        assert_eq!(read_frame(&mut far).await.expect("read empty"), Some(Vec::new()));
        assert_eq!(read_frame(&mut far).await.expect("read end"), None);
    }

    #[tokio::test]
    async fn oversized_frame_rejected_before_body() {
        let (mut near, mut far) = tokio::io::duplex(64);
        let len = u32::try_from(MAX_MESSAGE_BYTES + 1).expect("limit fits 4 bytes");
        near.write_all(&len.to_be_bytes()).await.expect("write header");
        let error = read_frame(&mut far).await.expect_err("too large");
        assert!(matches!(error, LinkError::TooLarge(size) if size == MAX_MESSAGE_BYTES as u64 + 1), "{error}");
    }

    #[tokio::test]
    async fn other_replies_mean_no_link() {
        // An HTTP/2 server replies to a wrong preface with a GOAWAY frame or closes.
        for reply in [&b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"[..], b""] {
            let (near, mut far) = tokio::io::duplex(1024);
            let peer = tokio::spawn(async move {
                let mut hello = [0_u8; HELLO.len()];
                far.read_exact(&mut hello).await.expect("hello");
                far.write_all(reply).await.expect("reply");
            });
            let error = Link::open(Box::new(near), true).await.expect_err("no link");
            assert!(matches!(error, LinkError::Unsupported), "{error}");
            peer.await.expect("peer task");
        }
        // A peer that closes before reading the hello.
        let (near, far) = tokio::io::duplex(1024);
        drop(far);
        let error = Link::open(Box::new(near), true).await.expect_err("no link");
        assert!(matches!(error, LinkError::Unsupported), "{error}");
    }

    #[tokio::test]
    async fn denied_reply_carries_the_reason() {
        let (near, far) = tokio::io::duplex(1024);
        LinkServer::deny(Box::new(far), "agent host-a has role agent\nand more").await;
        // Denials come only under TLS, where the leader sends no hello.
        let error = Link::open(Box::new(near), false).await.expect_err("denied");
        match error {
            LinkError::Denied(reason) => assert_eq!(reason, "agent host-a has role agent and more"),
            other => panic!("expected a denial, got {other}"),
        }
    }
}
