//! Silos and their supervisors across agent restarts, restart policies and logs, with the real
//! binaries in lab namespaces.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use colex_cluster_tests::ledger::Ledger;
use colex_cluster_tests::table::{parse_all_hosts, Row};
use colex_cluster_tests::{require_root, Host, Lab};

/// Returns the silo rows of `list --all-hosts`.
fn list_rows(lab: &Lab) -> anyhow::Result<Vec<Row>> {
    Ok(parse_all_hosts(&lab.cli(&["list", "--all-hosts"])?.stdout))
}

/// Reads the pid of the silo's PID 1 from its record in the agent's state folder.
fn init_pid(host: &Host, silo_id: &str) -> u32 {
    let path = host.run_dir().join("silos").join(silo_id).join("silo.json");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read silo record")).expect("parse silo record");
    let pid = record["init_pid"].as_u64().expect("init_pid recorded");
    u32::try_from(pid).expect("pid fits u32")
}

/// Returns the start time of `pid` in clock ticks since boot, or `None` once it is gone.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn write_silo(lab: &Lab, name: &str, body: &str) -> String {
    let path = lab.write_file(&format!("{name}.hcl"), body).expect("write silo file");
    path.to_str().expect("utf-8 path").to_owned()
}

#[test]
fn agent_sigkill_keeps_silo_and_pid() {
    if !require_root("agent_sigkill_keeps_silo_and_pid") {
        return;
    }
    let mut lab = Lab::start(1).expect("lab starts");
    let host = lab.hosts[0].clone();
    let before = Ledger::take_settled(&host).expect("ledger");
    let silo_file = write_silo(
        &lab,
        "sleeper",
        "Silo \"s\" {\n  name = \"sleeper\"\n  binary {\n    path = \"/bin/sleep\"\n    args = [\"1000\"]\n  }\n}\n",
    );
    let up = lab.cli(&["up", &silo_file]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    let rows = list_rows(&lab).expect("list");
    assert_eq!(rows.len(), 1);
    let silo_id = rows[0]["ID"].clone();
    let pid = init_pid(&host, &silo_id);
    let ticks = start_ticks(pid).expect("silo init runs");

    lab.kill_agent(0).expect("agent killed with SIGKILL");
    lab.wait_until("the host is DOWN", |lab| Ok(lab.cli(&["list", "--all-hosts"])?.stdout.contains("state DOWN")))
        .expect("host marked down");
    assert_eq!(start_ticks(pid), Some(ticks), "the silo runs on while its agent is dead");

    lab.restart_agent(0).expect("agent starts again");
    lab.wait_until("the host is UP and the silo listed UP", |lab| {
        let output = lab.cli(&["list", "--all-hosts"])?;
        let rows = parse_all_hosts(&output.stdout);
        Ok(output.stdout.contains("state UP") && rows.len() == 1 && rows[0]["STATE"] == "UP")
    })
    .expect("silo listed after the agent restart");
    let rows = list_rows(&lab).expect("list");
    assert_eq!(rows[0]["ID"], silo_id, "same silo id");
    assert_eq!(rows[0]["RESTARTS"], "0");
    assert_eq!(init_pid(&host, &silo_id), pid, "same PID 1 in the record");
    assert_eq!(start_ticks(pid), Some(ticks), "same PID 1 process, never a second copy");
    let record_dirs = std::fs::read_dir(host.run_dir().join("silos")).expect("silos dir").count();
    assert_eq!(record_dirs, 1, "one silo on the host");

    let down = lab.cli(&["down", "--name", "sleeper"]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
    assert!(down.stdout.contains("REMOVED"), "down output:\n{}", down.stdout);
    assert_eq!(start_ticks(pid), None, "the adopted silo stopped");
    assert!(list_rows(&lab).expect("list").is_empty());
    assert_eq!(Ledger::take(&host).expect("ledger"), before, "nothing left after down");
}

#[test]
fn on_failure_restarts_twice_then_stays_exited() {
    if !require_root("on_failure_restarts_twice_then_stays_exited") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let host = lab.hosts[0].clone();
    let before = Ledger::take_settled(&host).expect("ledger");
    let silo_file = write_silo(
        &lab,
        "failing",
        "Silo \"f\" {\n  name = \"failing\"\n  binary {\n    path = \"/bin/sh\"\n    args = [\"-c\", \"echo run; exit 1\"]\n  }\n  restart {\n    policy   = \"on-failure\"\n    attempts = 2\n    delay    = \"500ms\"\n  }\n}\n",
    );
    // `up` may see the first run UP or already EXITED; the listing below is what counts.
    let up = lab.cli(&["up", &silo_file]).expect("up runs");
    assert!(!up.stderr.contains("not supported"), "restart rejected: {}", up.stderr);

    lab.wait_until("the silo is EXITED after two restarts", |lab| {
        let rows = list_rows(lab)?;
        Ok(rows.len() == 1 && rows[0]["STATE"] == "EXITED (1)" && rows[0]["RESTARTS"] == "2")
    })
    .expect("silo settles as EXITED");
    // A third restart would come 500 ms after the last exit.
    std::thread::sleep(Duration::from_secs(2));
    let rows = list_rows(&lab).expect("list");
    assert_eq!(rows[0]["STATE"], "EXITED (1)", "the silo stays exited");
    assert_eq!(rows[0]["RESTARTS"], "2");

    let logs = lab.cli(&["logs", "failing"]).expect("logs runs");
    assert!(logs.success(), "logs failed: {}", logs.stderr);
    assert_eq!(logs.stdout, "run\nrun\nrun\n", "the program ran 3 times in total");

    let down = lab.cli(&["down", &silo_file]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
    assert_eq!(Ledger::take(&host).expect("ledger"), before, "nothing left after down");
}

#[test]
fn logs_follow_prints_lines_as_written() {
    if !require_root("logs_follow_prints_lines_as_written") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let silo_file = write_silo(
        &lab,
        "ticker",
        "Silo \"t\" {\n  name = \"ticker\"\n  binary {\n    path = \"/bin/sh\"\n    args = [\"-c\", \"i=0; while true; do echo line $i; echo err $i >&2; i=$((i+1)); sleep 0.5; done\"]\n  }\n}\n",
    );
    let up = lab.cli(&["up", &silo_file]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    let mut follower = lab.spawn_cli(&["logs", "ticker", "-f"]).expect("logs -f starts");
    let stdout = follower.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    let mut received: Vec<(Instant, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !received.iter().any(|(_, line)| line == "line 6") {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(entry) => received.push(entry),
            Err(_) => panic!("logs -f printed only {received:?}\n{}", lab.logs()),
        }
    }
    let still_running = follower.try_wait().expect("poll logs -f").is_none();
    let follower_pid = nix::unistd::Pid::from_raw(i32::try_from(follower.id()).expect("pid fits i32"));
    let _ = nix::sys::signal::kill(follower_pid, nix::sys::signal::Signal::SIGTERM);
    let _ = follower.wait();
    assert!(still_running, "logs -f keeps running");

    let numbers: Vec<u32> = received
        .iter()
        .map(|(_, line)| line.strip_prefix("line ").and_then(|n| n.parse().ok()).expect("a `line N` line"))
        .collect();
    let expected: Vec<u32> = (numbers[0]..=6).collect();
    assert_eq!(numbers, expected, "lines in order, none lost or repeated");
    // The program writes a line every 500 ms, so lines 3 to 6 take 1.5 s to be written. A
    // follower that prints lines as they come receives them spread over about that time.
    let at = |wanted: &str| received.iter().find(|(_, line)| line == wanted).map(|(at, _)| *at).expect("line seen");
    let spread = at("line 6").duration_since(at("line 3"));
    assert!(spread >= Duration::from_millis(1200), "lines 3 to 6 arrived within {spread:?}");

    let tail = lab.cli(&["logs", "ticker", "--tail", "2", "--stderr"]).expect("logs runs");
    assert!(tail.success(), "logs --tail failed: {}", tail.stderr);
    let tail_lines: Vec<&str> = tail.stdout.lines().collect();
    assert_eq!(tail_lines.len(), 2, "{:?}", tail.stdout);
    assert!(tail_lines.iter().all(|line| line.starts_with("err ")), "{:?}", tail.stdout);

    let missing = lab.cli(&["logs", "no-such-silo"]).expect("logs runs");
    assert!(!missing.success());
    assert!(missing.stderr.contains("no-such-silo"), "{}", missing.stderr);

    let down = lab.cli(&["down", &silo_file]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
}
