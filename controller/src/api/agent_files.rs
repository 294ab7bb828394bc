//! The `AgentFiles` service: agents fetch the file contents that their silos' specs refer to by
//! SHA-256.
//!
//! The caller names its host. The controller serves a content only while that host has an agent
//! session with it and a silo instance placed on that host uses the content. Agents call the
//! controller of their session, which is the leader.

use colex_proto as proto;
use tonic::{Request, Response, Status};

use crate::blobs::{self, SHA256_BYTES};
use crate::raft::RaftNode;
use crate::sessions::Sessions;

/// Serves `AgentFiles.FetchFileContent` from the applied state.
pub struct AgentFilesService {
    node: RaftNode,
    sessions: Sessions,
}

impl AgentFilesService {
    /// Returns the gRPC server of the service. Its responses carry one file content, which
    /// `up` limits to `blobs::MAX_FILE_CONTENT_BYTES`.
    pub fn server(node: RaftNode, sessions: Sessions) -> proto::agent_files_server::AgentFilesServer<AgentFilesService> {
        proto::agent_files_server::AgentFilesServer::new(AgentFilesService { node, sessions })
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl proto::agent_files_server::AgentFiles for AgentFilesService {
    async fn fetch_file_content(
        &self,
        request: Request<proto::FetchFileContentRequest>,
    ) -> Result<Response<proto::FetchFileContentResponse>, Status> {
        // An agent fetches only for the host its certificate names.
        let peer = request.extensions().get::<colex_proto::pki::PeerIdentity>().cloned();
        let request = request.into_inner();
        crate::auth::check_agent_name(peer.as_ref(), &request.host)?;
        if request.sha256.len() != SHA256_BYTES {
            return Err(Status::invalid_argument(format!(
                "invalid sha256 of {} bytes in FetchFileContent; send the 32 bytes of FileEntry.content_sha256",
                request.sha256.len()
            )));
        }
        let hash = blobs::hex(&request.sha256);
        if !self.sessions.live_hosts().contains(&request.host) {
            return Err(Status::permission_denied(format!(
                "host {:?} has no agent session with this controller; open the session before fetching file contents",
                request.host
            )));
        }

        let state = self.node.state.read().await;
        let used_on_host = state.file_contents.get(&hash).filter(|content| {
            content
                .users
                .iter()
                .any(|key| state.silos.get(key).is_some_and(|record| record.host == request.host))
        });
        let Some(content) = used_on_host else {
            tracing::warn!(host = %request.host, sha256 = %hash, "file content requested that no silo on the host uses");
            return Err(Status::not_found(format!(
                "file content {hash} is not used by any silo on host {}; it was removed or the silo moved",
                request.host
            )));
        };
        tracing::debug!(host = %request.host, sha256 = %hash, bytes = content.bytes.len(), "file content sent");
        Ok(Response::new(proto::FetchFileContentResponse {
            content: content.bytes.as_ref().clone(),
        }))
    }
}
