//! Reading of the files that `file` and `files` blocks name, into the bundle sent with the
//! silos. Each silo's entries keep the order of its blocks; a `files` tree contributes its
//! folders, files and symlinks as `tree` walks them.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use colex_proto::{FileEntry, FileKind};

use super::conflicts;
use super::declared::{DeclaredFile, DeclaredSilo, FileBlockKind};
use super::diagnostics::Diagnostics;
use super::tree;
use super::validate_paths::{path_kind, silo_path_problem};

/// Maximum total size, in bytes, of the contents of all files of one silo file. The whole
/// bundle travels in one `Up` request, which the services cap at
/// `colex_proto::MAX_MESSAGE_BYTES`.
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;

/// Maximum number of entries (files, folders and symlinks) of all silos of one silo file. It
/// stops the walk of a `files` path that names a much larger folder than intended, such as `/`.
pub const MAX_BUNDLE_ENTRIES: usize = 10_000;

/// Bits of a file's mode copied into the silo: read, write and execute for user, group and
/// others. Set-user-ID, set-group-ID and sticky bits are dropped on purpose.
pub(super) const PERMISSION_BITS: u32 = 0o777;

const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// One entry of a silo's bundle with the index of the `file` or `files` block that made it.
#[derive(Debug)]
pub(super) struct BundledEntry {
    pub(super) entry: FileEntry,
    /// Index into `DeclaredSilo::files`.
    pub(super) block: usize,
    /// Whether the entry is the block's own `silo_path` rather than a path inside a tree.
    pub(super) is_root: bool,
}

/// The block that a bundle entry comes from, named in messages about the limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin<'a> {
    /// Byte offset of the block identifier.
    pub(super) header: usize,
    pub(super) prefix: &'a str,
    /// What the block names: "file" or "folder".
    pub(super) noun: &'static str,
}

/// Running totals of one silo file's bundle, shared by all its blocks.
#[derive(Debug, Default)]
pub(super) struct Budget {
    total_bytes: u64,
    entries: usize,
    /// The block whose contents took the total over `MAX_BUNDLE_BYTES`: header offset, message
    /// prefix and noun, as in `Origin`.
    bytes_crossed_at: Option<(usize, String, &'static str)>,
    /// Whether `MAX_BUNDLE_ENTRIES` was reached and reported.
    entries_exhausted: bool,
}

impl Budget {
    /// Counts one more entry. Returns false, after reporting it once at `offset`, when the
    /// limit is reached.
    pub(super) fn take_entry(
        &mut self,
        offset: usize,
        prefix: &str,
        diagnostics: &mut Diagnostics<'_>,
    ) -> bool {
        if self.entries >= MAX_BUNDLE_ENTRIES {
            if !self.entries_exhausted {
                self.entries_exhausted = true;
                diagnostics.report(
                    offset,
                    format!(
                        "{prefix}the bundle reaches the limit of {MAX_BUNDLE_ENTRIES} files, folders and symlinks for one silo file here; check that path names the intended folder, or place fewer files"
                    ),
                );
            }
            return false;
        }
        self.entries += 1;
        true
    }

    /// Reads a regular file's contents if they fit in the remaining room. `stat_size` is the
    /// size `stat` returned, used to skip reading a file that cannot fit. Returns `None` when
    /// the file does not fit, and `report` then reports the limit once.
    pub(super) fn read_contents(
        &mut self,
        opened: fs::File,
        stat_size: u64,
        origin: Origin<'_>,
    ) -> io::Result<Option<Vec<u8>>> {
        if self.total_bytes.saturating_add(stat_size) > MAX_BUNDLE_BYTES {
            self.total_bytes = self.total_bytes.saturating_add(stat_size);
            self.mark_crossed(origin);
            return Ok(None);
        }

        // One byte past the remaining room is enough to tell that a file which grew after
        // `stat` crosses the limit, without reading all of it.
        let remaining_bytes = MAX_BUNDLE_BYTES - self.total_bytes;
        let mut content = Vec::new();
        opened.take(remaining_bytes + 1).read_to_end(&mut content)?;

        // Count the bytes read rather than the size from `stat`, because the file may have
        // grown in between.
        let read_bytes = u64::try_from(content.len()).unwrap_or(u64::MAX);
        self.total_bytes = self.total_bytes.saturating_add(read_bytes);
        if self.total_bytes > MAX_BUNDLE_BYTES {
            self.mark_crossed(origin);
            return Ok(None);
        }
        Ok(Some(content))
    }

    fn mark_crossed(&mut self, origin: Origin<'_>) {
        self.bytes_crossed_at
            .get_or_insert_with(|| (origin.header, origin.prefix.to_owned(), origin.noun));
    }

    /// Reports the byte limit, once, at the block that crossed it.
    fn report(self, diagnostics: &mut Diagnostics<'_>) {
        let Some((offset, prefix, noun)) = self.bytes_crossed_at else {
            return;
        };
        let total_bytes = self.total_bytes;
        let total_mib = total_bytes as f64 / BYTES_PER_MIB;
        diagnostics.report(
            offset,
            format!(
                "{prefix}file contents reach {total_bytes} bytes ({total_mib:.1} MiB) with this {noun}, over the limit of {MAX_BUNDLE_BYTES} bytes (64 MiB) for one silo file; remove or shrink files"
            ),
        );
    }
}

/// Reads every `file` and `files` block of every silo, in order. Relative paths resolve against
/// `base_dir`. A block whose `silo_path` is missing or invalid (reported by `validate_paths`)
/// has its path examined but not read. Returns one list of entries per silo, leaving out (and
/// reporting) what failed. A file that would take the running total past `MAX_BUNDLE_BYTES` is
/// only checked with `stat`, not read.
pub(super) fn read_bundle(
    silos: &[DeclaredSilo],
    base_dir: &Path,
    diagnostics: &mut Diagnostics<'_>,
) -> Vec<Vec<FileEntry>> {
    let mut budget = Budget::default();
    let mut bundle = Vec::with_capacity(silos.len());

    for silo in silos {
        let mut entries: Vec<BundledEntry> = Vec::new();
        for (index, file) in silo.files.iter().enumerate() {
            let Some(path) = file.path.valid() else {
                continue;
            };
            let silo_path = file
                .silo_path
                .valid()
                .map(|silo_path| silo_path.value.as_str())
                .filter(|silo_path| {
                    silo_path_problem("silo_path", silo_path, path_kind(file.kind)).is_none()
                });
            // Collecting the components drops `.` components, so messages show a clean path.
            let resolved: PathBuf = base_dir.join(&path.value).components().collect();
            let found = match file.kind {
                FileBlockKind::File => {
                    read_file_block(file, &resolved, silo_path, &mut budget, diagnostics)
                        .into_iter()
                        .collect()
                }
                FileBlockKind::Tree => {
                    tree::read_tree(file, &resolved, silo_path, &mut budget, diagnostics)
                }
            };
            entries.extend(
                found
                    .into_iter()
                    .enumerate()
                    .map(|(position, entry)| BundledEntry {
                        entry,
                        block: index,
                        is_root: position == 0,
                    }),
            );
        }

        conflicts::check(silo, &entries, diagnostics);
        bundle.push(entries.into_iter().map(|bundled| bundled.entry).collect());
    }

    budget.report(diagnostics);
    bundle
}

/// Reads the regular file that a `file` block names into an entry at `silo_path`, or reports
/// why it cannot. Symbolic links are followed. Without a `silo_path` the file is only examined.
fn read_file_block(
    file: &DeclaredFile,
    resolved: &Path,
    silo_path: Option<&str>,
    budget: &mut Budget,
    diagnostics: &mut Diagnostics<'_>,
) -> Option<FileEntry> {
    let path = file.path.valid()?;
    let prefix = file.prefix.as_str();
    let problem = match fs::metadata(resolved) {
        Ok(metadata) if metadata.is_file() => None,
        Ok(metadata) if metadata.is_dir() => Some(format!(
            "{prefix}path {:?} resolves to {}, which is a folder; use a files block for a folder, or point path at a file",
            path.value,
            resolved.display()
        )),
        Ok(_) => Some(format!(
            "{prefix}path {:?} resolves to {}, which is not a regular file; point it at a file",
            path.value,
            resolved.display()
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Some(format!(
            "{prefix}path {:?} not found at {}; relative paths start at the silo file's folder",
            path.value,
            resolved.display()
        )),
        Err(error) => Some(format!("{prefix}failed to read {}: {error}", resolved.display())),
    };
    if let Some(message) = problem {
        diagnostics.report(path.offset, message);
        return None;
    }
    let silo_path = silo_path?;

    if !budget.take_entry(file.header, prefix, diagnostics) {
        return None;
    }
    let origin = Origin {
        header: file.header,
        prefix,
        noun: "file",
    };
    match read_regular(resolved, silo_path, budget, origin) {
        Ok(entry) => entry,
        Err(error) => {
            diagnostics.report(
                path.offset,
                format!("{prefix}failed to read {}: {error}", resolved.display()),
            );
            None
        }
    }
}

/// Opens a regular file and reads it into a `FILE_KIND_REGULAR` entry, keeping its permission
/// bits. Returns `None` when its contents do not fit in the budget.
pub(super) fn read_regular(
    path: &Path,
    silo_path: &str,
    budget: &mut Budget,
    origin: Origin<'_>,
) -> io::Result<Option<FileEntry>> {
    let opened = fs::File::open(path)?;
    let metadata = opened.metadata()?;
    if !metadata.is_file() {
        // Replaced by something else since it was examined.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file any more",
        ));
    }
    let mode = metadata.permissions().mode() & PERMISSION_BITS;
    let Some(content) = budget.read_contents(opened, metadata.len(), origin)? else {
        return Ok(None);
    };
    Ok(Some(FileEntry {
        silo_path: silo_path.to_owned(),
        content,
        mode,
        kind: FileKind::Regular.into(),
        link_target: String::new(),
        ..Default::default()
    }))
}
