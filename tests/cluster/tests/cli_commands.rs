//! The colex-cli commands against a lab of two agent hosts, asserting the table and the JSON
//! of each: `up`, `list` with its filters, `list --all-hosts --host`, `status`, `logs`
//! with `--tail` and `--stderr`, `hosts` with drain and undrain, and `down`. It also checks
//! that state words are coloured under a pseudo-terminal and nowhere else. The unfiltered
//! `list` and `list --all-hosts`, `controllers` and `validate` are compared with their JSON in
//! cli_json.rs. The completion scripts of bash, zsh and fish are checked here without a lab.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use colex_cluster_tests::process::{run_with_timeout, CLI_TIMEOUT};
use colex_cluster_tests::table::{parse_all_hosts, parse_table, Row};
use colex_cluster_tests::{bin_dir, require_root, CommandOutput, Lab};
use serde_json::Value;

/// Escape character that starts every colour code.
const ESCAPE: char = '\u{1b}';
/// Colour code of UP in tables, as `ESC [ 32 m` (green foreground).
const GREEN_UP: &str = "\u{1b}[32mUP\u{1b}[39m";
/// How long a silo's program may take until its output reaches `logs`.
const OUTPUT_DEADLINE: Duration = Duration::from_secs(10);

/// Two silos pinned to the two hosts: `cmd-web` (class web, tags demo and front) prints three
/// lines on stdout and one on stderr, `cmd-job` (class batch, tag demo) prints nothing.
fn silo_file(web_host: &str, job_host: &str) -> String {
    format!(
        r#"
Silo "w" {{
  name  = "cmd-web"
  class = "web"
  tags  = ["demo", "front"]

  binary {{
    path = "/bin/sh"
    args = ["-c", "echo out-1; echo out-2; echo out-3; echo err-1 >&2; exec sleep 3600"]
  }}

  placement {{
    hosts = ["{web_host}"]
  }}
}}

Silo "j" {{
  name  = "cmd-job"
  class = "batch"
  tags  = ["demo"]

  binary {{
    path = "/bin/sleep"
    args = ["3600"]
  }}

  placement {{
    hosts = ["{job_host}"]
  }}
}}
"#
    )
}

/// Runs colex-cli and asserts that it exited with 0 and wrote nothing on stderr.
fn cli_ok(lab: &Lab, args: &[&str]) -> CommandOutput {
    let output = lab.cli(args).expect("colex-cli runs");
    assert!(
        output.success(),
        "{args:?} failed: {}\n{}",
        output.stderr,
        lab.logs()
    );
    assert_eq!(output.stderr, "", "{args:?}: nothing on stderr");
    output
}

/// Runs colex-cli and parses its standard output as one JSON document.
fn json_of(lab: &Lab, args: &[&str]) -> Value {
    let output = cli_ok(lab, args);
    serde_json::from_str(&output.stdout).unwrap_or_else(|error| {
        panic!("{args:?}: stdout is not JSON ({error}):\n{}", output.stdout)
    })
}

fn array(value: &Value) -> &Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array, got {value}"))
}

fn string(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value}"))
}

/// Returns the names of the rows' NAME column, sorted.
fn row_names(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = rows.iter().map(|row| row["NAME"].clone()).collect();
    names.sort();
    names
}

/// Returns the `name` fields of a JSON array of silos, sorted.
fn json_names(silos: &Value) -> Vec<String> {
    let mut names: Vec<String> = array(silos)
        .iter()
        .map(|silo| string(&silo["name"]).to_owned())
        .collect();
    names.sort();
    names
}

/// Runs `list ARGS` as a table and as JSON and asserts that both show exactly `expected`.
fn assert_list_shows(lab: &Lab, args: &[&str], expected: &[&str]) {
    let mut table_args = vec!["list"];
    table_args.extend_from_slice(args);
    let table = cli_ok(lab, &table_args);
    let rows = parse_table(&table.stdout);
    assert_eq!(
        row_names(&rows),
        expected,
        "{table_args:?} table:\n{}",
        table.stdout
    );

    table_args.extend(["--output", "json"]);
    let listed = json_of(lab, &table_args);
    assert_eq!(
        json_names(&listed["silos"]),
        expected,
        "{table_args:?}: {listed}"
    );
}

/// Removes colour codes, `ESC [ ... m`, from text.
fn strip_colour(text: &str) -> String {
    let mut plain = String::new();
    let mut chars = text.chars();
    while let Some(char) = chars.next() {
        if char == ESCAPE {
            for code in chars.by_ref() {
                if code == 'm' {
                    break;
                }
            }
        } else {
            plain.push(char);
        }
    }
    plain
}

/// Runs colex-cli in the controller's namespace under a pseudo-terminal made by `script`, so
/// its standard output is a terminal. `no_color` sets `NO_COLOR=1`.
fn cli_in_terminal(lab: &Lab, args: &[&str], no_color: bool) -> CommandOutput {
    let mut words = vec![
        "nsenter".to_owned(),
        format!("--net=/run/netns/{}", lab.controller_host.netns),
        "--".to_owned(),
        lab.bins.join("colex-cli").display().to_string(),
        "--serv".to_owned(),
        lab.controller_address(),
    ];
    words.extend(args.iter().map(|arg| (*arg).to_owned()));
    let mut command = Command::new("script");
    command
        .args([
            "--quiet",
            "--return",
            "--command",
            &words.join(" "),
            "/dev/null",
        ])
        .env_remove("NO_COLOR")
        .envs(lab.cli_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if no_color {
        command.env("NO_COLOR", "1");
    }
    let output = run_with_timeout(command, CLI_TIMEOUT).expect("script runs colex-cli");
    assert!(
        output.success(),
        "{args:?} under a terminal failed: {}{}",
        output.stdout,
        output.stderr
    );
    output
}

/// Asserts that every table line of `output` has the same width once colour codes are removed.
fn assert_aligned(output: &str) {
    let plain = strip_colour(output);
    let widths: Vec<usize> = plain
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| line.starts_with('|'))
        .map(|line| line.chars().count())
        .collect();
    assert!(!widths.is_empty(), "a table in:\n{plain}");
    assert!(
        widths.iter().all(|width| *width == widths[0]),
        "aligned table:\n{plain}"
    );
}

/// Checks `up`'s table against the JSON listing that follows it.
fn check_up(lab: &Lab, file: &str, web_host: &str, job_host: &str) {
    let up = cli_ok(lab, &["up", file]);
    let rows = parse_table(&up.stdout);
    assert_eq!(rows.len(), 2, "two rows:\n{}", up.stdout);
    let listed = json_of(lab, &["list", "-o", "json"]);
    for (name, host) in [("cmd-web", web_host), ("cmd-job", job_host)] {
        let row = rows
            .iter()
            .find(|row| row["SILO"] == name)
            .unwrap_or_else(|| panic!("{name} in:\n{}", up.stdout));
        assert_eq!(row["STATE"], "UP", "{name}");
        assert_eq!(row["HOST"], host, "{name}: placement.hosts");
        let silo = array(&listed["silos"])
            .iter()
            .find(|silo| silo["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {listed}"));
        assert_eq!(row["ID"], string(&silo["id"]), "{name}: id");
        let interface = &silo["interfaces"][0];
        let expected = format!(
            "{} ({})",
            string(&interface["name"]),
            string(&interface["address"])
        );
        assert_eq!(row["INTERFACES"], expected, "{name}: interfaces");
    }
}

/// Checks `list` with `--host`, `--class` and `--tag`, alone, combined and with `--all-hosts`.
fn check_list_filters(lab: &Lab, web_host: &str, job_host: &str) {
    assert_list_shows(lab, &["--host", web_host], &["cmd-web"]);
    assert_list_shows(lab, &["--host", job_host], &["cmd-job"]);
    assert_list_shows(lab, &["--class", "batch"], &["cmd-job"]);
    assert_list_shows(lab, &["--class", "nope"], &[]);
    assert_list_shows(lab, &["--tag", "demo"], &["cmd-job", "cmd-web"]);
    assert_list_shows(lab, &["--tag", "demo", "--tag", "front"], &["cmd-web"]);
    assert_list_shows(lab, &["--tag", "front", "--host", job_host], &[]);

    // --all-hosts --host: only that host's heading and table.
    let table = cli_ok(lab, &["list", "--all-hosts", "--host", job_host]);
    let headings: Vec<&str> = table
        .stdout
        .lines()
        .filter(|line| line.starts_with("HOST "))
        .collect();
    assert_eq!(headings.len(), 1, "one host:\n{}", table.stdout);
    assert!(
        headings[0].starts_with(&format!("HOST {job_host} ")),
        "{}",
        table.stdout
    );
    let rows = parse_all_hosts(&table.stdout);
    assert_eq!(row_names(&rows), ["cmd-job"], "{}", table.stdout);
    let by_host = json_of(
        lab,
        &["list", "--all-hosts", "--host", job_host, "-o", "json"],
    );
    let hosts = array(&by_host["hosts"]);
    assert_eq!(hosts.len(), 1, "{by_host}");
    assert_eq!(string(&hosts[0]["name"]), job_host);
    assert_eq!(json_names(&hosts[0]["silos"]), ["cmd-job"]);

    // --all-hosts --tag: every host, the job's host with no matching silo.
    let table = cli_ok(lab, &["list", "--all-hosts", "--tag", "front"]);
    let rows = parse_all_hosts(&table.stdout);
    assert_eq!(row_names(&rows), ["cmd-web"], "{}", table.stdout);
    assert!(
        table.stdout.contains("(no matching silos)"),
        "{}",
        table.stdout
    );
    let by_host = json_of(
        lab,
        &["list", "--all-hosts", "--tag", "front", "-o", "json"],
    );
    let hosts = array(&by_host["hosts"]);
    assert_eq!(hosts.len(), 2, "{by_host}");
    for host in hosts {
        let expected: &[&str] = if host["name"] == web_host {
            &["cmd-web"]
        } else {
            &[]
        };
        assert_eq!(json_names(&host["silos"]), expected, "{host}");
    }

    // An unknown host is a user error naming the closest host: `-h2` typed as `-2h`.
    let (stem, suffix) = job_host.split_at(job_host.len() - 2);
    let swapped: String = suffix.chars().rev().collect();
    let typo = format!("{stem}{swapped}");
    for args in [
        vec!["list", "--host", &typo],
        vec!["list", "--host", &typo, "-o", "json"],
    ] {
        let output = lab.cli(&args).expect("colex-cli runs");
        assert_eq!(output.code, Some(1), "{args:?}: {}", output.stderr);
        assert_eq!(output.stdout, "", "{args:?}: nothing on stdout");
        assert_eq!(
            output.stderr,
            format!(
                "error: host {typo} not found; did you mean {job_host}? see `colex-cli hosts` for the names\n"
            ),
            "{args:?}"
        );
    }
}

/// Checks `status NAME`'s summary, instance row and events against its JSON.
fn check_status(lab: &Lab, web_host: &str) {
    let text = cli_ok(lab, &["status", "cmd-web"]).stdout;
    assert!(text.starts_with("Name:      cmd-web\n"), "{text}");
    assert!(text.contains("\nPlacement: spread; hosts "), "{text}");
    let (instances, events) = text
        .split_once("\nEVENTS\n")
        .unwrap_or_else(|| panic!("EVENTS in:\n{text}"));
    let instances = parse_table(instances);
    let events = parse_table(events);

    let document = json_of(lab, &["status", "cmd-web", "--output", "json"]);
    assert_eq!(document["name"], "cmd-web");
    assert_eq!(document["spec"]["placement_hosts"][0], web_host);
    assert_eq!(document["spec"]["count"], 1);
    let instance = &document["instances"][0];
    assert_eq!(instances.len(), 1, "{text}");
    assert_eq!(instances[0]["ID"], string(&instance["id"]));
    assert_eq!(instances[0]["HOST"], web_host);
    assert_eq!(instances[0]["STATE"], "UP");
    assert_eq!(string(&instance["state"]), "UP");
    assert_eq!(instances[0]["ADDRESSES"], string(&instance["addresses"][0]));

    // Events may be added between the two calls, so the table's are a prefix of the JSON's.
    let json_events = array(&instance["events"]);
    assert!(!events.is_empty(), "events in:\n{text}");
    assert!(events.len() <= json_events.len(), "{text}\n{document}");
    for (row, event) in events.iter().zip(json_events) {
        assert_eq!(row["EVENT"], string(&event["message"]));
        assert_eq!(row["INSTANCE"], "0");
        // Local time `YYYY-MM-DD HH:MM:SS` with its age such as `3s ago`.
        assert_eq!(row["TIME"].len(), 19, "{row:?}");
        assert!(row["AGE"].ends_with(" ago"), "{row:?}");
    }
    assert_eq!(string(&json_events[0]["kind"]), "placed");
}

/// Returns `logs ARGS`'s stdout once it contains `expected`, or panics after the deadline.
fn logs_once_written(lab: &Lab, args: &[&str], expected: &str) -> String {
    let deadline = Instant::now() + OUTPUT_DEADLINE;
    loop {
        let output = lab.cli(args).expect("colex-cli runs");
        assert!(output.success(), "{args:?} failed: {}", output.stderr);
        if output.stdout.contains(expected) || Instant::now() >= deadline {
            return output.stdout;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Checks `logs` with and without `--tail` and `--stderr`.
fn check_logs(lab: &Lab) {
    let all = logs_once_written(lab, &["logs", "cmd-web"], "out-3");
    assert_eq!(all, "out-1\nout-2\nout-3\n");
    assert_eq!(
        cli_ok(lab, &["logs", "cmd-web", "--tail", "1"]).stdout,
        "out-3\n"
    );
    assert_eq!(
        cli_ok(lab, &["logs", "cmd-web", "--tail", "2"]).stdout,
        "out-2\nout-3\n"
    );
    let stderr = logs_once_written(lab, &["logs", "cmd-web", "--stderr"], "err-1");
    assert_eq!(stderr, "err-1\n");

    // A silo that wrote nothing: empty stdout and one line on stderr.
    let quiet = lab.cli(&["logs", "cmd-job"]).expect("colex-cli runs");
    assert!(quiet.success(), "{}", quiet.stderr);
    assert_eq!(quiet.stdout, "");
    assert_eq!(quiet.stderr.lines().count(), 1, "{}", quiet.stderr);
}

/// Returns the row of host `name` of a `hosts` table.
fn host_row<'a>(rows: &'a [Row], name: &str) -> &'a Row {
    rows.iter()
        .find(|row| row["NAME"] == name)
        .unwrap_or_else(|| panic!("host {name} in {rows:?}"))
}

/// Returns the JSON host named `name` of `hosts --output json`.
fn host_entry<'a>(document: &'a Value, name: &str) -> &'a Value {
    array(&document["hosts"])
        .iter()
        .find(|host| host["name"] == name)
        .unwrap_or_else(|| panic!("host {name} in {document}"))
}

/// Checks the `hosts` table against its JSON, and drain and undrain in both.
fn check_hosts(lab: &Lab, job_host: &str) {
    let table = cli_ok(lab, &["hosts"]);
    let rows = parse_table(&table.stdout);
    let document = json_of(lab, &["hosts", "-o", "json"]);
    assert_eq!(rows.len(), lab.hosts.len(), "{}", table.stdout);
    assert_eq!(
        array(&document["hosts"]).len(),
        lab.hosts.len(),
        "{document}"
    );
    for host in &lab.hosts {
        let row = host_row(&rows, &host.name);
        let entry = host_entry(&document, &host.name);
        assert_eq!(row["ADDRESS"], host.address.to_string());
        assert_eq!(row["ADDRESS"], string(&entry["address"]));
        assert_eq!(row["STATE"], "up");
        assert_eq!(string(&entry["state"]), "up");
        assert_eq!(row["SUBNET"], string(&entry["subnet"]));
        assert_eq!(row["ID"], string(&entry["id"]));
        assert_eq!(row["ID"].len(), 8, "{row:?}");
        assert!(row["ID"].bytes().all(|byte| byte.is_ascii_hexdigit()), "{row:?}");
        assert_eq!(row["SILOS"], "1", "one silo pinned to each host");
        assert_eq!(entry["silo_count"], 1);
        let cpus = entry["cpus"].as_u64().expect("cpus");
        assert!(
            row["CPU"].ends_with(&format!("/{cpus}")),
            "{row:?} against {entry}"
        );
    }

    // Drain: cmd-job is pinned to this host, so it stays.
    let drain = cli_ok(lab, &["hosts", "drain", job_host]);
    assert!(
        drain
            .stdout
            .starts_with(&format!("host {job_host} is draining: ")),
        "{}",
        drain.stdout
    );
    let rows = parse_table(&drain.stdout);
    assert_eq!(rows.len(), 1, "{}", drain.stdout);
    assert_eq!(host_row(&rows, job_host)["STATE"], "draining");
    let document = json_of(lab, &["hosts", "-o", "json"]);
    assert_eq!(host_entry(&document, job_host)["state"], "draining");
    assert_eq!(host_entry(&document, job_host)["draining"], true);

    let undrain = cli_ok(lab, &["hosts", "undrain", job_host]);
    assert!(
        undrain
            .stdout
            .starts_with(&format!("host {job_host} is no longer draining\n")),
        "{}",
        undrain.stdout
    );
    assert_eq!(
        host_row(&parse_table(&undrain.stdout), job_host)["STATE"],
        "up"
    );
    let document = json_of(lab, &["hosts", "-o", "json"]);
    assert_eq!(host_entry(&document, job_host)["state"], "up");
    assert_eq!(host_entry(&document, job_host)["draining"], false);
}

/// Checks that tables colour state words under a terminal only, never with NO_COLOR, in
/// pipes or in JSON, and that colour keeps the columns aligned.
fn check_colour(lab: &Lab) {
    let terminal = cli_in_terminal(lab, &["list"], false);
    assert!(
        terminal.stdout.contains(GREEN_UP),
        "green UP under a terminal: {:?}",
        terminal.stdout
    );
    assert_aligned(&terminal.stdout);
    let hosts = cli_in_terminal(lab, &["hosts"], false);
    assert!(
        hosts.stdout.contains("\u{1b}[32mup\u{1b}[39m"),
        "green up: {:?}",
        hosts.stdout
    );
    assert_aligned(&hosts.stdout);

    let no_color = cli_in_terminal(lab, &["list"], true);
    assert!(
        !no_color.stdout.contains(ESCAPE),
        "NO_COLOR: {:?}",
        no_color.stdout
    );
    let json = cli_in_terminal(lab, &["list", "-o", "json"], false);
    assert!(
        !json.stdout.contains(ESCAPE),
        "JSON under a terminal: {:?}",
        json.stdout
    );

    let piped = cli_ok(lab, &["list"]);
    assert!(!piped.stdout.contains(ESCAPE), "piped: {:?}", piped.stdout);
    let forced = cli_ok(lab, &["list", "--color", "always"]);
    assert!(
        forced.stdout.contains(GREEN_UP),
        "--color always: {:?}",
        forced.stdout
    );
    let never = cli_in_terminal(lab, &["list", "--color", "never"], false);
    assert!(
        !never.stdout.contains(ESCAPE),
        "--color never: {:?}",
        never.stdout
    );
}

/// Checks `down`'s table and that the silos are gone.
fn check_down(lab: &Lab, file: &str, web_host: &str, job_host: &str) {
    let down = cli_ok(lab, &["down", file]);
    let rows = parse_table(&down.stdout);
    assert_eq!(rows.len(), 2, "{}", down.stdout);
    for (name, host) in [("cmd-web", web_host), ("cmd-job", job_host)] {
        let row = rows
            .iter()
            .find(|row| row["SILO"] == name)
            .unwrap_or_else(|| panic!("{name} in:\n{}", down.stdout));
        assert_eq!(row["STATE"], "REMOVED", "{name}");
        assert_eq!(row["HOST"], host, "{name}");
        assert_eq!(row["INTERFACES"], "", "{name}");
    }
    let listed = json_of(lab, &["list", "-o", "json"]);
    assert_eq!(array(&listed["silos"]).len(), 0, "{listed}");
}

#[test]
fn commands_print_tables_and_json() {
    if !require_root("commands_print_tables_and_json") {
        return;
    }
    let lab = Lab::start(2).expect("lab starts");
    let web_host = lab.hosts[0].name.clone();
    let job_host = lab.hosts[1].name.clone();
    let file = lab
        .write_file("commands.hcl", &silo_file(&web_host, &job_host))
        .expect("silo file");
    let file = file.to_str().expect("utf-8 path").to_owned();

    check_up(&lab, &file, &web_host, &job_host);
    check_list_filters(&lab, &web_host, &job_host);
    check_status(&lab, &web_host);
    check_logs(&lab);
    check_hosts(&lab, &job_host);
    check_colour(&lab);
    check_down(&lab, &file, &web_host, &job_host);
}

#[test]
fn completions_name_subcommands() {
    let bins = bin_dir().expect("colex binaries are built");
    for shell in ["bash", "zsh", "fish"] {
        let mut command = Command::new(bins.join("colex-cli"));
        command
            .args(["completions", shell])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = run_with_timeout(command, CLI_TIMEOUT).expect("colex-cli runs");
        assert!(
            output.success(),
            "completions {shell} failed: {}",
            output.stderr
        );
        assert_eq!(output.stderr, "", "{shell}");
        assert!(
            output.stdout.contains("colex-cli"),
            "{shell} script names the program"
        );
        let subcommands = [
            "up",
            "down",
            "list",
            "status",
            "logs",
            "hosts",
            "controllers",
            "validate",
            "completions",
        ];
        // Words of letters, digits and `-`, so `colex__cli,up)` of bash contains `up`.
        let words: Vec<&str> = output
            .stdout
            .split(|char: char| !(char.is_ascii_alphanumeric() || char == '-'))
            .collect();
        for subcommand in subcommands {
            assert!(
                words.contains(&subcommand),
                "{shell} completions name {subcommand}"
            );
        }
        for option in ["all-hosts", "host", "class", "tag"] {
            assert!(
                output.stdout.contains(&format!("--{option}"))
                    || output.stdout.contains(&format!("-l {option}")),
                "{shell} completions offer list --{option}"
            );
        }
    }
}
