//! Acknowledged writes survive SIGKILL of every controller at once. The controllers sync each
//! Raft log append but leave most state machine commits unsynced, so after the crash they must
//! rebuild the newest silos from the log.

use std::process::Child;
use std::time::{Duration, Instant};

use colex_cluster_tests::table::parse_table;
use colex_cluster_tests::{require_root, Lab};

/// `up` requests sent at the same time in each burst.
const BURST_SIZE: usize = 6;
/// Bursts, each acknowledged in full before the next starts.
const BURSTS: usize = 3;
/// Time one `up` of a burst gets to return.
const UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until `child` exits or `timeout` passes, and kills it on timeout. Returns whether it
/// succeeded and its stderr.
fn wait_for_cli(mut child: Child, timeout: Duration) -> (bool, String) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                break;
            }
            Err(error) => return (false, format!("cannot wait for colex-cli: {error}")),
        }
    }
    match child.wait_with_output() {
        Ok(output) => (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ),
        Err(error) => (false, format!("cannot read colex-cli output: {error}")),
    }
}

/// Returns the sorted silo names that controller `index` lists.
fn listed_names(lab: &Lab, index: usize) -> anyhow::Result<Vec<String>> {
    let output = lab.cli_at(index, &["list"])?;
    if !output.success() {
        anyhow::bail!("colex-cli list failed: {}", output.stderr.trim());
    }
    let mut names: Vec<String> = parse_table(&output.stdout)
        .into_iter()
        .map(|row| row["NAME"].clone())
        .collect();
    names.sort();
    Ok(names)
}

#[test]
fn sigkill_of_every_controller_keeps_acknowledged_ups() {
    if !require_root("sigkill_of_every_controller_keeps_acknowledged_ups") {
        return;
    }
    let mut lab = Lab::start_with_controllers(3, 1).expect("lab starts");
    lab.wait_for_hosts_up().expect("agent host UP");

    let mut acknowledged = Vec::new();
    for burst in 0..BURSTS {
        let mut running = Vec::new();
        for slot in 0..BURST_SIZE {
            let name = format!("crash{burst}x{slot}");
            let file = lab.write_page_silo(&name);
            let child = lab.spawn_cli(&["up", &file]).expect("colex-cli up starts");
            running.push((name, child));
        }
        for (name, child) in running {
            let (succeeded, stderr) = wait_for_cli(child, UP_TIMEOUT);
            assert!(succeeded, "up of {name} failed: {stderr}\n{}", lab.logs());
            acknowledged.push(name);
        }
    }
    acknowledged.sort();

    // Right after the last acknowledgement, every controller dies at once.
    for index in 0..3 {
        lab.kill_controller(index).expect("controller killed");
    }
    for index in 0..3 {
        lab.start_controller_at(index).expect("controller restarts");
    }

    for index in 0..3 {
        lab.wait_until(
            &format!("controller {index} lists every acknowledged silo"),
            |lab| Ok(listed_names(lab, index).is_ok_and(|names| names == acknowledged)),
        )
        .expect("acknowledged silos listed after the crash");
    }
}
