//! Replication of the cluster state with openraft 0.9 (storage-v2 API).
//!
//! - [`log_store`]: the Raft log entries in the append-only file `raft-log.entries`
//!   (`log_file`), the vote in `raft-log.redb`, and the newest entries also in memory
//!   (`recent_entries`).
//! - [`state_machine`]: the applied [`ClusterState`](crate::state::ClusterState) rows, the last
//!   applied log id, the membership and the current snapshot in `state.redb` (tables in
//!   `state_tables`, snapshot content and builder in `snapshot`, the thread that commits
//!   applies in `state_writer`).
//! - [`network`] and [`service`]: the client and server sides of the gRPC `Raft` service, whose
//!   payloads are the JSON encoding of openraft's request and response types, and [`link`]:
//!   the framed connection that carries AppendEntries beside it on the same port.
//! - [`node`]: [`RaftNode`], the handle the rest of the controller uses.
//! - [`membership`]: adding, promoting, removing and listing controllers on the leader, and
//!   [`join`]: how a new controller requests its node id.
//! - [`leader`]: forwarding requests that only the leader serves.

mod database;
mod log_file;
pub mod join;
pub mod leader;
pub mod link;
pub mod log_store;
pub mod log_sync;
pub mod membership;
pub mod network;
pub mod node;
mod recent_entries;
pub mod service;
mod snapshot;
pub mod state_machine;
mod state_tables;
mod state_writer;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod link_tests;
#[cfg(test)]
mod membership_tests;
#[cfg(test)]
mod node_tests;
#[cfg(test)]
mod store_tests;

use std::fmt;
// `declare_raft_types!` names `Cursor` unqualified for its default `SnapshotData`.
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{Command, Response};

pub use membership::MembershipError;
pub use node::{RaftError, RaftNode, StartMode};
pub use service::raft_service;

/// Raft node id, openraft's default `NodeId` type.
pub type NodeId = u64;

/// A controller as stored in the Raft membership, so peers learn each other's address from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// `host:port` of the controller's gRPC server, which serves the `Raft` service.
    pub addr: String,
}

impl fmt::Display for Node {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// openraft type configuration of colex: log entries carry [`Command`]s and applying one
    /// returns a [`Response`].
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        SnapshotData = Cursor<Vec<u8>>,
);
