//! Tests of `files` trees: the entries, their order, modes and kinds, symlinks that are never
//! followed, conflicts between blocks, and the bundle limits.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use colex_cli::spec::{load_str, SpecError, MAX_BUNDLE_BYTES, MAX_BUNDLE_ENTRIES};
use colex_proto::{FileEntry, FileKind, SiloSpec};

fn temporary_folder() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(folder) => folder,
        Err(error) => panic!("failed to create a temporary folder: {error}"),
    }
}

fn write_file(path: &Path, content: &[u8], mode: u32) {
    if let Err(error) = fs::write(path, content) {
        panic!("failed to write {}: {error}", path.display());
    }
    set_mode(path, mode);
}

fn create_folder(path: &Path, mode: u32) {
    if let Err(error) = fs::create_dir_all(path) {
        panic!("failed to create {}: {error}", path.display());
    }
    set_mode(path, mode);
}

fn set_mode(path: &Path, mode: u32) {
    if let Err(error) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
        panic!("failed to set the mode of {}: {error}", path.display());
    }
}

fn create_symlink(target: &str, link: &Path) {
    if let Err(error) = symlink(target, link) {
        panic!("failed to create the symlink {}: {error}", link.display());
    }
}

fn load_ok(text: &str, folder: &Path) -> Vec<SiloSpec> {
    match load_str(text, "tree.hcl", folder) {
        Ok(specs) => specs,
        Err(error) => panic!("the silo file failed to load:\n{error}"),
    }
}

fn load_error(text: &str, folder: &Path) -> SpecError {
    match load_str(text, "tree.hcl", folder) {
        Ok(specs) => panic!("the silo file loaded without error: {specs:?}"),
        Err(error) => error,
    }
}

/// Returns the text of a silo with a valid binary and the given blocks.
fn silo_with(blocks: &str) -> String {
    format!("Silo \"s\" {{\n  binary {{ path = \"/bin/sh\" }}\n{blocks}}}\n")
}

fn tree_block(label: &str, path: &str, silo_path: &str) -> String {
    format!("  files \"{label}\" {{\n    path      = \"{path}\"\n    silo_path = \"{silo_path}\"\n  }}\n")
}

fn file_block(label: &str, path: &str, silo_path: &str) -> String {
    format!("  file \"{label}\" {{\n    path      = \"{path}\"\n    silo_path = \"{silo_path}\"\n  }}\n")
}

fn directory(silo_path: &str, mode: u32) -> FileEntry {
    FileEntry {
        silo_path: silo_path.to_owned(),
        content: Vec::new(),
        mode,
        kind: FileKind::Directory.into(),
        link_target: String::new(),
        ..Default::default()
    }
}

fn regular(silo_path: &str, content: &[u8], mode: u32) -> FileEntry {
    FileEntry {
        silo_path: silo_path.to_owned(),
        content: content.to_vec(),
        mode,
        kind: FileKind::Regular.into(),
        link_target: String::new(),
        ..Default::default()
    }
}

fn link(silo_path: &str, target: &str) -> FileEntry {
    FileEntry {
        silo_path: silo_path.to_owned(),
        content: Vec::new(),
        mode: 0o777,
        kind: FileKind::Symlink.into(),
        link_target: target.to_owned(),
        ..Default::default()
    }
}

#[test]
fn tree_entries_sorted_with_modes_and_kinds() {
    let folder = temporary_folder();
    let site = folder.path().join("site");
    create_folder(&site.join("a"), 0o700);
    create_folder(&site.join("c"), 0o755);
    write_file(&site.join("b.txt"), b"bee", 0o640);
    write_file(&site.join("a/z.sh"), b"#!/bin/sh\n", 0o755);
    create_symlink("../outside", &site.join("link"));
    // A symlink to a folder of the tree is copied as a link, and the folder is not entered
    // through it.
    create_symlink("a", &site.join("dirlink"));
    set_mode(&site, 0o750);

    let specs = load_ok(
        &silo_with(&tree_block("site", "site", "/www")),
        folder.path(),
    );

    assert_eq!(
        specs[0].files,
        [
            directory("/www", 0o750),
            directory("/www/a", 0o700),
            regular("/www/a/z.sh", b"#!/bin/sh\n", 0o755),
            regular("/www/b.txt", b"bee", 0o640),
            directory("/www/c", 0o755),
            link("/www/dirlink", "a"),
            link("/www/link", "../outside"),
        ]
    );
}

#[test]
fn blocks_keep_written_order() {
    let folder = temporary_folder();
    create_folder(&folder.path().join("site"), 0o755);
    write_file(&folder.path().join("site/index.html"), b"<p>", 0o644);
    write_file(&folder.path().join("start.sh"), b"run", 0o755);
    let blocks = format!(
        "{}{}",
        file_block("start", "start.sh", "/start.sh"),
        tree_block("site", "site", "/www")
    );

    let specs = load_ok(&silo_with(&blocks), folder.path());

    let paths: Vec<&str> = specs[0]
        .files
        .iter()
        .map(|entry| entry.silo_path.as_str())
        .collect();
    assert_eq!(paths, ["/start.sh", "/www", "/www/index.html"]);
}

#[test]
fn tree_root_symlink_is_followed() {
    let folder = temporary_folder();
    create_folder(&folder.path().join("release-1"), 0o755);
    write_file(&folder.path().join("release-1/app"), b"x", 0o644);
    create_symlink("release-1", &folder.path().join("current"));

    let specs = load_ok(
        &silo_with(&tree_block("app", "current", "/app")),
        folder.path(),
    );

    assert_eq!(
        specs[0].files,
        [directory("/app", 0o755), regular("/app/app", b"x", 0o644)]
    );
}

#[test]
fn tree_overlapping_another_tree() {
    let folder = temporary_folder();
    create_folder(&folder.path().join("site/css"), 0o755);
    create_folder(&folder.path().join("styles"), 0o755);
    let blocks = format!(
        "{}{}",
        tree_block("site", "site", "/www"),
        tree_block("styles", "styles", "/www/css")
    );

    let error = load_error(&silo_with(&blocks), folder.path());

    assert_eq!(
        error.to_string(),
        "tree.hcl:9:5: silo \"s\": files \"styles\": places \"/www/css\", which files \"site\" (tree.hcl:3:3) also places; give each file and folder its own silo_path"
    );
}

#[test]
fn file_below_a_tree_file() {
    let folder = temporary_folder();
    create_folder(&folder.path().join("site"), 0o755);
    write_file(&folder.path().join("site/index.html"), b"<p>", 0o644);
    write_file(&folder.path().join("extra"), b"x", 0o644);
    let blocks = format!(
        "{}{}",
        file_block("extra", "extra", "/www/index.html/extra"),
        tree_block("site", "site", "/www")
    );

    let error = load_error(&silo_with(&blocks), folder.path());

    assert_eq!(
        error.to_string(),
        "tree.hcl:5:5: silo \"s\": file \"extra\": silo_path \"/www/index.html/extra\" is below \"/www/index.html\", which files \"site\" (tree.hcl:7:3) places as a regular file; choose a path that is not inside a file"
    );
}

#[test]
fn file_through_tree_symlink_names_the_link() {
    let folder = temporary_folder();
    create_folder(&folder.path().join("site/v1"), 0o755);
    create_symlink("v1", &folder.path().join("site/latest"));
    write_file(&folder.path().join("app.conf"), b"x", 0o644);
    let blocks = format!(
        "{}{}",
        tree_block("site", "site", "/www"),
        file_block("conf", "app.conf", "/www/latest/app.conf")
    );

    let error = load_error(&silo_with(&blocks), folder.path());

    assert_eq!(
        error.to_string(),
        "tree.hcl:9:5: silo \"s\": file \"conf\": silo_path \"/www/latest/app.conf\" passes through the symlink \"/www/latest\" that files \"site\" (tree.hcl:3:3) places, and symlinks are never followed; use the path the link points to"
    );
}

#[test]
fn tree_contents_count_toward_byte_limit() {
    let folder = temporary_folder();
    create_folder(&folder.path().join("data"), 0o755);
    let sparse = folder.path().join("data/big.bin");
    let created = fs::File::create(&sparse).and_then(|file| file.set_len(MAX_BUNDLE_BYTES + 1));
    if let Err(error) = created {
        panic!("failed to create {}: {error}", sparse.display());
    }

    let error = load_error(
        &silo_with(&tree_block("data", "data", "/data")),
        folder.path(),
    );

    assert_eq!(
        error.to_string(),
        "tree.hcl:3:3: silo \"s\": files \"data\": file contents reach 67108865 bytes (64.0 MiB) with this folder, over the limit of 67108864 bytes (64 MiB) for one silo file; remove or shrink files"
    );
}

#[test]
fn tree_walk_stops_at_entry_limit() {
    let folder = temporary_folder();
    let many = folder.path().join("many");
    create_folder(&many, 0o755);
    // With the root folder, this is one entry more than the limit.
    for index in 0..MAX_BUNDLE_ENTRIES {
        write_file(&many.join(format!("{index:05}")), b"", 0o644);
    }

    let error = load_error(
        &silo_with(&tree_block("many", "many", "/many")),
        folder.path(),
    );

    assert_eq!(
        error.to_string(),
        "tree.hcl:3:3: silo \"s\": files \"many\": the bundle reaches the limit of 10000 files, folders and symlinks for one silo file here; check that path names the intended folder, or place fewer files"
    );
}

#[test]
fn tree_with_fifo_names_the_path() {
    let folder = temporary_folder();
    let pipes = folder.path().join("pipes");
    create_folder(&pipes, 0o755);
    // A FIFO cannot be made with the standard library alone, so a Unix socket stands for the
    // special files here, and the FIFO case is covered by `mkfifo` when it exists.
    let socket_path = pipes.join("control.sock");
    let _listener = match std::os::unix::net::UnixListener::bind(&socket_path) {
        Ok(listener) => listener,
        Err(error) => panic!("failed to create a socket: {error}"),
    };
    let fifo_path = pipes.join("queue");
    let fifo_made = std::process::Command::new("mkfifo")
        .arg(&fifo_path)
        .status()
        .is_ok_and(|status| status.success());

    let error = load_error(
        &silo_with(&tree_block("pipes", "pipes", "/pipes")),
        folder.path(),
    );

    let mut expected = vec![format!(
        "tree.hcl:4:5: silo \"s\": files \"pipes\": {} is a socket, which a files tree cannot contain; remove it from the folder",
        socket_path.display()
    )];
    if fifo_made {
        expected.push(format!(
            "tree.hcl:4:5: silo \"s\": files \"pipes\": {} is a FIFO, which a files tree cannot contain; remove it from the folder",
            fifo_path.display()
        ));
    }
    assert_eq!(error.to_string(), expected.join("\n"));
}
