//! The reference measurement: `crun run` of the same busybox root file system.
//!
//! crun 1.8 rejects a cgroup v1/v2 hybrid layout ("cgroups in hybrid mode not
//! supported"). So each block of runs happens in a child process of this benchmark that
//! `unshare -m --propagation private` starts in a private mount namespace. There the child
//! replaces the cgroup2 mount at [`HYBRID_CGROUP2_MOUNT`] with an empty tmpfs, so crun finds
//! cgroup v1 only. crun then creates and removes the container's cgroup in every v1 hierarchy.
//! It also creates a dir in the tmpfs, which it does not remove, and that dir vanishes with the
//! namespace. The mounts of the benchmark's own mount namespace stay untouched.
//!
//! The child times each run and prints one line per run: the nanoseconds from spawning
//! `crun run` to its exit. Before each run it can sleep for a given pause, untimed.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::cpu::CpuTicks;

/// First argument that makes the benchmark binary run a block of crun runs.
pub const LOOP_ARG: &str = "--crun-loop";

/// Mount point of cgroup2 in the hybrid layout, which crun 1.8 rejects.
const HYBRID_CGROUP2_MOUNT: &str = "/sys/fs/cgroup/unified";

/// Mount point of the cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Program of the container: it exits at once, so a run is create, start, exit and delete.
const PROGRAM: &str = "/bin/true";

/// The namespaces a silo gets; the container gets the same ones.
const NAMESPACES: &[&str] = &["pid", "mount", "uts", "ipc", "network"];

/// A user namespace for the container: root inside is `host_id` outside, and `size` ids are
/// mapped, as colex maps a silo's ids.
#[derive(Debug, Clone, Copy)]
pub struct UserMapping {
    pub host_id: u32,
    pub size: u32,
}

/// How to install crun when it is missing.
pub const INSTALL_HINT: &str = "apt-get install crun";

/// The programs the reference measurement runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub crun: PathBuf,
    unshare: PathBuf,
}

/// Finds `crun` and `unshare` in `PATH`. The error names the missing one.
pub fn find_tools() -> Result<Tools, String> {
    let crun = find_in_path("crun")
        .ok_or_else(|| format!("crun not found in PATH; install it with `{INSTALL_HINT}`"))?;
    let unshare = find_in_path("unshare")
        .ok_or_else(|| "unshare not found in PATH; install util-linux".to_string())?;
    Ok(Tools { crun, unshare })
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Returns crun's version line, such as "crun version 1.8.1".
pub fn version(tools: &Tools) -> String {
    Command::new(&tools.crun)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| {
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "crun (version unknown)".to_string())
}

/// An OCI bundle with a copy of the root file system, and crun's state dir on tmpfs. Both are
/// removed on drop.
#[derive(Debug)]
pub struct CrunBench {
    tools: Tools,
    dir: tempfile::TempDir,
    /// crun's `--root`, on the same kind of file system as colex's run dir.
    state_dir: tempfile::TempDir,
    /// Container ids are `<id_prefix>-<n>`; crun names the container's cgroups after them.
    id_prefix: String,
    next_index: usize,
}

impl CrunBench {
    /// Copies `rootfs` into a new bundle and writes its config.json: crun's default spec with
    /// [`PROGRAM`] as the process, no terminal, a writable root, and [`NAMESPACES`], plus a user
    /// namespace when `user` is given (the copy is then owned by the mapped root).
    pub fn prepare(
        tools: Tools,
        rootfs: &Path,
        id_prefix: String,
        user: Option<UserMapping>,
    ) -> anyhow::Result<CrunBench> {
        let dir = tempfile::Builder::new()
            .prefix("cxcrun")
            .tempdir()
            .context("failed to create the crun bundle dir")?;
        let state_dir = tempfile::Builder::new()
            .prefix("cxcrun-state")
            .tempdir_in(crate::RUN_DIR_PARENT)
            .context("failed to create crun's state dir")?;
        let bench = CrunBench {
            tools,
            dir,
            state_dir,
            id_prefix,
            next_index: 0,
        };

        // A copy, because crun creates the mount points of its default mounts in the root.
        let copy = Command::new("cp")
            .arg("-a")
            .arg(rootfs)
            .arg(bench.bundle().join("rootfs"))
            .status()
            .context("failed to run cp")?;
        ensure!(copy.success(), "cp -a {} failed: {copy}", rootfs.display());
        if let Some(user) = user {
            // The busybox image belongs to root, so every entry moves to the mapped root.
            let owner = format!("{0}:{0}", user.host_id);
            let chown = Command::new("chown")
                .args(["-R", "-h", &owner])
                .arg(bench.bundle().join("rootfs"))
                .status()
                .context("failed to run chown")?;
            ensure!(chown.success(), "chown -R {owner} of the bundle root failed: {chown}");
        }

        let spec = Command::new(&bench.tools.crun)
            .arg("spec")
            .arg("--bundle")
            .arg(bench.bundle())
            .status()
            .context("failed to run crun spec")?;
        ensure!(spec.success(), "crun spec failed: {spec}");
        let config_path = bench.bundle().join("config.json");
        let text = fs::read_to_string(&config_path)
            .with_context(|| format!("failed to read {}", config_path.display()))?;
        let mut config: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("invalid JSON in {}", config_path.display()))?;
        edit_config(&mut config, user)?;
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
            .with_context(|| format!("failed to write {}", config_path.display()))?;
        Ok(bench)
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn state_dir(&self) -> PathBuf {
        self.state_dir.path().to_path_buf()
    }

    /// Runs the container `count` times in one child process in a private mount namespace,
    /// sleeping for `pause` before each run, and returns the time of each run.
    pub fn run_block(
        &mut self,
        count: usize,
        pause: Duration,
    ) -> anyhow::Result<Vec<(Duration, CpuTicks)>> {
        let first = self.next_index;
        self.next_index += count;
        let exe = std::env::current_exe().context("failed to find the benchmark executable")?;
        let mut child = Command::new(&self.tools.unshare)
            .args(["--mount", "--propagation", "private"])
            .arg(exe)
            .arg(LOOP_ARG)
            .arg(&self.tools.crun)
            .arg(self.bundle())
            .arg(self.state_dir())
            .arg(&self.id_prefix)
            .arg(first.to_string())
            .arg(count.to_string())
            .arg(pause.as_micros().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("failed to run unshare")?;
        let mut samples = Vec::with_capacity(count);
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines() {
                let line = line.context("failed to read the crun loop's output")?;
                let numbers: Vec<u64> = line
                    .split_whitespace()
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("invalid line {line:?} from the crun loop"))?;
                let [nanos, busy, total] = numbers[..] else {
                    bail!("invalid line {line:?} from the crun loop: expected 3 numbers");
                };
                samples.push((Duration::from_nanos(nanos), CpuTicks { busy, total }));
            }
        }
        let status = child.wait().context("failed to wait for the crun loop")?;
        ensure!(status.success(), "the crun loop failed: {status}");
        ensure!(
            samples.len() == count,
            "the crun loop reported {} of {count} runs",
            samples.len()
        );
        Ok(samples)
    }

    /// Returns the cgroup dirs of this benchmark's containers that are left in the cgroup
    /// hierarchies, after removing them. A complete run leaves none.
    pub fn remove_leftover_cgroups(&self) -> Vec<PathBuf> {
        let mut leftovers = Vec::new();
        let Ok(hierarchies) = fs::read_dir(CGROUP_ROOT) else {
            return leftovers;
        };
        for hierarchy in hierarchies.flatten() {
            let Ok(entries) = fs::read_dir(hierarchy.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let ours = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|name| name.starts_with(&format!("{}-", self.id_prefix)));
                if ours {
                    let _ = fs::remove_dir(entry.path());
                    leftovers.push(entry.path());
                }
            }
        }
        leftovers
    }
}

/// Sets the fields of crun's default spec that differ for this benchmark.
fn edit_config(config: &mut serde_json::Value, user: Option<UserMapping>) -> anyhow::Result<()> {
    let Some(process) = config.get_mut("process").and_then(|p| p.as_object_mut()) else {
        bail!("crun's spec has no process object");
    };
    process.insert("terminal".into(), false.into());
    process.insert("args".into(), serde_json::json!([PROGRAM]));

    let Some(root) = config.get_mut("root").and_then(|r| r.as_object_mut()) else {
        bail!("crun's spec has no root object");
    };
    root.insert("path".into(), "rootfs".into());
    root.insert("readonly".into(), false.into());

    let Some(linux) = config.get_mut("linux").and_then(|l| l.as_object_mut()) else {
        bail!("crun's spec has no linux object");
    };
    let mut namespaces: Vec<_> = NAMESPACES
        .iter()
        .map(|kind| serde_json::json!({ "type": kind }))
        .collect();
    if let Some(user) = user {
        namespaces.push(serde_json::json!({ "type": "user" }));
        let mapping = serde_json::json!([
            { "containerID": 0, "hostID": user.host_id, "size": user.size }
        ]);
        linux.insert("uidMappings".into(), mapping.clone());
        linux.insert("gidMappings".into(), mapping);
    }
    linux.insert("namespaces".into(), namespaces.into());
    Ok(())
}

/// Runs a block of crun runs: the child side of [`CrunBench::run_block`], started by
/// `unshare` with [`LOOP_ARG`] and the block's parameters.
pub fn loop_main(args: &[String]) -> ExitCode {
    match run_loop(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("start_latency crun loop: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_loop(args: &[String]) -> anyhow::Result<()> {
    let [crun, bundle, state_dir, id_prefix, first, count, pause_micros] = args else {
        bail!("expected 7 arguments after {LOOP_ARG}, got {args:?}");
    };
    let first: usize = first.parse().context("invalid first index")?;
    let count: usize = count.parse().context("invalid run count")?;
    let pause = Duration::from_micros(pause_micros.parse().context("invalid pause")?);

    ensure_private_mount_namespace()?;
    if is_mount_point(HYBRID_CGROUP2_MOUNT)? {
        umount2(HYBRID_CGROUP2_MOUNT, MntFlags::empty())
            .with_context(|| format!("failed to unmount {HYBRID_CGROUP2_MOUNT}"))?;
        mount(
            Some("cxcrun"),
            HYBRID_CGROUP2_MOUNT,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=755,size=1m"),
        )
        .with_context(|| format!("failed to mount a tmpfs on {HYBRID_CGROUP2_MOUNT}"))?;
    }

    let mut stdout = std::io::stdout().lock();
    for index in first..first + count {
        let id = format!("{id_prefix}-{index}");
        std::thread::sleep(pause);
        let ticks = CpuTicks::now();
        let started = Instant::now();
        let status = Command::new(crun)
            .args(["--root", state_dir, "run", "--bundle", bundle, &id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        let elapsed = started.elapsed();
        let cpu = CpuTicks::now().since(ticks);
        let failure = match status {
            Ok(status) if status.success() => None,
            Ok(status) => Some(format!("crun run {id} failed: {status}")),
            Err(err) => Some(format!("failed to run {crun}: {err}")),
        };
        if let Some(failure) = failure {
            // A failed run can leave the container; its cgroups are named after its id.
            let _ = Command::new(crun)
                .args(["--root", state_dir, "delete", "--force", &id])
                .status();
            bail!(failure);
        }
        writeln!(stdout, "{} {} {}", elapsed.as_nanos(), cpu.busy, cpu.total)
            .context("failed to report a run")?;
    }
    Ok(())
}

/// Fails unless this process's mount namespace differs from its parent's, so that the unmount
/// can never touch the benchmark's own mounts.
fn ensure_private_mount_namespace() -> anyhow::Result<()> {
    let parent = nix::unistd::getppid();
    let own = fs::read_link("/proc/self/ns/mnt").context("failed to read own mount namespace")?;
    let parents = fs::read_link(format!("/proc/{parent}/ns/mnt"))
        .context("failed to read the parent's mount namespace")?;
    ensure!(
        own != parents,
        "the crun loop runs in its parent's mount namespace; it must be started by unshare -m"
    );
    Ok(())
}

/// Returns whether `path` is a mount point in this mount namespace.
fn is_mount_point(path: &str) -> anyhow::Result<bool> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("failed to read mountinfo")?;
    Ok(mountinfo
        .lines()
        .any(|line| line.split_whitespace().nth(4) == Some(path)))
}
