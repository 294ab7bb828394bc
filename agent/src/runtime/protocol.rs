//! Messages between the agent and the helper process.
//!
//! The agent writes the [`HelperJob`] as one JSON line to the helper's stdin, then the line
//! [`MOUNT_LINE`] once the silo dir contains the silo's files, and last the line [`GO_LINE`]
//! once the silo's cgroup and network are ready. Closing stdin instead aborts the silo.
//!
//! The helper clones the silo's PID 1 when it starts, before the job, and passes the job on to
//! PID 1 through a pipe of their own. The helper reads the job and "mount". PID 1 is a clone of
//! the helper with a copy of its stdin, and reads "go" itself: that saves a wakeup of the
//! helper on every start. Both read "mount" and "go" without a buffer (see
//! [`read_line_exact`]), so neither takes a line meant for the other. The helper reports
//! "cloned" only after it has read the job, and the agent sends nothing between the job and
//! that report, so the job read cannot take "mount" either.
//!
//! The helper and the silo's PID 1 write [`HelperReport`]s as JSON lines to the helper's
//! stdout, which is a pipe to the agent. Each report is one `write` of less than `PIPE_BUF`
//! bytes, so reports of the two processes never interleave.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
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
    /// Generated files on the host that PID 1 bind-mounts at `/etc/<file name>`, replacing
    /// what the image has there.
    #[serde(default)]
    pub etc_files: Vec<PathBuf>,
    /// Host paths PID 1 bind-mounts into the silo root before `pivot_root`.
    #[serde(default)]
    pub binds: Vec<super::binds::BindMount>,
    /// Uid and gid map of the silo's user namespace; `None` runs the silo without one.
    #[serde(default)]
    pub id_map: Option<super::userns::IdMap>,
    /// Whether the program keeps CAP_NET_RAW, as the spec's `grants.raw_sockets` requests.
    #[serde(default)]
    pub raw_sockets: bool,
}

/// `CLOCK_MONOTONIC` nanoseconds at which the silo's PID 1 reached each step after its root
/// was built; zero when unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSteps {
    /// The root is built and the program's exec prepared.
    pub prepared_ns: u64,
    /// "go" was read.
    pub go_read_ns: u64,
    /// The program's process was forked.
    pub forked_ns: u64,
    /// The status pipe closed, so `execve` succeeded.
    pub exec_seen_ns: u64,
}

/// Progress of a silo start, reported to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HelperReport {
    /// The silo's PID 1 exists, waits for [`GO_LINE`], and has this pid in the agent's pid
    /// namespace.
    Cloned { init_pid: u32 },
    /// The silo's program was exec'd. `steps` records when PID 1 reached its steps on the way,
    /// and the agent logs them with the start's other steps.
    Started {
        #[serde(default)]
        steps: InitSteps,
    },
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

/// Largest job line the helper accepts, in bytes. A job carries paths, the program's arguments
/// and environment, and bind sources; file contents are never part of it.
pub const MAX_JOB_LINE_BYTES: usize = 1 << 20;

/// Reads the job line from `fd` with plain `read` calls. Returns `None` on EOF before any byte.
/// Fails when data follows the newline, which the protocol rules out (see the module docs).
pub fn read_job_line(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = match nix::unistd::read(fd, &mut chunk) {
            Ok(read) => read,
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(io::Error::from(errno)),
        };
        if read == 0 {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stdin closed in the middle of the job line",
            ));
        }
        line.extend_from_slice(&chunk[..read]);
        if let Some(end) = line.iter().position(|&byte| byte == b'\n') {
            if end + 1 != line.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "data followed the job line before the clone was reported",
                ));
            }
            line.truncate(end);
            return Ok(Some(line));
        }
        if line.len() > MAX_JOB_LINE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("job line longer than {MAX_JOB_LINE_BYTES} bytes"),
            ));
        }
    }
}

/// Reads exactly the bytes of `expected` and a newline from `fd`, never more, so the next line
/// stays in the pipe for another reader. True when they match; false on EOF, an error or
/// another line, which all mean that the agent aborted the start.
pub fn read_line_exact(fd: BorrowedFd<'_>, expected: &str) -> bool {
    let want = expected.len() + 1;
    let mut got = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match nix::unistd::read(fd, &mut got[filled..]) {
            Ok(0) => return false,
            Ok(read) => filled += read,
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
    got[..expected.len()] == *expected.as_bytes() && got[expected.len()] == b'\n'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_round_trip() {
        let reports = [
            HelperReport::Cloned { init_pid: 42 },
            HelperReport::Started {
                steps: InitSteps {
                    prepared_ns: 7,
                    go_read_ns: 9,
                    forked_ns: 10,
                    exec_seen_ns: 12,
                },
            },
            HelperReport::failed("binary /bin/foo not found in silo root"),
        ];
        for report in reports {
            let line = report.to_line();
            assert!(line.ends_with('\n'));
            assert_eq!(line.matches('\n').count(), 1);
            let parsed: HelperReport = serde_json::from_str(line.trim_end()).expect("parse report");
            assert_eq!(parsed, report);
        }
        // A report without the times, as an older helper sends it, still parses.
        let started: HelperReport =
            serde_json::from_str("{\"event\":\"started\"}").expect("parse report");
        assert_eq!(
            started,
            HelperReport::Started {
                steps: InitSteps::default()
            }
        );
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

    fn pipe_with(data: &[u8]) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        if !data.is_empty() {
            nix::unistd::write(&write, data).expect("write to pipe");
        }
        (read, write)
    }

    #[test]
    fn read_line_exact_leaves_next_line() {
        let (read, write) = pipe_with(b"mount\ngo\n");
        assert!(read_line_exact(read.as_fd(), MOUNT_LINE));
        assert!(read_line_exact(read.as_fd(), GO_LINE));
        drop(write);
        assert!(!read_line_exact(read.as_fd(), GO_LINE), "EOF is an abort");
    }

    #[test]
    fn read_line_exact_rejects_other_line() {
        let (read, _write) = pipe_with(b"gone\n");
        assert!(!read_line_exact(read.as_fd(), GO_LINE));
    }

    #[test]
    fn read_job_line_whole_and_alone() {
        let job = format!("{{\"silo_id\":\"{}\"}}\n", "a".repeat(10_000));
        let (read, write) = pipe_with(job.as_bytes());
        drop(write);
        let line = read_job_line(read.as_fd()).expect("read").expect("a line");
        assert_eq!(line.len(), job.len() - 1);

        let (read, write) = pipe_with(b"");
        drop(write);
        assert!(read_job_line(read.as_fd()).expect("read").is_none());

        let (read, _write) = pipe_with(b"{}\nmount\n");
        let err = read_job_line(read.as_fd()).expect_err("data after the job");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
