//! gRPC services the controller serves on its one listen address.

pub mod agent;
pub mod agent_files;
pub mod agent_router;
pub mod client;
pub mod exec;
pub mod hosts;
pub mod logs;
pub mod members;
pub mod session_view;
pub mod status;
pub mod watch;

use crate::raft::RaftError;

/// Maps a Raft failure to the status clients see: the cluster cannot take
/// the request now, so they may retry.
pub fn unavailable(error: &RaftError) -> tonic::Status {
    tonic::Status::unavailable(format!("controller cannot commit or read the cluster state: {error}"))
}
