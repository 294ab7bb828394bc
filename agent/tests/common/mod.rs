//! Harness shared by the root integration tests: root checks, a test host whose guard kills and
//! removes its cgroups in every hierarchy, network namespaces, tokio runtimes, commands and
//! silo spec builders.
//!
//! Each test binary compiles this module on its own and uses only part of it, so unused items
//! are expected there.
#![allow(dead_code)]

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use colex_agent::runtime::{RuntimeConfig, SiloExit, STDOUT_LOG_FILE};
use colex_proto::{Binary, Bind, Network, SiloSpec};
use tokio::sync::mpsc;

pub const HELPER_EXE: &str = env!("CARGO_BIN_EXE_colex-silo-helper");
pub const BUSYBOX: &str = "/bin/busybox";
pub const IPTABLES_SAVE: &str = "/usr/sbin/iptables-save";
/// Root of the cgroup mounts: cgroup2 itself on pure v2 hosts, a tmpfs with one mount per
/// hierarchy on v1 and hybrid hosts.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guard waits for a failed test's cgroup to empty and to be removable.
const CLEANUP_WAIT: Duration = Duration::from_secs(5);

/// Returns whether the test can run. Panics without root when CI=true.
pub fn has_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root, and CI=true does not allow skipping it");
    }
    eprintln!("skipped {test}: needs root");
    false
}

pub fn random_hex() -> String {
    let value = RandomState::new().hash_one((std::process::id(), Instant::now()));
    format!("{:08x}", value as u32)
}

/// A test agent's configuration and work dir. Dropping it kills and removes its cgroups in
/// every hierarchy, then the work dir.
pub struct TestHost {
    pub cfg: RuntimeConfig,
    /// Temporary dir that contains the state dir and any files the test makes (tarballs, bind
    /// sources).
    work: tempfile::TempDir,
}

impl TestHost {
    /// Creates a host named `<host_prefix><random>` on `subnet`. Its state dir is a new temporary
    /// dir whose name starts with `work_prefix`.
    pub fn new(work_prefix: &str, host_prefix: &str, subnet: &str) -> TestHost {
        let work = make_work_dir(work_prefix);
        let state_dir = work.path().to_path_buf();
        TestHost::with_state_dir(work, state_dir, host_prefix, subnet)
    }

    /// As [`TestHost::new`], but the state dir is `state` inside the work dir and does not
    /// exist yet, so that the test can put other files beside it.
    pub fn with_state_subdir(work_prefix: &str, host_prefix: &str, subnet: &str) -> TestHost {
        let work = make_work_dir(work_prefix);
        let state_dir = work.path().join("state");
        TestHost::with_state_dir(work, state_dir, host_prefix, subnet)
    }

    fn with_state_dir(
        work: tempfile::TempDir,
        state_dir: PathBuf,
        host_prefix: &str,
        subnet: &str,
    ) -> TestHost {
        let cfg = RuntimeConfig::new(
            format!("{host_prefix}{}", random_hex()),
            state_dir,
            format!("cxb{}", random_hex()),
            subnet.parse().expect("valid subnet literal"),
            HELPER_EXE,
        );
        TestHost { cfg, work }
    }

    /// Returns `name` inside the work dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    pub fn images_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("images")
    }

    /// Returns the silo's dir in the state dir: logs and writable layer.
    pub fn silo_dir(&self, silo_id: &str) -> PathBuf {
        self.cfg.state_dir.join("silos").join(silo_id)
    }

    /// Returns the path of the silo's record in the run dir.
    pub fn record_path(&self, silo_id: &str) -> PathBuf {
        self.cfg.run_dir.join("silos").join(silo_id).join("silo.json")
    }

    /// Returns true when neither of the silo's dirs (state dir and run dir) exists.
    pub fn silo_dirs_gone(&self, silo_id: &str) -> bool {
        !self.silo_dir(silo_id).exists() && !self.cfg.run_dir.join("silos").join(silo_id).exists()
    }

    /// Returns the sorted names of the lease files.
    pub fn leases(&self) -> Vec<String> {
        list_names(&self.leases_dir())
    }

    pub fn leases_dir(&self) -> PathBuf {
        self.cfg.run_dir.join("leases")
    }

    /// Returns the host's cgroup dir in the cgroup2 hierarchy.
    pub fn cgroup_dir(&self) -> PathBuf {
        cgroup2_mount().join(format!("colex-{}", self.cfg.host_name))
    }

    /// Returns the host's cgroup dir in every mounted hierarchy that has one.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let name = format!("colex-{}", self.cfg.host_name);
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(CGROUP_ROOT)
            .into_iter()
            .flatten()
            .flatten()
            .map(|hierarchy| hierarchy.path().join(&name))
            .collect();
        // On a pure v2 host the hierarchy is the mount itself.
        dirs.push(Path::new(CGROUP_ROOT).join(&name));
        dirs.into_iter().filter(|dir| dir.is_dir()).collect()
    }

    /// Returns the existing cgroup dirs of `silo_id`, in any hierarchy.
    pub fn silo_dirs(&self, silo_id: &str) -> Vec<PathBuf> {
        self.cgroup_dirs()
            .into_iter()
            .map(|dir| dir.join(silo_id))
            .filter(|dir| dir.is_dir())
            .collect()
    }
}

fn make_work_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create work dir")
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Kill whatever a failed test left in every hierarchy first, then remove the silo dirs
        // and the host dir: a v1 dir can only go once its processes are dead.
        for host_dir in self.cgroup_dirs() {
            for silo in subdirs(&host_dir) {
                kill_cgroup(&silo);
            }
        }
        for host_dir in self.cgroup_dirs() {
            for silo in subdirs(&host_dir) {
                wait_for(CLEANUP_WAIT, || {
                    std::fs::remove_dir(&silo).is_ok() || !silo.exists()
                });
            }
            let _ = std::fs::remove_dir(&host_dir);
        }
    }
}

/// Kills every process of a cgroup: `cgroup.kill` on v2, then SIGKILL to each listed pid (the
/// only way on v1) until `cgroup.procs` is empty or [`CLEANUP_WAIT`] has passed.
pub fn kill_cgroup(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    wait_for(CLEANUP_WAIT, || {
        let pids = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        let mut empty = true;
        for pid in pids
            .lines()
            .filter_map(|line| line.trim().parse::<i32>().ok())
        {
            empty = false;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        empty
    });
}

/// Returns the mount point of the cgroup2 hierarchy.
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup2 mount")
}

pub fn cgroup_populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|events| events.contains("populated 1"))
}

pub fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect()
}

/// Returns the sorted names of the entries of `dir`, none when it cannot be read.
pub fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Polls `condition` every 20 ms until it is true or `timeout` has passed, and returns its last
/// value.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// Runs `test` on a thread in a new network namespace with loopback up. Processes the test
/// spawns inherit the namespace.
pub fn in_netns(test: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare network namespace");
        run(BUSYBOX, &["ip", "link", "set", "lo", "up"]);
        test();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `future` on a new multi-threaded tokio runtime whose threads start in the calling
/// thread's network namespace. Dropping the runtime at the end cancels its tasks, as an agent
/// crash would.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime")
        .block_on(future)
}

/// Runs `program` and returns its stdout. Panics with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .expect("spawn command");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn link_exists(name: &str) -> bool {
    Command::new(BUSYBOX)
        .args(["ip", "link", "show", name])
        .output()
        .expect("spawn ip")
        .status
        .success()
}

/// Returns a busybox silo spec running `path` with `args`.
pub fn command_spec(name: &str, path: &str, args: &[&str]) -> SiloSpec {
    SiloSpec {
        name: name.to_string(),
        base: "busybox".to_string(),
        binary: Some(Binary {
            path: path.to_string(),
            args: args.iter().map(|arg| arg.to_string()).collect(),
            env: Vec::new(),
        }),
        ..Default::default()
    }
}

/// Returns a silo spec on image `base` running `/bin/sh -c script`.
pub fn shell_spec(name: &str, base: &str, script: &str) -> SiloSpec {
    SiloSpec {
        name: name.to_string(),
        base: base.to_string(),
        binary: Some(Binary {
            path: "/bin/sh".to_string(),
            args: vec!["-c".to_string(), script.to_string()],
            env: Vec::new(),
        }),
        ..Default::default()
    }
}

/// Returns a silo spec running `/bin/sleep 1000`, with NAT when `internet_access` is set.
pub fn sleeper(name: &str, internet_access: bool) -> SiloSpec {
    SiloSpec {
        name: name.to_string(),
        base: "busybox".to_string(),
        binary: Some(Binary {
            path: "/bin/sleep".to_string(),
            args: vec!["1000".to_string()],
            env: Vec::new(),
        }),
        network: Some(Network {
            internet_access,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Waits up to `timeout` for the exit of `silo_id`, skipping the exits of other silos.
pub async fn wait_exit(
    exits: &mut mpsc::Receiver<SiloExit>,
    silo_id: &str,
    timeout: Duration,
) -> SiloExit {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let exit = tokio::time::timeout_at(deadline, exits.recv())
            .await
            .unwrap_or_else(|_| panic!("no exit of silo {silo_id} within {timeout:?}"))
            .expect("exit channel open");
        if exit.silo_id == silo_id {
            return exit;
        }
    }
}

/// Adds a `bind` block to `spec` for each (bind id, path in the silo) pair.
pub fn add_binds(spec: &mut SiloSpec, binds: &[(&str, &str)]) {
    for (id, path) in binds {
        spec.binds.push(Bind {
            id: (*id).to_string(),
            path: (*path).to_string(),
        });
    }
}

/// How long [`wait_for_stdout`] and [`program_pid`] wait for the program's output or process.
pub const OUTPUT_WAIT: Duration = Duration::from_secs(20);

/// Returns the stdout log of `silo_id`, empty when it does not exist yet.
pub fn read_stdout(host: &TestHost, silo_id: &str) -> String {
    std::fs::read_to_string(host.silo_dir(silo_id).join(STDOUT_LOG_FILE)).unwrap_or_default()
}

/// Waits until the stdout log of `silo_id` ends with `marker` and returns the log.
pub fn wait_for_stdout(host: &TestHost, silo_id: &str, marker: &str) -> String {
    let found = wait_for(OUTPUT_WAIT, || read_stdout(host, silo_id).ends_with(marker));
    let stdout = read_stdout(host, silo_id);
    assert!(found, "no {marker:?} at the end of stdout: {stdout:?}");
    stdout
}

/// Returns the host pid of the program of silo `silo_id`: the child of its PID 1.
pub fn program_pid(host: &TestHost, silo_id: &str) -> u32 {
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(host.record_path(silo_id)).expect("read record"),
    )
    .expect("parse record");
    let init_pid = record["init_pid"].as_u64().expect("init_pid in the record");
    let children = format!("/proc/{init_pid}/task/{init_pid}/children");
    let mut pid = None;
    wait_for(OUTPUT_WAIT, || {
        pid = std::fs::read_to_string(&children)
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        pid.is_some()
    });
    pid.unwrap_or_else(|| panic!("PID 1 ({init_pid}) of silo {silo_id} has no child"))
}

/// Returns the value of line `field` of `/proc/PID/status`, such as "CapEff".
pub fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let prefix = format!("{field}:");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}
