//! The thread that commits applied entries to `state.redb` after `apply` has returned.
//!
//! `apply` updates the in-memory state and hands the changed rows to this thread, so a write's
//! reply does not wait for the commit. The commits are not what makes a write durable: the
//! entries are already committed in the Raft log, and openraft applies them again after a crash
//! (see `state_machine`). The thread commits the jobs in the order they were submitted, the
//! applies that queued up since the last commit in one transaction, so the file always
//! contains a prefix of the applied entries with its own `last_applied`.
//!
//! After a failed commit the thread commits nothing more, because a later commit would record
//! a `last_applied` past the lost rows. The failure is returned by the next [`StateWriter::submit`]
//! or [`StateWriter::flush`], which makes openraft stop this node with a storage error.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redb::Database;
use tokio::sync::oneshot;

use super::database::{begin_durable_write, begin_volatile_write};
use super::state_machine::StateMachineError;
use super::state_tables::{self, AppliedWrites};

/// Name of the writer thread, as tools such as `top -H` show it.
const WRITER_THREAD_NAME: &str = "colex-state-wr";

/// Shortest time between two commits. A commit costs the writer thread CPU time and the disk
/// the B-tree pages on the path to each changed row. One commit for all the applies of this
/// interval keeps both away from the moments when writes wait for the CPUs and the disk.
/// Only a flush waits for a commit, and it ends the wait at once.
const COMMIT_INTERVAL: Duration = Duration::from_millis(20);

/// Work for the writer thread.
enum Job {
    /// Commit the rows and meta values of one apply, synced when `durable` is set.
    Apply {
        writes: Box<AppliedWrites>,
        durable: bool,
    },
    /// Reply once every earlier job is done.
    Flush(oneshot::Sender<Result<(), StateMachineError>>),
}

/// Handle of the writer thread. Clones submit to the same thread, which ends once every handle
/// is dropped and the submitted jobs are done.
#[derive(Debug, Clone)]
pub(super) struct StateWriter {
    jobs: mpsc::Sender<Job>,
    /// Message of the first failed commit. Set once and never cleared.
    failure: Arc<Mutex<Option<String>>>,
}

impl StateWriter {
    /// Starts the writer thread for `database`.
    pub fn start(database: Arc<Database>) -> Result<StateWriter, StateMachineError> {
        let (jobs, receiver) = mpsc::channel();
        let failure = Arc::new(Mutex::new(None));
        let thread_failure = Arc::clone(&failure);
        std::thread::Builder::new()
            .name(WRITER_THREAD_NAME.to_owned())
            .spawn(move || run(&database, &receiver, &thread_failure))
            .map_err(StateMachineError::StartWriter)?;
        Ok(StateWriter { jobs, failure })
    }

    /// Queues the commit of `writes`, or returns the failure that stopped the writer.
    pub fn submit(&self, writes: AppliedWrites, durable: bool) -> Result<(), StateMachineError> {
        self.check()?;
        let job = Job::Apply {
            writes: Box::new(writes),
            durable,
        };
        self.jobs
            .send(job)
            .map_err(|_| StateMachineError::WriterStopped)
    }

    /// Waits until every job submitted before is committed.
    pub async fn flush(&self) -> Result<(), StateMachineError> {
        let (reply, done) = oneshot::channel();
        self.jobs
            .send(Job::Flush(reply))
            .map_err(|_| StateMachineError::WriterStopped)?;
        done.await.map_err(|_| StateMachineError::WriterStopped)?
    }

    /// Returns the failure that stopped the writer, if one did.
    pub fn check(&self) -> Result<(), StateMachineError> {
        match lock_failure(&self.failure).as_ref() {
            Some(message) => Err(StateMachineError::WriterFailed {
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }
}

fn lock_failure(failure: &Mutex<Option<String>>) -> std::sync::MutexGuard<'_, Option<String>> {
    // The value is a plain message, so a panic elsewhere cannot leave it half written.
    failure.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the jobs in order until every sender is gone, then makes the last commit durable.
/// Commits are at least [`COMMIT_INTERVAL`] apart: the applies that arrive meanwhile go into
/// the next commit together, unless a flush requests them at once.
fn run(database: &Database, receiver: &mpsc::Receiver<Job>, failure: &Mutex<Option<String>>) {
    // Whether a commit since the last synced one is not synced yet.
    let mut volatile_commits = false;
    let mut last_commit: Option<Instant> = None;
    while let Ok(first) = receiver.recv() {
        let mut batch = Batch::default();
        batch.add(first);
        if let Some(last_commit) = last_commit {
            let due = last_commit + COMMIT_INTERVAL;
            while batch.flushes.is_empty() {
                let Some(wait) = due.checked_duration_since(Instant::now()) else {
                    break;
                };
                match receiver.recv_timeout(wait) {
                    Ok(job) => batch.add(job),
                    Err(_) => break,
                }
            }
        }
        while let Ok(job) = receiver.try_recv() {
            batch.add(job);
        }

        if !batch.applies.is_empty() && lock_failure(failure).is_none() {
            volatile_commits = !batch.durable;
            last_commit = Some(Instant::now());
            if let Err(error) = commit(database, &batch.applies, batch.durable) {
                let last_applied = batch.applies.last().map(|writes| writes.last_applied);
                tracing::error!(
                    %error,
                    ?last_applied,
                    "failed to commit applied entries; no further applies are written"
                );
                *lock_failure(failure) = Some(error_chain(&error));
            }
        }
        for reply in batch.flushes {
            let result = match lock_failure(failure).as_ref() {
                Some(message) => Err(StateMachineError::WriterFailed {
                    message: message.clone(),
                }),
                None => Ok(()),
            };
            // The caller may have stopped waiting.
            let _ = reply.send(result);
        }
    }

    // The state machine is gone, as at a controller's shutdown. An empty synced commit makes
    // the unsynced ones before it durable, so the next start applies nothing again and tools
    // that read the file see the whole state.
    if volatile_commits && lock_failure(failure).is_none() {
        let synced = begin_durable_write(database)
            .and_then(|transaction| transaction.commit().map_err(redb::Error::from));
        if let Err(error) = synced {
            tracing::warn!(%error, "failed to sync the state at shutdown; the next start applies the last entries again");
        }
    }
}

/// Returns the error's message followed by those of its sources.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The jobs that one commit covers, in submission order.
#[derive(Default)]
struct Batch {
    applies: Vec<Box<AppliedWrites>>,
    /// Synced when any of the applies requested it.
    durable: bool,
    flushes: Vec<oneshot::Sender<Result<(), StateMachineError>>>,
}

impl Batch {
    fn add(&mut self, job: Job) {
        match job {
            Job::Apply { writes, durable } => {
                self.applies.push(writes);
                self.durable |= durable;
            }
            Job::Flush(reply) => self.flushes.push(reply),
        }
    }
}

/// Commits `applies` in order in one transaction, so a row that several of them wrote ends
/// with the last value and `last_applied` with the last entry.
fn commit(
    database: &Database,
    applies: &[Box<AppliedWrites>],
    durable: bool,
) -> Result<(), StateMachineError> {
    let transaction = if durable {
        begin_durable_write(database)?
    } else {
        begin_volatile_write(database)?
    };
    for writes in applies {
        state_tables::write_applied(&transaction, writes)?;
    }
    transaction.commit().map_err(redb::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};
    use redb::ReadableDatabase;

    use super::*;

    fn writes_up_to(index: u64) -> AppliedWrites {
        AppliedWrites {
            last_applied: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            ..AppliedWrites::default()
        }
    }

    /// Creates `state.redb` in `dir` with its tables.
    fn state_database(dir: &std::path::Path) -> Arc<Database> {
        let database = Arc::new(Database::create(dir.join("state.redb")).expect("create"));
        let transaction = begin_durable_write(&database).expect("begin write");
        state_tables::create_tables(&transaction).expect("create tables");
        transaction.commit().expect("commit tables");
        database
    }

    #[tokio::test]
    async fn flush_waits_for_queued_commits() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = state_database(dir.path());

        let writer = StateWriter::start(Arc::clone(&database)).expect("start writer");
        for index in 1..=50 {
            let durable = index == 20;
            writer.submit(writes_up_to(index), durable).expect("submit");
        }
        writer.flush().await.expect("flush");

        let transaction = database.begin_read().expect("begin read");
        let stored = state_tables::read_stored_state(&transaction).expect("read state");
        assert_eq!(stored.last_applied.map(|log_id| log_id.index), Some(50));
        assert!(writer.check().is_ok(), "writer reported a failure");
    }

    fn silo_row(id: &str) -> state_tables::RowWrite {
        let record = crate::state::SiloRecord {
            name: "web".to_owned(),
            index: 0,
            id: id.to_owned(),
            generation: 1,
            spec: Vec::new(),
            host: "a".to_owned(),
            desired: crate::state::Desired::Run,
            status: None,
            pending_reason: None,
            next_spec: None,
            events: Default::default(),
        };
        state_tables::row_write("silo row", "web", Some(&record)).expect("encode row")
    }

    #[tokio::test]
    async fn queued_applies_commit_in_order() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = state_database(dir.path());

        // The first apply commits at once, and the next ones wait for the interval together.
        let writer = StateWriter::start(Arc::clone(&database)).expect("start writer");
        for (index, id) in [(1, "00000001"), (2, "00000002"), (3, "00000003")] {
            let mut writes = writes_up_to(index);
            writes.silos.push(silo_row(id));
            writer.submit(writes, false).expect("submit");
        }
        writer.flush().await.expect("flush");

        let transaction = database.begin_read().expect("begin read");
        let stored = state_tables::read_stored_state(&transaction).expect("read state");
        assert_eq!(stored.last_applied.map(|log_id| log_id.index), Some(3));
        assert_eq!(stored.state.silos["web"].id, "00000003", "the last apply's row wins");
    }
}
