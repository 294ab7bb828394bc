//! The controllers' Prometheus endpoint in a lab of three controllers and two agent hosts:
//! one leader, every family present, and the instance and placement figures move after `up`.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use colex_cluster_tests::{require_root, Host, Lab};

/// Address every lab controller serves metrics on, inside its own network namespace.
const METRICS_LISTEN: &str = "127.0.0.1:9469";
const METRICS_URL: &str = "http://127.0.0.1:9469/metrics";
/// Time the followers get to apply what the leader committed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Two instances that sleep until stopped.
const SLEEPERS: &str = r#"
Silo "s" {
  name  = "sleepers"
  count = 2

  binary {
    path = "/bin/sleep"
    args = ["1000000"]
  }
}
"#;

/// Fetches the metrics of the controller on `host` and returns each sample line's value by
/// its series, e.g. `colex_hosts{state="up"}`.
fn scrape(host: &Host) -> BTreeMap<String, f64> {
    let output = host
        .run("curl", &["--silent", "--show-error", "--max-time", "5", METRICS_URL])
        .expect("curl runs");
    assert!(output.success(), "scrape of {} failed: {}", host.name, output.stderr);
    output
        .stdout
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line without value: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("sample value is no number: {line}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("series {series} missing from {samples:#?}"))
}

#[test]
fn metrics_follow_cluster() {
    if !require_root("metrics_follow_cluster") {
        return;
    }
    // The lab starts controllers with the environment of this test; this file has one test, so
    // nothing else reads the environment meanwhile.
    std::env::set_var("COLEX_METRICS_LISTEN", METRICS_LISTEN);
    let lab = Lab::start_with_controllers(3, 2).expect("lab starts");

    let before: Vec<BTreeMap<String, f64>> = lab.controller_hosts.iter().map(scrape).collect();
    let leaders: Vec<usize> = (0..before.len())
        .filter(|index| value(&before[*index], "colex_raft_leader") == 1.0)
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one controller reports itself leader: {leaders:?}");
    let leader = leaders[0];
    for (index, samples) in before.iter().enumerate() {
        let term = value(samples, "colex_raft_term");
        assert!(term >= 1.0, "controller {index}: term {term}");
        let applied = value(samples, "colex_raft_applied_index");
        assert!(applied >= 1.0, "controller {index}: applied index {applied}");
        let committed = value(samples, "colex_raft_commit_index");
        assert!(committed >= applied, "controller {index}: commit index {committed} below applied {applied}");
        assert_eq!(value(samples, "colex_silo_instances{state=\"up\"}"), 0.0, "controller {index}: no silo yet");
        assert_eq!(value(samples, "colex_pending_instances"), 0.0, "controller {index}: nothing pending");
        if index != leader {
            assert_eq!(value(samples, "colex_raft_leader"), 0.0, "controller {index} is a follower");
            assert!(
                !samples.contains_key("colex_hosts{state=\"up\"}"),
                "follower {index} exports no host states: {samples:#?}"
            );
        }
    }
    assert_eq!(value(&before[leader], "colex_hosts{state=\"up\"}"), 2.0, "leader counts both hosts up");
    assert_eq!(value(&before[leader], "colex_hosts{state=\"down\"}"), 0.0, "leader counts no host down");
    assert_eq!(value(&before[leader], "colex_hosts{state=\"draining\"}"), 0.0, "leader counts no host draining");

    let file = lab.write_file("sleepers.hcl", SLEEPERS).expect("silo file");
    let up = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    // Followers apply the agents' reports a heartbeat after the leader.
    let deadline = Instant::now() + APPLY_TIMEOUT;
    let after = loop {
        let after: Vec<BTreeMap<String, f64>> = lab.controller_hosts.iter().map(scrape).collect();
        let all_up = after
            .iter()
            .all(|samples| samples.get("colex_silo_instances{state=\"up\"}") == Some(&2.0));
        if all_up || Instant::now() >= deadline {
            break after;
        }
        thread::sleep(Duration::from_millis(200));
    };
    for (index, samples) in after.iter().enumerate() {
        assert_eq!(
            value(samples, "colex_silo_instances{state=\"up\"}"),
            2.0,
            "controller {index} counts both instances up"
        );
        assert!(
            value(samples, "colex_raft_applied_index") > value(&before[index], "colex_raft_applied_index"),
            "controller {index}: applied index moved"
        );
    }
    let placements: f64 = after
        .iter()
        .map(|samples| value(samples, "colex_placement_latency_seconds_count"))
        .sum();
    assert!(placements >= 1.0, "some controller timed the up: {placements}");
    let leader_placements = value(&after[leader], "colex_placement_latency_seconds_count");
    assert_eq!(leader_placements, 1.0, "the leader served the one up");
    let leader_seconds = value(&after[leader], "colex_placement_latency_seconds_sum");
    assert!(
        leader_seconds > 0.0 && leader_seconds < 10.0,
        "the leader's placement took {leader_seconds} s"
    );
    assert_eq!(
        value(&after[leader], "colex_raft_leader"),
        1.0,
        "the leader kept its leadership"
    );

    let unknown = lab.controller_hosts[0]
        .run(
            "curl",
            &["--silent", "--output", "/dev/null", "--write-out", "%{http_code}", "http://127.0.0.1:9469/other"],
        )
        .expect("curl runs");
    assert_eq!(unknown.stdout.trim(), "404", "a path other than /metrics is not found");
}
