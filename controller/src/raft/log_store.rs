//! The Raft log and vote, stored in the redb file `raft-log.redb`.
//!
//! Every write is one redb write transaction with `Durability::Immediate`, run on the blocking
//! pool and awaited before the method returns. openraft calls the `RaftLogStorage` methods one
//! at a time on the single store it owns, because they take `&mut self`. Since each method
//! returns only after its commit, a later vote or log write never reaches the disk before an
//! earlier one.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::database::{self, begin_durable_write, run_blocking};
use super::{NodeId, TypeConfig};

/// Log entries by index, each the JSON encoding of an `openraft::Entry<TypeConfig>`.
const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
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
}

impl LogStoreError {
    fn into_read_error(self) -> StorageError<NodeId> {
        StorageIOError::read_logs(AnyError::new(&self)).into()
    }

    fn into_write_error(self) -> StorageError<NodeId> {
        StorageIOError::write_logs(AnyError::new(&self)).into()
    }
}

/// The Raft log and vote on one redb file.
///
/// Clones share the file. openraft hands clones to its replication tasks as log readers, which
/// only read. Every write goes through the one store openraft owns.
#[derive(Debug, Clone)]
pub struct LogStore {
    database: Arc<Database>,
}

impl LogStore {
    /// Opens or creates the log database at `path` and creates its tables.
    pub async fn open(path: &Path) -> Result<LogStore, LogStoreError> {
        let database = database::open(path)
            .await
            .map_err(|source| LogStoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let database = Arc::new(database);

        let for_tables = Arc::clone(&database);
        run_blocking(move || -> Result<(), LogStoreError> {
            let transaction = begin_durable_write(&for_tables)?;
            transaction
                .open_table(LOG_TABLE)
                .map_err(redb::Error::from)?;
            transaction
                .open_table(META_TABLE)
                .map_err(redb::Error::from)?;
            transaction.commit().map_err(redb::Error::from)?;
            Ok(())
        })
        .await?;

        Ok(LogStore { database })
    }

    /// Returns a handle that upgrades while any clone of this store still has the file open.
    pub fn database_handle(&self) -> Weak<Database> {
        Arc::downgrade(&self.database)
    }

    async fn read_meta<T>(&self, key: &'static str) -> Result<Option<T>, LogStoreError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let database = Arc::clone(&self.database);
        run_blocking(move || {
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
        })
        .await
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
        let database = Arc::clone(&self.database);
        run_blocking(move || {
            let transaction = database.begin_read().map_err(redb::Error::from)?;
            let table = transaction
                .open_table(LOG_TABLE)
                .map_err(redb::Error::from)?;
            let mut entries = Vec::new();
            for row in table.range((start, end)).map_err(redb::Error::from)? {
                let (_index, value) = row.map_err(redb::Error::from)?;
                entries.push(decode_entry(value.value())?);
            }
            Ok(entries)
        })
        .await
    }

    async fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, LogStoreError> {
        let database = Arc::clone(&self.database);
        run_blocking(move || {
            let transaction = database.begin_read().map_err(redb::Error::from)?;
            let table = transaction
                .open_table(LOG_TABLE)
                .map_err(redb::Error::from)?;
            let last = match table.last().map_err(redb::Error::from)? {
                Some((_index, value)) => Some(decode_entry(value.value())?.log_id),
                None => None,
            };
            Ok(last)
        })
        .await
    }

    async fn write_entries(&self, rows: Vec<(u64, Vec<u8>)>) -> Result<(), LogStoreError> {
        let database = Arc::clone(&self.database);
        run_blocking(move || -> Result<(), LogStoreError> {
            let transaction = begin_durable_write(&database)?;
            {
                let mut table = transaction
                    .open_table(LOG_TABLE)
                    .map_err(redb::Error::from)?;
                for (index, encoded) in &rows {
                    table
                        .insert(*index, encoded.as_slice())
                        .map_err(redb::Error::from)?;
                }
            }
            transaction.commit().map_err(redb::Error::from)?;
            Ok(())
        })
        .await
    }

    /// Deletes the entries with index `since` and above.
    async fn delete_since(&self, since: u64) -> Result<(), LogStoreError> {
        let database = Arc::clone(&self.database);
        run_blocking(move || -> Result<(), LogStoreError> {
            let transaction = begin_durable_write(&database)?;
            {
                let mut table = transaction
                    .open_table(LOG_TABLE)
                    .map_err(redb::Error::from)?;
                table
                    .retain_in(since.., |_, _| false)
                    .map_err(redb::Error::from)?;
            }
            transaction.commit().map_err(redb::Error::from)?;
            Ok(())
        })
        .await
    }

    /// Records `upto` as the last purged log id and deletes the entries up to it, inclusive.
    ///
    /// Both changes are in one transaction, so the stored `last_purged` is never behind the
    /// deleted entries: it is durable no later than the deletion, as openraft requires.
    async fn delete_upto(&self, upto: LogId<NodeId>) -> Result<(), LogStoreError> {
        let encoded = serde_json::to_vec(&upto).map_err(|source| LogStoreError::Encode {
            what: LAST_PURGED_KEY,
            source,
        })?;
        let database = Arc::clone(&self.database);
        run_blocking(move || -> Result<(), LogStoreError> {
            let transaction = begin_durable_write(&database)?;
            {
                let mut meta = transaction
                    .open_table(META_TABLE)
                    .map_err(redb::Error::from)?;
                meta.insert(LAST_PURGED_KEY, encoded.as_slice())
                    .map_err(redb::Error::from)?;
                let mut log = transaction
                    .open_table(LOG_TABLE)
                    .map_err(redb::Error::from)?;
                log.retain_in(..=upto.index, |_, _| false)
                    .map_err(redb::Error::from)?;
            }
            transaction.commit().map_err(redb::Error::from)?;
            Ok(())
        })
        .await
    }
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
            .map_err(|error| StorageIOError::write_vote(AnyError::new(&error)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE_KEY)
            .await
            .map_err(|error| StorageIOError::read_vote(AnyError::new(&error)).into())
    }

    /// Writes `entries` in one transaction and reports them flushed once it has committed.
    ///
    /// Order matters. `callback.log_io_completed(Ok(()))` reports the entries as durable, after
    /// which a leader counts them towards the commit quorum and a follower acknowledges them. So
    /// it runs only after `commit()` has returned, and a crash before the commit loses only
    /// entries that were never reported.
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
        for entry in entries {
            let encoded = serde_json::to_vec(&entry).map_err(|source| {
                LogStoreError::Encode {
                    what: "log entry",
                    source,
                }
                .into_write_error()
            })?;
            rows.push((entry.log_id.index, encoded));
        }

        match self.write_entries(rows).await {
            Ok(()) => {
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
        self.delete_since(log_id.index)
            .await
            .map_err(LogStoreError::into_write_error)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purging raft log");
        self.delete_upto(log_id)
            .await
            .map_err(LogStoreError::into_write_error)
    }
}
