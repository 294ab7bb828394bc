//! The Raft state machine: the applied [`ClusterState`], stored in the redb file `state.redb`.
//!
//! Each batch of entries is one transaction that writes the changed rows, the last applied log
//! id and the membership together. `apply` updates the in-memory state and leaves the commit to
//! the writer thread (`state_writer`), and most of these commits are not synced
//! (`Durability::None`). Only entries that are already committed in the Raft log reach `apply`,
//! so a crash can lose the rows but never the entries. On start, openraft 0.9.25 applies the
//! entries after the last applied log id on disk again (`get_initial_state`), up to the
//! committed log id that the log store records, and the rest once the leader reports them
//! committed.
//!
//! That is safe only while the log still contains every entry after the last applied log id on
//! disk. openraft 0.9.25 purges the log only up to the last log id of the current snapshot, and
//! building or installing a snapshot first waits for the writer thread and then commits durably,
//! which also syncs the applies before it. Every [`DURABLE_APPLY_EVERY_ENTRIES`] entries an
//! apply commits durably too, which bounds the entries applied again after a crash and lets redb
//! free the pages of the unsynced commits.
//!
//! The in-memory copy that the API reads ([`StateMachineStore::shared_state`]) is updated after
//! the rows were encoded and handed to the writer. Commands are first applied to a private
//! working copy, so API readers never see a row whose encoding failed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, ReadableDatabase};
use tokio::sync::{watch, RwLock};

use super::database::{self, begin_durable_write, run_blocking};
use super::log_sync::{LogSync, LogSyncError};
use super::snapshot::{self, SnapshotBuilder, SnapshotContent};
use super::state_tables::{self, AppliedWrites, StoredState};
use super::state_writer::StateWriter;
use super::{Node, NodeId, TypeConfig};
use crate::applied::AppliedState;
use crate::state::{Change, ClusterState, Response};

/// Applied entries after which an apply commits durably instead of leaving its commit to the
/// next durable one. A crash makes openraft apply at most about this many entries again on
/// start, and redb keeps the pages that unsynced commits free until a durable commit.
const DURABLE_APPLY_EVERY_ENTRIES: u64 = 1000;

/// Errors of the state machine store.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    #[error("failed to open state machine database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("state machine database operation failed")]
    Database(#[from] redb::Error),
    #[error("failed to encode {what} as JSON")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to decode {what} {key:?} from JSON")]
    Decode {
        what: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to decode snapshot {snapshot_id} from JSON")]
    DecodeSnapshot {
        snapshot_id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("snapshot meta is stored without its data")]
    MissingSnapshotData,
    #[error("failed to start the state machine writer thread")]
    StartWriter(#[source] std::io::Error),
    #[error("the state machine writer stopped after a failed commit: {message}")]
    WriterFailed { message: String },
    #[error("the state machine writer thread is gone")]
    WriterStopped,
    #[error("the raft log entries to apply are not on disk")]
    LogSync(#[source] LogSyncError),
    #[error("blocking state machine task failed")]
    Join(#[from] tokio::task::JoinError),
}

impl StateMachineError {
    fn into_read_error(self) -> StorageError<NodeId> {
        StorageIOError::read_state_machine(AnyError::new(&self)).into()
    }

    fn into_write_error(self) -> StorageError<NodeId> {
        StorageIOError::write_state_machine(AnyError::new(&self)).into()
    }
}

/// The state machine on one redb file.
pub struct StateMachineStore {
    database: Arc<Database>,
    /// Commits the rows of each apply, in order, after `apply` has returned.
    writer: StateWriter,
    /// The state as of `last_applied`. It is ahead of the tables while the writer has commits
    /// queued. An apply whose rows cannot be encoded or queued rolls it back.
    working: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Node>,
    /// Entries applied since the last durable commit of `state.redb`.
    applied_since_durable: u64,
    /// The copy the API reads. Updated after each apply, under its write lock, taken alone.
    shared: Arc<RwLock<AppliedState>>,
    /// Index of the last applied entry, sent after `shared` was updated and its lock released.
    applied_sender: watch::Sender<u64>,
    /// The durable part of this controller's log. Set, entries are applied only once they
    /// are on this controller's disk, because the leader replicates before its own sync.
    log_sync: Option<LogSync>,
}

impl StateMachineStore {
    /// Opens or creates the state database at `path` and loads its state into memory.
    pub async fn open(path: &Path) -> Result<StateMachineStore, StateMachineError> {
        let database = database::open(path)
            .await
            .map_err(|source| StateMachineError::Open {
                path: path.to_owned(),
                source,
            })?;
        let database = Arc::new(database);

        let for_load = Arc::clone(&database);
        let stored = run_blocking(move || -> Result<StoredState, StateMachineError> {
            let transaction = begin_durable_write(&for_load)?;
            state_tables::create_tables(&transaction)?;
            transaction.commit().map_err(redb::Error::from)?;

            let transaction = for_load.begin_read().map_err(redb::Error::from)?;
            state_tables::read_stored_state(&transaction)
        })
        .await?;

        tracing::info!(
            path = %path.display(),
            silos = stored.state.silos.len(),
            hosts = stored.state.hosts.len(),
            last_applied = ?stored.last_applied,
            "loaded state machine"
        );

        let (applied_sender, _) = watch::channel(applied_index(stored.last_applied));
        let writer = StateWriter::start(Arc::clone(&database))?;
        Ok(StateMachineStore {
            database,
            writer,
            shared: Arc::new(RwLock::new(AppliedState::new(stored.state.clone()))),
            working: stored.state,
            last_applied: stored.last_applied,
            last_membership: stored.last_membership,
            applied_since_durable: 0,
            applied_sender,
            log_sync: None,
        })
    }

    /// Applies entries only once `log_sync` reports them on disk.
    pub fn wait_for_log(mut self, log_sync: LogSync) -> StateMachineStore {
        self.log_sync = Some(log_sync);
        self
    }

    /// Returns the in-memory state that is updated after each apply.
    pub fn shared_state(&self) -> Arc<RwLock<AppliedState>> {
        Arc::clone(&self.shared)
    }

    /// Returns a receiver of the last applied log index.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied_sender.subscribe()
    }

    /// Returns a handle that upgrades while the store or a snapshot build has the file open.
    pub fn database_handle(&self) -> Weak<Database> {
        Arc::downgrade(&self.database)
    }

    /// Copies the changed rows from `working` into the shared state, then announces `applied`.
    async fn publish(&self, silos: &[String], hosts: &[String], file_contents: &[String]) {
        {
            let mut shared = self.shared.write().await;
            for hash in file_contents {
                shared.set_file_content(hash, self.working.file_contents.get(hash).cloned());
            }
            for name in silos {
                shared.set_silo(name, self.working.silos.get(name).cloned());
            }
            for name in hosts {
                shared.set_host(name, self.working.hosts.get(name).cloned());
            }
        }
        self.applied_sender
            .send_replace(applied_index(self.last_applied));
    }

    /// Undoes uncommitted changes to `working` by copying the rows back from the shared state,
    /// which contains committed rows only.
    async fn roll_back(&mut self, silos: &[String], hosts: &[String], file_contents: &[String]) {
        let shared = self.shared.read().await;
        for hash in file_contents {
            match shared.file_contents.get(hash) {
                Some(content) => self.working.file_contents.insert(hash.clone(), content.clone()),
                None => self.working.file_contents.remove(hash),
            };
        }
        for name in silos {
            match shared.silos.get(name) {
                Some(record) => self.working.silos.insert(name.clone(), record.clone()),
                None => self.working.silos.remove(name),
            };
        }
        for name in hosts {
            match shared.hosts.get(name) {
                Some(record) => self.working.hosts.insert(name.clone(), record.clone()),
                None => self.working.hosts.remove(name),
            };
        }
    }

    fn encode_rows(
        &self,
        silos: &[String],
        hosts: &[String],
        writes: &mut AppliedWrites,
    ) -> Result<(), StateMachineError> {
        for name in silos {
            let write = state_tables::row_write("silo row", name, self.working.silos.get(name))?;
            writes.silos.push(write);
        }
        for name in hosts {
            let write = state_tables::row_write("host row", name, self.working.hosts.get(name))?;
            writes.hosts.push(write);
        }
        Ok(())
    }

    fn encode_content_rows(&self, hashes: &[String], writes: &mut AppliedWrites) -> Result<(), StateMachineError> {
        for hash in hashes {
            let write = state_tables::row_write("file content row", hash, self.working.file_contents.get(hash))?;
            writes.file_contents.push(write);
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    /// Applies `entries` to the working copy, hands the changed rows with the new last applied
    /// log id and membership to the writer thread as one transaction, and then updates the
    /// shared state and the applied index. The commit is synced only every
    /// [`DURABLE_APPLY_EVERY_ENTRIES`] entries.
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        // A failed commit stops the writer, and the rows it lost would be missing from later
        // commits, so nothing more is applied.
        self.writer
            .check()
            .map_err(StateMachineError::into_write_error)?;
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if let (Some(log_sync), Some(last)) = (&self.log_sync, entries.last()) {
            log_sync
                .wait_durable(last.log_id.index)
                .await
                .map_err(|error| StateMachineError::LogSync(error).into_write_error())?;
        }
        let mut responses = Vec::new();
        let mut changed_silos = Vec::new();
        let mut changed_hosts = Vec::new();
        let mut network_changed = false;
        // Contents whose row changed, and all contents whose record changed.
        let mut written_contents = Vec::new();
        let mut changed_contents = Vec::new();
        let mut security_changed = false;
        let mut last_applied = self.last_applied;
        let mut last_membership = None;
        let mut entry_count: u64 = 0;

        for entry in entries {
            last_applied = Some(entry.log_id);
            entry_count += 1;
            match entry.payload {
                EntryPayload::Blank => responses.push(Response::Empty),
                EntryPayload::Normal(command) => {
                    let (response, changes) = self.working.apply(&command);
                    for change in changes {
                        match change {
                            Change::Silo(name) => changed_silos.push(name),
                            Change::Host(name) => changed_hosts.push(name),
                            Change::Network => network_changed = true,
                            Change::FileContent(hash) => {
                                written_contents.push(hash.clone());
                                changed_contents.push(hash);
                            }
                            Change::FileContentUsers(hash) => changed_contents.push(hash),
                            Change::Security => security_changed = true,
                        }
                    }
                    responses.push(response);
                }
                EntryPayload::Membership(membership) => {
                    last_membership = Some(StoredMembership::new(Some(entry.log_id), membership));
                    responses.push(Response::Empty);
                }
            }
        }
        if responses.is_empty() {
            return Ok(responses);
        }
        changed_silos.sort();
        changed_silos.dedup();
        changed_hosts.sort();
        changed_hosts.dedup();
        written_contents.sort();
        written_contents.dedup();
        changed_contents.sort();
        changed_contents.dedup();

        let mut writes = AppliedWrites {
            last_applied,
            last_membership: last_membership.clone(),
            network: if network_changed { self.working.network } else { None },
            security: security_changed.then(|| self.working.security.clone()),
            ..AppliedWrites::default()
        };
        let applied_since_durable = self.applied_since_durable.saturating_add(entry_count);
        let durable = applied_since_durable >= DURABLE_APPLY_EVERY_ENTRIES;
        let encoded = self
            .encode_rows(&changed_silos, &changed_hosts, &mut writes)
            .and_then(|()| self.encode_content_rows(&written_contents, &mut writes));
        let submitted = match encoded {
            Ok(()) => self.writer.submit(writes, durable),
            Err(error) => Err(error),
        };
        if let Err(error) = submitted {
            tracing::error!(%error, ?last_applied, "failed to persist applied entries");
            self.roll_back(&changed_silos, &changed_hosts, &changed_contents).await;
            if network_changed {
                self.working.network = self.shared.read().await.network;
            }
            if security_changed {
                self.working.security = self.shared.read().await.security.clone();
            }
            return Err(error.into_write_error());
        }

        self.applied_since_durable = if durable { 0 } else { applied_since_durable };
        self.last_applied = last_applied;
        if let Some(membership) = last_membership {
            self.last_membership = membership;
        }
        if network_changed {
            self.shared.write().await.set_network(self.working.network);
        }
        if security_changed {
            self.shared.write().await.set_security(self.working.security.clone());
        }
        self.publish(&changed_silos, &changed_hosts, &changed_contents).await;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder::new(Arc::clone(&self.database), self.writer.clone())
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<std::io::Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(std::io::Cursor::new(Vec::new())))
    }

    /// Replaces all rows with the snapshot's in one transaction, makes it the current snapshot,
    /// then replaces the in-memory state.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<std::io::Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let content = SnapshotContent::decode(&meta.snapshot_id, &data)
            .map_err(|error| snapshot::read_error(meta, &error))?;
        let mut state = content.state;
        state.rebuild_content_users();
        // An apply committed after the snapshot would write older rows over it.
        self.writer
            .flush()
            .await
            .map_err(|error| snapshot::write_error(meta, &error))?;

        let database = Arc::clone(&self.database);
        let for_write = (state.clone(), meta.clone());
        run_blocking(move || -> Result<(), StateMachineError> {
            let (state, meta) = for_write;
            let transaction = begin_durable_write(&database)?;
            state_tables::write_installed(&transaction, &state, &meta, &data)?;
            transaction.commit().map_err(redb::Error::from)?;
            Ok(())
        })
        .await
        .map_err(|error| snapshot::write_error(meta, &error))?;

        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            last_log_id = ?meta.last_log_id,
            silos = state.silos.len(),
            hosts = state.hosts.len(),
            "installed snapshot"
        );

        self.working = state.clone();
        self.applied_since_durable = 0;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.shared.write().await.replace(state);
        self.applied_sender
            .send_replace(applied_index(self.last_applied));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let database = Arc::clone(&self.database);
        let current = run_blocking(move || {
            let transaction = database.begin_read().map_err(redb::Error::from)?;
            state_tables::read_current_snapshot(&transaction)
        })
        .await
        .map_err(StateMachineError::into_read_error)?;

        Ok(current.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(std::io::Cursor::new(stored.data)),
        }))
    }
}

/// Returns the index the applied watch carries for `last_applied`. It is 0 both before any entry
/// and after entry 0, which is the initial membership entry and carries no command.
fn applied_index(last_applied: Option<LogId<NodeId>>) -> u64 {
    last_applied.map_or(0, |log_id| log_id.index)
}
