//! The client side of the gRPC `Raft` service: how this controller sends Raft RPCs to its peers.
//!
//! Each request and response travels as the JSON encoding of the openraft type inside a
//! `RaftPayload`. The response payload is the JSON of the `Result` that the peer's
//! `openraft::Raft` method returned, so a peer's Raft error arrives as
//! [`RPCError::RemoteError`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use colex_proto::raft_client::RaftClient;
use colex_proto::{RaftPayload, MAX_MESSAGE_BYTES};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::link::{Link, LinkError};
use super::log_sync::LogSync;
use super::{Node, NodeId, TypeConfig};

/// Time allowed for the TCP (and later TLS) connection to a peer. openraft sends each vote
/// request on a task of its own, so a peer that is slow to connect delays only its own vote.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Time until a leader tries the AppendEntries link again to a peer that did not offer it,
/// since the peer may have been upgraded meanwhile.
const LINK_RETRY_INTERVAL: Duration = Duration::from_secs(60);
/// Idle AppendEntries links kept per peer: one for replication and a few for the read
/// barriers' heartbeats that may run beside it.
const IDLE_LINKS_PER_PEER: usize = 4;

/// Errors of a Raft RPC to a peer, before they are wrapped in openraft's `RPCError`.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("invalid address {addr:?} for raft peer {target}")]
    InvalidAddress {
        target: NodeId,
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("failed to encode {rpc} request for raft peer {target} as JSON")]
    Encode {
        rpc: &'static str,
        target: NodeId,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to decode {rpc} response from raft peer {target} at {addr}")]
    Decode {
        rpc: &'static str,
        target: NodeId,
        addr: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{rpc} to raft peer {target} at {addr} failed")]
    Status {
        rpc: &'static str,
        target: NodeId,
        addr: String,
        #[source]
        source: tonic::Status,
    },
}

/// Creates the [`PeerNetwork`] clients that openraft requests. It keeps one lazily connected
/// channel per peer, so heartbeats, votes and replication share one HTTP/2 connection.
#[derive(Debug, Default)]
pub struct NetworkFactory {
    channels: HashMap<NodeId, PeerChannel>,
    /// The durable part of this controller's log, when it reports its appends as leader
    /// before their sync.
    log_sync: Option<LogSync>,
}

/// The channel to one peer, or why none could be built from its address, and the peer's idle
/// AppendEntries links.
#[derive(Debug, Clone)]
struct PeerChannel {
    addr: String,
    channel: Result<Channel, String>,
    links: Arc<Mutex<PeerLinks>>,
}

/// The AppendEntries links to one peer that no call uses, shared by all clients of the peer:
/// openraft makes a new client for each read barrier's heartbeats, and a new link costs a TCP
/// connection and, under TLS, a handshake.
#[derive(Debug, Default)]
struct PeerLinks {
    idle: Vec<Link>,
    /// Set when the peer did not offer the link (an older version): until then its
    /// AppendEntries go on the gRPC stream.
    retry_at: Option<Instant>,
}

impl PeerLinks {
    fn lock(links: &Mutex<PeerLinks>) -> MutexGuard<'_, PeerLinks> {
        // Nothing here can be left half-changed by a panic.
        links.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl NetworkFactory {
    pub fn new() -> NetworkFactory {
        NetworkFactory::default()
    }

    /// Tells followers no commit index beyond the entries `log_sync` reports durable, so no
    /// follower applies an entry before the leader has synced it; see `log_sync`.
    pub fn with_log_sync(mut self, log_sync: LogSync) -> NetworkFactory {
        self.log_sync = Some(log_sync);
        self
    }

    /// Returns the channel to `target`, making a new one when the peer is new or its address
    /// changed in the membership.
    fn channel(&mut self, target: NodeId, addr: &str) -> PeerChannel {
        if let Some(known) = self.channels.get(&target) {
            if known.addr == addr {
                return known.clone();
            }
        }
        let channel = connect_lazy(addr).map_err(|source| {
            let error = PeerError::InvalidAddress {
                target,
                addr: addr.to_owned(),
                source,
            };
            tracing::warn!(%error, "cannot build a channel to raft peer");
            error.to_string()
        });
        let peer = PeerChannel {
            addr: addr.to_owned(),
            channel,
            links: Arc::default(),
        };
        self.channels.insert(target, peer.clone());
        peer
    }
}

/// Builds a channel that connects on first use and reconnects after a failure.
fn connect_lazy(addr: &str) -> Result<Channel, tonic::transport::Error> {
    // Mutual TLS once the controller has its certificate; plain HTTP/2 under --insecure.
    let endpoint = crate::tls::peer_endpoint(addr)?
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerNetwork {
        let peer = self.channel(target, &node.addr);
        let client = peer.channel.map(|channel| {
            RaftClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        });
        PeerNetwork {
            target,
            addr: peer.addr,
            client,
            log_sync: self.log_sync.clone(),
            links: peer.links,
            stream: None,
            stream_unsupported: false,
        }
    }
}

/// Tells whether a TLS handshake failed because the peer offers no link, which an older
/// controller reports with the `no_application_protocol` alert.
fn no_common_protocol(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|error| matches!(error, rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)))
}

/// The Raft RPCs of the gRPC service.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "AppendEntries",
            Rpc::Vote => "Vote",
            Rpc::InstallSnapshot => "InstallSnapshot",
        }
    }
}

/// The client openraft uses to send RPCs to one peer.
#[derive(Debug)]
pub struct PeerNetwork {
    target: NodeId,
    addr: String,
    /// The client, or the message of the error that prevented building its channel.
    client: Result<RaftClient<Channel>, String>,
    log_sync: Option<LogSync>,
    /// The peer's idle AppendEntries links (see [`super::link`]). Like the stream below, a call
    /// takes one out and puts it back after the response.
    links: Arc<Mutex<PeerLinks>>,
    /// The AppendEntries stream to the peer, open between calls. A call takes it out and puts
    /// it back after its response arrives. A call that fails or is dropped halfway therefore
    /// leaves no stream whose next response belongs to an older request.
    stream: Option<AppendStream>,
    /// Set once the peer returned UNIMPLEMENTED for the stream (a controller of an older
    /// version). Its AppendEntries then go as single calls.
    stream_unsupported: bool,
}

/// An open `AppendEntriesStream` call: requests go out on `requests`, and each response comes
/// back on `responses` before the next request is sent.
#[derive(Debug)]
struct AppendStream {
    requests: mpsc::Sender<RaftPayload>,
    responses: tonic::Streaming<RaftPayload>,
}

/// Failure of an AppendEntries on the stream.
enum StreamFailure {
    /// The peer does not offer the stream, so the caller falls back to single calls.
    Unsupported,
    Rpc(RPCError<NodeId, Node, RaftError<NodeId>>),
}

impl PeerNetwork {
    /// Sends `request` as `rpc` and decodes the peer's `Result`.
    ///
    /// A peer that cannot be reached (no channel, or gRPC status `UNAVAILABLE`, which tonic
    /// returns when the connection fails) is reported as [`Unreachable`], so openraft backs off
    /// before the next try instead of logging every failed heartbeat. Every other failure is a
    /// [`NetworkError`].
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &self.client {
            Ok(client) => client,
            Err(message) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(message.clone()),
                )))
            }
        };
        let mut client = client.clone();

        let data = self.encode(rpc, request)?;
        let mut grpc_request = tonic::Request::new(RaftPayload { data });
        // Tells the peer when openraft stops waiting, so the peer can drop the work too.
        grpc_request.set_timeout(option.hard_ttl());

        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(grpc_request).await,
            Rpc::Vote => client.vote(grpc_request).await,
            Rpc::InstallSnapshot => client.install_snapshot(grpc_request).await,
        };
        let payload = reply
            .map_err(|status| self.status_error(rpc, status))?
            .into_inner();
        self.decode(rpc, &payload)
    }

    /// Sends `request` on the AppendEntries stream, opening one when none is open, and waits
    /// for its response until openraft's hard deadline.
    async fn append_on_stream(
        &mut self,
        request: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, StreamFailure> {
        let rpc = Rpc::AppendEntries;
        let data = self.encode(rpc, request).map_err(StreamFailure::Rpc)?;
        let open = self.stream.take();
        let exchange = async {
            let mut stream = match open {
                Some(stream) => stream,
                None => self.open_stream().await?,
            };
            if stream.requests.send(RaftPayload { data }).await.is_err() {
                return Err(StreamFailure::Rpc(self.stream_ended()));
            }
            match stream.responses.message().await {
                Ok(Some(payload)) => Ok((stream, payload)),
                Ok(None) => Err(StreamFailure::Rpc(self.stream_ended())),
                Err(status) => Err(StreamFailure::Rpc(self.status_error(rpc, status))),
            }
        };
        let (stream, payload) = match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(exchanged) => exchanged?,
            Err(_) => return Err(self.response_timed_out()),
        };
        self.stream = Some(stream);
        self.decode(rpc, &payload).map_err(StreamFailure::Rpc)
    }

    /// Returns the error of an AppendEntries whose response did not arrive before openraft's
    /// hard deadline.
    fn response_timed_out(&self) -> StreamFailure {
        let error = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no AppendEntries response from raft peer {} at {} in time", self.target, self.addr),
        );
        StreamFailure::Rpc(RPCError::Network(NetworkError::new(&error)))
    }

    /// Returns which transports are open after the last AppendEntries: `(link, stream)`.
    #[cfg(test)]
    pub fn transports_open(&self) -> (bool, bool) {
        (!PeerLinks::lock(&self.links).idle.is_empty(), self.stream.is_some())
    }

    /// Sends `request` on an idle AppendEntries link, or on a new one, and waits for its
    /// response until openraft's hard deadline.
    async fn append_on_link(
        &mut self,
        request: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, StreamFailure> {
        let rpc = Rpc::AppendEntries;
        let data = self.encode(rpc, request).map_err(StreamFailure::Rpc)?;
        let idle = PeerLinks::lock(&self.links).idle.pop();
        let exchange = async {
            if let Some(mut link) = idle {
                match link.exchange(&data).await {
                    Ok(response) => return Ok((link, response)),
                    // An idle link may have been closed by a peer that restarted meanwhile.
                    // The request is sent again on a new one: a follower handles a repeated
                    // AppendEntries like the first.
                    Err(error @ (LinkError::Closed | LinkError::Io(_))) => {
                        tracing::debug!(target_node = self.target, addr = %self.addr, %error, "idle AppendEntries link failed; opening a new one");
                    }
                    Err(error) => return Err(self.link_failure(error)),
                }
            }
            let mut link = self.open_link().await?;
            tracing::info!(target_node = self.target, addr = %self.addr, "AppendEntries link opened");
            let response = link.exchange(&data).await.map_err(|error| self.link_failure(error))?;
            Ok((link, response))
        };
        let (link, response) = match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(exchanged) => exchanged?,
            Err(_) => return Err(self.response_timed_out()),
        };
        let mut links = PeerLinks::lock(&self.links);
        if links.idle.len() < IDLE_LINKS_PER_PEER {
            links.idle.push(link);
        }
        drop(links);
        self.decode(rpc, &RaftPayload { data: response }).map_err(StreamFailure::Rpc)
    }

    /// Connects to the peer and opens an AppendEntries link on the new connection.
    async fn open_link(&self) -> Result<Link, StreamFailure> {
        let host_port = self.addr.split_once("://").map_or(self.addr.as_str(), |(_, rest)| rest);
        let connect = tokio::time::timeout(PEER_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(host_port));
        let stream = match connect.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(self.link_failure(LinkError::Io(error))),
            Err(_) => {
                let error = std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out");
                return Err(self.link_failure(LinkError::Io(error)));
            }
        };
        // With Nagle's algorithm on, a frame written while the last is unacknowledged waits
        // for the peer's delayed ACK.
        stream.set_nodelay(true).map_err(|error| self.link_failure(LinkError::Io(error)))?;

        let connector = match crate::tls::peer_link_tls() {
            (false, _) => return Link::open(Box::new(stream), true).await.map_err(|error| self.link_failure(error)),
            (true, None) => return Err(StreamFailure::Unsupported),
            (true, Some(connector)) => connector,
        };

        let server_name = crate::tls::peer_server_name().map_err(|error| self.link_failure(LinkError::Io(std::io::Error::other(error))))?;
        let handshake = tokio::time::timeout(crate::tls::LINK_HANDSHAKE_TIMEOUT, connector.connect(server_name, stream));
        let tls = match handshake.await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) if no_common_protocol(&error) => return Err(StreamFailure::Unsupported),
            Ok(Err(error)) => return Err(self.link_failure(LinkError::Io(error))),
            Err(_) => {
                let error = std::io::Error::new(std::io::ErrorKind::TimedOut, "the TLS handshake timed out");
                return Err(self.link_failure(LinkError::Io(error)));
            }
        };

        // A peer that chose no protocol ignores ALPN and would treat the link as gRPC.
        if tls.get_ref().1.alpn_protocol() != Some(super::link::ALPN) {
            return Err(StreamFailure::Unsupported);
        }
        Link::open(Box::new(tls), false).await.map_err(|error| self.link_failure(error))
    }

    /// Turns a link's error into openraft's: a peer that cannot be reached is [`Unreachable`],
    /// so openraft backs off, and a peer without links falls back to the gRPC stream.
    fn link_failure(&self, error: LinkError) -> StreamFailure {
        let unreachable = matches!(error, LinkError::Closed | LinkError::Io(_));
        let error = match error {
            LinkError::Unsupported => return StreamFailure::Unsupported,
            error => std::io::Error::other(format!("AppendEntries link to raft peer {} at {}: {error}", self.target, self.addr)),
        };
        if unreachable {
            StreamFailure::Rpc(RPCError::Unreachable(Unreachable::new(&error)))
        } else {
            StreamFailure::Rpc(RPCError::Network(NetworkError::new(&error)))
        }
    }

    /// Opens an AppendEntries stream to the peer.
    async fn open_stream(&self) -> Result<AppendStream, StreamFailure> {
        let mut client = match &self.client {
            Ok(client) => client.clone(),
            Err(message) => {
                let error = std::io::Error::other(message.clone());
                return Err(StreamFailure::Rpc(RPCError::Unreachable(Unreachable::new(&error))));
            }
        };
        // One request at a time: the next waits for the response to the last.
        let (requests, outgoing) = mpsc::channel(1);
        match client.append_entries_stream(ReceiverStream::new(outgoing)).await {
            Ok(response) => Ok(AppendStream {
                requests,
                responses: response.into_inner(),
            }),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                Err(StreamFailure::Unsupported)
            }
            Err(status) => Err(StreamFailure::Rpc(self.status_error(Rpc::AppendEntries, status))),
        }
    }

    /// Returns the error for a stream that the peer or the connection closed. openraft retries,
    /// and the next call opens a new stream.
    fn stream_ended<E: std::error::Error>(&self) -> RPCError<NodeId, Node, RaftError<NodeId, E>> {
        let error = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            format!("the AppendEntries stream to raft peer {} at {} ended", self.target, self.addr),
        );
        RPCError::Unreachable(Unreachable::new(&error))
    }

    fn encode<Req: Serialize, E: std::error::Error>(
        &self,
        rpc: Rpc,
        request: &Req,
    ) -> Result<Vec<u8>, RPCError<NodeId, Node, RaftError<NodeId, E>>> {
        serde_json::to_vec(request).map_err(|source| {
            let error = PeerError::Encode {
                rpc: rpc.name(),
                target: self.target,
                source,
            };
            RPCError::Network(NetworkError::new(&error))
        })
    }

    /// Decodes the peer's `Result` from `payload`.
    fn decode<Resp, E>(
        &self,
        rpc: Rpc,
        payload: &RaftPayload,
    ) -> Result<Resp, RPCError<NodeId, Node, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&payload.data)
            .map_err(|source| {
                let error = PeerError::Decode {
                    rpc: rpc.name(),
                    target: self.target,
                    addr: self.addr.clone(),
                    source,
                };
                RPCError::Network(NetworkError::new(&error))
            })?;
        result.map_err(|remote| RPCError::RemoteError(RemoteError::new(self.target, remote)))
    }

    fn status_error<E>(
        &self,
        rpc: Rpc,
        status: tonic::Status,
    ) -> RPCError<NodeId, Node, RaftError<NodeId, E>>
    where
        E: std::error::Error,
    {
        let unreachable = status.code() == tonic::Code::Unavailable;
        let error = PeerError::Status {
            rpc: rpc.name(),
            target: self.target,
            addr: self.addr.clone(),
            source: status,
        };
        if unreachable {
            RPCError::Unreachable(Unreachable::new(&error))
        } else {
            RPCError::Network(NetworkError::new(&error))
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        if let Some(log_sync) = &self.log_sync {
            rpc.leader_commit = log_sync.clamp_commit(rpc.leader_commit);
        }
        // A request without entries only moves the follower's commit index on, which no
        // client waits for. openraft sends one right after each commit, while the apply that
        // completes the client's request is runnable too, so the apply goes first.
        if rpc.entries.is_empty() {
            tokio::task::yield_now().await;
        }
        let link_offered = PeerLinks::lock(&self.links).retry_at.is_none_or(|retry_at| Instant::now() >= retry_at);
        if link_offered {
            match self.append_on_link(&rpc, &option).await {
                Ok(response) => return Ok(response),
                Err(StreamFailure::Rpc(error)) => return Err(error),
                Err(StreamFailure::Unsupported) => {
                    tracing::info!(target_node = self.target, addr = %self.addr, "raft peer offers no AppendEntries link; using the gRPC stream");
                    PeerLinks::lock(&self.links).retry_at = Some(Instant::now() + LINK_RETRY_INTERVAL);
                }
            }
        }
        if !self.stream_unsupported {
            match self.append_on_stream(&rpc, &option).await {
                Ok(response) => return Ok(response),
                Err(StreamFailure::Rpc(error)) => return Err(error),
                Err(StreamFailure::Unsupported) => {
                    tracing::info!(target_node = self.target, addr = %self.addr, "raft peer has no AppendEntries stream; sending single calls");
                    self.stream_unsupported = true;
                }
            }
        }
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
