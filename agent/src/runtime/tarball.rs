//! Unpacking of image tarballs: the output of `docker export`, plain or gzip-compressed.
//!
//! Every entry is checked before it is written. An entry with an absolute path, a `..`
//! component, or a path below an earlier symlink entry is rejected. So are a hard link whose
//! target is absolute or contains `..`, and a relative symlink that climbs above the image root.
//! An absolute symlink target such as `/bin/busybox` is accepted: the silo resolves it inside
//! its own root. The `tar` crate's `unpack_in` also refuses to write outside the destination
//! after resolving symlinks, as a second line of defence.
//!
//! Character and block devices and FIFOs are skipped: a silo gets its devices from the minimal
//! `/dev` the runtime mounts, and a device node in a shared image would give every silo that
//! uses it the host's device.
//!
//! For silos in a user namespace, owners are shifted into the agent's id map while unpacking
//! ([`Owners::Shifted`]), so the archive's owners show inside the silo.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, AT_FDCWD};
use nix::sys::stat::{fchmodat, FchmodatFlags, Mode};
use nix::unistd::{fchownat, Gid, Uid};
use tar::EntryType;

use super::userns::IdMap;

/// First two bytes of a gzip stream (RFC 1952, section 2.3.1).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Size of the read buffer in front of the decompressor, in bytes.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Setuid and setgid bits, which a change of owner clears.
const SET_ID_MODE_BITS: u32 = 0o6000;
/// Permission, setuid, setgid and sticky bits of a tar mode.
const MODE_BITS_MASK: u32 = 0o7777;

/// Owners of the unpacked files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// The ids of the unpacking process, the only choice without root.
    Caller,
    /// The archive's uids and gids. Needs root.
    FromArchive,
    /// The archive's uids and gids as host ids of the map, so the archive's owners show inside
    /// a silo whose user namespace has that map. Dirs the archive implies but does not list, and the
    /// image root, belong to silo root. Needs root.
    Shifted(IdMap),
}

/// Errors of unpacking one tarball. Each names the entry it concerns.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    #[error("failed to open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("failed to read the archive: {source}")]
    Read { source: io::Error },
    #[error("failed to resolve the unpack dir {path}: {source}")]
    Destination { path: PathBuf, source: io::Error },
    #[error("failed to read the header of entry {entry:?}: {source}")]
    Header { entry: String, source: io::Error },
    #[error("entry {entry:?} has an absolute path; image tarballs contain relative paths only")]
    AbsolutePath { entry: String },
    #[error("entry {entry:?} contains a '..' component, which could write outside the image root")]
    ParentComponent { entry: String },
    #[error("entry {entry:?} of type {kind} names the image root itself")]
    RootEntry { entry: String, kind: &'static str },
    #[error(
        "entry {entry:?} lies below the symlink entry {symlink:?}; writing it would follow the \
         symlink"
    )]
    BelowSymlink { entry: String, symlink: String },
    #[error("{kind} entry {entry:?} -> {target:?} points outside the image root")]
    LinkOutside {
        entry: String,
        kind: &'static str,
        target: String,
    },
    #[error("{kind} entry {entry:?} has an empty target")]
    EmptyLinkTarget { entry: String, kind: &'static str },
    #[error("failed to unpack entry {entry:?}: {source}")]
    Unpack { entry: String, source: io::Error },
    #[error("entry {entry:?} was not unpacked: the tar crate judged its path unsafe")]
    NotUnpacked { entry: String },
    #[error(
        "entry {entry:?} is owned by {uid}:{gid}, outside the silo id range 0 to {max_id}; \
         change its owner in the image or turn off user namespaces"
    )]
    IdOutsideMap {
        entry: String,
        uid: u64,
        gid: u64,
        max_id: u32,
    },
    #[error("failed to set the owner of {path} to {uid}:{gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: Errno,
    },
    #[error("failed to restore mode {mode:o} of {path} after the change of owner: {source}")]
    RestoreMode {
        path: PathBuf,
        mode: u32,
        source: Errno,
    },
}

/// Summary of one unpack, for the agent's log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    /// Entries written, directories included.
    pub unpacked: usize,
    /// Device and FIFO entries that were skipped, by name.
    pub skipped: Vec<String>,
}

/// Unpacks the tarball at `archive` into `dest`, an existing empty dir, with `owners`. On
/// error, `dest` may hold part of the image: the caller removes it. Blocking.
pub fn unpack(archive: &Path, dest: &Path, owners: Owners) -> Result<UnpackReport, TarballError> {
    let file = File::open(archive).map_err(|source| TarballError::Open {
        path: archive.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let compressed = reader
        .fill_buf()
        .map_err(|source| TarballError::Read { source })?
        .starts_with(&GZIP_MAGIC);
    let stream: Box<dyn Read> = if compressed {
        // MultiGzDecoder also reads files made of several gzip members, as pigz writes them.
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    unpack_stream(stream, dest, owners)
}

fn unpack_stream(
    stream: impl Read,
    dest: &Path,
    owners: Owners,
) -> Result<UnpackReport, TarballError> {
    // The tar crate compares resolved paths against the destination, which must be resolved too.
    let dest = dest
        .canonicalize()
        .map_err(|source| TarballError::Destination {
            path: dest.to_path_buf(),
            source,
        })?;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(owners == Owners::FromArchive);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);

    let mut checker = EntryChecker::default();
    let mut report = UnpackReport::default();
    let shift = match owners {
        Owners::Shifted(map) => Some(map),
        Owners::Caller | Owners::FromArchive => None,
    };
    // Paths of the entries, and of their parent dirs, for the owners of dirs the archive
    // implies without listing them.
    let mut listed = BTreeSet::new();
    let mut implied = BTreeSet::new();
    // Directories are written last, deepest first, as `tar::Archive::unpack` does: a directory
    // without write permission would otherwise block its own entries for a non-root caller.
    let mut directories = Vec::new();
    let entries = archive
        .entries()
        .map_err(|source| TarballError::Read { source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| TarballError::Read { source })?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let header_error = |source| TarballError::Header {
            entry: name.clone(),
            source,
        };
        let path = entry.path().map_err(header_error)?.into_owned();
        let link_target = entry
            .link_name()
            .map_err(header_error)?
            .map(|target| target.into_owned());

        match classify(kind) {
            Handling::Ignore => continue,
            Handling::Skip => {
                checker.check_path(&name, &path)?;
                report.skipped.push(name);
                continue;
            }
            Handling::Directory => {
                if let Some(relative) = checker.check_path(&name, &path)? {
                    let owner = shifted_owner(shift, &name, entry.header())?;
                    note_paths(&mut listed, &mut implied, &relative);
                    directories.push((name, relative, owner, entry));
                }
                continue;
            }
            Handling::Symlink => {
                let relative = checker.require_path(&name, &path, kind)?;
                checker.check_symlink(&name, &relative, link_target.as_deref())?;
                checker.symlinks.insert(relative.clone());
                let owner = shifted_owner(shift, &name, entry.header())?;
                unpack_entry(&mut entry, &name, &dest)?;
                set_shifted_owner(&dest, &relative, owner, None)?;
                note_paths(&mut listed, &mut implied, &relative);
            }
            Handling::HardLink => {
                // The link shares the inode, and so the owner, of an earlier entry.
                let relative = checker.require_path(&name, &path, kind)?;
                checker.check_hard_link(&name, link_target.as_deref())?;
                unpack_entry(&mut entry, &name, &dest)?;
                note_paths(&mut listed, &mut implied, &relative);
            }
            Handling::File => {
                let relative = checker.require_path(&name, &path, kind)?;
                let owner = shifted_owner(shift, &name, entry.header())?;
                unpack_entry(&mut entry, &name, &dest)?;
                set_shifted_owner(&dest, &relative, owner, entry_mode(entry.header()))?;
                note_paths(&mut listed, &mut implied, &relative);
            }
        }
        report.unpacked += 1;
    }

    directories.sort_by(|(a, ..), (b, ..)| b.cmp(a));
    for (name, relative, owner, mut entry) in directories {
        unpack_entry(&mut entry, &name, &dest)?;
        set_shifted_owner(&dest, &relative, owner, entry_mode(entry.header()))?;
        report.unpacked += 1;
    }

    if let Some(map) = shift {
        let root = map.root_owner();
        let root_owner = Some((root.uid, root.gid));
        for relative in implied.difference(&listed) {
            set_shifted_owner(&dest, relative, root_owner, None)?;
        }
        set_shifted_owner(&dest, Path::new(""), root_owner, None)?;
    }
    Ok(report)
}

/// Adds `relative` to `listed` and its ancestors below the root to `implied`.
fn note_paths(listed: &mut BTreeSet<PathBuf>, implied: &mut BTreeSet<PathBuf>, relative: &Path) {
    listed.insert(relative.to_path_buf());
    for ancestor in relative.ancestors().skip(1) {
        if !ancestor.as_os_str().is_empty() {
            implied.insert(ancestor.to_path_buf());
        }
    }
}

/// Returns the host uid and gid of an entry under `shift`, `None` without a shift. Fails for
/// ids the map does not cover: the silo would see them as `nobody`.
fn shifted_owner(
    shift: Option<IdMap>,
    name: &str,
    header: &tar::Header,
) -> Result<Option<(u32, u32)>, TarballError> {
    let Some(map) = shift else {
        return Ok(None);
    };
    let header_error = |source| TarballError::Header {
        entry: name.to_string(),
        source,
    };
    let uid = header.uid().map_err(header_error)?;
    let gid = header.gid().map_err(header_error)?;
    match (map.host_id(uid), map.host_id(gid)) {
        (Some(host_uid), Some(host_gid)) => Ok(Some((host_uid, host_gid))),
        _ => Err(TarballError::IdOutsideMap {
            entry: name.to_string(),
            uid,
            gid,
            max_id: map.count.saturating_sub(1),
        }),
    }
}

/// Returns the mode bits of an entry, `None` when the header has none.
fn entry_mode(header: &tar::Header) -> Option<u32> {
    header.mode().ok().map(|mode| mode & MODE_BITS_MASK)
}

/// Gives the unpacked entry `relative` below `dest` the host `owner`, without following a
/// symlink, and restores the setuid and setgid bits of `mode` that the change cleared. Does
/// nothing without an owner.
fn set_shifted_owner(
    dest: &Path,
    relative: &Path,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
) -> Result<(), TarballError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    let path = dest.join(relative);
    fchownat(
        AT_FDCWD,
        &path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|source| TarballError::Chown {
        path: path.clone(),
        uid,
        gid,
        source,
    })?;
    if let Some(mode) = mode.filter(|mode| mode & SET_ID_MODE_BITS != 0) {
        // Symlinks never get here: they have no mode to restore.
        fchmodat(
            AT_FDCWD,
            &path,
            Mode::from_bits_truncate(mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|source| TarballError::RestoreMode { path, mode, source })?;
    }
    Ok(())
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &str,
    dest: &Path,
) -> Result<(), TarballError> {
    match entry.unpack_in(dest) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TarballError::NotUnpacked {
            entry: name.to_string(),
        }),
        Err(source) => Err(TarballError::Unpack {
            entry: name.to_string(),
            source,
        }),
    }
}

/// Action the unpacker takes for one kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handling {
    File,
    Directory,
    Symlink,
    HardLink,
    /// Device nodes and FIFOs.
    Skip,
    /// Metadata entries that carry no file.
    Ignore,
}

fn classify(kind: EntryType) -> Handling {
    match kind {
        EntryType::Directory => Handling::Directory,
        EntryType::Symlink => Handling::Symlink,
        EntryType::Link => Handling::HardLink,
        EntryType::Char | EntryType::Block | EntryType::Fifo => Handling::Skip,
        EntryType::XGlobalHeader
        | EntryType::XHeader
        | EntryType::GNULongName
        | EntryType::GNULongLink => Handling::Ignore,
        // POSIX.1 reads an unknown type flag as a regular file, and so does the tar crate.
        _ => Handling::File,
    }
}

fn kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Directory => "directory",
        EntryType::Symlink => "symlink",
        EntryType::Link => "hard link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO",
        _ => "file",
    }
}

/// The path rules, with the symlink entries seen so far.
#[derive(Debug, Default)]
struct EntryChecker {
    /// Relative paths of the symlink entries so far. An entry below one of them is rejected.
    symlinks: HashSet<PathBuf>,
}

impl EntryChecker {
    /// Checks an entry path and returns it relative to the image root without `.` components,
    /// or `None` for the root itself (such as `./`).
    fn check_path(&self, name: &str, path: &Path) -> Result<Option<PathBuf>, TarballError> {
        let relative = relative_path(name, path)?;
        if relative.as_os_str().is_empty() {
            return Ok(None);
        }
        self.check_not_below_symlink(name, &relative)?;
        Ok(Some(relative))
    }

    /// Like [`EntryChecker::check_path`], for kinds that cannot be the root.
    fn require_path(
        &self,
        name: &str,
        path: &Path,
        kind: EntryType,
    ) -> Result<PathBuf, TarballError> {
        self.check_path(name, path)?
            .ok_or_else(|| TarballError::RootEntry {
                entry: name.to_string(),
                kind: kind_name(kind),
            })
    }

    fn check_not_below_symlink(&self, name: &str, relative: &Path) -> Result<(), TarballError> {
        for ancestor in relative.ancestors().skip(1) {
            if self.symlinks.contains(ancestor) {
                return Err(TarballError::BelowSymlink {
                    entry: name.to_string(),
                    symlink: ancestor.display().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Accepts absolute targets, which the silo resolves inside its root, and relative targets
    /// that stay inside the root when resolved from the link's directory.
    fn check_symlink(
        &self,
        name: &str,
        relative: &Path,
        target: Option<&Path>,
    ) -> Result<(), TarballError> {
        let kind = kind_name(EntryType::Symlink);
        let target = non_empty_target(name, kind, target)?;
        if target.has_root() {
            return Ok(());
        }
        let mut depth = relative.components().count().saturating_sub(1);
        for component in target.components() {
            match component {
                Component::Normal(_) => depth += 1,
                Component::ParentDir if depth == 0 => {
                    return Err(TarballError::LinkOutside {
                        entry: name.to_string(),
                        kind,
                        target: target.display().to_string(),
                    })
                }
                Component::ParentDir => depth -= 1,
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
            }
        }
        Ok(())
    }

    /// Accepts only targets that name an earlier entry by a relative path without `..`.
    fn check_hard_link(&self, name: &str, target: Option<&Path>) -> Result<(), TarballError> {
        let kind = kind_name(EntryType::Link);
        let target = non_empty_target(name, kind, target)?;
        let outside = target.has_root()
            || target
                .components()
                .any(|component| component == Component::ParentDir);
        if outside {
            return Err(TarballError::LinkOutside {
                entry: name.to_string(),
                kind,
                target: target.display().to_string(),
            });
        }
        let relative: PathBuf = target
            .components()
            .filter(|component| matches!(component, Component::Normal(_)))
            .collect();
        self.check_not_below_symlink(name, &relative)
    }
}

/// Returns `path` without `.` components, rejecting absolute paths and `..`.
fn relative_path(name: &str, path: &Path) -> Result<PathBuf, TarballError> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(TarballError::ParentComponent {
                    entry: name.to_string(),
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(TarballError::AbsolutePath {
                    entry: name.to_string(),
                })
            }
        }
    }
    Ok(relative)
}

fn non_empty_target<'p>(
    name: &str,
    kind: &'static str,
    target: Option<&'p Path>,
) -> Result<&'p Path, TarballError> {
    match target {
        Some(target) if !target.as_os_str().is_empty() => Ok(target),
        _ => Err(TarballError::EmptyLinkTarget {
            entry: name.to_string(),
            kind,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Size of the name field of a tar header, in bytes.
    const NAME_FIELD_BYTES: usize = 100;

    /// Builds tar archives in memory, including entries the `tar` crate's builder refuses
    /// (absolute paths, `..`), by writing the name field of the header directly.
    struct TarBuilder {
        builder: tar::Builder<Vec<u8>>,
    }

    impl TarBuilder {
        fn new() -> Self {
            TarBuilder {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        fn header(name: &str, kind: EntryType, mode: u32, size: u64) -> tar::Header {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(size);
            header.set_mtime(1_700_000_000);
            header.set_uid(0);
            header.set_gid(0);
            assert!(name.len() < NAME_FIELD_BYTES, "test entry name too long");
            let field = &mut header.as_old_mut().name;
            field.fill(0);
            field[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            header
        }

        fn file(mut self, name: &str, content: &[u8], mode: u32) -> Self {
            let header = Self::header(name, EntryType::Regular, mode, content.len() as u64);
            self.builder.append(&header, content).expect("append file");
            self
        }

        fn dir(mut self, name: &str, mode: u32) -> Self {
            let header = Self::header(name, EntryType::Directory, mode, 0);
            self.builder
                .append(&header, io::empty())
                .expect("append dir");
            self
        }

        fn link(mut self, name: &str, kind: EntryType, target: &str) -> Self {
            let mut header = Self::header(name, kind, 0o777, 0);
            let field = &mut header.as_old_mut().linkname;
            field.fill(0);
            field[..target.len()].copy_from_slice(target.as_bytes());
            header.set_cksum();
            self.builder
                .append(&header, io::empty())
                .expect("append link");
            self
        }

        fn device(mut self, name: &str) -> Self {
            let header = Self::header(name, EntryType::Char, 0o666, 0);
            self.builder
                .append(&header, io::empty())
                .expect("append device");
            self
        }

        fn finish(self) -> Vec<u8> {
            self.builder.into_inner().expect("finish archive")
        }
    }

    fn unpack_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<UnpackReport, TarballError>) {
        let dir = tempfile::tempdir().expect("create temp dir");
        let archive = dir.path().join("image.tar");
        fs::write(&archive, bytes).expect("write archive");
        let dest = dir.path().join("root");
        fs::create_dir(&dest).expect("create dest");
        let result = unpack(&archive, &dest, Owners::Caller);
        (dir, result)
    }

    fn good_archive() -> Vec<u8> {
        TarBuilder::new()
            .dir("bin/", 0o755)
            .file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
            .dir("etc/", 0o755)
            .file("etc/motd", b"hello\n", 0o644)
            .link("bin/sh", EntryType::Symlink, "/bin/tool")
            .link("etc/motd2", EntryType::Link, "etc/motd")
            .link("usr", EntryType::Symlink, "bin")
            .dir("ro/", 0o555)
            .file("ro/inside", b"x", 0o644)
            .finish()
    }

    #[test]
    fn unpacks_plain_archive() {
        let (dir, result) = unpack_bytes(&good_archive());
        let report = result.expect("unpack good archive");
        let root = dir.path().join("root");
        assert_eq!(
            fs::read_to_string(root.join("etc/motd")).expect("motd"),
            "hello\n"
        );
        assert_eq!(
            fs::read_link(root.join("bin/sh")).expect("sh link"),
            Path::new("/bin/tool")
        );
        let mode = fs::metadata(root.join("bin/tool"))
            .expect("stat tool")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        let ro_mode = fs::metadata(root.join("ro"))
            .expect("stat ro")
            .permissions()
            .mode();
        assert_eq!(ro_mode & 0o7777, 0o555, "directory modes are applied last");
        assert!(root.join("ro/inside").is_file());
        assert_eq!(report.unpacked, 9);
        assert!(report.skipped.is_empty());
    }

    #[test]
    fn unpacks_gzip_archive() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&good_archive()).expect("compress");
        let compressed = encoder.finish().expect("finish gzip");
        assert_eq!(compressed[..2], GZIP_MAGIC);

        let (dir, result) = unpack_bytes(&compressed);
        result.expect("unpack gzip archive");
        assert!(dir.path().join("root/bin/tool").is_file());
    }

    #[test]
    fn skips_device_nodes() {
        let archive = TarBuilder::new()
            .dir("dev/", 0o755)
            .device("dev/evil")
            .file("a", b"a", 0o644)
            .finish();
        let (dir, result) = unpack_bytes(&archive);
        let report = result.expect("unpack");
        assert_eq!(report.skipped, ["dev/evil"]);
        assert!(fs::symlink_metadata(dir.path().join("root/dev/evil")).is_err());
    }

    #[test]
    fn rejects_parent_component() {
        let archive = TarBuilder::new()
            .file("a", b"a", 0o644)
            .file("../x", b"x", 0o644)
            .finish();
        let (dir, result) = unpack_bytes(&archive);
        let err = result.expect_err("../x rejected");
        assert_eq!(
            err.to_string(),
            "entry \"../x\" contains a '..' component, which could write outside the image root"
        );
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn rejects_unsafe_entries() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "absolute path",
                TarBuilder::new().file("/etc/evil", b"x", 0o644).finish(),
                "entry \"/etc/evil\" has an absolute path; image tarballs contain relative paths only",
            ),
            (
                "nested parent component",
                TarBuilder::new().file("a/../../x", b"x", 0o644).finish(),
                "entry \"a/../../x\" contains a '..' component, which could write outside the image root",
            ),
            (
                "symlink climbing out",
                TarBuilder::new()
                    .link("etc/escape", EntryType::Symlink, "../../outside")
                    .finish(),
                "symlink entry \"etc/escape\" -> \"../../outside\" points outside the image root",
            ),
            (
                "absolute hard link",
                TarBuilder::new()
                    .link("passwd", EntryType::Link, "/etc/passwd")
                    .finish(),
                "hard link entry \"passwd\" -> \"/etc/passwd\" points outside the image root",
            ),
            (
                "hard link with parent component",
                TarBuilder::new()
                    .link("passwd", EntryType::Link, "../etc/passwd")
                    .finish(),
                "hard link entry \"passwd\" -> \"../etc/passwd\" points outside the image root",
            ),
            (
                "write through symlink",
                TarBuilder::new()
                    .link("etc", EntryType::Symlink, "/etc")
                    .file("etc/passwd", b"x", 0o644)
                    .finish(),
                "entry \"etc/passwd\" lies below the symlink entry \"etc\"; writing it would follow the symlink",
            ),
            (
                "empty symlink target",
                TarBuilder::new().link("a", EntryType::Symlink, "").finish(),
                "symlink entry \"a\" has an empty target",
            ),
            (
                "symlink as root",
                TarBuilder::new().link("./", EntryType::Symlink, "/").finish(),
                "entry \"./\" of type symlink names the image root itself",
            ),
        ];
        for (case, archive, message) in cases {
            let (_dir, result) = unpack_bytes(&archive);
            let err = result.expect_err(case);
            assert_eq!(err.to_string(), message, "{case}");
        }
    }

    #[test]
    fn accepts_relative_symlink_inside_root() {
        let archive = TarBuilder::new()
            .dir("usr/lib/", 0o755)
            .link("usr/lib/libx.so", EntryType::Symlink, "../../lib/libx.so.1")
            .finish();
        let (_dir, result) = unpack_bytes(&archive);
        result.expect("a relative symlink that stays inside the root is accepted");
    }

    #[test]
    fn owner_outside_id_map_is_rejected() {
        let mut header = TarBuilder::header("data", EntryType::Regular, 0o644, 1);
        header.set_uid(70_000);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"x"[..]).expect("append");
        let archive = builder.into_inner().expect("finish archive");

        let dir = tempfile::tempdir().expect("create temp dir");
        let dest = dir.path().join("root");
        fs::create_dir(&dest).expect("create dest");
        let err = unpack_stream(&archive[..], &dest, Owners::Shifted(IdMap::default()))
            .expect_err("uid 70000 is outside the map");
        assert_eq!(
            err.to_string(),
            "entry \"data\" is owned by 70000:0, outside the silo id range 0 to 65535; change \
             its owner in the image or turn off user namespaces"
        );
        assert!(!dest.join("data").exists(), "nothing is written");
    }

    #[test]
    fn truncated_archive_is_an_error() {
        let mut archive = good_archive();
        archive.truncate(700);
        let (_dir, result) = unpack_bytes(&archive);
        assert!(result.is_err(), "{result:?}");
    }
}
