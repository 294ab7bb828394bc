//! The silo runtime: runs each silo's program in new pid, mount, UTS, IPC and network
//! namespaces on an overlayfs root whose lower layer is a busybox image, with a veth pair on a
//! host bridge, optional NAT, and a cgroup v2 directory.
//!
//! Process model: the agent (multi-threaded tokio) never forks except to exec. For each silo it
//! spawns `<helper_exe> silo-helper` ([`helper_main`]), a single-threaded process that clones
//! the silo's PID 1 (module `init`) into the new namespaces. PID 1 waits on a pipe until the
//! agent has put it in its cgroup and configured its network. Then it sets up its root file
//! system and execs the program in a forked child. The helper waits for PID 1 and writes its
//! exit status to the silo dir, and the agent waits for the helper and sends a [`SiloExit`].
//!
//! Every kernel object is named after the silo id or the host name and recorded on disk
//! (module `state`) before it is created, so [`Runtime::start`] can remove what an earlier
//! agent left behind.

mod cgroup;
mod config;
mod files;
mod helper;
mod host;
mod image;
mod init;
mod iptables;
mod launch;
mod lease;
mod names;
mod network;
mod pidfd;
mod protocol;
mod removal;
mod rootfs;
mod silo;
mod spec;
mod state;
mod teardown;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::mpsc;

pub use cgroup::CgroupError;
pub use config::{ConfigError, RuntimeConfig, DEFAULT_BUSYBOX_PATH};
pub use files::FilesError;
pub use helper::helper_main;
pub use image::ImageError;
pub use iptables::{IptablesError, MASQUERADE_CHAIN};
pub use launch::LaunchError;
pub use lease::LeaseError;
pub use names::NameError;
pub use network::NetworkError;
pub use protocol::HELPER_ARG;
pub use spec::SpecError;
pub use state::{
    StateError, EXIT_FILE, HELPER_LOG_FILE, RECORD_FILE, STDERR_LOG_FILE, STDOUT_LOG_FILE,
};

/// Capacity of the [`SiloExit`] channel; a full channel delays the waiting tasks, not silos.
const EXIT_CHANNEL_CAPACITY: usize = 256;

/// Exit of a silo's program that ended by itself, not through [`Runtime::remove_silo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloExit {
    pub silo_id: String,
    pub generation: u64,
    /// Exit code of the program, or 128 + signal number when it was killed.
    pub exit_code: i32,
}

/// Errors of the silo runtime. Each variant names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid runtime config: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("invalid spec for silo {silo_id}: {source}")]
    Spec { silo_id: String, source: SpecError },
    #[error("silo {silo_id} already exists")]
    AlreadyExists { silo_id: String },
    #[error("the runtime is shut down")]
    ShutDown,
    #[error("failed to create dir {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to remove dir {path}: {source}")]
    RemoveDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to prepare image: {0}")]
    Image(#[from] ImageError),
    #[error("address lease failed: {0}")]
    Lease(#[from] LeaseError),
    #[error("state file: {0}")]
    State(#[from] StateError),
    #[error("failed to place files in silo {silo_id}: {source}")]
    Files { silo_id: String, source: FilesError },
    #[error("cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("network: {0}")]
    Network(#[from] NetworkError),
    #[error("iptables: {0}")]
    Iptables(#[from] IptablesError),
    #[error("failed to start silo {silo_id}: {source}")]
    Launch {
        silo_id: String,
        source: LaunchError,
    },
    #[error("a blocking task of the runtime panicked: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The silo runtime of one agent. Cheap to clone; all clones share the same silos.
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: RuntimeConfig,
    /// The configured subnet with its host bits cleared.
    network: Ipv4Net,
    silos_dir: PathBuf,
    /// Lower dir of every silo's overlayfs: the built busybox image.
    image_dir: PathBuf,
    /// `<cgroup2 mount>/colex-<host>`.
    host_cgroup: PathBuf,
    leases: lease::Leases,
    netlink: network::Netlink,
    exits: mpsc::Sender<SiloExit>,
    /// Silos this process started. A slot's lock is held while the silo is being created or
    /// removed; `None` inside means it is gone.
    silos: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<silo::RunningSilo>>>>>,
    shut_down: AtomicBool,
}

impl Runtime {
    /// Prepares the host: state dir, image cache, bridge (created if missing, address, up),
    /// iptables chain and cgroup dir. Removes the leftovers of silos recorded in the state dir
    /// by an earlier run: their processes (through `cgroup.kill`), veths, NAT rules, cgroups,
    /// leases and dirs.
    ///
    /// Must be called inside a tokio runtime. Everything network-related happens in the network
    /// namespace of the calling thread.
    pub async fn start(
        cfg: RuntimeConfig,
    ) -> Result<(Runtime, mpsc::Receiver<SiloExit>), RuntimeError> {
        host::start(cfg).await
    }

    /// Starts one silo and returns once its program was exec'd, with the host-side veth name
    /// and the silo address. On failure, everything created for the silo is removed again and
    /// the error names the step that failed (for example "binary /bin/foo not found in silo root").
    pub async fn run_silo(
        &self,
        silo_id: &str,
        generation: u64,
        spec: &colex_proto::SiloSpec,
    ) -> Result<Vec<colex_proto::Interface>, RuntimeError> {
        silo::run(self, silo_id, generation, spec).await
    }

    /// Stops a silo and removes everything it had: veth, address lease, NAT rule, cgroup dir
    /// and silo dir. Stopping sends SIGTERM to the silo's PID 1, which forwards it to the
    /// program, and SIGKILLs the whole cgroup after `kill_timeout`. Works for running, exited
    /// and half-created silos, and removing an unknown silo succeeds.
    pub async fn remove_silo(
        &self,
        silo_id: &str,
        kill_timeout: Duration,
    ) -> Result<(), RuntimeError> {
        removal::remove(self, silo_id, kill_timeout).await
    }

    /// Removes every silo, then the bridge, the iptables chain and its jump rule, and the
    /// host's cgroup dir. The image cache is a plain dir with no mounts and stays for the next
    /// start. Later calls to [`Runtime::run_silo`] fail.
    pub async fn shutdown(&self) -> Result<(), RuntimeError> {
        host::shutdown(self).await
    }

    /// Returns the dir of silo `silo_id`, which contains [`STDOUT_LOG_FILE`], [`STDERR_LOG_FILE`]
    /// and [`HELPER_LOG_FILE`] while the silo exists.
    pub fn silo_dir(&self, silo_id: &str) -> PathBuf {
        self.inner.silos_dir.join(silo_id)
    }

    /// Returns the cgroup v2 dir that contains the cgroups of this host's silos.
    pub fn host_cgroup_dir(&self) -> PathBuf {
        self.inner.host_cgroup.clone()
    }

    /// Returns the configuration the runtime was started with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn runtime_is_send_and_sync() {
        assert_send_sync::<Runtime>();
        assert_send_sync::<RuntimeError>();
    }

    /// Compiled, never run: the session spawns these futures on a multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_are_send(runtime: &Runtime, cfg: RuntimeConfig, spec: &colex_proto::SiloSpec) {
        assert_send(&Runtime::start(cfg));
        assert_send(&runtime.run_silo("3938a44e", 1, spec));
        assert_send(&runtime.remove_silo("3938a44e", Duration::ZERO));
        assert_send(&runtime.shutdown());
    }
}
