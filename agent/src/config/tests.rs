//! Tests of the agent configuration file: accepted files and the exact message lines of
//! rejected ones.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;

const ORIGIN: &str = "agent.hcl";

/// Returns the error lines of `text`, which must be rejected.
fn error_lines(text: &str) -> Vec<String> {
    match parse_str(text, ORIGIN) {
        Ok(settings) => panic!("accepted: {settings:?}"),
        Err(err) => err.to_string().lines().map(str::to_string).collect(),
    }
}

#[test]
fn full_file_is_read() {
    let text = r#"
labels = { zone = "a", "rack-id" = "r1" }
pids_limit = 512
disable_user_namespaces = true

image "alpine" {
  path = "/srv/images/alpine.tar.gz"
}

image "debian-12" {
  path = "/srv/images/debian.tar"
}

bind "data" {
  path     = "/srv/data"
  writable = true
}

bind "certs" {
  path = "/etc/ssl/certs"
}
"#;
    let settings = parse_str(text, ORIGIN).expect("valid file");
    assert_eq!(
        settings.images,
        BTreeMap::from([
            (
                "alpine".to_string(),
                PathBuf::from("/srv/images/alpine.tar.gz")
            ),
            (
                "debian-12".to_string(),
                PathBuf::from("/srv/images/debian.tar")
            ),
        ])
    );
    assert_eq!(
        settings.binds,
        BTreeMap::from([
            (
                "certs".to_string(),
                BindSource {
                    path: PathBuf::from("/etc/ssl/certs"),
                    writable: false,
                }
            ),
            (
                "data".to_string(),
                BindSource {
                    path: PathBuf::from("/srv/data"),
                    writable: true,
                }
            ),
        ])
    );
    assert_eq!(
        settings.labels,
        BTreeMap::from([
            ("rack-id".to_string(), "r1".to_string()),
            ("zone".to_string(), "a".to_string()),
        ])
    );
    assert_eq!(settings.pids_limit, Some(512));
    assert!(settings.disable_user_namespaces);
    assert_eq!(settings.bind_ids(), ["certs", "data"]);
}

#[test]
fn empty_file_gives_defaults() {
    let settings = parse_str("# nothing set\n", ORIGIN).expect("empty file");
    assert_eq!(settings, AgentSettings::default());
    assert_eq!(settings.effective_pids_limit(Some(4096)), Some(4096));
}

#[test]
fn pids_limit_zero_means_no_limit() {
    let settings = parse_str("pids_limit = 0\n", ORIGIN).expect("valid file");
    assert_eq!(settings.effective_pids_limit(Some(4096)), None);
    let settings = parse_str("pids_limit = 100\n", ORIGIN).expect("valid file");
    assert_eq!(settings.effective_pids_limit(Some(4096)), Some(100));
}

#[test]
fn mesh_port_defaults_to_51820() {
    let settings = parse_str("# nothing set\n", ORIGIN).expect("empty file");
    assert_eq!(settings.mesh_port, None);
    assert_eq!(settings.effective_mesh_port(), 51820);
    let settings = parse_str("mesh_port = 51999\n", ORIGIN).expect("valid file");
    assert_eq!(settings.effective_mesh_port(), 51999);
}

#[test]
fn metadata_port_defaults_to_17832() {
    let settings = parse_str("# nothing set\n", ORIGIN).expect("empty file");
    assert_eq!(settings.metadata_port, None);
    assert_eq!(settings.effective_metadata_port(), 17832);
    let settings = parse_str("metadata_port = 18000\n", ORIGIN).expect("valid file");
    assert_eq!(settings.effective_metadata_port(), 18000);
}

#[test]
fn invalid_metadata_ports_are_reported() {
    assert_eq!(
        error_lines("metadata_port = 0\n"),
        ["agent.hcl:1:17: invalid metadata_port 0: use a TCP port from 1 to 65535"]
    );
    assert_eq!(error_lines("metadata_port = \"80\"\n").len(), 1);
}

#[test]
fn invalid_mesh_ports_are_reported() {
    assert_eq!(
        error_lines("mesh_port = 0\n"),
        ["agent.hcl:1:13: invalid mesh_port 0: use a UDP port from 1 to 65535"]
    );
    assert_eq!(
        error_lines("mesh_port = 65536\n"),
        ["agent.hcl:1:13: invalid mesh_port 65536: use a UDP port from 1 to 65535"]
    );
    assert_eq!(
        error_lines("mesh_port = \"wg\"\n"),
        ["agent.hcl:1:13: invalid type for mesh_port: expected a whole number, found a string"]
    );
}

#[test]
fn unknown_names_get_suggestions() {
    let text = "pid_limit = 10\nimages \"a\" {\n  path = \"/a.tar\"\n}\nimage \"b\" {\n  pth = \"/b.tar\"\n}\n";
    assert_eq!(
        error_lines(text),
        [
            "agent.hcl:1:1: unknown attribute `pid_limit` at the top level, which accepts attributes labels, pids_limit, disable_user_namespaces, mesh_port, metadata_port, hostnames and blocks image, bind; did you mean `pids_limit`?",
            "agent.hcl:2:1: unknown block `images` at the top level, which accepts attributes labels, pids_limit, disable_user_namespaces, mesh_port, metadata_port, hostnames and blocks image, bind; did you mean `image`?",
            "agent.hcl:5:1: image \"b\": missing path; add path = \"/path/to/image.tar\"",
            "agent.hcl:6:3: image \"b\": unknown attribute `pth` in the image block, which accepts attributes path; did you mean `path`?",
        ]
    );
}

#[test]
fn unrelated_name_gets_no_suggestion() {
    assert_eq!(
        error_lines("colour = \"red\"\n"),
        ["agent.hcl:1:1: unknown attribute `colour` at the top level, which accepts attributes labels, pids_limit, disable_user_namespaces, mesh_port, metadata_port, hostnames and blocks image, bind"]
    );
}

#[test]
fn wrong_types_are_reported_at_the_value() {
    let text = "labels = [\"a\"]\npids_limit = \"many\"\ndisable_user_namespaces = \"yes\"\nbind \"d\" {\n  path = 5\n  writable = \"no\"\n}\n";
    assert_eq!(
        error_lines(text),
        [
            "agent.hcl:1:10: invalid type for labels: expected an object such as { zone = \"a\" }, found a list",
            "agent.hcl:2:14: invalid type for pids_limit: expected a whole number, found a string",
            "agent.hcl:3:27: invalid type for disable_user_namespaces: expected a bool, found a string",
            "agent.hcl:5:10: bind \"d\": invalid type for path: expected a string, found a number",
            "agent.hcl:6:14: bind \"d\": invalid type for writable: expected a bool, found a string",
        ]
    );
}

#[test]
fn invalid_values_are_rejected() {
    let text = r#"pids_limit = 1
labels = { zone = 3, "" = "x" }
image "busybox" {
  path = "/b.tar"
}
image "Alpine" {
  path = "alpine.tar"
}
bind "-data" {
  path = "/srv/data"
}
"#;
    assert_eq!(
        error_lines(text),
        [
            "agent.hcl:1:14: invalid pids_limit 1: use a whole number of at least 2 (the silo's PID 1 and its program), or 0 for no limit",
            "agent.hcl:2:19: invalid type for labels.zone: expected a string, found a number",
            "agent.hcl:2:22: empty label key in labels; write a label name or remove the entry",
            "agent.hcl:3:7: image name \"busybox\" is built in; choose another name for this tarball",
            "agent.hcl:6:7: invalid image name \"Alpine\": use 1-128 lower-case letters, digits, '-', '_' and '.', starting with a letter or digit",
            "agent.hcl:7:10: image \"Alpine\": path \"alpine.tar\" is not absolute; write the full path, such as \"/path/to/image.tar\"",
            "agent.hcl:9:6: invalid bind id \"-data\": use 1-64 letters, digits, '-', '_' and '.', starting with a letter or digit",
        ]
    );
}

#[test]
fn duplicates_name_the_first_place() {
    let text = "image \"a\" {\n  path = \"/a.tar\"\n}\nimage \"a\" {\n  path = \"/b.tar\"\n}\nbind \"d\" {\n  path = \"/d\"\n}\nbind \"d\" {\n  path = \"/e\"\n}\nlabels = { zone = \"a\", \"zone\" = \"b\" }\n";
    assert_eq!(
        error_lines(text),
        [
            "agent.hcl:4:7: duplicate image \"a\", first declared at agent.hcl:1:7; remove one",
            "agent.hcl:10:6: duplicate bind \"d\", first declared at agent.hcl:7:6; remove one",
            "agent.hcl:13:24: duplicate label `zone`, first set at agent.hcl:13:12; remove one",
        ]
    );
}

#[test]
fn repeated_attribute_is_a_syntax_error() {
    let lines = error_lines("pids_limit = 10\npids_limit = 20\n");
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("agent.hcl:2:1: invalid HCL syntax: "),
        "{lines:?}"
    );
}

#[test]
fn block_and_attribute_forms_are_not_mixed() {
    let text = "image = { path = \"/a.tar\" }\nlabels {\n  zone = \"a\"\n}\nimage {\n  path = \"/a.tar\"\n}\nbind \"a\" \"b\" {\n  path = \"/a\"\n}\n";
    assert_eq!(
        error_lines(text),
        [
            "agent.hcl:1:1: `image` is a block, not an attribute; write image \"NAME\" { ... }",
            "agent.hcl:2:1: `labels` is an attribute, not a block; write labels = <value>",
            "agent.hcl:5:1: the image block needs a label; write image \"NAME\" { path = \"/path/to/image.tar\" }",
            "agent.hcl:8:10: the bind block takes one label; write bind \"ID\" { path = \"/host/path\" }",
        ]
    );
}

#[test]
fn interpolation_is_rejected() {
    assert_eq!(
        error_lines("image \"a\" {\n  path = \"/srv/${name}.tar\"\n}\n"),
        ["agent.hcl:2:10: image \"a\": invalid type for path: expected a string, found a string template with interpolation"]
    );
}

#[test]
fn syntax_error_has_a_position() {
    let err = parse_str("image \"a\" {\n  path = \n}\n", ORIGIN).expect_err("syntax error");
    let message = err.to_string();
    assert!(message.starts_with("agent.hcl:2:"), "{message}");
    assert!(message.contains("invalid HCL syntax"), "{message}");
    assert_eq!(err.problems().len(), 1);
}

#[test]
fn load_checks_paths_on_the_host() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let tarball = dir.path().join("app.tar");
    std::fs::write(&tarball, b"").expect("write tarball");
    let missing = dir.path().join("missing.tar");
    let file = dir.path().join("agent.hcl");
    let text = format!(
        "image \"app\" {{\n  path = {:?}\n}}\nimage \"gone\" {{\n  path = {:?}\n}}\nimage \"dir\" {{\n  path = {:?}\n}}\nbind \"data\" {{\n  path = {:?}\n}}\n",
        tarball,
        missing,
        dir.path(),
        dir.path()
    );
    std::fs::write(&file, &text).expect("write config");

    let err = load(&file).expect_err("missing and non-file images");
    let origin = file.display().to_string();
    let lines: Vec<String> = err.to_string().lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            format!(
                "{origin}:5:10: image \"gone\": cannot use {}: No such file or directory (os error 2)",
                missing.display()
            ),
            format!(
                "{origin}:8:10: image \"dir\": {} is not a regular file",
                dir.path().display()
            ),
        ]
    );

    std::fs::remove_file(&file).expect("remove config");
    let good = format!(
        "image \"app\" {{\n  path = {:?}\n}}\nbind \"data\" {{\n  path = {:?}\n}}\n",
        tarball,
        dir.path()
    );
    std::fs::write(&file, good).expect("write config");
    let settings = load(&file).expect("valid config");
    assert_eq!(settings.images["app"], tarball);
    assert_eq!(settings.binds["data"].path, dir.path());
}

#[test]
fn missing_file_names_the_path() {
    let err = load(std::path::Path::new("/nonexistent/colex-agent.hcl")).expect_err("missing");
    assert_eq!(
        err.to_string(),
        "failed to read agent config file /nonexistent/colex-agent.hcl: No such file or directory (os error 2)"
    );
}

#[test]
fn example_file_is_valid() {
    let text = include_str!("../../../deploy/agent.example.hcl");
    let settings = parse_str(text, "agent.example.hcl").expect("the example file is valid");
    assert_eq!(settings.image_names(), ["busybox", "alpine"]);
    assert_eq!(settings.bind_ids(), ["scratch", "shared-data"]);
    assert!(settings.binds["scratch"].writable);
    assert!(!settings.binds["shared-data"].writable);
    assert_eq!(settings.labels["zone"], "eu-1a");
    assert_eq!(settings.pids_limit, Some(4096));
}

#[test]
fn hostnames_are_read_in_lower_case() {
    let settings = parse_str("hostnames = { \"DB.internal\" = \"10.1.2.3\", cache = \"2001:db8::7\" }\n", ORIGIN)
        .expect("valid file");
    let expected: BTreeMap<String, std::net::IpAddr> = BTreeMap::from([
        ("db.internal".to_string(), "10.1.2.3".parse().expect("valid address")),
        ("cache".to_string(), "2001:db8::7".parse().expect("valid address")),
    ]);
    assert_eq!(settings.hostnames, expected);
    assert!(parse_str("", ORIGIN).expect("empty file").hostnames.is_empty());
}

#[test]
fn invalid_hostnames_are_reported() {
    assert_eq!(
        error_lines("hostnames = { \"db.internal\" = \"10.1.2\" }\n"),
        ["agent.hcl:1:31: invalid address \"10.1.2\" for hostnames.db.internal: expected an IP address such as \"10.1.2.3\""]
    );
    assert_eq!(
        error_lines("hostnames = { \"-db\" = \"10.1.2.3\" }\n"),
        ["agent.hcl:1:15: invalid host name \"-db\" in hostnames: use labels of letters, digits and '-' separated by dots, such as \"db.internal\""]
    );
    assert_eq!(
        error_lines("hostnames = { a = \"10.1.2.3\", A = \"10.1.2.4\" }\n"),
        ["agent.hcl:1:31: duplicate host name `a` in hostnames, first set at agent.hcl:1:15; remove one"]
    );
    assert_eq!(
        error_lines("hostnames = { a = 3 }\n"),
        ["agent.hcl:1:19: invalid type for hostnames.a: expected an IP address string such as \"10.1.2.3\", found a number"]
    );
}
