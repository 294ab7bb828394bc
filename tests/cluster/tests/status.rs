//! `colex-cli status NAME` against a lab cluster. It checks the summary, the instance table and
//! the event table of a silo that exits with code 3 under `on-failure` with one restart, and of
//! a healthy silo of two instances, also of one instance by `NAME[INDEX]`. `--output json` must
//! parse and match the tables, and an unknown name must exit with 1 and name the closest silo.

use colex_cluster_tests::table::{parse_table, Row};
use colex_cluster_tests::{require_root, Lab};
use serde_json::Value;

/// Exits with code 3 after a second, so the agent reports it UP before each exit, and may be
/// restarted once.
const CRASHER: &str = r#"
Silo "c" {
  name = "crasher"

  binary {
    path = "/bin/sh"
    args = ["-c", "sleep 1; exit 3"]
  }

  restart {
    policy   = "on-failure"
    attempts = 1
    delay    = "200ms"
  }
}
"#;

const STEADY: &str = r#"
Silo "s" {
  name  = "steady"
  count = 2

  binary {
    path = "/bin/sh"
    args = ["-c", "exec sleep 3600"]
  }
}
"#;

/// Text output of `status`, split into the summary lines, the instance rows and the event rows.
struct StatusText {
    summary: String,
    instances: Vec<Row>,
    events: Vec<Row>,
}

fn status_text(lab: &Lab, name: &str) -> StatusText {
    let output = lab.cli(&["status", name]).expect("colex-cli runs");
    assert!(output.success(), "status {name} failed: {}", output.stderr);
    let (head, events) = output
        .stdout
        .split_once("\nEVENTS\n")
        .unwrap_or_else(|| panic!("no EVENTS heading in:\n{}", output.stdout));
    let summary_end = head.find("\n|").unwrap_or(head.len());
    StatusText {
        summary: head[..summary_end].to_owned(),
        instances: parse_table(head),
        events: parse_table(events),
    }
}

fn status_json(lab: &Lab, name: &str) -> Value {
    let output = lab.cli(&["status", name, "--output", "json"]).expect("colex-cli runs");
    assert!(output.success(), "status {name} -o json failed: {}", output.stderr);
    assert_eq!(output.stderr, "", "nothing on stderr");
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|error| panic!("stdout is not one JSON document ({error}):\n{}", output.stdout))
}

/// Returns the EVENT cells of the rows of instance `index`, oldest first.
fn events_of(rows: &[Row], index: u32) -> Vec<String> {
    rows.iter()
        .filter(|row| row["INSTANCE"] == index.to_string())
        .map(|row| row["EVENT"].clone())
        .collect()
}

/// Returns the position of the first of `events` at or after `from` that starts with `prefix`.
fn position_after(events: &[String], from: usize, prefix: &str) -> usize {
    events
        .iter()
        .skip(from)
        .position(|event| event.starts_with(prefix))
        .map(|offset| from + offset)
        .unwrap_or_else(|| panic!("no event {prefix:?} after position {from} in {events:?}"))
}

/// Asserts that a JSON instance matches its table row.
fn assert_instance_matches(row: &Row, instance: &Value) {
    let index = &row["INDEX"];
    assert_eq!(instance["index"].to_string(), *index, "index");
    assert_eq!(instance["id"].as_str(), Some(row["ID"].as_str()), "instance {index}: id");
    assert_eq!(instance["host"].as_str(), Some(row["HOST"].as_str()), "instance {index}: host");
    assert!(row["STATE"].starts_with(instance["state"].as_str().unwrap_or("?")), "instance {index}: state");
    assert_eq!(instance["restarts"].to_string(), row["RESTARTS"], "instance {index}: restarts");
    let addresses: Vec<&str> = instance["addresses"]
        .as_array()
        .expect("addresses array")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(addresses.join(", "), row["ADDRESSES"], "instance {index}: addresses");
}

#[test]
fn status_shows_instances_and_events() {
    if !require_root("status_shows_instances_and_events") {
        return;
    }
    let lab = Lab::start(2).expect("lab starts");
    let host_names: Vec<String> = lab.hosts.iter().map(|host| host.name.clone()).collect();

    let steady_file = lab.write_file("steady.hcl", STEADY).expect("silo file");
    let steady_file = steady_file.to_str().expect("utf-8 path");
    let up = lab.cli(&["up", steady_file]).expect("up runs");
    assert!(up.success(), "up steady failed: {}\n{}", up.stderr, lab.logs());

    let crasher_file = lab.write_file("crasher.hcl", CRASHER).expect("silo file");
    let crasher_file = crasher_file.to_str().expect("utf-8 path");
    // `up` may return before or after the first exit; the waits below are what count.
    lab.cli(&["up", crasher_file]).expect("up runs");
    lab.wait_until("crasher is EXITED (3) after one restart", |lab| {
        let rows = status_text(lab, "crasher").instances;
        Ok(rows.len() == 1 && rows[0]["STATE"] == "EXITED (3)" && rows[0]["RESTARTS"] == "1")
    })
    .expect("crasher settles");

    // crasher as text
    let crasher = status_text(&lab, "crasher");
    assert!(crasher.summary.contains("Name:      crasher"), "{}", crasher.summary);
    assert!(crasher.summary.contains(r#"Binary:    /bin/sh -c "sleep 1; exit 3""#), "{}", crasher.summary);
    assert!(crasher.summary.contains("Count:     1"), "{}", crasher.summary);
    assert!(
        crasher.summary.contains("Restart:   on-failure, 1 attempt, delay 200 ms"),
        "{}",
        crasher.summary
    );
    let row = &crasher.instances[0];
    assert!(host_names.contains(&row["HOST"]), "crasher host {} is a lab host", row["HOST"]);
    assert_eq!(row["EXIT CODE"], "3");

    let events = events_of(&crasher.events, 0);
    let placed = position_after(&events, 0, &format!("placed on {}", row["HOST"]));
    let started = position_after(&events, placed, "started");
    let exited = position_after(&events, started, "exited with code 3");
    let restarted = position_after(&events, exited, "restarted (restart 1)");
    let started_again = position_after(&events, restarted, "started");
    position_after(&events, started_again, "exited with code 3");
    for event in &crasher.events {
        assert!(event["AGE"].ends_with(" ago"), "age of {event:?}");
        assert_eq!(event["TIME"].len(), "2026-01-01 00:00:00".len(), "local time of {event:?}");
    }

    // crasher as JSON
    let document = status_json(&lab, "crasher");
    assert_eq!(document["name"], "crasher");
    assert_eq!(document["spec"]["count"], 1);
    assert_eq!(document["spec"]["restart_mode"], "on-failure");
    assert_eq!(document["spec"]["restart_attempts"], 1);
    let instances = document["instances"].as_array().expect("instances array");
    assert_eq!(instances.len(), 1, "{document}");
    assert_instance_matches(row, &instances[0]);
    assert_eq!(instances[0]["state"], "EXITED");
    assert_eq!(instances[0]["exit_code"], 3);
    let json_events = instances[0]["events"].as_array().expect("events array");
    let messages: Vec<String> = json_events
        .iter()
        .map(|event| event["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(messages, events, "JSON events match the table's");
    let exits: Vec<&Value> = json_events.iter().filter(|event| event["kind"] == "exited").collect();
    assert_eq!(exits.len(), 2, "{json_events:?}");
    for exit in exits {
        assert_eq!(exit["exit_code"], 3);
        assert!(exit["at_unix_ms"].as_u64().is_some_and(|ms| ms > 0), "{exit}");
        assert!(exit["time"].as_str().is_some_and(|time| time.ends_with('Z')), "{exit}");
    }

    // steady: two instances, each on a host, each placed and started
    lab.wait_until("both steady instances are UP", |lab| {
        let rows = status_text(lab, "steady").instances;
        Ok(rows.len() == 2 && rows.iter().all(|row| row["STATE"] == "UP"))
    })
    .expect("steady runs");
    let steady = status_text(&lab, "steady");
    assert!(steady.summary.contains("Count:     2"), "{}", steady.summary);
    let document = status_json(&lab, "steady");
    let instances = document["instances"].as_array().expect("instances array");
    assert_eq!(instances.len(), 2, "{document}");
    for (index, (row, instance)) in steady.instances.iter().zip(instances).enumerate() {
        let index = u32::try_from(index).expect("small index");
        assert!(host_names.contains(&row["HOST"]), "steady[{index}] host {}", row["HOST"]);
        assert!(!row["ADDRESSES"].is_empty(), "steady[{index}] has an address");
        assert_eq!(row["EXIT CODE"], "-");
        assert_instance_matches(row, instance);
        let events = events_of(&steady.events, index);
        let placed = position_after(&events, 0, &format!("placed on {}", row["HOST"]));
        position_after(&events, placed, "started");
    }
    assert_ne!(
        steady.instances[0]["HOST"], steady.instances[1]["HOST"],
        "spread puts the two instances on two hosts"
    );

    // One instance by NAME[INDEX], as `list` names it: the silo's spec and that instance alone.
    let second = status_text(&lab, "steady[1]");
    assert!(second.summary.contains("Name:      steady[1]"), "{}", second.summary);
    assert!(second.summary.contains("Count:     2"), "{}", second.summary);
    assert_eq!(second.instances.len(), 1, "one instance row: {:?}", second.instances);
    assert_eq!(second.instances[0]["INDEX"], "1");
    assert_eq!(second.instances[0]["ID"], steady.instances[1]["ID"]);
    assert!(
        second.events.iter().all(|event| event["INSTANCE"] == "1"),
        "only the events of instance 1: {:?}",
        second.events
    );
    let document = status_json(&lab, "steady[1]");
    let instances = document["instances"].as_array().expect("instances array");
    assert_eq!(instances.len(), 1, "{document}");
    assert_eq!(instances[0]["index"], 1);
    let out_of_range = lab.cli(&["status", "steady[2]"]).expect("colex-cli runs");
    assert_eq!(out_of_range.code, Some(1), "{}", out_of_range.stderr);
    assert_eq!(
        out_of_range.stderr.trim_end(),
        "error: silo steady[2] not found; silo steady has 2 instances: steady[0], steady[1]"
    );

    // unknown names
    let typo = lab.cli(&["status", "crashr"]).expect("colex-cli runs");
    assert_eq!(typo.code, Some(1), "an unknown silo is a user error: {}", typo.stderr);
    assert_eq!(typo.stdout, "");
    assert!(typo.stderr.contains("silo crashr not found"), "{}", typo.stderr);
    assert!(typo.stderr.contains("did you mean crasher?"), "{}", typo.stderr);
    assert_eq!(typo.stderr.lines().count(), 1, "{}", typo.stderr);
    let missing = lab.cli(&["status", "missing"]).expect("colex-cli runs");
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    assert!(missing.stderr.contains("silo missing not found"), "{}", missing.stderr);

    for file in [crasher_file, steady_file] {
        let down = lab.cli(&["down", file]).expect("down runs");
        assert!(down.success(), "down {file} failed: {}\n{}", down.stderr, lab.logs());
    }
}

#[test]
fn status_is_same_on_every_controller() {
    if !require_root("status_is_same_on_every_controller") {
        return;
    }
    let lab = Lab::start_with_controllers(3, 1).expect("lab starts");
    let steady_file = lab.write_file("steady.hcl", STEADY).expect("silo file");
    let steady_file = steady_file.to_str().expect("utf-8 path");
    let up = lab.cli(&["up", steady_file]).expect("up runs");
    assert!(up.success(), "up steady failed: {}\n{}", up.stderr, lab.logs());

    // Followers forward `status` to the leader, so every controller prints the leader's view.
    let mut documents = Vec::new();
    for index in 0..3 {
        let output = lab
            .cli_at(index, &["status", "steady", "--output", "json"])
            .expect("colex-cli runs");
        assert!(output.success(), "status at controller {index} failed: {}", output.stderr);
        let document: Value = serde_json::from_str(&output.stdout)
            .unwrap_or_else(|error| panic!("controller {index}: not JSON ({error}):\n{}", output.stdout));
        assert_eq!(document["instances"].as_array().map(Vec::len), Some(2), "controller {index}: {document}");
        documents.push(document);
    }
    let ids = |document: &Value| -> Vec<String> {
        document["instances"]
            .as_array()
            .expect("instances array")
            .iter()
            .map(|instance| instance["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(ids(&documents[0]), ids(&documents[1]), "controllers 0 and 1");
    assert_eq!(ids(&documents[0]), ids(&documents[2]), "controllers 0 and 2");
    let placed_times = |document: &Value| -> Vec<u64> {
        document["instances"]
            .as_array()
            .expect("instances array")
            .iter()
            .map(|instance| instance["events"][0]["at_unix_ms"].as_u64().unwrap_or_default())
            .collect()
    };
    assert_eq!(placed_times(&documents[0]), placed_times(&documents[1]), "event times match");
    assert!(placed_times(&documents[0]).iter().all(|ms| *ms > 0), "events carry the leader's time");

    let missing = lab.cli_at(1, &["status", "stedy"]).expect("colex-cli runs");
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    assert!(missing.stderr.contains("did you mean steady?"), "{}", missing.stderr);

    let down = lab.cli(&["down", steady_file]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
}
