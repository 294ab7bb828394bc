//! Adoption of the silos an earlier agent process started: a starting agent takes over every
//! silo whose helper still runs, and every silo that exited while no agent ran, instead of
//! stopping them. Only silos whose setup never finished or whose helper died without an exit
//! record are removed.
//!
//! A helper is recognised by its pid and its start time (from `/proc/PID/stat`), both in the
//! silo's record, so a recycled pid never passes for a helper. Adopted helpers are not children
//! of this process. Their exit is seen through a pidfd, which polls readable when the process
//! exits, and their exit code is read from the exit record they write.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use colex_proto::Interface;
use tokio::io::unix::AsyncFd;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::pidfd::{self, PidFd};
use super::removal::remove_leftover;
use super::silo::{exit_template, wait_for_helper, ExitWatch, HelperProcess, RunningSilo};
use super::state::{self, ExitRecord, SiloPaths, SiloRecord};
use super::{Inner, RuntimeError};

/// A silo of an earlier agent process that this one took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedSilo {
    pub silo_id: String,
    pub generation: u64,
    pub interfaces: Vec<Interface>,
    /// `None` while the program runs; the exit code once it has exited.
    pub exit_code: Option<i32>,
    /// Times the program was restarted in place under the silo's restart policy.
    pub restarts: u32,
}

/// The decision a starting agent takes for one recorded silo.
enum Verdict {
    /// The helper runs: the silo is adopted while it runs.
    Running { record: SiloRecord, helper: PidFd, init: Option<PidFd> },
    /// The program exited while no agent ran: the silo is adopted as exited.
    Exited { record: SiloRecord, exit_code: i32 },
    /// Anything else is removed.
    Remove { reason: &'static str },
}

/// Adopts silo `silo_id` from its record, or removes it when it cannot be adopted. Returns the
/// adopted silo.
pub(super) async fn adopt_or_remove(
    inner: &Inner,
    silo_id: &str,
) -> Result<Option<AdoptedSilo>, RuntimeError> {
    let paths = inner.silo_dirs.paths(silo_id);
    let verdict = {
        let paths = paths.clone();
        tokio::task::spawn_blocking(move || judge(&paths)).await?
    };
    let (record, helper, init, exit_code) = match verdict {
        Verdict::Running { record, helper, init } => (record, Some(helper), init, None),
        Verdict::Exited { record, exit_code } => (record, None, None, Some(exit_code)),
        Verdict::Remove { reason } => {
            info!(silo = silo_id, reason, "removing silo of an earlier agent");
            remove_leftover(inner, silo_id).await?;
            return Ok(None);
        }
    };

    let adopted = AdoptedSilo {
        silo_id: silo_id.to_string(),
        generation: record.generation,
        interfaces: vec![Interface {
            name: record.host_veth.clone(),
            address: record.address.to_string(),
        }],
        exit_code,
        restarts: record.restarts,
    };
    let removing = Arc::new(AtomicBool::new(false));
    let (exit_tx, exit_rx) = watch::channel(exit_code);
    let kill_helper = match helper {
        Some(helper) => {
            let (kill_tx, kill_rx) = oneshot::channel();
            tokio::spawn(wait_for_helper(
                HelperProcess::Adopted(helper),
                kill_rx,
                ExitWatch {
                    exit: exit_template(silo_id, record.generation),
                    exit_file: paths.exit(),
                    removing: Arc::clone(&removing),
                    exit_code_tx: exit_tx,
                    exits: inner.exits.clone(),
                    silo_cgroup: inner.cgroups.silo(silo_id),
                },
            ));
            Some(kill_tx)
        }
        None => None,
    };
    let running = RunningSilo {
        record,
        init,
        removing,
        exit_code: exit_rx,
        kill_helper,
    };
    let slot = Arc::new(tokio::sync::Mutex::new(Some(running)));
    inner
        .silos
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(silo_id.to_string(), slot);
    info!(silo = silo_id, generation = adopted.generation, running = exit_code.is_none(), "silo adopted");
    Ok(Some(adopted))
}

/// Decides from the silo's files and `/proc` whether the silo can be adopted.
fn judge(paths: &SiloPaths) -> Verdict {
    let record: SiloRecord = match state::read_json(&paths.record()) {
        Ok(record) => record,
        Err(_) => return Verdict::Remove { reason: "record missing or unreadable" },
    };
    if !record.started {
        return Verdict::Remove { reason: "setup never finished" };
    }
    if let Some(helper) = open_if_same(record.helper_pid, record.helper_start_ticks) {
        // PID 1 is checked only for signalling; the helper decides whether the silo runs.
        let init = record.init_pid.and_then(|pid| PidFd::open(pid).ok());
        return Verdict::Running { record, helper, init };
    }
    match state::read_json::<ExitRecord>(&paths.exit()) {
        Ok(exit) => Verdict::Exited { exit_code: exit.exit_code, record },
        Err(_) => Verdict::Remove { reason: "helper gone without an exit record" },
    }
}

/// Opens a pidfd on `pid` if that process is still the one that started at `start_ticks`.
fn open_if_same(pid: Option<u32>, start_ticks: Option<u64>) -> Option<PidFd> {
    let (pid, start_ticks) = (pid?, start_ticks?);
    // Opened before the check: if the start time matches afterwards, the pidfd refers to that
    // same process, because a reused pid always belongs to a process that started later.
    let pidfd = PidFd::open(pid).ok()?;
    match pidfd::start_ticks(pid) {
        Ok(ticks) if ticks == start_ticks => Some(pidfd),
        _ => None,
    }
}

/// Waits until the adopted helper exits, or SIGKILLs it when `kill_rx` fires.
pub(super) async fn wait_for_adopted(
    silo_id: &str,
    helper: PidFd,
    mut kill_rx: oneshot::Receiver<()>,
) {
    // SAFETY: the AsyncFd owns the PidFd, whose descriptor stays open and unchanged until the
    // AsyncFd is dropped.
    let registered =
        unsafe { AsyncFd::register_with_interest(helper, tokio::io::Interest::READABLE) };
    let helper = match registered {
        Ok(helper) => helper,
        Err(err) => {
            // pidfds poll since Linux 5.3, as old as pidfd_open itself, so this is not expected.
            warn!(silo = silo_id, error = %err, "cannot register the adopted helper's pidfd; treating the helper as gone");
            return;
        }
    };
    tokio::select! {
        _ = helper.readable() => {}
        // A dropped sender is no kill request: the branch is disabled when the pattern fails.
        Ok(()) = &mut kill_rx => {
            if let Err(err) = helper.get_ref().send_signal(nix::sys::signal::Signal::SIGKILL) {
                warn!(silo = silo_id, error = %err, "failed to kill the adopted helper");
            }
            let _ = helper.readable().await;
        }
    }
}
