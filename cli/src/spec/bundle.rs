//! Reading of the files that `file` blocks name, into the bundle sent with the silos.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use colex_proto::FileEntry;

use super::declared::{file_prefix, DeclaredFile, DeclaredSilo};
use super::diagnostics::Diagnostics;

/// Maximum total size, in bytes, of the contents of all `file` blocks of one silo file. The
/// whole bundle travels in one `Up` request, which the services cap at
/// `colex_proto::MAX_MESSAGE_BYTES`.
pub const MAX_BUNDLE_BYTES: u64 = 64 * 1024 * 1024;

/// Bits of a file's mode copied into the silo: read, write and execute for user, group and
/// others. Set-user-ID, set-group-ID and sticky bits are dropped on purpose.
const PERMISSION_BITS: u32 = 0o777;

const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// Reads the contents and permission bits of every `file` block of every silo, in order.
/// Relative paths resolve against `base_dir`. Returns one list of entries per silo, leaving out
/// (and reporting) the files that failed. A file that would take the running total past
/// `MAX_BUNDLE_BYTES` is only checked with `stat`, not read.
pub(super) fn read_bundle(
    silos: &[DeclaredSilo],
    base_dir: &Path,
    diagnostics: &mut Diagnostics<'_>,
) -> Vec<Vec<FileEntry>> {
    let mut total_bytes: u64 = 0;
    // The file block whose contents took the total over the limit, with its message prefix.
    let mut crossed_at: Option<(usize, String)> = None;
    let mut bundle = Vec::with_capacity(silos.len());

    for silo in silos {
        let mut entries = Vec::with_capacity(silo.files.len());
        for file in &silo.files {
            let prefix = file_prefix(&silo.prefix, &file.label);
            let Some(path) = file.path.valid() else {
                continue;
            };
            // Collecting the components drops `.` components, so messages show a clean path.
            let resolved: PathBuf = base_dir.join(&path.value).components().collect();

            let Some(size) =
                regular_file_size(&resolved, &path.value, &prefix, path.offset, diagnostics)
            else {
                continue;
            };
            if total_bytes.saturating_add(size) > MAX_BUNDLE_BYTES {
                total_bytes = total_bytes.saturating_add(size);
                crossed_at.get_or_insert((file.header, prefix));
                continue;
            }

            // One byte past the remaining room is enough to tell that a file which grew after
            // `stat` crosses the limit, without reading all of it.
            let remaining_bytes = MAX_BUNDLE_BYTES - total_bytes;
            match read_entry(file, &resolved, remaining_bytes + 1) {
                Ok(Some(entry)) => {
                    // Count the bytes read rather than the size from `stat`, because the file
                    // may have grown in between.
                    let read_bytes = u64::try_from(entry.content.len()).unwrap_or(u64::MAX);
                    total_bytes = total_bytes.saturating_add(read_bytes);
                    if total_bytes > MAX_BUNDLE_BYTES {
                        crossed_at.get_or_insert((file.header, prefix));
                    }
                    entries.push(entry);
                }
                // Missing silo_path, reported by `validate`.
                Ok(None) => total_bytes = total_bytes.saturating_add(size),
                Err(error) => diagnostics.report(
                    path.offset,
                    format!("{prefix}failed to read {}: {error}", resolved.display()),
                ),
            }
        }
        bundle.push(entries);
    }

    if let Some((offset, prefix)) = crossed_at {
        let total_mib = total_bytes as f64 / BYTES_PER_MIB;
        diagnostics.report(
            offset,
            format!(
                "{prefix}file contents reach {total_bytes} bytes ({total_mib:.1} MiB) with this file, over the limit of {MAX_BUNDLE_BYTES} bytes (64 MiB) for one silo file; remove or shrink files"
            ),
        );
    }
    bundle
}

/// Returns the size of a file that `path` names, after reporting why it cannot be used if it is
/// missing or not a regular file. Symbolic links are followed.
fn regular_file_size(
    resolved: &Path,
    written: &str,
    prefix: &str,
    offset: usize,
    diagnostics: &mut Diagnostics<'_>,
) -> Option<u64> {
    let message = match fs::metadata(resolved) {
        Ok(metadata) if metadata.is_file() => return Some(metadata.len()),
        Ok(_) => format!(
            "{prefix}path {written:?} resolves to {}, which is not a regular file; point it at a file",
            resolved.display()
        ),
        Err(error) if error.kind() == io::ErrorKind::NotFound => format!(
            "{prefix}path {written:?} not found at {}; relative paths start at the silo file's folder",
            resolved.display()
        ),
        Err(error) => format!("{prefix}failed to read {}: {error}", resolved.display()),
    };
    diagnostics.report(offset, message);
    None
}

/// Reads at most `max_bytes` of one file into an entry, or returns `None` when the block has no
/// valid `silo_path`.
fn read_entry(
    file: &DeclaredFile,
    resolved: &Path,
    max_bytes: u64,
) -> io::Result<Option<FileEntry>> {
    let Some(silo_path) = file.silo_path.valid() else {
        return Ok(None);
    };
    let opened = fs::File::open(resolved)?;
    let mode = opened.metadata()?.permissions().mode() & PERMISSION_BITS;
    let mut content = Vec::new();
    opened.take(max_bytes).read_to_end(&mut content)?;
    Ok(Some(FileEntry {
        silo_path: silo_path.value.clone(),
        content,
        mode,
        kind: colex_proto::FileKind::Regular.into(),
        link_target: String::new(),
    }))
}
