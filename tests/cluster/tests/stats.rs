//! Silo usage in `colex-cli list`: the agent reports the CPU, memory, processes, traffic and
//! uptime of its running silos every few seconds, and both `list` tables show them.

use std::time::Duration;

use colex_cluster_tests::table::{parse_all_hosts, parse_table, Row};
use colex_cluster_tests::{require_root, Host, Lab};

/// A busy loop capped at a quarter of the host's CPU time, with two sleeping processes next to
/// it, and a web server to send traffic to.
const STATS_SILOS: &str = r#"
Silo "busy" {
  name = "busy"

  binary {
    path = "/bin/sh"
    args = ["-c", "sleep 1000 & sleep 1000 & while :; do :; done"]
  }

  resources {
    cpu_percent = 25
  }
}

Silo "web" {
  name = "stats-web"

  binary {
    path = "/bin/httpd"
    args = ["-f", "-p", "80", "-h", "/www"]
  }

  file "page" {
    path      = "page.html"
    silo_path = "/www/index.html"
  }
}
"#;

/// Processes in the busy silo: PID 1 (the silo's init), the `sh` running the loop and the two
/// `sleep`s.
const BUSY_PROCESSES: &str = "4";
/// Range of the CPU cell of the busy silo, around its 25 % limit. The lower bound leaves room
/// for a loaded test machine.
const BUSY_CPU_PERCENT: std::ops::RangeInclusive<f64> = 15.0..=35.0;
/// Size of the page the web silo serves, so each fetch adds at least this much to its tx bytes.
const PAGE_BYTES: usize = 16 * 1024;
const FETCHES: usize = 5;
/// Wait between two uptime readings.
const UPTIME_GAP: Duration = Duration::from_secs(3);

#[test]
fn list_shows_silo_usage() {
    if !require_root("list_shows_silo_usage") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let host = lab.hosts[0].clone();
    lab.write_file("page.html", &"x".repeat(PAGE_BYTES))
        .expect("page");
    let silo_file = lab.write_file("stats.hcl", STATS_SILOS).expect("silo file");
    let silo_file = silo_file.to_str().expect("utf-8 path");

    let up = lab.cli(&["up", silo_file]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    // CPU needs two reports, so it is the last cell to fill in.
    let mut last_busy_row = None;
    lab.wait_until("busy shows CPU in range", |lab| {
        let row = listed_row(lab, "busy")?;
        let in_range =
            parse_percent(&row["CPU"]).is_some_and(|percent| BUSY_CPU_PERCENT.contains(&percent));
        last_busy_row = Some(row);
        Ok(in_range)
    })
    .unwrap_or_else(|error| panic!("{error}\nlast busy row: {last_busy_row:?}"));
    let busy = last_busy_row.expect("busy row");
    assert_eq!(busy["PIDS"], BUSY_PROCESSES, "busy row: {busy:?}");
    let memory =
        parse_bytes(&busy["MEMORY"]).unwrap_or_else(|| panic!("memory cell {:?}", busy["MEMORY"]));
    assert!(memory > 0.0, "busy row: {busy:?}");
    assert_eq!(busy["RESTARTS"], "0");

    let first_uptime =
        parse_uptime(&busy["UPTIME"]).unwrap_or_else(|| panic!("uptime cell {:?}", busy["UPTIME"]));
    std::thread::sleep(UPTIME_GAP);
    let later = listed_row(&lab, "busy").expect("list");
    let later_uptime = parse_uptime(&later["UPTIME"])
        .unwrap_or_else(|| panic!("uptime cell {:?}", later["UPTIME"]));
    assert!(
        later_uptime >= first_uptime + UPTIME_GAP.as_secs() - 1,
        "uptime {first_uptime}s, then {later_uptime}s after {UPTIME_GAP:?}"
    );

    let all_hosts = lab
        .cli(&["list", "--all-hosts"])
        .expect("list --all-hosts runs");
    let busy_on_host = parse_all_hosts(&all_hosts.stdout)
        .into_iter()
        .find(|row| row["NAME"] == "busy")
        .unwrap_or_else(|| panic!("busy missing from:\n{}", all_hosts.stdout));
    assert!(
        parse_percent(&busy_on_host["CPU"]).is_some(),
        "per-host table:\n{}",
        all_hosts.stdout
    );
    assert_eq!(
        busy_on_host["PIDS"], BUSY_PROCESSES,
        "per-host table:\n{}",
        all_hosts.stdout
    );

    let mut before = None;
    lab.wait_until("stats-web shows traffic counters", |lab| {
        before = parse_net_io(&listed_row(lab, "stats-web")?["NET I/O"]);
        Ok(before.is_some())
    })
    .expect("traffic counters of stats-web");
    let (rx_before, tx_before) = before.expect("counters");

    let address = listed_row(&lab, "stats-web").expect("list")["ADDRESSES"].clone();
    for _ in 0..FETCHES {
        fetch_page(&host, &address);
    }

    // Each fetch sends the page, so tx grows by at least all the pages, and rx grows by the
    // requests. The next report shows both within a few seconds.
    let mut last_counters = None;
    lab.wait_until("stats-web shows the fetches in its counters", |lab| {
        let counters = parse_net_io(&listed_row(lab, "stats-web")?["NET I/O"]);
        last_counters = counters;
        Ok(counters.is_some_and(|(rx, tx)| {
            rx > rx_before && tx >= tx_before + (FETCHES * PAGE_BYTES) as f64
        }))
    })
    .unwrap_or_else(|error| {
        panic!(
            "{error}\nbefore: {:?}, last: {last_counters:?}",
            (rx_before, tx_before)
        )
    });

    let down = lab.cli(&["down", silo_file]).expect("down runs");
    assert!(
        down.success(),
        "down failed: {}\n{}",
        down.stderr,
        lab.logs()
    );
}

/// Returns the row of silo `name` in the `list` table.
fn listed_row(lab: &Lab, name: &str) -> anyhow::Result<Row> {
    let output = lab.cli(&["list"])?;
    anyhow::ensure!(output.success(), "list failed: {}", output.stderr);
    parse_table(&output.stdout)
        .into_iter()
        .find(|row| row["NAME"] == name)
        .ok_or_else(|| anyhow::anyhow!("silo {name} missing from:\n{}", output.stdout))
}

/// Fetches `http://ADDRESS/` from inside `host`'s namespace, retrying while the server starts.
fn fetch_page(host: &Host, address: &str) {
    let url = format!("http://{address}/");
    for _ in 0..50 {
        let output = host
            .run(
                "curl",
                &[
                    "--silent",
                    "--show-error",
                    "--max-time",
                    "2",
                    "--output",
                    "/dev/null",
                    &url,
                ],
            )
            .expect("curl runs");
        if output.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("curl {url} from {} kept failing", host.name);
}

/// Parses a CPU cell such as `25.1%`.
fn parse_percent(cell: &str) -> Option<f64> {
    cell.strip_suffix('%')?.parse().ok()
}

/// Parses a byte cell such as `880B` or `3.2MiB`, to within its one decimal.
fn parse_bytes(cell: &str) -> Option<f64> {
    let units = [
        ("KiB", 1024.0),
        ("MiB", 1024.0 * 1024.0),
        ("GiB", 1024.0 * 1024.0 * 1024.0),
        ("B", 1.0),
    ];
    units.iter().find_map(|(suffix, factor)| {
        let number: f64 = cell.strip_suffix(suffix)?.parse().ok()?;
        Some(number * factor)
    })
}

/// Parses a NET I/O cell such as `1.4KiB / 880B` into received and sent bytes.
fn parse_net_io(cell: &str) -> Option<(f64, f64)> {
    let (rx, tx) = cell.split_once(" / ")?;
    Some((parse_bytes(rx)?, parse_bytes(tx)?))
}

/// Parses an UPTIME cell such as `42s` or `4m12s` into seconds. Hours are not parsed, because
/// the test ends within minutes.
fn parse_uptime(cell: &str) -> Option<u64> {
    let seconds = cell.strip_suffix('s')?;
    match seconds.split_once('m') {
        Some((minutes, seconds)) => {
            Some(minutes.parse::<u64>().ok()? * 60 + seconds.parse::<u64>().ok()?)
        }
        None => seconds.parse().ok(),
    }
}
