//! The silo runtime: runs each silo's program in new pid, mount, UTS, IPC and network
//! namespaces on an overlayfs root whose lower layer is an image (the built-in busybox image or
//! a tarball image from the agent's configuration), with a veth pair on a host bridge, optional
//! NAT, and cgroups (v1 or v2, per controller) for limits and stats.
//!
//! Process model: the agent (multi-threaded tokio) never forks except to exec. For each silo it
//! hands a job to a helper (module `spare` keeps two waiting): `<helper_exe> silo-helper`
//! ([`helper_main`]), a single-threaded process that cloned the silo's PID 1 (module `init`)
//! into the new namespaces when it started, before the job. The agent configures the silo's
//! network while it writes the silo's files and makes its cgroups. PID 1 waits on a pipe until
//! the files are written, then sets up its root file system while the agent puts it in its
//! cgroup and finishes the network. Once both are done, it execs the program in a forked child. The helper is the silo's supervisor: it
//! drains the program's stdout and stderr pipes into rotating log files (module `logs`), waits
//! for PID 1 and writes its exit status to the silo dir, and the agent waits for the helper and
//! sends a [`SiloExit`]. The helper needs nothing from the agent once the program runs, so the
//! silo survives a restart or crash of the agent, and the next agent adopts it (module `adopt`).
//!
//! Every kernel object is named after the silo id or the host name and recorded on disk
//! (module `state`) before it is created, so [`Runtime::start`] can remove what an earlier
//! agent left behind of a silo it cannot adopt.

mod adopt;
mod antispoof;
mod binds;
mod busybox;
mod capabilities;
mod cgroup;
mod config;
mod exec;
mod exec_cgroup;
mod exec_helper;
mod exec_session;
mod failpoint;
mod files;
mod helper;
mod host;
mod image;
mod init;
mod iptables;
mod launch;
mod lease;
mod logs;
mod names;
mod network;
mod pidfd;
mod protocol;
mod removal;
mod restart;
mod rootfs;
mod seccomp;
mod silo;
mod spare;
mod sources;
mod spec;
mod state;
mod stats;
mod step_clock;
mod tarball;
mod teardown;
mod userns;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::mpsc;

pub use adopt::AdoptedSilo;
pub use binds::{is_bind_id, BindError, BindSource, MAX_BIND_ID_BYTES};
pub use cgroup::CgroupError;
pub use config::{ConfigError, RuntimeConfig, DEFAULT_BUSYBOX_PATH, DEFAULT_METADATA_PORT, DEFAULT_PIDS_LIMIT, DEFAULT_RUN_DIR_NAME};
pub use failpoint::{FailpointReached, FAILPOINTS};
pub use files::FilesError;
pub use exec::{ExecInput, ExecOutput, ExecRequest};
pub use exec_helper::{exec_helper_main, ExecReport, EXEC_HELPER_ARG};
pub use exec_session::ExecSessions;
pub use helper::helper_main;
pub use image::{
    cache_dir_suffix, is_image_name, ImageError, BUSYBOX_IMAGE, MAX_IMAGE_NAME_BYTES,
};
pub use userns::IdMap;
pub use iptables::{
    adopt_cluster_network, ensure_dns_accept, ensure_forward_accept, ensure_metadata_accept, restore_cluster_network,
    IptablesError, FORWARD_CHAIN, INPUT_CHAIN, MASQUERADE_CHAIN,
};
pub use launch::LaunchError;
pub use lease::LeaseError;
pub use logs::{LogQuery, LogsError, MAX_LOG_FILE_BYTES};
pub use names::NameError;
pub use network::NetworkError;
pub use protocol::HELPER_ARG;
pub use removal::StopReport;
pub use spec::SpecError;
pub use stats::{net_dev_counters, SiloStats, NET_DEV_RECEIVE_COUNTERS};
pub use tarball::TarballError;
pub use state::{
    LogStreamKind, StateError, EXIT_FILE, HELPER_LOG_FILE, RECORD_FILE, STDERR_LOG_FILE,
    STDOUT_LOG_FILE,
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
    /// Cause of the exit when the runtime found more than the exit code, such as
    /// "OOM killed (memory limit 64 MiB)". It becomes the silo's status message.
    pub reason: Option<String>,
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
    #[error("invalid bind for silo {silo_id}: {source}")]
    Bind { silo_id: String, source: BindError },
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
    #[error("a task of the runtime panicked or was cancelled: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("silo {silo_id} not found on this host")]
    NotFound { silo_id: String },
    #[error(
        "silo {silo_id} generation {generation} cannot be restarted: it runs, or the host has \
         generation {running_generation}"
    )]
    NotRestartable {
        silo_id: String,
        generation: u64,
        running_generation: u64,
    },
    #[error("failed to remove file {path}: {source}")]
    RemoveFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("logs of silo {silo_id}: {source}")]
    Logs { silo_id: String, source: LogsError },
    #[error(transparent)]
    Failpoint(#[from] FailpointReached),
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
    silo_dirs: state::SiloDirs,
    /// The host's images, whose cache dirs are the silos' overlayfs lower dirs.
    images: image::ImageStore,
    /// `<mount>/colex-<host>` in the hierarchy that tracks the silos' processes:
    /// `cgroups.membership_host_dir()`.
    host_cgroup: PathBuf,
    /// The host's cgroup dirs in every hierarchy, and the silo limits' mapping onto them.
    cgroups: cgroup::HostCgroups,
    leases: lease::Leases,
    netlink: network::Netlink,
    exits: mpsc::Sender<SiloExit>,
    /// Silos this process started. A slot's lock is held while the silo is being created or
    /// removed; `None` inside means it is gone.
    silos: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<silo::RunningSilo>>>>>,
    shut_down: AtomicBool,
    /// The failpoint the start path fails at, from `cfg.failpoint` or [`Runtime::set_failpoint`].
    failpoint: Mutex<Option<String>>,
    /// Helper processes waiting for the next starts' jobs.
    spare: spare::SpareHelpers,
}

impl Runtime {
    /// Prepares the host: state dir, image cache, bridge (created if missing, address, up),
    /// iptables chain and cgroup dir. Adopts the silos an earlier run left whose helper still
    /// runs or whose program exited (see [`Runtime::silos`]), and removes the rest of what it
    /// left: processes (through `cgroup.kill`), veths, NAT rules, cgroups, leases and dirs of
    /// half-created silos.
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
    /// and half-created silos, and removing an unknown silo succeeds. Returns how the program
    /// ended.
    pub async fn remove_silo(
        &self,
        silo_id: &str,
        kill_timeout: Duration,
    ) -> Result<StopReport, RuntimeError> {
        removal::remove(self, silo_id, kill_timeout).await
    }

    /// Starts the program of an exited silo again, in place: same id, generation, address,
    /// writable layer and logs, with a new helper, PID 1 and veth pair. `restarts` is the
    /// count to record, including this restart. Fails for a running silo and for another
    /// generation.
    pub async fn restart_silo(
        &self,
        silo_id: &str,
        generation: u64,
        spec: &colex_proto::SiloSpec,
        restarts: u32,
    ) -> Result<Vec<colex_proto::Interface>, RuntimeError> {
        restart::restart(self, silo_id, generation, spec, restarts).await
    }

    /// Returns every silo the runtime tracks and is not creating or removing at this moment.
    /// Right after [`Runtime::start`] these are the silos adopted from an earlier agent.
    pub fn silos(&self) -> Vec<AdoptedSilo> {
        let slots: Vec<_> = self
            .inner
            .silos
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        let mut silos = Vec::new();
        for slot in slots {
            let Ok(guard) = slot.try_lock() else {
                continue;
            };
            if let Some(running) = guard.as_ref() {
                silos.push(AdoptedSilo {
                    silo_id: running.record.silo_id.clone(),
                    generation: running.record.generation,
                    interfaces: vec![colex_proto::Interface {
                        name: running.record.host_veth.clone(),
                        address: running.record.address.to_string(),
                    }],
                    exit_code: *running.exit_code.borrow(),
                    restarts: running.record.restarts,
                });
            }
        }
        silos.sort_by(|a, b| a.silo_id.cmp(&b.silo_id));
        silos
    }

    /// Sends the output of silo `silo_id` to `sink` in chunks, as [`LogQuery`] requests. Returns
    /// once everything requested was sent, `sink` closed, or a followed silo was removed.
    pub async fn stream_logs(
        &self,
        silo_id: &str,
        stream: LogStreamKind,
        query: LogQuery,
        sink: &mpsc::Sender<Vec<u8>>,
    ) -> Result<(), RuntimeError> {
        names::validate_silo_id(silo_id)?;
        let paths = self.inner.silo_dirs.paths(silo_id);
        if !tokio::fs::try_exists(&paths.record()).await.unwrap_or(false) {
            return Err(RuntimeError::NotFound {
                silo_id: silo_id.to_string(),
            });
        }
        logs::stream_log(&paths.log(stream), &paths.dir, query, sink)
            .await
            .map_err(|source| RuntimeError::Logs {
                silo_id: silo_id.to_string(),
                source,
            })
    }

    /// Removes every silo recorded in `cfg.state_dir`, then the bridge, the iptables chain and
    /// its jump rule, and the host's cgroup dir, without starting a runtime: what
    /// `colex-agent teardown` runs once the agent has stopped. The subnet in `cfg` is not used.
    pub async fn teardown(cfg: RuntimeConfig) -> Result<(), RuntimeError> {
        host::teardown(cfg).await
    }

    /// Removes every silo, then the bridge, the iptables chain and its jump rule, and the
    /// host's cgroup dir. An agent that stops leaves its silos running and does not call this. The image cache is a plain dir with no mounts and stays for the next
    /// start. Later calls to [`Runtime::run_silo`] fail.
    pub async fn shutdown(&self) -> Result<(), RuntimeError> {
        host::shutdown(self).await
    }

    /// Returns the pids of the helper processes that wait for the next starts' jobs. They hold
    /// no silo and exit when the agent does.
    pub fn spare_helper_pids(&self) -> Vec<u32> {
        self.inner.spare.pids()
    }

    /// Returns the dir of silo `silo_id` in the state dir, which contains [`STDOUT_LOG_FILE`],
    /// [`STDERR_LOG_FILE`] and [`HELPER_LOG_FILE`] while the silo exists.
    pub fn silo_dir(&self, silo_id: &str) -> PathBuf {
        self.inner.silo_dirs.paths(silo_id).dir
    }

    /// Returns the dir of silo `silo_id` in the run dir, which contains its record while the
    /// silo exists.
    pub fn silo_record_dir(&self, silo_id: &str) -> PathBuf {
        self.inner.silo_dirs.paths(silo_id).run
    }

    /// Returns the cgroup dir that contains the cgroups of this host's silos in the hierarchy
    /// that tracks their processes: the cgroup2 one whenever cgroup2 is mounted.
    pub fn host_cgroup_dir(&self) -> PathBuf {
        self.inner.host_cgroup.clone()
    }

    /// Returns the host's cgroup dir in every hierarchy the runtime uses (cgroup2 and the v1
    /// cpu, cpuacct, memory and pids hierarchies where mounted).
    pub fn host_cgroup_dirs(&self) -> Vec<PathBuf> {
        self.inner.cgroups.host_dirs()
    }

    /// Returns the usage of silo `silo_id`: CPU time, memory in use and process count from its
    /// cgroups, and the bytes its interface received and sent. Fails with
    /// [`RuntimeError::NotFound`] when the silo has no cgroup on this host.
    pub async fn stats(&self, silo_id: &str) -> Result<SiloStats, RuntimeError> {
        stats::collect(self, silo_id).await
    }

    /// Returns the configuration the runtime was started with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.cfg
    }

    /// Sets the failpoint later starts fail at, or clears it with `None`; tests only.
    pub fn set_failpoint(&self, name: Option<&str>) -> Result<(), ConfigError> {
        if let Some(name) = name.filter(|name| !failpoint::is_failpoint(name)) {
            return Err(ConfigError::UnknownFailpoint {
                name: name.to_string(),
            });
        }
        *self
            .inner
            .failpoint
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = name.map(str::to_string);
        Ok(())
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
        assert_send(&runtime.stats("3938a44e"));
        assert_send(&runtime.shutdown());
    }
}
