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
use tonic::{Request, Response, Status};

use super::{RaftNode, TypeConfig};

/// The `Raft` gRPC service of one controller.
#[derive(Clone)]
pub struct RaftService {
    raft: openraft::Raft<TypeConfig>,
}

/// Returns the `Raft` gRPC service for `node`.
pub fn raft_service(node: &RaftNode) -> RaftServer<RaftService> {
    RaftService::new(node.raft.clone()).into_server()
}

impl RaftService {
    /// Wraps a running Raft.
    pub fn new(raft: openraft::Raft<TypeConfig>) -> RaftService {
        RaftService { raft }
    }

    /// Returns the gRPC server for this service. It accepts messages up to
    /// [`MAX_MESSAGE_BYTES`], since a batch of log entries can exceed tonic's 4 MiB default.
    pub fn into_server(self) -> RaftServer<RaftService> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
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
