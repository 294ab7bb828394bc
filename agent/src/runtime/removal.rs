//! Stopping and removing one silo, including the leftovers of an earlier agent run.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tracing::{info, warn};

use super::names::{self, validate_silo_id};
use super::silo::{RunningSilo, HELPER_EXIT_WAIT};
use super::state::{self, SiloRecord};
use super::teardown::{UndoStack, CGROUP_KILL_WAIT};
use super::init::SIGNAL_EXIT_CODE_BASE;
use super::{cgroup, Inner, Runtime, RuntimeError};

/// How long a start waits for the leftover processes of an earlier agent to die.
pub const LEFTOVER_KILL_WAIT: Duration = Duration::from_secs(10);

/// The end of a removed silo's program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    /// Exit code of the program, 128 + signal number when a signal ended it; `None` when the
    /// runtime did not track the silo.
    pub exit_code: Option<i32>,
    /// Description of the end, such as "stopped by SIGTERM" or "killed by SIGKILL after 5s".
    pub message: String,
}

/// Implements [`Runtime::remove_silo`].
pub async fn remove(
    runtime: &Runtime,
    silo_id: &str,
    kill_timeout: Duration,
) -> Result<StopReport, RuntimeError> {
    let inner = &runtime.inner;
    validate_silo_id(silo_id)?;

    let slot = {
        let silos = inner
            .silos
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        silos.get(silo_id).cloned()
    };
    let mut report = StopReport {
        exit_code: None,
        message: "removed".to_string(),
    };
    if let Some(slot) = slot {
        let mut guard = slot.lock().await;
        let result = match guard.take() {
            Some(running) => stop_and_teardown(inner, running, kill_timeout).await,
            None => Ok(report.clone()),
        };
        drop(guard);
        forget_slot(inner, silo_id, &slot);
        report = result?;
    }

    // A record on disk without a slot: an earlier agent's silo, or a removal that failed.
    let paths = inner.silo_dirs.paths(silo_id);
    if paths.exist() {
        remove_leftover(inner, silo_id).await?;
    }
    info!(silo = silo_id, exit_code = ?report.exit_code, how = %report.message, "silo removed");
    Ok(report)
}

/// Removes the slot of `silo_id` if it is still `slot`, not a newer silo of the same id.
pub fn forget_slot(
    inner: &Inner,
    silo_id: &str,
    slot: &Arc<tokio::sync::Mutex<Option<RunningSilo>>>,
) {
    let mut silos = inner
        .silos
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if silos
        .get(silo_id)
        .is_some_and(|current| Arc::ptr_eq(current, slot))
    {
        silos.remove(silo_id);
    }
}

async fn stop_and_teardown(
    inner: &Inner,
    mut running: RunningSilo,
    kill_timeout: Duration,
) -> Result<StopReport, RuntimeError> {
    let silo_id = running.record.silo_id.clone();
    running.removing.store(true, Ordering::SeqCst);

    let exited_before = *running.exit_code.borrow();
    if exited_before.is_none() {
        // PID 1 forwards SIGTERM to the program and exits with it.
        let signalled = match &running.init {
            Some(pidfd) => pidfd.send_signal(Signal::SIGTERM),
            None => signal_by_pid(running.record.init_pid, Signal::SIGTERM),
        };
        if let Err(err) = signalled {
            if err.raw_os_error() != Some(libc::ESRCH) {
                warn!(silo = %silo_id, error = %err, "failed to send SIGTERM to the silo init");
            }
        }
    }
    let cgroup_dir = running.record.cgroup_dir.clone();
    let mut killed = false;
    if !cgroup::wait_empty(&cgroup_dir, kill_timeout).await? {
        warn!(silo = %silo_id, ?kill_timeout, "silo did not stop after SIGTERM; killing its cgroup");
        killed = true;
        cgroup::kill_all(&cgroup_dir).await?;
        cgroup::wait_empty(&cgroup_dir, CGROUP_KILL_WAIT).await?;
    }

    // The helper exits as soon as it has reaped PID 1 and written the exit record.
    if !wait_for_exit_code(&mut running.exit_code, HELPER_EXIT_WAIT).await {
        warn!(silo = %silo_id, "helper did not exit after the silo stopped; killing it");
        if let Some(kill) = running.kill_helper.take() {
            let _ = kill.send(());
        }
        wait_for_exit_code(&mut running.exit_code, HELPER_EXIT_WAIT).await;
    }

    let exit_code = *running.exit_code.borrow();
    let report = StopReport {
        exit_code,
        message: describe_stop(exited_before, exit_code, killed, kill_timeout),
    };

    let record = &running.record;
    UndoStack::full(
        &silo_id,
        Some(record.address),
        record.cgroup_dir.clone(),
        record.host_veth.clone(),
        record.internet_access,
    )
    .run(inner)
    .await?;
    Ok(report)
}

/// Describes how a stop ended the program: `exited_before` is the exit code it had before the
/// stop began, `exit_code` the one after.
fn describe_stop(
    exited_before: Option<i32>,
    exit_code: Option<i32>,
    killed: bool,
    kill_timeout: Duration,
) -> String {
    if let Some(code) = exited_before {
        return format!("had already exited with code {code}");
    }
    if killed {
        return format!("killed by SIGKILL after {kill_timeout:?}");
    }
    match exit_code {
        Some(code) if code > SIGNAL_EXIT_CODE_BASE => {
            match Signal::try_from(code - SIGNAL_EXIT_CODE_BASE) {
                Ok(signal) => format!("stopped by {}", signal.as_str()),
                Err(_) => format!("stopped by signal {}", code - SIGNAL_EXIT_CODE_BASE),
            }
        }
        Some(code) => format!("exited with code {code} after SIGTERM"),
        None => "stopped; exit code unknown because the helper did not exit".to_string(),
    }
}

async fn wait_for_exit_code(
    exit_code: &mut watch::Receiver<Option<i32>>,
    timeout: Duration,
) -> bool {
    matches!(
        tokio::time::timeout(timeout, exit_code.wait_for(Option::is_some)).await,
        Ok(Ok(_))
    )
}

fn signal_by_pid(pid: Option<u32>, signal: Signal) -> std::io::Result<()> {
    let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return Ok(());
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).map_err(std::io::Error::from)
}

/// Removes a silo that this process does not track, from its record. A missing or unreadable
/// record still leads to removing every object whose name derives from the silo id.
pub async fn remove_leftover(inner: &Inner, silo_id: &str) -> Result<(), RuntimeError> {
    let paths = inner.silo_dirs.paths(silo_id);
    let record = match state::read_json::<SiloRecord>(&paths.record()) {
        Ok(record) => Some(record),
        Err(err) => {
            warn!(silo = silo_id, error = %err, "silo record unreadable; removing by derived names");
            None
        }
    };
    let cgroup_dir = inner.host_cgroup.join(silo_id);
    let address = match &record {
        Some(record) => Some(record.address),
        None => inner
            .leases
            .list()?
            .into_iter()
            .find_map(|(address, owner)| (owner == silo_id).then_some(address)),
    };
    let internet_access = record.as_ref().is_none_or(|record| record.internet_access);
    info!(silo = silo_id, "removing leftover silo");

    // The cgroup contains every process of the silo. Once it is empty, the helper exits too.
    cgroup::kill_all(&cgroup_dir).await?;
    if !cgroup::wait_empty(&cgroup_dir, LEFTOVER_KILL_WAIT).await? {
        warn!(
            silo = silo_id,
            "leftover silo processes survived cgroup.kill"
        );
    }
    if let Some(helper_pid) = record.as_ref().and_then(|record| record.helper_pid) {
        wait_for_leftover_helper(helper_pid).await;
    }

    UndoStack::full(
        silo_id,
        address,
        cgroup_dir,
        names::host_veth_name(silo_id),
        internet_access,
    )
    .run(inner)
    .await
}

/// Waits briefly for an earlier agent's helper to exit, so it does not write its exit record
/// into a dir that is being removed. The pid is checked to still be a silo helper.
async fn wait_for_leftover_helper(pid: u32) {
    let cmdline_path = format!("/proc/{pid}/cmdline");
    let deadline = tokio::time::Instant::now() + HELPER_EXIT_WAIT;
    while tokio::time::Instant::now() < deadline {
        let is_helper = match tokio::fs::read(&cmdline_path).await {
            Ok(cmdline) => cmdline
                .split(|byte| *byte == 0)
                .any(|arg| arg == super::protocol::HELPER_ARG.as_bytes()),
            Err(_) => false,
        };
        if !is_helper {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    warn!(pid, "leftover silo helper still runs");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_descriptions() {
        let timeout = Duration::from_secs(5);
        assert_eq!(describe_stop(None, Some(143), false, timeout), "stopped by SIGTERM");
        assert_eq!(
            describe_stop(None, Some(137), true, timeout),
            "killed by SIGKILL after 5s"
        );
        assert_eq!(
            describe_stop(None, Some(0), false, timeout),
            "exited with code 0 after SIGTERM"
        );
        assert_eq!(
            describe_stop(Some(1), Some(1), false, timeout),
            "had already exited with code 1"
        );
    }
}
