//! Repeated and concurrent silo starts through the whole path: colex-cli, the controller and
//! an agent in a lab namespace. Both tests end with the host's ledger as it was before.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use colex_cluster_tests::ledger::Ledger;
use colex_cluster_tests::table::parse_all_hosts;
use colex_cluster_tests::{require_root, Host, Lab};

/// Up/down cycles of one silo.
const CYCLES: usize = 100;
/// Silos of one `up` request, which the agent starts at the same time.
const CONCURRENT_SILOS: usize = 50;

/// Returns the names in the agent's lease folder: one file per leased address.
fn leases(host: &Host) -> BTreeSet<String> {
    let dir = host.run_dir().join("leases");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Returns a silo file with `count` sleeping silos named `<prefix>00`, `<prefix>01`, ...
fn sleepers(prefix: &str, count: usize) -> String {
    let mut text = String::new();
    for index in 0..count {
        let _ = write!(
            text,
            "Silo \"s{index}\" {{\n  name = \"{prefix}{index:02}\"\n  binary {{\n    path = \"/bin/sleep\"\n    args = [\"1000\"]\n  }}\n}}\n"
        );
    }
    text
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn hundred_up_down_cycles_leak_nothing() {
    if !require_root("hundred_up_down_cycles_leak_nothing") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let host = &lab.hosts[0];
    let silo_file = lab.write_file("cycle.hcl", &sleepers("cycle", 1)).expect("silo file");
    let ledger_before = Ledger::take(host).expect("ledger");
    let leases_before = leases(host);

    for cycle in 0..CYCLES {
        let up = lab.cli(&["up", path_str(&silo_file)]).expect("up runs");
        assert!(up.success(), "cycle {cycle}: up failed: {}\n{}", up.stderr, lab.logs());
        assert_eq!(up.stdout.matches("| UP ").count(), 1, "cycle {cycle}: up output:\n{}", up.stdout);

        let down = lab.cli(&["down", path_str(&silo_file)]).expect("down runs");
        assert!(down.success(), "cycle {cycle}: down failed: {}\n{}", down.stderr, lab.logs());
        assert_eq!(down.stdout.matches("REMOVED").count(), 1, "cycle {cycle}: down output:\n{}", down.stdout);
    }

    let listed = lab.cli(&["list", "--all-hosts"]).expect("list runs");
    assert!(parse_all_hosts(&listed.stdout).is_empty(), "silos left:\n{}", listed.stdout);
    assert_eq!(Ledger::take(host).expect("ledger"), ledger_before, "host after {CYCLES} cycles");
    assert_eq!(leases(host), leases_before, "leases after {CYCLES} cycles");
}

#[test]
fn fifty_silos_at_once_get_distinct_addresses() {
    if !require_root("fifty_silos_at_once_get_distinct_addresses") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let host = &lab.hosts[0];
    let silo_file = lab
        .write_file("many.hcl", &sleepers("many", CONCURRENT_SILOS))
        .expect("silo file");
    let ledger_before = Ledger::take(host).expect("ledger");
    let leases_before = leases(host);

    let up = lab.cli(&["up", path_str(&silo_file)]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    assert_eq!(up.stdout.matches("| UP ").count(), CONCURRENT_SILOS, "up output:\n{}", up.stdout);

    let listed = lab.cli(&["list", "--all-hosts"]).expect("list runs");
    let rows = parse_all_hosts(&listed.stdout);
    assert_eq!(rows.len(), CONCURRENT_SILOS, "rows in:\n{}", listed.stdout);
    let addresses: BTreeSet<&str> = rows.iter().map(|row| row["ADDRESSES"].as_str()).collect();
    assert_eq!(addresses.len(), CONCURRENT_SILOS, "distinct addresses in:\n{}", listed.stdout);
    assert!(
        addresses.iter().all(|address| address.starts_with("10.69.")),
        "addresses outside the cluster network:\n{}",
        listed.stdout
    );
    assert_eq!(leases(host).len(), leases_before.len() + CONCURRENT_SILOS, "one lease per silo");

    let down = lab.cli(&["down", path_str(&silo_file)]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
    assert_eq!(down.stdout.matches("REMOVED").count(), CONCURRENT_SILOS, "down output:\n{}", down.stdout);
    assert_eq!(Ledger::take(host).expect("ledger"), ledger_before, "host after down");
    assert_eq!(leases(host), leases_before, "leases after down");
}
