//! Table of silo file cases, good and bad. Each bad case must give exactly one problem, at the
//! expected line and column, whose message contains the expected phrase.
//!
//! Most cases are the body of one silo that already has a valid binary: `silo(BODY)` puts
//! BODY on line 3 and onwards, so a problem on BODY's first line is on line 3.

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::path::Path;

use colex_cli::spec::load_str;

/// Expected outcome of one case.
enum Expected {
    Valid,
    /// Line, column and a phrase of the message.
    Problem(usize, usize, &'static str),
}

struct Case {
    name: &'static str,
    text: String,
    expected: Expected,
}

/// Wraps lines into a silo whose binary is valid; the first body line is line 3.
fn silo(body: &str) -> String {
    format!("Silo \"s\" {{\n  binary {{ path = \"/bin/sh\" }}\n{body}}}\n")
}

fn valid(name: &'static str, text: String) -> Case {
    Case {
        name,
        text,
        expected: Expected::Valid,
    }
}

fn problem(
    name: &'static str,
    text: String,
    line: usize,
    column: usize,
    phrase: &'static str,
) -> Case {
    Case {
        name,
        text,
        expected: Expected::Problem(line, column, phrase),
    }
}

fn cases() -> Vec<Case> {
    vec![
        // Accepted files.
        valid("minimal silo", silo("")),
        valid(
            "attribute forms of binary and network",
            "Silo \"s\" {\n  binary  = { path = \"/bin/sh\", args = [\"-c\", \"true\"] }\n  network = { internet_access = true, nameservers = [\"198.51.100.53\"] }\n}\n".to_owned(),
        ),
        valid("resources block", silo("  resources {\n    cpu_percent      = 50\n    max_memory_bytes = 67108864\n  }\n")),
        valid("resources attribute with memory", silo("  resources = { memory = \"64MiB\" }\n")),
        valid("memory as plain bytes string", silo("  resources = { memory = \"4194304\" }\n")),
        valid("memory as number", silo("  resources = { memory = 8388608 }\n")),
        valid("memory in decimal units", silo("  resources = { memory = \"5MB\" }\n")),
        valid("count zero", silo("  count = 0\n")),
        valid("count at maximum", silo("  count = 1000\n")),
        valid("kill_timeout hours and minutes", silo("  kill_timeout = \"1h30m\"\n")),
        valid(
            "placement block",
            silo("  placement {\n    hosts    = [\"node1\"]\n    labels   = { disk = \"ssd\" }\n    strategy = \"binpack\"\n  }\n"),
        ),
        valid(
            "restart attribute",
            silo("  restart = { policy = \"on-failure\", attempts = 3, delay = \"500ms\" }\n"),
        ),
        valid("grants attribute", silo("  grants = { query_silos = true }\n")),
        valid("grants block", silo("  grants {\n    query_silos = false\n  }\n")),
        valid("bind block", silo("  bind \"data\" {\n    id   = \"data-1\"\n    path = \"/data\"\n  }\n")),
        valid("files tree", silo("  files \"site\" {\n    path      = \"site\"\n    silo_path = \"/www\"\n  }\n")),
        valid(
            "file beside a files tree",
            silo("  files \"site\" {\n    path      = \"site\"\n    silo_path = \"/www\"\n  }\n  file \"script\" {\n    path      = \"script.sh\"\n    silo_path = \"/www/v1/extra.sh\"\n  }\n"),
        ),
        valid("other image", silo("  base = \"img://alpine-3.20\"\n")),
        // Names and types.
        problem("misspelt attribute", silo("  cont = 2\n"), 3, 3, "did you mean `count`?"),
        problem(
            "misspelt resources attribute",
            silo("  resources {\n    cpu_percnt = 5\n  }\n"),
            4,
            5,
            "did you mean `cpu_percent`?",
        ),
        problem("misplaced attribute", silo("  policy = \"always\"\n"), 3, 3, "belongs in the restart block"),
        problem("count as string", silo("  count = \"2\"\n"), 3, 3, "expected a whole number, found a string"),
        problem("count with fraction", silo("  count = 1.5\n"), 3, 3, "expected a whole number, found 1.5"),
        problem("binary as string", "Silo \"s\" {\n  binary = \"/bin/sh\"\n}\n".to_owned(), 2, 3, "expected a block or an object"),
        problem("grants flag as string", silo("  grants = { query_silos = \"yes\" }\n"), 3, 14, "expected a bool"),
        problem("placement hosts as string", silo("  placement {\n    hosts = \"node1\"\n  }\n"), 4, 5, "expected a list of strings"),
        problem("file as attribute", silo("  file = { path = \"a\" }\n"), 3, 3, "is a block, not an attribute"),
        problem(
            "resources twice",
            silo("  resources { cpu_percent = 10 }\n  resources = { cpu_percent = 20 }\n"),
            4,
            3,
            "duplicate resources settings",
        ),
        problem("kill_timeout as number", silo("  kill_timeout = 5\n"), 3, 3, "expected a duration string"),
        // Names of silos.
        problem("upper-case name", silo("  name = \"Web\"\n"), 3, 3, "invalid name \"Web\""),
        problem(
            "duplicate names",
            format!("{}{}", silo(""), "Silo \"s\" {\n  binary { path = \"/bin/sh\" }\n}\n"),
            4,
            1,
            "duplicate name \"s\"",
        ),
        // Binary.
        problem(
            "relative binary path",
            "Silo \"s\" {\n  binary { path = \"bin/sh\" }\n}\n".to_owned(),
            2,
            12,
            "is not absolute",
        ),
        problem(
            "env without equals sign",
            "Silo \"s\" {\n  binary {\n    path = \"/bin/sh\"\n    env  = [\"DEBUG\"]\n  }\n}\n".to_owned(),
            4,
            13,
            "write it as KEY=VALUE",
        ),
        // Paths inside the silo.
        problem(
            "relative file silo_path",
            silo("  file \"f\" {\n    path      = \"script.sh\"\n    silo_path = \"script.sh\"\n  }\n"),
            5,
            5,
            "is not absolute",
        ),
        problem(
            "files silo_path climbing out",
            silo("  files \"t\" {\n    path      = \"site\"\n    silo_path = \"/www/../etc\"\n  }\n"),
            5,
            5,
            "contains a \"..\" component",
        ),
        // Resources.
        problem("cpu_percent below range", silo("  resources = { cpu_percent = 3 }\n"), 3, 17, "outside 4..=100"),
        problem("cpu_percent above range", silo("  resources = { cpu_percent = 101 }\n"), 3, 17, "outside 4..=100"),
        problem("memory below minimum", silo("  resources = { memory = \"1MiB\" }\n"), 3, 17, "below the minimum of 4 MiB"),
        problem(
            "max_memory_bytes below minimum",
            silo("  resources {\n    max_memory_bytes = 1024\n  }\n"),
            4,
            5,
            "below the minimum of 4 MiB",
        ),
        problem(
            "memory and max_memory_bytes both",
            silo("  resources {\n    max_memory_bytes = 67108864\n    memory           = \"64MiB\"\n  }\n"),
            5,
            5,
            "both set; keep only one",
        ),
        problem("memory with unknown unit", silo("  resources = { memory = \"64 mb\" }\n"), 3, 17, "unknown unit \"mb\""),
        problem("memory too large", silo("  resources = { memory = \"99999999TiB\" }\n"), 3, 17, "it is too large"),
        // Network.
        problem(
            "nameserver not an address",
            silo("  network {\n    nameservers = [\"dns.example\"]\n  }\n"),
            4,
            20,
            "expected an IPv4 or IPv6 address",
        ),
        problem(
            "hosts name invalid",
            silo("  network {\n    hosts = { \"bad_host\" = \"198.51.100.7\" }\n  }\n"),
            4,
            15,
            "invalid network.hosts hostname",
        ),
        problem(
            "hosts address invalid",
            silo("  network {\n    hosts = { db = \"nope\" }\n  }\n"),
            4,
            20,
            "invalid network.hosts address",
        ),
        // Count and scheduling.
        problem("count negative", silo("  count = -1\n"), 3, 3, "outside 0..=1000"),
        problem("count too large", silo("  count = 1001\n"), 3, 3, "outside 0..=1000"),
        problem("placement strategy", silo("  placement = { strategy = \"random\" }\n"), 3, 17, "use \"spread\" or \"binpack\""),
        problem(
            "restart policy",
            silo("  restart = { policy = \"sometimes\" }\n"),
            3,
            15,
            "use \"never\", \"on-failure\" or \"always\"",
        ),
        problem("restart without policy", silo("  restart {\n    attempts = 2\n  }\n"), 3, 3, "missing restart.policy"),
        problem(
            "restart attempts negative",
            silo("  restart {\n    policy   = \"always\"\n    attempts = -1\n  }\n"),
            5,
            5,
            "is negative",
        ),
        problem(
            "restart attempts too large",
            silo("  restart {\n    policy   = \"always\"\n    attempts = 10000000000\n  }\n"),
            5,
            5,
            "is too large",
        ),
        problem(
            "restart delay without unit",
            silo("  restart {\n    policy = \"always\"\n    delay  = \"5\"\n  }\n"),
            5,
            5,
            "5 has no unit",
        ),
        problem("kill_timeout with fraction", silo("  kill_timeout = \"1.5s\"\n"), 3, 3, "fractions are not accepted"),
        problem("kill_timeout of zero", silo("  kill_timeout = \"0s\"\n"), 3, 3, "too short"),
        problem("kill_timeout units out of order", silo("  kill_timeout = \"30s1m\"\n"), 3, 3, "out of order"),
        // Images.
        problem("base without scheme", silo("  base = \"busybox\"\n"), 3, 3, "write img://NAME"),
        problem("base with invalid image name", silo("  base = \"img://Bad\"\n"), 3, 3, "invalid image name \"Bad\""),
        // Binds.
        problem(
            "bind id empty",
            silo("  bind \"b\" {\n    id   = \"\"\n    path = \"/data\"\n  }\n"),
            4,
            5,
            "invalid bind id \"\"",
        ),
        problem(
            "bind id with slash",
            silo("  bind \"b\" {\n    id   = \"a/b\"\n    path = \"/data\"\n  }\n"),
            4,
            5,
            "invalid bind id \"a/b\"",
        ),
        problem(
            "bind path relative",
            silo("  bind \"b\" {\n    id   = \"data\"\n    path = \"data\"\n  }\n"),
            5,
            5,
            "path \"data\" is not absolute",
        ),
        problem("bind without id", silo("  bind \"b\" {\n    path = \"/data\"\n  }\n"), 3, 3, "missing id"),
        // Files on this machine.
        problem(
            "file path missing",
            silo("  file \"f\" {\n    path      = \"absent.sh\"\n    silo_path = \"/a.sh\"\n  }\n"),
            4,
            5,
            "not found at",
        ),
        problem(
            "file path is a folder",
            silo("  file \"f\" {\n    path      = \"site\"\n    silo_path = \"/a\"\n  }\n"),
            4,
            5,
            "which is a folder",
        ),
        problem(
            "files path is a file",
            silo("  files \"t\" {\n    path      = \"script.sh\"\n    silo_path = \"/a\"\n  }\n"),
            4,
            5,
            "which is not a folder",
        ),
        problem(
            "files tree with a socket",
            silo("  files \"t\" {\n    path      = \"with-socket\"\n    silo_path = \"/a\"\n  }\n"),
            4,
            5,
            "is a socket",
        ),
        problem(
            "file through a tree symlink",
            silo("  files \"site\" {\n    path      = \"site\"\n    silo_path = \"/www\"\n  }\n  file \"conf\" {\n    path      = \"script.sh\"\n    silo_path = \"/www/latest/app.conf\"\n  }\n"),
            9,
            5,
            "passes through the symlink \"/www/latest\"",
        ),
        problem(
            "file over a tree entry",
            silo("  files \"site\" {\n    path      = \"site\"\n    silo_path = \"/www\"\n  }\n  file \"page\" {\n    path      = \"script.sh\"\n    silo_path = \"/www/index.html\"\n  }\n"),
            9,
            5,
            "places \"/www/index.html\", which files \"site\"",
        ),
    ]
}

/// Creates the files the cases name: `script.sh`, the tree `site/` with a symlink, and a tree
/// that contains a Unix socket.
fn create_files(folder: &Path) -> UnixListener {
    let write = |path: &Path, content: &[u8]| {
        if let Err(error) = fs::write(path, content) {
            panic!("failed to write {}: {error}", path.display());
        }
    };
    let create_folder = |path: &Path| {
        if let Err(error) = fs::create_dir_all(path) {
            panic!("failed to create {}: {error}", path.display());
        }
    };

    write(&folder.join("script.sh"), b"#!/bin/sh\necho hi\n");
    create_folder(&folder.join("site/v1"));
    write(&folder.join("site/index.html"), b"<h1>hi</h1>\n");
    write(&folder.join("site/v1/app.conf"), b"port = 80\n");
    if let Err(error) = symlink("v1", folder.join("site/latest")) {
        panic!("failed to create a symlink: {error}");
    }

    create_folder(&folder.join("with-socket"));
    match UnixListener::bind(folder.join("with-socket/control.sock")) {
        Ok(listener) => listener,
        Err(error) => panic!("failed to create a socket: {error}"),
    }
}

#[test]
fn silo_file_cases() {
    let folder = match tempfile::tempdir() {
        Ok(folder) => folder,
        Err(error) => panic!("failed to create a temporary folder: {error}"),
    };
    let _socket = create_files(folder.path());

    let cases = cases();
    assert!(
        cases.len() >= 40,
        "the table has only {} cases",
        cases.len()
    );

    let mut failures = Vec::new();
    for case in &cases {
        let result = load_str(&case.text, "case.hcl", folder.path());
        match (&case.expected, result) {
            (Expected::Valid, Ok(_)) => {}
            (Expected::Valid, Err(error)) => {
                failures.push(format!("{}: expected no problem, got:\n{error}", case.name));
            }
            (Expected::Problem(..), Ok(_)) => {
                failures.push(format!(
                    "{}: expected a problem, but the file loaded",
                    case.name
                ));
            }
            (Expected::Problem(line, column, phrase), Err(error)) => {
                let problems = error.problems();
                let matches = problems.len() == 1
                    && problems[0].line == *line
                    && problems[0].column == *column
                    && problems[0].message.contains(phrase);
                if !matches {
                    failures.push(format!(
                        "{}: expected exactly one problem at {line}:{column} containing {phrase:?}, got:\n{error}",
                        case.name
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
