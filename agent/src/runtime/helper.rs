//! The helper process: `colex-silo-helper` (or `colex-agent silo-helper`), one per silo,
//! single-threaded and without tokio. It is the silo's supervisor and outlives the agent that
//! started it.
//!
//! It clones the silo's PID 1 into new namespaces as soon as it starts and writes the uid and
//! gid maps of its user namespace, before a job exists. So a spare helper (module `spare`) has
//! a PID 1 that only waits for its job, and a start does not wait for the clone. The helper
//! then reads the [`HelperJob`] from stdin, passes it on to PID 1 and reports PID 1's pid. It lets
//! PID 1 build its root when the agent sends "mount"; PID 1 reads the agent's "go" itself. Then it
//! drains the pipes that are the program's stdout and stderr into size-capped rotating files, waits for PID 1 to exit, and
//! writes the exit record to the silo dir. It runs in a session of its own, so a signal to the
//! agent's process group does not reach it. It needs nothing from the agent once the program
//! runs, so an agent that is restarted, upgraded or killed leaves the silo running.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{clone, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};

use super::init::{self, InitFds, SIGNAL_EXIT_CODE_BASE};
use super::logs::{RotatingLog, MAX_LOG_FILE_BYTES};
use super::pidfd::PidFd;
use super::protocol::{
    read_job_line, read_line_exact, send_report, HelperJob, HelperReport, MOUNT_LINE,
};
use super::state::{write_json_atomic, ExitRecord, StateError};
use super::userns::{self, IdMap, UsernsError};

/// Stack size of the cloned PID 1, in bytes. The memory is only committed when touched.
const INIT_STACK_BYTES: usize = 8 * 1024 * 1024;
/// Exit code of the helper when it could not do its job; the reason went to the agent.
const HELPER_FAILED_EXIT_CODE: i32 = 1;
/// Bytes read from an output pipe at a time.
const PIPE_READ_BYTES: usize = 64 * 1024;
/// How long the helper keeps draining the output pipes after PID 1 exited. The kernel kills
/// the rest of the silo's pid namespace with PID 1, so the pipes normally reach EOF at once.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll interval while the kernel offers no pidfd to wait on, in milliseconds.
const NO_PIDFD_POLL_MILLIS: libc::c_int = 100;
/// Nice value of a helper and its PID 1 until the job arrives. A spare is made while the next
/// start runs, and on two cores the clone of its PID 1 into new namespaces took CPU time from
/// that start. At the lowest priority the spare gets the CPU time that starts leave idle.
pub(super) const SPARE_NICE: libc::c_int = 19;
/// Nice value of a helper and its PID 1 once the job arrived: the default.
pub(super) const JOB_NICE: libc::c_int = 0;

/// Errors of the helper process.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("failed to read the job from stdin: {source}")]
    ReadJob { source: io::Error },
    #[error("stdin closed before a job arrived")]
    NoJob,
    #[error("failed to parse the job: {source}")]
    ParseJob { source: serde_json::Error },
    #[error("invalid helper argument {value:?}: expected HOST_BASE:COUNT, the silo's id map")]
    IdMapArgument { value: String },
    #[error("the job asks for id map {job:?}, but this helper cloned PID 1 with {helper:?}")]
    IdMapMismatch {
        job: Option<IdMap>,
        helper: Option<IdMap>,
    },
    #[error("failed to pass the job to the silo init: {source}")]
    PassJob { source: Errno },
    #[error("failed to create the sync pipe: {source}")]
    Pipe { source: Errno },
    #[error("failed to clone the silo init into new namespaces: {source}")]
    Clone { source: Errno },
    #[error("failed to map the ids of the silo's user namespace: {source}")]
    MapIds { source: UsernsError },
    #[error("failed to report to the agent: {source}")]
    Report { source: Errno },
    #[error("failed to wait for the silo init (pid {pid}): {source}")]
    Wait { pid: Pid, source: Errno },
    #[error("failed to open log file {path}: {source}")]
    OpenLog {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("failed to poll the output pipes: {source}")]
    Poll { source: io::Error },
    #[error(transparent)]
    WriteExit(#[from] StateError),
}

/// Runs the helper mode and exits the process. Call it first thing in `main` when the first
/// argument is `silo-helper`, before any thread or tokio runtime exists: `clone` of a
/// multi-threaded process leaves the child with locks other threads may hold.
pub fn helper_main() -> ! {
    let code = match id_map_argument().and_then(run) {
        Ok(()) => 0,
        // A spare helper whose agent exited without giving it a job.
        Err(HelperError::NoJob) => 0,
        Err(err) => {
            eprintln!("colex silo helper: {err}");
            let _ = send_report(io::stdout(), &HelperReport::failed(err.to_string()));
            HELPER_FAILED_EXIT_CODE
        }
    };
    std::process::exit(code)
}

/// Reads the id map of the silo's user namespace from the argument after the mode, written
/// `HOST_BASE:COUNT` (see [`id_map_argument_text`]); no argument means no user namespace.
fn id_map_argument() -> Result<Option<IdMap>, HelperError> {
    let Some(value) = std::env::args().nth(2) else {
        return Ok(None);
    };
    let invalid = || HelperError::IdMapArgument {
        value: value.clone(),
    };
    let (host_base, count) = value.split_once(':').ok_or_else(invalid)?;
    Ok(Some(IdMap {
        host_base: host_base.parse().map_err(|_| invalid())?,
        count: count.parse().map_err(|_| invalid())?,
    }))
}

/// Returns the helper argument that carries `map`, as [`id_map_argument`] reads it.
pub(super) fn id_map_argument_text(map: &IdMap) -> String {
    format!("{}:{}", map.host_base, map.count)
}

fn run(id_map: Option<IdMap>) -> Result<(), HelperError> {
    // A session of its own, so signals to the agent's process group or session never reach the
    // silo. Done here and not in a `pre_exec` hook, which would make the agent fork itself.
    if let Err(errno) = nix::unistd::setsid() {
        eprintln!("colex silo helper: setsid failed: {errno}");
    }
    // Before the clone, so PID 1 inherits the nice value. Raised again once the job arrives.
    if let Err(err) = set_nice(0, SPARE_NICE) {
        eprintln!("colex silo helper: failed to lower the spare's priority: {err}");
    }

    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(|source| HelperError::Pipe { source });
    let (job_read, job_write) = pipe()?;
    let (sync_read, sync_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let (stderr_read, stderr_write) = pipe()?;
    let fds = InitFds {
        job_read: job_read.as_raw_fd(),
        job_write: job_write.as_raw_fd(),
        sync_read: sync_read.as_raw_fd(),
        sync_write: sync_write.as_raw_fd(),
        stdout_read: stdout_read.as_raw_fd(),
        stdout_write: stdout_write.as_raw_fd(),
        stderr_read: stderr_read.as_raw_fd(),
        stderr_write: stderr_write.as_raw_fd(),
    };
    let init_pid = clone_init(id_map.is_some(), fds)?;
    // Only PID 1 and the program hold the write ends now, so the pipes reach EOF once the
    // silo's processes are gone.
    drop((job_read, sync_read, stdout_write, stderr_write));

    // Before the report, so PID 1 is mapped before the agent releases it: it waits on the sync
    // pipe until then.
    if let Some(map) = &id_map {
        if let Err(source) = userns::write_id_maps(init_pid, map) {
            return Err(abort_init(init_pid, HelperError::MapIds { source }));
        }
    }

    // A spare waits here, with its PID 1 waiting for the job in turn. EOF means that the agent
    // discarded the spare or exited.
    let stdin = io::stdin();
    let line = match read_job_line(stdin.as_fd()) {
        Ok(Some(line)) => line,
        Ok(None) => return Err(abort_init(init_pid, HelperError::NoJob)),
        Err(source) => return Err(abort_init(init_pid, HelperError::ReadJob { source })),
    };
    let job: HelperJob = match serde_json::from_slice(&line) {
        Ok(job) => job,
        Err(source) => return Err(abort_init(init_pid, HelperError::ParseJob { source })),
    };
    if job.id_map != id_map {
        let mismatch = HelperError::IdMapMismatch {
            job: job.id_map,
            helper: id_map,
        };
        return Err(abort_init(init_pid, mismatch));
    }
    // The silo's start waits for this process and PID 1 from here on. The agent raised this
    // process already when it took the spare, but this process may have lowered itself after
    // that, and PID 1 may have been cloned before. Raising a nice value needs CAP_SYS_NICE,
    // which the helper has as the agent's child.
    for pid in [0, init_pid.as_raw()] {
        if let Err(err) = set_nice(pid, JOB_NICE) {
            eprintln!("colex silo helper: failed to restore the priority of pid {pid}: {err}");
        }
    }
    // PID 1 reads the job to EOF, so closing the write end ends it.
    if let Err(source) = write_all(&job_write, &line) {
        return Err(abort_init(init_pid, HelperError::PassJob { source }));
    }
    drop(job_write);

    // Only after the job line was read: the agent sends "mount" once it has this report, and
    // the job reader must not find that line behind the job in the pipe.
    let init_pid_u32 = u32::try_from(init_pid.as_raw()).unwrap_or_default();
    if let Err(source) = send_report(
        io::stdout(),
        &HelperReport::Cloned {
            init_pid: init_pid_u32,
        },
    ) {
        return Err(abort_init(init_pid, HelperError::Report { source }));
    }

    // The agent sends "mount" once the silo dir contains the silo's files, or closes stdin to
    // abort. PID 1's root build is on the start's critical path, so PID 1 gets the byte before
    // this process opens the logs. The logs live in the silo dir, so they are opened only now,
    // and the program cannot write to them before "go".
    if !read_line_exact(stdin.as_fd(), MOUNT_LINE) {
        let _ = kill(init_pid, Signal::SIGKILL);
        let _ = wait_for_exit(init_pid);
        return Ok(());
    }
    let _ = nix::unistd::write(&sync_write, &[init::MOUNT_BYTE]);
    drop(sync_write);
    let logs = redirect_stderr(&job.helper_log)
        .and_then(|()| Ok((open_log(&job.stdout_log)?, open_log(&job.stderr_log)?)));
    let (mut stdout_log, mut stderr_log) = match logs {
        Ok(logs) => logs,
        Err(err) => return Err(abort_init(init_pid, err)),
    };
    // PID 1 reads "go" from its copy of stdin, or EOF when the agent aborts the start. From
    // here on the helper only supervises.

    let mut outputs = [
        Output {
            pipe: Some(stdout_read),
            log: &mut stdout_log,
        },
        Output {
            pipe: Some(stderr_read),
            log: &mut stderr_log,
        },
    ];
    let exit_code = supervise(init_pid, &mut outputs)?;
    write_json_atomic(&job.exit_file, &ExitRecord { exit_code })?;
    Ok(())
}

/// Sets the nice value of thread `pid` (0: the calling thread) to `nice`. Linux keeps the nice
/// value per thread, so a process id names its main thread only.
pub(super) fn set_nice(pid: libc::pid_t, nice: libc::c_int) -> Result<(), io::Error> {
    let target = libc::id_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: setpriority takes plain integers and touches no memory of this process.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, target, nice) };
    if result == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kills the silo's PID 1 after `err` and returns `err`.
fn abort_init(init_pid: Pid, err: HelperError) -> HelperError {
    let _ = kill(init_pid, Signal::SIGKILL);
    let _ = wait_for_exit(init_pid);
    err
}

/// Points this process's stderr at the silo's helper log.
fn redirect_stderr(path: &Path) -> Result<(), HelperError> {
    let open_error = |source| HelperError::OpenLog {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(open_error)?;
    nix::unistd::dup2_stderr(&file).map_err(|errno| open_error(io::Error::from(errno)))
}

fn open_log(path: &Path) -> Result<RotatingLog, HelperError> {
    RotatingLog::open(path, MAX_LOG_FILE_BYTES).map_err(|source| HelperError::OpenLog {
        path: path.to_path_buf(),
        source,
    })
}

/// One output stream of the program: the read end of its pipe, until EOF, and its log.
struct Output<'a> {
    pipe: Option<OwnedFd>,
    log: &'a mut RotatingLog,
}

impl Output<'_> {
    /// Moves the bytes waiting in the pipe into the log, and closes the pipe at EOF.
    fn drain_once(&mut self, buffer: &mut [u8]) {
        let Some(pipe) = &self.pipe else {
            return;
        };
        match nix::unistd::read(pipe, buffer) {
            Ok(0) => self.pipe = None,
            Ok(read) => {
                if let Err(err) = self.log.write(&buffer[..read]) {
                    // The output is lost, but the silo must not block on a full pipe.
                    eprintln!("colex silo helper: failed to write program output: {err}");
                }
            }
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(errno) => {
                eprintln!("colex silo helper: failed to read program output: {errno}");
                self.pipe = None;
            }
        }
    }
}

/// Copies the program's output into its logs until PID 1 exits, then drains what is left;
/// returns PID 1's exit code.
fn supervise(init_pid: Pid, outputs: &mut [Output<'_>; 2]) -> Result<i32, HelperError> {
    let init_pid_u32 = u32::try_from(init_pid.as_raw()).unwrap_or_default();
    let pidfd = match PidFd::open(init_pid_u32) {
        Ok(pidfd) => Some(pidfd),
        Err(err) => {
            eprintln!("colex silo helper: pidfd_open failed ({err}); polling for the exit");
            None
        }
    };
    let mut buffer = vec![0u8; PIPE_READ_BYTES];
    let mut exit_code = None;
    let mut drain_deadline = None;
    loop {
        if exit_code.is_none() {
            exit_code = try_wait(init_pid)?;
            if exit_code.is_some() {
                drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
            }
        }
        let open_pipes = outputs.iter().filter(|output| output.pipe.is_some()).count();
        if let (Some(code), Some(deadline)) = (exit_code, drain_deadline) {
            if open_pipes == 0 || Instant::now() >= deadline {
                return Ok(code);
            }
        }

        let mut poll_fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        for output in outputs.iter() {
            if let Some(pipe) = &output.pipe {
                poll_fds.push(poll_entry(pipe));
            }
        }
        let watch_pidfd = exit_code.is_none() && pidfd.is_some();
        if let (true, Some(pidfd)) = (watch_pidfd, &pidfd) {
            poll_fds.push(poll_entry(pidfd));
        }
        let timeout = match (exit_code, drain_deadline) {
            (Some(_), Some(deadline)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX)
            }
            _ if pidfd.is_none() => NO_PIDFD_POLL_MILLIS,
            _ => -1,
        };
        poll(&mut poll_fds, timeout)?;

        let mut index = 0;
        for output in outputs.iter_mut() {
            if output.pipe.is_none() {
                continue;
            }
            let revents = poll_fds[index].revents;
            index += 1;
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                output.drain_once(&mut buffer);
            }
        }
    }
}

fn poll_entry<Fd: AsFd>(fd: &Fd) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `timeout_millis` passed (-1 waits forever).
fn poll(fds: &mut [libc::pollfd], timeout_millis: libc::c_int) -> Result<(), HelperError> {
    let count = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is a valid, exclusively borrowed slice of `count` pollfd structs, which the
    // kernel only writes the revents fields of.
    let result = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout_millis) };
    if result < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(HelperError::Poll { source: err });
        }
    }
    Ok(())
}

/// Returns PID 1's exit code if it has exited, reaping it.
fn try_wait(pid: Pid) -> Result<Option<i32>, HelperError> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(Some(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok(Some(SIGNAL_EXIT_CODE_BASE + signal as i32))
            }
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(source) => return Err(HelperError::Wait { pid, source }),
        }
    }
}

/// Clones the silo's PID 1, which runs [`init::run`] in new namespaces.
/// Writes all of `bytes` to the pipe `fd`, in as many writes as it takes.
fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(written) => bytes = &bytes[written..],
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

fn clone_init(user_namespace: bool, fds: InitFds) -> Result<Pid, HelperError> {
    let callback = Box::new(move || init::run(fds) as isize);
    let mut stack = vec![0u8; INIT_STACK_BYTES];
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    // In the same call, the kernel creates the user namespace first and makes it the owner of
    // every other new namespace, so PID 1's capabilities there cover its mounts, host name and
    // network, and nothing of the host.
    if user_namespace {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    // SAFETY: without CLONE_VM the child gets a copy of this address space, so `stack` and the
    // callback stay valid in the child for its whole life. This process is
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
