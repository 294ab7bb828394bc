//! PID 1 of a silo: a copy of the helper made by `clone` with new pid, mount, UTS, IPC and
//! network namespaces, and a user namespace unless the agent turned them off.
//!
//! It waits until the agent has placed it in its cgroup and created its veth end. Then it opens
//! the host paths of its root file system, becomes root of its user namespace and sets up the
//! root file system. It forks the silo program with its stdout and stderr on the helper's
//! output pipes and reports whether the program was exec'd. The program runs with Docker's
//! default capability set (module `capabilities`).
//! After that it acts as a small init: it forwards termination signals to the program, reaps
//! every orphan, and exits with the program's status (128 + signal number when the program was
//! killed). When PID 1 exits, the kernel kills every other process of the pid namespace.
//!
//! The helper is single-threaded, so this copy of it may allocate and take locks freely.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::prctl;
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{
    dup2_stderr, dup2_stdin, dup2_stdout, execve, fork, pipe2, setsid, ForkResult, Pid,
};

use super::capabilities;
use super::seccomp::{DefaultFilter, SeccompError};
use super::protocol::{read_line_exact, send_report, HelperJob, HelperReport, InitSteps, GO_LINE};
use super::rootfs::{self, RootfsError, RootfsSources};
use super::step_clock::monotonic_ns;
use super::userns::{self, UsernsError};

/// Byte on the sync pipe that lets PID 1 build the silo's root file system.
pub const MOUNT_BYTE: u8 = b'm';

/// Exit code of PID 1 when the agent aborted the start before releasing it.
pub const ABORTED_EXIT_CODE: i32 = 125;
/// Exit code of PID 1 when the setup before exec failed.
pub const SETUP_FAILED_EXIT_CODE: i32 = 126;
/// Exit code of the forked program process when `execve` failed, as shells use it.
const EXEC_FAILED_EXIT_CODE: i32 = 127;
/// Offset added to a signal number to form the exit code of a killed process, as shells do.
pub const SIGNAL_EXIT_CODE_BASE: i32 = 128;
/// Process name of PID 1, shown by `ps` inside and outside the silo.
const INIT_PROCESS_NAME: &std::ffi::CStr = c"colex-init";
/// Signals PID 1 passes on to the program.
const FORWARDED_SIGNALS: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Errors of PID 1 before the program runs; each becomes the failure message to the agent.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Userns(#[from] UsernsError),
    #[error("binary {path} not found in silo root")]
    BinaryNotFound { path: String },
    #[error("binary {path} in silo root is not a regular file")]
    BinaryNotFile { path: String },
    #[error("binary {path} in silo root is not executable (mode {mode:o})")]
    BinaryNotExecutable { path: String, mode: u32 },
    #[error("failed to inspect binary {path} in silo root: {source}")]
    InspectBinary { path: String, source: io::Error },
    #[error("failed to open /dev/null in the silo: {source}")]
    OpenDevNull { source: io::Error },
    #[error("argument or env entry {value:?} contains a NUL byte")]
    NulByte { value: String },
    #[error("failed to block signals: {source}")]
    BlockSignals { source: Errno },
    #[error("failed to create the exec status pipe: {source}")]
    Pipe { source: Errno },
    #[error("failed to fork the silo program: {source}")]
    Fork { source: Errno },
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("{message}")]
    Exec { message: String },
}

/// The program to exec, with every string already converted for `execve`.
struct Program {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    stdin: File,
    stdout: OwnedFd,
    stderr: OwnedFd,
    /// Capabilities the program keeps, bit `n` for capability `n`.
    capability_mask: u64,
    /// Compiled before the fork, because compiling allocates.
    seccomp: DefaultFilter,
}

/// This process's copies of the helper's pipes: the job pipe, the sync pipe, and the pipes the
/// helper drains into the program's log files.
#[derive(Debug, Clone, Copy)]
pub struct InitFds {
    pub job_read: RawFd,
    pub job_write: RawFd,
    pub sync_read: RawFd,
    pub sync_write: RawFd,
    pub stdout_read: RawFd,
    pub stdout_write: RawFd,
    pub stderr_read: RawFd,
    pub stderr_write: RawFd,
}

/// Runs PID 1 and returns its exit code.
pub fn run(fds: InitFds) -> i32 {
    // SAFETY: clone gave this process its own copy of the helper's fd table, in which all eight
    // descriptors are open, and nothing else in this process owns them.
    let (job_read, job_write, sync_read, sync_write, stdout_read, stdout, stderr_read, stderr) = unsafe {
        (
            OwnedFd::from_raw_fd(fds.job_read),
            OwnedFd::from_raw_fd(fds.job_write),
            OwnedFd::from_raw_fd(fds.sync_read),
            OwnedFd::from_raw_fd(fds.sync_write),
            OwnedFd::from_raw_fd(fds.stdout_read),
            OwnedFd::from_raw_fd(fds.stdout_write),
            OwnedFd::from_raw_fd(fds.stderr_read),
            OwnedFd::from_raw_fd(fds.stderr_write),
        )
    };
    // Once this copy of the write end is closed, the read below returns EOF when the helper dies.
    // Without the read ends here, the program gets EPIPE instead of blocking should the helper
    // die.
    drop((job_write, sync_write, stdout_read, stderr_read));
    // The helper records the exit, so the silo must not outlive it.
    let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = prctl::set_name(INIT_PROCESS_NAME);

    // This process exists before its silo does: it waits here for the job, which the helper
    // passes on once the agent sends it, and ends without one when the helper closes the pipe.
    let Some(job) = read_job(job_read) else {
        return ABORTED_EXIT_CODE;
    };
    let job = &job;

    // The root file system is built while the agent sets up the cgroup and the network.
    if !wait_for_byte(&sync_read, MOUNT_BYTE) {
        return ABORTED_EXIT_CODE;
    }
    let reports = io::stdout();
    let fail = |err: InitError| {
        eprintln!("colex-init: {err}");
        let _ = send_report(&reports, &HelperReport::failed(err.to_string()));
        SETUP_FAILED_EXIT_CODE
    };
    if let Err(err) = build_root(job) {
        return fail(err);
    }
    drop(sync_read);
    // Everything that does not need "go" happens before it: the agent usually sends "go" while
    // the root is still being built, so this work would otherwise delay the program.
    let program = match Program::prepare(job, stdout, stderr) {
        Ok(program) => program,
        Err(err) => return fail(err),
    };
    let prepared_ns = monotonic_ns();
    // "go" comes straight from the agent on this process's copy of the helper's stdin, once the
    // cgroup and the network are ready; EOF means the agent aborted the start.
    if !read_line_exact(io::stdin().as_fd(), GO_LINE) {
        return ABORTED_EXIT_CODE;
    }
    let go_read_ns = monotonic_ns();

    let mut steps = InitSteps {
        prepared_ns,
        go_read_ns,
        ..InitSteps::default()
    };
    let program_pid = match start_program(program, &mut steps) {
        Ok(pid) => pid,
        Err(err) => return fail(err),
    };
    let started = HelperReport::Started { steps };
    if let Err(errno) = send_report(&reports, &started) {
        eprintln!("colex-init: failed to report the start: {errno}");
    }
    release_report_pipe();
    supervise(program_pid)
}

/// Reads the job from `job_read` to EOF. Returns `None` when the helper closed the pipe
/// without a job, or sent one that does not parse (the helper parsed it already).
fn read_job(job_read: OwnedFd) -> Option<HelperJob> {
    let mut line = Vec::new();
    File::from(job_read).read_to_end(&mut line).ok()?;
    if line.is_empty() {
        return None;
    }
    serde_json::from_slice(&line).ok()
}

/// Becomes root of the silo's user namespace, if it has one, and builds the silo's root file
/// system.
fn build_root(job: &HelperJob) -> Result<(), InitError> {
    // Opened with the host ids PID 1 was cloned with, which may search the host dirs that
    // silo root may not.
    let sources = RootfsSources::open(job)?;
    if job.id_map.is_some() {
        userns::become_namespace_root()?;
        // Changing the ids cleared the parent-death signal.
        let _ = prctl::set_pdeathsig(Signal::SIGKILL);
    }
    rootfs::enter(job, &sources)?;
    Ok(())
}

/// Blocks until the helper writes `expected`; returns false on EOF, error or another byte,
/// which mean that the start was aborted.
fn wait_for_byte(sync_read: &OwnedFd, expected: u8) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(sync_read, &mut byte) {
            Ok(1) => return byte[0] == expected,
            Err(Errno::EINTR) => continue,
            Ok(_) | Err(_) => return false,
        }
    }
}

impl Program {
    /// Checks the binary inside the new root and converts everything `execve` needs, with
    /// `stdout` and `stderr` as the program's output.
    fn prepare(job: &HelperJob, stdout: OwnedFd, stderr: OwnedFd) -> Result<Program, InitError> {
        check_binary(&job.binary)?;
        let stdin = OpenOptions::new()
            .read(true)
            .open("/dev/null")
            .map_err(|source| InitError::OpenDevNull { source })?;
        Ok(Program {
            path: c_string(&job.binary)?,
            argv: job
                .argv
                .iter()
                .map(|arg| c_string(arg))
                .collect::<Result<_, _>>()?,
            envp: job
                .env
                .iter()
                .map(|entry| c_string(entry))
                .collect::<Result<_, _>>()?,
            stdin,
            stdout,
            stderr,
            capability_mask: capabilities::silo_capability_mask(job.raw_sockets),
            seccomp: DefaultFilter::compile()?,
        })
    }
}

/// Forks `program` in the silo's root and returns its pid once `execve` succeeded. PID 1 keeps
/// no copy of the output pipes.
fn start_program(program: Program, steps: &mut InitSteps) -> Result<Pid, InitError> {
    // Blocked before the fork, so no SIGCHLD or forwarded signal is lost; sigwait takes them.
    install_noop_handlers();
    supervised_signals()
        .thread_block()
        .map_err(|source| InitError::BlockSignals { source })?;

    // The write end is close-on-exec, so EOF without data means that execve succeeded.
    let (status_read, status_write) =
        pipe2(OFlag::O_CLOEXEC).map_err(|source| InitError::Pipe { source })?;
    // SAFETY: this process is single-threaded (a clone of the single-threaded helper), so the
    // child may run any code, not only async-signal-safe functions.
    match unsafe { fork() }.map_err(|source| InitError::Fork { source })? {
        ForkResult::Child => {
            drop(status_read);
            exec_program(&program, status_write)
        }
        ForkResult::Parent { child } => {
            steps.forked_ns = monotonic_ns();
            drop(status_write);
            let mut message = String::new();
            let _ = File::from(status_read).read_to_string(&mut message);
            steps.exec_seen_ns = monotonic_ns();
            if message.is_empty() {
                Ok(child)
            } else {
                let _ = waitpid(child, None);
                Err(InitError::Exec { message })
            }
        }
    }
}

/// Checks inside the new root that the binary exists and is executable, so the agent gets a
/// clear message in place of an `execve` errno.
fn check_binary(path: &str) -> Result<(), InitError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(InitError::BinaryNotFound {
                path: path.to_string(),
            })
        }
        Err(source) => {
            return Err(InitError::InspectBinary {
                path: path.to_string(),
                source,
            })
        }
    };
    if !metadata.is_file() {
        return Err(InitError::BinaryNotFile {
            path: path.to_string(),
        });
    }
    let mode = metadata.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(InitError::BinaryNotExecutable {
            path: path.to_string(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

fn c_string(value: &str) -> Result<CString, InitError> {
    CString::new(value).map_err(|_| InitError::NulByte {
        value: value.to_string(),
    })
}

/// Runs in the forked program process: resets what PID 1 changed and execs. Writes the reason
/// to `status_write` and exits if `execve` fails.
fn exec_program(program: &Program, status_write: OwnedFd) -> ! {
    let (step, errno) = prepare_and_exec(program);
    let path = program.path.to_string_lossy();
    let message = match step {
        EXEC_STEP => format!("exec {path} failed: {errno}"),
        _ => format!("{step} before exec of {path} failed: {errno}"),
    };
    let _ = nix::unistd::write(&status_write, message.as_bytes());
    // SAFETY: _exit ends this forked process at once; skipping Rust's exit handlers is what a
    // forked child that failed to exec must do.
    unsafe { libc::_exit(EXEC_FAILED_EXIT_CODE) }
}

/// Name of the `execve` step in the result of [`prepare_and_exec`].
const EXEC_STEP: &str = "exec";

/// Prepares the program process and execs the program. Returns only on failure, with the
/// failed step and its errno.
fn prepare_and_exec(program: &Program) -> (&'static str, Errno) {
    // A session of its own, so the program has no controlling terminal of the helper.
    if let Err(errno) = setsid() {
        return ("setsid", errno);
    }
    reset_signal_dispositions();
    if let Err(errno) = SigSet::empty().thread_set_mask() {
        return ("unblocking signals", errno);
    }
    let redirected = dup2_stdin(program.stdin.as_fd())
        .and_then(|()| dup2_stdout(program.stdout.as_fd()))
        .and_then(|()| dup2_stderr(program.stderr.as_fd()));
    if let Err(errno) = redirected {
        return ("redirecting stdin, stdout and stderr", errno);
    }
    mark_fds_close_on_exec();
    if let Err(errno) = capabilities::limit_to_silo_capabilities(program.capability_mask) {
        return ("limiting capabilities", errno);
    }
    // Last step before exec, so setuid binaries and file capabilities in the image cannot give
    // the program more privileges than the silo grants. Children inherit the flag.
    if let Err(errno) = prctl::set_no_new_privs() {
        return ("setting no_new_privs", errno);
    }
    // After no_new_privs, which an unprivileged seccomp filter needs, and before exec, so the
    // program and all its children run under it.
    if let Err(errno) = program.seccomp.install() {
        return ("installing the seccomp filter", errno);
    }
    match execve(&program.path, &program.argv, &program.envp) {
        Err(errno) => (EXEC_STEP, errno),
        Ok(never) => match never {},
    }
}

/// Restores default dispositions: ignored signals (Rust ignores SIGPIPE) stay ignored across
/// `execve`, which would change how the program behaves.
pub(super) fn reset_signal_dispositions() {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if signal == Signal::SIGKILL || signal == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in a signal handler.
        let _ = unsafe { sigaction(signal, &default) };
    }
}

/// Marks every descriptor from 3 up close-on-exec, so nothing of the helper (such as an exec
/// helper's report pipe) leaks into the program.
pub(super) fn mark_fds_close_on_exec() {
    const FIRST_FD: libc::c_uint = 3;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors; it closes
    // nothing and touches no memory.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            FIRST_FD,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

/// Points fd 1, the report pipe to the agent, at /dev/null, so PID 1 does not hold the pipe
/// open for the silo's whole life.
fn release_report_pipe() {
    if let Ok(dev_null) = OpenOptions::new().write(true).open("/dev/null") {
        let _ = dup2_stdout(dev_null.as_fd());
    }
}

fn supervised_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    for signal in FORWARDED_SIGNALS {
        signals.add(*signal);
    }
    signals
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs handlers that do nothing for the supervised signals. The kernel discards a signal
/// sent to a pid namespace's init while the signal is unblocked and its disposition is SIG_DFL.
/// The signals are blocked for sigwait, which already keeps them pending; the handlers keep
/// that true should a signal arrive while unblocked. They never run while blocked.
fn install_noop_handlers() {
    let action = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in supervised_signals().iter() {
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

/// Forwards signals to the program and reaps children until the program exits; returns the
/// program's exit code.
fn supervise(program: Pid) -> i32 {
    let signals = supervised_signals();
    loop {
        let Ok(signal) = signals.wait() else {
            continue;
        };
        if signal == Signal::SIGCHLD {
            if let Some(code) = reap_children(program) {
                return code;
            }
        } else {
            let _ = kill(program, signal);
        }
    }
}

/// Reaps every exited child; returns the program's exit code if it was among them.
fn reap_children(program: Pid) -> Option<i32> {
    let mut program_code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == program => program_code = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == program => {
                program_code = Some(SIGNAL_EXIT_CODE_BASE + signal as i32)
            }
            Ok(WaitStatus::StillAlive) => break,
            Ok(_) | Err(Errno::EINTR) => continue,
            // ECHILD: no child left.
            Err(_) => break,
        }
    }
    program_code
}
