//! Root tests of the failpoints of the silo start path. For every entry of `FAILPOINTS` a start
//! must fail with that failpoint named in its error. It must leave the host exactly at the
//! baseline taken before it: links, bridge ports, iptables rules of silos, silo cgroups in every
//! hierarchy, mounts below the state dir, leases, silo dirs and processes in the silo's cgroup.
//! A start on the same runtime with the failpoint cleared must then succeed.
//!
//! As in `stress.rs`, each test runs its runtimes in a fresh network namespace made by a
//! dedicated thread, names carry a random part, and guards remove the host's cgroup dirs in
//! every hierarchy and the state dir, also when a test fails. Without root the tests are
//! skipped, unless CI=true, where they fail.

use std::path::{Path, PathBuf};
use std::time::Duration;

use colex_agent::runtime::{Runtime, RuntimeConfig, RuntimeError, FAILPOINTS};

mod common;
use common::*;

const SUBNET: &str = "10.69.3.0/24";
/// Marker in the comment of every iptables rule the runtime adds for a silo.
const SILO_RULE_MARKER: &str = "colex silo";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

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
            leases: dir_entries(&host.leases_dir()),
            silo_dirs: [&host.cfg.state_dir, &host.cfg.run_dir]
                .iter()
                .flat_map(|base| dir_entries(&base.join("silos")))
                .collect(),
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
                // The kernel keeps the first 15 bytes of the program name.
                let helper = head.ends_with("(colex-silo-help") || head.ends_with("(colex-agent");
                helper && ppid == Some(own_pid.as_str())
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
        let host = TestHost::new("colex-failpoint-test", "cxf", SUBNET);
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
                // Internet access makes the start add a MASQUERADE rule and so reach every
                // failpoint.
                let silo = sleeper(&format!("fail{index}"), true);
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
                // Spare helpers wait for the next start's job and are not leftovers; one may
                // still be on its way into the spare list.
                let leftover_helpers = || {
                    let spares = runtime.spare_helper_pids();
                    let mut helpers = helper_children();
                    helpers.retain(|pid| !spares.contains(&pid.unsigned_abs()));
                    helpers
                };
                wait_for(Duration::from_secs(2), || leftover_helpers().is_empty());
                let helpers = leftover_helpers();
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
