//! Which Raft log entries of this controller are on disk, and the thread that syncs the
//! leader's own appends while openraft replicates them.
//!
//! openraft 0.9 sends new entries to the followers only after the leader's append is reported
//! done. Reporting it after `fdatasync` puts the leader's sync and the followers' syncs one
//! after the other on every write. The leader therefore reports its own appends once they are
//! written, and this thread syncs them meanwhile. A report before the sync lets openraft count
//! an entry as committed while the leader's copy is only in the page cache, so nothing acts on
//! an entry before the leader has synced it too:
//!
//! - the state machine applies an entry, which sends its client the response, only once it
//!   is durable here ([`LogSync::wait_durable`]);
//! - the leader sends followers a commit index no higher than its own last durable entry
//!   ([`LogSync::clamp_commit`], in the network), so no follower applies it earlier.
//!
//! An entry is thus on the disks of a majority before any controller applies it. If the leader
//! loses power before its sync, a follower may hold an entry that a later leader overwrites,
//! but nobody applied or acknowledged it, which Raft allows for an uncommitted entry. A killed
//! process loses nothing either way, because its writes are in the page cache. Followers still
//! sync before they acknowledge, as Raft requires.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use openraft::LogId;
use tokio::sync::watch;

use super::NodeId;

/// State shared by the syncing thread and the appends.
#[derive(Debug)]
struct Shared {
    state: Mutex<SyncState>,
    /// Wakes the thread when a sync is pending or it should stop.
    wake: Condvar,
    /// The last durable entry, or the error that stopped syncing.
    durable: watch::Sender<Durable>,
}

#[derive(Debug)]
struct SyncState {
    /// The last entry written without a sync, and the file it is in. A compaction replaces
    /// the file, so the handle comes with each write.
    pending: Option<(LogId<NodeId>, Arc<File>)>,
    /// Changes with every truncation, so a sync that started before one does not report
    /// entries that the truncation removed.
    epoch: u64,
    stopping: bool,
}

/// The last entry known to be on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Durable {
    Upto(Option<LogId<NodeId>>),
    /// A sync failed. What the file contains is unknown from then on, so nothing more counts as
    /// durable and every wait fails.
    Failed(String),
}

/// Errors of [`LogSync::wait_durable`].
#[derive(Debug, thiserror::Error)]
pub enum LogSyncError {
    #[error("syncing the raft log failed, so no later entry is applied: {0}")]
    SyncFailed(String),
    #[error("the raft log sync thread stopped")]
    Stopped,
}

/// A handle on the durable part of the log. Clones share it.
#[derive(Debug, Clone)]
pub struct LogSync {
    shared: Arc<Shared>,
}

/// Stops the syncing thread when dropped, after it synced what is pending.
#[derive(Debug)]
pub struct SyncThread {
    shared: Arc<Shared>,
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.wake.notify_one();
    }
}

impl LogSync {
    /// Starts the syncing thread. `durable` is the last entry already on disk.
    pub fn start(durable: Option<LogId<NodeId>>) -> std::io::Result<(LogSync, SyncThread)> {
        let (durable, _) = watch::channel(Durable::Upto(durable));
        let shared = Arc::new(Shared {
            state: Mutex::new(SyncState {
                pending: None,
                epoch: 0,
                stopping: false,
            }),
            wake: Condvar::new(),
            durable,
        });
        let for_thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("colex-log-sync".to_owned())
            .spawn(move || sync_loop(&for_thread))?;
        Ok((
            LogSync {
                shared: Arc::clone(&shared),
            },
            SyncThread { shared },
        ))
    }

    /// Queues a sync of `file`, to which entries up to `last` were written. A sync that is
    /// already running covers only what was written before it started, so the thread syncs
    /// again for these. Writes that arrive meanwhile share that next sync.
    pub fn written(&self, last: LogId<NodeId>, file: Arc<File>) {
        lock(&self.shared.state).pending = Some((last, file));
        self.shared.wake.notify_one();
    }

    /// Records that the entries up to `last` were synced by the caller.
    pub fn synced(&self, last: LogId<NodeId>) {
        let _state = lock(&self.shared.state);
        publish(&self.shared, last);
    }

    /// Records a truncation: `last` is the last entry kept. Syncs that started before it do
    /// not count, because the entries they covered may be gone.
    pub fn truncated(&self, last: Option<LogId<NodeId>>) {
        let mut state = lock(&self.shared.state);
        state.epoch += 1;
        state.pending = None;
        self.shared.durable.send_modify(|durable| {
            if let Durable::Upto(upto) = durable {
                *upto = (*upto).min(last);
            }
        });
    }

    /// Returns the last durable entry, `None` when there is none or syncing failed.
    pub fn durable(&self) -> Option<LogId<NodeId>> {
        match &*self.shared.durable.borrow() {
            Durable::Upto(upto) => *upto,
            Durable::Failed(_) => None,
        }
    }

    /// Lowers `leader_commit` to the last durable entry, for the leader's AppendEntries.
    /// Both ids are in this controller's log, where ids grow with the index.
    pub fn clamp_commit(&self, leader_commit: Option<LogId<NodeId>>) -> Option<LogId<NodeId>> {
        leader_commit.min(self.durable())
    }

    /// Waits until the entry at `index` is on disk.
    pub async fn wait_durable(&self, index: u64) -> Result<(), LogSyncError> {
        let mut durable = self.shared.durable.subscribe();
        let reached = durable
            .wait_for(|durable| match durable {
                Durable::Upto(upto) => upto.is_some_and(|upto| upto.index >= index),
                Durable::Failed(_) => true,
            })
            .await
            .map_err(|_| LogSyncError::Stopped)?;
        match &*reached {
            Durable::Failed(error) => Err(LogSyncError::SyncFailed(error.clone())),
            Durable::Upto(_) => Ok(()),
        }
    }
}

/// Raises the durable entry to `last`. The caller holds the state lock, so a truncation
/// cannot come between its check and this.
fn publish(shared: &Shared, last: LogId<NodeId>) {
    shared.durable.send_if_modified(|durable| match durable {
        Durable::Upto(upto) if *upto < Some(last) => {
            *upto = Some(last);
            true
        }
        _ => false,
    });
}

/// Syncs pending writes until stopped, and once more for what is pending then.
fn sync_loop(shared: &Shared) {
    let mut state = lock(&shared.state);
    loop {
        if let Some((last, file)) = state.pending.take() {
            let epoch = state.epoch;
            drop(state);
            let result = file.sync_data();
            state = lock(&shared.state);
            match result {
                Ok(()) if state.epoch == epoch => publish(shared, last),
                Ok(()) => {}
                Err(error) => {
                    tracing::error!(%error, log_id = %last, "syncing the raft log failed, so this controller applies no later entry; restart it once the disk works");
                    shared.durable.send_replace(Durable::Failed(error.to_string()));
                    return;
                }
            }
            continue;
        }
        if state.stopping {
            return;
        }
        state = shared.wake.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

/// Locks the state. It holds no invariant a panic could break halfway, so a poisoned lock is
/// used as it is.
fn lock(state: &Mutex<SyncState>) -> MutexGuard<'_, SyncState> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    #[tokio::test]
    async fn written_entries_become_durable() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = Arc::new(File::create(dir.path().join("entries")).expect("file"));
        let (sync, _thread) = LogSync::start(Some(log_id(1))).expect("start");
        sync.written(log_id(3), Arc::clone(&file));
        sync.wait_durable(3).await.expect("durable");
        assert_eq!(sync.durable(), Some(log_id(3)));
        assert_eq!(sync.clamp_commit(Some(log_id(5))), Some(log_id(3)));
        assert_eq!(sync.clamp_commit(Some(log_id(2))), Some(log_id(2)));
    }

    #[tokio::test]
    async fn truncation_lowers_the_durable_entry() {
        let (sync, _thread) = LogSync::start(None).expect("start");
        sync.synced(log_id(5));
        sync.truncated(Some(log_id(3)));
        assert_eq!(sync.durable(), Some(log_id(3)));
        sync.synced(log_id(4));
        assert_eq!(sync.durable(), Some(log_id(4)));
    }

    #[tokio::test]
    async fn waits_until_the_index_is_synced() {
        let (sync, _thread) = LogSync::start(None).expect("start");
        let waiting = tokio::spawn({
            let sync = sync.clone();
            async move { sync.wait_durable(2).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing is durable yet");
        sync.synced(log_id(2));
        waiting.await.expect("task").expect("durable");
    }
}
