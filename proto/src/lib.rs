//! Wire protocol of colex: the client, agent and Raft gRPC services.

/// Generated code for package `colex.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("colex.v1");
}

pub use v1::*;

/// Largest gRPC message the services accept, in bytes. A silo file's bundle
/// (the contents of its `file` blocks) travels in one `Up` request, so this
/// is the 64 MiB bundle limit plus room for the rest of the message.
pub const MAX_MESSAGE_BYTES: usize = 80 * 1024 * 1024;

impl SiloState {
    /// Returns the upper-case label shown in tables, such as `UP`.
    pub fn label(self) -> &'static str {
        match self {
            SiloState::Unspecified => "UNKNOWN",
            SiloState::Pending => "PENDING",
            SiloState::Starting => "STARTING",
            SiloState::Up => "UP",
            SiloState::Exited => "EXITED",
            SiloState::Failed => "FAILED",
            SiloState::Stopping => "STOPPING",
            SiloState::Removed => "REMOVED",
        }
    }
}

impl HostState {
    /// Returns the upper-case label shown in tables.
    pub fn label(self) -> &'static str {
        match self {
            HostState::Unspecified => "UNKNOWN",
            HostState::Up => "UP",
            HostState::Down => "DOWN",
        }
    }
}
