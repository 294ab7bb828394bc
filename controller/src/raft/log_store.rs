//! The Raft log and vote: the entries in the append-only file `raft-log.entries`
//! (`log_file`), the vote and the last purged log id in the redb file `raft-log.redb`.
//!
//! Every write is synced before the method returns: an append or a truncation of the entries
//! file, and a redb write transaction with `Durability::Immediate` for a vote or a purge. The
//! one exception is the leader's append of its own entries, which returns once written and is
//! synced by the thread of `log_sync`. So the leader's sync overlaps the replication, and
//! `log_sync` explains why that loses no acknowledged write. Appends run on
//! the calling thread, votes and purges on the blocking pool. openraft calls the
//! `RaftLogStorage` methods one at a time on the single store it owns, because they take
//! `&mut self`. A vote is synced before the next log write. Every sync of the entries file
//! covers all writes before it, and opening the file keeps the records only up to the first
//! damaged one, so no entry survives a crash without the entries before it.
//!
//! The store also records the last committed log id that openraft reports, so that a restarted
//! node applies the committed entries again at once (see `state_machine`). It is written into
//! the headers of the next append instead of with a sync of its own, because openraft reports it
//! between two appends and waits for `save_committed` before it applies. The recorded value can
//! therefore lag behind the real one by one append, and the entries after it are applied once
//! the leader reports them committed again.
//!
//! Data folders of builds that kept the entries in the `log` table of `raft-log.redb` are
//! moved to the entries file when the store opens: the file is written and synced first, then
//! the table is emptied.
//!
//! NOTE: a build from before the entries file, started on a data folder that was moved, finds
//! an empty log and cannot serve as a member. Going back to such a build is not supported.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::database::{self, begin_durable_write, run_blocking};
use super::log_file::{self, LogFile, LogFileError, Record};
use super::log_sync::{LogSync, SyncThread};
use super::recent_entries::RecentEntries;
use super::{NodeId, TypeConfig};

/// Log entries by index, each the JSON encoding of an `openraft::Entry<TypeConfig>`, as builds
/// before the entries file kept them. Read only to move them into the entries file.
const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Extension that turns the path of `raft-log.redb` into that of the entries file.
const ENTRIES_FILE_EXTENSION: &str = "entries";
/// Single values of the log store by name, JSON-encoded.
const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `Vote<NodeId>` last saved by `save_vote`.
const VOTE_KEY: &str = "vote";
/// `LogId<NodeId>` of the last entry removed by `purge`.
const LAST_PURGED_KEY: &str = "last_purged";

/// Errors of the log store.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("failed to open raft log database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("raft log database operation failed")]
    Database(#[from] redb::Error),
    #[error("raft log entries file operation failed")]
    File(#[from] LogFileError),
    #[error("failed to encode {what} as JSON")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to decode {what} from JSON")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("blocking raft log task failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("failed to start the raft log sync thread")]
    SyncThread(#[source] std::io::Error),
}

impl LogStoreError {
    fn into_read_error(self) -> StorageError<NodeId> {
        StorageIOError::read_logs(AnyError::new(&self)).into()
    }

    fn into_write_error(self) -> StorageError<NodeId> {
        StorageIOError::write_logs(AnyError::new(&self)).into()
    }
}

/// The Raft log and vote on the entries file and one redb file.
///
/// Clones share the files and the recent entries. openraft hands clones to its replication
/// tasks as log readers, which only read. Every write goes through the one store openraft owns.
#[derive(Debug, Clone)]
pub struct LogStore {
    database: Arc<Database>,
    entries: Arc<Mutex<LogFile>>,
    /// The newest entries, which serve most reads without reading the file. Changed only after
    /// a sync that added entries and before one that removes them, so it never contains an
    /// entry the file lacks.
    recent: Arc<Mutex<RecentEntries>>,
    /// The committed log id from `save_committed`, written with the next append.
    committed: Option<LogId<NodeId>>,
    /// This controller's id once [`LogStore::for_node`] set it. Only then are the appends
    /// of its own entries as leader reported before their sync.
    node_id: Option<NodeId>,
    /// The vote saved or read last.
    vote: Option<Vote<NodeId>>,
    /// The durable part of the log, and the thread that syncs the leader's appends.
    sync: LogSync,
    _sync_thread: Arc<SyncThread>,
}

impl LogStore {
    /// Opens or creates the log database at `path` and the entries file beside it, and moves
    /// the entries of an earlier build from the database into the file.
    pub async fn open(path: &Path) -> Result<LogStore, LogStoreError> {
        let database = database::open(path)
            .await
            .map_err(|source| LogStoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let database = Arc::new(database);
        let entries_path = path.with_extension(ENTRIES_FILE_EXTENSION);

        let for_open = Arc::clone(&database);
        let entries = run_blocking(move || -> Result<LogFile, LogStoreError> {
            let transaction = begin_durable_write(&for_open)?;
            transaction
                .open_table(LOG_TABLE)
                .map_err(redb::Error::from)?;
            transaction
                .open_table(META_TABLE)
                .map_err(redb::Error::from)?;
            transaction.commit().map_err(redb::Error::from)?;

            move_table_entries(&for_open, &entries_path)?;
            let last_purged: Option<LogId<NodeId>> =
                read_meta_blocking(&for_open, LAST_PURGED_KEY)?;
            let entries = LogFile::open(&entries_path, last_purged.map(|log_id| log_id.index))?;
            Ok(entries)
        })
        .await?;

        // What an earlier run wrote may still be only in the page cache. One sync here lets
        // everything in the file count as durable.
        let entries = Arc::new(Mutex::new(entries));
        let file = Arc::clone(&entries);
        run_blocking(move || lock_file(&file).sync().map_err(LogStoreError::from)).await?;
        let (sync, sync_thread) = LogSync::start(None).map_err(LogStoreError::SyncThread)?;
        let store = LogStore {
            database,
            entries,
            recent: Arc::default(),
            committed: None,
            node_id: None,
            vote: None,
            sync,
            _sync_thread: Arc::new(sync_thread),
        };
        if let Some(last) = store.last_log_id().await? {
            store.sync.synced(last);
        }
        Ok(store)
    }

    /// Lets controller `id` report its own appends as leader before they are synced; see
    /// [`super::log_sync`]. The state machine and the network must then use [`Self::sync`].
    pub fn for_node(mut self, id: NodeId) -> LogStore {
        self.node_id = Some(id);
        self
    }

    /// Returns the handle on the durable part of the log.
    pub fn sync(&self) -> LogSync {
        self.sync.clone()
    }

    /// Returns true when `entries` are this controller's own, appended as the leader of the
    /// saved vote. openraft saves a newer leader's vote before it appends that leader's
    /// entries, so a follower's append never passes this.
    fn own_leader_entries(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let (Some(node_id), Some(vote)) = (self.node_id, self.vote) else {
            return false;
        };
        vote.is_committed()
            && vote.leader_id().voted_for() == Some(node_id)
            && entries
                .iter()
                .all(|entry| entry.log_id.leader_id == *vote.leader_id())
    }

    /// Returns a handle that upgrades while any clone of this store still has the file open.
    pub fn database_handle(&self) -> Weak<Database> {
        Arc::downgrade(&self.database)
    }

    /// Locks the recent entries. A panic while they were locked can have left them half
    /// changed, so a poisoned lock is emptied, which makes every read use the file.
    fn recent(&self) -> MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|poisoned| {
            let mut recent = poisoned.into_inner();
            recent.clear();
            recent
        })
    }

    async fn read_meta<T>(&self, key: &'static str) -> Result<Option<T>, LogStoreError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let database = Arc::clone(&self.database);
        run_blocking(move || read_meta_blocking(&database, key)).await
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), LogStoreError> {
        let encoded = serde_json::to_vec(value)
            .map_err(|source| LogStoreError::Encode { what: key, source })?;
        let database = Arc::clone(&self.database);
        run_blocking(move || -> Result<(), LogStoreError> {
            let transaction = begin_durable_write(&database)?;
            {
                let mut table = transaction
                    .open_table(META_TABLE)
                    .map_err(redb::Error::from)?;
                table
                    .insert(key, encoded.as_slice())
                    .map_err(redb::Error::from)?;
            }
            transaction.commit().map_err(redb::Error::from)?;
            Ok(())
        })
        .await
    }

    async fn read_entries(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, LogStoreError> {
        let entries = Arc::clone(&self.entries);
        run_blocking(move || {
            let file = lock_file(&entries);
            let mut read = Vec::new();
            for index in file.indexes((start, end)) {
                if let Some(payload) = file.read(index)? {
                    read.push(decode_entry(&payload)?);
                }
            }
            Ok(read)
        })
        .await
    }

    /// Returns the log id of entry `index` when the file keeps it.
    async fn log_id_at(&self, index: Option<u64>) -> Result<Option<LogId<NodeId>>, LogStoreError> {
        let Some(index) = index else {
            return Ok(None);
        };
        let entries = Arc::clone(&self.entries);
        run_blocking(move || {
            let payload = lock_file(&entries).read(index)?;
            payload
                .map(|payload| decode_entry(&payload).map(|entry| entry.log_id))
                .transpose()
        })
        .await
    }

    async fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, LogStoreError> {
        let last = lock_file(&self.entries).last_index();
        self.log_id_at(last).await
    }

    /// Appends `rows` to the entries file, with the committed index when known, and returns
    /// once they are synced.
    ///
    /// This blocks the calling thread for the write and its sync (about 0.2 ms) instead of
    /// moving them to tokio's blocking pool. openraft's core task waits for the append before
    /// it does anything else, so nothing is gained by freeing its thread. The hand-over to a
    /// pool thread and back cost two thread wake-ups per append on every controller. With one
    /// runtime worker (the default) the controller's other tasks wait meanwhile, and a sync
    /// slower than 50 ms shows as a runtime stall.
    fn write_entries(&self, rows: Vec<(u64, Vec<u8>)>, sync: bool) -> Result<Arc<std::fs::File>, LogStoreError> {
        let committed_index = self.committed.map(|log_id| log_id.index);
        let records = records_of(&rows);
        let mut file = lock_file(&self.entries);
        file.append(&records, committed_index, sync)?;
        Ok(file.handle())
    }

    /// Deletes the entries with index `since` and above.
    async fn delete_since(&self, since: u64) -> Result<(), LogStoreError> {
        let entries = Arc::clone(&self.entries);
        run_blocking(move || -> Result<(), LogStoreError> {
            lock_file(&entries).truncate(since)?;
            Ok(())
        })
        .await
    }

    /// Records `upto` as the last purged log id, then drops the entries up to it, inclusive.
    ///
    /// `last_purged` is durable before the entries go, as openraft requires, and a restart
    /// skips the entries up to it that the file still contains.
    async fn delete_upto(&self, upto: LogId<NodeId>) -> Result<(), LogStoreError> {
        self.write_meta(LAST_PURGED_KEY, &upto).await?;
        let entries = Arc::clone(&self.entries);
        run_blocking(move || -> Result<(), LogStoreError> {
            lock_file(&entries).purge(upto.index)?;
            Ok(())
        })
        .await
    }
}

/// Borrows `(index, JSON)` rows as log file records.
fn records_of(rows: &[(u64, Vec<u8>)]) -> Vec<Record<'_>> {
    rows.iter()
        .map(|(index, payload)| Record {
            index: *index,
            payload,
        })
        .collect()
}

/// Locks the entries file. Its methods change their state only after their IO succeeded, so
/// the state behind a poisoned lock is still whole.
fn lock_file(entries: &Mutex<LogFile>) -> MutexGuard<'_, LogFile> {
    entries.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_meta_blocking<T: DeserializeOwned>(
    database: &Database,
    key: &'static str,
) -> Result<Option<T>, LogStoreError> {
    let transaction = database.begin_read().map_err(redb::Error::from)?;
    let table = transaction
        .open_table(META_TABLE)
        .map_err(redb::Error::from)?;
    let Some(value) = table.get(key).map_err(redb::Error::from)? else {
        return Ok(None);
    };
    let decoded = serde_json::from_slice(value.value())
        .map_err(|source| LogStoreError::Decode { what: key, source })?;
    Ok(Some(decoded))
}

/// Moves the entries that an earlier build kept in the `log` table into the entries file at
/// `entries_path`, and empties the table. The file is complete and synced before the table is
/// emptied, so a crash in between leaves the entries in the file, which is then used.
fn move_table_entries(database: &Database, entries_path: &Path) -> Result<(), LogStoreError> {
    let rows: Vec<(u64, Vec<u8>)> = {
        let transaction = database.begin_read().map_err(redb::Error::from)?;
        let table = transaction
            .open_table(LOG_TABLE)
            .map_err(redb::Error::from)?;
        let mut rows = Vec::new();
        for row in table.iter().map_err(redb::Error::from)? {
            let (index, value) = row.map_err(redb::Error::from)?;
            rows.push((index.value(), value.value().to_vec()));
        }
        rows
    };
    if rows.is_empty() {
        return Ok(());
    }

    let file_has_entries =
        entries_path.exists() && LogFile::open(entries_path, None)?.last_index().is_some();
    if file_has_entries {
        tracing::info!(path = %entries_path.display(), "raft log entries were already moved to the entries file");
    } else {
        let records = records_of(&rows);
        log_file::write_new_file(entries_path, &records, None)?;
        tracing::info!(
            path = %entries_path.display(),
            entries = rows.len(),
            "moved raft log entries from the database to the entries file"
        );
    }

    let transaction = begin_durable_write(database)?;
    {
        let mut table = transaction
            .open_table(LOG_TABLE)
            .map_err(redb::Error::from)?;
        table.retain(|_, _| false).map_err(redb::Error::from)?;
    }
    transaction.commit().map_err(redb::Error::from)?;
    Ok(())
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, LogStoreError> {
    serde_json::from_slice(bytes).map_err(|source| LogStoreError::Decode {
        what: "log entry",
        source,
    })
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        if let Some(entries) = self.recent().get(start, end) {
            return Ok(entries);
        }
        self.read_entries(start, end)
            .await
            .map_err(LogStoreError::into_read_error)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self
            .read_meta(LAST_PURGED_KEY)
            .await
            .map_err(LogStoreError::into_read_error)?;
        let last_in_log = self
            .last_log_id()
            .await
            .map_err(LogStoreError::into_read_error)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_in_log.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Saves `vote` and returns after the commit is on disk, so a node that restarts can never
    /// vote twice in one term.
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(VOTE_KEY, vote)
            .await
            .map_err(|error| StorageIOError::write_vote(AnyError::new(&error)))?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        let vote = self
            .read_meta(VOTE_KEY)
            .await
            .map_err(|error| StorageIOError::read_vote(AnyError::new(&error)))?;
        self.vote = vote;
        Ok(vote)
    }

    /// Keeps `committed` for the next append to write. openraft 0.9.25 calls this before it
    /// applies the newly committed entries, and the state machine does not sync every apply, so
    /// the stored value lets a restarted node apply them again before it hears from a leader.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.committed = committed;
        Ok(())
    }

    /// Returns the committed log id saved last: the one not yet written when there is one,
    /// otherwise the highest one in the entries file, if that entry is still kept.
    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        if self.committed.is_none() {
            let index = lock_file(&self.entries).committed_index();
            self.committed = self
                .log_id_at(index)
                .await
                .map_err(LogStoreError::into_read_error)?;
        }
        Ok(self.committed)
    }

    /// Appends `entries` to the entries file with one write and reports them flushed.
    ///
    /// Order matters. `callback.log_io_completed(Ok(()))` reports the entries as flushed, after
    /// which a leader counts them towards the commit quorum and replicates them, and a follower
    /// acknowledges them. A follower's append therefore reports only after its sync, so a
    /// crash before the sync loses only entries that were never acknowledged. The leader's
    /// own append reports once written and is synced by the [`LogSync`] thread meanwhile;
    /// nothing applies its entries before that sync (see [`super::log_sync`]).
    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        let mut appended = Vec::new();
        for entry in entries {
            let encoded = serde_json::to_vec(&entry).map_err(|source| {
                LogStoreError::Encode {
                    what: "log entry",
                    source,
                }
                .into_write_error()
            })?;
            rows.push((entry.log_id.index, encoded));
            appended.push(entry);
        }
        let Some(last) = appended.last().map(|entry| entry.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let sizes: Vec<usize> = rows.iter().map(|(_, encoded)| encoded.len()).collect();
        let sync_later = self.own_leader_entries(&appended);

        match self.write_entries(rows, !sync_later) {
            Ok(file) => {
                self.recent().append(appended.into_iter().zip(sizes));
                if sync_later {
                    self.sync.written(last, file);
                } else {
                    self.sync.synced(last);
                }
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "failed to append raft log entries");
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(error.into_write_error())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "truncating raft log");
        self.recent().truncate(log_id.index);
        self.delete_since(log_id.index)
            .await
            .map_err(LogStoreError::into_write_error)?;
        let last_kept = self
            .last_log_id()
            .await
            .map_err(LogStoreError::into_read_error)?;
        self.sync.truncated(last_kept);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purging raft log");
        self.recent().purge(log_id.index);
        self.delete_upto(log_id)
            .await
            .map_err(LogStoreError::into_write_error)
    }
}
