//! Replicated controllers: three controllers in lab namespaces, one agent
//! host. Writes sent to a follower, the loss of the leader, a restart of
//! every controller and a removal that would lose the quorum.

use std::process::Command;
use std::time::{Duration, Instant};

use colex_cluster_tests::table::{parse_all_hosts, parse_table, Row};
use colex_cluster_tests::{bin_dir, process, require_root, Lab};

/// Time the cluster gets to elect a new leader after the old one was
/// killed. openraft 0.9.25 followers wait out the leader lease (400 ms) plus a
/// random election timeout (200 to 400 ms) before they start an election. The
/// rest is margin for a loaded machine.
const NEW_LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns the rows of `colex-cli controllers` run against every controller.
fn controllers(lab: &Lab) -> anyhow::Result<Vec<Row>> {
    let output = lab.cli(&["controllers"])?;
    if !output.success() {
        anyhow::bail!("colex-cli controllers failed: {}", output.stderr.trim());
    }
    Ok(parse_table(&output.stdout))
}

/// Returns the lab index of the controller the table marks as leader.
/// Returns the text of every controller log of `lab`.
fn controller_logs(lab: &Lab) -> String {
    let Ok(entries) = std::fs::read_dir(lab.dir.path()) else {
        return String::new();
    };
    entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("controller")))
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .map(|path| std::fs::read_to_string(path).unwrap_or_default())
        .collect()
}

fn leader_index(lab: &Lab, rows: &[Row]) -> Option<usize> {
    let leader = rows.iter().find(|row| row["LEADER"] == "yes")?;
    (0..lab.controller_hosts.len()).find(|index| lab.controller_address_at(*index) == leader["ADDRESS"])
}

/// Returns the silo names a `list` or `list --stale` printed.
fn listed_names(output: &str) -> Vec<String> {
    let mut names: Vec<String> = parse_table(output).into_iter().map(|row| row["NAME"].clone()).collect();
    names.sort();
    names
}

/// Waits until `cli_at(index, args)` lists exactly `expected` silos.
fn wait_for_silos(lab: &Lab, index: usize, args: &[&str], expected: &[&str]) {
    lab.wait_until(&format!("controller {index} `{}` lists {expected:?}", args.join(" ")), |lab| {
        let output = lab.cli_at(index, args)?;
        Ok(output.success() && listed_names(&output.stdout) == expected)
    })
    .expect("silos listed");
}

/// Waits until the agent host is listed UP, which it is only once its agent
/// has a session with the leader.
fn wait_for_host_up(lab: &Lab) {
    let heading = format!("HOST {} ", lab.hosts[0].name);
    lab.wait_until("the agent host is UP at the leader", |lab| {
        let output = lab.cli(&["list", "--all-hosts"])?;
        Ok(output
            .stdout
            .lines()
            .any(|line| line.starts_with(&heading) && line.contains("state UP")))
    })
    .expect("host UP");
}


#[test]
fn three_controllers_survive_leader_loss() {
    if !require_root("three_controllers_survive_leader_loss") {
        return;
    }
    let mut lab = Lab::start_with_controllers(3, 1).expect("lab starts");

    // Bootstrap plus two joins: three voters, one leader, all responding.
    let rows = controllers(&lab).expect("controllers listed");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|row| row["ROLE"] == "voter"), "{rows:?}");
    assert!(rows.iter().all(|row| row["STATE"] == "UP"), "{rows:?}");
    assert_eq!(rows.iter().filter(|row| row["LEADER"] == "yes").count(), 1, "{rows:?}");
    let leader = leader_index(&lab, &rows).expect("leader is a lab controller");

    // `up` sent to a follower is forwarded to the leader.
    let follower = (leader + 1) % 3;
    let first_file = lab.write_page_silo("first");
    let up = lab.cli_at(follower, &["up", &first_file]).expect("up runs");
    assert!(up.success(), "up through follower {follower} failed: {}\n{}", up.stderr, lab.logs());
    for index in 0..3 {
        wait_for_silos(&lab, index, &["list"], &["first"]);
        wait_for_silos(&lab, index, &["list", "--stale"], &["first"]);
    }
    // The leader replicates on AppendEntries links under TLS, not on the gRPC fallback.
    let logs = controller_logs(&lab);
    assert!(logs.matches("AppendEntries link accepted").count() >= 2, "{}", lab.logs());
    assert!(!logs.contains("offers no AppendEntries link"), "{}", lab.logs());
    assert!(!logs.contains("rejected an AppendEntries link"), "{}", lab.logs());
    let hosts = parse_all_hosts(&lab.cli(&["list", "--all-hosts"]).expect("list").stdout);
    let first = hosts.iter().find(|row| row["NAME"] == "first").expect("first listed");
    assert_eq!(first["HOST"], lab.hosts[0].name);
    assert_eq!(lab.hosts[0].fetch_page(&first["ADDRESSES"]), "page of first\n");

    // `logs` through a follower is relayed from the leader, which has the agent's session.
    let logs = lab.cli_at(follower, &["logs", "first", "--stderr"]).expect("logs runs");
    assert!(logs.success(), "logs through follower {follower} failed: {}\n{}", logs.stderr, lab.logs());

    // A frozen controller still completes TCP handshakes in the kernel, so the CLI detects it
    // by its missing response and moves on to the next address.
    let frozen_pid = lab.controller_pid(follower).expect("follower runs").to_string();
    let signal = |name: &str| {
        let status = std::process::Command::new("kill").args([name, &frozen_pid]).status().expect("kill runs");
        assert!(status.success(), "kill {name} {frozen_pid}");
    };
    signal("-STOP");
    let serv = format!("{},{}", lab.controller_address_at(follower), lab.controller_address_at(leader));
    let started = Instant::now();
    let listed = lab.cli_with_serv(&serv, &["list"]);
    let waited = started.elapsed();
    signal("-CONT");
    let listed = listed.expect("list runs");
    assert!(listed.success(), "list past a frozen controller failed: {}", listed.stderr);
    assert!(listed.stdout.contains("first"), "{}", listed.stdout);
    assert!(waited < Duration::from_secs(10), "list took {waited:?} past a frozen controller");

    // SIGKILL the leader: a new one is elected within seconds.
    lab.kill_controller(leader).expect("leader killed");
    let killed_at = Instant::now();
    let new_leader = loop {
        let found = controllers(&lab).ok().and_then(|rows| leader_index(&lab, &rows));
        match found {
            Some(index) if index != leader => break index,
            _ => {}
        }
        assert!(killed_at.elapsed() < NEW_LEADER_TIMEOUT, "no new leader {NEW_LEADER_TIMEOUT:?} after the kill\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("new leader {new_leader} after {:?}", killed_at.elapsed());

    // The agent moves its session to the new leader; then a second silo
    // goes up through a surviving controller.
    wait_for_host_up(&lab);
    let survivor = (0..3).find(|index| *index != leader).expect("a surviving controller");
    let second_file = lab.write_page_silo("second");
    let up = lab.cli_at(survivor, &["up", &second_file]).expect("up runs");
    assert!(up.success(), "up after the leader's loss failed: {}\n{}", up.stderr, lab.logs());
    for index in (0..3).filter(|index| *index != leader) {
        wait_for_silos(&lab, index, &["list"], &["first", "second"]);
    }

    // The killed controller restarts and catches up.
    lab.start_controller_at(leader).expect("killed controller restarts");
    wait_for_silos(&lab, leader, &["list", "--stale"], &["first", "second"]);

    // A restart of the whole cluster keeps both silos.
    for index in 0..3 {
        lab.stop_controller_at(index).expect("controller stops");
    }
    for index in 0..3 {
        lab.start_controller_at(index).expect("controller restarts");
    }
    for index in 0..3 {
        wait_for_silos(&lab, index, &["list"], &["first", "second"]);
    }
    wait_for_host_up(&lab);

    // With one follower down, removing the other would leave one live voter
    // of two: rejected, with the reason and what to do.
    let rows = controllers(&lab).expect("controllers listed");
    let leader = leader_index(&lab, &rows).expect("a leader after the restart");
    let down = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    lab.kill_controller(down).expect("follower killed");
    let other_id = rows
        .iter()
        .find(|row| row["ADDRESS"] == lab.controller_address_at(other))
        .map(|row| row["ID"].clone())
        .expect("other follower listed");
    let removal = lab.cli(&["controllers", "remove", &other_id]).expect("remove runs");
    assert!(!removal.success(), "removal that loses the quorum was accepted: {}", removal.stdout);
    let message = removal.stderr.trim();
    assert_eq!(message.lines().count(), 1, "one-line error expected: {message}");
    assert!(message.contains("fewer than the 2 a quorum needs"), "{message}");
    assert!(message.contains("restart those controllers"), "{message}");
    let rows = controllers(&lab).expect("controllers listed");
    assert_eq!(rows.len(), 3, "the rejected removal changed the membership: {rows:?}");
    lab.start_controller_at(down).expect("follower restarts");
}

/// An empty data folder with neither --bootstrap nor --join is an error
/// naming both flags. Runs without root, on loopback.
#[test]
fn empty_data_dir_needs_bootstrap_or_join() {
    let bins = bin_dir().expect("binaries built");
    let data_dir = tempfile::tempdir().expect("temporary folder");
    let mut command = Command::new(bins.join("colex-controller"));
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let output = process::run_with_timeout(command, Duration::from_secs(20)).expect("controller runs");
    assert!(!output.success(), "controller started without a cluster");
    let error_lines: Vec<&str> = output.stderr.lines().filter(|line| line.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "{}", output.stderr);
    assert!(error_lines[0].contains("--bootstrap"), "{}", error_lines[0]);
    assert!(error_lines[0].contains("--join"), "{}", error_lines[0]);
    assert!(!data_dir.path().join("node-id").exists(), "no node id written");
}
