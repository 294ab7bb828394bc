//! Checks across the bundle entries of one silo: two blocks that place the same path, and a
//! block whose `silo_path` lies below a symlink or a regular file that another block places.
//! The agent never follows a symlink while placing files, so such a path could not be placed.

use std::collections::HashMap;

use colex_proto::FileKind;

use super::bundle::BundledEntry;
use super::declared::DeclaredSilo;
use super::diagnostics::{quoted_name, Diagnostics};

/// The first entry placed at a path.
#[derive(Debug, Clone, Copy)]
struct Placed {
    kind: FileKind,
    block: usize,
    is_root: bool,
}

/// Reports the conflicts between the entries of one silo. Two blocks with the same
/// `silo_path` were reported by `validate_paths`, so a duplicate is reported here only when a
/// path inside a tree is involved, and only the first one for each block.
pub(super) fn check(
    silo: &DeclaredSilo,
    entries: &[BundledEntry],
    diagnostics: &mut Diagnostics<'_>,
) {
    let mut placed: HashMap<&str, Placed> = HashMap::with_capacity(entries.len());
    let mut block_reported = vec![false; silo.files.len()];

    for bundled in entries {
        let path = bundled.entry.silo_path.as_str();
        let this = Placed {
            kind: bundled.entry.kind(),
            block: bundled.block,
            is_root: bundled.is_root,
        };
        let Some(first) = placed.get(path).copied() else {
            placed.insert(path, this);
            continue;
        };
        let already_reported = block_reported.get(this.block).copied().unwrap_or(true);
        if (first.is_root && this.is_root) || already_reported {
            continue;
        }
        if let Some(flag) = block_reported.get_mut(this.block) {
            *flag = true;
        }
        let message = format!(
            "{}places {path:?}, which {} also places; give each file and folder its own silo_path",
            block_prefix_of(silo, this.block),
            block_name(silo, first.block, diagnostics)
        );
        diagnostics.report(silo_path_offset(silo, this.block), message);
    }

    for (index, file) in silo.files.iter().enumerate() {
        let Some(silo_path) = file.silo_path.valid() else {
            continue;
        };
        let Some((ancestor, below)) = placed_ancestor(&silo_path.value, &placed) else {
            continue;
        };
        if below.block == index {
            continue;
        }
        let owner = block_name(silo, below.block, diagnostics);
        let message = if below.kind == FileKind::Symlink {
            format!(
                "{}silo_path {:?} passes through the symlink {ancestor:?} that {owner} places, and symlinks are never followed; use the path the link points to",
                file.prefix, silo_path.value
            )
        } else {
            format!(
                "{}silo_path {:?} is below {ancestor:?}, which {owner} places as a regular file; choose a path that is not inside a file",
                file.prefix, silo_path.value
            )
        };
        diagnostics.report(silo_path.offset, message);
    }
}

/// Returns the outermost proper ancestor of an absolute `path` that is placed as something
/// other than a folder.
fn placed_ancestor<'p>(path: &'p str, placed: &HashMap<&str, Placed>) -> Option<(&'p str, Placed)> {
    // The first `/` starts the path, so the first ancestor ends at the second one.
    path.match_indices('/').skip(1).find_map(|(index, _)| {
        let ancestor = &path[..index];
        placed
            .get(ancestor)
            .filter(|entry| entry.kind != FileKind::Directory)
            .map(|entry| (ancestor, *entry))
    })
}

/// Names a block for a message about another block: `files "site" (FILE:LINE:COLUMN)`.
fn block_name(silo: &DeclaredSilo, block: usize, diagnostics: &Diagnostics<'_>) -> String {
    match silo.files.get(block) {
        Some(file) => format!(
            "{} {} ({})",
            file.kind.ident(),
            quoted_name(&file.label),
            diagnostics.position(file.header)
        ),
        None => "another block".to_owned(),
    }
}

fn block_prefix_of(silo: &DeclaredSilo, block: usize) -> &str {
    silo.files
        .get(block)
        .map_or(silo.prefix.as_str(), |file| file.prefix.as_str())
}

fn silo_path_offset(silo: &DeclaredSilo, block: usize) -> usize {
    silo.files
        .get(block)
        .and_then(|file| file.silo_path.valid())
        .map_or(silo.header, |silo_path| silo_path.offset)
}
