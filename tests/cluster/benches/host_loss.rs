//! Host loss: time from cutting a host off the lab network until its silo runs on another host.
//!
//! A lab of three controllers and three agent hosts runs one silo with restart policy
//! `always`. Each run cuts the silo's host off (its port on the lab bridge goes down, so its
//! agent and the silo keep running but reach nothing), then lists the silo every
//! [`POLL_INTERVAL`] until it is UP on another host. The host is plugged back in and its stale
//! copy stopped before the next run, whose silo is then on another host. Needs root.
//!
//! ```sh
//! CARGO_TARGET_DIR=... cargo build --workspace --bins
//! COLEX_BENCH_RUNS=10 cargo bench -p colex-cluster-tests --bench host_loss
//! ```

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colex_cluster_tests::table::parse_table;
use colex_cluster_tests::Lab;
use rand::Rng;
use serde_json::Value;

/// Default number of timed runs.
const DEFAULT_RUNS: usize = 10;
/// The controller's default `--host-ttl-ms`, which the lab uses.
const HOST_TTL: Duration = Duration::from_secs(3);
/// Interval between two looks at the silo while it moves; the resolution of each figure.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Time a move or a recovery may take before the run counts as failed.
const WAIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The speed target: median time until the silo runs elsewhere.
const TARGET_MEDIAN: Duration = Duration::from_secs(5);
const SILO_NAME: &str = "moved";

fn silo_file(marker: u32) -> String {
    format!(
        r#"
Silo "s" {{
  name = "{SILO_NAME}"

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

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping host_loss: needs root for network namespaces, cgroups and mounts");
        return Ok(());
    }
    let runs = common::runs(DEFAULT_RUNS);
    let lab = Lab::start_with_controllers(3, 3).context("lab starts")?;
    // A sleep length no other process uses, so the silo's processes can be found by it.
    let marker: u32 = rand::rng().random_range(1_000_000..9_000_000);
    let file = lab.write_file("moved.hcl", &silo_file(marker))?;
    let up = lab.cli(&["up", &file.display().to_string()])?;
    if !up.success() {
        bail!("up failed: {}\n{}", up.stderr, lab.logs());
    }

    let mut samples = Vec::with_capacity(runs);
    for run in 1..=runs {
        let before = wait_for_single_copy(&lab, marker)?;
        let cut_index = lab
            .hosts
            .iter()
            .position(|host| host.name == before.host)
            .with_context(|| format!("silo runs on {}, which is no lab host", before.host))?;

        lab.cut_host(cut_index)?;
        let cut_at = Instant::now();
        let moved = wait_for_move(&lab, &before.host, cut_at);
        let elapsed = cut_at.elapsed();
        lab.reconnect_host(cut_index)?;
        let moved = moved?;
        println!(
            "run {run}/{runs}: {} cut, silo UP on {} after {:.0} ms",
            before.host,
            moved.host,
            common::millis(elapsed)
        );
        samples.push(elapsed);
        wait_for_host_up(&lab, &before.host)?;
    }

    let median = common::percentile(&samples, 50.0);
    let max = samples.iter().max().copied().unwrap_or_default();
    println!();
    println!("host loss, {runs} runs, 3 controllers, 3 hosts, host TTL {} ms:", HOST_TTL.as_millis());
    println!(
        "  median {:.0} ms, max {:.0} ms, min {:.0} ms (poll interval {} ms)",
        common::millis(median),
        common::millis(max),
        common::millis(samples.iter().min().copied().unwrap_or_default()),
        POLL_INTERVAL.as_millis()
    );
    println!(
        "  target: median at most {} ms: {}",
        TARGET_MEDIAN.as_millis(),
        if median <= TARGET_MEDIAN { "met" } else { "not met" }
    );
    let down = lab.cli(&["down", "--name", SILO_NAME])?;
    if !down.success() {
        eprintln!("down failed: {}", down.stderr);
    }
    Ok(())
}

/// Waits until the silo is UP on one host and exactly one copy of its program runs, and
/// returns the instance.
fn wait_for_single_copy(lab: &Lab, marker: u32) -> anyhow::Result<Instance> {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let listed = instances(lab, SILO_NAME);
        if let [instance] = listed.as_slice() {
            if instance.state == "UP" && copies(marker) == 1 {
                return Ok(instance.clone());
            }
        }
        if Instant::now() >= deadline {
            bail!("silo {SILO_NAME} did not settle on one copy: {listed:?}\n{}", lab.logs());
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until the silo is UP on a host other than `cut`.
fn wait_for_move(lab: &Lab, cut: &str, since: Instant) -> anyhow::Result<Instance> {
    loop {
        let listed = instances(lab, SILO_NAME);
        if let [instance] = listed.as_slice() {
            if instance.state == "UP" && instance.host != cut && !instance.host.is_empty() {
                return Ok(instance.clone());
            }
        }
        if since.elapsed() >= WAIT_TIMEOUT {
            bail!("silo {SILO_NAME} did not move off {cut}: {listed:?}\n{}", lab.logs());
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until `hosts` lists host `name` as up again.
fn wait_for_host_up(lab: &Lab, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let output = lab.cli(&["hosts"])?;
        let up = parse_table(&output.stdout)
            .iter()
            .any(|row| row.get("NAME").map(String::as_str) == Some(name) && row.get("STATE").map(String::as_str) == Some("up"));
        if up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("host {name} did not come back up\n{}", lab.logs());
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Returns the number of processes that run `sleep MARKER`.
fn copies(marker: u32) -> usize {
    let marker = marker.to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut pids = BTreeSet::new();
    for entry in entries.flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).filter(|arg| !arg.is_empty()).collect();
        if args.len() == 2 && args[0].ends_with(b"sleep") && args[1] == marker.as_bytes() {
            pids.insert(entry.file_name());
        }
    }
    pids.len()
}

/// One silo instance as `list --output json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub host: String,
    pub state: String,
}

/// Returns the instances of silo `name`, or an empty list when `list` failed, as it may while
/// the cluster elects a leader.
pub fn instances(lab: &Lab, name: &str) -> Vec<Instance> {
    let Ok(output) = lab.cli(&["list", "--output", "json"]) else {
        return Vec::new();
    };
    let Ok(document) = serde_json::from_str::<Value>(&output.stdout) else {
        return Vec::new();
    };
    document["silos"]
        .as_array()
        .map(|silos| {
            silos
                .iter()
                .filter(|silo| silo["name"] == name)
                .map(|silo| Instance {
                    id: silo["id"].as_str().unwrap_or_default().to_owned(),
                    host: silo["host"].as_str().unwrap_or_default().to_owned(),
                    state: silo["state"].as_str().unwrap_or_default().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}
