//! colex-cli's error messages and exit codes, as a table of bad invocations. Each must print
//! exactly one `error:` line on standard error and nothing on standard output. It must exit
//! with the code docs/cli.md gives: 1 for a user error, 2 for a cluster error.
//!
//! The rows that need no cluster run the binary directly and need no root. The rows about
//! silos and controllers run against a lab cluster.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use colex_cluster_tests::process::{run_with_timeout, CLI_TIMEOUT};
use colex_cluster_tests::table::parse_table;
use colex_cluster_tests::{bin_dir, require_root, CommandOutput, Lab};

/// Exit code for a mistake in the command or the silo file.
const EXIT_USER_ERROR: i32 = 1;
/// Exit code for a cluster that cannot do what was asked.
const EXIT_CLUSTER_ERROR: i32 = 2;

/// One bad invocation and the one-line error it must produce.
struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Environment variables set for this run only.
    env: Vec<(&'static str, String)>,
    code: i32,
    /// The whole of standard error, without the trailing newline.
    stderr: String,
}

impl Case {
    fn new(name: &'static str, args: &[&str], code: i32, stderr: impl Into<String>) -> Self {
        Case {
            name,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            env: Vec::new(),
            code,
            stderr: stderr.into(),
        }
    }

    fn with_env(mut self, name: &'static str, value: &str) -> Self {
        self.env.push((name, value.to_owned()));
        self
    }
}

/// Checks one case's output; every condition has its own assert so a failure names one cause.
fn check(case: &Case, output: &CommandOutput) {
    let name = case.name;
    assert_eq!(
        output.code,
        Some(case.code),
        "{name}: exit code; stderr: {}",
        output.stderr
    );
    assert_eq!(output.stdout, "", "{name}: nothing on stdout");
    assert!(
        output.stderr.ends_with('\n'),
        "{name}: stderr ends with a newline: {:?}",
        output.stderr
    );
    assert_eq!(
        output.stderr.lines().count(),
        1,
        "{name}: one line on stderr: {:?}",
        output.stderr
    );
    assert_eq!(output.stderr.trim_end(), case.stderr, "{name}: message");
}

/// Runs colex-cli outside any cluster, with COLEX_SERV unset unless the case sets it.
fn run_local(bins: &Path, case: &Case) -> CommandOutput {
    let mut command = Command::new(bins.join("colex-cli"));
    command.args(&case.args).env_remove("COLEX_SERV");
    for (name, value) in &case.env {
        command.env(name, value);
    }
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    run_with_timeout(command, CLI_TIMEOUT).unwrap_or_else(|error| panic!("{}: colex-cli runs: {error:#}", case.name))
}

/// Returns a loopback address whose port is very likely closed: bound, then released.
fn closed_loopback_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local address").to_string()
}

fn write(folder: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = folder.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn local_errors_are_one_line() {
    let bins = bin_dir().expect("colex binaries are built");
    let folder = tempfile::Builder::new()
        .prefix("colex-cli-errors-")
        .tempdir()
        .expect("temporary folder");
    let folder = folder.path();

    let missing = folder.join("missing.hcl");
    let directory = folder.join("folder.hcl");
    std::fs::create_dir(&directory).expect("create folder");
    let not_utf8 = write(folder, "latin1.hcl", b"Silo \"s\" { name = \"caf\xe9\" }\n");
    // The comma between the two tags is missing; the error points at the second tag.
    let syntax = write(
        folder,
        "syntax.hcl",
        b"Silo \"s\" {\n  name = \"web\"\n  tags = [\"a\" \"b\"]\n}\n",
    );
    let unknown_field = write(
        folder,
        "colour.hcl",
        b"Silo \"s\" {\n  name = \"web\"\n  colour = \"red\"\n  binary {\n    path = \"/bin/sh\"\n  }\n}\n",
    );
    let bad_value = write(
        folder,
        "cpu.hcl",
        b"Silo \"s\" {\n  name = \"web\"\n  binary {\n    path = \"/bin/sh\"\n  }\n  resources = { cpu_percent = 500 }\n}\n",
    );
    let closed = [closed_loopback_address(), closed_loopback_address()];
    let both_closed = closed.join(",");

    let cases = [
        Case::new(
            "unknown command",
            &["frobnicate"],
            EXIT_USER_ERROR,
            "error: unknown command 'frobnicate'; run `colex-cli --help` for usage",
        ),
        Case::new(
            "misspelt command",
            &["lst"],
            EXIT_USER_ERROR,
            "error: unknown command 'lst' (did you mean 'list'?); run `colex-cli --help` for usage",
        ),
        Case::new(
            "unknown flag",
            &["list", "--all-host"],
            EXIT_USER_ERROR,
            "error: unknown flag '--all-host' (did you mean '--all-hosts'?); run `colex-cli list --help` for usage",
        ),
        Case::new(
            "missing argument",
            &["logs"],
            EXIT_USER_ERROR,
            "error: missing required argument <NAME>; run `colex-cli logs --help` for usage",
        ),
        Case::new(
            "invalid output format",
            &["list", "--output", "yaml"],
            EXIT_USER_ERROR,
            "error: invalid value 'yaml' for '--output <OUTPUT>'; possible values: table, json; run `colex-cli list --help` for usage",
        ),
        Case::new(
            "controller id not a number",
            &["controllers", "remove", "abc"],
            EXIT_USER_ERROR,
            "error: invalid value 'abc' for '<ID>': invalid digit found in string; run `colex-cli controllers remove --help` for usage",
        ),
        Case::new(
            "missing file",
            &["up", text(&missing)],
            EXIT_USER_ERROR,
            format!(
                "error: failed to read silo file {}: No such file or directory (os error 2); check the path and that it is a readable silo file",
                missing.display()
            ),
        ),
        Case::new(
            "folder as file",
            &["up", text(&directory)],
            EXIT_USER_ERROR,
            format!(
                "error: failed to read silo file {}: Is a directory (os error 21); check the path and that it is a readable silo file",
                directory.display()
            ),
        ),
        Case::new(
            "file not utf-8",
            &["validate", text(&not_utf8)],
            EXIT_USER_ERROR,
            format!(
                "error: failed to read silo file {}: stream did not contain valid UTF-8; check the path and that it is a readable silo file",
                not_utf8.display()
            ),
        ),
        Case::new(
            "silo name mistaken for file",
            &["down", "web"],
            EXIT_USER_ERROR,
            "error: silo file web not found; to remove the silo named web, run `colex-cli down --name web`",
        ),
        Case::new(
            "HCL syntax error",
            &["up", text(&syntax)],
            EXIT_USER_ERROR,
            format!(
                "error: {}:3:15: invalid HCL syntax: expected `]`",
                syntax.display()
            ),
        ),
        Case::new(
            "unknown field",
            &["validate", text(&unknown_field)],
            EXIT_USER_ERROR,
            format!(
                "error: {}:3:3: silo \"web\": unknown attribute `colour` in the silo block, which accepts attributes name, class, tags, base, count, kill_timeout and blocks binary, network, grants, resources, placement, restart, file, files, bind",
                unknown_field.display()
            ),
        ),
        Case::new(
            "bad value",
            &["up", text(&bad_value)],
            EXIT_USER_ERROR,
            format!(
                "error: {}:6:17: silo \"web\": resources.cpu_percent 500 is outside 4..=100; give the share of the host's whole CPU capacity in percent, from 4 to 100",
                bad_value.display()
            ),
        ),
        Case::new(
            "address without port",
            &["--serv", "127.0.0.1", "list"],
            EXIT_USER_ERROR,
            "error: invalid controller address \"127.0.0.1\": the port is missing; use HOST:PORT, e.g. 127.0.0.1:7069 (set by --serv or COLEX_SERV)",
        ),
        Case::new(
            "address with scheme",
            &["--serv", "http://127.0.0.1:7069", "controllers"],
            EXIT_USER_ERROR,
            "error: invalid controller address \"http://127.0.0.1:7069\": write it without a scheme such as http://; use HOST:PORT, e.g. 127.0.0.1:7069 (set by --serv or COLEX_SERV)",
        ),
        Case::new(
            "bad address from COLEX_SERV",
            &["list"],
            EXIT_USER_ERROR,
            "error: invalid controller address \"ctl:70699\": \"70699\" is not a port number from 1 to 65535; use HOST:PORT, e.g. 127.0.0.1:7069 (set by --serv or COLEX_SERV)",
        )
        .with_env("COLEX_SERV", "ctl:70699"),
        Case::new(
            "no controller reachable",
            &["--serv", &both_closed, "list"],
            EXIT_CLUSTER_ERROR,
            format!(
                "error: cannot reach any controller: {} (Connection refused (os error 111)); {} (Connection refused (os error 111)); check that colex-controller runs there or pass other addresses with --serv or COLEX_SERV",
                closed[0], closed[1]
            ),
        ),
        Case::new(
            "unreachable address from COLEX_SERV",
            &["list"],
            EXIT_CLUSTER_ERROR,
            format!(
                "error: cannot reach controller at {}: Connection refused (os error 111); check that colex-controller runs there or pass its address with --serv or COLEX_SERV",
                closed[0]
            ),
        )
        .with_env("COLEX_SERV", &closed[0]),
        // `--name` takes several names, so `b` is a second name, not a silo file named `b`.
        Case::new(
            "down of several names after one --name",
            &["--serv", &closed[0], "down", "--name", "a", "b"],
            EXIT_CLUSTER_ERROR,
            format!(
                "error: cannot reach controller at {}: Connection refused (os error 111); check that colex-controller runs there or pass its address with --serv or COLEX_SERV",
                closed[0]
            ),
        ),
        Case::new(
            "unknown shell",
            &["completions", "tcsh"],
            EXIT_USER_ERROR,
            "error: invalid value 'tcsh' for '<SHELL>' (did you mean 'zsh'?); possible values: bash, elvish, fish, powershell, zsh; run `colex-cli completions --help` for usage",
        ),
    ];

    for case in &cases {
        check(case, &run_local(&bins, case));
    }
}

/// A silo that sleeps, so there is a name for the closest-name suggestions.
const SLEEPER: &str = r#"
Silo "s" {
  name = "sleeper-a"

  binary {
    path = "/bin/sleep"
    args = ["3600"]
  }
}
"#;

/// A silo whose one file is larger than the controller stores per file (256 KiB).
const TOO_BIG: &str = r#"
Silo "s" {
  name = "too-big"

  binary {
    path = "/bin/sleep"
    args = ["3600"]
  }

  file "data" {
    path      = "big.bin"
    silo_path = "/big.bin"
  }
}
"#;

/// Size of `big.bin`: 300 KiB, above the controller's per-file limit.
const TOO_BIG_FILE_BYTES: usize = 300 * 1024;

/// A silo no lab host can run: its placement names a host that does not exist.
const NOWHERE: &str = r#"
Silo "s" {
  name = "nowhere"

  binary {
    path = "/bin/sleep"
    args = ["3600"]
  }

  placement {
    hosts = ["cx-no-such-host"]
  }
}
"#;

/// A silo that is never started, for `down` of a file whose silos do not exist.
const NEVER_STARTED: &str = r#"
Silo "s" {
  name = "trialweb"

  binary {
    path = "/bin/sleep"
    args = ["3600"]
  }
}
"#;

#[test]
fn cluster_errors_are_one_line() {
    if !require_root("cluster_errors_are_one_line") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let sleeper = lab.write_file("sleeper.hcl", SLEEPER).expect("silo file");
    let nowhere = lab.write_file("nowhere.hcl", NOWHERE).expect("silo file");
    let too_big = lab.write_file("too-big.hcl", TOO_BIG).expect("silo file");
    let big_file = too_big.with_file_name("big.bin");
    std::fs::write(&big_file, vec![b'x'; TOO_BIG_FILE_BYTES]).expect("write big.bin");
    let up = lab.cli(&["up", text(&sleeper)]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    let controller = lab.controller_address();

    let cases = [
        Case::new(
            "down of a misspelt name",
            &["down", "--name", "sleeper-b"],
            EXIT_USER_ERROR,
            "error: silo sleeper-b not found; did you mean sleeper-a? see `colex-cli list` for the names",
        ),
        // Two edits in a name of 9 characters make another name, not a typo.
        Case::new(
            "down of a distant name",
            &["down", "--name", "sleepxr-b"],
            EXIT_USER_ERROR,
            "error: silo sleepxr-b not found; see `colex-cli list` for the names",
        ),
        Case::new(
            "down of an unknown name",
            &["down", "--name", "frontend"],
            EXIT_USER_ERROR,
            "error: silo frontend not found; see `colex-cli list` for the names",
        ),
        Case::new(
            "logs of a missing silo",
            &["logs", "sleeper"],
            EXIT_USER_ERROR,
            "error: silo sleeper not found; did you mean sleeper-a? see `colex-cli list` for the names",
        ),
        Case::new(
            "logs of an instance out of range",
            &["logs", "sleeper-a[3]"],
            EXIT_USER_ERROR,
            "error: silo sleeper-a[3] not found; silo sleeper-a has 1 instance: sleeper-a[0]",
        ),
        Case::new(
            "status of an instance out of range",
            &["status", "sleeper-a[3]"],
            EXIT_USER_ERROR,
            "error: silo sleeper-a[3] not found; silo sleeper-a has 1 instance: sleeper-a[0]",
        ),
        Case::new(
            "file above the controller's per-file limit",
            &["up", text(&too_big)],
            EXIT_USER_ERROR,
            format!(
                "error: controller {controller}: silo too-big: file /big.bin is {TOO_BIG_FILE_BYTES} bytes, above the controller's limit of 262144 bytes per file; put large files into an image (`base = \"img://NAME\"`) or a `bind` instead of `file` blocks",
            ),
        ),
        Case::new(
            "remove of an unknown controller",
            &["controllers", "remove", "99"],
            EXIT_USER_ERROR,
            format!("error: controller {controller}: controller 99 is not a member; see `colex-cli controllers`"),
        ),
    ];

    for case in &cases {
        let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        let output = lab
            .cli(&args)
            .unwrap_or_else(|error| panic!("{}: colex-cli runs: {error:#}", case.name));
        check(case, &output);
    }

    // A silo that fits on no host is kept as pending: `up` shows it and exits with the
    // cluster error code and the reason on one line.
    let pending = lab.cli(&["up", text(&nowhere)]).expect("up runs");
    assert_eq!(pending.code, Some(EXIT_CLUSTER_ERROR), "pending up: {}", pending.stderr);
    assert_eq!(
        pending.stderr.trim_end(),
        format!(
            "error: silo nowhere is PENDING and starts once a host fits: no live host fits: {}: is not in placement.hosts. To place it, name a live host in placement.hosts",
            lab.hosts[0].name
        ),
        "pending up: message"
    );
    assert!(pending.stdout.contains("PENDING"), "pending up: {}", pending.stdout);

    let listed = lab.cli(&["list"]).expect("list runs");
    assert!(
        listed.stdout.contains("sleeper-a"),
        "the failed commands left sleeper-a alone:\n{}",
        listed.stdout
    );
    let strict = lab.cli(&["list", "--all-hosts", "--strict"]).expect("list runs");
    assert_eq!(strict.code, Some(0), "--strict with every host UP: {}", strict.stderr);

    // `down` of a file whose silo does not exist has nothing to do, which is no error.
    let never_started = lab.write_file("never-started.hcl", NEVER_STARTED).expect("silo file");
    let down_absent = lab.cli(&["down", text(&never_started)]).expect("down runs");
    assert_eq!(down_absent.code, Some(0), "down of a file of absent silos: {}", down_absent.stderr);
    assert_eq!(down_absent.stdout, "silo trialweb does not exist; nothing to do\n");
    assert_eq!(down_absent.stderr, "", "down of a file of absent silos: nothing on stderr");

    // Several names after one `--name`; the rows of removed silos show no interfaces, since
    // those were removed too.
    let sleeper_row = parse_table(&listed.stdout)
        .into_iter()
        .find(|row| row["NAME"] == "sleeper-a")
        .unwrap_or_else(|| panic!("sleeper-a listed:\n{}", listed.stdout));
    assert_ne!(sleeper_row["ADDRESSES"], "", "sleeper-a has an address while it runs");
    let down = lab.cli(&["down", "--name", "sleeper-a", "nowhere"]).expect("down runs");
    assert_eq!(down.code, Some(0), "down --name sleeper-a nowhere: {}", down.stderr);
    let rows = parse_table(&down.stdout);
    for name in ["sleeper-a", "nowhere"] {
        let row = rows
            .iter()
            .find(|row| row["SILO"] == name)
            .unwrap_or_else(|| panic!("{name} in the down table:\n{}", down.stdout));
        assert_eq!(row["STATE"], "REMOVED", "{name}: state");
        assert_eq!(row["INTERFACES"], "", "{name}: interfaces of a removed silo");
    }
    let listed = lab.cli(&["list"]).expect("list runs");
    assert!(!listed.stdout.contains("sleeper-a"), "sleeper-a removed:\n{}", listed.stdout);
    assert!(!listed.stdout.contains("nowhere"), "nowhere removed:\n{}", listed.stdout);
}

#[test]
fn strict_list_with_host_down_exits_3() {
    if !require_root("strict_list_with_host_down_exits_3") {
        return;
    }
    let mut lab = Lab::start(1).expect("lab starts");
    let host = lab.hosts[0].name.clone();
    lab.kill_agent(0).expect("agent killed");
    lab.wait_until("the host is DOWN", |lab| {
        let output = lab.cli(&["list", "--all-hosts"])?;
        Ok(output.stdout.contains(&format!("HOST {host} ")) && output.stdout.contains("state DOWN"))
    })
    .expect("host goes DOWN");

    let loose = lab.cli(&["list", "--all-hosts"]).expect("list runs");
    assert_eq!(
        loose.code,
        Some(0),
        "without --strict a partial result is fine: {}",
        loose.stderr
    );

    let strict = lab.cli(&["list", "--all-hosts", "--strict"]).expect("list runs");
    assert_eq!(strict.code, Some(3), "partial result under --strict: {}", strict.stderr);
    assert!(
        strict.stdout.contains(&format!("HOST {host} ")),
        "the listing is printed:\n{}",
        strict.stdout
    );
    assert_eq!(
        strict.stderr.lines().count(),
        1,
        "one line on stderr: {:?}",
        strict.stderr
    );
    assert_eq!(
        strict.stderr.trim_end(),
        format!(
            "error: host {host} is DOWN, so the listing shows the silo states their agents last reported; \
             restart colex-agent there, or leave out --strict to accept a partial result"
        )
    );

    let json = lab.cli(&["list", "--strict", "--output", "json"]).expect("list runs");
    assert_eq!(json.code, Some(3), "partial result under --strict: {}", json.stderr);
    assert!(json.stdout.starts_with('{'), "the JSON is printed:\n{}", json.stdout);
}
