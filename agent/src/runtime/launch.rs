//! The agent's side of a helper process: spawn it, read its reports, release the silo.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::helper::id_map_argument_text;
use super::protocol::{HelperJob, HelperReport, InitSteps, GO_LINE, HELPER_ARG, MOUNT_LINE};
use super::userns::IdMap;

/// How long the agent waits for a killed helper to exit.
const HELPER_KILL_WAIT: Duration = Duration::from_secs(5);

/// Errors of talking to a helper process.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("failed to open helper log {path}: {source}")]
    OpenLog { path: PathBuf, source: io::Error },
    #[error("failed to spawn helper {exe}: {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("failed to send to the helper: {source}")]
    Send { source: io::Error },
    #[error("failed to read the helper's reports: {source}")]
    Read { source: io::Error },
    #[error("helper sent an invalid report {line:?}: {source}")]
    InvalidReport {
        line: String,
        source: serde_json::Error,
    },
    #[error("helper sent {report:?} while the agent waited for {expected}")]
    UnexpectedReport {
        report: HelperReport,
        expected: &'static str,
    },
    #[error("helper exited before reporting {expected}; see {log}")]
    HelperExited {
        expected: &'static str,
        log: PathBuf,
    },
    #[error("helper sent no {expected} report within {timeout:?}")]
    TimedOut {
        expected: &'static str,
        timeout: Duration,
    },
    #[error("{message}")]
    SiloFailed { message: String },
}

/// A running helper process before its silo has started.
#[derive(Debug)]
pub struct Helper {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    reports: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
    /// The id map the helper cloned PID 1's user namespace with; `None` for no user namespace.
    id_map: Option<IdMap>,
}

impl Helper {
    /// Spawns `<exe> silo-helper` without a job: a spare that waits for one on its stdin and
    /// exits when stdin closes. Its stderr is the agent's until the job names the silo's helper
    /// log, which the helper opens once the silo dir exists.
    pub fn spawn_idle(exe: &Path, id_map: Option<IdMap>) -> Result<Helper, LaunchError> {
        Helper::spawn_with_stderr(exe, id_map, Stdio::inherit(), Path::new("the agent's log"))
    }

    /// The helper calls `setsid` itself: a `pre_exec` hook would make the standard library fork
    /// the whole agent instead of using `posix_spawn`, which costs about 1 ms per start.
    fn spawn_with_stderr(
        exe: &Path,
        id_map: Option<IdMap>,
        stderr: Stdio,
        log: &Path,
    ) -> Result<Helper, LaunchError> {
        let mut command = Command::new(exe);
        command.arg(HELPER_ARG);
        if let Some(map) = &id_map {
            command.arg(id_map_argument_text(map));
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(false);
        let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
            exe: exe.to_path_buf(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(LaunchError::Spawn {
                exe: exe.to_path_buf(),
                source: io::Error::other("helper stdin or stdout is not a pipe"),
            });
        };
        Ok(Helper {
            child,
            pid,
            stdin: Some(stdin),
            reports: BufReader::new(stdout).lines(),
            log: log.to_path_buf(),
            id_map,
        })
    }

    /// Sends the helper its job, which it passes on to the silo's PID 1. The helper cloned PID 1
    /// and reported [`HelperReport::Cloned`] when it started, before any job.
    pub async fn send_job(&mut self, job: &HelperJob) -> Result<(), LaunchError> {
        self.log = job.helper_log.clone();
        let mut line = serde_json::to_string(job).map_err(|source| LaunchError::Send {
            source: io::Error::other(source),
        })?;
        line.push('\n');
        self.send_line(&line).await
    }

    /// Gives the helper the default priority that a spare gives up while it waits for a job.
    /// A failure only costs speed, so it is logged.
    pub fn raise_priority(&self) {
        // Pid 0 would name the agent itself.
        let Ok(pid @ 1..) = libc::pid_t::try_from(self.pid) else {
            return;
        };
        if let Err(err) = super::helper::set_nice(pid, super::helper::JOB_NICE) {
            tracing::warn!(helper_pid = self.pid, error = %err, "failed to restore the priority of a helper");
        }
    }

    /// Returns the helper's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Returns the id map the helper's PID 1 was cloned with.
    pub fn id_map(&self) -> Option<IdMap> {
        self.id_map
    }

    /// Waits for the helper to report the pid of the silo's PID 1.
    pub async fn wait_cloned(&mut self, timeout: Duration) -> Result<u32, LaunchError> {
        const EXPECTED: &str = "the silo init's pid";
        match self.next_report(EXPECTED, timeout).await? {
            HelperReport::Cloned { init_pid } => Ok(init_pid),
            HelperReport::Failed { message } => Err(LaunchError::SiloFailed { message }),
            report => Err(LaunchError::UnexpectedReport {
                report,
                expected: EXPECTED,
            }),
        }
    }

    /// Lets PID 1 build the silo's root file system: the silo dir exists and contains the
    /// silo's files. PID 1 mounts while the agent configures the cgroup and the network.
    pub async fn prepare(&mut self) -> Result<(), LaunchError> {
        self.send_line(&format!("{MOUNT_LINE}\n")).await
    }

    /// Lets the silo's PID 1 start the program. [`Helper::wait_started`] then waits for the
    /// outcome.
    pub async fn release(&mut self) -> Result<(), LaunchError> {
        self.send_line(&format!("{GO_LINE}\n")).await
    }

    /// Waits until PID 1 reports that the program was exec'd, after [`Helper::release`].
    /// Returns the times at which PID 1 finished its steps before the program.
    pub async fn wait_started(&mut self, timeout: Duration) -> Result<InitSteps, LaunchError> {
        const EXPECTED: &str = "the program start";
        match self.next_report(EXPECTED, timeout).await? {
            HelperReport::Started { steps } => Ok(steps),
            HelperReport::Failed { message } => Err(LaunchError::SiloFailed { message }),
            report => Err(LaunchError::UnexpectedReport {
                report,
                expected: EXPECTED,
            }),
        }
    }

    async fn send_line(&mut self, line: &str) -> Result<(), LaunchError> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(LaunchError::Send {
                source: io::Error::new(io::ErrorKind::BrokenPipe, "the helper's stdin is closed"),
            });
        };
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|source| LaunchError::Send { source })?;
        stdin
            .flush()
            .await
            .map_err(|source| LaunchError::Send { source })
    }

    /// Aborts the start: closes stdin, which ends whichever of the helper and the silo's PID 1
    /// reads it next, kills the helper, and waits for it to exit.
    pub async fn abort(mut self) {
        drop(self.stdin.take());
        let _ = self.child.start_kill();
        if tokio::time::timeout(HELPER_KILL_WAIT, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(pid = self.pid, "helper did not exit after SIGKILL");
        }
    }

    /// Returns the process handle, for waiting on the helper once the silo runs.
    pub fn into_child(self) -> Child {
        self.child
    }

    /// Returns the failure PID 1 or the helper reported, if one arrives within `wait`. PID 1
    /// builds its root while the agent runs its own steps. When PID 1 fails there (a missing
    /// binary, a bad bind), its exit makes the agent's step fail too, but only PID 1's message
    /// names the cause, so a failed start reads this report first.
    pub async fn reported_failure(&mut self, wait: Duration) -> Option<LaunchError> {
        match self.next_report("a failure report", wait).await {
            Ok(HelperReport::Failed { message }) => Some(LaunchError::SiloFailed { message }),
            Ok(_) | Err(_) => None,
        }
    }

    async fn next_report(
        &mut self,
        expected: &'static str,
        timeout: Duration,
    ) -> Result<HelperReport, LaunchError> {
        let line = tokio::time::timeout(timeout, self.reports.next_line())
            .await
            .map_err(|_| LaunchError::TimedOut { expected, timeout })?
            .map_err(|source| LaunchError::Read { source })?;
        let Some(line) = line else {
            return Err(LaunchError::HelperExited {
                expected,
                log: self.log.clone(),
            });
        };
        serde_json::from_str(&line).map_err(|source| LaunchError::InvalidReport { line, source })
    }
}
