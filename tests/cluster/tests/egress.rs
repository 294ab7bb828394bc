//! Egress from silos to an "upstream" namespace on the lab bridge that stands for the internet
//! (203.0.113.10). `internet_access` silos reach it with their host's address as source, and a
//! silo without it does not. Three agent restarts leave exactly one copy of each colex rule in
//! the host's namespace. Stopping one of two `internet_access` silos leaves the other's egress
//! working, and so does a FORWARD policy of DROP in the host's namespace.

use std::collections::BTreeMap;

use colex_cluster_tests::mesh_tools::{requests_from, response_count, silo_logs, up, wait_for_silo_address, Upstream, UPSTREAM_ADDRESS, UPSTREAM_PAGE};
use colex_cluster_tests::{require_root, Host, Lab};

const IPTABLES: &str = "/usr/sbin/iptables";
const IPTABLES_SAVE: &str = "/usr/sbin/iptables-save";
/// Agent restarts after which the rules must be the same as before.
const AGENT_RESTARTS: usize = 3;
/// Successful fetches a check waits for, so one lucky fetch before a change does not count.
const FETCHES_PER_CHECK: usize = 2;

/// Returns a silo file with a silo on `host` that fetches the upstream page every second and
/// prints `ok` or `fail`.
/// The Debian 12 busybox wget crashed here with `-q` or `-T`, so `timeout` bounds each fetch,
/// the page goes to standard output for grep, and the progress output goes to /dev/null.
fn fetcher_silo(name: &str, host: &str, internet_access: bool) -> String {
    format!(
        r#"
Silo "{name}" {{
  name = "{name}"

  binary {{
    path = "/bin/sh"
    args = ["-c", "while true; do if timeout 3 wget -O - http://{UPSTREAM_ADDRESS}/ 2>/dev/null | grep -q '{UPSTREAM_PAGE}'; then echo ok; else echo fail; fi; sleep 1; done"]
  }}

  network {{
    internet_access = {internet_access}
  }}

  placement {{
    hosts = ["{host}"]
  }}
}}
"#
    )
}

/// Returns how many lines silo `name` printed that are exactly `word`.
fn count_word(lab: &Lab, name: &str, word: &str) -> usize {
    silo_logs(lab, name, false)
        .map(|out| out.lines().filter(|line| line.trim() == word).count())
        .unwrap_or(0)
}

/// Waits until silo `name` printed [`FETCHES_PER_CHECK`] more `ok` lines than now.
fn wait_for_new_fetches(lab: &Lab, name: &str, what: &str) {
    let before = count_word(lab, name, "ok");
    let fetched = lab.wait_until(what, |lab| Ok(count_word(lab, name, "ok") >= before + FETCHES_PER_CHECK));
    if let Err(error) = fetched {
        let output = silo_logs(lab, name, false).unwrap_or_default();
        let errors = silo_logs(lab, name, true).unwrap_or_default();
        panic!("{error:#}\n{name} printed:\n{output}\n{name}'s standard error:\n{errors}");
    }
}

/// Returns the host namespace's rules from iptables-save, without comments and counters, as a
/// map from each line to how often it occurs.
fn rules(host: &Host) -> BTreeMap<String, usize> {
    let saved = host.run(IPTABLES_SAVE, &[]).expect("iptables-save runs");
    assert!(saved.success(), "iptables-save failed: {}", saved.stderr);
    let mut counts = BTreeMap::new();
    for line in saved.stdout.lines().filter(|line| !line.starts_with('#')) {
        // Chain lines carry packet counters: `:colex-masq - [0:0]`.
        let line = match line.split_once(" [") {
            Some((chain, _)) if line.starts_with(':') => chain,
            _ => line,
        };
        *counts.entry(line.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Returns the MAC address of `host`'s silo bridge from `ip -o link show`.
fn bridge_mac_address(host: &Host) -> String {
    let link = host.run("ip", &["-o", "link", "show", &host.bridge]).expect("ip link runs").stdout;
    let mut words = link.split_whitespace().skip_while(|word| *word != "link/ether");
    words.nth(1).unwrap_or_else(|| panic!("no MAC address in {link:?}")).to_owned()
}

fn colex_rules(rules: &BTreeMap<String, usize>) -> Vec<(&String, &usize)> {
    rules.iter().filter(|(line, _)| line.contains("colex")).collect()
}

#[test]
fn egress_masquerades_and_survives_restarts() {
    if !require_root("egress_masquerades_and_survives_restarts") {
        return;
    }
    let mut lab = Lab::start(1).expect("lab starts");
    let upstream = Upstream::start(&mut lab).expect("upstream namespace");
    let host = lab.hosts[0].clone();
    // The host itself reaches the upstream server through the route the lab added.
    assert_eq!(host.fetch_page(UPSTREAM_ADDRESS), format!("{UPSTREAM_PAGE}\n"));

    for (name, internet_access) in [("egress-a", true), ("egress-b", true), ("egress-closed", false)] {
        up(&lab, &format!("{name}.hcl"), &fetcher_silo(name, &host.name, internet_access)).expect("up");
    }
    let mut addresses = BTreeMap::new();
    for name in ["egress-a", "egress-b", "egress-closed"] {
        addresses.insert(name, wait_for_silo_address(&lab, name).expect("silo is UP"));
    }
    wait_for_new_fetches(&lab, "egress-a", "egress-a reaches the upstream server");
    wait_for_new_fetches(&lab, "egress-b", "egress-b reaches the upstream server");
    lab.wait_until("egress-closed tried twice", |lab| Ok(count_word(lab, "egress-closed", "fail") >= 2))
        .expect("egress-closed runs");

    // The server saw only the host's lab address, never a silo address.
    let log = upstream.log_text();
    let from_host = requests_from(&log, &host.address.to_string());
    assert!(from_host >= 2 * FETCHES_PER_CHECK, "requests from {} in:\n{log}", host.address);
    assert_eq!(from_host, response_count(&log), "every request comes from the host's address:\n{log}");
    for address in addresses.values() {
        assert_eq!(requests_from(&log, address), 0, "no request from silo address {address}:\n{log}");
    }
    assert_eq!(count_word(&lab, "egress-closed", "ok"), 0, "a silo without internet_access reaches nothing outside");

    // Three restarts leave every rule, colex's included, exactly as it was.
    let before = rules(&host);
    let colex_before = colex_rules(&before);
    assert!(colex_before.iter().any(|(line, _)| line.contains("MASQUERADE")), "colex rules:\n{colex_before:?}");
    for (line, count) in &colex_before {
        assert_eq!(**count, 1, "one copy of {line}");
    }
    for restart in 1..=AGENT_RESTARTS {
        lab.kill_agent(0).expect("kill the agent");
        lab.restart_agent(0).expect("restart the agent");
        lab.wait_for_hosts_up().unwrap_or_else(|error| panic!("host UP after restart {restart}: {error:#}"));
    }
    wait_for_new_fetches(&lab, "egress-b", "egress-b reaches the upstream server after the restarts");
    let after = rules(&host);
    assert_eq!(before, after, "iptables-save of the host before and after {AGENT_RESTARTS} agent restarts");

    // Stopping egress-a removes its rule only, and egress-b keeps reaching the server. The
    // bridge keeps its MAC address, so egress-b's neighbour entry for its gateway stays valid.
    let bridge_mac = bridge_mac_address(&host);
    let down = lab.cli(&["down", "--name", "egress-a"]).expect("down runs");
    assert!(down.success(), "down egress-a failed: {}", down.stderr);
    let nat = host.run(IPTABLES_SAVE, &["-t", "nat"]).expect("iptables-save").stdout;
    assert!(!nat.contains(&format!("{}/32", addresses["egress-a"])), "egress-a's rule is gone:\n{nat}");
    assert!(nat.contains(&format!("{}/32", addresses["egress-b"])), "egress-b's rule stays:\n{nat}");
    assert_eq!(bridge_mac_address(&host), bridge_mac, "the bridge's MAC address after egress-a stopped");
    wait_for_new_fetches(&lab, "egress-b", "egress-b reaches the upstream server after egress-a stopped");

    // A FORWARD policy of DROP in the host's namespace does not cut egress-b off.
    let policy = host.run(IPTABLES, &["-P", "FORWARD", "DROP"]).expect("iptables runs");
    assert!(policy.success(), "iptables -P FORWARD DROP failed: {}", policy.stderr);
    wait_for_new_fetches(&lab, "egress-b", "egress-b reaches the upstream server with FORWARD policy DROP");
    let closed_ok = count_word(&lab, "egress-closed", "ok");
    assert_eq!(closed_ok, 0, "egress-closed still reaches nothing outside");

    for name in ["egress-b", "egress-closed"] {
        let down = lab.cli(&["down", "--name", name]).expect("down runs");
        assert!(down.success(), "down {name} failed: {}", down.stderr);
    }
    drop(upstream);
}
