//! `logs` of a silo with two instances on two hosts: the output of both, line by line, each
//! line prefixed with its instance and host, and with `-f` as the lines are written. A silo
//! that printed nothing gets one stderr line per instance.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use colex_cluster_tests::table::parse_table;
use colex_cluster_tests::{require_root, Lab};

/// Two instances that print a numbered line every 200 ms.
const TICKER: &str = r#"
Silo "t" {
  name  = "ticker"
  count = 2

  binary {
    path = "/bin/sh"
    args = ["-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
  }
}
"#;

/// Two instances that print nothing.
const QUIET: &str = r#"
Silo "q" {
  name  = "quiet"
  count = 2

  binary {
    path = "/bin/sleep"
    args = ["3600"]
  }
}
"#;

/// How long `logs -f` may take to show the growing output of both instances.
const FOLLOW_DEADLINE: Duration = Duration::from_secs(20);
/// New lines each instance must print after the first one `logs -f` showed.
const FOLLOWED_LINES: u32 = 5;

/// Splits `PREFIX | tick N` into the prefix and N.
fn tick_of(line: &str) -> Option<(String, u32)> {
    let (prefix, text) = line.split_once(" | ")?;
    let number = text.strip_prefix("tick ")?.trim().parse().ok()?;
    Some((prefix.trim_end().to_owned(), number))
}

#[test]
fn logs_merge_instances_on_two_hosts() {
    if !require_root("logs_merge_instances_on_two_hosts") {
        return;
    }
    let lab = Lab::start(2).expect("lab starts");
    lab.wait_for_hosts_up().expect("hosts up");
    let file = lab.write_file("ticker.hcl", TICKER).expect("silo file");
    let file = file.to_str().expect("utf-8 path").to_owned();
    let up = lab.cli(&["up", &file]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    // The prefix of each instance is `NAME[INDEX] HOST`, the host as `list` shows it.
    let listed = lab.cli(&["list"]).expect("list runs");
    let rows = parse_table(&listed.stdout);
    let mut prefixes = Vec::new();
    for index in 0..2 {
        let name = format!("ticker[{index}]");
        let row = rows
            .iter()
            .find(|row| row["NAME"] == name)
            .unwrap_or_else(|| panic!("{name} listed:\n{}", listed.stdout));
        prefixes.push(format!("{name} {}", row["HOST"]));
    }
    let hosts: Vec<&str> = prefixes.iter().filter_map(|prefix| prefix.split(' ').nth(1)).collect();
    assert_ne!(hosts[0], hosts[1], "spread puts the instances on two hosts:\n{}", listed.stdout);

    // Without -f: what both instances wrote so far, every line prefixed.
    std::thread::sleep(Duration::from_millis(600));
    let logs = lab.cli(&["logs", "ticker"]).expect("logs runs");
    assert!(logs.success(), "logs failed: {}", logs.stderr);
    for prefix in &prefixes {
        assert!(
            logs.stdout.lines().any(|line| tick_of(line).is_some_and(|(seen, _)| &seen == prefix)),
            "no line of {prefix} in:\n{}",
            logs.stdout
        );
    }
    assert!(
        logs.stdout.lines().all(|line| tick_of(line).is_some()),
        "every line is `PREFIX | tick N`:\n{}",
        logs.stdout
    );

    // One instance by index: its lines alone, without a prefix.
    let single = lab.cli(&["logs", "ticker[1]"]).expect("logs runs");
    assert!(single.success(), "logs ticker[1] failed: {}", single.stderr);
    assert!(
        single.stdout.lines().next().is_some_and(|line| line.starts_with("tick ")),
        "ticker[1] alone:\n{}",
        single.stdout
    );

    // With -f: lines of both keep coming as they are written.
    let mut follow = lab.spawn_cli(&["logs", "-f", "ticker"]).expect("logs -f starts");
    let stdout = follow.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + FOLLOW_DEADLINE;
    // First and last tick seen of each prefix.
    let mut seen: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut all = Vec::new();
    let followed = |seen: &BTreeMap<String, (u32, u32)>| {
        prefixes.iter().all(|prefix| {
            seen.get(prefix)
                .is_some_and(|(first, last)| *last >= first + FOLLOWED_LINES)
        })
    };
    while !followed(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines_rx.recv_timeout(left) else {
            break;
        };
        if let Some((prefix, tick)) = tick_of(&line) {
            let entry = seen.entry(prefix).or_insert((tick, tick));
            entry.1 = entry.1.max(tick);
        }
        all.push(line);
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();
    assert!(
        followed(&seen),
        "logs -f did not show {FOLLOWED_LINES} new lines of each of {prefixes:?} within {FOLLOW_DEADLINE:?}; seen {seen:?}:\n{}",
        all.join("\n")
    );

    let down = lab.cli(&["down", &file]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());

    // A silo that printed nothing: one stderr line per instance, so that a user can
    // distinguish empty output from a broken `logs`.
    let quiet = lab.write_file("quiet.hcl", QUIET).expect("silo file");
    let quiet = quiet.to_str().expect("utf-8 path").to_owned();
    let up = lab.cli(&["up", &quiet]).expect("up runs");
    assert!(up.success(), "up quiet failed: {}\n{}", up.stderr, lab.logs());
    let logs = lab.cli(&["logs", "quiet"]).expect("logs runs");
    assert!(logs.success(), "logs quiet failed: {}", logs.stderr);
    assert_eq!(logs.stdout, "", "quiet prints nothing");
    let mut lines: Vec<&str> = logs.stderr.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        ["no output yet from quiet[0] (stdout)", "no output yet from quiet[1] (stdout)"],
        "stderr of logs quiet"
    );
    let single = lab.cli(&["logs", "--stderr", "quiet[1]"]).expect("logs runs");
    assert!(single.success(), "logs quiet[1] failed: {}", single.stderr);
    assert_eq!(single.stdout, "");
    assert_eq!(single.stderr, "no output yet from quiet[1] (stderr)\n");
    let down = lab.cli(&["down", &quiet]).expect("down runs");
    assert!(down.success(), "down quiet failed: {}\n{}", down.stderr, lab.logs());
}
