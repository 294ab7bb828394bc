//! The server side of the gRPC `Raft` service: hands peers' RPCs to the local `openraft::Raft`.
//!
//! A request payload is the JSON of the openraft request. The response payload is the JSON of
//! the `Result` that the local Raft returned, errors included, and the peer's
//! [`PeerNetwork`](super::network::PeerNetwork) turns an error back into a remote error. gRPC
//! errors are used only when the payload itself cannot be decoded or encoded.

use colex_proto::raft_server::{Raft, RaftServer};
use colex_proto::{RaftPayload, MAX_MESSAGE_BYTES};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{RaftNode, TypeConfig};

/// The `Raft` gRPC service of one controller.
#[derive(Clone)]
pub struct RaftService {
    raft: openraft::Raft<TypeConfig>,
    /// Turns true when the server stops. AppendEntries streams never end on their own, and a
    /// graceful shutdown waits for every open call, so each stream ends then.
    stopping: watch::Receiver<bool>,
}

/// Returns the `Raft` gRPC service for `node`, whose streams end once `stopping` turns true.
pub fn raft_service(node: &RaftNode, stopping: watch::Receiver<bool>) -> RaftServer<RaftService> {
    RaftService::new(node.raft.clone(), stopping).into_server()
}

impl RaftService {
    /// Wraps a running Raft.
    pub fn new(raft: openraft::Raft<TypeConfig>, stopping: watch::Receiver<bool>) -> RaftService {
        RaftService { raft, stopping }
    }

    /// Returns the gRPC server for this service. It accepts messages up to
    /// [`MAX_MESSAGE_BYTES`], since a batch of log entries can exceed tonic's 4 MiB default.
    pub fn into_server(self) -> RaftServer<RaftService> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Requests of one AppendEntries stream that may wait to be read while one is handled.
const STREAM_BUFFER: usize = 4;

#[tonic::async_trait]
impl Raft for RaftService {
    type AppendEntriesStreamStream = ReceiverStream<Result<RaftPayload, Status>>;

    /// Handles the requests of one stream in order, on one task: a leader's replication to
    /// this follower sends the next request only after the response to the last.
    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
        let mut requests = request.into_inner();
        let (responses, stream) = mpsc::channel(STREAM_BUFFER);
        let raft = self.raft.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                // Stopping comes first: a request that arrived meanwhile is left unanswered,
                // and the leader sends it again on another connection.
                let next = tokio::select! {
                    biased;
                    // Without a sender left, nothing stops the server through this watch.
                    Ok(_) = stopping.wait_for(|stopping| *stopping) => break,
                    next = requests.message() => next,
                };
                let payload = match next {
                    Ok(Some(payload)) => payload,
                    // The leader closed the stream: it stopped replicating, or lost its lead.
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "AppendEntries stream from a raft peer ended");
                        break;
                    }
                };
                let reply = match decode::<AppendEntriesRequest<TypeConfig>>("AppendEntries", &payload) {
                    Ok(rpc) => encode("AppendEntries", &raft.append_entries(rpc).await).map(Response::into_inner),
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if responses.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode("AppendEntries", &request.into_inner())?;
        let result = self.raft.append_entries(rpc).await;
        encode("AppendEntries", &result)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<u64> = decode("Vote", &request.into_inner())?;
        let result = self.raft.vote(rpc).await;
        encode("Vote", &result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode("InstallSnapshot", &request.into_inner())?;
        let result = self.raft.install_snapshot(rpc).await;
        encode("InstallSnapshot", &result)
    }
}

fn decode<T: DeserializeOwned>(rpc: &str, payload: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&payload.data).map_err(|error| {
        tracing::warn!(rpc, %error, "rejected raft request with an invalid payload");
        Status::invalid_argument(format!("invalid {rpc} payload: {error}"))
    })
}

fn encode<T: Serialize>(rpc: &str, result: &T) -> Result<Response<RaftPayload>, Status> {
    match serde_json::to_vec(result) {
        Ok(data) => Ok(Response::new(RaftPayload { data })),
        Err(error) => {
            tracing::error!(rpc, %error, "failed to encode raft response");
            Err(Status::internal(format!(
                "failed to encode {rpc} response: {error}"
            )))
        }
    }
}
