//! Files placed into a silo's overlayfs upper dir before it starts: the spec's `file` entries
//! and the generated `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf`.
//!
//! The upper dir is fresh and empty, and every path is walked one component at a time with
//! `openat(O_NOFOLLOW)`, so a write never follows a symlink out of the upper dir. With a user
//! namespace, everything placed (created parent dirs included) is owned by the silo root's host
//! ids, so it shows as root's inside the silo, which may change it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use colex_proto::{FileEntry, FileKind};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::{fchown, fchownat, symlinkat};

use super::userns::Owner;

/// Mode of a file entry whose mode is 0, which protobuf cannot tell from "not set".
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode of the parent directories created for file entries, and of a directory entry whose
/// mode is 0.
pub const DEFAULT_DIR_MODE: u32 = 0o755;
/// Permission, setuid, setgid and sticky bits: the part of a mode that is applied.
const MODE_BITS_MASK: u32 = 0o7777;

/// Errors in placing files into a silo.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("silo path {path:?} is not absolute")]
    NotAbsolute { path: String },
    #[error("silo path {path:?} must not contain '.' or '..' components")]
    DotComponent { path: String },
    #[error("silo path {path:?} names the root directory, not a file")]
    RootPath { path: String },
    #[error("silo path {path:?} contains a NUL byte")]
    NulByte { path: String },
    #[error("silo path {path:?} is not a file directly in /etc")]
    NotInEtc { path: String },
    #[error("failed to open dir {path}: {source}")]
    OpenRoot { path: PathBuf, source: Errno },
    #[error("failed to create dir {component:?} of silo path {path:?}: {source}")]
    CreateDir {
        path: String,
        component: String,
        source: Errno,
    },
    #[error("parent {component:?} of silo path {path:?} is not a directory: {source}")]
    ParentNotDir {
        path: String,
        component: String,
        source: Errno,
    },
    #[error("failed to create silo file {path:?}: {source}")]
    CreateFile { path: String, source: Errno },
    #[error("failed to write silo file {path:?}: {source}")]
    WriteFile { path: String, source: io::Error },
    #[error("failed to create silo dir {path:?}: {source}")]
    CreateDirEntry { path: String, source: Errno },
    #[error("failed to create silo symlink {path:?} -> {target:?}: {source}")]
    CreateSymlink {
        path: String,
        target: String,
        source: Errno,
    },
    #[error("failed to set the owner of silo path {path:?} to {uid}:{gid}: {source}")]
    Chown {
        path: String,
        uid: u32,
        gid: u32,
        source: Errno,
    },
    #[error("file entry {path:?} has unknown kind {kind}")]
    UnknownKind { path: String, kind: i32 },
    #[error("symlink entry {path:?} has an empty target or one with a NUL byte")]
    InvalidLinkTarget { path: String },
    #[error("invalid nameserver {value:?}: not an IP address")]
    InvalidNameserver { value: String },
    #[error("invalid hosts entry {name:?} = {value:?}: expected a host name and an IP address")]
    InvalidHostsEntry { name: String, value: String },
}

/// Splits an absolute silo path into its components, rejecting `.`, `..`, NUL bytes and the
/// root itself.
pub fn silo_path_components(path: &str) -> Result<Vec<&str>, FilesError> {
    if !path.starts_with('/') {
        return Err(FilesError::NotAbsolute {
            path: path.to_string(),
        });
    }
    if path.contains('\0') {
        return Err(FilesError::NulByte {
            path: path.to_string(),
        });
    }
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if components.iter().any(|c| *c == "." || *c == "..") {
        return Err(FilesError::DotComponent {
            path: path.to_string(),
        });
    }
    if components.is_empty() {
        return Err(FilesError::RootPath {
            path: path.to_string(),
        });
    }
    Ok(components)
}

/// Returns the mode bits applied to a regular file entry.
pub fn effective_mode(mode: u32) -> u32 {
    match mode & MODE_BITS_MASK {
        0 => DEFAULT_FILE_MODE,
        bits => bits,
    }
}

/// Returns the mode bits applied to a directory entry.
pub fn effective_dir_mode(mode: u32) -> u32 {
    match mode & MODE_BITS_MASK {
        0 => DEFAULT_DIR_MODE,
        bits => bits,
    }
}

/// Returns the kind of a file entry, rejecting values this runtime does not know.
pub fn entry_kind(entry: &FileEntry) -> Result<FileKind, FilesError> {
    FileKind::try_from(entry.kind).map_err(|_| FilesError::UnknownKind {
        path: entry.silo_path.clone(),
        kind: entry.kind,
    })
}

/// Checks a file entry without touching the disk: its path, kind and symlink target.
pub fn check_entry(entry: &FileEntry) -> Result<(), FilesError> {
    silo_path_components(&entry.silo_path)?;
    if entry_kind(entry)? == FileKind::Symlink
        && (entry.link_target.is_empty() || entry.link_target.contains('\0'))
    {
        return Err(FilesError::InvalidLinkTarget {
            path: entry.silo_path.clone(),
        });
    }
    Ok(())
}

/// Places one spec entry below `root` (the upper dir): a regular file, a directory, or a
/// symlink whose target is stored as written and never followed. `owner` is the host owner of
/// what is created, `None` for the caller's ids.
pub fn place_entry(root: &Path, entry: &FileEntry, owner: Option<Owner>) -> Result<(), FilesError> {
    check_entry(entry)?;
    let path = entry.silo_path.as_str();
    match entry_kind(entry)? {
        FileKind::Regular => write_silo_file(root, path, &entry.content, entry.mode, owner),
        FileKind::Directory => create_silo_dir(root, path, entry.mode, owner),
        FileKind::Symlink => create_silo_symlink(root, path, &entry.link_target, owner),
    }
}

/// Writes `content` to `silo_path` below `root` (the upper dir) with `mode`, creating missing
/// parents as real directories and replacing an earlier file at the same path. `owner` is the
/// host owner of the file and of the parents created, `None` for the caller's ids.
pub fn write_silo_file(
    root: &Path,
    silo_path: &str,
    content: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), FilesError> {
    let (dir, file_name) = open_parent(root, silo_path, owner)?;
    write_file_at(&dir, file_name, silo_path, content, mode, owner)
}

/// Writes the files `files`, each a `/etc` path below `root` (the upper dir) and its content,
/// with `mode` and `owner` as [`write_silo_file`] does. It opens `/etc` once for all of them
/// instead of once per file, which saves five system calls per file after the first.
pub fn write_silo_etc_files(
    root: &Path,
    files: &[(&str, &[u8])],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), FilesError> {
    let Some((first_path, _)) = files.first() else {
        return Ok(());
    };
    let (dir, _) = open_parent(root, first_path, owner)?;
    for (silo_path, content) in files {
        let file_name = silo_path
            .strip_prefix(ETC_DIR)
            .filter(|name| !matches!(*name, "" | "." | "..") && !name.contains('/'))
            .ok_or_else(|| FilesError::NotInEtc {
                path: silo_path.to_string(),
            })?;
        write_file_at(&dir, file_name, silo_path, content, mode, owner)?;
    }
    Ok(())
}

/// Parent dir of the files [`write_silo_etc_files`] writes, with the separator after it.
const ETC_DIR: &str = "/etc/";

/// Writes `content` to `file_name` in the open dir `dir`, which is `silo_path` in the silo.
fn write_file_at(
    dir: &OwnedFd,
    file_name: &str,
    silo_path: &str,
    content: &[u8],
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), FilesError> {
    let mode = Mode::from_bits_truncate(effective_mode(mode));
    let file_flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd =
        openat(dir, file_name, file_flags, mode).map_err(|source| FilesError::CreateFile {
            path: silo_path.to_string(),
            source,
        })?;
    // Before fchmod, because a change of owner clears the setuid and setgid bits.
    set_owner(&fd, silo_path, owner)?;
    // The umask may have cleared bits at creation, and an existing file keeps its old mode.
    fchmod(&fd, mode).map_err(|source| FilesError::CreateFile {
        path: silo_path.to_string(),
        source,
    })?;
    let mut file = File::from(fd);
    file.write_all(content)
        .map_err(|source| FilesError::WriteFile {
            path: silo_path.to_string(),
            source,
        })
}

/// Creates the directory `silo_path` below `root` with `mode` and `owner`; an existing
/// directory gets both.
pub fn create_silo_dir(
    root: &Path,
    silo_path: &str,
    mode: u32,
    owner: Option<Owner>,
) -> Result<(), FilesError> {
    let (parent, name) = open_parent(root, silo_path, owner)?;
    let mode = Mode::from_bits_truncate(effective_dir_mode(mode));
    let dir_error = |source| FilesError::CreateDirEntry {
        path: silo_path.to_string(),
        source,
    };
    match mkdirat(&parent, name, mode) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(source) => return Err(dir_error(source)),
    }
    // O_NOFOLLOW | O_DIRECTORY rejects an existing symlink or file at the path.
    let dir = openat(&parent, name, DIR_FLAGS, Mode::empty()).map_err(dir_error)?;
    set_owner(&dir, silo_path, owner)?;
    fchmod(&dir, mode).map_err(dir_error)
}

/// Creates the symlink `silo_path` below `root` pointing to `target`, which is stored as
/// written: it is resolved only inside the silo, after pivot_root.
pub fn create_silo_symlink(
    root: &Path,
    silo_path: &str,
    target: &str,
    owner: Option<Owner>,
) -> Result<(), FilesError> {
    let (parent, name) = open_parent(root, silo_path, owner)?;
    symlinkat(target, &parent, name).map_err(|source| FilesError::CreateSymlink {
        path: silo_path.to_string(),
        target: target.to_string(),
        source,
    })?;
    if let Some(owner) = owner {
        fchownat(
            &parent,
            name,
            Some(owner.nix_uid()),
            Some(owner.nix_gid()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|source| chown_error(silo_path, owner, source))?;
    }
    Ok(())
}

/// Gives the open file or dir `fd` at `silo_path` the host owner `owner`, if any.
fn set_owner(fd: &OwnedFd, silo_path: &str, owner: Option<Owner>) -> Result<(), FilesError> {
    let Some(owner) = owner else {
        return Ok(());
    };
    fchown(fd, Some(owner.nix_uid()), Some(owner.nix_gid()))
        .map_err(|source| chown_error(silo_path, owner, source))
}

fn chown_error(silo_path: &str, owner: Owner, source: Errno) -> FilesError {
    FilesError::Chown {
        path: silo_path.to_string(),
        uid: owner.uid,
        gid: owner.gid,
        source,
    }
}

/// Flags that open a directory without following a symlink in the last component.
const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

/// Opens the parent directory of `silo_path` below `root`, creating missing directories with
/// `owner`, and returns it with the last path component.
fn open_parent<'a>(
    root: &Path,
    silo_path: &'a str,
    owner: Option<Owner>,
) -> Result<(OwnedFd, &'a str), FilesError> {
    let components = silo_path_components(silo_path)?;
    let (file_name, parents) = components
        .split_last()
        .ok_or_else(|| FilesError::RootPath {
            path: silo_path.to_string(),
        })?;

    let mut dir: OwnedFd =
        open(root, DIR_FLAGS, Mode::empty()).map_err(|source| FilesError::OpenRoot {
            path: root.to_path_buf(),
            source,
        })?;
    for component in parents {
        let created = match mkdirat(&dir, *component, Mode::from_bits_truncate(DEFAULT_DIR_MODE)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(source) => {
                return Err(FilesError::CreateDir {
                    path: silo_path.to_string(),
                    component: component.to_string(),
                    source,
                })
            }
        };
        // O_NOFOLLOW | O_DIRECTORY fails with ELOOP or ENOTDIR on a symlink or a file.
        dir = openat(&dir, *component, DIR_FLAGS, Mode::empty()).map_err(|source| {
            FilesError::ParentNotDir {
                path: silo_path.to_string(),
                component: component.to_string(),
                source,
            }
        })?;
        // An existing dir keeps its owner: it was created for an earlier entry.
        if created {
            set_owner(&dir, silo_path, owner)?;
        }
    }
    Ok((dir, file_name))
}

/// Returns the silo's `/etc/resolv.conf`: `from_spec`, the file made from the spec's
/// nameservers, or else the host's resolver on the bridge address `resolver` with the search
/// domain `silo`, so `web` resolves as `web.silo` as a Docker user expects from container names.
pub fn silo_resolv_conf(from_spec: Option<&str>, resolver: Ipv4Addr) -> String {
    match from_spec {
        Some(text) => text.to_owned(),
        None => format!("nameserver {resolver}\nsearch silo\n"),
    }
}

/// Checks the spec's nameservers and returns the content of `/etc/resolv.conf`, or `None`
/// when none is left and the file is omitted.
///
/// Loopback nameservers (127.0.0.0/8, `::1`, such as systemd-resolved's 127.0.0.53) are dropped
/// with a warning: inside the silo's network namespace they name the silo's own loopback,
/// where no resolver listens.
pub fn resolv_conf(silo_name: &str, nameservers: &[String]) -> Result<Option<String>, FilesError> {
    let mut text = String::new();
    for value in nameservers {
        let addr: IpAddr = value
            .trim()
            .parse()
            .map_err(|_| FilesError::InvalidNameserver {
                value: value.clone(),
            })?;
        // `to_canonical` also catches the IPv4-mapped form, such as ::ffff:127.0.0.53.
        if addr.to_canonical().is_loopback() {
            tracing::warn!(
                silo = silo_name,
                nameserver = %addr,
                "dropped loopback nameserver from the silo's /etc/resolv.conf"
            );
            continue;
        }
        let _ = writeln!(text, "nameserver {addr}");
    }
    Ok((!text.is_empty()).then_some(text))
}

/// Checks the spec's hosts entries and returns the content of `/etc/hosts`: localhost, the silo
/// name with its address, and the entries sorted by name.
pub fn hosts_file(
    silo_name: &str,
    address: Ipv4Addr,
    hosts: &HashMap<String, String>,
) -> Result<String, FilesError> {
    let mut text = String::new();
    let _ = writeln!(text, "127.0.0.1\tlocalhost");
    let _ = writeln!(text, "::1\tlocalhost ip6-localhost ip6-loopback");
    let _ = writeln!(text, "{address}\t{silo_name}");

    let mut entries: Vec<(&String, &String)> = hosts.iter().collect();
    entries.sort();
    for (name, value) in entries {
        let invalid = || FilesError::InvalidHostsEntry {
            name: name.clone(),
            value: value.clone(),
        };
        let valid_name = !name.is_empty()
            && !name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '#');
        if !valid_name {
            return Err(invalid());
        }
        let addr: IpAddr = value.trim().parse().map_err(|_| invalid())?;
        let _ = writeln!(text, "{addr}\t{name}");
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    #[test]
    fn components_of_valid_paths() {
        assert_eq!(
            silo_path_components("/www/index.html").expect("valid"),
            ["www", "index.html"]
        );
        assert_eq!(silo_path_components("//a//b/").expect("valid"), ["a", "b"]);
    }

    #[test]
    fn components_reject_bad_paths() {
        assert!(matches!(
            silo_path_components("www/index.html"),
            Err(FilesError::NotAbsolute { .. })
        ));
        assert!(matches!(
            silo_path_components("/a/../etc/passwd"),
            Err(FilesError::DotComponent { .. })
        ));
        assert!(matches!(
            silo_path_components("/a/./b"),
            Err(FilesError::DotComponent { .. })
        ));
        assert!(matches!(
            silo_path_components("/"),
            Err(FilesError::RootPath { .. })
        ));
        assert!(matches!(
            silo_path_components("/a\0b"),
            Err(FilesError::NulByte { .. })
        ));
    }

    #[test]
    fn mode_defaults_and_masks() {
        assert_eq!(effective_mode(0), DEFAULT_FILE_MODE);
        assert_eq!(effective_mode(0o755), 0o755);
        assert_eq!(effective_mode(0o100_755), 0o755);
        assert_eq!(effective_mode(0o4755), 0o4755);
    }

    #[test]
    fn writes_file_with_parents_and_mode() {
        let root = tempfile::tempdir().expect("create temp dir");
        write_silo_file(root.path(), "/www/site/index.html", b"hello", 0o640, None).expect("write");
        let path = root.path().join("www/site/index.html");
        assert_eq!(std::fs::read(&path).expect("read back"), b"hello");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert!(root.path().join("www/site").is_dir());

        write_silo_file(root.path(), "/www/site/index.html", b"new", 0o755, None)
            .expect("overwrite");
        assert_eq!(std::fs::read(&path).expect("read back"), b"new");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn etc_files_share_one_dir() {
        let root = tempfile::tempdir().expect("create temp dir");
        let files: [(&str, &[u8]); 2] = [("/etc/hostname", b"web\n"), ("/etc/hosts", b"hosts")];
        write_silo_etc_files(root.path(), &files, 0o644, None).expect("write");
        for (silo_path, content) in files {
            let path = root.path().join(&silo_path[1..]);
            assert_eq!(std::fs::read(&path).expect("read back"), content, "{silo_path}");
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
            assert_eq!(mode, 0o644, "{silo_path}");
        }

        let nested: [(&str, &[u8]); 2] = [("/etc/hosts", b"x"), ("/etc/app/conf", b"y")];
        let err = write_silo_etc_files(root.path(), &nested, 0o644, None).expect_err("nested path");
        assert!(matches!(err, FilesError::NotInEtc { .. }), "{err}");
        assert!(!root.path().join("etc/app").exists(), "no dir is made for a rejected path");
    }

    #[test]
    fn never_follows_symlinks() {
        let root = tempfile::tempdir().expect("create temp dir");
        let outside = tempfile::tempdir().expect("create temp dir");
        symlink(outside.path(), root.path().join("escape")).expect("symlink dir");
        symlink(outside.path().join("target"), root.path().join("link")).expect("symlink file");

        let err = write_silo_file(root.path(), "/escape/file", b"x", 0o644, None)
            .expect_err("dir symlink");
        assert!(matches!(err, FilesError::ParentNotDir { .. }), "{err}");
        let err =
            write_silo_file(root.path(), "/link", b"x", 0o644, None).expect_err("file symlink");
        assert!(matches!(err, FilesError::CreateFile { .. }), "{err}");
        assert!(std::fs::read_dir(outside.path())
            .expect("list")
            .next()
            .is_none());
    }

    #[test]
    fn file_as_parent_is_rejected() {
        let root = tempfile::tempdir().expect("create temp dir");
        write_silo_file(root.path(), "/a", b"x", 0o644, None).expect("write");
        let err = write_silo_file(root.path(), "/a/b", b"y", 0o644, None).expect_err("file parent");
        assert!(matches!(err, FilesError::ParentNotDir { .. }), "{err}");
    }

    fn entry(silo_path: &str, kind: FileKind, mode: u32, link_target: &str) -> FileEntry {
        FileEntry {
            silo_path: silo_path.to_string(),
            content: b"data".to_vec(),
            mode,
            kind: kind.into(),
            link_target: link_target.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn places_dirs_and_symlinks() {
        let root = tempfile::tempdir().expect("create temp dir");
        place_entry(
            root.path(),
            &entry("/data", FileKind::Directory, 0o700, ""),
            None,
        )
        .expect("dir");
        place_entry(
            root.path(),
            &entry("/data/file", FileKind::Regular, 0, ""),
            None,
        )
        .expect("file");
        place_entry(
            root.path(),
            &entry("/current", FileKind::Symlink, 0, "/data/file"),
            None,
        )
        .expect("symlink");
        place_entry(
            root.path(),
            &entry("/empty", FileKind::Directory, 0, ""),
            None,
        )
        .expect("dir");

        let data_mode = std::fs::metadata(root.path().join("data"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(data_mode, 0o700);
        let empty_mode = std::fs::metadata(root.path().join("empty"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(empty_mode, DEFAULT_DIR_MODE);
        let file_mode = std::fs::metadata(root.path().join("data/file"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(file_mode, DEFAULT_FILE_MODE);
        // The target is stored as written, although it does not exist on the host.
        assert_eq!(
            std::fs::read_link(root.path().join("current")).expect("read link"),
            Path::new("/data/file")
        );

        // A directory entry where a file is, and a file below a placed symlink, are rejected.
        assert!(place_entry(
            root.path(),
            &entry("/data/file", FileKind::Directory, 0, ""),
            None
        )
        .is_err());
        let err = place_entry(
            root.path(),
            &entry("/current/x", FileKind::Regular, 0, ""),
            None,
        )
        .expect_err("below symlink");
        assert!(matches!(err, FilesError::ParentNotDir { .. }), "{err}");
    }

    #[test]
    fn placed_files_get_the_owner() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped placed_files_get_the_owner: chown needs root");
            return;
        }
        use std::os::unix::fs::MetadataExt;

        let root = tempfile::tempdir().expect("create temp dir");
        let owner = Some(Owner {
            uid: 100_000,
            gid: 100_001,
        });

        write_silo_file(root.path(), "/etc/app/conf", b"x", 0o4755, owner).expect("write");
        place_entry(
            root.path(),
            &entry("/link", FileKind::Symlink, 0, "/etc"),
            owner,
        )
        .expect("symlink");
        place_entry(
            root.path(),
            &entry("/data", FileKind::Directory, 0o750, ""),
            owner,
        )
        .expect("dir");
        for path in ["etc", "etc/app", "etc/app/conf", "link", "data"] {
            let metadata = std::fs::symlink_metadata(root.path().join(path)).expect("stat");
            assert_eq!(metadata.uid(), 100_000, "{path}");
            assert_eq!(metadata.gid(), 100_001, "{path}");
        }
        let conf = std::fs::metadata(root.path().join("etc/app/conf")).expect("stat");
        assert_eq!(
            conf.mode() & 0o7777,
            0o4755,
            "the setuid bit survives the chown"
        );
    }

    #[test]
    fn rejects_bad_entries() {
        let empty_target = entry("/link", FileKind::Symlink, 0, "");
        assert!(matches!(
            check_entry(&empty_target),
            Err(FilesError::InvalidLinkTarget { .. })
        ));
        let mut unknown = entry("/x", FileKind::Regular, 0, "");
        unknown.kind = 99;
        assert!(matches!(
            check_entry(&unknown),
            Err(FilesError::UnknownKind { kind: 99, .. })
        ));
    }

    #[test]
    fn hosts_file_content() {
        let hosts = HashMap::from([
            ("db".to_string(), "10.69.0.5".to_string()),
            ("cache".to_string(), "10.69.0.6".to_string()),
        ]);
        let text = hosts_file("web", Ipv4Addr::new(10, 69, 1, 2), &hosts).expect("valid hosts");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "127.0.0.1\tlocalhost");
        assert_eq!(lines[2], "10.69.1.2\tweb");
        assert_eq!(lines[3], "10.69.0.6\tcache");
        assert_eq!(lines[4], "10.69.0.5\tdb");
    }

    #[test]
    fn hosts_file_rejects_bad_entries() {
        let bad_addr = HashMap::from([("db".to_string(), "not-an-ip".to_string())]);
        assert!(hosts_file("web", Ipv4Addr::new(10, 69, 1, 2), &bad_addr).is_err());
        let bad_name = HashMap::from([("d b".to_string(), "10.0.0.1".to_string())]);
        assert!(hosts_file("web", Ipv4Addr::new(10, 69, 1, 2), &bad_name).is_err());
    }

    #[test]
    fn silo_resolv_conf_defaults_to_bridge_resolver() {
        let bridge = Ipv4Addr::new(10, 69, 1, 1);
        assert_eq!(silo_resolv_conf(None, bridge), "nameserver 10.69.1.1\nsearch silo\n");
        assert_eq!(silo_resolv_conf(Some("nameserver 192.0.2.53\n"), bridge), "nameserver 192.0.2.53\n");
    }

    #[test]
    fn resolv_conf_content() {
        assert_eq!(resolv_conf("web", &[]).expect("empty"), None);
        let text =
            resolv_conf("web", &["8.8.8.8".to_string(), "2001:db8::1".to_string()]).expect("valid");
        assert_eq!(
            text.as_deref(),
            Some("nameserver 8.8.8.8\nnameserver 2001:db8::1\n")
        );
        assert!(resolv_conf("web", &["dns.example".to_string()]).is_err());
    }

    #[test]
    fn resolv_conf_drops_loopback_nameservers() {
        let nameservers = [
            "127.0.0.53",
            "203.0.113.53",
            "::1",
            "127.1.2.3",
            "::ffff:127.0.0.53",
            "2001:db8::1",
        ]
        .map(String::from);
        let text = resolv_conf("web", &nameservers).expect("valid");
        assert_eq!(
            text.as_deref(),
            Some("nameserver 203.0.113.53\nnameserver 2001:db8::1\n")
        );
        // Only loopback nameservers: the file is omitted, not written empty.
        let only_loopback = ["127.0.0.53".to_string(), "::1".to_string()];
        assert_eq!(resolv_conf("web", &only_loopback).expect("valid"), None);
    }
}
