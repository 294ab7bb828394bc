//! Messages between the agent and the helper process.
//!
//! The agent writes the [`HelperJob`] as one JSON line to the helper's stdin, then the line
//! [`MOUNT_LINE`] once the silo dir contains the silo's files, and last the line [`GO_LINE`]
//! once the silo's cgroup and network are ready. Closing stdin instead aborts the silo.
//!
//! The helper and the silo's PID 1 write [`HelperReport`]s as JSON lines to the helper's
//! stdout, which is a pipe to the agent. Each report is one `write` of less than `PIPE_BUF`
//! bytes, so reports of the two processes never interleave.

use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

/// First argument that makes the agent executable run [`super::helper_main`].
pub const HELPER_ARG: &str = "silo-helper";
/// Line the agent sends to let the silo's PID 1 build the silo's root file system.
pub const MOUNT_LINE: &str = "mount";
/// Line the agent sends to release the silo's PID 1.
pub const GO_LINE: &str = "go";
/// Maximum length of a failure message in a report, so every report fits one atomic pipe write
/// (`PIPE_BUF` is 4096 bytes on Linux).
pub const MAX_REPORT_MESSAGE_BYTES: usize = 3072;

/// Everything the helper needs to start one silo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelperJob {
    pub silo_id: String,
    /// Host name of the silo.
    pub hostname: String,
    /// Overlayfs lower dir: the image.
    pub lower_dir: PathBuf,
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
    /// Mount point of the silo's root file system.
    pub rootfs_dir: PathBuf,
    pub stdout_log: PathBuf,
    pub stderr_log: PathBuf,
    /// The helper's own log (its stderr), opened once the silo dir exists.
    pub helper_log: PathBuf,
    /// Path of the exit record the helper writes.
    pub exit_file: PathBuf,
    /// Program path inside the silo.
    pub binary: String,
    /// Full argument vector, `argv[0]` included.
    pub argv: Vec<String>,
    /// `KEY=VALUE` environment entries.
    pub env: Vec<String>,
    /// Host paths PID 1 bind-mounts into the silo root before `pivot_root`.
    #[serde(default)]
    pub binds: Vec<super::binds::BindMount>,
    /// Uid and gid map of the silo's user namespace; `None` runs the silo without one.
    #[serde(default)]
    pub id_map: Option<super::userns::IdMap>,
}

/// Progress of a silo start, reported to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HelperReport {
    /// The silo's PID 1 exists, waits for [`GO_LINE`], and has this pid in the agent's pid
    /// namespace.
    Cloned { init_pid: u32 },
    /// The silo's program was exec'd.
    Started,
    /// The silo could not be started.
    Failed { message: String },
}

impl HelperReport {
    /// Returns a failure report whose message is cut to [`MAX_REPORT_MESSAGE_BYTES`].
    pub fn failed(message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_REPORT_MESSAGE_BYTES {
            let mut end = MAX_REPORT_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        HelperReport::Failed { message }
    }

    /// Encodes the report as one JSON line.
    pub fn to_line(&self) -> String {
        // serde_json fails only on maps with non-string keys or on failing Serialize impls.
        // This enum of strings and integers has neither.
        let mut line = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"event":"failed","message":"unencodable report"}"#.to_string());
        line.push('\n');
        line
    }
}

/// Writes `report` to `fd` with a single `write`, as the pipe protocol requires.
pub fn send_report<Fd: AsFd>(fd: Fd, report: &HelperReport) -> Result<(), Errno> {
    let line = report.to_line();
    loop {
        match nix::unistd::write(&fd, line.as_bytes()) {
            Ok(written) if written == line.len() => return Ok(()),
            // A pipe write below PIPE_BUF is all or nothing, so this is not expected.
            Ok(_) => return Err(Errno::EIO),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_round_trip() {
        let reports = [
            HelperReport::Cloned { init_pid: 42 },
            HelperReport::Started,
            HelperReport::failed("binary /bin/foo not found in silo root"),
        ];
        for report in reports {
            let line = report.to_line();
            assert!(line.ends_with('\n'));
            assert_eq!(line.matches('\n').count(), 1);
            let parsed: HelperReport = serde_json::from_str(line.trim_end()).expect("parse report");
            assert_eq!(parsed, report);
        }
        assert_eq!(HelperReport::Started.to_line(), "{\"event\":\"started\"}\n");
    }

    #[test]
    fn failure_message_is_cut_at_char_boundary() {
        let report = HelperReport::failed("é".repeat(MAX_REPORT_MESSAGE_BYTES));
        let HelperReport::Failed { message } = &report else {
            panic!("expected a failure report");
        };
        assert!(message.len() <= MAX_REPORT_MESSAGE_BYTES);
        assert!(report.to_line().len() < 4096);
    }
}
