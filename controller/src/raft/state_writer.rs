//! The thread that commits applied entries to `state.redb` after `apply` has returned.
//!
//! `apply` updates the in-memory state and hands the changed rows to this thread, so a write's
//! reply does not wait for the commit. The commits are not what makes a write durable: the
//! entries are already committed in the Raft log, and openraft applies them again after a crash
//! (see `state_machine`). The thread commits the jobs one at a time in the order they were
//! submitted, so the file always contains a prefix of the applied entries with its own
//! `last_applied`.
//!
//! After a failed commit the thread commits nothing more, because a later commit would record
//! a `last_applied` past the lost rows. The failure is returned by the next [`StateWriter::submit`]
//! or [`StateWriter::flush`], which makes openraft stop this node with a storage error.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use redb::Database;
use tokio::sync::oneshot;

use super::database::{begin_durable_write, begin_volatile_write};
use super::state_machine::StateMachineError;
use super::state_tables::{self, AppliedWrites};

/// Name of the writer thread, as tools such as `top -H` show it.
const WRITER_THREAD_NAME: &str = "colex-state-wr";

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
fn run(database: &Database, receiver: &mpsc::Receiver<Job>, failure: &Mutex<Option<String>>) {
    // Whether a commit since the last synced one is not synced yet.
    let mut volatile_commits = false;
    while let Ok(job) = receiver.recv() {
        match job {
            Job::Apply { writes, durable } => {
                if lock_failure(failure).is_some() {
                    continue;
                }
                volatile_commits = !durable;
                if let Err(error) = commit(database, &writes, durable) {
                    tracing::error!(
                        %error,
                        last_applied = ?writes.last_applied,
                        "failed to commit applied entries; no further applies are written"
                    );
                    *lock_failure(failure) = Some(error_chain(&error));
                }
            }
            Job::Flush(reply) => {
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

fn commit(
    database: &Database,
    writes: &AppliedWrites,
    durable: bool,
) -> Result<(), StateMachineError> {
    let transaction = if durable {
        begin_durable_write(database)?
    } else {
        begin_volatile_write(database)?
    };
    state_tables::write_applied(&transaction, writes)?;
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

    #[tokio::test]
    async fn flush_waits_for_queued_commits() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = Arc::new(Database::create(dir.path().join("state.redb")).expect("create"));
        let transaction = begin_durable_write(&database).expect("begin write");
        state_tables::create_tables(&transaction).expect("create tables");
        transaction.commit().expect("commit tables");

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
}
