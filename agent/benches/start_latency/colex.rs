//! The measured side: silo starts through [`Runtime::run_silo`], in a network namespace the
//! benchmark creates, with a state dir and host cgroup dirs that guards remove.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use colex_agent::runtime::{cache_dir_suffix, Runtime, RuntimeConfig, BUSYBOX_IMAGE};
use colex_proto::{Binary, SiloSpec};
use futures::TryStreamExt;
use rtnetlink::LinkUnspec;

use crate::cpu::CpuTicks;

/// The agent binary, whose `silo-helper` mode supervises each silo.
const HELPER_EXE: &str = env!("CARGO_BIN_EXE_colex-silo-helper");

/// Subnet of the benchmark's bridge, inside its own network namespace.
const SUBNET: &str = "10.69.200.0/24";

/// Program of each silo: it runs until the silo is removed.
const PROGRAM: &str = "/bin/sleep";
const PROGRAM_ARGS: &[&str] = &["1000"];

/// Time a removed silo gets between SIGTERM and SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the cleanup guard waits for a killed cgroup to become empty.
const GUARD_KILL_WAIT: Duration = Duration::from_secs(5);

/// An agent's configuration with a fresh state dir, and a run dir on tmpfs as the agent's
/// default /run/colex is on a systemd host. Both are removed on drop.
#[derive(Debug)]
pub struct BenchHost {
    pub cfg: RuntimeConfig,
    _state_dir: tempfile::TempDir,
    _run_dir: tempfile::TempDir,
}

impl BenchHost {
    /// Creates a state dir and a configuration whose host and bridge names carry `unique`, with
    /// silos in user namespaces when `user_namespaces` is true.
    pub fn new(unique: &str, user_namespaces: bool) -> anyhow::Result<BenchHost> {
        let state_dir = tempfile::Builder::new()
            .prefix("cxbench")
            .tempdir()
            .context("failed to create the state dir")?;
        let subnet = SUBNET.parse().context("invalid subnet")?;
        let mut cfg = RuntimeConfig::new(
            format!("cx{unique}"),
            state_dir.path(),
            format!("cxb{unique}"),
            subnet,
            HELPER_EXE,
        );
        let run_dir = tempfile::Builder::new()
            .prefix("cxbench-run")
            .tempdir_in(crate::RUN_DIR_PARENT)
            .context("failed to create the run dir")?;
        cfg.run_dir = run_dir.path().to_path_buf();
        cfg.set_user_namespaces(user_namespaces);
        Ok(BenchHost {
            cfg,
            _state_dir: state_dir,
            _run_dir: run_dir,
        })
    }

    /// Returns the cache dir of the busybox image, the silos' overlayfs lower dir.
    pub fn busybox_image_dir(&self) -> PathBuf {
        let name = format!("{BUSYBOX_IMAGE}{}", cache_dir_suffix(self.cfg.id_map));
        self.cfg.state_dir.join("images").join(name)
    }
}

/// Kills the processes in, and removes, the host's cgroup dirs in every hierarchy on drop.
/// [`Runtime::shutdown`] removes them on success, so this only acts after a failure.
#[derive(Debug)]
pub struct CgroupGuard {
    host_dirs: Vec<PathBuf>,
}

impl CgroupGuard {
    /// Guards `colex-<host_name>` in every mounted cgroup hierarchy, whether it exists yet or
    /// not, so a runtime start that fails halfway is covered too.
    pub fn for_host(host_name: &str) -> anyhow::Result<CgroupGuard> {
        let mountinfo =
            fs::read_to_string("/proc/self/mountinfo").context("failed to read mountinfo")?;
        let host_dirs = mountinfo
            .lines()
            .filter_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                let fs_type = after.split_whitespace().next()?;
                let mount_point = before.split_whitespace().nth(4)?;
                matches!(fs_type, "cgroup" | "cgroup2")
                    .then(|| PathBuf::from(mount_point).join(format!("colex-{host_name}")))
            })
            .collect();
        Ok(CgroupGuard { host_dirs })
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for host_dir in &self.host_dirs {
            let Ok(entries) = fs::read_dir(host_dir) else {
                continue;
            };
            for silo_dir in entries.flatten().map(|entry| entry.path()) {
                if silo_dir.is_dir() {
                    kill_cgroup(&silo_dir);
                    let _ = fs::remove_dir(&silo_dir);
                }
            }
            let _ = fs::remove_dir(host_dir);
        }
    }
}

/// SIGKILLs every process of cgroup `dir` and waits until it is empty.
fn kill_cgroup(dir: &std::path::Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_err() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|line| line.trim().parse().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let deadline = Instant::now() + GUARD_KILL_WAIT;
    while Instant::now() < deadline {
        let empty = fs::read_to_string(dir.join("cgroup.procs"))
            .map(|procs| procs.trim().is_empty())
            .unwrap_or(true);
        if empty {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sets the loopback interface of the calling thread's network namespace up.
pub async fn set_loopback_up() -> anyhow::Result<()> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("failed to open a netlink socket")?;
    let connection = tokio::spawn(connection);
    let link = handle
        .link()
        .get()
        .match_name("lo".to_string())
        .execute()
        .try_next()
        .await
        .context("failed to look up lo")?
        .context("no lo in the new network namespace")?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(link.header.index).up().build())
        .execute()
        .await
        .context("failed to set lo up")?;
    connection.abort();
    Ok(())
}

/// Hands out silo ids: 8 lowercase hex characters, a random half and a counter half.
#[derive(Debug)]
pub struct SiloIds {
    prefix: u16,
    next: u16,
}

impl SiloIds {
    pub fn new(prefix: u16) -> SiloIds {
        SiloIds { prefix, next: 0 }
    }

    fn next_id(&mut self) -> String {
        let id = format!("{:04x}{:04x}", self.prefix, self.next);
        self.next = self.next.wrapping_add(1);
        id
    }
}

/// Time of one silo start and of its removal.
#[derive(Debug, Clone, Copy)]
pub struct StartSample {
    pub start: Duration,
    pub removal: Duration,
    /// CPU ticks of the whole machine during the start.
    pub cpu: CpuTicks,
}

/// Spacing of the starts of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// Each silo is removed right after its start, then the host idles for the pause before
    /// the next start.
    Isolated { pause: Duration },
    /// The silos start one after another and are removed after the block.
    BackToBack,
}

/// Starts `count` silos paced by `pacing` and removes each of them; times each
/// [`Runtime::run_silo`] call, and each removal separately.
pub async fn measure_block(
    runtime: &Runtime,
    ids: &mut SiloIds,
    count: usize,
    pacing: Pacing,
) -> anyhow::Result<Vec<StartSample>> {
    let spec = silo_spec();
    let mut samples = Vec::with_capacity(count);
    let mut running = Vec::with_capacity(count);
    for _ in 0..count {
        if let Pacing::Isolated { pause } = pacing {
            tokio::time::sleep(pause).await;
        }
        let silo_id = ids.next_id();
        let ticks = CpuTicks::now();
        let started = Instant::now();
        let interfaces = runtime.run_silo(&silo_id, 1, &spec).await;
        let start = started.elapsed();
        let cpu = CpuTicks::now().since(ticks);
        interfaces.with_context(|| format!("failed to start silo {silo_id}"))?;
        running.push((silo_id, start, cpu));
        if pacing != Pacing::BackToBack {
            samples.extend(remove_all(runtime, &mut running).await?);
        }
    }
    samples.extend(remove_all(runtime, &mut running).await?);
    Ok(samples)
}

/// Removes the silos of `running`, in start order, and returns their samples.
async fn remove_all(
    runtime: &Runtime,
    running: &mut Vec<(String, Duration, CpuTicks)>,
) -> anyhow::Result<Vec<StartSample>> {
    let mut samples = Vec::with_capacity(running.len());
    for (silo_id, start, cpu) in running.drain(..) {
        let removing = Instant::now();
        runtime
            .remove_silo(&silo_id, KILL_TIMEOUT)
            .await
            .with_context(|| format!("failed to remove silo {silo_id}"))?;
        samples.push(StartSample {
            start,
            removal: removing.elapsed(),
            cpu,
        });
    }
    Ok(samples)
}

fn silo_spec() -> SiloSpec {
    SiloSpec {
        name: "bench".to_string(),
        base: BUSYBOX_IMAGE.to_string(),
        binary: Some(Binary {
            path: PROGRAM.to_string(),
            args: PROGRAM_ARGS.iter().map(|arg| arg.to_string()).collect(),
            env: Vec::new(),
        }),
        ..Default::default()
    }
}
