//! Child processes that are killed when their guard is dropped, and free loopback ports.

use std::fs::File;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// A running child process. Dropping it sends SIGKILL and reaps the process, also when the
/// benchmark fails or panics.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Spawns `command` with stdout and stderr appended to `log_path`.
    pub fn spawn(mut command: Command, log_path: &Path) -> anyhow::Result<Daemon> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("failed to open log file {}", log_path.display()))?;
        let log_for_stderr = log
            .try_clone()
            .with_context(|| format!("failed to duplicate log file {}", log_path.display()))?;
        command.stdin(Stdio::null()).stdout(log).stderr(log_for_stderr);
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {:?}", command.get_program()))?;
        Ok(Daemon { child })
    }

    /// Returns an error when the process has already exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => anyhow::bail!("process {} exited early: {status}", self.child.id()),
            Err(error) => Err(error).with_context(|| format!("failed to check process {}", self.child.id())),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // `Child::kill` sends SIGKILL. An error means the process has exited already, and
        // `wait` then reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a loopback port that was free a moment ago. Another process may take it before the
/// caller binds it, which makes the start fail with a clear error rather than measure wrongly.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to bind a free loopback port")?;
    let port = listener.local_addr().context("failed to read the bound port")?.port();
    Ok(port)
}

/// Returns the last `count` lines of the file at `path`, or a note when it cannot be read.
pub fn tail(path: &Path, count: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(count)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}
