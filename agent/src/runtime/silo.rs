//! Starting one silo: setup steps with their undo, the helper, and the task that waits for
//! the silo to exit.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use colex_proto::{Interface, SiloSpec};
use nix::unistd::chown;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::failpoint::failpoint;
use super::files;
use super::init::SIGNAL_EXIT_CODE_BASE;
use super::launch::Helper;
use super::names::{self, validate_silo_id};
use super::network::SiloInterface;
use super::pidfd::{self, PidFd};
use super::protocol::HelperJob;
use super::removal::{forget_slot, remove_leftover};
use super::sources::{self, SiloSources};
use super::spec::{self, SiloPlan};
use super::state::{self, ExitRecord, SiloPaths, SiloRecord};
use super::step_clock::{self, mark};
use super::teardown::{UndoStack, UndoStep};
use super::userns::IdMap;
use super::{cgroup, iptables, Inner, Runtime, RuntimeError, SiloExit};

/// How long the helper may take to clone the silo's PID 1.
const CLONE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed start waits for a failure report of PID 1 that may explain it.
const FAILURE_REPORT_WAIT: Duration = Duration::from_millis(200);
/// How long PID 1 may take from release to exec of the program: mounts and pivot_root.
const EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the helper may take to exit once the silo's cgroup is empty.
pub const HELPER_EXIT_WAIT: Duration = Duration::from_secs(5);
/// Variable that carries the metadata service's URL in every silo's environment.
pub const METADATA_ENDPOINT_ENV: &str = "METADATA_ENDPOINT";

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
    let sources = sources::resolve(inner, silo_id, spec, &plan).await?;

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

    let started = step_clock::timed(
        silo_id,
        setup(inner, silo_id, generation, spec, &plan, &sources),
    )
    .await;
    inner.spare.refill(&inner.cfg.helper_exe, inner.cfg.id_map);
    match started {
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
    sources: &SiloSources,
) -> Result<RunningSilo, RuntimeError> {
    // A record without a slot is a leftover of a failed removal: finish that first.
    let paths = inner.silo_dirs.paths(silo_id);
    if paths.exist() {
        remove_leftover(inner, silo_id).await?;
    }

    let mut undo = UndoStack::new(silo_id);
    match setup_steps(inner, &mut undo, silo_id, generation, spec, plan, sources).await {
        Ok(running) => Ok(running),
        Err(err) => {
            if let Err(undo_err) = undo.run(inner).await {
                warn!(silo = silo_id, error = %undo_err, "cleanup after failed start was incomplete; remove_silo retries it");
            }
            Err(err)
        }
    }
}

/// The start of a silo in steps. A spare helper gets the job first: its PID 1 exists already,
/// in its namespaces. Once the record names the silo's kernel objects, the network setup runs
/// while the agent writes the silo's files and makes its cgroups, and then while PID 1 builds
/// its root. PID 1 waits until the agent lets it mount and then run (see `protocol`).
async fn setup_steps(
    inner: &Inner,
    undo: &mut UndoStack,
    silo_id: &str,
    generation: u64,
    spec: &SiloSpec,
    plan: &SiloPlan,
    sources: &SiloSources,
) -> Result<RunningSilo, RuntimeError> {
    let paths = inner.silo_dirs.paths(silo_id);
    let job = helper_job(&paths, silo_id, plan, sources, inner.cfg.id_map, &inner.cfg.metadata_endpoint());
    let helper = inner
        .spare
        .take(&inner.cfg.helper_exe, &job)
        .await
        .map_err(|source| RuntimeError::Launch {
            silo_id: silo_id.to_string(),
            source,
        })?;
    mark("helper_job");

    match record_intent(inner, undo, &paths, silo_id, generation, plan) {
        Ok(record) => {
            let address = record.address;
            // Pushed before the cgroup is made, because a failed create can leave dirs in some
            // hierarchies.
            undo.push(UndoStep::RemoveCgroup {
                path: inner.host_cgroup.join(silo_id),
            });
            let limits = inner.cgroups.limits(plan.cpu_percent, plan.memory_bytes);
            let files_work = place_host_files(inner, &paths, silo_id, spec, plan, address);
            let host_work = prepare_host(inner, undo, silo_id, plan, address);
            launch(inner, &paths, record, helper, NewCgroup::Create(limits), files_work, host_work).await
        }
        Err(err) => {
            // Closing the helper's stdin and killing it ends PID 1 (it has PDEATHSIG set).
            helper.abort().await;
            Err(err)
        }
    }
}

/// Leases the silo's address and writes its dir and record, which names every kernel object the
/// silo may get. Returns the record.
// The runtime's one error type is large; this step runs once per start, so its size costs
// nothing worth boxing for.
#[allow(clippy::result_large_err)]
fn record_intent(
    inner: &Inner,
    undo: &mut UndoStack,
    paths: &SiloPaths,
    silo_id: &str,
    generation: u64,
    plan: &SiloPlan,
) -> Result<SiloRecord, RuntimeError> {
    let address = inner.leases.acquire(silo_id)?;
    undo.push(UndoStep::ReleaseLease { address });
    mark("lease");
    failpoint(inner, "after-lease")?;

    // Plain calls: small local operations cost less than a trip to the blocking pool. Only the
    // dir the record needs: the network setup waits for the record, the layer dirs do not.
    // The undo removes both of the silo's dirs.
    undo.push(UndoStep::RemoveSiloDir);
    create_silo_dir(&paths.run)?;
    let record = SiloRecord {
        silo_id: silo_id.to_string(),
        generation,
        host_veth: names::host_veth_name(silo_id),
        address,
        cgroup_dir: inner.host_cgroup.join(silo_id),
        internet_access: plan.internet_access,
        helper_pid: None,
        init_pid: None,
        helper_start_ticks: None,
        started: false,
        restarts: 0,
        started_at_unix_ms: None,
    };
    // Before the first kernel object: the record names everything the silo may get. PID 1
    // exists already, but it ends with the helper, which ends when the agent does.
    state::write_json_atomic(&paths.record(), &record)?;
    mark("record");
    failpoint(inner, "after-silo-dir")?;

    // The pair is created once PID 1 has its network namespace (`start_helper`). Its undo is
    // pushed here, so a failure at any later step deletes whatever exists of it.
    undo.push(UndoStep::DeleteVeth {
        name: record.host_veth.clone(),
    });
    Ok(record)
}

/// Creates one of a silo's two dirs. Silo root (an unprivileged host uid with user namespaces)
/// looks up `rootfs`, `upper` and `work` in them while PID 1 mounts, so others may search them
/// but not list them.
#[allow(clippy::result_large_err)]
fn create_silo_dir(dir: &Path) -> Result<(), RuntimeError> {
    let create_error = |source| RuntimeError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(create_error)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(SILO_DIR_MODE)).map_err(create_error)
}

/// Makes what PID 1 mounts: the overlay's dirs and the silo's files in the upper dir. The silo
/// dir exists, and its undo removes these with it, so this step pushes no undo of its own.
async fn place_host_files(
    inner: &Inner,
    paths: &SiloPaths,
    silo_id: &str,
    spec: &SiloSpec,
    plan: &SiloPlan,
    address: Ipv4Addr,
) -> Result<(), RuntimeError> {
    create_silo_dir(&paths.dir)?;
    for dir in [paths.upper(), paths.work(), paths.rootfs()] {
        std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::CreateDir { path: dir, source })?;
    }
    place_files(paths, silo_id, spec, plan, address, inner.cfg.gateway(), inner.cfg.id_map).await?;
    mark("files");
    failpoint(inner, "after-files")?;
    Ok(())
}

/// Adds the silo's NAT rule when its plan has internet access. Runs while PID 1 builds its
/// root and the network and the cgroup are set up.
async fn prepare_host(
    inner: &Inner,
    undo: &mut UndoStack,
    silo_id: &str,
    plan: &SiloPlan,
    address: Ipv4Addr,
) -> Result<(), RuntimeError> {
    if plan.internet_access {
        iptables::enable_ip_forward().await?;
        undo.push(UndoStep::RemoveMasquerade { address });
        iptables::add_masquerade(address, &inner.cfg.bridge, silo_id).await?;
        failpoint(inner, "after-masquerade")?;
    }
    Ok(())
}

/// Builds the job of the helper for silo `silo_id`, in a user namespace with `id_map` unless
/// it is `None`. The program's environment gets `METADATA_ENDPOINT=metadata_endpoint` unless
/// the spec sets that variable itself.
pub(super) fn helper_job(
    paths: &SiloPaths,
    silo_id: &str,
    plan: &SiloPlan,
    sources: &SiloSources,
    id_map: Option<IdMap>,
    metadata_endpoint: &str,
) -> HelperJob {
    HelperJob {
        silo_id: silo_id.to_string(),
        hostname: plan.name.clone(),
        lower_dir: sources.lower_dir.clone(),
        upper_dir: paths.upper(),
        work_dir: paths.work(),
        rootfs_dir: paths.rootfs(),
        stdout_log: paths.stdout_log(),
        stderr_log: paths.stderr_log(),
        helper_log: paths.helper_log(),
        exit_file: paths.exit(),
        binary: plan.binary.clone(),
        argv: plan.argv.clone(),
        env: with_metadata_endpoint(&plan.env, metadata_endpoint),
        etc_files: plan
            .generated_etc
            .iter()
            .map(|silo_path| paths.run.join(silo_path.trim_start_matches('/')))
            .collect(),
        binds: sources.binds.clone(),
        id_map,
        raw_sockets: plan.raw_sockets,
    }
}

/// Returns `env` with `METADATA_ENDPOINT=endpoint` appended, unless `env` sets the variable.
fn with_metadata_endpoint(env: &[String], endpoint: &str) -> Vec<String> {
    let prefix = format!("{METADATA_ENDPOINT_ENV}=");
    let mut env = env.to_vec();
    if !env.iter().any(|entry| entry.starts_with(&prefix)) {
        env.push(format!("{prefix}{endpoint}"));
    }
    env
}

/// Takes a helper that has its job to "program exec'd": sets up the silo's network once its
/// PID 1 exists, then starts the task that waits for the helper. `files_work` makes what PID 1
/// mounts, and `host_work` what must exist before the program runs. On failure the helper and
/// its PID 1 are gone; the veth pair and the objects the caller made stay for its undo.
pub(super) async fn launch(
    inner: &Inner,
    paths: &SiloPaths,
    mut record: SiloRecord,
    mut helper: Helper,
    cgroup: NewCgroup,
    files_work: impl Future<Output = Result<(), RuntimeError>>,
    host_work: impl Future<Output = Result<(), RuntimeError>>,
) -> Result<RunningSilo, RuntimeError> {
    let silo_id = record.silo_id.clone();
    record.helper_pid = Some(helper.pid());
    record.helper_start_ticks = match pidfd::start_ticks(helper.pid()) {
        Ok(ticks) => Some(ticks),
        Err(err) => {
            warn!(silo = %silo_id, helper_pid = helper.pid(), error = %err, "cannot read the helper's start time; a restarted agent will not adopt this silo");
            None
        }
    };
    // Created inside the silo's new namespace, which has no link of that name yet.
    let peer_interface = SiloInterface {
        peer: names::SILO_IFNAME.to_string(),
        address: record.address,
        prefix_len: inner.network.prefix_len(),
        gateway: inner.cfg.gateway(),
    };
    let started = match start_helper(inner, paths, &mut helper, &mut record, peer_interface, cgroup, files_work, host_work).await {
        Ok(init) => failpoint(inner, "after-started")
            .map(|()| init)
            .map_err(RuntimeError::from),
        Err(err) => Err(err),
    };
    let init = match started {
        Ok(init) => init,
        Err(err) => {
            // Closing the helper's stdin and killing it ends PID 1 (it has PDEATHSIG set).
            helper.abort().await;
            return Err(err);
        }
    };

    let generation = record.generation;
    let removing = Arc::new(AtomicBool::new(false));
    let (exit_tx, exit_rx) = watch::channel(None);
    let (kill_tx, kill_rx) = oneshot::channel();
    tokio::spawn(wait_for_helper(
        HelperProcess::Child(helper.into_child()),
        kill_rx,
        ExitWatch {
            exit: exit_template(&silo_id, generation),
            exit_file: paths.exit(),
            removing: Arc::clone(&removing),
            exit_code_tx: exit_tx,
            exits: inner.exits.clone(),
            silo_cgroup: inner.cgroups.silo(&silo_id),
        },
    ));
    Ok(RunningSilo {
        record,
        init,
        removing,
        exit_code: exit_rx,
        kill_helper: Some(kill_tx),
    })
}

/// State of the silo's cgroup when [`launch`] starts, which decides whether it is created
/// before PID 1 moves into it.
#[derive(Debug, Clone, Copy)]
pub(super) enum NewCgroup {
    /// A new silo, whose cgroup is created with these limits.
    Create(cgroup::Limits),
    /// A restart in place, whose cgroup exists with its limits.
    Exists,
}

/// Mode of a silo's dir: search for others, so silo root can reach its `rootfs` mount point.
const SILO_DIR_MODE: u32 = 0o711;

/// Returns the [`SiloExit`] of a silo, with an exit code the waiting task fills in.
pub(super) fn exit_template(silo_id: &str, generation: u64) -> SiloExit {
    SiloExit {
        silo_id: silo_id.to_string(),
        generation,
        exit_code: 0,
        reason: None,
    }
}


/// Mode of the generated `/etc` files.
const GENERATED_FILE_MODE: u32 = 0o644;

/// Total size of the spec's file contents up to which the files are written on the calling
/// thread. While PID 1's clone keeps the other core busy, a trip to tokio's blocking pool costs
/// 0.5 to 0.8 ms on the reference machine. Writing a few KiB costs far less.
const INLINE_FILES_MAX_BYTES: usize = 64 * 1024;

/// Writes the generated `/etc` files to the run dir and the spec's files to the upper dir. With
/// `id_map`, the upper and work dirs and every placed file belong to the silo root's host ids,
/// so the silo can write its root and overlayfs can use its work dir. `resolver` is the host's
/// DNS resolver on the bridge, the silo's nameserver unless the spec sets its own.
async fn place_files(
    paths: &SiloPaths,
    silo_id: &str,
    spec: &SiloSpec,
    plan: &SiloPlan,
    address: Ipv4Addr,
    resolver: Ipv4Addr,
    id_map: Option<IdMap>,
) -> Result<(), RuntimeError> {
    let upper = paths.upper();
    let work = paths.work();
    let run = paths.run.clone();
    let entries = spec.files.clone();
    let network = spec.network.clone().unwrap_or_default();
    let plan = plan.clone();
    let owner = id_map.map(|map| map.root_owner());
    let write = move || -> Result<(), files::FilesError> {
        if let Some(owner) = owner {
            for dir in [&upper, &work] {
                chown(dir, Some(owner.nix_uid()), Some(owner.nix_gid())).map_err(|source| {
                    files::FilesError::Chown {
                        path: dir.display().to_string(),
                        uid: owner.uid,
                        gid: owner.gid,
                        source,
                    }
                })?;
            }
        }
        let hostname = format!("{}\n", plan.name);
        let hosts = files::hosts_file(&plan.name, address, &network.hosts)?;
        let resolv_conf = files::silo_resolv_conf(plan.resolv_conf.as_deref(), resolver);
        let generated: Vec<(&str, &[u8])> = [
            ("/etc/hostname", hostname.as_bytes()),
            ("/etc/hosts", hosts.as_bytes()),
            ("/etc/resolv.conf", resolv_conf.as_bytes()),
        ]
        .into_iter()
        .filter(|(path, _)| plan.generated_etc.contains(path))
        .collect();
        // In the run dir, a tmpfs by default. PID 1 bind-mounts them, so the writable layer
        // gets no inode for them.
        // NOTE: the silo may write these files, and a silo without a memory limit can fill the
        // run dir's file system through them.
        files::write_silo_etc_files(&run, &generated, GENERATED_FILE_MODE, owner)?;
        for entry in &entries {
            files::place_entry(&upper, entry, owner)?;
        }
        Ok(())
    };
    let content_bytes: usize = spec.files.iter().map(|entry| entry.content.len()).sum();
    let placed = if content_bytes <= INLINE_FILES_MAX_BYTES {
        write()
    } else {
        tokio::task::spawn_blocking(write).await?
    };
    placed.map_err(|source| RuntimeError::Files {
        silo_id: silo_id.to_string(),
        source,
    })
}

/// Takes the helper from "job sent" to "program exec'd": the files PID 1 mounts
/// (`files_work`), the mount, the rest of the host work (`host_work`), the cgroup, the
/// network, the release, and the record update that marks the silo started.
#[allow(clippy::too_many_arguments)]
async fn start_helper(
    inner: &Inner,
    paths: &SiloPaths,
    helper: &mut Helper,
    record: &mut SiloRecord,
    interface: SiloInterface,
    cgroup: NewCgroup,
    files_work: impl Future<Output = Result<(), RuntimeError>>,
    host_work: impl Future<Output = Result<(), RuntimeError>>,
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
    // Recorded with the started flag once PID 1 is released. Until the agent sends "go", the
    // helper kills PID 1 when the agent's end of its stdin closes, so a crash before that
    // leaves no process that the record would need to name.
    record.init_pid = Some(init_pid);
    mark("cloned");
    failpoint(inner, "after-clone")?;

    // Three independent lines of work run at the same time. The cgroup and the network need
    // only PID 1 and run as tasks of their own, because this task writes the files with plain
    // calls that do not yield. PID 1 builds its root as soon as the files exist. The move into
    // the cgroups can wait for an RCU grace period (several ms after an idle time), which the
    // rest overlaps.
    // NOTE: if the caller drops this future, the two tasks still run to their end, and no
    // undo follows them.
    let silo_cgroup = inner.cgroups.silo(&record.silo_id);
    let cgroup_task = step_clock::spawn_marked(async move {
        if let NewCgroup::Create(limits) = cgroup {
            silo_cgroup.create(&limits).await?;
            mark("cgroup_dirs");
        }
        silo_cgroup.add_process(init_pid).await?;
        mark("cgroup_joined");
        Ok::<(), cgroup::CgroupError>(())
    });
    let host = async {
        files_work.await?;
        helper.prepare().await.map_err(launch_error)?;
        mark("mount_sent");
        host_work.await
    };
    let cgroup = async {
        let (joined, marks) = cgroup_task.await?;
        step_clock::merge(marks);
        joined?;
        failpoint(inner, "after-cgroup")?;
        Ok::<(), RuntimeError>(())
    };
    let netlink = inner.netlink.clone();
    let host_veth = record.host_veth.clone();
    let bridge = inner.cfg.bridge.clone();
    let network_task = step_clock::spawn_marked(async move {
        let result = netlink
            .setup_silo_network(&host_veth, &bridge, init_pid, interface)
            .await;
        mark("network_ready");
        result
    });
    let network = async {
        match network_task.await {
            Ok((result, marks)) => {
                step_clock::merge(marks);
                result.map_err(RuntimeError::from)
            }
            Err(err) => Err(RuntimeError::Join(err)),
        }
    };
    // All run to their end before any error is returned, so the caller's undo never races a
    // step that is still making an object.
    let (host, network, cgroup) = tokio::join!(host, network, cgroup);
    if let Err(err) = host.and(network).and(cgroup) {
        // A PID 1 that failed has sent its report before it exited.
        return match helper.reported_failure(FAILURE_REPORT_WAIT).await {
            Some(reported) => Err(launch_error(reported)),
            None => Err(err),
        };
    }
    failpoint(inner, "after-network")?;

    if let Err(err) = helper.release().await {
        // PID 1 checks the program before "go" and exits on failure, which can close the pipe
        // before "go" is written. Its report names the reason.
        return match helper.reported_failure(FAILURE_REPORT_WAIT).await {
            Some(reported) => Err(launch_error(reported)),
            None => Err(launch_error(err)),
        };
    }
    // Written while PID 1 forks and execs the program. Should the exec fail, the caller's undo
    // removes the silo dir with this record. Should the agent die first, the next agent adopts
    // the helper, which records the program's exit either way.
    record.started = true;
    record.started_at_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|since| u64::try_from(since.as_millis()).ok());
    state::rewrite_json_in_place(&paths.record(), record)?;
    mark("record_updated");
    let init_steps = helper.wait_started(EXEC_TIMEOUT).await.map_err(launch_error)?;
    step_clock::mark_at("init_prepared", init_steps.prepared_ns);
    step_clock::mark_at("go_read", init_steps.go_read_ns);
    step_clock::mark_at("forked", init_steps.forked_ns);
    step_clock::mark_at("exec_seen", init_steps.exec_seen_ns);
    mark("exec_reported");
    failpoint(inner, "after-release")?;
    Ok(init)
}

/// The helper process of a running silo: a child of this agent, or the helper of an earlier
/// agent that this one adopted.
#[derive(Debug)]
pub(super) enum HelperProcess {
    Child(Child),
    Adopted(PidFd),
}

/// Destination of the silo's exit, published by the task that waits for its helper.
#[derive(Debug)]
pub(super) struct ExitWatch {
    /// The exit to report, with the exit code still to be filled in.
    pub exit: SiloExit,
    /// The exit record the helper writes.
    pub exit_file: std::path::PathBuf,
    /// Set while the silo is removed, whose exit is then not reported.
    pub removing: Arc<AtomicBool>,
    pub exit_code_tx: watch::Sender<Option<i32>>,
    pub exits: mpsc::Sender<SiloExit>,
    pub silo_cgroup: cgroup::SiloCgroup,
}

/// Waits for the helper to exit, or SIGKILLs it when `kill_rx` fires, publishes the exit code
/// and reports it as a [`SiloExit`] unless the silo is being removed.
pub(super) async fn wait_for_helper(
    helper: HelperProcess,
    mut kill_rx: oneshot::Receiver<()>,
    watch: ExitWatch,
) {
    let ExitWatch {
        mut exit,
        exit_file,
        removing,
        exit_code_tx,
        exits,
        silo_cgroup,
    } = watch;
    // NOTE: read once the program runs, so an OOM kill in its first moments can be missed.
    // The count must be read at all because a restart in place reuses the cgroup.
    let oom_kills_before = silo_cgroup.oom_kills().await.ok().flatten().unwrap_or(0);
    let status = match helper {
        HelperProcess::Child(mut child) => tokio::select! {
            status = child.wait() => status.ok(),
            // A dropped sender is no kill request: the branch is disabled when the pattern fails.
            Ok(()) = &mut kill_rx => {
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        },
        HelperProcess::Adopted(pidfd) => {
            super::adopt::wait_for_adopted(&exit.silo_id, pidfd, kill_rx).await;
            None
        }
    };
    let exit_code =
        match tokio::task::spawn_blocking(move || state::read_json::<ExitRecord>(&exit_file)).await
        {
            Ok(Ok(record)) => record.exit_code,
            _ => {
                // Without an exit record the helper itself died, and PID 1 with it (PDEATHSIG).
                warn!(silo = %exit.silo_id, ?status, "helper exited without an exit record");
                match status {
                    Some(status) => helper_status_code(Some(status)),
                    None => SIGNAL_EXIT_CODE_BASE + libc::SIGKILL,
                }
            }
        };
    let _ = exit_code_tx.send(Some(exit_code));
    exit.exit_code = exit_code;
    if removing.load(Ordering::SeqCst) {
        return;
    }
    exit.reason = silo_cgroup.exit_reason(exit_code, oom_kills_before).await;
    info!(silo = %exit.silo_id, generation = exit.generation, exit_code, reason = ?exit.reason, "silo program exited");
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

#[cfg(test)]
mod metadata_env_tests {
    use super::*;

    #[test]
    fn endpoint_is_appended() {
        let env = with_metadata_endpoint(&["A=1".to_string()], "http://10.69.1.1:17832");
        assert_eq!(env, ["A=1", "METADATA_ENDPOINT=http://10.69.1.1:17832"]);
    }

    #[test]
    fn spec_endpoint_is_kept() {
        let spec_env = ["METADATA_ENDPOINT=http://example.test".to_string()];
        let env = with_metadata_endpoint(&spec_env, "http://10.69.1.1:17832");
        assert_eq!(env, spec_env);
    }
}
