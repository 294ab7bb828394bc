//! The exec helper: `colex-silo-helper silo-exec JOB`, one short-lived process per exec.
//!
//! `setns(CLONE_NEWUSER)` requires a single-threaded caller, and `setns(CLONE_NEWPID)` only
//! moves later children, so the agent cannot enter a silo itself. This fresh process joins the
//! cgroups of the silo's PID 1, enters its namespaces from `/proc/PID/ns/*`, becomes root of the
//! silo's user namespace, and forks the command. The command gets the silo's capability set and
//! no_new_privs, as the silo's program does, and runs in a session of its own. With a TTY, its
//! stdin (a pseudo-terminal the agent opened) becomes its controlling terminal.
//!
//! The agent passes the command's stdin, stdout and stderr as fds 0, 1 and 2, and the write end
//! of a report pipe as fd [`REPORT_FD`]. The helper writes one [`ExecReport`] JSON line there:
//! the command's exit, or why it could not run. SIGTERM to the helper, which the agent sends for
//! an exec whose caller went away and the kernel sends when the agent exits, kills the command's
//! process group. Processes that left that group (a daemon that called setsid) survive.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{setns, CloneFlags};
use nix::sys::prctl;
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{execve, fork, pipe2, setsid, ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::capabilities;
use super::init::{mark_fds_close_on_exec, reset_signal_dispositions};
use super::seccomp::{DefaultFilter, SeccompError};
use super::exec_cgroup;
use super::userns;

/// First argument that selects the exec helper mode of `colex-silo-helper`.
pub const EXEC_HELPER_ARG: &str = "silo-exec";
/// Descriptor number of the report pipe in the exec helper.
pub const REPORT_FD: RawFd = 3;
/// Exit code of a command whose executable exists but cannot be run, as shells use it.
pub const NOT_EXECUTABLE_EXIT_CODE: i32 = 126;
/// Exit code of a command whose executable is missing, as shells use it.
pub const NOT_FOUND_EXIT_CODE: i32 = 127;
/// Exit code of the helper itself; the outcome travels on the report pipe.
const HELPER_EXIT_CODE: i32 = 0;
/// PATH searched when the silo's environment has none.
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Namespaces entered, in order: all but the user namespace while the helper is still host
/// root, then the user namespace, whose root the helper becomes last.
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
    ("user", CloneFlags::CLONE_NEWUSER),
];

/// Pid of the forked command, for the SIGTERM handler; 0 before the fork.
static COMMAND_PID: AtomicI32 = AtomicI32::new(0);

/// Command of one exec, as the agent passes it to the exec helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecJob {
    /// Pid of the silo's PID 1 in the agent's pid namespace.
    pub init_pid: u32,
    /// Command and arguments; `argv[0]` is looked up in the PATH of `env` unless it has a `/`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` environment of the command.
    pub env: Vec<String>,
    /// Whether fd 0 is a pseudo-terminal to make the command's controlling terminal.
    pub tty: bool,
    /// Whether the command keeps CAP_NET_RAW (`grants.raw_sockets`).
    #[serde(default)]
    pub raw_sockets: bool,
}

/// Outcome of one exec, the one line the helper writes to [`REPORT_FD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecReport {
    Exited { code: i32 },
    Signaled { signal: i32 },
    /// The command did not run. `code` is 126 or 127 when its executable was the problem.
    Failed { message: String, code: Option<i32> },
}

/// Errors of the exec helper before the command runs.
#[derive(Debug, thiserror::Error)]
pub enum ExecHelperError {
    #[error("missing or invalid exec job argument: {reason}")]
    Job { reason: String },
    #[error("silo init (pid {pid}) is gone: {source}")]
    InitGone { pid: u32, source: io::Error },
    #[error("failed to open namespace {path}: {source}")]
    OpenNamespace { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Cgroup(#[from] exec_cgroup::ExecCgroupError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("failed to enter the silo's {namespace} namespace: {source}")]
    Setns { namespace: &'static str, source: Errno },
    #[error(transparent)]
    Userns(#[from] userns::UsernsError),
    #[error("failed to change to / in the silo: {source}")]
    Chdir { source: Errno },
    #[error("executable {name} not found in the silo's PATH {path}")]
    NotFound { name: String, path: String },
    #[error("{path} in the silo is not an executable file")]
    NotExecutable { path: String },
    #[error("argument or env entry {value:?} contains a NUL byte")]
    NulByte { value: String },
    #[error("failed to create the exec status pipe: {source}")]
    Pipe { source: Errno },
    #[error("failed to fork the command: {source}")]
    Fork { source: Errno },
    #[error("{message}")]
    Exec { message: String },
    #[error("the agent exited before the command started")]
    AgentGone,
    #[error("failed to wait for the command (pid {pid}): {source}")]
    Wait { pid: Pid, source: Errno },
}

impl ExecHelperError {
    /// Returns the exit code a shell gives for this failure, if it is one of the executable.
    fn exit_code(&self) -> Option<i32> {
        match self {
            ExecHelperError::NotFound { .. } => Some(NOT_FOUND_EXIT_CODE),
            ExecHelperError::NotExecutable { .. } | ExecHelperError::Exec { .. } => {
                Some(NOT_EXECUTABLE_EXIT_CODE)
            }
            _ => None,
        }
    }
}

/// Runs the exec helper mode and exits the process. Call it first thing in `main` when the first
/// argument is [`EXEC_HELPER_ARG`], before any thread exists.
pub fn exec_helper_main() -> ! {
    // SAFETY: the agent passes the report pipe as fd 3 and nothing else in this fresh process
    // owns that descriptor.
    let report_pipe = unsafe { OwnedFd::from_raw_fd(REPORT_FD) };
    let report = match run() {
        Ok(report) => report,
        Err(error) => ExecReport::Failed {
            message: error.to_string(),
            code: error.exit_code(),
        },
    };
    let mut line = serde_json::to_string(&report).unwrap_or_else(|_| {
        r#"{"event":"failed","message":"unencodable exec report","code":null}"#.to_owned()
    });
    line.push('\n');
    if let Err(errno) = nix::unistd::write(&report_pipe, line.as_bytes()) {
        eprintln!("colex exec helper: failed to write the report: {errno}");
    }
    std::process::exit(HELPER_EXIT_CODE)
}

fn run() -> Result<ExecReport, ExecHelperError> {
    let agent_pid = nix::unistd::getppid();
    let job = read_job()?;
    let namespaces = open_namespaces(job.init_pid)?;
    exec_cgroup::join_cgroups_of(job.init_pid, std::process::id())?;
    let entered_user = enter_namespaces(namespaces)?;
    if entered_user {
        userns::become_namespace_root()?;
    }
    nix::unistd::chdir("/").map_err(|source| ExecHelperError::Chdir { source })?;

    let program = Program::resolve(&job)?;
    install_kill_on_sigterm();
    // An agent that exits takes its execs along, because their output has no reader any more.
    // Set after the id change above, which clears the parent-death signal.
    let _ = prctl::set_pdeathsig(Signal::SIGTERM);
    if nix::unistd::getppid() != agent_pid {
        return Err(ExecHelperError::AgentGone);
    }
    let pid = fork_command(&program, job.tty)?;
    COMMAND_PID.store(pid.as_raw(), Ordering::SeqCst);
    // The agent may have exited before the pid was stored, when the handler had nothing to kill.
    if nix::unistd::getppid() != agent_pid {
        kill_command(libc::SIGTERM);
    }
    release_stdio();
    wait_for(pid)
}

fn read_job() -> Result<ExecJob, ExecHelperError> {
    let argument = std::env::args().nth(2).ok_or_else(|| ExecHelperError::Job {
        reason: "no job given".to_owned(),
    })?;
    let job: ExecJob = serde_json::from_str(&argument).map_err(|error| ExecHelperError::Job {
        reason: error.to_string(),
    })?;
    if job.argv.is_empty() {
        return Err(ExecHelperError::Job {
            reason: "empty argv".to_owned(),
        });
    }
    Ok(job)
}

/// Opens the namespaces of `init_pid` that differ from this process's. They are opened before
/// any is entered, because `/proc` shows the silo's processes once the mount namespace changed.
fn open_namespaces(init_pid: u32) -> Result<Vec<(&'static str, CloneFlags, File)>, ExecHelperError> {
    let proc_dir = PathBuf::from(format!("/proc/{init_pid}"));
    if let Err(source) = std::fs::metadata(&proc_dir) {
        return Err(ExecHelperError::InitGone {
            pid: init_pid,
            source,
        });
    }
    let mut opened = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = proc_dir.join("ns").join(name);
        let file = File::open(&path).map_err(|source| ExecHelperError::OpenNamespace {
            path: path.clone(),
            source,
        })?;
        let own_path = Path::new("/proc/self/ns").join(name);
        let own = std::fs::metadata(&own_path)
            .map_err(|source| ExecHelperError::OpenNamespace { path: own_path, source })?;
        let target = file
            .metadata()
            .map_err(|source| ExecHelperError::OpenNamespace { path, source })?;
        // Entering the user namespace one is already in fails with EINVAL, and a silo may run
        // without a user namespace.
        if (own.dev(), own.ino()) != (target.dev(), target.ino()) {
            opened.push((*name, *flag, file));
        }
    }
    Ok(opened)
}

/// Enters `namespaces` in [`NAMESPACES`] order; returns whether the user namespace was one.
fn enter_namespaces(namespaces: Vec<(&'static str, CloneFlags, File)>) -> Result<bool, ExecHelperError> {
    let mut entered_user = false;
    for (namespace, flag, file) in namespaces {
        setns(file.as_fd(), flag).map_err(|source| ExecHelperError::Setns { namespace, source })?;
        entered_user |= flag == CloneFlags::CLONE_NEWUSER;
    }
    Ok(entered_user)
}

/// The command with every string converted for `execve`.
struct Program {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Capabilities the command keeps, bit `n` for capability `n`.
    capability_mask: u64,
    /// The silo program's seccomp filter, compiled before the fork because compiling allocates.
    seccomp: DefaultFilter,
}

impl Program {
    /// Finds the executable inside the silo (the helper is in its mount namespace by now).
    fn resolve(job: &ExecJob) -> Result<Program, ExecHelperError> {
        let name = &job.argv[0];
        let path = if name.contains('/') {
            check_executable(Path::new(name))?;
            PathBuf::from(name)
        } else {
            let search = job
                .env
                .iter()
                .find_map(|entry| entry.strip_prefix("PATH="))
                .unwrap_or(FALLBACK_PATH);
            search_path(name, search)?
        };
        Ok(Program {
            path: c_string(&path.to_string_lossy())?,
            argv: job.argv.iter().map(|arg| c_string(arg)).collect::<Result<_, _>>()?,
            envp: job.env.iter().map(|entry| c_string(entry)).collect::<Result<_, _>>()?,
            capability_mask: capabilities::silo_capability_mask(job.raw_sockets),
            seccomp: DefaultFilter::compile()?,
        })
    }
}

/// Returns the first executable file `name` in the `:`-separated dirs of `search`.
fn search_path(name: &str, search: &str) -> Result<PathBuf, ExecHelperError> {
    let mut not_executable = None;
    for dir in search.split(':').filter(|dir| !dir.is_empty()) {
        let candidate = Path::new(dir).join(name);
        match check_executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(error @ ExecHelperError::NotExecutable { .. }) => {
                not_executable.get_or_insert(error);
            }
            Err(_) => {}
        }
    }
    Err(not_executable.unwrap_or_else(|| ExecHelperError::NotFound {
        name: name.to_owned(),
        path: search.to_owned(),
    }))
}

fn check_executable(path: &Path) -> Result<(), ExecHelperError> {
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.is_file() && metadata.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(ExecHelperError::NotExecutable {
            path: path.display().to_string(),
        }),
        Err(_) => Err(ExecHelperError::NotFound {
            name: path.display().to_string(),
            path: "(not searched: the name contains a slash)".to_owned(),
        }),
    }
}

fn c_string(value: &str) -> Result<CString, ExecHelperError> {
    CString::new(value).map_err(|_| ExecHelperError::NulByte {
        value: value.to_owned(),
    })
}

extern "C" fn kill_command(_: libc::c_int) {
    let pid = COMMAND_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // The command leads its own process group, so this reaches what it started there too.
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Makes SIGTERM kill the command's process group; the helper itself stays to reap it and
/// report. A SIGTERM before the fork finished is lost, which the agent's SIGKILL of the helper
/// and the command's parent-death signal cover.
fn install_kill_on_sigterm() {
    let action = SigAction::new(SigHandler::Handler(kill_command), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handler only loads an atomic and calls kill(2), both async-signal-safe.
    let _ = unsafe { sigaction(Signal::SIGTERM, &action) };
}

/// Forks the command; returns its pid once `execve` succeeded.
fn fork_command(program: &Program, tty: bool) -> Result<Pid, ExecHelperError> {
    // The write end is close-on-exec, so EOF without data means that execve succeeded.
    let (status_read, status_write) = pipe2(OFlag::O_CLOEXEC).map_err(|source| ExecHelperError::Pipe { source })?;
    // SAFETY: this process is single-threaded, so the child may run any code, not only
    // async-signal-safe functions.
    match unsafe { fork() }.map_err(|source| ExecHelperError::Fork { source })? {
        ForkResult::Child => {
            drop(status_read);
            let (step, errno) = prepare_and_exec(program, tty);
            let message = format!("{step} for {} failed: {errno}", program.path.to_string_lossy());
            let _ = nix::unistd::write(&status_write, message.as_bytes());
            // SAFETY: _exit ends this forked process at once, as a child that failed to exec must.
            unsafe { libc::_exit(NOT_EXECUTABLE_EXIT_CODE) }
        }
        ForkResult::Parent { child } => {
            drop(status_write);
            let mut message = String::new();
            let _ = io::Read::read_to_string(&mut File::from(status_read), &mut message);
            if message.is_empty() {
                Ok(child)
            } else {
                let _ = waitpid(child, None);
                Err(ExecHelperError::Exec { message })
            }
        }
    }
}

/// Prepares the forked process and execs the command. Returns only on failure, with the failed
/// step and its errno.
fn prepare_and_exec(program: &Program, tty: bool) -> (&'static str, Errno) {
    if let Err(errno) = setsid() {
        return ("setsid", errno);
    }
    if tty {
        // SAFETY: TIOCSCTTY takes an int argument (0: do not steal a terminal another session
        // holds) and only changes this session's controlling terminal.
        let result = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        if let Err(errno) = Errno::result(result) {
            return ("making the terminal the controlling terminal", errno);
        }
    }
    // The command must not outlive a helper that was killed.
    if let Err(errno) = prctl::set_pdeathsig(Signal::SIGKILL) {
        return ("setting the parent-death signal", errno);
    }
    reset_signal_dispositions();
    if let Err(errno) = SigSet::empty().thread_set_mask() {
        return ("unblocking signals", errno);
    }
    mark_fds_close_on_exec();
    if let Err(errno) = capabilities::limit_to_silo_capabilities(program.capability_mask) {
        return ("limiting capabilities", errno);
    }
    if let Err(errno) = prctl::set_no_new_privs() {
        return ("setting no_new_privs", errno);
    }
    if let Err(errno) = program.seccomp.install() {
        return ("installing the seccomp filter", errno);
    }
    match execve(&program.path, &program.argv, &program.envp) {
        Err(errno) => ("exec", errno),
        Ok(never) => match never {},
    }
}

/// Points the helper's fds 0, 1 and 2 at /dev/null, so the agent reads the end of the output as
/// soon as the command and what it started close theirs.
fn release_stdio() {
    let dev_null = File::options().read(true).write(true).open("/dev/null");
    for fd in 0..=2 {
        match &dev_null {
            // SAFETY: dup2 onto fds 0 to 2 only replaces descriptors this process no longer
            // reads or writes after the fork.
            Ok(file) => unsafe {
                libc::dup2(file.as_raw_fd(), fd);
            },
            // SAFETY: as above, nothing in this process uses fds 0 to 2 after the fork.
            Err(_) => unsafe {
                libc::close(fd);
            },
        }
    }
}

/// Waits for the command and converts its status into the report.
fn wait_for(pid: Pid) -> Result<ExecReport, ExecHelperError> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExecReport::Exited { code }),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok(ExecReport::Signaled { signal: signal as i32 })
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(source) => return Err(ExecHelperError::Wait { pid, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_round_trip() {
        let reports = [
            ExecReport::Exited { code: 7 },
            ExecReport::Signaled { signal: 9 },
            ExecReport::Failed {
                message: "executable nope not found".to_owned(),
                code: Some(NOT_FOUND_EXIT_CODE),
            },
        ];
        for report in reports {
            let line = serde_json::to_string(&report).expect("encode");
            let decoded: ExecReport = serde_json::from_str(&line).expect("decode");
            assert_eq!(decoded, report);
        }
    }

    #[test]
    fn path_search_finds_sh() {
        let found = search_path("sh", "/nonexistent:/bin:/usr/bin").expect("sh is installed");
        assert!(found.ends_with("sh"), "{}", found.display());
    }

    #[test]
    fn path_search_reports_missing_name() {
        let error = search_path("colex-no-such-command", "/bin").expect_err("missing");
        assert_eq!(error.exit_code(), Some(NOT_FOUND_EXIT_CODE));
        assert!(error.to_string().contains("colex-no-such-command"), "{error}");
    }

    #[test]
    fn path_search_reports_non_executable() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("data"), "x").expect("write");
        let error = search_path("data", &dir.path().to_string_lossy()).expect_err("not executable");
        assert_eq!(error.exit_code(), Some(NOT_EXECUTABLE_EXIT_CODE));
    }
}
