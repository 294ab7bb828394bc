//! The host's WireGuard device: a kernel `wireguard` link where the kernel has the module, or
//! else boringtun's userspace device on a TUN interface, embedded in the agent.
//!
//! Both backends take their configuration through wireguard-control: generic netlink for the
//! kernel, and the WireGuard UAPI socket `/var/run/wireguard/IFNAME.sock` for the embedded
//! device. That socket path is the same in every network namespace, so interface names must
//! be unique on the machine, not only in the namespace.
//!
//! The device is never read back through wireguard-control: for a boringtun device its parser
//! prints a line to stdout (`got unsupported info: own_public_key=…`, seen with
//! wireguard-control 2.0.0 and boringtun 0.7.1). The keys stay in colex's own state instead.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::device::{DeviceConfig, DeviceHandle};
use futures::TryStreamExt;
use rtnetlink::LinkWireguard;
use tracing::{info, warn};
use wireguard_control::{DeviceUpdate, InterfaceName};

use super::keys::HostKey;
use super::netns::{Netns, NetnsError};

/// Prefix of every mesh interface name, so colex's links are recognisable and never collide
/// with links of other software.
pub const MESH_IFNAME_PREFIX: &str = "cx";

/// Maximum length of a Linux interface name in bytes (`IFNAMSIZ` less the trailing NUL).
pub const MAX_IFNAME_BYTES: usize = 15;

/// Directory of the WireGuard UAPI sockets that boringtun 0.7.1 binds; wireguard-control's
/// userspace backend looks there first.
const UAPI_SOCKET_DIR: &str = "/var/run/wireguard";

/// Worker threads of an embedded device. Two match the smallest hosts colex targets; the
/// throughput benchmark decides whether more pay off.
const EMBEDDED_WORKER_THREADS: usize = 2;
/// Maximum wait for the embedded device's threads to end. Stopping takes up to about one
/// second, boringtun's socket check period. NOTE: once, a boringtun 0.7.1 worker was seen
/// waiting forever in its device lock's `read` after the other worker thread had ended (the
/// cause is not known), so the device thread is then left behind.
const EMBEDDED_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between checks whether the device thread has ended.
const EMBEDDED_STOP_POLL: Duration = Duration::from_millis(20);

/// Backend selection requested by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The kernel module where it is loaded or loadable, else the embedded userspace device.
    #[default]
    Auto,
    Kernel,
    Userspace,
}

/// The backend a device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The Linux kernel's `wireguard` module.
    Kernel,
    /// boringtun's userspace device on a TUN interface, embedded in the agent.
    Userspace,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Kernel => "kernel",
            Backend::Userspace => "userspace",
        })
    }
}

impl Backend {
    pub(crate) fn wireguard_control(self) -> wireguard_control::Backend {
        match self {
            Backend::Kernel => wireguard_control::Backend::Kernel,
            Backend::Userspace => wireguard_control::Backend::Userspace,
        }
    }
}

/// Errors of creating a mesh device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "invalid mesh interface name {name:?}: it must start with {MESH_IFNAME_PREFIX:?}, have \
         at most {MAX_IFNAME_BYTES} bytes and contain only ASCII letters, digits, '-' and '_'"
    )]
    InvalidName { name: String },
    #[error(
        "mesh interface name {name} is in use on this machine: another device accepts \
         connections on {socket}; choose another name"
    )]
    NameInUse { name: String, socket: PathBuf },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "the kernel has no wireguard module (creating link {name} of kind wireguard failed: \
         {source}); choose the userspace backend"
    )]
    NoKernelModule {
        name: String,
        source: rtnetlink::Error,
    },
    #[error(
        "link {name} already exists in this network namespace; if an earlier agent run left it, \
         delete it with `ip link del {name}`"
    )]
    LinkExists { name: String },
    #[error("failed to create wireguard link {name}: {source}")]
    CreateKernelLink {
        name: String,
        source: rtnetlink::Error,
    },
    #[error("failed to open a netlink socket: {source}")]
    Connect { source: io::Error },
    #[error("failed to start the embedded wireguard device {name}: {source}")]
    StartEmbedded {
        name: String,
        source: boringtun::device::Error,
    },
    #[error(
        "failed to mark the file descriptors of the embedded wireguard device {name} \
         close-on-exec or to disarm its signal descriptors: {source}"
    )]
    CloseOnExec { name: String, source: io::Error },
    #[error("the thread of the embedded wireguard device {name} ended during start")]
    EmbeddedThreadLost { name: String },
    #[error("failed to remove the stale UAPI socket {socket}: {source}")]
    RemoveSocket { socket: PathBuf, source: io::Error },
    #[error("failed to delete the mesh link {name}: {reason}")]
    DeleteLink { name: String, reason: String },
    #[error("failed to set the private key and listen port {listen_port} of {name}: {source}")]
    SetKey {
        name: String,
        listen_port: u16,
        source: io::Error,
    },
}

/// A WireGuard device of this host. Dropping it removes the device: the kernel link, or the
/// embedded device's threads, TUN interface and UAPI socket.
#[derive(Debug)]
pub struct MeshDevice {
    name: String,
    backend: Backend,
    listen_port: u16,
    netns: Netns,
    /// The embedded device's owner thread; `None` for the kernel backend.
    embedded: Option<EmbeddedDevice>,
}

impl MeshDevice {
    /// Creates device `name` in the calling thread's network namespace with the host's private
    /// key. The device listens for WireGuard UDP on `listen_port`, and 0 picks a free port.
    /// [`BackendChoice::Auto`] tries the kernel module first and falls back to the embedded
    /// userspace device.
    ///
    /// The name must start with `cx`, fit in 15 bytes and be unique on the machine. This call
    /// blocks on netlink requests and thread joins, so async code calls it through
    /// `spawn_blocking`.
    pub fn create(
        name: &str,
        listen_port: u16,
        private_key: &HostKey,
        choice: BackendChoice,
    ) -> Result<MeshDevice, DeviceError> {
        validate_name(name)?;
        let netns = Netns::current()?;

        let backend = match choice {
            BackendChoice::Kernel => {
                create_kernel_link(&netns, name)?;
                Backend::Kernel
            }
            BackendChoice::Userspace => Backend::Userspace,
            BackendChoice::Auto => match create_kernel_link(&netns, name) {
                Ok(()) => Backend::Kernel,
                Err(err @ DeviceError::NoKernelModule { .. }) => {
                    info!(device = name, reason = %err, "using the userspace wireguard backend");
                    Backend::Userspace
                }
                Err(err) => return Err(err),
            },
        };
        let embedded = match backend {
            Backend::Kernel => None,
            Backend::Userspace => Some(EmbeddedDevice::start(&netns, name)?),
        };
        // From here on, dropping `device` removes what was made if a later step fails.
        let device = MeshDevice {
            name: name.to_string(),
            backend,
            listen_port,
            netns,
            embedded,
        };

        device.set_key_and_port(private_key)?;
        info!(
            device = name,
            %backend,
            listen_port,
            public_key = %private_key.public_key(),
            "created the mesh device"
        );
        Ok(device)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Returns the UDP port the device was configured with; 0 means a port boringtun or the
    /// kernel picked.
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    pub(crate) fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Applies `update` to the device, on a thread in the device's network namespace because
    /// the kernel backend's generic netlink socket must be opened there.
    pub(crate) fn apply_update(&self, update: DeviceUpdate) -> Result<(), io::Error> {
        if let Some(embedded) = &self.embedded {
            // wireguard-control starts `wireguard-go` when it cannot connect to the socket, so a
            // device known to have stopped is reported here instead.
            embedded.require_running()?;
        }
        // NOTE: wireguard-control 2.0.0 prints `ERROR <errno>` to stdout when the embedded
        // device rejects an update, so that line can reach the agent's stdout.
        let interface: InterfaceName = self.name.parse()?;
        let backend = self.backend.wireguard_control();
        let handle = self
            .netns
            .spawn(&format!("{}-wg", self.name), move || {
                update.apply(&interface, backend)
            })
            .map_err(io::Error::other)?;
        match handle.join() {
            Ok(Ok(result)) => result,
            Ok(Err(err)) => Err(io::Error::other(err)),
            Err(_) => Err(io::Error::other(format!(
                "the wireguard-control thread of {} panicked",
                self.name
            ))),
        }
    }

    fn set_key_and_port(&self, private_key: &HostKey) -> Result<(), DeviceError> {
        let update = DeviceUpdate::new()
            .set_private_key(private_key.to_wireguard_private())
            .set_listen_port(self.listen_port);
        self.apply_update(update)
            .map_err(|source| DeviceError::SetKey {
                name: self.name.clone(),
                listen_port: self.listen_port,
                source,
            })
    }
}

impl Drop for MeshDevice {
    fn drop(&mut self) {
        match self.embedded.take() {
            Some(embedded) => embedded.stop(),
            None => {
                if let Err(err) = delete_kernel_link(&self.netns, &self.name) {
                    warn!(device = %self.name, error = %err, "failed to delete the mesh device");
                }
            }
        }
        info!(device = %self.name, backend = %self.backend, "removed the mesh device");
    }
}

/// Checks the rules of `MeshDevice::create` for interface names.
fn validate_name(name: &str) -> Result<(), DeviceError> {
    let valid = name.starts_with(MESH_IFNAME_PREFIX)
        && name.len() <= MAX_IFNAME_BYTES
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(DeviceError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// Returns the UAPI socket path of the embedded device `name`.
pub fn uapi_socket_path(name: &str) -> PathBuf {
    Path::new(UAPI_SOCKET_DIR).join(format!("{name}.sock"))
}

/// Removes what a mesh device `name` of a stopped agent left in the calling thread's network
/// namespace: the kernel link, or the UAPI socket file of an embedded device that ended without
/// removing it (the process was killed). Rejects a socket that still accepts connections, since
/// a running device owns it.
pub fn remove_leftover(name: &str) -> Result<(), DeviceError> {
    validate_name(name)?;
    let socket = uapi_socket_path(name);
    if socket.exists() {
        if UnixStream::connect(&socket).is_ok() {
            return Err(DeviceError::NameInUse {
                name: name.to_string(),
                socket,
            });
        }
        std::fs::remove_file(&socket).map_err(|source| DeviceError::RemoveSocket {
            socket: socket.clone(),
            source,
        })?;
        info!(device = name, socket = %socket.display(), "removed the stale UAPI socket");
    }
    let netns = Netns::current()?;
    delete_kernel_link(&netns, name).map_err(|reason| DeviceError::DeleteLink {
        name: name.to_string(),
        reason,
    })
}

/// Creates the kernel link `name` of kind `wireguard` in `netns`.
///
/// NOTE: the kernel backend (this link, its generic netlink configuration and its deletion) has
/// only been run up to the missing-module error, because the development machine has no
/// wireguard module.
fn create_kernel_link(netns: &Netns, name: &str) -> Result<(), DeviceError> {
    let link_name = name.to_string();
    netns.block_on(&format!("{name}-create"), move || async move {
        let (connection, handle, _messages) =
            rtnetlink::new_connection().map_err(|source| DeviceError::Connect { source })?;
        tokio::spawn(connection);
        let created = handle
            .link()
            .add(LinkWireguard::new(&link_name).build())
            .execute()
            .await;
        match created {
            Ok(()) => Ok(()),
            // The kernel returns EOPNOTSUPP for an unknown link kind, which means no module
            // is loaded and none could be loaded. ENODEV is treated the same way.
            Err(source)
                if [libc::EOPNOTSUPP, libc::ENODEV]
                    .iter()
                    .any(|errno| is_errno(&source, *errno)) =>
            {
                Err(DeviceError::NoKernelModule {
                    name: link_name,
                    source,
                })
            }
            Err(source) if is_errno(&source, libc::EEXIST) => {
                Err(DeviceError::LinkExists { name: link_name })
            }
            Err(source) => Err(DeviceError::CreateKernelLink {
                name: link_name,
                source,
            }),
        }
    })?
}

/// Deletes the kernel link `name` in `netns`; a missing link is fine.
fn delete_kernel_link(netns: &Netns, name: &str) -> Result<(), String> {
    let link_name = name.to_string();
    let deleted = netns.block_on(&format!("{name}-delete"), move || async move {
        let (connection, handle, _messages) =
            rtnetlink::new_connection().map_err(|err| err.to_string())?;
        tokio::spawn(connection);
        let mut links = handle.link().get().match_name(link_name).execute();
        let index = match links.try_next().await {
            Ok(Some(link)) => link.header.index,
            Ok(None) => return Ok(()),
            Err(err) if is_errno(&err, libc::ENODEV) => return Ok(()),
            Err(err) => return Err(err.to_string()),
        };
        handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|err| err.to_string())
    });
    deleted.map_err(|err| err.to_string())?
}

pub(crate) fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(message) if message.raw_code() == -errno)
}

/// The owner thread of an embedded boringtun device.
///
/// boringtun 0.7.1 blocks SIGINT and SIGTERM on the thread that creates a device and reads them
/// through a signalfd to stop the device. A thread of its own keeps that mask off the agent's
/// other threads, and the device's worker threads inherit its network namespace.
#[derive(Debug)]
struct EmbeddedDevice {
    name: String,
    socket: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<Result<(), NetnsError>>>,
}

impl EmbeddedDevice {
    fn start(netns: &Netns, name: &str) -> Result<EmbeddedDevice, DeviceError> {
        let socket = uapi_socket_path(name);
        // boringtun deletes an existing socket file before it binds its own, which would stop
        // another agent's device of the same name, so a socket that still accepts connections is rejected.
        // NOTE: a device started by another process between this check and the bind is not
        // detected.
        if UnixStream::connect(&socket).is_ok() {
            return Err(DeviceError::NameInUse {
                name: name.to_string(),
                socket,
            });
        }

        let (started_tx, started_rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let device_name = name.to_string();
        let device_socket = socket.clone();
        let thread = netns.spawn(&format!("{name}-dev"), move || {
            let config = DeviceConfig {
                n_threads: EMBEDDED_WORKER_THREADS,
                // boringtun 0.7.1 leaves a peer's connected UDP socket registered when
                // `replace_peers` clears the peers, and that socket then takes the packets of a
                // re-added peer with the same endpoint and drops them. Without connected
                // sockets, every packet goes through the listen socket.
                use_connected_socket: false,
                use_multi_queue: false,
                // -1 makes boringtun bind the UAPI socket under `UAPI_SOCKET_DIR`.
                uapi_fd: -1,
            };
            let fds_before = open_fds();
            let mut handle = match DeviceHandle::new(&device_name, config) {
                Ok(handle) => handle,
                Err(source) => {
                    let _ = started_tx.send(Err(DeviceError::StartEmbedded {
                        name: device_name,
                        source,
                    }));
                    return;
                }
            };
            let marked = fds_before.and_then(|before| {
                mark_new_fds_close_on_exec(&before)?;
                disarm_signal_fds(&before)
            });
            if let Err(source) = marked {
                let _ = started_tx.send(Err(DeviceError::CloseOnExec {
                    name: device_name,
                    source,
                }));
                // Dropping the handle removes the socket and signals the worker threads to stop,
                // without joining them.
                drop(handle);
                return;
            }
            let _ = started_tx.send(Ok(()));

            // A message or a dropped sender both mean stop.
            let _ = stop_rx.recv();
            // Deleting the socket file makes the device's monitor, which checks it once a
            // second, stop every worker thread. `wait` joins them, and dropping the handle
            // then closes the TUN interface, which removes the link.
            if remove_socket(&device_socket, &device_name) {
                handle.wait();
            }
            // Without the socket removed, this only signals the worker threads to stop.
            drop(handle);
        })?;

        let embedded = EmbeddedDevice {
            name: name.to_string(),
            socket,
            stop: Some(stop),
            thread: Some(thread),
        };
        match started_rx.recv() {
            Ok(Ok(())) => Ok(embedded),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(DeviceError::EmbeddedThreadLost {
                name: name.to_string(),
            }),
        }
    }

    /// Fails unless the device's UAPI socket accepts connections.
    fn require_running(&self) -> Result<(), io::Error> {
        UnixStream::connect(&self.socket).map(drop).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "the embedded device {} does not accept connections on {}: {err}",
                    self.name,
                    self.socket.display()
                ),
            )
        })
    }

    /// Stops the device and joins its owner thread, which joins the worker threads. Takes up
    /// to about one second, the period of boringtun's socket check. If the socket cannot be
    /// removed, the worker threads are only signalled to stop and are not joined. A thread
    /// that has not ended after [`EMBEDDED_STOP_TIMEOUT`] is left behind with a warning.
    fn stop(mut self) {
        drop(self.stop.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        if !wait_until_finished(&thread, EMBEDDED_STOP_TIMEOUT) {
            warn!(device = %self.name, timeout = ?EMBEDDED_STOP_TIMEOUT, "the embedded device thread did not stop; leaving it behind");
            return;
        }
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                warn!(device = %self.name, error = %err, "the embedded device thread failed")
            }
            Err(_) => warn!(device = %self.name, "the embedded device thread panicked"),
        }
    }
}

impl Drop for EmbeddedDevice {
    fn drop(&mut self) {
        // Reached without `stop` only when `start` failed after the thread began.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if wait_until_finished(&thread, EMBEDDED_STOP_TIMEOUT) {
                let _ = thread.join();
            } else {
                warn!(device = %self.name, timeout = ?EMBEDDED_STOP_TIMEOUT, "the embedded device thread did not stop; leaving it behind");
            }
        }
    }
}

/// Waits up to `timeout` for `thread` to end, and returns whether it did.
fn wait_until_finished<T>(thread: &JoinHandle<T>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(EMBEDDED_STOP_POLL);
    }
    true
}

/// Targets of the descriptors that boringtun 0.7.1 opens without `O_CLOEXEC`: the TUN queue
/// (`/dev/net/tun`), its epoll instance, timers, notifiers and signalfd. Left inheritable, every
/// process the agent spawns would hold the TUN descriptor, which keeps the link alive after the
/// device stops and lets that process write packets into the mesh.
const UNMARKED_FD_TARGETS: [&str; 5] = [
    "/dev/net/tun",
    "anon_inode:[eventpoll]",
    "anon_inode:[timerfd]",
    "anon_inode:[eventfd]",
    "anon_inode:[signalfd]",
];

/// Directory of this process's open file descriptors.
const PROC_SELF_FD: &str = "/proc/self/fd";

/// Returns the numbers of this process's open file descriptors.
fn open_fds() -> io::Result<BTreeSet<RawFd>> {
    let mut fds = BTreeSet::new();
    for entry in std::fs::read_dir(PROC_SELF_FD)? {
        if let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        {
            fds.insert(fd);
        }
    }
    Ok(fds)
}

/// Sets `FD_CLOEXEC` on the descriptors opened since `before` whose target is one of
/// `UNMARKED_FD_TARGETS`. Descriptors of those kinds that other threads opened meanwhile are
/// marked too, which is harmless: Rust's standard library and tokio open them close-on-exec.
/// A process spawned by another thread between boringtun's `open` and this call still inherits
/// the descriptors.
fn mark_new_fds_close_on_exec(before: &BTreeSet<RawFd>) -> io::Result<()> {
    for fd in open_fds()?.difference(before) {
        let Ok(target) = std::fs::read_link(Path::new(PROC_SELF_FD).join(fd.to_string())) else {
            // Closed since it was listed.
            continue;
        };
        if !UNMARKED_FD_TARGETS
            .iter()
            .any(|kind| target == Path::new(kind))
        {
            continue;
        }
        // SAFETY: F_GETFD and F_SETFD read and set only the descriptor flags of `fd` and touch
        // no memory. A descriptor closed meanwhile makes them fail with EBADF.
        let flags = unsafe { libc::fcntl(*fd, libc::F_GETFD) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(*fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Target of the signalfd descriptors boringtun opens.
const SIGNALFD_TARGET: &str = "anon_inode:[signalfd]";

/// Replaces each signalfd opened since `before` with a descriptor of `/dev/null`.
///
/// boringtun 0.7.1 reads SIGINT and SIGTERM through signalfds and stops the device on them. A
/// signalfd also takes process-wide signals out of the queue, so it races the agent's own
/// handler for the SIGTERM that stops the agent, and a lost race leaves the agent running with a
/// stopped device. `dup2` over the descriptor number drops the signalfd, which also removes it
/// from boringtun's epoll set, and boringtun never closes those numbers, so no other file is
/// affected. The agent stops the device itself when it stops.
fn disarm_signal_fds(before: &BTreeSet<RawFd>) -> io::Result<()> {
    for fd in open_fds()?.difference(before) {
        let Ok(target) = std::fs::read_link(Path::new(PROC_SELF_FD).join(fd.to_string())) else {
            continue;
        };
        if target != Path::new(SIGNALFD_TARGET) {
            continue;
        }
        let null = std::fs::File::open("/dev/null")?;
        // SAFETY: dup3 only changes the descriptor table: it makes `fd` refer to /dev/null and
        // closes the signalfd it referred to. `fd` belongs to boringtun's event loop, which
        // keeps the number and never reads or closes it again once the signalfd is out of the
        // epoll set.
        if unsafe { libc::dup3(null.as_raw_fd(), *fd, libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Removes the UAPI socket of device `name`, which stops the device. Returns whether the
/// socket is gone.
fn remove_socket(socket: &Path, name: &str) -> bool {
    match std::fs::remove_file(socket) {
        Ok(()) => true,
        // Someone else removed it, which has stopped the device already.
        Err(err) if err.kind() == io::ErrorKind::NotFound => true,
        Err(err) => {
            warn!(
                device = name,
                socket = %socket.display(),
                error = %err,
                "failed to remove the UAPI socket of the embedded device"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_interface_rules() {
        for valid in ["cx0", "cxmesh", "cx0123456789abc", "cx-a_b"] {
            assert!(validate_name(valid).is_ok(), "{valid} is valid");
        }
        for invalid in ["wg0", "", "cx0123456789abcd", "cx a", "cx/a", "cx.a", "cxé"] {
            assert!(
                matches!(validate_name(invalid), Err(DeviceError::InvalidName { .. })),
                "{invalid} is invalid"
            );
        }
    }

    #[test]
    fn backend_display_names() {
        assert_eq!(Backend::Kernel.to_string(), "kernel");
        assert_eq!(Backend::Userspace.to_string(), "userspace");
    }

    #[test]
    fn embedded_device_leaves_no_signalfd() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "embedded_device_leaves_no_signalfd needs root, and CI=true does not allow skipping it"
            );
            eprintln!("skipped embedded_device_leaves_no_signalfd: needs root for a network namespace and a TUN device");
            return;
        }
        // The device's network namespace is a new one of this test, left when the device and
        // the thread are gone. The process id keeps the name unique on the machine.
        let name = format!("cxsig{:x}", std::process::id());
        let device = std::thread::spawn({
            let name = name.clone();
            move || {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("enter a new netns");
                MeshDevice::create(&name, 0, &HostKey::generate(), BackendChoice::Userspace)
            }
        })
        .join()
        .expect("device thread")
        .expect("create device");

        let signalfds: Vec<RawFd> = open_fds()
            .expect("list fds")
            .into_iter()
            .filter(|fd| {
                std::fs::read_link(Path::new(PROC_SELF_FD).join(fd.to_string()))
                    .is_ok_and(|target| target == Path::new(SIGNALFD_TARGET))
            })
            .collect();
        assert_eq!(signalfds, Vec::<RawFd>::new(), "signalfds of {name}");
        assert!(uapi_socket_path(&name).exists(), "the device runs");

        drop(device);
        assert!(!uapi_socket_path(&name).exists(), "socket of {name} is removed");
    }

    #[test]
    fn socket_path_is_machine_wide() {
        assert_eq!(
            uapi_socket_path("cx0"),
            PathBuf::from("/var/run/wireguard/cx0.sock")
        );
    }
}
