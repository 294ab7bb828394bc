//! Processes the lab starts: long-running daemons and one-shot commands,
//! each inside a lab network namespace and each ended by its own PID.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Deadline of a one-shot helper command such as `ip` or `wget`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of one colex-cli call; `up` and `down` wait up to 60 s by default.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(90);

/// Exit status and output of a finished command.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `program args` in network namespace `netns` and waits at most `timeout`.
pub fn run_in_netns(netns: &str, program: &str, args: &[&str], timeout: Duration) -> anyhow::Result<CommandOutput> {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_with_timeout(command, timeout).with_context(|| format!("{program} {} in {netns}", args.join(" ")))
}

/// Runs a command, reading its output on threads so a full pipe never
/// blocks it, and kills it by PID when `timeout` passes.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> anyhow::Result<CommandOutput> {
    let mut child = command.spawn().context("cannot start")?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait")? {
            break status;
        }
        if Instant::now() >= deadline {
            // The child is ours; a failed kill means it just exited.
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Ok(CommandOutput {
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn read_in_background<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            if pipe.read_to_end(&mut bytes).is_ok() {
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        text
    })
}

/// A long-running process (controller or agent) with its output in a log file.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts `program args` in `netns` with its output appended to `log`.
    /// `nsenter` execs the program, so the child's PID is the program's own.
    pub fn spawn_in_netns(netns: &str, program: &Path, args: &[&str], log: &Path) -> anyhow::Result<Daemon> {
        // Appends, so the log of a restarted process follows that of its earlier run.
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let log_err = log_file.try_clone().context("cannot share the log file")?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg("--")
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("cannot start {} in {netns}", program.display()))?;
        Ok(Daemon { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `grace`; then SIGKILL. Returns an error
    /// when SIGKILL was needed.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        if self.child.try_wait().context("cannot wait")?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).context("pid out of range")?);
        kill(pid, Signal::SIGTERM).context("cannot send SIGTERM")?;
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.child.try_wait().context("cannot wait")?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().context("cannot send SIGKILL")?;
        self.child.wait().context("cannot wait")?;
        bail!("pid {} ignored SIGTERM for {grace:?} and was killed", pid)
    }

    /// Kills the process with SIGKILL, as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("cannot send SIGKILL")?;
        self.child.wait().context("cannot wait")?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
