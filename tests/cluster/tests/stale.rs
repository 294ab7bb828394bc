//! `list --all-hosts` with one of three agents frozen (SIGSTOP). The listing comes from the
//! leader's state, so it returns at once. Once the host TTL has passed, the frozen host shows
//! DOWN and stale with its silo's last known row, and the other two show UP. `--strict` then
//! exits with code 3. After SIGCONT the host is UP again.

use std::time::{Duration, Instant};

use colex_cluster_tests::table::parse_all_hosts;
use colex_cluster_tests::{require_root, Lab};

/// One instance on each of the three hosts.
const SPREAD: &str = r#"
Silo "s" {
  name  = "spread"
  count = 3

  binary {
    path = "/bin/sh"
    args = ["-c", "exec sleep 1000"]
  }
}
"#;

/// Maximum duration of `list --all-hosts` with a frozen host.
const LIST_DEADLINE: Duration = Duration::from_secs(3);
/// The controller's default host TTL (3 s), and a margin for the session's last message.
const TTL_AND_MARGIN: Duration = Duration::from_secs(5);

/// Sends `signal` (a `kill` name such as `-STOP`) to `pid`.
fn signal(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

/// Thaws the frozen agent when the test ends, also when it fails, so the lab can stop it.
struct Thaw(u32);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

/// Returns the `state` word of each host heading of a `list --all-hosts` output.
fn host_states(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| line.strip_prefix("HOST "))
        .filter_map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = words.first()?;
            let state = words.iter().position(|word| *word == "state").and_then(|at| words.get(at + 1))?;
            Some(((*name).to_owned(), (*state).to_owned()))
        })
        .collect()
}

#[test]
fn frozen_agent_shows_stale_quickly() {
    if !require_root("frozen_agent_shows_stale_quickly") {
        return;
    }
    let lab = Lab::start(3).expect("lab starts");
    lab.wait_for_hosts_up().expect("hosts up");
    let file = lab.write_file("spread.hcl", SPREAD).expect("silo file");
    let file = file.to_str().expect("utf-8 path").to_owned();
    let up = lab.cli(&["up", &file]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    let frozen = lab.hosts[1].name.clone();
    let pid = lab.agent_pid(1).expect("agent 1 runs");
    signal("-STOP", pid);
    let thaw = Thaw(pid);
    std::thread::sleep(TTL_AND_MARGIN);

    let started = Instant::now();
    let listed = lab.cli(&["list", "--all-hosts"]).expect("list runs");
    let took = started.elapsed();
    assert!(listed.success(), "list --all-hosts failed: {}", listed.stderr);
    assert!(took < LIST_DEADLINE, "list --all-hosts took {took:?} with a frozen agent");
    for (host, state) in host_states(&listed.stdout) {
        let expected = if host == frozen { "DOWN" } else { "UP" };
        assert_eq!(state, expected, "state of {host}:\n{}", listed.stdout);
    }
    assert_eq!(host_states(&listed.stdout).len(), 3, "three hosts:\n{}", listed.stdout);
    // The frozen host's heading marks its rows stale, and its silo keeps its last known row.
    let heading = listed
        .stdout
        .lines()
        .find(|line| line.starts_with(&format!("HOST {frozen} ")))
        .unwrap_or_else(|| panic!("a heading of {frozen}:\n{}", listed.stdout));
    assert!(heading.contains("(stale:"), "the frozen host is marked stale: {heading}");
    let rows = parse_all_hosts(&listed.stdout);
    assert!(
        rows.iter().any(|row| row["HOST"] == frozen && row["NAME"].starts_with("spread[")),
        "a silo row under {frozen}:\n{}",
        listed.stdout
    );

    let strict = lab.cli(&["list", "--all-hosts", "--strict"]).expect("list runs");
    assert_eq!(strict.code, Some(3), "--strict with a DOWN host: {}", strict.stderr);

    drop(thaw);
    lab.wait_until("the thawed host is UP again", |lab| {
        let listed = lab.cli(&["list", "--all-hosts"])?;
        Ok(host_states(&listed.stdout).iter().all(|(_, state)| state == "UP"))
    })
    .expect("host back up");

    let down = lab.cli(&["down", &file]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
}
