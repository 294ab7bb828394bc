//! `--output json` of colex-cli's read commands against a lab cluster: standard output must be
//! one JSON document and nothing else, and its fields must match the table output of the same
//! state. Also checks `COLEX_SERV` as the default of `--serv`, and the original tool's
//! argument order `--serv ADDR FILE up` and `... FILE down`.

use std::process::{Command, Stdio};

use colex_cluster_tests::process::{run_with_timeout, CLI_TIMEOUT};
use colex_cluster_tests::table::{parse_all_hosts, parse_table, Row};
use colex_cluster_tests::{bin_dir, require_root, CommandOutput, Lab};
use serde_json::Value;

/// Two silos with class and tags, so every column has a value to compare.
const TWO_SILOS: &str = r#"
Silo "a" {
  name  = "json-a"
  class = "batch"
  tags  = ["demo", "json"]

  binary {
    path = "/bin/sleep"
    args = ["3600"]
  }

  file "note" {
    path      = "note.txt"
    silo_path = "/note.txt"
  }
}

Silo "b" {
  name = "json-b"

  binary {
    path = "/bin/sleep"
    args = ["3600"]
  }
}
"#;

/// A silo file with an unknown attribute on line 3, column 3.
const INVALID: &str =
    "Silo \"s\" {\n  name = \"bad\"\n  colour = \"red\"\n  binary {\n    path = \"/bin/sh\"\n  }\n}\n";

/// Runs colex-cli and parses its standard output as one JSON document, asserting that it
/// succeeded and printed nothing else.
fn json_of(lab: &Lab, args: &[&str]) -> Value {
    let output = lab.cli(args).expect("colex-cli runs");
    assert!(output.success(), "{args:?} failed: {}", output.stderr);
    assert_eq!(output.stderr, "", "{args:?}: nothing on stderr");
    parse_json(args, &output)
}

fn parse_json(args: &[&str], output: &CommandOutput) -> Value {
    serde_json::from_str(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{args:?}: stdout is not one JSON document ({error}):\n{}",
            output.stdout
        )
    })
}

/// Returns a JSON string array joined as the tables join lists, with ", ".
fn joined(value: &Value) -> String {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
        .iter()
        .map(|item| item.as_str().unwrap_or_else(|| panic!("expected a string, got {item}")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn string(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value}"))
}

/// Asserts that a JSON silo matches a table row of the same silo, column by column.
fn assert_silo_matches(row: &Row, silo: &Value) {
    let name = &row["NAME"];
    assert_eq!(string(&silo["name"]), name);
    assert_eq!(string(&silo["id"]), row["ID"], "{name}: id");
    assert_eq!(string(&silo["class"]), row["CLASS"], "{name}: class");
    assert_eq!(joined(&silo["tags"]), row["TAGS"], "{name}: tags");
    assert_eq!(string(&silo["state"]), row["STATE"], "{name}: state");
    assert_eq!(joined(&silo["addresses"]), row["ADDRESSES"], "{name}: addresses");
    assert_eq!(
        silo["restarts"]
            .as_u64()
            .map(|restarts| restarts.to_string())
            .as_deref(),
        Some(row["RESTARTS"].as_str()),
        "{name}: restarts"
    );
    assert!(silo["exit_code"].is_null(), "{name}: no exit code while UP");
    let interfaces = silo["interfaces"].as_array().expect("interfaces array");
    assert_eq!(interfaces.len(), 1, "{name}: one interface");
    assert_eq!(
        interfaces[0]["address"], silo["addresses"][0],
        "{name}: interface address"
    );
    assert!(
        silo["usage"].is_object() || silo["usage"].is_null(),
        "{name}: usage is an object or null"
    );
}

/// Finds the JSON silo named `name` in an array of silos.
fn silo_named<'a>(silos: &'a Value, name: &str) -> &'a Value {
    silos
        .as_array()
        .expect("silos array")
        .iter()
        .find(|silo| silo["name"] == name)
        .unwrap_or_else(|| panic!("silo {name} missing from {silos}"))
}

/// Runs `colex-cli list` in the controller's namespace with COLEX_SERV set and no --serv.
fn list_with_env_serv(lab: &Lab, serv: &str) -> CommandOutput {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", lab.controller_host.netns))
        .arg("--")
        .arg(lab.bins.join("colex-cli"))
        .args(["list", "--output", "json"])
        .env("COLEX_SERV", serv)
        .envs(lab.cli_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_with_timeout(command, CLI_TIMEOUT).expect("colex-cli runs")
}

#[test]
fn read_commands_print_json_matching_tables() {
    if !require_root("read_commands_print_json_matching_tables") {
        return;
    }
    let lab = Lab::start(2).expect("lab starts");
    lab.write_file("note.txt", "hello\n").expect("note");
    let silo_file = lab.write_file("json.hcl", TWO_SILOS).expect("silo file");
    let silo_file = silo_file.to_str().expect("utf-8 path");

    // The original tool's order: `--serv ADDR FILE up`; lab.cli puts `--serv ADDR` first.
    let up = lab.cli(&[silo_file, "up"]).expect("up runs");
    assert!(up.success(), "FILE up failed: {}\n{}", up.stderr, lab.logs());
    assert_eq!(up.stdout.matches("| UP ").count(), 2, "both silos UP:\n{}", up.stdout);

    // list
    let table = lab.cli(&["list"]).expect("list runs");
    let rows = parse_table(&table.stdout);
    assert_eq!(rows.len(), 2, "two rows in:\n{}", table.stdout);
    let listed = json_of(&lab, &["list", "--output", "json"]);
    assert_eq!(listed["silos"].as_array().map(Vec::len), Some(2), "{listed}");
    for row in &rows {
        let silo = silo_named(&listed["silos"], &row["NAME"]);
        assert_silo_matches(row, silo);
        assert_eq!(string(&silo["host"]), row["HOST"], "{}: host", row["NAME"]);
    }
    assert_eq!(string(&silo_named(&listed["silos"], "json-a")["class"]), "batch");
    assert_eq!(joined(&silo_named(&listed["silos"], "json-a")["tags"]), "demo, json");

    // list --all-hosts
    let table = lab.cli(&["list", "--all-hosts"]).expect("list --all-hosts runs");
    let rows = parse_all_hosts(&table.stdout);
    let by_host = json_of(&lab, &["list", "--all-hosts", "-o", "json"]);
    let hosts = by_host["hosts"].as_array().expect("hosts array");
    assert_eq!(hosts.len(), lab.hosts.len(), "{by_host}");
    for host in hosts {
        let name = string(&host["name"]);
        let heading = table
            .stdout
            .lines()
            .find(|line| line.starts_with(&format!("HOST {name} ")))
            .unwrap_or_else(|| panic!("no heading for host {name} in:\n{}", table.stdout));
        let expected_heading = format!(
            "HOST {name}  address {}  state {}  subnet {}  silos {}",
            string(&host["address"]),
            string(&host["state"]),
            string(&host["subnet"]),
            host["silo_count"]
        );
        assert_eq!(heading, expected_heading, "host {name}: heading");
        assert!(
            host["cpus"].as_u64().is_some_and(|cpus| cpus > 0),
            "host {name}: cpus in {host}"
        );
        assert!(host["labels"].is_object(), "host {name}: labels object");
        let host_rows: Vec<&Row> = rows.iter().filter(|row| row["HOST"] == name).collect();
        let silos = host["silos"].as_array().expect("silos array");
        assert_eq!(silos.len(), host_rows.len(), "host {name}: silo count");
        for row in host_rows {
            let silo = silo_named(&host["silos"], &row["NAME"]);
            assert_silo_matches(row, silo);
            assert_eq!(string(&silo["host"]), name, "{}: host", row["NAME"]);
        }
    }

    // controllers
    let table = lab.cli(&["controllers"]).expect("controllers runs");
    let rows = parse_table(&table.stdout);
    let members = json_of(&lab, &["controllers", "--output", "json"]);
    let controllers = members["controllers"].as_array().expect("controllers array");
    assert_eq!(controllers.len(), rows.len(), "{members}");
    for (row, controller) in rows.iter().zip(controllers) {
        assert_eq!(
            controller["id"].as_u64().map(|id| id.to_string()).as_deref(),
            Some(row["ID"].as_str())
        );
        assert_eq!(string(&controller["address"]), row["ADDRESS"]);
        assert_eq!(string(&controller["role"]), row["ROLE"]);
        assert_eq!(controller["leader"].as_bool(), Some(row["LEADER"] == "yes"));
        assert_eq!(controller["reachable"].as_bool(), Some(row["STATE"] == "UP"));
        let applied = controller["last_applied"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |index| index.to_string());
        // The applied index grows between the two calls, so only its presence must match.
        assert_eq!(applied == "-", row["APPLIED"] == "-", "applied index in {controller}");
    }
    assert_eq!(string(&controllers[0]["address"]), lab.controller_address());

    // validate, valid and invalid
    let summary = lab.cli(&["validate", silo_file]).expect("validate runs");
    assert!(summary.success(), "validate failed: {}", summary.stderr);
    let validated = json_of(&lab, &["validate", "--output", "json", silo_file]);
    let file = &validated["files"][0];
    assert_eq!(string(&file["path"]), silo_file);
    assert_eq!(file["valid"], true);
    assert_eq!(file["problems"].as_array().map(Vec::len), Some(0));
    let silos = file["silos"].as_array().expect("silos array");
    assert_eq!(
        silos.len(),
        summary.stdout.lines().count(),
        "one summary line per silo:\n{}",
        summary.stdout
    );
    for (line, silo) in summary.stdout.lines().zip(silos) {
        let expected_start = format!(
            "{}: image {}, binary {}, {} file",
            string(&silo["name"]),
            string(&silo["image"]),
            string(&silo["binary"]),
            silo["files"]
        );
        assert!(line.starts_with(&expected_start), "summary {line:?} against {silo}");
    }
    assert_eq!(
        silo_named(&file["silos"], "json-a")["content_bytes"],
        6,
        "note.txt has 6 bytes"
    );
    assert_eq!(silo_named(&file["silos"], "json-a")["count"], 1);

    let invalid_file = lab.write_file("invalid.hcl", INVALID).expect("invalid file");
    let invalid_file = invalid_file.to_str().expect("utf-8 path");
    let args = ["validate", "--output", "json", silo_file, invalid_file];
    let output = lab.cli(&args).expect("validate runs");
    assert_eq!(
        output.code,
        Some(1),
        "an invalid file is a user error: {}",
        output.stderr
    );
    assert_eq!(
        output.stderr.lines().count(),
        1,
        "one line on stderr: {}",
        output.stderr
    );
    assert!(
        output.stderr.starts_with("error: 1 of 2 silo files are invalid"),
        "{}",
        output.stderr
    );
    let report = parse_json(&args, &output);
    assert_eq!(report["files"][0]["valid"], true);
    let invalid = &report["files"][1];
    assert_eq!(invalid["valid"], false);
    assert_eq!(invalid["problems"][0]["line"], 3);
    assert_eq!(invalid["problems"][0]["column"], 3);
    assert!(
        string(&invalid["problems"][0]["message"]).contains("`colour`"),
        "{invalid}"
    );

    // COLEX_SERV is the default of --serv.
    let output = list_with_env_serv(&lab, &lab.controller_address());
    assert!(output.success(), "list with COLEX_SERV failed: {}", output.stderr);
    let from_env = parse_json(&["list"], &output);
    assert_eq!(from_env["silos"].as_array().map(Vec::len), Some(2), "{from_env}");

    // The original tool's order for down: `--serv ADDR FILE down`.
    let down = lab.cli(&[silo_file, "down"]).expect("down runs");
    assert!(down.success(), "FILE down failed: {}\n{}", down.stderr, lab.logs());
    assert_eq!(
        down.stdout.matches("REMOVED").count(),
        2,
        "down output:\n{}",
        down.stdout
    );
    let after = json_of(&lab, &["list", "--output", "json"]);
    assert_eq!(after["silos"].as_array().map(Vec::len), Some(0), "{after}");
}

#[test]
fn bash_completions_name_subcommands() {
    let bins = bin_dir().expect("colex binaries are built");
    let mut command = Command::new(bins.join("colex-cli"));
    command
        .args(["completions", "bash"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = run_with_timeout(command, CLI_TIMEOUT).expect("colex-cli runs");
    assert!(output.success(), "completions bash failed: {}", output.stderr);
    assert_eq!(output.stderr, "");
    assert!(
        output.stdout.contains("complete -F"),
        "a bash completion script:\n{}",
        output.stdout
    );
    for subcommand in ["up", "down", "list", "logs", "controllers", "validate", "completions"] {
        // The script's `case` matches the word after `colex-cli` as `colex__cli,WORD)`.
        assert!(
            output.stdout.contains(&format!("colex__cli,{subcommand})")),
            "bash completions name {subcommand}"
        );
    }
}
