//! Snapshots of the state machine: their JSON content and the builder openraft runs.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::{
    AnyError, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, ReadableDatabase};
use serde::{Deserialize, Serialize};

use super::database::{begin_durable_write, run_blocking};
use super::state_machine::StateMachineError;
use super::state_tables;
use super::state_writer::StateWriter;
use super::{Node, NodeId, TypeConfig};
use crate::state::ClusterState;

/// The data of a snapshot, JSON-encoded: the whole cluster state and the log position it is at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SnapshotContent {
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, Node>,
    pub state: ClusterState,
}

impl SnapshotContent {
    pub fn decode(snapshot_id: &str, data: &[u8]) -> Result<SnapshotContent, StateMachineError> {
        serde_json::from_slice(data).map_err(|source| StateMachineError::DecodeSnapshot {
            snapshot_id: snapshot_id.to_owned(),
            source,
        })
    }
}

/// Builder of snapshots from a read transaction of `state.redb`. The transaction reads the
/// tables as of one commit while apply goes on.
pub struct SnapshotBuilder {
    database: Arc<Database>,
    /// The state machine's writer thread, waited for so the snapshot contains every entry
    /// applied before the build began.
    writer: StateWriter,
}

impl SnapshotBuilder {
    pub(super) fn new(database: Arc<Database>, writer: StateWriter) -> SnapshotBuilder {
        SnapshotBuilder { database, writer }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    /// Waits for the writer thread, then serializes the tables and commits the result durably
    /// as the current snapshot. That commit also syncs every unsynced apply before it, which
    /// openraft relies on when it purges the log up to the snapshot.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.writer.flush().await.map_err(|error| {
            StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&error)))
        })?;
        let database = Arc::clone(&self.database);
        let (meta, data) = run_blocking(move || build(&database))
            .await
            .map_err(|error| {
                StorageError::from(StorageIOError::write_snapshot(None, AnyError::new(&error)))
            })?;

        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_log_id = ?meta.last_log_id,
            size_bytes = data.len(),
            "built snapshot"
        );
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Serializes the tables as of one read transaction and stores the result as the current
/// snapshot.
fn build(database: &Database) -> Result<(SnapshotMeta<NodeId, Node>, Vec<u8>), StateMachineError> {
    let stored = {
        let transaction = database.begin_read().map_err(redb::Error::from)?;
        state_tables::read_stored_state(&transaction)?
    };

    let meta = SnapshotMeta {
        last_log_id: stored.last_applied,
        last_membership: stored.last_membership.clone(),
        snapshot_id: snapshot_id(stored.last_applied),
    };
    let content = SnapshotContent {
        last_applied: stored.last_applied,
        last_membership: stored.last_membership,
        state: stored.state,
    };
    let data = state_tables::encode("snapshot", &content)?;

    let transaction = begin_durable_write(database)?;
    let stored_as_current = state_tables::store_built_snapshot(&transaction, &meta, &data)?;
    transaction.commit().map_err(redb::Error::from)?;
    if !stored_as_current {
        tracing::info!(snapshot_id = %meta.snapshot_id, "kept the newer current snapshot");
    }
    Ok((meta, data))
}

/// Returns an id unique among this node's snapshots: the last included index and the build time.
fn snapshot_id(last_applied: Option<LogId<NodeId>>) -> String {
    let index = last_applied.map_or_else(|| "none".to_owned(), |log_id| log_id.index.to_string());
    let built_at_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since_epoch| since_epoch.as_micros());
    format!("{index}-{built_at_micros}")
}

/// Converts a failure to read a received snapshot into openraft's error type.
pub(super) fn read_error(
    meta: &SnapshotMeta<NodeId, Node>,
    error: &StateMachineError,
) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(error)).into()
}

/// Converts a failure to install a received snapshot into openraft's error type.
pub(super) fn write_error(
    meta: &SnapshotMeta<NodeId, Node>,
    error: &StateMachineError,
) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(error)).into()
}
