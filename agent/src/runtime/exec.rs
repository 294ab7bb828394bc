//! Running a command inside a running silo (`colex-cli exec`).
//!
//! The agent cannot enter a silo's namespaces itself (module `exec_helper` explains why), so it
//! spawns `<helper_exe> silo-exec JOB` with the command's stdin, stdout and stderr and a report
//! pipe. With a TTY those three are one pseudo-terminal whose master end stays here; without
//! one they are pipes. This module relays input and output between the helper and the caller's
//! channels, applies window sizes, and returns the helper's report of how the command ended.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::pty::{openpty, Winsize};
use nix::unistd::pipe2;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::exec_helper::{ExecJob, ExecReport, EXEC_HELPER_ARG, REPORT_FD};
use super::names;
use super::spec::DEFAULT_PATH_ENV;
use super::state::{self, SiloRecord};
use super::Runtime;

/// Bytes read from the command's output at a time.
const OUTPUT_READ_BYTES: usize = 32 * 1024;
/// How long output is still relayed after the command exited. Processes the command started in
/// the background may hold the output open, and the exec must end anyway.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a cancelled helper gets to kill the command and exit before it is killed.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);
/// Byte a terminal turns into end-of-file for the reader in canonical mode (Ctrl-D, VEOF).
const TERMINAL_EOF_BYTE: u8 = 0x04;

/// One command to run in a silo.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub silo_id: String,
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries of the silo's spec.
    pub env: Vec<String>,
    pub tty: bool,
    /// Initial terminal size (rows, columns) of a TTY.
    pub size: Option<(u16, u16)>,
    /// TERM of a TTY; empty leaves it out.
    pub term: String,
    /// Whether the caller sends stdin; without it the command reads end-of-file at once.
    pub stdin: bool,
    /// Whether the command keeps CAP_NET_RAW, as the program of a silo granted `raw_sockets`.
    pub raw_sockets: bool,
}

/// Input from the caller while the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecInput {
    Stdin(Vec<u8>),
    CloseStdin,
    Resize { rows: u16, cols: u16 },
}

/// Output of the command; `stderr` is false for stdout and for a TTY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub data: Vec<u8>,
    pub stderr: bool,
}

/// Errors of an exec before the command runs.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    InvalidId(#[from] names::NameError),
    #[error("silo {silo_id} is not on this host")]
    NotFound { silo_id: String },
    #[error("silo {silo_id} is not running")]
    NotRunning { silo_id: String },
    #[error("failed to read the record of silo {silo_id}: {source}")]
    Record { silo_id: String, source: state::StateError },
    #[error("failed to open a pseudo-terminal: {source}")]
    OpenPty { source: nix::errno::Errno },
    #[error("failed to create a pipe for the exec helper: {source}")]
    Pipe { source: std::io::Error },
    #[error("failed to encode the exec job: {source}")]
    Encode { source: serde_json::Error },
    #[error("failed to start the exec helper {path}: {source}")]
    Spawn { path: String, source: std::io::Error },
}

/// Destination of the caller's input: a pipe to the command's stdin, or the terminal's master
/// end.
enum InputSink {
    Pipe(Option<ChildStdin>),
    Terminal(std::sync::Arc<AsyncFd<OwnedFd>>),
}

impl Runtime {
    /// Runs `request` in its silo, relaying `inputs` to the command and its output to `output`,
    /// and returns how the command ended. A closed `inputs` channel (the caller went away)
    /// kills the command and what it started in its process group.
    pub async fn exec(
        &self,
        request: ExecRequest,
        inputs: mpsc::UnboundedReceiver<ExecInput>,
        output: mpsc::Sender<ExecOutput>,
    ) -> ExecReport {
        match self.start_exec(&request).await {
            Ok(started) => started.relay(inputs, output).await,
            Err(error) => ExecReport::Failed {
                message: error.to_string(),
                code: None,
            },
        }
    }

    async fn start_exec(&self, request: &ExecRequest) -> Result<StartedExec, ExecError> {
        names::validate_silo_id(&request.silo_id)?;
        let init_pid = self.running_init_pid(&request.silo_id)?;
        let job = ExecJob {
            init_pid,
            argv: request.argv.clone(),
            env: exec_env(request),
            tty: request.tty,
            raw_sockets: request.raw_sockets,
        };
        let job_line = serde_json::to_string(&job).map_err(|source| ExecError::Encode { source })?;
        let (report_read, report_write) = pipe2(OFlag::O_CLOEXEC).map_err(|source| ExecError::Pipe {
            source: source.into(),
        })?;

        // Both `colex-silo-helper` and the agent executable, which replaces it when it is
        // missing, have the `silo-exec` mode.
        let helper_exe = &self.inner.cfg.helper_exe;
        let mut command = tokio::process::Command::new(helper_exe);
        command.arg(EXEC_HELPER_ARG).arg(&job_line).kill_on_drop(true);
        let terminal = if request.tty {
            let size = request.size.map(|(rows, cols)| window_size(rows, cols));
            let pty = openpty(size.as_ref(), None).map_err(|source| ExecError::OpenPty { source })?;
            // openpty(3) opens both ends without close-on-exec, so other processes the agent
            // spawns would keep the terminal open.
            // NOTE: a spawn on another thread between openpty and these calls still inherits them.
            for end in [&pty.master, &pty.slave] {
                fcntl(end.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|source| ExecError::OpenPty { source })?;
            }
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|source| ExecError::Pipe { source });
            command
                .stdin(Stdio::from(dup(&pty.slave)?))
                .stdout(Stdio::from(dup(&pty.slave)?))
                .stderr(Stdio::from(pty.slave));
            Some(pty.master)
        } else {
            let stdin = if request.stdin { Stdio::piped() } else { Stdio::null() };
            command.stdin(stdin).stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        };
        let report_raw = report_write.as_raw_fd();
        // SAFETY: the hook runs in the forked child before exec and only calls dup2 or fcntl,
        // which are async-signal-safe. REPORT_FD is then not close-on-exec, so the helper gets it.
        unsafe {
            command.pre_exec(move || {
                // dup2 onto the same number keeps close-on-exec set, so that case clears it.
                let result = if report_raw == REPORT_FD {
                    libc::fcntl(REPORT_FD, libc::F_SETFD, 0)
                } else {
                    libc::dup2(report_raw, REPORT_FD)
                };
                if result < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| ExecError::Spawn {
            path: helper_exe.display().to_string(),
            source,
        })?;
        // The helper has its copies; the command's end of the output is seen once these close.
        drop(command);
        drop(report_write);
        tracing::info!(silo_id = %request.silo_id, helper_pid = ?child.id(), init_pid, tty = request.tty, argv = ?request.argv, "exec started");
        Ok(StartedExec {
            silo_id: request.silo_id.clone(),
            child,
            terminal,
            report: report_read,
        })
    }

    /// Returns the pid of the silo's PID 1, if the silo runs on this host.
    fn running_init_pid(&self, silo_id: &str) -> Result<u32, ExecError> {
        let paths = self.inner.silo_dirs.paths(silo_id);
        if !paths.record().exists() {
            return Err(ExecError::NotFound {
                silo_id: silo_id.to_owned(),
            });
        }
        let record: SiloRecord = state::read_json(&paths.record()).map_err(|source| ExecError::Record {
            silo_id: silo_id.to_owned(),
            source,
        })?;
        // NOTE: the pid is trusted without checking the process's start time, so a PID 1 that
        // exited a moment ago could in theory be confused with a new process of the same pid.
        match record.init_pid {
            Some(pid) if record.started && !paths.exit().exists() => Ok(pid),
            _ => Err(ExecError::NotRunning {
                silo_id: silo_id.to_owned(),
            }),
        }
    }
}

/// Returns the command's environment: the spec's entries, a default PATH when they set none,
/// and TERM for a TTY.
fn exec_env(request: &ExecRequest) -> Vec<String> {
    let mut env: Vec<String> = request
        .env
        .iter()
        .filter(|entry| !(request.tty && !request.term.is_empty() && entry.starts_with("TERM=")))
        .cloned()
        .collect();
    if !env.iter().any(|entry| entry.starts_with("PATH=")) {
        env.push(DEFAULT_PATH_ENV.to_owned());
    }
    if request.tty && !request.term.is_empty() {
        env.push(format!("TERM={}", request.term));
    }
    env
}

fn window_size(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A running exec helper and the agent's ends of its descriptors.
struct StartedExec {
    silo_id: String,
    child: Child,
    terminal: Option<OwnedFd>,
    report: OwnedFd,
}

impl StartedExec {
    async fn relay(mut self, mut inputs: mpsc::UnboundedReceiver<ExecInput>, output: mpsc::Sender<ExecOutput>) -> ExecReport {
        let mut readers: Vec<JoinHandle<()>> = Vec::new();
        let mut sink = match self.terminal.take() {
            Some(master) => match async_terminal(master) {
                Ok(terminal) => {
                    let terminal = std::sync::Arc::new(terminal);
                    readers.push(tokio::spawn(relay_terminal(std::sync::Arc::clone(&terminal), output.clone())));
                    InputSink::Terminal(terminal)
                }
                Err(error) => {
                    let _ = self.child.start_kill();
                    return ExecReport::Failed {
                        message: format!("failed to watch the pseudo-terminal: {error}"),
                        code: None,
                    };
                }
            },
            None => {
                if let Some(stdout) = self.child.stdout.take() {
                    readers.push(tokio::spawn(relay_pipe(stdout, false, output.clone())));
                }
                if let Some(stderr) = self.child.stderr.take() {
                    readers.push(tokio::spawn(relay_pipe(stderr, true, output.clone())));
                }
                InputSink::Pipe(self.child.stdin.take())
            }
        };
        drop(output);

        let mut inputs_open = true;
        let mut cancelled_at = None;
        let status = loop {
            let cancel_deadline = async {
                match cancelled_at {
                    Some(at) => tokio::time::sleep_until(at + CANCEL_TIMEOUT).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = self.child.wait() => break status,
                input = inputs.recv(), if inputs_open => match input {
                    Some(input) => sink = apply_input(sink, input).await,
                    None => {
                        inputs_open = false;
                        cancelled_at = Some(tokio::time::Instant::now());
                        tracing::info!(silo_id = %self.silo_id, helper_pid = ?self.child.id(), "exec cancelled; killing its command");
                        self.terminate_helper();
                    }
                },
                () = cancel_deadline => {
                    tracing::warn!(silo_id = %self.silo_id, "exec helper did not exit after SIGTERM; killing it");
                    let _ = self.child.start_kill();
                    cancelled_at = None;
                }
            }
        };
        drop(sink);
        for reader in &mut readers {
            if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, &mut *reader).await.is_err() {
                reader.abort();
            }
        }
        let report = read_report(self.report, status).await;
        tracing::info!(silo_id = %self.silo_id, ?report, "exec ended");
        report
    }

    /// Asks the helper to kill the command's process group and exit.
    fn terminate_helper(&self) {
        let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) else {
            return;
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
}

/// Applies one input and returns the sink for the next.
async fn apply_input(sink: InputSink, input: ExecInput) -> InputSink {
    match (sink, input) {
        (InputSink::Pipe(Some(mut stdin)), ExecInput::Stdin(data)) => {
            // A command that exited or closed its stdin makes this fail; later input is dropped.
            if stdin.write_all(&data).await.is_ok() && stdin.flush().await.is_ok() {
                InputSink::Pipe(Some(stdin))
            } else {
                InputSink::Pipe(None)
            }
        }
        (InputSink::Pipe(_), ExecInput::CloseStdin) => InputSink::Pipe(None),
        (InputSink::Terminal(terminal), ExecInput::Stdin(data)) => {
            if let Err(error) = write_terminal(&terminal, &data).await {
                tracing::debug!(%error, "writing to the exec's terminal failed");
            }
            InputSink::Terminal(terminal)
        }
        (InputSink::Terminal(terminal), ExecInput::CloseStdin) => {
            let _ = write_terminal(&terminal, &[TERMINAL_EOF_BYTE]).await;
            InputSink::Terminal(terminal)
        }
        (InputSink::Terminal(terminal), ExecInput::Resize { rows, cols }) => {
            let size = window_size(rows, cols);
            // SAFETY: TIOCSWINSZ reads one `struct winsize`, which `size` is, during the call.
            let result = unsafe { libc::ioctl(terminal.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size) };
            if result < 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "resizing the exec's terminal failed");
            }
            InputSink::Terminal(terminal)
        }
        (sink @ InputSink::Pipe(_), ExecInput::Resize { .. }) => sink,
        (sink @ InputSink::Pipe(None), ExecInput::Stdin(_)) => sink,
    }
}

fn async_terminal(master: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    let flags = fcntl(master.as_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(master.as_fd(), FcntlArg::F_SETFL(flags))?;
    // SAFETY: `OwnedFd` keeps its descriptor open and unchanged until it is dropped, which
    // happens only with the `AsyncFd`.
    unsafe { AsyncFd::register(master) }.map_err(|error| error.into_parts().1)
}

async fn write_terminal(terminal: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = terminal.writable().await?;
        match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(std::io::Error::from)) {
            Ok(Ok(written)) => data = &data[written..],
            Ok(Err(error)) => return Err(error),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Sends what the command writes to the terminal until every slave end is closed (the master
/// then reads EIO) or `output` closes.
async fn relay_terminal(terminal: std::sync::Arc<AsyncFd<OwnedFd>>, output: mpsc::Sender<ExecOutput>) {
    let mut buffer = vec![0u8; OUTPUT_READ_BYTES];
    loop {
        let Ok(mut guard) = terminal.readable().await else {
            return;
        };
        let read = guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buffer).map_err(std::io::Error::from));
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(count)) => {
                let chunk = ExecOutput {
                    data: buffer[..count].to_vec(),
                    stderr: false,
                };
                if output.send(chunk).await.is_err() {
                    return;
                }
            }
            Err(_would_block) => continue,
        }
    }
}

async fn relay_pipe(mut pipe: impl AsyncRead + Unpin, stderr: bool, output: mpsc::Sender<ExecOutput>) {
    let mut buffer = vec![0u8; OUTPUT_READ_BYTES];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(count) => {
                let chunk = ExecOutput {
                    data: buffer[..count].to_vec(),
                    stderr,
                };
                if output.send(chunk).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads the helper's report. A helper that died without one (killed) is reported by its
/// own status.
async fn read_report(report: OwnedFd, status: std::io::Result<std::process::ExitStatus>) -> ExecReport {
    let mut line = String::new();
    if let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(report) {
        let _ = pipe.read_to_string(&mut line).await;
    }
    if let Ok(report) = serde_json::from_str::<ExecReport>(line.trim_end()) {
        return report;
    }
    let message = match status {
        Ok(status) => format!("the exec helper ended without a report ({status})"),
        Err(error) => format!("failed to wait for the exec helper: {error}"),
    };
    ExecReport::Failed { message, code: None }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_default_path_and_term() {
        let request = ExecRequest {
            env: vec!["A=1".to_owned(), "TERM=dumb".to_owned()],
            tty: true,
            term: "xterm".to_owned(),
            ..ExecRequest::default()
        };
        assert_eq!(exec_env(&request), ["A=1", DEFAULT_PATH_ENV, "TERM=xterm"]);
    }

    #[test]
    fn env_keeps_spec_path_without_tty() {
        let request = ExecRequest {
            env: vec!["PATH=/bin".to_owned(), "TERM=dumb".to_owned()],
            term: "xterm".to_owned(),
            ..ExecRequest::default()
        };
        assert_eq!(exec_env(&request), ["PATH=/bin", "TERM=dumb"]);
    }
}
