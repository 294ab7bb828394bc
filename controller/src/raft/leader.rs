//! Routing of requests that only the Raft leader can serve: a follower forwards them to the
//! leader over gRPC and returns the leader's response.
//!
//! Forwarding on the server, rather than returning the leader's address for the client to retry
//! there, keeps clients simple and lets a client that can reach only one controller use the whole
//! cluster. It also matters for placement: agents hold their sessions with the leader, so only
//! the leader tracks which hosts are live.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colex_proto::FORWARDED_BY_HEADER;
use tokio::time::Instant;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{NodeId, TypeConfig};

/// How long a request waits for a leader to be known, and for a forwarded request to reach it,
/// before it fails with `UNAVAILABLE`. After the leader's last heartbeat, an openraft 0.9.25
/// follower waits out the leader lease (the maximum election timeout, 400 ms) plus its election
/// timeout (200 to 400 ms), checked every 150 ms, before it starts an election. A new leader is
/// therefore elected about 0.6 to 1 s after a leader dies, plus a vote round. The wait is ten
/// times that, so a request still succeeds on a loaded machine and across a split vote.
pub const LEADER_WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a forwarded request that failed with `UNAVAILABLE` is sent again.
const FORWARD_RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// Time allowed to open the connection to the leader.
const LEADER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of finding the leader.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no raft leader is known after waiting {waited:?}; the cluster may have lost its quorum, see `colex-cli controllers`")]
    NoLeader { waited: Duration },
    #[error("raft leader {id} has no address in the membership")]
    MissingAddress { id: NodeId },
    #[error("invalid address {addr:?} of raft leader {id}")]
    InvalidAddress {
        id: NodeId,
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("controller {forwarded_by} forwarded this request here, but this controller is not the raft leader either (leader: {leader:?}); retry the request")]
    NotLeaderAfterForward {
        forwarded_by: String,
        leader: Option<NodeId>,
    },
}

/// The controller that serves a request.
#[derive(Debug)]
pub enum Route {
    /// This controller is the leader.
    Local,
    /// Another controller is the leader.
    Leader { id: NodeId, addr: String, channel: Channel },
}

/// Finds the leader from openraft's metrics and keeps one lazily connected channel per leader
/// address. Clones share the channels.
#[derive(Clone)]
pub struct LeaderRoute {
    id: NodeId,
    raft: openraft::Raft<TypeConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl LeaderRoute {
    pub fn new(id: NodeId, raft: openraft::Raft<TypeConfig>) -> LeaderRoute {
        LeaderRoute {
            id,
            raft,
            channels: Arc::default(),
        }
    }

    /// Returns where a request with `metadata` is served, waiting until `deadline` for a leader
    /// to be known.
    pub async fn route(&self, metadata: &MetadataMap, deadline: Instant) -> Result<Route, RouteError> {
        let forwarded_by = metadata
            .get(FORWARDED_BY_HEADER)
            .map(|value| value.to_str().unwrap_or("?").to_owned());
        let mut metrics = self.raft.metrics();
        loop {
            let (leader, addr) = {
                let current = metrics.borrow_and_update();
                let leader = current.current_leader;
                let addr = leader.and_then(|id| {
                    current
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .map(|node| node.addr.clone())
                });
                (leader, addr)
            };

            match (leader, &forwarded_by) {
                (Some(id), _) if id == self.id => return Ok(Route::Local),
                (leader, Some(forwarded_by)) => {
                    return Err(RouteError::NotLeaderAfterForward {
                        forwarded_by: forwarded_by.clone(),
                        leader,
                    })
                }
                (Some(id), None) => {
                    let addr = addr.ok_or(RouteError::MissingAddress { id })?;
                    let channel = self.channel(id, &addr)?;
                    return Ok(Route::Leader { id, addr, channel });
                }
                (None, None) => {
                    let waited = tokio::time::timeout_at(deadline, metrics.changed()).await;
                    match waited {
                        Ok(Ok(())) => {}
                        // The metrics sender is gone when Raft has stopped.
                        Ok(Err(_)) | Err(_) => {
                            return Err(RouteError::NoLeader {
                                waited: LEADER_WAIT_TIMEOUT,
                            })
                        }
                    }
                }
            }
        }
    }

    /// Sends `request` to the leader with `call` and returns its response, or `None` when this
    /// controller is the leader and serves the request itself.
    ///
    /// A forwarded request that fails with `UNAVAILABLE` (the leader died or lost its
    /// leadership) is routed and sent again until [`LEADER_WAIT_TIMEOUT`] has passed. Every
    /// request forwarded this way must be safe to apply twice, because the first attempt may
    /// have been committed before its response was lost.
    pub async fn forward<Req, Resp, Call, Reply>(
        &self,
        request: &Request<Req>,
        mut call: Call,
    ) -> Result<Option<Response<Resp>>, Status>
    where
        Req: Clone,
        Call: FnMut(Channel, Request<Req>) -> Reply,
        Reply: Future<Output = Result<Response<Resp>, Status>>,
    {
        let deadline = Instant::now() + LEADER_WAIT_TIMEOUT;
        loop {
            let route = self
                .route(request.metadata(), deadline)
                .await
                .map_err(|error| Status::unavailable(error.to_string()))?;
            let (leader, addr, channel) = match route {
                Route::Local => return Ok(None),
                Route::Leader { id, addr, channel } => (id, addr, channel),
            };

            let mut forwarded = Request::new(request.get_ref().clone());
            forwarded
                .metadata_mut()
                .insert(FORWARDED_BY_HEADER, MetadataValue::from(self.id));
            match call(channel, forwarded).await {
                Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                    tracing::warn!(leader, %addr, %status, "forwarding to the leader failed; retrying");
                    tokio::time::sleep(FORWARD_RETRY_INTERVAL).await;
                }
                Err(status) => {
                    return Err(Status::new(
                        status.code(),
                        format!("leader {leader} at {addr}: {}", status.message()),
                    ))
                }
                Ok(response) => return Ok(Some(response)),
            }
        }
    }

    /// Returns the cached channel to the controller `id` at `addr`, building it on first use.
    pub(super) fn channel(&self, id: NodeId, addr: &str) -> Result<Channel, RouteError> {
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = connect_lazy(addr).map_err(|source| RouteError::InvalidAddress {
            id,
            addr: addr.to_owned(),
            source,
        })?;
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Builds a channel to a controller at `addr` (HOST:PORT) that connects on first use and
/// reconnects after a failure.
pub fn connect_lazy(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = crate::tls::peer_endpoint(addr)?
        .connect_timeout(LEADER_CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}
