//! Host-level setup and shutdown of the runtime: dirs, image, bridge, iptables chain, the
//! host's cgroup dir, adoption of an earlier run's silos and removal of its leftovers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::config::RuntimeConfig;
use super::lease::Leases;
use super::network::Netlink;
use super::state::{self, SiloDirs, TRASH_PREFIX};
use super::teardown::{remove_dir_all, CGROUP_KILL_WAIT};
use super::{
    adopt, cgroup, image, iptables, names, removal, teardown, Inner, Runtime, RuntimeError, SiloExit,
    EXIT_CHANNEL_CAPACITY,
};

/// Name of the leases dir inside the run dir.
pub const LEASES_DIR_NAME: &str = "leases";

/// Time each silo gets to stop after SIGTERM when the runtime shuts down.
pub const SHUTDOWN_KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Implements [`Runtime::start`].
pub async fn start(
    cfg: RuntimeConfig,
) -> Result<(Runtime, mpsc::Receiver<SiloExit>), RuntimeError> {
    cfg.validate()?;
    let silo_dirs = SiloDirs::new(&cfg.run_dir, &cfg.state_dir);
    let leases_dir = cfg.run_dir.join(LEASES_DIR_NAME);
    let images_dir = cfg.state_dir.join("images");
    for dir in [&cfg.state_dir, &cfg.run_dir, &silo_dirs.records, &silo_dirs.files, &leases_dir, &images_dir] {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| RuntimeError::CreateDir {
                path: dir.clone(),
                source,
            })?;
    }

    let cgroups =
        cgroup::HostCgroups::detect(&names::host_cgroup_name(&cfg.host_name), cfg.pids_limit)?;
    cgroups.create().await?;
    let host_cgroup = cgroups.membership_host_dir();

    let images = {
        let images_dir = images_dir.clone();
        let busybox = cfg.busybox.clone();
        let tarballs = cfg.images.clone();
        let id_map = cfg.id_map;
        tokio::task::spawn_blocking(move || {
            image::ImageStore::open(&images_dir, &busybox, &tarballs, id_map)
        })
        .await??
    };

    let netlink = Netlink::connect()?;
    let network = cfg.network();
    netlink
        .ensure_bridge(&cfg.bridge, cfg.gateway(), network.prefix_len())
        .await?;
    iptables::ensure_chain().await?;

    let (exits, exits_rx) = mpsc::channel(EXIT_CHANNEL_CAPACITY);
    let failpoint = cfg.failpoint.clone();
    let inner = Inner {
        leases: Leases::new(leases_dir, network),
        cfg,
        network,
        silo_dirs,
        images,
        host_cgroup,
        cgroups,
        netlink,
        exits,
        silos: Mutex::new(HashMap::new()),
        shut_down: AtomicBool::new(false),
        failpoint: Mutex::new(failpoint),
        spare: Default::default(),
    };
    adopt_earlier_silos(&inner).await?;

    info!(host = %inner.cfg.host_name, bridge = %inner.cfg.bridge, subnet = %inner.network, "silo runtime started");
    Ok((
        Runtime {
            inner: Arc::new(inner),
        },
        exits_rx,
    ))
}

/// Adopts the silos an earlier run of the agent left running or exited, and removes the rest
/// of what it left: half-created silos, cgroups without a record, stale NAT rules and leases.
async fn adopt_earlier_silos(inner: &Inner) -> Result<(), RuntimeError> {
    let dirs = &inner.silo_dirs;
    let mut adopted = Vec::new();
    for name in state::list_dir(&dirs.records)? {
        if name.starts_with(TRASH_PREFIX) {
            remove_dir_all(dirs.records.join(&name)).await?;
            continue;
        }
        if names::validate_silo_id(&name).is_err() {
            warn!(entry = %name, dir = %dirs.records.display(), "ignoring unexpected entry in silos dir");
            continue;
        }
        match adopt::adopt_or_remove(inner, &name).await {
            Ok(Some(silo)) => adopted.push(silo),
            Ok(None) => {}
            // The record stays, so the next start or a remove_silo retries.
            Err(err) => warn!(silo = %name, error = %err, "failed to remove leftover silo"),
        }
    }

    // Files without a record dir: a removal cut short between the two dirs, or a reboot that
    // emptied a run dir on tmpfs. Their kernel objects are gone or handled below.
    for name in state::list_dir(&dirs.files)? {
        if name.starts_with(TRASH_PREFIX) {
            remove_dir_all(dirs.files.join(&name)).await?;
        } else if names::validate_silo_id(&name).is_ok() && !dirs.records.join(&name).exists() {
            info!(silo = %name, "removing the files of a silo without a record");
            teardown::remove_silo_dir(&dirs.files, &name).await?;
        }
    }

    // Cgroups without a record (the record write is the first step, so only after a manual
    // deletion) are killed all the same: nothing of this host may run now.
    for name in inner.cgroups.silo_names().await? {
        if !has_record(inner, &name) {
            warn!(silo = %name, "removing cgroup of an unrecorded silo");
            inner
                .cgroups
                .silo(&name)
                .kill_and_remove(removal::LEFTOVER_KILL_WAIT)
                .await?;
        }
    }

    // Rules whose records were lost; the chain belongs to this agent's network namespace.
    // NOTE: with adopted silos the chain is not flushed, so that their NAT never pauses. A rule
    // whose record and lease were both lost then stays until a start without adopted silos.
    if adopted.is_empty() {
        iptables::flush_chain().await?;
    }
    for silo in &adopted {
        let record = adopted_record(inner, &silo.silo_id).await;
        if let Some(record) = record.filter(|record| record.internet_access) {
            iptables::add_masquerade(record.address, &inner.cfg.bridge, &silo.silo_id).await?;
        }
    }

    for (address, owner) in inner.leases.list()? {
        if !has_record(inner, &owner) {
            inner.leases.release(address, &owner)?;
        }
    }
    Ok(())
}

async fn adopted_record(inner: &Inner, silo_id: &str) -> Option<state::SiloRecord> {
    let slot = inner
        .silos
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(silo_id)
        .cloned()?;
    let guard = slot.lock().await;
    guard.as_ref().map(|running| running.record.clone())
}

fn has_record(inner: &Inner, silo_id: &str) -> bool {
    inner.silo_dirs.paths(silo_id).record().exists()
}

/// Implements [`Runtime::teardown`]: builds the runtime's view of the host without creating
/// the bridge, chain or image, then removes everything as [`shutdown`] does.
pub async fn teardown(cfg: RuntimeConfig) -> Result<(), RuntimeError> {
    cfg.validate()?;
    let silo_dirs = SiloDirs::new(&cfg.run_dir, &cfg.state_dir);
    let leases_dir = cfg.run_dir.join(LEASES_DIR_NAME);
    for dir in [&silo_dirs.records, &silo_dirs.files, &leases_dir] {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| RuntimeError::CreateDir {
                path: dir.clone(),
                source,
            })?;
    }
    let cgroups =
        cgroup::HostCgroups::detect(&names::host_cgroup_name(&cfg.host_name), cfg.pids_limit)?;
    let host_cgroup = cgroups.membership_host_dir();
    let network = cfg.network();
    // The channel is never read: a teardown adopts nothing and starts nothing.
    let (exits, _exits_rx) = mpsc::channel(1);
    let inner = Inner {
        leases: Leases::new(leases_dir, network),
        images: image::ImageStore::unprepared(&cfg.state_dir.join("images")),
        cfg,
        network,
        silo_dirs,
        host_cgroup,
        cgroups,
        netlink: Netlink::connect()?,
        exits,
        silos: Mutex::new(HashMap::new()),
        shut_down: AtomicBool::new(false),
        failpoint: Mutex::new(None),
        spare: Default::default(),
    };
    let runtime = Runtime {
        inner: Arc::new(inner),
    };
    shutdown(&runtime).await
}

/// Implements [`Runtime::shutdown`].
pub async fn shutdown(runtime: &Runtime) -> Result<(), RuntimeError> {
    let inner = &runtime.inner;
    inner.shut_down.store(true, Ordering::SeqCst);
    inner.spare.discard().await;
    let mut first_error = None;

    let silo_ids: Vec<String> = {
        let silos = inner
            .silos
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        silos.keys().cloned().collect()
    };
    for silo_id in silo_ids {
        if let Err(err) = runtime.remove_silo(&silo_id, SHUTDOWN_KILL_TIMEOUT).await {
            warn!(silo = %silo_id, error = %err, "failed to remove silo at shutdown");
            first_error.get_or_insert(err);
        }
    }
    // Records whose removal failed earlier, then files without a record.
    let dirs = &inner.silo_dirs;
    for (silos_dir, is_record_dir) in [(&dirs.records, true), (&dirs.files, false)] {
        for name in state::list_dir(silos_dir)? {
            let result = if name.starts_with(TRASH_PREFIX) {
                remove_dir_all(silos_dir.join(&name)).await
            } else if names::validate_silo_id(&name).is_err() {
                Ok(())
            } else if is_record_dir {
                removal::remove_leftover(inner, &name).await
            } else {
                teardown::remove_silo_dir(silos_dir, &name).await
            };
            if let Err(err) = result {
                warn!(entry = %name, error = %err, "failed to remove silo dir at shutdown");
                first_error.get_or_insert(err);
            }
        }
    }

    if let Err(err) = iptables::remove_chain().await {
        warn!(error = %err, "failed to remove iptables chain at shutdown");
        first_error.get_or_insert(err.into());
    }
    if let Err(err) = inner.netlink.delete_link(&inner.cfg.bridge).await {
        warn!(bridge = %inner.cfg.bridge, error = %err, "failed to delete bridge at shutdown");
        first_error.get_or_insert(err.into());
    }
    if let Err(err) = remove_host_cgroup(inner).await {
        warn!(cgroup = %inner.host_cgroup.display(), error = %err, "failed to remove host cgroup at shutdown");
        first_error.get_or_insert(err);
    }

    match first_error {
        Some(err) => Err(err),
        None => {
            info!(host = %inner.cfg.host_name, "silo runtime shut down");
            Ok(())
        }
    }
}

async fn remove_host_cgroup(inner: &Inner) -> Result<(), RuntimeError> {
    inner.cgroups.remove(CGROUP_KILL_WAIT).await?;
    Ok(())
}
