//! Tests of silo file loading against the fixtures in `tests/fixtures/spec/`: the good case
//! and every rejected case, with the exact one-line messages and their positions.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use colex_cli::spec::{load, load_str, SpecError, MAX_BUNDLE_BYTES};
use colex_proto::{
    Binary, Bind, FileEntry, FileKind, Grants, Network, Placement, PlacementStrategy, Resources,
    RestartMode, RestartPolicy, SiloSpec,
};

fn fixture_folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/spec")
}

fn fixture(name: &str) -> PathBuf {
    fixture_folder().join(name)
}

/// Loads a fixture that must fail and returns its error.
fn load_error(name: &str) -> SpecError {
    match load(&fixture(name)) {
        Ok(specs) => panic!("fixture {name} loaded without error: {specs:?}"),
        Err(error) => error,
    }
}

/// Asserts that a fixture fails with exactly these lines, each given as `LINE:COLUMN: message`
/// without the file name.
fn assert_problems(name: &str, expected: &[&str]) {
    let error = load_error(name);
    let origin = fixture(name).display().to_string();
    let text = error.to_string();

    let actual: Vec<&str> = text.lines().collect();
    let expected: Vec<String> = expected
        .iter()
        .map(|line| format!("{origin}:{line}"))
        .collect();
    assert_eq!(actual, expected, "messages of {name}");
    assert_eq!(
        error.problems().len(),
        expected.len(),
        "problem count of {name}"
    );
}

fn temporary_folder() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(folder) => folder,
        Err(error) => panic!("failed to create a temporary folder: {error}"),
    }
}

fn write_file(path: &Path, content: &[u8]) {
    if let Err(error) = fs::write(path, content) {
        panic!("failed to write {}: {error}", path.display());
    }
}

fn set_mode(path: &Path, mode: u32) {
    if let Err(error) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        panic!("failed to set the mode of {}: {error}", path.display());
    }
}

/// Creates a sparse file of `length` bytes, which takes no disk space.
fn create_sparse_file(path: &Path, length: u64) {
    let result = fs::File::create(path).and_then(|file| file.set_len(length));
    if let Err(error) = result {
        panic!("failed to create {}: {error}", path.display());
    }
}

fn expected_good_specs(script: Vec<u8>) -> Vec<SiloSpec> {
    vec![
        SiloSpec {
            name: "test-sh".to_owned(),
            class: "web".to_owned(),
            tags: vec!["a".to_owned(), "b".to_owned()],
            base: "busybox".to_owned(),
            binary: Some(Binary {
                path: "/bin/sh".to_owned(),
                args: vec!["/script.sh".to_owned()],
                env: vec!["A=1".to_owned(), "EMPTY=".to_owned()],
            }),
            files: vec![FileEntry {
                silo_path: "/script.sh".to_owned(),
                content: script,
                mode: 0o755,
                kind: FileKind::Regular.into(),
                link_target: String::new(),
                ..Default::default()
            }],
            network: Some(Network {
                internet_access: true,
                nameservers: vec!["198.51.100.53".to_owned(), "2001:db8::53".to_owned()],
                hosts: HashMap::from([
                    ("db".to_owned(), "10.69.0.5".to_owned()),
                    ("cache.internal".to_owned(), "2001:db8::5".to_owned()),
                ]),
            }),
            ..SiloSpec::default()
        },
        SiloSpec {
            name: "worker".to_owned(),
            class: String::new(),
            tags: Vec::new(),
            base: "busybox".to_owned(),
            binary: Some(Binary {
                path: "/bin/sleep".to_owned(),
                args: vec!["60".to_owned()],
                env: Vec::new(),
            }),
            files: Vec::new(),
            network: Some(Network::default()),
            ..SiloSpec::default()
        },
    ]
}

#[test]
fn good_file_builds_two_silos() {
    // A copy with the mode set here, so the test does not depend on the checkout's umask.
    let folder = temporary_folder();
    let script = b"#!/bin/sh\necho copied\n".to_vec();
    let silo_file = folder.path().join("good.hcl");
    let script_path = folder.path().join("test-script.sh");
    write_file(
        &silo_file,
        &fs::read(fixture("good.hcl")).unwrap_or_default(),
    );
    write_file(&script_path, &script);
    set_mode(&script_path, 0o755);

    let specs = match load(&silo_file) {
        Ok(specs) => specs,
        Err(error) => panic!("good.hcl failed to load:\n{error}"),
    };

    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].files[0].mode, 0o755);
    assert_eq!(specs, expected_good_specs(script));
}

#[test]
fn file_mode_copies_permission_bits() {
    let folder = temporary_folder();
    let data_path = folder.path().join("data.txt");
    write_file(&data_path, b"data");
    set_mode(&data_path, 0o4640);
    let text = r#"
Silo "s" {
  binary {
    path = "/bin/cat"
  }
  file "data" {
    path      = "data.txt"
    silo_path = "/data.txt"
  }
}
"#;

    let specs = load_str(text, "inline.hcl", folder.path());

    let files = specs
        .map(|specs| specs[0].files.clone())
        .unwrap_or_default();
    assert_eq!(files.len(), 1);
    // The set-user-ID bit is dropped; only rwx bits travel.
    assert_eq!(files[0].mode, 0o640);
    assert_eq!(files[0].content, b"data");
}

#[test]
fn good_fixture_loads_from_relative_path() {
    // Integration tests run in the package folder, so this path is relative to it, and
    // `test-script.sh` must resolve against the fixture folder, not the working directory.
    let specs = load(Path::new("tests/fixtures/spec/good.hcl"));

    let specs = match specs {
        Ok(specs) => specs,
        Err(error) => panic!("good.hcl failed to load:\n{error}"),
    };
    let script = fs::read(fixture("test-script.sh")).unwrap_or_default();
    assert_eq!(specs.len(), 2);
    assert!(!script.is_empty());
    assert_eq!(specs[0].files[0].content, script);
}

#[test]
fn load_str_uses_origin_and_base_dir() {
    let text = r#"
silo "s" {
  binary {
    path = "/bin/sh"
  }
  file "script" {
    path      = "test-script.sh"
    silo_path = "/script.sh"
  }
  file "missing" {
    path      = "nothing-here.sh"
    silo_path = "/other.sh"
  }
}
"#;

    let error = load_str(text, "inline.hcl", &fixture_folder()).err();

    let expected = format!(
        "inline.hcl:11:5: silo \"s\": file \"missing\": path \"nothing-here.sh\" not found at {}; relative paths start at the silo file's folder",
        fixture("nothing-here.sh").display()
    );
    assert_eq!(error.map(|error| error.to_string()), Some(expected));
}

#[test]
fn unreadable_silo_file_is_one_line() {
    let folder = temporary_folder();
    let path = folder.path().join("absent.hcl");

    let error = load(&path).err().map(|error| error.to_string());

    let expected = format!(
        "failed to read silo file {}: No such file or directory (os error 2)",
        path.display()
    );
    assert_eq!(error, Some(expected));
}

#[test]
fn syntax_error_stops_at_first() {
    assert_problems(
        "syntax_error.hcl",
        &["6:3: invalid HCL syntax: invalid expression; expected `\"`, `[`, `{`, `-`, `!`, `(`, `_`, `<`, letter or digit"],
    );
}

#[test]
fn file_without_silo_block() {
    assert_problems(
        "no_silo.hcl",
        &["1:1: no Silo block found; add Silo \"name\" { ... }"],
    );
}

#[test]
fn unknown_names_with_suggestions() {
    assert_problems(
        "unknown_names.hcl",
        &[
            "1:1: unknown attribute `version` at the top level, which accepts blocks Silo",
            "3:1: unknown block `Silos` at the top level, which accepts blocks Silo; did you mean `Silo`?",
            "7:3: silo \"s\": unknown attribute `nmae` in the silo block, which accepts attributes name, class, tags, base, count, kill_timeout and blocks binary, network, grants, resources, placement, restart, file, files, bind; did you mean `name`?",
            "8:3: silo \"s\": unknown attribute `command` in the silo block, which accepts attributes name, class, tags, base, count, kill_timeout and blocks binary, network, grants, resources, placement, restart, file, files, bind",
            "12:5: silo \"s\": unknown attribute `arg` in the binary block, which accepts attributes path, args, env; did you mean `args`?",
            "15:3: silo \"s\": unknown block `netwrk` in the silo block, which accepts attributes name, class, tags, base, count, kill_timeout and blocks binary, network, grants, resources, placement, restart, file, files, bind; did you mean `network`?",
            "20:5: silo \"s\": unknown attribute `internet` in the network block, which accepts attributes internet_access, nameservers, hosts",
        ],
    );
}

#[test]
fn misplaced_and_mistyped_settings() {
    let silo_names = "which accepts attributes name, class, tags, base, count, kill_timeout and blocks binary, network, grants, resources, placement, restart, file, files, bind";
    let things = fixture("things").display().to_string();
    assert_problems(
        "misplaced_fields.hcl",
        &[
            &format!("4:3: silo \"test-sh\": unknown attribute `memory` in the silo block, {silo_names}; `memory` belongs in the resources block"),
            "6:3: silo \"test-sh\": invalid type for restart: expected a block or an object, found a string; write restart { ... }",
            "7:3: silo \"test-sh\": invalid type for placement: expected a block or an object, found a string; write placement { ... }",
            "8:3: silo \"test-sh\": invalid type for grants: expected a block or an object, found a list; write grants { ... }",
            "9:3: silo \"test-sh\": `bind` is a block, not an attribute; write bind \"name\" { ... }",
            "12:5: silo \"test-sh\": unknown attribute `cpu` in the resources block, which accepts attributes cpu_percent, max_memory_bytes, memory",
            &format!("16:5: silo \"test-sh\": files \"things directory\": path \"things/\" not found at {things}; relative paths start at the silo file's folder"),
            "22:5: silo \"test-sh\": unknown attribute `memory` in the binary block, which accepts attributes path, args, env; `memory` belongs in the resources block",
        ],
    );
}

#[test]
fn base_must_name_an_image() {
    assert_problems(
        "base_image.hcl",
        &[
            "3:3: silo \"no-scheme\": invalid base \"alpine\"; write img://NAME, such as \"img://busybox\"",
            "10:3: silo \"upper-case\": invalid image name \"Alpine\" in base \"img://Alpine\"; use 1-128 lower-case letters, digits, '-', '_' and '.', starting with a letter or digit",
            "16:3: silo \"empty\": invalid image name \"\" in base \"img://\"; use 1-128 lower-case letters, digits, '-', '_' and '.', starting with a letter or digit",
            "22:3: silo \"climbs\": invalid image name \"..\" in base \"img://..\"; use 1-128 lower-case letters, digits, '-', '_' and '.', starting with a letter or digit",
        ],
    );
}

#[test]
fn other_image_is_carried_without_scheme() {
    let text =
        "Silo \"s\" {\n  base = \"img://alpine-3.20\"\n  binary = { path = \"/bin/sh\" }\n}\n";

    let specs = load_str(text, "inline.hcl", Path::new("/"));

    let bases: Vec<String> = specs
        .unwrap_or_default()
        .into_iter()
        .map(|spec| spec.base)
        .collect();
    assert_eq!(bases, ["alpine-3.20"]);
}

#[test]
fn wrong_types_name_expected_and_found() {
    assert_problems(
        "wrong_types.hcl",
        &[
            "2:3: silo \"s\": invalid type for name: expected a string, found a number",
            "3:3: silo \"s\": invalid type for tags: expected a list of strings, found a string",
            "6:5: silo \"s\": invalid type for binary.path: expected a string, found a list",
            "7:5: silo \"s\": invalid type for binary.args: expected a list of strings, found a string",
            "8:20: silo \"s\": invalid type for binary.env[1]: expected a string, found a number",
            "8:23: silo \"s\": invalid type for binary.env[2]: expected a string, found a string template with interpolation",
            "12:5: silo \"s\": invalid type for network.internet_access: expected a bool, found a string",
            "13:5: silo \"s\": invalid type for network.nameservers: expected a list of strings, found a string",
            "14:30: silo \"s\": invalid type for network.hosts[\"db\"]: expected a string, found a number",
            "14:34: silo \"s\": invalid type for network.hosts key: expected a string, found an expression",
        ],
    );
}

#[test]
fn missing_binary_and_binary_path() {
    assert_problems(
        "missing_binary.hcl",
        &[
            "1:1: silo \"test-sh\": missing binary.path; add binary { path = \"/bin/...\" } to the silo block",
            "8:3: silo \"other\": missing binary.path; add path = \"/bin/...\" to the binary block",
        ],
    );
}

#[test]
fn relative_binary_path_rejected() {
    assert_problems(
        "relative_binary_path.hcl",
        &["5:5: silo \"test-sh\": binary.path \"bin/sh\" is not absolute; use an absolute path inside the silo, such as \"/bin/sh\""],
    );
}

#[test]
fn invalid_names_rejected() {
    let long_name = "a-name-that-is-longer-than-sixty-three-characters-which-is-the-limit";
    // The message prefix cuts the name to 64 characters.
    let cut_name = &long_name[..64];
    let long_line = format!(
        "16:3: silo \"{cut_name}\"...: invalid name \"{long_name}\"; use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    );
    assert_problems(
        "invalid_name.hcl",
        &[
            "2:3: silo \"Test_sh\": invalid name \"Test_sh\"; use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            "9:1: silo \"main web\": invalid name \"main web\" taken from the block label; add name = \"...\" with 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            &long_line,
        ],
    );
}

#[test]
fn duplicate_names_and_blocks() {
    let origin = fixture("duplicate_names.hcl").display().to_string();
    let first = format!("{origin}:2:3");
    let first_binary = format!("{origin}:18:3");
    assert_problems(
        "duplicate_names.hcl",
        &[
            &format!("9:1: silo \"test-sh\": duplicate name \"test-sh\", first used at {first}; give each silo a unique name"),
            &format!("16:3: silo \"test-sh\": duplicate name \"test-sh\", first used at {first}; give each silo a unique name"),
            &format!("22:3: silo \"test-sh\": duplicate binary settings, first at {first_binary}; merge them into one binary block"),
        ],
    );
}

#[test]
fn env_entries_and_silo_paths() {
    let origin = fixture("env_and_silo_path.hcl").display().to_string();
    assert_problems(
        "env_and_silo_path.hcl",
        &[
            "6:20: silo \"test-sh\": invalid binary.env entry \"DEBUG\"; write it as KEY=VALUE",
            "6:29: silo \"test-sh\": invalid binary.env entry \"=x\"; write it as KEY=VALUE",
            "11:5: silo \"test-sh\": file \"relative\": silo_path \"script.sh\" is not absolute; start it with /",
            "16:5: silo \"test-sh\": file \"climbs\": silo_path \"/app/../../etc/passwd\" contains a \"..\" component; write the path without \"..\"",
            "21:5: silo \"test-sh\": file \"folder\": silo_path \"/app/\" ends with /; write the path of the file itself",
            &format!("31:5: silo \"test-sh\": file \"second\": duplicate silo_path \"/script.sh\", first used at {origin}:26:5; give each file and folder its own silo_path"),
            &format!("34:3: silo \"test-sh\": duplicate file block \"first\", first at {origin}:24:3; give each block its own label"),
        ],
    );
}

#[test]
fn file_block_problems() {
    let folder = fixture_folder();
    assert_problems(
        "file_problems.hcl",
        &[
            "8:3: silo \"test-sh\": file \"no path\": missing path; add path = \"...\" naming a file on this machine (relative paths start at the silo file's folder)",
            "12:3: silo \"test-sh\": file \"no silo path\": missing silo_path; add silo_path = \"/...\" (an absolute path inside the silo)",
            &format!(
                "17:5: silo \"test-sh\": file \"missing\": path \"does-not-exist.sh\" not found at {}; relative paths start at the silo file's folder",
                folder.join("does-not-exist.sh").display()
            ),
            &format!(
                "22:5: silo \"test-sh\": file \"folder\": path \".\" resolves to {}, which is a folder; use a files block for a folder, or point path at a file",
                folder.display()
            ),
            "26:3: silo \"test-sh\": a file block takes one label, found 0; write file \"name\" { ... }",
        ],
    );
}

#[test]
fn network_addresses_and_hostnames() {
    assert_problems(
        "network.hcl",
        &[
            "9:37: silo \"test-sh\": invalid network.nameservers entry \"8.8.8\"; expected an IPv4 or IPv6 address",
            "9:46: silo \"test-sh\": invalid network.nameservers entry \"dns.example\"; expected an IPv4 or IPv6 address",
            "12:7: silo \"test-sh\": invalid network.hosts hostname \"db_1\"; use dot-separated labels of letters, digits and '-'",
            "13:20: silo \"test-sh\": invalid network.hosts address \"10.69.0\" for \"cache\"; expected an IPv4 or IPv6 address",
            "14:7: silo \"test-sh\": invalid network.hosts hostname \"-bad\"; use dot-separated labels of letters, digits and '-'",
            "14:20: silo \"test-sh\": invalid network.hosts address \"not-an-ip\" for \"-bad\"; expected an IPv4 or IPv6 address",
        ],
    );
}

#[test]
fn block_kinds_and_labels() {
    assert_problems(
        "kinds_and_labels.hcl",
        &[
            "1:1: `Silo` is a block, not an attribute; write Silo \"name\" { ... }",
            "3:10: silo \"test-sh\": a Silo block takes one label, found 2; write Silo \"name\" { ... }",
            "8:3: silo \"test-sh\": unknown block `name2` in the silo block, which accepts attributes name, class, tags, base, count, kill_timeout and blocks binary, network, grants, resources, placement, restart, file, files, bind; did you mean `name`?",
            "11:3: silo \"test-sh\": `class` is an attribute, not a block; write class = <value>",
            "16:10: silo \"t\": the binary block takes no label; remove \"main\"",
            "20:11: silo \"t\": the network block takes no label; remove \"default\"",
            "24:1: Silo block has no name; write Silo \"name\" { ... } or add name = \"...\"",
        ],
    );
}

/// Writes a silo file with two `file` blocks naming sparse files of the given sizes.
fn write_bundle_silo(folder: &Path, first_bytes: u64, second_bytes: u64) -> PathBuf {
    create_sparse_file(&folder.join("first.bin"), first_bytes);
    create_sparse_file(&folder.join("second.bin"), second_bytes);
    let silo_file = folder.join("bundle.hcl");
    let text = r#"Silo "big" {
  binary {
    path = "/bin/sh"
  }
  file "first" {
    path      = "first.bin"
    silo_path = "/first.bin"
  }
  file "second" {
    path      = "second.bin"
    silo_path = "/second.bin"
  }
}
"#;
    write_file(&silo_file, text.as_bytes());
    silo_file
}

#[test]
fn bundle_over_limit_rejected() {
    const MIB: u64 = 1024 * 1024;
    let folder = temporary_folder();
    let silo_file = write_bundle_silo(folder.path(), 40 * MIB, 25 * MIB);

    let error = load(&silo_file).err().map(|error| error.to_string());

    let expected = format!(
        "{}:9:3: silo \"big\": file \"second\": file contents reach 68157440 bytes (65.0 MiB) with this file, over the limit of 67108864 bytes (64 MiB) for one silo file; remove or shrink files",
        silo_file.display()
    );
    assert_eq!(error, Some(expected));
}

#[test]
fn bundle_at_limit_accepted() {
    let folder = temporary_folder();
    let half = MAX_BUNDLE_BYTES / 2;
    let silo_file = write_bundle_silo(folder.path(), half, MAX_BUNDLE_BYTES - half);

    let specs = match load(&silo_file) {
        Ok(specs) => specs,
        Err(error) => panic!("a bundle of exactly the limit failed:\n{error}"),
    };

    let total: usize = specs[0].files.iter().map(|file| file.content.len()).sum();
    assert_eq!(u64::try_from(total).ok(), Some(MAX_BUNDLE_BYTES));
}

#[test]
fn null_counts_as_absent() {
    let text = r#"
Silo "s" {
  class = null
  binary {
    path = null
  }
}
"#;

    let error = load_str(text, "inline.hcl", Path::new("/"))
        .err()
        .map(|error| error.to_string());

    let expected =
        "inline.hcl:4:3: silo \"s\": missing binary.path; add path = \"/bin/...\" to the binary block";
    assert_eq!(error.as_deref(), Some(expected));
}

#[test]
fn every_field_builds_wire_specs() {
    let specs = match load(&fixture("every_field.hcl")) {
        Ok(specs) => specs,
        Err(error) => panic!("every_field.hcl failed to load:\n{error}"),
    };

    // The modes of checked-out files depend on the umask, so the bundle is compared by path
    // and kind here. `spec_files.rs` checks modes on files it creates.
    let bundles: Vec<Vec<(String, FileKind, String)>> = specs
        .iter()
        .map(|spec| {
            spec.files
                .iter()
                .map(|entry| {
                    (
                        entry.silo_path.clone(),
                        entry.kind(),
                        entry.link_target.clone(),
                    )
                })
                .collect()
        })
        .collect();
    let entry =
        |path: &str, kind: FileKind, target: &str| (path.to_owned(), kind, target.to_owned());
    assert_eq!(
        bundles,
        [
            vec![
                entry("/start.sh", FileKind::Regular, ""),
                entry("/www", FileKind::Directory, ""),
                entry("/www/css", FileKind::Directory, ""),
                entry("/www/css/site.css", FileKind::Regular, ""),
                entry("/www/home.html", FileKind::Symlink, "index.html"),
                entry("/www/index.html", FileKind::Regular, ""),
            ],
            vec![entry("/start.sh", FileKind::Regular, "")],
        ]
    );

    let without_files: Vec<SiloSpec> = specs
        .into_iter()
        .map(|spec| SiloSpec {
            files: Vec::new(),
            ..spec
        })
        .collect();
    assert_eq!(without_files, expected_every_field_specs());
}

fn expected_every_field_specs() -> Vec<SiloSpec> {
    let strings = |items: &[&str]| {
        items
            .iter()
            .map(|item| (*item).to_owned())
            .collect::<Vec<String>>()
    };
    vec![
        SiloSpec {
            name: "web-a".to_owned(),
            class: "web".to_owned(),
            tags: strings(&["frontend", "public"]),
            base: "busybox".to_owned(),
            binary: Some(Binary {
                path: "/bin/httpd".to_owned(),
                args: strings(&["-f", "-p", "80", "-h", "/www"]),
                env: strings(&["LANG=C"]),
            }),
            network: Some(Network {
                internet_access: true,
                nameservers: strings(&["198.51.100.53"]),
                hosts: HashMap::from([("db".to_owned(), "10.69.0.5".to_owned())]),
            }),
            binds: vec![Bind {
                id: "shared-data".to_owned(),
                path: "/data".to_owned(),
            }],
            grants: Some(Grants { query_silos: true, ..Default::default() }),
            resources: Some(Resources {
                cpu_percent: 25,
                memory_bytes: 134_217_728,
            }),
            ..SiloSpec::default()
        },
        SiloSpec {
            name: "worker".to_owned(),
            base: "busybox".to_owned(),
            binary: Some(Binary {
                path: "/bin/sh".to_owned(),
                args: strings(&["/start.sh"]),
                env: Vec::new(),
            }),
            network: Some(Network::default()),
            resources: Some(Resources {
                cpu_percent: 50,
                memory_bytes: 64 * 1024 * 1024,
            }),
            count: Some(3),
            placement: Some(Placement {
                hosts: strings(&["node1", "node2"]),
                labels: HashMap::from([("disk".to_owned(), "ssd".to_owned())]),
                strategy: PlacementStrategy::Binpack.into(),
            }),
            restart: Some(RestartPolicy {
                mode: RestartMode::OnFailure.into(),
                attempts: 5,
                delay_ms: 2_000,
            }),
            kill_timeout_ms: 10_000,
            ..SiloSpec::default()
        },
    ]
}
