//! Host-level setup and shutdown of the runtime: dirs, image, bridge, iptables chain, the
//! host's cgroup dir, and removal of an earlier run's leftovers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::config::RuntimeConfig;
use super::lease::Leases;
use super::network::Netlink;
use super::state::{self, TRASH_PREFIX};
use super::teardown::{remove_dir_all, CGROUP_KILL_WAIT};
use super::{
    cgroup, image, iptables, names, removal, Inner, Runtime, RuntimeError, SiloExit,
    EXIT_CHANNEL_CAPACITY,
};

/// Time each silo gets to stop after SIGTERM when the runtime shuts down.
pub const SHUTDOWN_KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Implements [`Runtime::start`].
pub async fn start(
    cfg: RuntimeConfig,
) -> Result<(Runtime, mpsc::Receiver<SiloExit>), RuntimeError> {
    cfg.validate()?;
    let silos_dir = cfg.state_dir.join("silos");
    let leases_dir = cfg.state_dir.join("leases");
    let images_dir = cfg.state_dir.join("images");
    for dir in [&cfg.state_dir, &silos_dir, &leases_dir, &images_dir] {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| RuntimeError::CreateDir {
                path: dir.clone(),
                source,
            })?;
    }

    let host_cgroup = cgroup::cgroup2_mount()?.join(names::host_cgroup_name(&cfg.host_name));
    cgroup::create(&host_cgroup).await?;

    let image_dir = {
        let images_dir = images_dir.clone();
        let busybox = cfg.busybox.clone();
        tokio::task::spawn_blocking(move || image::ensure_busybox_image(&images_dir, &busybox))
            .await??
    };

    let netlink = Netlink::connect()?;
    let network = cfg.network();
    netlink
        .ensure_bridge(&cfg.bridge, cfg.gateway(), network.prefix_len())
        .await?;
    iptables::ensure_chain().await?;

    let (exits, exits_rx) = mpsc::channel(EXIT_CHANNEL_CAPACITY);
    let inner = Inner {
        leases: Leases::new(leases_dir, network),
        cfg,
        network,
        silos_dir,
        image_dir,
        host_cgroup,
        netlink,
        exits,
        silos: Mutex::new(HashMap::new()),
        shut_down: AtomicBool::new(false),
    };
    remove_leftovers(&inner).await?;

    info!(host = %inner.cfg.host_name, bridge = %inner.cfg.bridge, subnet = %inner.network, "silo runtime started");
    Ok((
        Runtime {
            inner: Arc::new(inner),
        },
        exits_rx,
    ))
}

/// Removes every silo an earlier run of the agent left: no silo runs when the agent starts.
async fn remove_leftovers(inner: &Inner) -> Result<(), RuntimeError> {
    for name in state::list_dir(&inner.silos_dir)? {
        if name.starts_with(TRASH_PREFIX) {
            remove_dir_all(inner.silos_dir.join(&name)).await?;
            continue;
        }
        if names::validate_silo_id(&name).is_err() {
            warn!(entry = %name, dir = %inner.silos_dir.display(), "ignoring unexpected entry in silos dir");
            continue;
        }
        if let Err(err) = removal::remove_leftover(inner, &name).await {
            // The record stays, so the next start or a remove_silo retries.
            warn!(silo = %name, error = %err, "failed to remove leftover silo");
        }
    }

    // Cgroups without a record (the record write is the first step, so only after a manual
    // deletion) are killed all the same: nothing of this host may run now.
    for dir in cgroup::child_dirs(&inner.host_cgroup).await? {
        if !has_record(inner, &dir) {
            warn!(cgroup = %dir.display(), "removing cgroup of an unrecorded silo");
            cgroup::kill_and_remove(&dir, removal::LEFTOVER_KILL_WAIT).await?;
        }
    }

    // Rules whose records were lost; the chain belongs to this agent's network namespace.
    iptables::flush_chain().await?;

    for (address, owner) in inner.leases.list()? {
        if !inner
            .silos_dir
            .join(&owner)
            .join(state::RECORD_FILE)
            .exists()
        {
            inner.leases.release(address, &owner)?;
        }
    }
    Ok(())
}

fn has_record(inner: &Inner, cgroup_dir: &Path) -> bool {
    cgroup_dir
        .file_name()
        .is_some_and(|name| inner.silos_dir.join(name).join(state::RECORD_FILE).exists())
}

/// Implements [`Runtime::shutdown`].
pub async fn shutdown(runtime: &Runtime) -> Result<(), RuntimeError> {
    let inner = &runtime.inner;
    inner.shut_down.store(true, Ordering::SeqCst);
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
    // Records whose removal failed earlier.
    for name in state::list_dir(&inner.silos_dir)? {
        let result = if name.starts_with(TRASH_PREFIX) {
            remove_dir_all(inner.silos_dir.join(&name)).await
        } else if names::validate_silo_id(&name).is_ok() {
            removal::remove_leftover(inner, &name).await
        } else {
            Ok(())
        };
        if let Err(err) = result {
            warn!(entry = %name, error = %err, "failed to remove silo dir at shutdown");
            first_error.get_or_insert(err);
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
    for dir in cgroup::child_dirs(&inner.host_cgroup).await? {
        cgroup::kill_and_remove(&dir, CGROUP_KILL_WAIT).await?;
    }
    cgroup::remove(&inner.host_cgroup).await?;
    Ok(())
}
