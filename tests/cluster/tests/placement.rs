//! Placement in real clusters.
//!
//! - Two agent hosts whose configs declare the labels zone=a and zone=b: a silo restricted to
//!   zone b lands on host b, two silos reserving 60% CPU each land on different hosts, and a
//!   third stays pending with one line that names both hosts' free CPU.
//! - Three hosts and `count = 3`: one instance per host, an unchanged `up` keeps every
//!   instance, a changed spec replaces the instances one at a time in index order, and a count
//!   of 2 removes only the last instance.
//! - One full host: a silo that fits nowhere is pending with its reason and runs once a host
//!   with room joins.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;
use colex_cluster_tests::table::{parse_all_hosts, parse_table, Row};
use colex_cluster_tests::{require_root, Daemon, Lab};

/// A silo for each zone. Once both are placed, both configured agents have registered their
/// labels.
const ZONE_SILOS: &str = r#"
Silo "in-a" {
  name = "in-zone-a"

  binary {
    path = "/bin/sh"
    args = ["-c", "exec sleep 1000"]
  }

  placement {
    labels = { zone = "a" }
  }
}

Silo "in-b" {
  name = "in-zone-b"

  binary {
    path = "/bin/sh"
    args = ["-c", "exec sleep 1000"]
  }

  placement {
    labels = { zone = "b" }
  }
}
"#;

/// Returns a silo file with one silo that sleeps and reserves 60% of a host's CPU.
fn cpu_silo(name: &str) -> String {
    format!(
        r#"
Silo "s" {{
  name = "{name}"

  binary {{
    path = "/bin/sh"
    args = ["-c", "exec sleep 1000"]
  }}

  resources {{
    cpu_percent = 60
  }}
}}
"#
    )
}

/// Returns the HOST cell of silo `name` in a `list` output.
fn host_of(listing: &str, name: &str) -> Option<String> {
    parse_table(listing)
        .into_iter()
        .find(|row| row.get("NAME").map(String::as_str) == Some(name))
        .and_then(|row| row.get("HOST").cloned())
}

/// Replaces the agent of host `index` with one started with `--config` naming a file that
/// declares label zone=`zone`.
fn start_labeled_agent(lab: &mut Lab, index: usize, zone: &str) -> anyhow::Result<Daemon> {
    let config = lab.write_file(
        &format!("agent-h{}-labels.hcl", index + 1),
        &format!("labels = {{ zone = \"{zone}\" }}\n"),
    )?;
    lab.kill_agent(index)?;
    let host = lab.hosts[index].clone();
    let state_dir = host.state_dir.display().to_string();
    let config = config.display().to_string();
    Daemon::spawn_in_netns(
        &host.netns,
        &lab.bins.join("colex-agent"),
        &[
            "--join",
            &lab.controller_address(),
            "--name",
            &host.name,
            "--state-dir",
            &state_dir,
            "--bridge",
            &host.bridge,
            "--config",
            &config,
        ],
        &lab.dir
            .path()
            .join(format!("agent-h{}-labeled.log", index + 1)),
    )
}

#[test]
fn placement_follows_labels_and_cpu() {
    if !require_root("placement_follows_labels_and_cpu") {
        return;
    }
    let mut lab = Lab::start(2).expect("lab starts");
    let _agent_a = start_labeled_agent(&mut lab, 0, "a").expect("start the zone=a agent");
    let _agent_b = start_labeled_agent(&mut lab, 1, "b").expect("start the zone=b agent");
    let host_a = lab.hosts[0].name.clone();
    let host_b = lab.hosts[1].name.clone();

    // `up` is rejected for a missing label until both configured agents have registered.
    let zones = lab.write_file("zones.hcl", ZONE_SILOS).expect("silo file");
    let zones = zones.to_str().expect("utf-8 path").to_owned();
    lab.wait_until("both agents report their zone label", |lab| {
        let up = lab.cli(&["up", &zones])?;
        if up.success() {
            return Ok(true);
        }
        if up.stderr.contains("lacks label zone=") || up.stderr.contains("no live host") {
            return Ok(false);
        }
        bail!("up failed: {}", up.stderr)
    })
    .expect("zone silos placed");

    let listed = lab.cli(&["list"]).expect("list runs");
    assert_eq!(
        host_of(&listed.stdout, "in-zone-a").as_deref(),
        Some(host_a.as_str()),
        "the zone=a silo runs on host a:\n{}",
        listed.stdout
    );
    assert_eq!(
        host_of(&listed.stdout, "in-zone-b").as_deref(),
        Some(host_b.as_str()),
        "the zone=b silo runs on host b:\n{}",
        listed.stdout
    );

    let mut cpu_files = Vec::new();
    for name in ["cpu-one", "cpu-two", "cpu-three"] {
        let file = lab
            .write_file(&format!("{name}.hcl"), &cpu_silo(name))
            .expect("silo file");
        cpu_files.push(file.to_str().expect("utf-8 path").to_owned());
    }
    for file in &cpu_files[..2] {
        let up = lab.cli(&["up", file]).expect("up runs");
        assert!(
            up.success(),
            "up {file} failed: {}\n{}",
            up.stderr,
            lab.logs()
        );
    }
    let listed = lab.cli(&["list"]).expect("list runs");
    let first = host_of(&listed.stdout, "cpu-one").expect("cpu-one listed");
    let second = host_of(&listed.stdout, "cpu-two").expect("cpu-two listed");
    assert_ne!(
        first, second,
        "two silos of 60% CPU share a host:\n{}",
        listed.stdout
    );

    let up = lab.cli(&["up", &cpu_files[2]]).expect("up runs");
    assert!(
        !up.success(),
        "up of a third silo of 60% CPU reported success:\n{}",
        up.stdout
    );
    let expected = format!(
        "silo cpu-three: no live host fits: {host_a}: 40% CPU free, needs 60%; \
         {host_b}: 40% CPU free, needs 60%. To place it, stop a silo on one of these hosts, \
         lower resources or start another agent"
    );
    // `up` names the silo once, before the scheduler's reason.
    let reason_line = up.stderr.lines().find(|line| line.contains("cpu-three"));
    let unprefixed = expected.trim_start_matches("silo cpu-three: ");
    assert!(
        reason_line.is_some_and(|line| line.contains(unprefixed)),
        "expected {expected:?} on one line of:\n{}",
        up.stderr
    );
    let listed = lab.cli(&["list"]).expect("list runs");
    let row = row_named(&parse_table(&listed.stdout), "cpu-three");
    assert_eq!(
        row.as_ref()
            .map(|row| (row["STATE"].as_str(), row["HOST"].as_str())),
        Some(("PENDING", "-")),
        "the silo that fits nowhere is stored as pending:\n{}",
        listed.stdout
    );
    assert!(
        row.is_some_and(|row| row["MESSAGE"].contains(&expected)),
        "the pending silo's message is its reason:\n{}",
        listed.stdout
    );

    for file in [&zones, &cpu_files[0], &cpu_files[1], &cpu_files[2]] {
        let down = lab.cli(&["down", file]).expect("down runs");
        assert!(
            down.success(),
            "down {file} failed: {}\n{}",
            down.stderr,
            lab.logs()
        );
    }
}

/// Returns a silo file with silo `name` of `count` instances that sleep, each reserving
/// `cpu_percent` of its host's CPU.
fn counted_silo(name: &str, count: u32, cpu_percent: u32) -> String {
    sleeping_silo(name, count, cpu_percent, 1000)
}

/// Returns a silo file like [`counted_silo`] whose instances sleep `sleep_seconds`, so two
/// values give two specs.
fn sleeping_silo(name: &str, count: u32, cpu_percent: u32, sleep_seconds: u32) -> String {
    format!(
        r#"
Silo "s" {{
  name  = "{name}"
  count = {count}

  binary {{
    path = "/bin/sh"
    args = ["-c", "exec sleep {sleep_seconds}"]
  }}

  resources {{
    cpu_percent = {cpu_percent}
  }}
}}
"#
    )
}

/// Returns the row whose NAME is `name`.
fn row_named(rows: &[Row], name: &str) -> Option<Row> {
    rows.iter().find(|row| row["NAME"] == name).cloned()
}

/// Returns NAME to (ID, HOST, STATE) of every row of `list --all-hosts` whose name starts with
/// `prefix`.
fn instances_listed(lab: &Lab, prefix: &str) -> BTreeMap<String, (String, String, String)> {
    let listed = lab.cli(&["list", "--all-hosts"]).expect("list runs");
    parse_all_hosts(&listed.stdout)
        .into_iter()
        .filter(|row| row["NAME"].starts_with(prefix))
        .map(|row| {
            (
                row["NAME"].clone(),
                (row["ID"].clone(), row["HOST"].clone(), row["STATE"].clone()),
            )
        })
        .collect()
}

#[test]
fn count_three_spreads_and_changes_by_count() {
    if !require_root("count_three_spreads_and_changes_by_count") {
        return;
    }
    let lab = Lab::start(3).expect("lab starts");
    let three = lab
        .write_file("app-3.hcl", &counted_silo("app", 3, 10))
        .expect("silo file");
    let three = three.to_str().expect("utf-8 path").to_owned();

    let up = lab.cli(&["up", &three]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    assert_eq!(
        parse_table(&up.stdout).len(),
        3,
        "up shows one row per instance:\n{}",
        up.stdout
    );

    let first = instances_listed(&lab, "app");
    let names: Vec<&str> = first.keys().map(String::as_str).collect();
    assert_eq!(names, ["app[0]", "app[1]", "app[2]"], "{first:?}");
    let hosts: BTreeSet<&str> = first.values().map(|(_, host, _)| host.as_str()).collect();
    let lab_hosts: BTreeSet<&str> = lab.hosts.iter().map(|host| host.name.as_str()).collect();
    assert_eq!(hosts, lab_hosts, "one instance on each host: {first:?}");
    for (name, (_, _, state)) in &first {
        assert_eq!(state, "UP", "state of {name}");
    }

    let again = lab.cli(&["up", &three]).expect("up runs");
    assert!(again.success(), "up again failed: {}", again.stderr);
    assert!(
        again.stdout.contains("silo app is unchanged"),
        "up of an unchanged file says so:\n{}",
        again.stdout
    );
    assert_eq!(
        instances_listed(&lab, "app"),
        first,
        "an unchanged up keeps every instance"
    );

    let changed = lab
        .write_file("app-3-changed.hcl", &sleeping_silo("app", 3, 10, 1001))
        .expect("silo file");
    let changed = changed.to_str().expect("utf-8 path").to_owned();
    let up = lab.cli(&["up", &changed]).expect("up runs");
    assert!(
        up.success(),
        "up of a changed spec failed: {}\n{}",
        up.stderr,
        lab.logs()
    );
    let mut rolled = first.clone();
    lab.wait_until("every instance runs the changed spec", |lab| {
        let now = instances_listed(lab, "app");
        let replaced: Vec<bool> = first
            .iter()
            .map(|(name, (id, _, _))| now.get(name).is_none_or(|(now_id, _, _)| now_id != id))
            .collect();
        assert!(
            replaced.windows(2).all(|pair| pair[0] || !pair[1]),
            "instances are replaced in index order: {now:?}"
        );
        let not_up = now.values().filter(|(_, _, state)| state != "UP").count();
        let missing = first.len() - now.len();
        assert!(
            not_up + missing <= 1,
            "at most one instance is down during the replacement: {now:?}"
        );
        rolled = now;
        Ok(replaced.iter().all(|done| *done) && not_up == 0 && missing == 0)
    })
    .expect("rolling replacement finishes");
    for (name, (_, host, _)) in &first {
        assert_eq!(&rolled[name].1, host, "{name} is replaced on its host");
    }

    let two = lab
        .write_file("app-2.hcl", &sleeping_silo("app", 2, 10, 1001))
        .expect("silo file");
    let two = two.to_str().expect("utf-8 path").to_owned();
    let down_to_two = lab.cli(&["up", &two]).expect("up runs");
    assert!(
        down_to_two.success(),
        "up with count 2 failed: {}",
        down_to_two.stderr
    );
    let mut expected = rolled.clone();
    expected.remove("app[2]");
    lab.wait_until("instance 2 is removed", |lab| {
        Ok(instances_listed(lab, "app") == expected)
    })
    .expect("count 2 removes only instance 2 and keeps the others' ids and hosts");

    let down = lab.cli(&["down", &two]).expect("down runs");
    assert!(
        down.success(),
        "down failed: {}\n{}",
        down.stderr,
        lab.logs()
    );
    assert_eq!(
        down.stdout.matches("REMOVED").count(),
        2,
        "down output:\n{}",
        down.stdout
    );
}

#[test]
fn pending_silo_runs_when_host_joins() {
    if !require_root("pending_silo_runs_when_host_joins") {
        return;
    }
    let mut lab = Lab::start(1).expect("lab starts");
    let host_a = lab.hosts[0].name.clone();
    let filler = lab
        .write_file("filler.hcl", &counted_silo("filler", 1, 60))
        .expect("silo file");
    let filler = filler.to_str().expect("utf-8 path").to_owned();
    let waiter = lab
        .write_file("waiter.hcl", &counted_silo("waiter", 1, 60))
        .expect("silo file");
    let waiter = waiter.to_str().expect("utf-8 path").to_owned();

    let up = lab.cli(&["up", &filler]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    let up = lab.cli(&["up", &waiter]).expect("up runs");
    assert!(!up.success(), "a pending silo fails up:\n{}", up.stdout);
    let reason = format!(
        "silo waiter: no live host fits: {host_a}: 40% CPU free, needs 60%. To place it, stop a \
         silo on one of these hosts, lower resources or start another agent"
    );
    assert!(
        up.stderr.contains("silo waiter is PENDING")
            && up.stderr.contains(reason.trim_start_matches("silo waiter: ")),
        "expected the pending reason {reason:?} in:\n{}",
        up.stderr
    );

    let listed = lab.cli(&["list"]).expect("list runs");
    let row = row_named(&parse_table(&listed.stdout), "waiter").expect("waiter listed");
    assert_eq!(row["STATE"], "PENDING", "{}", listed.stdout);
    assert_eq!(row["HOST"], "-", "{}", listed.stdout);
    assert_eq!(row["MESSAGE"], reason, "{}", listed.stdout);
    let all_hosts = lab.cli(&["list", "--all-hosts"]).expect("list runs");
    let pending_row = row_named(&parse_all_hosts(&all_hosts.stdout), "waiter")
        .expect("waiter listed by list --all-hosts");
    assert_eq!(pending_row["HOST"], "-", "{}", all_hosts.stdout);
    assert_eq!(pending_row["STATE"], "PENDING", "{}", all_hosts.stdout);

    let joined = lab.add_agent_host().expect("a second host joins");
    let host_b = lab.hosts[joined].name.clone();
    lab.wait_until("the pending silo runs on the new host", |lab| {
        let listed = lab.cli(&["list"])?;
        Ok(row_named(&parse_table(&listed.stdout), "waiter")
            .is_some_and(|row| row["STATE"] == "UP" && row["HOST"] == host_b))
    })
    .expect("waiter placed on the joined host");

    let up = lab.cli(&["up", &waiter]).expect("up runs");
    assert!(up.success(), "up of the placed silo failed: {}", up.stderr);
    assert!(
        up.stdout.contains("silo waiter is unchanged"),
        "{}",
        up.stdout
    );

    for file in [&filler, &waiter] {
        let down = lab.cli(&["down", file]).expect("down runs");
        assert!(
            down.success(),
            "down {file} failed: {}\n{}",
            down.stderr,
            lab.logs()
        );
    }
}
