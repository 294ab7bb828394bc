//! The helper process: `<helper_exe> silo-helper`, one per silo, single-threaded and without
//! tokio.
//!
//! It reads the [`HelperJob`] from stdin, clones the silo's PID 1 into new namespaces, reports
//! its pid, releases it when the agent sends "go", waits for it, and writes the exit record to
//! the silo dir. It runs in a session of its own, so a signal to the agent's process group does
//! not reach it.

use std::io::{self, BufRead};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{clone, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe2, Pid};

use super::init::{self, SIGNAL_EXIT_CODE_BASE};
use super::protocol::{send_report, HelperJob, HelperReport, GO_LINE};
use super::state::{write_json_atomic, ExitRecord, StateError};

/// Stack size of the cloned PID 1, in bytes. The memory is only committed when touched.
const INIT_STACK_BYTES: usize = 8 * 1024 * 1024;
/// Exit code of the helper when it could not do its job; the reason went to the agent.
const HELPER_FAILED_EXIT_CODE: i32 = 1;

/// Errors of the helper process.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("failed to read the job from stdin: {source}")]
    ReadJob { source: io::Error },
    #[error("stdin closed before a job arrived")]
    NoJob,
    #[error("failed to parse the job: {source}")]
    ParseJob { source: serde_json::Error },
    #[error("failed to create the sync pipe: {source}")]
    Pipe { source: Errno },
    #[error("failed to clone the silo init into new namespaces: {source}")]
    Clone { source: Errno },
    #[error("failed to report to the agent: {source}")]
    Report { source: Errno },
    #[error("failed to wait for the silo init (pid {pid}): {source}")]
    Wait { pid: Pid, source: Errno },
    #[error(transparent)]
    WriteExit(#[from] StateError),
}

/// Runs the helper mode and exits the process. Call it first thing in `main` when the first
/// argument is `silo-helper`, before any thread or tokio runtime exists: `clone` of a
/// multi-threaded process leaves the child with locks other threads may hold.
pub fn helper_main() -> ! {
    let code = match run() {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("colex silo helper: {err}");
            let _ = send_report(io::stdout(), &HelperReport::failed(err.to_string()));
            HELPER_FAILED_EXIT_CODE
        }
    };
    std::process::exit(code)
}

fn run() -> Result<(), HelperError> {
    let mut input = io::stdin().lock();
    let mut line = String::new();
    let read = input
        .read_line(&mut line)
        .map_err(|source| HelperError::ReadJob { source })?;
    if read == 0 {
        return Err(HelperError::NoJob);
    }
    let job: HelperJob =
        serde_json::from_str(&line).map_err(|source| HelperError::ParseJob { source })?;

    let (sync_read, sync_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|source| HelperError::Pipe { source })?;
    let init_pid = clone_init(&job, &sync_read, &sync_write)?;
    drop(sync_read);

    let init_pid_u32 = u32::try_from(init_pid.as_raw()).unwrap_or_default();
    if let Err(source) = send_report(
        io::stdout(),
        &HelperReport::Cloned {
            init_pid: init_pid_u32,
        },
    ) {
        let _ = kill(init_pid, Signal::SIGKILL);
        let _ = wait_for_exit(init_pid);
        return Err(HelperError::Report { source });
    }

    // The agent sends "go" once the cgroup and the network are ready, or closes stdin to abort.
    line.clear();
    let released =
        matches!(input.read_line(&mut line), Ok(read) if read > 0 && line.trim() == GO_LINE);
    if released {
        let _ = nix::unistd::write(&sync_write, b"g");
    } else {
        let _ = kill(init_pid, Signal::SIGKILL);
    }
    drop(sync_write);

    let exit_code = wait_for_exit(init_pid)?;
    write_json_atomic(&job.exit_file, &ExitRecord { exit_code })?;
    Ok(())
}

/// Clones the silo's PID 1, which runs [`init::run`] in new namespaces.
fn clone_init(
    job: &HelperJob,
    sync_read: &OwnedFd,
    sync_write: &OwnedFd,
) -> Result<Pid, HelperError> {
    let sync_read_fd = sync_read.as_raw_fd();
    let sync_write_fd = sync_write.as_raw_fd();
    let callback = Box::new(move || init::run(job, sync_read_fd, sync_write_fd) as isize);
    let mut stack = vec![0u8; INIT_STACK_BYTES];
    let flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    // SAFETY: without CLONE_VM the child gets a copy of this address space, so `stack`, `job`
    // and the callback stay valid in the child for its whole life. This process is
    // single-threaded, so the child inherits no lock held by another thread. INIT_STACK_BYTES
    // leaves ample room for the init's shallow call depth.
    unsafe { clone(callback, &mut stack, flags, Some(libc::SIGCHLD)) }
        .map_err(|source| HelperError::Clone { source })
}

/// Waits for `pid` to exit; returns its exit code, or 128 + signal number when it was killed.
fn wait_for_exit(pid: Pid) -> Result<i32, HelperError> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok(SIGNAL_EXIT_CODE_BASE + signal as i32)
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(source) => return Err(HelperError::Wait { pid, source }),
        }
    }
}
