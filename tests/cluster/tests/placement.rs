//! Placement filters and CPU reservations in a real cluster of two agent hosts whose configs
//! declare the labels zone=a and zone=b. A silo restricted to zone b lands on host b, two silos
//! reserving 60% CPU each land on different hosts, and a third is rejected with one line that
//! names both hosts' free CPU.

use anyhow::bail;
use colex_cluster_tests::table::parse_table;
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
        "a third silo of 60% CPU was placed:\n{}",
        up.stdout
    );
    let expected = format!(
        "silo cpu-three: no live host fits: {host_a}: 40% CPU free, needs 60%; \
         {host_b}: 40% CPU free, needs 60%. To place it, stop a silo on one of these hosts, \
         lower resources or start another agent"
    );
    let reason_line = up.stderr.lines().find(|line| line.contains("cpu-three"));
    assert!(
        reason_line.is_some_and(|line| line.contains(&expected)),
        "expected {expected:?} on one line of:\n{}",
        up.stderr
    );
    let listed = lab.cli(&["list"]).expect("list runs");
    assert_eq!(
        host_of(&listed.stdout, "cpu-three"),
        None,
        "the rejected silo is not stored:\n{}",
        listed.stdout
    );

    for file in [&zones, &cpu_files[0], &cpu_files[1]] {
        let down = lab.cli(&["down", file]).expect("down runs");
        assert!(
            down.success(),
            "down {file} failed: {}\n{}",
            down.stderr,
            lab.logs()
        );
    }
}
