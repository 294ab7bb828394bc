//! Spare helpers: helper processes that wait for a job, so a silo start waits neither for the
//! `exec` of the helper binary and its start-up nor for the clone of the silo's PID 1 into its
//! namespaces (together about 2.5 ms of a start on the reference machine).
//!
//! A spare is a helper in the agent's cgroup whose PID 1 exists already. That PID 1 was cloned
//! into new pid, mount, UTS, IPC, network and (unless the agent runs silos without them) user
//! namespaces, has its id maps written, and blocks until the job arrives. Its namespaces contain
//! nothing yet: no link besides loopback, no mount of its own. The helper blocks on its stdin
//! and exits on EOF, killing its PID 1, so a spare ends with the agent, also when the agent is
//! killed.
//!
//! PID 1 copied the host's mount table at the clone. Where the host's mounts are shared (the
//! systemd default), mounts the host makes later reach PID 1 through propagation.
//! NOTE: on a host whose mounts are private, a silo started from a spare misses the host
//! mounts made after that spare was cloned, such as a bind source mounted later.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{debug, warn};

use super::launch::{Helper, LaunchError};
use super::protocol::HelperJob;
use super::userns::IdMap;

/// Number of spares kept. Two, so a start that follows another at once finds a spare while the
/// one for the start after it is still being spawned.
const SPARES: usize = 2;

/// The spare helpers of one runtime.
#[derive(Debug, Default)]
pub struct SpareHelpers {
    inner: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    spares: Mutex<Vec<Helper>>,
    /// True while a task spawns spares; at most one does.
    refilling: AtomicBool,
    /// Whether [`SpareHelpers::discard`] ran, after which no spares are spawned.
    closed: AtomicBool,
}

impl SpareHelpers {
    /// Returns a helper that runs `job`: a spare, or a new helper when there is none or the
    /// spare cannot take the job (it died). Call [`SpareHelpers::refill`] once the start is
    /// done, so spawning the next spare does not compete with this start.
    pub async fn take(&self, exe: &Path, job: &HelperJob) -> Result<Helper, LaunchError> {
        // The oldest spare with the job's id map first: it has finished its own start-up.
        let spare = {
            let mut spares = self.inner.lock();
            let position = spares.iter().position(|helper| helper.id_map() == job.id_map);
            position.map(|position| spares.remove(position))
        };
        if let Some(mut helper) = spare {
            // A spare runs at the lowest priority until it has a job (`helper::SPARE_NICE`), and
            // one taken early may still be cloning its PID 1. The helper raises PID 1 itself.
            helper.raise_priority();
            match helper.send_job(job).await {
                Ok(()) => return Ok(helper),
                Err(err) => {
                    warn!(silo = %job.silo_id, helper_pid = helper.pid(), error = %err, "spare helper cannot take a job; spawning a new one");
                    helper.abort().await;
                }
            }
        }
        let mut helper = Helper::spawn_idle(exe, job.id_map)?;
        // The helper may lower itself after this call, before its clone. It raises itself and
        // PID 1 again once it has the job.
        helper.raise_priority();
        if let Err(err) = helper.send_job(job).await {
            helper.abort().await;
            return Err(err);
        }
        Ok(helper)
    }

    /// Spawns spares whose PID 1 gets `id_map` in the background until there are [`SPARES`].
    pub fn refill(&self, exe: &Path, id_map: Option<IdMap>) {
        let shared = Arc::clone(&self.inner);
        if shared.closed.load(Ordering::SeqCst) || shared.refilling.swap(true, Ordering::SeqCst) {
            return;
        }
        let exe = exe.to_path_buf();
        tokio::spawn(async move {
            while !shared.closed.load(Ordering::SeqCst) && shared.lock().len() < SPARES {
                // Spawned outside the lock, so a start that takes a spare does not wait for this
                // spawn. On the blocking pool, because `posix_spawn` blocks its thread until the
                // helper has exec'd (about 1.4 ms in a trace on a 2-core virtual machine), and a runtime worker
                // blocked that long delays the tasks of the start that runs meanwhile.
                let spawn_exe = exe.clone();
                let spawned =
                    tokio::task::spawn_blocking(move || Helper::spawn_idle(&spawn_exe, id_map)).await;
                let spawned = match spawned {
                    Ok(spawned) => spawned,
                    Err(err) => {
                        warn!(error = %err, "the task that spawns a spare helper failed; the next start spawns its own");
                        break;
                    }
                };
                match spawned {
                    Ok(helper) => shared.lock().push(helper),
                    Err(err) => {
                        warn!(error = %err, "failed to spawn a spare helper; the next start spawns its own");
                        break;
                    }
                }
            }
            shared.refilling.store(false, Ordering::SeqCst);
        });
    }

    /// Returns the pids of the spares, for the agent's diagnostics and tests.
    pub fn pids(&self) -> Vec<u32> {
        self.inner.lock().iter().map(Helper::pid).collect()
    }

    /// Ends the spares and spawns no more: their stdin closes and they exit.
    pub async fn discard(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let spares = std::mem::take(&mut *self.inner.lock());
        for helper in spares {
            debug!(helper_pid = helper.pid(), "discarding a spare helper");
            helper.abort().await;
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Helper>> {
        self.spares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
