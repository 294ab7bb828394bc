//! Host liveness, host loss and drain in real clusters of three hosts, with the controller's
//! default host TTL of 3 s.
//!
//! - A silo with `count = 2` and restart policy `always`: a host cut off the network has its
//!   instance running on another host within TTL + 2 s, while the cut host keeps its copy
//!   running. Once the host is back, its stale copy is stopped and exactly two copies run.
//!   The same holds when a host's agent is killed and started again.
//! - Drain: a drained host's silo moves to another host, `hosts` shows it draining, and a new
//!   silo stays off it. `undrain` clears the mark, and `hosts --output json` parses.

use std::collections::BTreeSet;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use colex_cluster_tests::table::parse_table;
use colex_cluster_tests::{require_root, Lab};
use rand::Rng;
use serde_json::Value;

/// The controller's default `--host-ttl-ms`.
const HOST_TTL: Duration = Duration::from_secs(3);
/// Time a lost host's instance may take beyond the TTL to run elsewhere.
const REPLACEMENT_ALLOWANCE: Duration = Duration::from_secs(2);
/// Time the checks below wait for a state they expect at all.
const WAIT_TIMEOUT: Duration = Duration::from_secs(40);
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Returns a silo file with silo `name` of `count` instances that run `sleep MARKER` and are
/// placed again elsewhere when their host is lost (restart policy `always`).
fn always_silo(name: &str, count: u32, marker: u32) -> String {
    format!(
        r#"
Silo "s" {{
  name  = "{name}"
  count = {count}

  binary {{
    path = "/bin/sh"
    args = ["-c", "exec sleep {marker}"]
  }}

  restart {{
    policy = "always"
  }}
}}
"#
    )
}

/// Returns a sleep length no other test uses, so the silo's processes can be counted by it.
fn unique_marker() -> u32 {
    rand::rng().random_range(1_000_000..9_000_000)
}

/// One instance as `list --output json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Instance {
    index: u64,
    id: String,
    host: String,
    state: String,
}

/// Returns the instances of silo `name`, in index order.
fn instances(lab: &Lab, name: &str) -> Vec<Instance> {
    let output = lab.cli(&["list", "--output", "json"]).expect("list runs");
    assert!(output.success(), "list failed: {}", output.stderr);
    let document: Value = serde_json::from_str(&output.stdout).expect("list prints JSON");
    let mut found: Vec<Instance> = document["silos"]
        .as_array()
        .expect("a silos array")
        .iter()
        .filter(|silo| silo["name"] == name)
        .map(|silo| Instance {
            index: silo["index"].as_u64().unwrap_or(u64::MAX),
            id: silo["id"].as_str().unwrap_or_default().to_owned(),
            host: silo["host"].as_str().unwrap_or_default().to_owned(),
            state: silo["state"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    found.sort_by_key(|instance| instance.index);
    found
}

/// Returns true when `count` instances run UP on distinct hosts, none of them `avoided`.
fn all_up_apart(instances: &[Instance], count: usize, avoided: &str) -> bool {
    let hosts: BTreeSet<&str> = instances.iter().map(|instance| instance.host.as_str()).collect();
    instances.len() == count
        && hosts.len() == count
        && instances.iter().all(|instance| instance.state == "UP" && instance.host != avoided)
}

/// Returns the lab host name of each process that runs `sleep MARKER`, found by the agent
/// cgroup (`colex-HOST`) the process is in.
fn copies(lab: &Lab, marker: u32) -> Vec<String> {
    let marker = marker.to_string();
    let mut hosts = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return hosts;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(cmdline) = fs::read(path.join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let runs_marker = args.len() == 2 && args[0].ends_with("sleep") && args[1] == marker;
        if !runs_marker {
            continue;
        }
        let cgroup = fs::read_to_string(path.join("cgroup")).unwrap_or_default();
        let host = lab
            .hosts
            .iter()
            .find(|host| cgroup.contains(&format!("colex-{}/", host.name)))
            .map_or_else(|| format!("outside any lab host: {}", cgroup.trim()), |host| host.name.clone());
        hosts.push(host);
    }
    hosts.sort();
    hosts
}

/// Polls `check` until it returns true; panics with `what` and the lab's logs after
/// [`WAIT_TIMEOUT`].
fn wait_for(lab: &Lab, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {WAIT_TIMEOUT:?} waiting until {what}\n{}", lab.logs());
        thread::sleep(POLL_INTERVAL);
    }
}

/// Returns the STATE cell of host `name` in the `hosts` table.
fn host_state(lab: &Lab, name: &str) -> String {
    let output = lab.cli(&["hosts"]).expect("hosts runs");
    assert!(output.success(), "hosts failed: {}", output.stderr);
    parse_table(&output.stdout)
        .into_iter()
        .find(|row| row.get("NAME").map(String::as_str) == Some(name))
        .and_then(|row| row.get("STATE").cloned())
        .unwrap_or_default()
}

/// Returns the position in `lab.hosts` of the host named `name`.
fn host_index(lab: &Lab, name: &str) -> usize {
    lab.hosts
        .iter()
        .position(|host| host.name == name)
        .unwrap_or_else(|| panic!("{name} is not a lab host"))
}

/// Waits until `count` instances of `name` run UP, each on its own host other than `lost`.
/// Returns the time since `since`.
fn wait_for_move(lab: &Lab, name: &str, count: usize, lost: &str, since: Instant) -> Duration {
    wait_for(lab, &format!("every instance of {name} is UP off host {lost}"), || {
        all_up_apart(&instances(lab, name), count, lost)
    });
    since.elapsed()
}

#[test]
fn host_loss_moves_instances() {
    if !require_root("host_loss_moves_instances") {
        return;
    }
    let mut lab = Lab::start(3).expect("lab starts");
    let marker = unique_marker();
    let file = lab.write_file("web.hcl", &always_silo("web", 2, marker)).expect("silo file");
    let up = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    wait_for(&lab, "both instances of web are UP on two hosts", || {
        all_up_apart(&instances(&lab, "web"), 2, "")
    });
    wait_for(&lab, "two copies of web run", || copies(&lab, marker).len() == 2);

    // Cut the host of instance 0 off the network.
    let before = instances(&lab, "web");
    let cut = before[0].host.clone();
    let cut_index = host_index(&lab, &cut);
    lab.cut_host(cut_index).expect("cut the host off");
    let cut_at = Instant::now();

    let elapsed = wait_for_move(&lab, "web", 2, &cut, cut_at);
    eprintln!("host {cut} cut off: its instance ran elsewhere after {elapsed:?}");
    assert!(
        elapsed <= HOST_TTL + REPLACEMENT_ALLOWANCE,
        "the instance of lost host {cut} ran elsewhere after {elapsed:?}, above {:?}\n{}",
        HOST_TTL + REPLACEMENT_ALLOWANCE,
        lab.logs()
    );
    let moved = instances(&lab, "web");
    assert_ne!(moved[0].id, before[0].id, "the moved instance has a new id");
    assert_eq!(moved[1].id, before[1].id, "the instance on a live host is untouched");
    assert_eq!(host_state(&lab, &cut), "down");
    let running = copies(&lab, marker);
    assert_eq!(
        running.iter().filter(|host| **host == cut).count(),
        1,
        "a host that only lost its network keeps running its copy: {running:?}"
    );

    // Back on the network, the agent reconnects and stops its stale copy.
    lab.reconnect_host(cut_index).expect("reconnect the host");
    wait_for(&lab, &format!("host {cut} is up again"), || host_state(&lab, &cut) == "up");
    wait_for(&lab, &format!("the stale copy on {cut} is stopped"), || {
        !copies(&lab, marker).contains(&cut)
    });
    let running = copies(&lab, marker);
    assert_eq!(running.len(), 2, "exactly two copies run: {running:?}");
    let after = instances(&lab, "web");
    assert!(all_up_apart(&after, 2, &cut), "{after:?}");
    assert_eq!(after, moved, "the returning host changes no instance");

    // The same with the agent killed: its silos outlive it, and the restarted agent adopts
    // them, then stops the copy that was placed elsewhere meanwhile.
    let killed = after[1].host.clone();
    let killed_index = host_index(&lab, &killed);
    lab.kill_agent(killed_index).expect("kill the agent");
    let killed_at = Instant::now();
    let elapsed = wait_for_move(&lab, "web", 2, &killed, killed_at);
    eprintln!("agent of {killed} killed: its instance ran elsewhere after {elapsed:?}");
    assert!(
        elapsed <= HOST_TTL + REPLACEMENT_ALLOWANCE,
        "the instance of killed agent's host {killed} ran elsewhere after {elapsed:?}\n{}",
        lab.logs()
    );
    assert!(copies(&lab, marker).contains(&killed), "silos outlive their agent");
    lab.restart_agent(killed_index).expect("restart the agent");
    wait_for(&lab, &format!("the stale copy on {killed} is stopped"), || {
        let running = copies(&lab, marker);
        running.len() == 2 && !running.contains(&killed)
    });
    let last = instances(&lab, "web");
    assert!(all_up_apart(&last, 2, &killed), "{last:?}");
}

/// Returns a silo file with one silo of one instance that sleeps.
fn plain_silo(name: &str) -> String {
    format!(
        r#"
Silo "s" {{
  name = "{name}"

  binary {{
    path = "/bin/sh"
    args = ["-c", "exec sleep 1000"]
  }}
}}
"#
    )
}

#[test]
fn drain_moves_silo_and_undrain_clears() {
    if !require_root("drain_moves_silo_and_undrain_clears") {
        return;
    }
    let lab = Lab::start(3).expect("lab starts");
    let file = lab.write_file("db.hcl", &plain_silo("db")).expect("silo file");
    let up = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    wait_for(&lab, "db is UP", || all_up_apart(&instances(&lab, "db"), 1, ""));
    let drained = instances(&lab, "db")[0].host.clone();

    let drain = lab.cli(&["hosts", "drain", &drained]).expect("hosts drain runs");
    assert!(drain.success(), "hosts drain failed: {}", drain.stderr);
    assert!(drain.stdout.contains(&format!("host {drained} is draining")), "{}", drain.stdout);
    wait_for(&lab, &format!("db is UP off draining host {drained}"), || {
        all_up_apart(&instances(&lab, "db"), 1, &drained)
    });
    assert_eq!(host_state(&lab, &drained), "draining");

    // New silos stay off a draining host.
    let other = lab.write_file("cache.hcl", &always_silo("cache", 2, unique_marker())).expect("silo file");
    let up = lab.cli(&["up", other.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    wait_for(&lab, "cache runs on the two other hosts", || {
        all_up_apart(&instances(&lab, "cache"), 2, &drained)
    });

    let json = lab.cli(&["hosts", "--output", "json"]).expect("hosts runs");
    assert!(json.success(), "hosts --output json failed: {}", json.stderr);
    let document: Value = serde_json::from_str(&json.stdout).expect("hosts prints JSON");
    let hosts = document["hosts"].as_array().expect("a hosts array");
    assert_eq!(hosts.len(), 3, "{document}");
    let entry = hosts
        .iter()
        .find(|host| host["name"] == drained.as_str())
        .expect("the drained host is listed");
    assert_eq!(entry["state"], "draining");
    assert_eq!(entry["draining"], true);
    assert_eq!(entry["silo_count"], 0);
    assert!(
        entry["wireguard_backend"] == "kernel" || entry["wireguard_backend"] == "userspace",
        "the agent reported its mesh backend: {entry}"
    );
    for field in ["address", "subnet", "cpus", "cpu_percent_reserved", "memory_bytes", "memory_bytes_reserved", "labels"] {
        assert!(entry.get(field).is_some(), "field {field} in {entry}");
    }

    let undrain = lab.cli(&["hosts", "undrain", &drained]).expect("hosts undrain runs");
    assert!(undrain.success(), "hosts undrain failed: {}", undrain.stderr);
    assert_eq!(host_state(&lab, &drained), "up");

    let unknown = lab.cli(&["hosts", "drain", "no-such-host"]).expect("hosts drain runs");
    assert_eq!(unknown.code, Some(1), "draining an unknown host is a user error: {}", unknown.stderr);
    assert!(unknown.stderr.contains("host no-such-host not found"), "{}", unknown.stderr);
    assert!(unknown.stderr.contains(&drained), "the message lists the known hosts: {}", unknown.stderr);
}

/// Returns the lab index of the controller that `controllers` marks as leader.
fn leader_index(lab: &Lab) -> Option<usize> {
    let output = lab.cli(&["controllers"]).ok()?;
    let rows = parse_table(&output.stdout);
    let leader = rows.iter().find(|row| row.get("LEADER").map(String::as_str) == Some("yes"))?;
    (0..lab.controller_hosts.len()).find(|index| Some(&lab.controller_address_at(*index)) == leader.get("ADDRESS"))
}

#[test]
fn leader_change_keeps_instances() {
    if !require_root("leader_change_keeps_instances") {
        return;
    }
    let mut lab = Lab::start_with_controllers(3, 3).expect("lab starts");
    let marker = unique_marker();
    let file = lab.write_file("web.hcl", &always_silo("web", 3, marker)).expect("silo file");
    let up = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    wait_for(&lab, "three instances of web are UP on three hosts", || {
        all_up_apart(&instances(&lab, "web"), 3, "")
    });
    let before = instances(&lab, "web");

    // `hosts` through a follower is forwarded to the leader, which has the agent sessions.
    let leader = leader_index(&lab).expect("a leader");
    let follower = (leader + 1) % 3;
    let listed = lab.cli_at(follower, &["hosts"]).expect("hosts runs");
    assert!(listed.success(), "hosts through follower {follower} failed: {}", listed.stderr);
    let states: Vec<String> = parse_table(&listed.stdout)
        .into_iter()
        .filter_map(|row| row.get("STATE").cloned())
        .collect();
    assert_eq!(states, ["up", "up", "up"], "{}", listed.stdout);

    // The new leader gives every host one TTL to reconnect, so no instance moves.
    lab.kill_controller(leader).expect("kill the leader");
    wait_for(&lab, "a new leader has every host up", || {
        let output = lab.cli(&["hosts"]).expect("hosts runs");
        let rows = parse_table(&output.stdout);
        output.success() && rows.len() == 3 && rows.iter().all(|row| row.get("STATE").map(String::as_str) == Some("up"))
    });
    thread::sleep(HOST_TTL + REPLACEMENT_ALLOWANCE);
    let after = instances(&lab, "web");
    assert_eq!(after, before, "a leader change moves no instance\n{}", lab.logs());
    assert_eq!(copies(&lab, marker).len(), 3);
}
