//! Root stress tests of the silo runtime: many start/remove cycles on one runtime, and many
//! concurrent starts, each followed by a check that nothing of any silo is left on the host.
//!
//! As in `runtime.rs`, each test runs its runtime in a fresh network namespace made by a
//! dedicated thread, and names carry a random part. Guards remove the host's cgroup dirs in
//! every hierarchy and the state dir, also when a test fails. Without root the tests are
//! skipped, unless CI=true, where they fail.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use colex_agent::runtime::Runtime;

mod common;
use common::*;

const SUBNET: &str = "10.69.2.0/24";
const SEQUENTIAL_CYCLES: usize = 100;
const CONCURRENT_SILOS: usize = 50;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Returns the names of the links in the test's namespace that start with `cx`, except the
/// bridge.
fn silo_links(bridge: &str) -> Vec<String> {
    run(BUSYBOX, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|line| {
            // Format: "<index>: <name>[@<peer>]: <flags> ...".
            let name = line.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_string())
        })
        .filter(|name| name.starts_with("cx") && name != bridge)
        .collect()
}

/// Returns the names of the bridge's ports. `/sys/class/net/<bridge>/brif` cannot tell: the
/// process's sysfs belongs to the namespace that mounted it, not to the test's namespace.
fn bridge_ports(bridge: &str) -> Vec<String> {
    let master = format!(" master {bridge} ");
    run(BUSYBOX, &["ip", "-o", "link", "show"])
        .lines()
        .filter(|line| line.contains(&master))
        .filter_map(|line| Some(line.split(": ").nth(1)?.split('@').next()?.to_string()))
        .collect()
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

fn masquerade_rules_of_silos() -> Vec<String> {
    run(IPTABLES_SAVE, &["-t", "nat"])
        .lines()
        .filter(|line| line.contains("MASQUERADE") && line.contains("colex silo"))
        .map(str::to_string)
        .collect()
}

fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(4)
                .is_some_and(|mount_point| mount_point.starts_with(&dir))
        })
        .map(str::to_string)
        .collect()
}

/// Asserts that `running` silos, half of them with internet access, have their objects on the
/// host: one veth, bridge port, lease and silo dir each, one cgroup each in every hierarchy, and
/// a MASQUERADE rule for each silo with internet access. Mounts are not counted: a silo's
/// overlayfs lives in its own mount namespace, so the agent's mountinfo shows a silo mount only
/// when one leaked into the agent's namespace.
fn assert_silo_objects(host: &TestHost, running: usize) {
    assert_eq!(silo_links(&host.cfg.bridge).len(), running, "silo links");
    let ports = bridge_ports(&host.cfg.bridge);
    assert_eq!(ports.len(), running, "bridge ports");
    assert_eq!(
        masquerade_rules_of_silos().len(),
        running.div_ceil(2),
        "MASQUERADE rules"
    );
    let host_dirs = host.cgroup_dirs();
    assert!(!host_dirs.is_empty(), "no host cgroup dir found");
    for host_dir in host_dirs {
        assert_eq!(
            subdirs(&host_dir).len(),
            running,
            "silo cgroups in {}",
            host_dir.display()
        );
    }
    assert_eq!(dir_entries(&host.leases_dir()).len(), running, "leases");
    for base in [&host.cfg.state_dir, &host.cfg.run_dir] {
        let silos_dir = base.join("silos");
        assert_eq!(dir_entries(&silos_dir).len(), running, "silo dirs in {}", silos_dir.display());
    }
}

/// Asserts that no silo left anything on the host: veths, bridge ports, MASQUERADE rules of
/// silos, silo cgroups in any hierarchy, mounts below the state dir, leases and silo dirs.
fn assert_no_silo_left(host: &TestHost) {
    let links = silo_links(&host.cfg.bridge);
    assert!(links.is_empty(), "silo links left: {links:?}");

    let ports = bridge_ports(&host.cfg.bridge);
    assert!(ports.is_empty(), "bridge ports left: {ports:?}");

    let rules = masquerade_rules_of_silos();
    assert!(
        rules.is_empty(),
        "MASQUERADE rules of silos left: {rules:?}"
    );

    for host_dir in host.cgroup_dirs() {
        let silos = subdirs(&host_dir);
        assert!(silos.is_empty(), "silo cgroups left: {silos:?}");
    }

    let mounts = mounts_below(&host.cfg.state_dir);
    assert!(
        mounts.is_empty(),
        "mounts below the state dir left: {mounts:?}"
    );

    let leases = dir_entries(&host.leases_dir());
    assert!(leases.is_empty(), "leases left: {leases:?}");
    for base in [&host.cfg.state_dir, &host.cfg.run_dir] {
        let silo_dirs = dir_entries(&base.join("silos"));
        assert!(silo_dirs.is_empty(), "silo dirs left in {}: {silo_dirs:?}", base.display());
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn sequential_start_remove_cycles_leak_nothing() {
    if !has_root("sequential_start_remove_cycles_leak_nothing") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-stress-test", "cxs", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let started = Instant::now();
            for cycle in 0..SEQUENTIAL_CYCLES {
                let silo_id = random_hex();
                let silo = sleeper(&format!("cycle{cycle}"), cycle % 2 == 0);
                let interfaces = runtime
                    .run_silo(&silo_id, 1, &silo)
                    .await
                    .unwrap_or_else(|err| panic!("cycle {cycle}: run silo {silo_id}: {err}"));
                assert_eq!(interfaces.len(), 1, "cycle {cycle}");
                if cycle == 0 {
                    // The first silo has internet access, so each probe must see one object.
                    assert_silo_objects(&host, 1);
                }
                runtime
                    .remove_silo(&silo_id, KILL_TIMEOUT)
                    .await
                    .unwrap_or_else(|err| panic!("cycle {cycle}: remove silo {silo_id}: {err}"));
            }
            eprintln!(
                "{SEQUENTIAL_CYCLES} start/remove cycles took {:?}",
                started.elapsed()
            );
            assert_no_silo_left(&host);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn concurrent_starts_distinct_addresses_no_leaks() {
    if !has_root("concurrent_starts_distinct_addresses_no_leaks") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-stress-test", "cxs", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            // 6 random hex characters and a 2-digit hex index make the 8-character silo ids.
            let prefix = &random_hex()[..6];
            let silo_ids: Vec<String> = (0..CONCURRENT_SILOS)
                .map(|index| format!("{prefix}{index:02x}"))
                .collect();

            let started = Instant::now();
            let mut starts = tokio::task::JoinSet::new();
            for (index, silo_id) in silo_ids.iter().enumerate() {
                let runtime = runtime.clone();
                let silo_id = silo_id.clone();
                let silo = sleeper(&format!("many{index}"), index % 2 == 0);
                starts.spawn(async move {
                    let result = runtime.run_silo(&silo_id, 1, &silo).await;
                    (silo_id, result)
                });
            }
            let mut addresses = HashSet::new();
            let mut failures = Vec::new();
            while let Some(joined) = starts.join_next().await {
                let (silo_id, result) = joined.expect("start task panicked");
                match result {
                    Ok(interfaces) => {
                        assert_eq!(interfaces.len(), 1, "silo {silo_id}");
                        let address = interfaces[0].address.clone();
                        assert!(
                            addresses.insert(address.clone()),
                            "address {address} of silo {silo_id} handed out twice"
                        );
                    }
                    Err(err) => failures.push(format!("{silo_id}: {err}")),
                }
            }
            eprintln!(
                "{CONCURRENT_SILOS} concurrent starts took {:?}",
                started.elapsed()
            );

            // While all silos run, the same probes that later must find nothing see one object
            // per silo, so an empty result afterwards means removal, not a wrong probe.
            if failures.is_empty() {
                assert_silo_objects(&host, CONCURRENT_SILOS);
            }

            // Remove all silos, also after failed starts, before asserting on the starts.
            let started = Instant::now();
            let mut removals = tokio::task::JoinSet::new();
            for silo_id in &silo_ids {
                let runtime = runtime.clone();
                let silo_id = silo_id.clone();
                removals.spawn(async move {
                    let result = runtime.remove_silo(&silo_id, KILL_TIMEOUT).await;
                    (silo_id, result)
                });
            }
            let mut removal_failures = Vec::new();
            while let Some(joined) = removals.join_next().await {
                let (silo_id, result) = joined.expect("removal task panicked");
                if let Err(err) = result {
                    removal_failures.push(format!("{silo_id}: {err}"));
                }
            }
            eprintln!(
                "{CONCURRENT_SILOS} concurrent removals took {:?}",
                started.elapsed()
            );

            assert!(failures.is_empty(), "failed starts: {failures:?}");
            assert!(
                removal_failures.is_empty(),
                "failed removals: {removal_failures:?}"
            );
            assert_eq!(addresses.len(), CONCURRENT_SILOS);
            assert_no_silo_left(&host);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}
