//! Starting one silo: setup steps with their undo, the helper, and the task that waits for
//! the silo to exit.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use colex_proto::{Interface, SiloSpec};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::files;
use super::init::SIGNAL_EXIT_CODE_BASE;
use super::launch::Helper;
use super::names::{self, validate_silo_id};
use super::network::{configure_silo_netns, SiloInterface};
use super::pidfd::PidFd;
use super::protocol::HelperJob;
use super::removal::{forget_slot, remove_leftover};
use super::spec::{self, SiloPlan};
use super::state::{self, ExitRecord, SiloPaths, SiloRecord};
use super::teardown::{UndoStack, UndoStep};
use super::{cgroup, iptables, Inner, Runtime, RuntimeError, SiloExit};

/// How long the helper may take to clone the silo's PID 1.
const CLONE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long PID 1 may take from release to exec of the program: mounts and pivot_root.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the helper may take to exit once the silo's cgroup is empty.
pub const HELPER_EXIT_WAIT: Duration = Duration::from_secs(5);

/// A silo whose program this agent process started, with the handles to stop it.
#[derive(Debug)]
pub struct RunningSilo {
    pub record: SiloRecord,
    /// Handle on PID 1; `None` when the kernel has no pidfd support.
    pub init: Option<PidFd>,
    /// Set before the silo is stopped, so its exit is not reported as a [`SiloExit`].
    pub removing: Arc<AtomicBool>,
    /// The exit code once the helper has exited.
    pub exit_code: watch::Receiver<Option<i32>>,
    /// Makes the waiting task SIGKILL the helper.
    pub kill_helper: Option<oneshot::Sender<()>>,
}

/// Implements [`Runtime::run_silo`].
pub async fn run(
    runtime: &Runtime,
    silo_id: &str,
    generation: u64,
    spec: &SiloSpec,
) -> Result<Vec<Interface>, RuntimeError> {
    let inner = &runtime.inner;
    validate_silo_id(silo_id)?;
    if inner.shut_down.load(Ordering::SeqCst) {
        return Err(RuntimeError::ShutDown);
    }
    let plan = spec::plan(spec).map_err(|source| RuntimeError::Spec {
        silo_id: silo_id.to_string(),
        source,
    })?;

    // The slot is locked before it is visible, so a concurrent remove waits for the setup.
    let slot = Arc::new(tokio::sync::Mutex::new(None));
    let mut guard = Arc::clone(&slot).lock_owned().await;
    {
        let mut silos = inner
            .silos
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if silos.contains_key(silo_id) {
            return Err(RuntimeError::AlreadyExists {
                silo_id: silo_id.to_string(),
            });
        }
        silos.insert(silo_id.to_string(), Arc::clone(&slot));
    }

    match setup(inner, silo_id, generation, spec, &plan).await {
        Ok(running) => {
            let interface = Interface {
                name: running.record.host_veth.clone(),
                address: running.record.address.to_string(),
            };
            info!(silo = silo_id, generation, address = %running.record.address, "silo started");
            *guard = Some(running);
            Ok(vec![interface])
        }
        Err(err) => {
            warn!(silo = silo_id, generation, error = %err, "silo start failed");
            drop(guard);
            forget_slot(inner, silo_id, &slot);
            Err(err)
        }
    }
}

/// Runs the setup steps; on failure runs the undo steps of what was created.
async fn setup(
    inner: &Inner,
    silo_id: &str,
    generation: u64,
    spec: &SiloSpec,
    plan: &SiloPlan,
) -> Result<RunningSilo, RuntimeError> {
    // A record without a slot is a leftover of a failed removal: finish that first.
    let paths = SiloPaths::new(&inner.silos_dir, silo_id);
    if tokio::fs::try_exists(&paths.dir).await.unwrap_or(true) {
        remove_leftover(inner, silo_id).await?;
    }

    let mut undo = UndoStack::new(silo_id);
    match setup_steps(inner, &mut undo, silo_id, generation, spec, plan).await {
        Ok(running) => Ok(running),
        Err(err) => {
            if let Err(undo_err) = undo.run(inner).await {
                warn!(silo = silo_id, error = %undo_err, "cleanup after failed start was incomplete; remove_silo retries it");
            }
            Err(err)
        }
    }
}

async fn setup_steps(
    inner: &Inner,
    undo: &mut UndoStack,
    silo_id: &str,
    generation: u64,
    spec: &SiloSpec,
    plan: &SiloPlan,
) -> Result<RunningSilo, RuntimeError> {
    let paths = SiloPaths::new(&inner.silos_dir, silo_id);

    let address = inner.leases.acquire(silo_id)?;
    undo.push(UndoStep::ReleaseLease { address });

    for dir in [
        paths.dir.clone(),
        paths.upper(),
        paths.work(),
        paths.rootfs(),
    ] {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| RuntimeError::CreateDir { path: dir, source })?;
    }
    undo.push(UndoStep::RemoveSiloDir);
    let mut record = SiloRecord {
        silo_id: silo_id.to_string(),
        generation,
        host_veth: names::host_veth_name(silo_id),
        address,
        cgroup_dir: inner.host_cgroup.join(silo_id),
        internet_access: plan.internet_access,
        helper_pid: None,
        init_pid: None,
    };
    // Before the first kernel object: the record names everything the silo may get.
    state::write_json_atomic(&paths.record(), &record)?;

    place_files(&paths, silo_id, spec, plan, address).await?;

    cgroup::create(&record.cgroup_dir).await?;
    undo.push(UndoStep::RemoveCgroup {
        path: record.cgroup_dir.clone(),
    });

    let peer = names::peer_veth_name(silo_id);
    undo.push(UndoStep::DeleteVeth {
        name: record.host_veth.clone(),
    });
    inner
        .netlink
        .create_veth(&record.host_veth, &peer, &inner.cfg.bridge)
        .await?;

    if plan.internet_access {
        iptables::enable_ip_forward().await?;
        undo.push(UndoStep::RemoveMasquerade { address });
        iptables::add_masquerade(address, &inner.cfg.bridge, silo_id).await?;
    }

    let job = HelperJob {
        silo_id: silo_id.to_string(),
        hostname: plan.name.clone(),
        lower_dir: inner.image_dir.clone(),
        upper_dir: paths.upper(),
        work_dir: paths.work(),
        rootfs_dir: paths.rootfs(),
        stdout_log: paths.stdout_log(),
        stderr_log: paths.stderr_log(),
        exit_file: paths.exit(),
        binary: plan.binary.clone(),
        argv: plan.argv.clone(),
        env: plan.env.clone(),
    };
    let launch_error = |source| RuntimeError::Launch {
        silo_id: silo_id.to_string(),
        source,
    };
    let mut helper = Helper::spawn(&inner.cfg.helper_exe, &job, &paths.helper_log())
        .await
        .map_err(launch_error)?;
    record.helper_pid = Some(helper.pid());
    let peer_interface = SiloInterface {
        peer,
        address,
        prefix_len: inner.network.prefix_len(),
        gateway: inner.cfg.gateway(),
    };
    let init = match start_helper(inner, &mut helper, &paths, &mut record, peer_interface).await {
        Ok(init) => init,
        Err(err) => {
            // Closing the helper's stdin and killing it ends PID 1 (it has PDEATHSIG set).
            helper.abort().await;
            return Err(err);
        }
    };

    let removing = Arc::new(AtomicBool::new(false));
    let (exit_tx, exit_rx) = watch::channel(None);
    let (kill_tx, kill_rx) = oneshot::channel();
    tokio::spawn(wait_for_helper(
        helper.into_child(),
        SiloExit {
            silo_id: silo_id.to_string(),
            generation,
            exit_code: 0,
        },
        paths.exit(),
        Arc::clone(&removing),
        exit_tx,
        kill_rx,
        inner.exits.clone(),
    ));
    Ok(RunningSilo {
        record,
        init,
        removing,
        exit_code: exit_rx,
        kill_helper: Some(kill_tx),
    })
}

/// Writes the generated `/etc` files and then the spec's files, so the spec's files win.
async fn place_files(
    paths: &SiloPaths,
    silo_id: &str,
    spec: &SiloSpec,
    plan: &SiloPlan,
    address: Ipv4Addr,
) -> Result<(), RuntimeError> {
    let upper = paths.upper();
    let entries = spec.files.clone();
    let network = spec.network.clone().unwrap_or_default();
    let plan = plan.clone();
    let placed = tokio::task::spawn_blocking(move || -> Result<(), files::FilesError> {
        files::write_silo_file(
            &upper,
            "/etc/hostname",
            format!("{}\n", plan.name).as_bytes(),
            0o644,
        )?;
        let hosts = files::hosts_file(&plan.name, address, &network.hosts)?;
        files::write_silo_file(&upper, "/etc/hosts", hosts.as_bytes(), 0o644)?;
        if let Some(resolv_conf) = &plan.resolv_conf {
            files::write_silo_file(&upper, "/etc/resolv.conf", resolv_conf.as_bytes(), 0o644)?;
        }
        for entry in &entries {
            files::place_entry(&upper, entry)?;
        }
        Ok(())
    })
    .await?;
    placed.map_err(|source| RuntimeError::Files {
        silo_id: silo_id.to_string(),
        source,
    })
}

/// Takes the helper from "spawned" to "program exec'd": cgroup, network, release.
async fn start_helper(
    inner: &Inner,
    helper: &mut Helper,
    paths: &SiloPaths,
    record: &mut SiloRecord,
    interface: SiloInterface,
) -> Result<Option<PidFd>, RuntimeError> {
    let silo_id = record.silo_id.clone();
    let launch_error = |source| RuntimeError::Launch {
        silo_id: silo_id.clone(),
        source,
    };

    let init_pid = helper
        .wait_cloned(CLONE_TIMEOUT)
        .await
        .map_err(launch_error)?;
    // PID 1 blocks on the sync pipe until released, so the pid cannot have been reused yet.
    let init = match PidFd::open(init_pid) {
        Ok(pidfd) => Some(pidfd),
        Err(err) => {
            warn!(silo = %silo_id, init_pid, error = %err, "pidfd_open failed; stopping will signal by pid");
            None
        }
    };
    record.init_pid = Some(init_pid);
    state::write_json_atomic(&paths.record(), record)?;

    cgroup::add_process(&record.cgroup_dir, init_pid).await?;

    inner
        .netlink
        .move_to_netns(&interface.peer, init_pid)
        .await?;
    configure_silo_netns(init_pid, interface).await?;

    helper.release(EXEC_TIMEOUT).await.map_err(launch_error)?;
    Ok(init)
}

/// Waits for the helper to exit, publishes the exit code and reports it as a [`SiloExit`]
/// unless the silo is being removed.
async fn wait_for_helper(
    mut child: Child,
    mut exit: SiloExit,
    exit_file: std::path::PathBuf,
    removing: Arc<AtomicBool>,
    exit_code_tx: watch::Sender<Option<i32>>,
    mut kill_rx: oneshot::Receiver<()>,
    exits: mpsc::Sender<SiloExit>,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        // A dropped sender is no kill request: the branch is disabled when the pattern fails.
        Ok(()) = &mut kill_rx => {
            let _ = child.start_kill();
            child.wait().await
        }
    };
    let exit_code =
        match tokio::task::spawn_blocking(move || state::read_json::<ExitRecord>(&exit_file)).await
        {
            Ok(Ok(record)) => record.exit_code,
            _ => {
                // Without an exit record the helper itself died; report how it ended.
                warn!(silo = %exit.silo_id, ?status, "helper exited without an exit record");
                helper_status_code(status.ok())
            }
        };
    let _ = exit_code_tx.send(Some(exit_code));
    exit.exit_code = exit_code;
    if removing.load(Ordering::SeqCst) {
        return;
    }
    info!(silo = %exit.silo_id, generation = exit.generation, exit_code, "silo program exited");
    let _ = exits.send(exit).await;
}

fn helper_status_code(status: Option<std::process::ExitStatus>) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code,
            (None, Some(signal)) => SIGNAL_EXIT_CODE_BASE + signal,
            (None, None) => -1,
        },
        None => -1,
    }
}
