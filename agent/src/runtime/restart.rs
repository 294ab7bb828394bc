//! Restarting an exited silo's program in place, for the restart policy.
//!
//! A restart keeps the silo id and generation, the leased address, the NAT rule, the cgroup,
//! the writable layer (so files the program wrote stay) and the log files (so `logs` shows
//! every run). It makes a new helper, PID 1 and network namespace, and with it a new veth pair,
//! because the old pair was destroyed with the old namespace.

use std::io;

use colex_proto::{Interface, SiloSpec};
use tracing::{info, warn};

use super::names::{self, validate_silo_id};
use super::silo::{helper_job, launch, NewCgroup, RunningSilo};
use super::sources::{self, SiloSources};
use super::spec;
use super::state;
use super::teardown::CGROUP_KILL_WAIT;
use super::{cgroup, Inner, Runtime, RuntimeError};

/// Implements [`Runtime::restart_silo`].
pub async fn restart(
    runtime: &Runtime,
    silo_id: &str,
    generation: u64,
    spec: &SiloSpec,
    restarts: u32,
) -> Result<Vec<Interface>, RuntimeError> {
    let inner = &runtime.inner;
    validate_silo_id(silo_id)?;
    if inner.shut_down.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(RuntimeError::ShutDown);
    }
    let plan = spec::plan(spec).map_err(|source| RuntimeError::Spec {
        silo_id: silo_id.to_string(),
        source,
    })?;
    let sources = sources::resolve(inner, silo_id, spec, &plan).await?;
    let not_found = || RuntimeError::NotFound {
        silo_id: silo_id.to_string(),
    };
    let slot = inner
        .silos
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(silo_id)
        .cloned()
        .ok_or_else(not_found)?;
    let mut guard = slot.lock().await;
    let Some(exited) = guard.take() else {
        return Err(not_found());
    };
    if exited.exit_code.borrow().is_none() || exited.record.generation != generation {
        let running_generation = exited.record.generation;
        *guard = Some(exited);
        return Err(RuntimeError::NotRestartable {
            silo_id: silo_id.to_string(),
            generation,
            running_generation,
        });
    }

    match relaunch(inner, &exited, &plan, &sources, restarts).await {
        Ok(running) => {
            let interface = Interface {
                name: running.record.host_veth.clone(),
                address: running.record.address.to_string(),
            };
            info!(silo = silo_id, generation, restarts, "silo restarted");
            *guard = Some(running);
            Ok(vec![interface])
        }
        Err(err) => {
            warn!(silo = silo_id, generation, error = %err, "silo restart failed");
            // The exited silo stays in its slot, so a removal finds all its objects.
            *guard = Some(exited);
            Err(err)
        }
    }
}

async fn relaunch(
    inner: &Inner,
    exited: &RunningSilo,
    plan: &spec::SiloPlan,
    sources: &SiloSources,
    restarts: u32,
) -> Result<RunningSilo, RuntimeError> {
    let silo_id = exited.record.silo_id.clone();
    let paths = inner.silo_dirs.paths(&silo_id);
    let mut record = exited.record.clone();
    record.helper_pid = None;
    record.init_pid = None;
    record.helper_start_ticks = None;
    record.started = false;
    record.started_at_unix_ms = None;
    record.restarts = restarts;
    // Unstarted until the new program runs: an agent crash in between removes the silo.
    state::rewrite_json_in_place(&paths.record(), &record)?;
    match tokio::fs::remove_file(paths.exit()).await {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            return Err(RuntimeError::RemoveFile {
                path: paths.exit(),
                source: err,
            })
        }
        _ => {}
    }

    // Nothing of the last run may share the cgroup with the new PID 1. The cgroup itself stays,
    // with the limits set at the first start.
    let silo_cgroup = inner.cgroups.silo(&silo_id);
    let membership_dir = silo_cgroup.membership_dir().to_path_buf();
    cgroup::kill_all(&membership_dir).await?;
    if !cgroup::wait_empty(&membership_dir, CGROUP_KILL_WAIT).await? {
        return Err(cgroup::CgroupError::NotEmpty {
            path: membership_dir,
            waited: CGROUP_KILL_WAIT,
        }
        .into());
    }

    // `launch` creates the new veth pair with the silo's end inside the new PID 1's namespace.
    // The old pair went away with the old namespace; a host end left by a crash is removed here.
    let peer = names::peer_veth_name(&silo_id);
    for stale in [&record.host_veth, &peer] {
        inner.netlink.delete_link(stale).await?;
    }

    let job = helper_job(&paths, &silo_id, plan, sources, inner.cfg.id_map, &inner.cfg.metadata_endpoint());
    let host_veth = record.host_veth.clone();
    let launched = match inner.spare.take(&inner.cfg.helper_exe, &job).await {
        // The files and the cgroup are still there from the first start.
        Ok(helper) => launch(inner, &paths, record, helper, NewCgroup::Exists, std::future::ready(Ok(())), std::future::ready(Ok(()))).await,
        Err(source) => Err(RuntimeError::Launch {
            silo_id: silo_id.clone(),
            source,
        }),
    };
    inner.spare.refill(&inner.cfg.helper_exe, inner.cfg.id_map);
    match launched {
        Ok(running) => Ok(running),
        Err(err) => {
            if let Err(undo_err) = inner.netlink.delete_link(&host_veth).await {
                warn!(silo = %silo_id, error = %undo_err, "failed to delete the veth of a failed restart");
            }
            Err(err)
        }
    }
}
