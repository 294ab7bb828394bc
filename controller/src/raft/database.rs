//! Opening the redb files and running their transactions off the async runtime.

use std::path::Path;
use std::time::Duration;

use redb::{Database, DatabaseError, Durability, WriteTransaction};
use tokio::task::JoinError;

/// How long [`open`] keeps retrying a file that is still open in this process. openraft drops
/// the state machine in its own task after `Raft::shutdown` returns, so a node reopened right
/// after a shutdown can find the previous handle still alive for a few milliseconds.
const OPEN_RETRY_TIMEOUT: Duration = Duration::from_secs(5);
const OPEN_RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// Opens the redb file at `path`, creating it when it does not exist.
///
/// redb locks the file, so a second open fails with [`DatabaseError::DatabaseAlreadyOpen`]. That
/// error is retried for [`OPEN_RETRY_TIMEOUT`], and every other error is returned at once.
pub(super) async fn open(path: &Path) -> Result<Database, DatabaseError> {
    let deadline = tokio::time::Instant::now() + OPEN_RETRY_TIMEOUT;
    loop {
        let owned_path = path.to_owned();
        let result = tokio::task::spawn_blocking(move || Database::create(owned_path))
            .await
            .unwrap_or_else(|join_error| {
                Err(DatabaseError::Storage(join_error_to_storage(join_error)))
            });
        match result {
            Err(DatabaseError::DatabaseAlreadyOpen) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(path = %path.display(), "database file still open, retrying");
                tokio::time::sleep(OPEN_RETRY_INTERVAL).await;
            }
            other => return other,
        }
    }
}

/// Runs `work` on the blocking thread pool, because redb reads and commits (with their fsync)
/// block the calling thread.
pub(super) async fn run_blocking<T, E>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<JoinError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?
}

/// Begins a write transaction whose commit is on disk when `commit()` returns. The commit also
/// makes every earlier commit of the file durable, including those of [`begin_volatile_write`].
///
/// Only one write transaction per file exists at a time: redb's `begin_write` blocks until the
/// previous one has committed or aborted, so writes to one file are serialized.
pub(super) fn begin_durable_write(database: &Database) -> Result<WriteTransaction, redb::Error> {
    begin_write(database, Durability::Immediate)
}

/// Begins a write transaction whose commit is visible to later transactions at once but reaches
/// the disk only with the next durable commit of the same file. A crash loses it.
pub(super) fn begin_volatile_write(database: &Database) -> Result<WriteTransaction, redb::Error> {
    begin_write(database, Durability::None)
}

fn begin_write(
    database: &Database,
    durability: Durability,
) -> Result<WriteTransaction, redb::Error> {
    let mut transaction = database.begin_write()?;
    transaction.set_durability(durability)?;
    Ok(transaction)
}

fn join_error_to_storage(join_error: JoinError) -> redb::StorageError {
    redb::StorageError::Io(std::io::Error::other(format!(
        "task opening the database failed: {join_error}"
    )))
}
