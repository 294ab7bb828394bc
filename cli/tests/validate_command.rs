//! Tests of `colex-cli validate` through the built binary: summaries, diagnostics and exit
//! status, with no controller running.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/spec")
        .join(name)
}

fn temporary_folder() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(folder) => folder,
        Err(error) => panic!("failed to create a temporary folder: {error}"),
    }
}

fn write_file(path: &Path, content: &str) {
    if let Err(error) = fs::write(path, content) {
        panic!("failed to write {}: {error}", path.display());
    }
}

/// Runs `colex-cli validate` with the given files. `--serv` names a port where nothing
/// listens, to show that validate never contacts a controller.
fn validate(files: &[&Path]) -> Output {
    let result = Command::new(env!("CARGO_BIN_EXE_colex-cli"))
        .args(["--serv", "127.0.0.1:1", "validate"])
        .args(files)
        .output();
    match result {
        Ok(output) => output,
        Err(error) => panic!("failed to run colex-cli: {error}"),
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Returns the first `hcl` code block after the heading `## Using colex` of the repository's
/// README, so the test follows the README as it changes.
fn readme_example() -> String {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = match fs::read_to_string(&readme_path) {
        Ok(text) => text,
        Err(error) => panic!("failed to read {}: {error}", readme_path.display()),
    };
    let section = readme
        .split_once("## Using colex")
        .map(|(_, section)| section)
        .unwrap_or_else(|| panic!("README.md has no section \"## Using colex\""));
    let block = section
        .split_once("```hcl\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(block, _)| block)
        .unwrap_or_else(|| panic!("the README section \"Using colex\" has no hcl code block"));
    block.to_owned()
}

#[test]
fn readme_example_validates() {
    let folder = temporary_folder();
    let silo_file = folder.path().join("silo.hcl");
    write_file(&silo_file, &readme_example());
    // The example's file block names test-script.sh beside the silo file.
    write_file(
        &folder.path().join("test-script.sh"),
        "#!/bin/sh\necho \"$GREETING\"\n",
    );

    let output = validate(&[&silo_file]);

    assert_eq!(stderr(&output), "");
    assert_eq!(
        stdout(&output),
        "test-sh: image busybox, binary /bin/sh, 1 file (27 B)\n"
    );
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn every_field_file_validates() {
    let output = validate(&[&fixture("every_field.hcl")]);

    assert_eq!(stderr(&output), "");
    assert_eq!(
        stdout(&output),
        "web-a: image busybox, binary /bin/httpd, 3 files, 2 folders, 1 symlink (66 B)\n\
         worker: image busybox, binary /bin/sh, 1 file (31 B), 3 instances\n"
    );
    assert_eq!(output.status.code(), Some(0));
}

#[test]
fn invalid_file_prints_diagnostics() {
    let silo_file = fixture("relative_binary_path.hcl");

    let output = validate(&[&silo_file]);

    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        format!(
            "error: {}:5:5: silo \"test-sh\": binary.path \"bin/sh\" is not absolute; use an absolute path inside the silo, such as \"/bin/sh\"\n",
            silo_file.display()
        )
    );
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn several_files_name_each_file() {
    let good = fixture("good.hcl");
    let bad = fixture("network.hcl");

    let output = validate(&[&good, &bad]);

    assert_eq!(
        stdout(&output),
        format!(
            "{good}: test-sh: image busybox, binary /bin/sh, 1 file (31 B)\n{good}: worker: image busybox, binary /bin/sleep, 0 files (0 B)\n",
            good = good.display()
        )
    );
    let errors = stderr(&output);
    let diagnostics: Vec<&str> = errors
        .lines()
        .filter(|line| line.starts_with(&*bad.to_string_lossy()))
        .collect();
    assert_eq!(
        diagnostics.len(),
        6,
        "diagnostics of network.hcl:\n{errors}"
    );
    assert!(
        errors.ends_with("error: 1 of 2 silo files are invalid\n"),
        "{errors}"
    );
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn missing_file_fails() {
    let folder = temporary_folder();
    let absent = folder.path().join("absent.hcl");

    let output = validate(&[&absent]);

    assert_eq!(stdout(&output), "");
    assert!(
        stderr(&output).starts_with(&format!("error: failed to read silo file {}:", absent.display())),
        "{}",
        stderr(&output)
    );
    assert_eq!(output.status.code(), Some(1));
}
