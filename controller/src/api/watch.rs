//! The `Watch` service: streams the instances of named silos whenever they change, so a
//! client such as `colex-cli up` learns of a commit without polling `List`.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use colex_proto as proto;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::hosts;
use crate::api::unavailable;
use crate::raft::RaftNode;
use crate::sessions::Sessions;
use crate::view;

/// Interval of the extra looks at the watched silos between applies. A host that misses its
/// TTL changes the message of its silos without a Raft apply, and a lost leadership must end
/// the stream.
const RECHECK_INTERVAL: Duration = Duration::from_millis(500);
/// Messages buffered per stream before the sender waits for the client to read.
const STREAM_BUFFER_MESSAGES: usize = 16;
/// Maximum number of names in one request, matching the largest silo file `up` sends.
const MAX_WATCHED_NAMES: usize = 1000;

/// Messages of one `WatchSilos` stream.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchSilosResponse, Status>> + Send>>;

pub struct WatchService {
    node: RaftNode,
    sessions: Sessions,
}

impl WatchService {
    /// Returns the gRPC server of the service.
    pub fn server(node: RaftNode, sessions: Sessions) -> proto::watch_server::WatchServer<WatchService> {
        proto::watch_server::WatchServer::new(WatchService { node, sessions })
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl proto::watch_server::Watch for WatchService {
    type WatchSilosStream = WatchStream;

    async fn watch_silos(
        &self,
        request: Request<proto::WatchSilosRequest>,
    ) -> Result<Response<Self::WatchSilosStream>, Status> {
        // The leader applies a commit before any follower learns of it, and it has the agents'
        // sessions, so it finds every change first. Watching twice is harmless, so a retried
        // forward is fine.
        let forwarded = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { leader_client(channel).watch_silos(forwarded).await });
        if let Some(response) = forwarded.await? {
            let relayed: WatchStream = Box::pin(response.into_inner());
            return Ok(Response::new(relayed));
        }

        // A name given twice is watched once, so its instances are not sent twice.
        let names: Vec<String> = request.into_inner().names.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
        if names.is_empty() {
            return Err(Status::invalid_argument("the request names no silo to watch"));
        }
        if names.len() > MAX_WATCHED_NAMES {
            return Err(Status::invalid_argument(format!(
                "the request names {} silos; watch at most {MAX_WATCHED_NAMES} per stream",
                names.len()
            )));
        }
        // Everything committed before this request, such as the `up` that preceded it, is
        // applied here once the barrier returns.
        self.node.read_barrier().await.map_err(|error| unavailable(&error))?;

        let (sender, receiver) = mpsc::channel(STREAM_BUFFER_MESSAGES);
        tokio::spawn(send_changes(self.node.clone(), self.sessions.clone(), names, sender));
        let stream: WatchStream = Box::pin(ReceiverStream::new(receiver));
        Ok(Response::new(stream))
    }
}

/// Sends the watched instances now and after each change, until the client goes away, Raft
/// stops, or this controller stops leading. In the last case the stream ends with
/// `UNAVAILABLE`, so the client watches again and reaches the new leader.
async fn send_changes(
    node: RaftNode,
    sessions: Sessions,
    names: Vec<String>,
    sender: mpsc::Sender<Result<proto::WatchSilosResponse, Status>>,
) {
    let mut applied = node.applied.clone();
    let mut last_sent: Option<Vec<proto::SiloInfo>> = None;
    loop {
        let leads = node.raft.metrics().borrow().current_leader == Some(node.id);
        if !leads {
            let status = Status::unavailable(format!(
                "controller {} stopped leading the cluster; watch again to reach the new leader",
                node.id
            ));
            let _ = sender.send(Err(status)).await;
            return;
        }

        let applied_index = *applied.borrow_and_update();
        let silos = watched_instances(&node, &sessions, &names).await;
        if last_sent.as_ref() != Some(&silos) {
            let message = proto::WatchSilosResponse {
                silos: silos.clone(),
                applied_index,
            };
            if sender.send(Ok(message)).await.is_err() {
                return;
            }
            last_sent = Some(silos);
        }

        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    // The state machine is gone: Raft has stopped.
                    let _ = sender.send(Err(Status::unavailable("the controller is shutting down; watch again"))).await;
                    return;
                }
            }
            () = tokio::time::sleep(RECHECK_INTERVAL) => {}
            () = sender.closed() => return,
        }
    }
}

/// Returns every instance of the named silos, as `List` shows them, ordered by name and index.
async fn watched_instances(node: &RaftNode, sessions: &Sessions, names: &[String]) -> Vec<proto::SiloInfo> {
    let mut silos: Vec<proto::SiloInfo> = {
        let state = node.state.read().await;
        names.iter().flat_map(|name| view::instance_infos(&state, name)).collect()
    };
    hosts::mark_lost_hosts(&mut silos, sessions);
    silos.sort_by(|left, right| (&left.name, left.index).cmp(&(&right.name, right.index)));
    silos
}

/// Returns a client of the leader's `Watch` service on `channel`.
fn leader_client(channel: tonic::transport::Channel) -> proto::watch_client::WatchClient<tonic::transport::Channel> {
    proto::watch_client::WatchClient::new(channel)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES)
}
