//! Root tests of the failpoints of the silo start path: for every entry of `FAILPOINTS` a start
//! must fail with that failpoint named in its error and leave the host exactly at the baseline
//! taken before it (links, bridge ports, iptables rules of silos, silo cgroups in every
//! hierarchy, mounts below the state dir, leases, silo dirs, processes in the silo's cgroup).
//! A start on the same runtime with the failpoint cleared must then succeed.
//!
//! As in `stress.rs`, each test runs its runtimes in a fresh network namespace made by a
//! dedicated thread, names carry a random part, and guards remove the host's cgroup dirs in
//! every hierarchy and the state dir, also when a test fails. Without root the tests are
//! skipped, unless CI=true, where they fail.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use colex_agent::runtime::{Runtime, RuntimeConfig, RuntimeError, FAILPOINTS};
use colex_proto::{Binary, Network, SiloSpec};

const HELPER_EXE: &str = env!("CARGO_BIN_EXE_colex-agent");
const BUSYBOX: &str = "/bin/busybox";
const IPTABLES_SAVE: &str = "/usr/sbin/iptables-save";
const SUBNET: &str = "10.69.3.0/24";
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Marker in the comment of every iptables rule the runtime adds for a silo.
const SILO_RULE_MARKER: &str = "colex silo";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Returns whether the test can run. Panics without root when CI=true.
fn has_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root, and CI=true does not allow skipping it");
    }
    eprintln!("skipped {test}: needs root");
    false
}

fn random_hex() -> String {
    let value = RandomState::new().hash_one((std::process::id(), Instant::now()));
    format!("{:08x}", value as u32)
}

/// A test agent's configuration, with guards that remove its state dir and its cgroup dirs.
struct TestHost {
    cfg: RuntimeConfig,
    _state_dir: tempfile::TempDir,
}

impl TestHost {
    fn new() -> TestHost {
        let state_dir = tempfile::Builder::new()
            .prefix("colex-failpoint-test")
            .tempdir()
            .expect("create state dir");
        let subnet = SUBNET.parse().expect("valid subnet literal");
        let cfg = RuntimeConfig::new(
            format!("cxf{}", random_hex()),
            state_dir.path(),
            format!("cxb{}", random_hex()),
            subnet,
            HELPER_EXE,
        );
        TestHost {
            cfg,
            _state_dir: state_dir,
        }
    }

    /// Returns the host's cgroup dir in every mounted hierarchy that has one.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let name = format!("colex-{}", self.cfg.host_name);
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|hierarchy| hierarchy.path().join(&name))
            .collect();
        // On a pure v2 host the hierarchy is the mount itself.
        dirs.push(Path::new("/sys/fs/cgroup").join(&name));
        dirs.into_iter().filter(|dir| dir.is_dir()).collect()
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Kill whatever a failed test left, through cgroup.kill in the v2 hierarchy, then
        // remove the silo dirs and the host dir in every hierarchy.
        for host_dir in self.cgroup_dirs() {
            for silo in subdirs(&host_dir) {
                let kill = silo.join("cgroup.kill");
                if kill.exists() {
                    let _ = std::fs::write(&kill, "1");
                    wait_for(Duration::from_secs(5), || !cgroup_populated(&silo));
                }
            }
        }
        for host_dir in self.cgroup_dirs() {
            for silo in subdirs(&host_dir) {
                wait_for(Duration::from_secs(5), || {
                    std::fs::remove_dir(&silo).is_ok() || !silo.exists()
                });
            }
            let _ = std::fs::remove_dir(&host_dir);
        }
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect()
}

fn cgroup_populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|events| events.contains("populated 1"))
}

fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
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
fn in_netns(test: impl FnOnce() + Send + 'static) {
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
/// thread's network namespace.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime")
        .block_on(future)
}

fn run(program: &str, args: &[&str]) -> String {
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

/// Returns a silo spec running `/bin/sleep 1000` with internet access, so that the start adds
/// a MASQUERADE rule and reaches every failpoint.
fn sleeper(name: &str) -> SiloSpec {
    SiloSpec {
        name: name.to_string(),
        base: "busybox".to_string(),
        binary: Some(Binary {
            path: "/bin/sleep".to_string(),
            args: vec!["1000".to_string()],
            env: Vec::new(),
        }),
        network: Some(Network {
            internet_access: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Returns the sorted names of every link in the test's namespace.
fn links() -> Vec<String> {
    let mut names: Vec<String> = run(BUSYBOX, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|line| {
            // Format: "<index>: <name>[@<peer>]: <flags> ...".
            let name = line.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_string())
        })
        .collect();
    names.sort();
    names
}

/// Returns the number of the bridge's ports. `/sys/class/net/<bridge>/brif` cannot tell: the
/// process's sysfs belongs to the namespace that mounted it, not to the test's namespace.
fn bridge_port_count(bridge: &str) -> usize {
    let master = format!(" master {bridge} ");
    run(BUSYBOX, &["ip", "-o", "link", "show"])
        .lines()
        .filter(|line| line.contains(&master))
        .count()
}

/// Returns the sorted iptables rules of silos in every table of the test's namespace.
fn silo_rules() -> Vec<String> {
    let mut rules: Vec<String> = run(IPTABLES_SAVE, &[])
        .lines()
        .filter(|line| line.contains(SILO_RULE_MARKER))
        .map(str::to_string)
        .collect();
    rules.sort();
    rules
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let mut mounts: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|mount_point| mount_point.starts_with(&dir))
        .map(str::to_string)
        .collect();
    mounts.sort();
    mounts
}

/// Everything a silo start creates on the host, counted so two snapshots can be compared.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    links: Vec<String>,
    bridge_ports: usize,
    silo_rules: Vec<String>,
    /// Silo cgroup dirs, each as `<hierarchy dir>/<silo id>`, in every hierarchy.
    silo_cgroups: Vec<PathBuf>,
    mounts: Vec<String>,
    leases: Vec<String>,
    silo_dirs: Vec<String>,
}

impl Snapshot {
    fn take(host: &TestHost) -> Snapshot {
        let mut silo_cgroups: Vec<PathBuf> = host
            .cgroup_dirs()
            .iter()
            .flat_map(|host_dir| subdirs(host_dir))
            .collect();
        silo_cgroups.sort();
        Snapshot {
            links: links(),
            bridge_ports: bridge_port_count(&host.cfg.bridge),
            silo_rules: silo_rules(),
            silo_cgroups,
            mounts: mounts_below(&host.cfg.state_dir),
            leases: dir_entries(&host.cfg.state_dir.join("leases")),
            silo_dirs: dir_entries(&host.cfg.state_dir.join("silos")),
        }
    }
}

/// Returns the pids in silo `silo_id`'s cgroup, in every hierarchy where it still exists.
fn silo_processes(host: &TestHost, silo_id: &str) -> Vec<String> {
    host.cgroup_dirs()
        .iter()
        .filter_map(|host_dir| {
            std::fs::read_to_string(host_dir.join(silo_id).join("cgroup.procs")).ok()
        })
        .flat_map(|procs| procs.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Returns the pids of this test process's children that run the agent binary, zombies
/// included: helpers the runtime left running or did not wait for.
fn helper_children() -> Vec<i32> {
    let own_pid = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // Format: "<pid> (<comm>) <state> <ppid> ..."; comm may hold spaces, so the fields
            // are counted from its closing parenthesis.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let Some((head, tail)) = stat.rsplit_once(')') else {
                    return false;
                };
                let ppid = tail.split_whitespace().nth(1);
                head.ends_with("(colex-agent") && ppid == Some(own_pid.as_str())
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn start_at_each_failpoint_restores_baseline() {
    if !has_root("start_at_each_failpoint_restores_baseline") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new();
        block_on(async {
            for (index, name) in FAILPOINTS.iter().enumerate() {
                // A runtime of its own per failpoint, started with the failpoint in its config.
                let mut cfg = host.cfg.clone();
                cfg.failpoint = Some(name.to_string());
                let (runtime, _exits) = Runtime::start(cfg)
                    .await
                    .unwrap_or_else(|err| panic!("{name}: start runtime: {err}"));
                let baseline = Snapshot::take(&host);

                let silo_id = random_hex();
                let silo = sleeper(&format!("fail{index}"));
                let err = match runtime.run_silo(&silo_id, 1, &silo).await {
                    Ok(_) => panic!("{name}: start of silo {silo_id} succeeded"),
                    Err(err) => err,
                };
                assert!(
                    matches!(&err, RuntimeError::Failpoint(reached) if reached.name == *name),
                    "{name}: unexpected error: {err}"
                );
                assert!(
                    err.to_string().contains(name),
                    "{name}: error does not name the failpoint: {err}"
                );
                assert_eq!(
                    Snapshot::take(&host),
                    baseline,
                    "{name}: host after the failed start"
                );
                let helpers = helper_children();
                assert!(
                    helpers.is_empty(),
                    "{name}: helper processes left: {helpers:?}"
                );
                let processes = silo_processes(&host, &silo_id);
                assert!(
                    processes.is_empty(),
                    "{name}: processes left in the silo's cgroup: {processes:?}"
                );

                // The same runtime starts the same silo once the failpoint is cleared.
                runtime.set_failpoint(None).expect("clear failpoint");
                runtime
                    .run_silo(&silo_id, 1, &silo)
                    .await
                    .unwrap_or_else(|err| panic!("{name}: start without failpoint: {err}"));
                assert_eq!(
                    bridge_port_count(&host.cfg.bridge),
                    baseline.bridge_ports + 1,
                    "{name}: bridge ports of the running silo"
                );
                runtime
                    .remove_silo(&silo_id, KILL_TIMEOUT)
                    .await
                    .unwrap_or_else(|err| panic!("{name}: remove silo {silo_id}: {err}"));
                assert_eq!(
                    Snapshot::take(&host),
                    baseline,
                    "{name}: host after the removal"
                );
                runtime.shutdown().await.expect("shutdown");
            }
        });
    });
}

#[test]
fn unknown_failpoint_is_rejected() {
    let subnet = SUBNET.parse().expect("valid subnet literal");
    let mut cfg = RuntimeConfig::new(
        "cxfunknown",
        "/var/lib/colex/agent/cxfunknown",
        "cxbunknown",
        subnet,
        HELPER_EXE,
    );
    cfg.failpoint = Some("after-lunch".to_string());
    let err = cfg.validate().expect_err("unknown failpoint accepted");
    assert!(err.to_string().contains("after-lunch"), "{err}");
}
