//! Wire protocol of colex: the client, agent, Raft and controller membership gRPC services.

/// Generated code for package `colex.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("colex.v1");
}

pub use v1::*;

pub mod addresses;
pub mod pki;

/// Largest gRPC message the services accept, in bytes. A silo file's bundle
/// (the contents of its `file` blocks) travels in one `Up` request, so this
/// is the 64 MiB bundle limit plus room for the rest of the message.
pub const MAX_MESSAGE_BYTES: usize = 80 * 1024 * 1024;

/// gRPC metadata key that a controller sets on a request it forwards to the Raft leader; the
/// value is the forwarding controller's node id. A controller that receives such a request and
/// is not the leader rejects it instead of forwarding it again, so two controllers with
/// different views of the leader cannot pass a request back and forth.
pub const FORWARDED_BY_HEADER: &str = "colex-forwarded-by";

/// gRPC metadata key that sets the read consistency of `Client.List`. With the value
/// [`STALE_READ`] the receiving controller serves the list from its own applied state, which
/// may lag the leader. Without it the read is linearizable.
pub const READ_CONSISTENCY_HEADER: &str = "colex-read-consistency";
/// Value of [`READ_CONSISTENCY_HEADER`] for a read served from the local state.
pub const STALE_READ: &str = "stale";

impl MemberRole {
    /// Returns the lower-case label shown in tables, such as `voter`.
    pub fn label(self) -> &'static str {
        match self {
            MemberRole::Unspecified => "unknown",
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        }
    }
}

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
