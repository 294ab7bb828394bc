//! `colex-cli up` in a lab of three controllers and one agent host: progress lines from the
//! controller's watch stream, also through a follower, `--detach`, a failed start, and a
//! `--wait` that ends before the silo runs.

use std::time::{Duration, Instant};

use colex_cluster_tests::table::parse_table;
use colex_cluster_tests::{require_root, Lab};

/// Exit code of a cluster error, as docs/cli.md lists it.
const EXIT_CLUSTER_ERROR: i32 = 2;
/// Time the lab may take to show a detached silo UP.
const DETACHED_START_TIMEOUT: Duration = Duration::from_secs(30);

fn sleeper(name: &str) -> String {
    format!(
        r#"
Silo "s" {{
  name = "{name}"

  binary {{
    path = "/bin/sleep"
    args = ["1000000"]
  }}
}}
"#
    )
}

const BROKEN: &str = r#"
Silo "b" {
  name = "broken"

  binary {
    path = "/bin/no-such-program"
  }
}
"#;

/// Returns the index of a controller that is not the Raft leader.
fn follower(lab: &Lab) -> usize {
    let output = lab.cli(&["controllers"]).expect("controllers runs");
    assert!(output.success(), "controllers failed: {}", output.stderr);
    let rows = parse_table(&output.stdout);
    let leader_address = rows
        .iter()
        .find(|row| row.get("LEADER").map(String::as_str) == Some("yes"))
        .and_then(|row| row.get("ADDRESS").cloned())
        .unwrap_or_else(|| panic!("no leader in:\n{}", output.stdout));
    (0..lab.controller_hosts.len())
        .find(|index| lab.controller_address_at(*index) != leader_address)
        .expect("a follower")
}

#[test]
fn up_reports_progress() {
    if !require_root("up_reports_progress") {
        return;
    }
    let lab = Lab::start_with_controllers(3, 1).expect("lab starts");
    let host = lab.hosts[0].name.clone();

    // Through a follower, which forwards both the write and the watch to the leader.
    let follower = follower(&lab);
    let file = lab.write_file("first.hcl", &sleeper("first")).expect("silo file");
    let up = lab.cli_at(follower, &["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up through follower {follower} failed: {}\n{}", up.stderr, lab.logs());
    eprintln!("up through follower {follower}:\n{}", up.stdout);
    let lines: Vec<&str> = up.stdout.lines().collect();
    let placed = lines.iter().position(|line| *line == format!("first: placed on {host}"));
    let running = lines
        .iter()
        .position(|line| line.starts_with(&format!("first: running on {host} at 10.69.")));
    assert!(running.is_some(), "a running line:\n{}", up.stdout);
    if let (Some(placed), Some(running)) = (placed, running) {
        assert!(placed < running, "placed before running:\n{}", up.stdout);
    }
    let rows = parse_table(&up.stdout);
    assert_eq!(rows.len(), 1, "one row:\n{}", up.stdout);
    assert_eq!(rows[0]["STATE"], "UP", "{}", up.stdout);

    // --detach returns after the write, before any agent report.
    let file = lab.write_file("second.hcl", &sleeper("second")).expect("silo file");
    let detached = lab.cli(&["up", "--detach", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(detached.success(), "up --detach failed: {}\n{}", detached.stderr, lab.logs());
    assert!(
        detached.stdout.contains("not waiting for the silos to run (--detach)"),
        "{}",
        detached.stdout
    );
    assert!(!detached.stdout.contains("second: running"), "{}", detached.stdout);
    let deadline = Instant::now() + DETACHED_START_TIMEOUT;
    loop {
        let listed = lab.cli(&["list"]).expect("list runs");
        let up_rows = parse_table(&listed.stdout)
            .into_iter()
            .filter(|row| row["NAME"] == "second" && row["STATE"] == "UP")
            .count();
        if up_rows == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "detached silo never ran:\n{}\n{}", listed.stdout, lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    }

    // A silo whose program is missing fails: non-zero exit, the reason on one line.
    let file = lab.write_file("broken.hcl", BROKEN).expect("silo file");
    let failed = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    eprintln!("up of a missing program:\n{}{}", failed.stdout, failed.stderr);
    assert_eq!(failed.code, Some(EXIT_CLUSTER_ERROR), "failed up: {}\n{}", failed.stderr, failed.stdout);
    assert!(failed.stdout.contains(&format!("broken: failed on {host}")), "{}", failed.stdout);
    assert_eq!(failed.stderr.trim().lines().count(), 1, "one line: {}", failed.stderr);
    assert!(
        failed.stderr.contains("silo broken failed to start on"),
        "reason: {}",
        failed.stderr
    );
    assert!(failed.stderr.contains("/bin/no-such-program"), "reason names the program: {}", failed.stderr);

    // A silo that does not run when --wait ends: non-zero exit with its state and the fix.
    let file = lab.write_file("impatient.hcl", &sleeper("impatient")).expect("silo file");
    let impatient = lab.cli(&["up", "--wait", "0", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert_eq!(impatient.code, Some(EXIT_CLUSTER_ERROR), "up --wait 0: {}\n{}", impatient.stderr, impatient.stdout);
    assert!(impatient.stderr.contains("silo impatient is still "), "reason: {}", impatient.stderr);
    assert!(impatient.stderr.contains(" after 0s; "), "reason names the wait: {}", impatient.stderr);
    assert!(impatient.stderr.contains("raise --wait"), "reason names the fix: {}", impatient.stderr);

    for name in ["first", "second", "broken", "impatient"] {
        let down = lab.cli(&["down", "--name", name]).expect("down runs");
        assert!(down.success(), "down {name} failed: {}", down.stderr);
    }
}
