//! Walk of the folder that a `files` block names into bundle entries: a `FILE_KIND_DIRECTORY`
//! entry for each folder, `FILE_KIND_REGULAR` for each file and `FILE_KIND_SYMLINK` for each
//! symlink, which is read with `readlink` and never followed. Parents come before their
//! children and names are sorted bytewise, so the same tree always gives the same order.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use colex_proto::{FileEntry, FileKind};

use super::bundle::{read_regular, Budget, Origin, PERMISSION_BITS};
use super::declared::DeclaredFile;
use super::diagnostics::Diagnostics;

/// A folder whose children are being walked.
struct OpenFolder {
    path: PathBuf,
    silo_path: String,
    /// Remaining child names, sorted in reverse so that `pop` returns the smallest.
    children: Vec<OsString>,
}

/// Walks the tree at `resolved` into entries whose root maps to `silo_path`. Reports every
/// entry that cannot be bundled (unreadable, a socket, FIFO or device, a name that is not
/// UTF-8) and leaves it out. The root itself may be a symlink to a folder, because the user
/// named it, but links inside the tree are never followed. Without a `silo_path` the root is
/// only examined.
pub(super) fn read_tree(
    file: &DeclaredFile,
    resolved: &Path,
    silo_path: Option<&str>,
    budget: &mut Budget,
    diagnostics: &mut Diagnostics<'_>,
) -> Vec<FileEntry> {
    let Some(path) = file.path.valid() else {
        return Vec::new();
    };
    let prefix = file.prefix.as_str();
    let mut walk = Walk {
        prefix,
        offset: path.offset,
        header: file.header,
        budget,
        diagnostics,
        entries: Vec::new(),
    };

    let root_mode = match fs::metadata(resolved) {
        Ok(metadata) if metadata.is_dir() => metadata.permissions().mode() & PERMISSION_BITS,
        Ok(_) => {
            walk.report(format!(
                "path {:?} resolves to {}, which is not a folder; point it at a folder, or use a file block for one file",
                path.value,
                resolved.display()
            ));
            return Vec::new();
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            walk.report(format!(
                "path {:?} not found at {}; relative paths start at the silo file's folder",
                path.value,
                resolved.display()
            ));
            return Vec::new();
        }
        Err(error) => {
            walk.report(format!("failed to read {}: {error}", resolved.display()));
            return Vec::new();
        }
    };
    let Some(silo_path) = silo_path else {
        return Vec::new();
    };

    if !walk.take_entry() {
        return Vec::new();
    }
    walk.entries.push(directory_entry(silo_path, root_mode));
    let mut stack = Vec::new();
    if let Some(root) = walk.open_folder(resolved.to_path_buf(), silo_path.to_owned()) {
        stack.push(root);
    }

    while let Some(folder) = stack.last_mut() {
        let Some(name) = folder.children.pop() else {
            stack.pop();
            continue;
        };
        let child_path = folder.path.join(&name);
        let Some(name) = name.to_str() else {
            walk.report(format!(
                "{} has a name that is not UTF-8, which a silo path cannot carry; rename it",
                child_path.display()
            ));
            continue;
        };
        let child_silo_path = format!("{}/{name}", folder.silo_path);

        if !walk.take_entry() {
            break;
        }
        if let Some(subfolder) = walk.add_child(child_path, child_silo_path) {
            stack.push(subfolder);
        }
    }
    walk.entries
}

/// State of one tree walk: where to report and what was gathered.
struct Walk<'w, 'd, 's> {
    prefix: &'w str,
    /// Offset of the block's `path` attribute, where problems inside the tree are reported.
    offset: usize,
    /// Offset of the block, where the limits are reported.
    header: usize,
    budget: &'w mut Budget,
    diagnostics: &'d mut Diagnostics<'s>,
    entries: Vec<FileEntry>,
}

impl Walk<'_, '_, '_> {
    fn report(&mut self, message: String) {
        self.diagnostics
            .report(self.offset, format!("{}{message}", self.prefix));
    }

    fn take_entry(&mut self) -> bool {
        self.budget
            .take_entry(self.header, self.prefix, self.diagnostics)
    }

    /// Lists a folder's children, sorted for `OpenFolder::children`.
    fn open_folder(&mut self, path: PathBuf, silo_path: String) -> Option<OpenFolder> {
        let listing = fs::read_dir(&path).and_then(|entries| {
            entries
                .map(|entry| entry.map(|entry| entry.file_name()))
                .collect::<io::Result<Vec<OsString>>>()
        });
        match listing {
            Ok(mut children) => {
                children.sort_unstable_by(|left, right| {
                    right.as_encoded_bytes().cmp(left.as_encoded_bytes())
                });
                Some(OpenFolder {
                    path,
                    silo_path,
                    children,
                })
            }
            Err(error) => {
                self.report(format!("failed to list {}: {error}", path.display()));
                None
            }
        }
    }

    /// Adds the entry for one child of a folder. Returns the child when it is a folder whose
    /// children come next.
    fn add_child(&mut self, path: PathBuf, silo_path: String) -> Option<OpenFolder> {
        let metadata = match fs::symlink_metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) => {
                self.report(format!("failed to read {}: {error}", path.display()));
                return None;
            }
        };
        let file_type = metadata.file_type();
        let mode = metadata.permissions().mode() & PERMISSION_BITS;

        if file_type.is_dir() {
            self.entries.push(directory_entry(&silo_path, mode));
            return self.open_folder(path, silo_path);
        }

        if file_type.is_symlink() {
            match fs::read_link(&path) {
                Ok(target) => match target.into_os_string().into_string() {
                    Ok(link_target) => self.entries.push(FileEntry {
                        silo_path,
                        content: Vec::new(),
                        mode,
                        kind: FileKind::Symlink.into(),
                        link_target,
                        ..Default::default()
                    }),
                    Err(_) => self.report(format!(
                        "symlink {} has a target that is not UTF-8, which a silo file cannot carry; change the link",
                        path.display()
                    )),
                },
                Err(error) => self.report(format!("failed to read symlink {}: {error}", path.display())),
            }
            return None;
        }

        if file_type.is_file() {
            let origin = Origin {
                header: self.header,
                prefix: self.prefix,
                noun: "folder",
            };
            match read_regular(&path, &silo_path, self.budget, origin) {
                Ok(Some(entry)) => self.entries.push(entry),
                // Over the byte limit, which `Budget` reports once for the whole bundle.
                Ok(None) => {}
                Err(error) => self.report(format!("failed to read {}: {error}", path.display())),
            }
            return None;
        }

        let kind = if file_type.is_socket() {
            "a socket"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_block_device() {
            "a block device"
        } else if file_type.is_char_device() {
            "a character device"
        } else {
            "of an unknown file type"
        };
        self.report(format!(
            "{} is {kind}, which a files tree cannot contain; remove it from the folder",
            path.display()
        ));
        None
    }
}

fn directory_entry(silo_path: &str, mode: u32) -> FileEntry {
    FileEntry {
        silo_path: silo_path.to_owned(),
        content: Vec::new(),
        mode,
        kind: FileKind::Directory.into(),
        link_target: String::new(),
        ..Default::default()
    }
}
