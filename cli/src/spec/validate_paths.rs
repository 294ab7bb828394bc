//! Rules on the `file`, `files` and `bind` blocks of a silo: labels, required attributes and
//! the paths inside the silo. Whether the paths on the user's machine exist is checked by
//! `bundle`, which reads them.

use std::collections::HashMap;

use super::declared::{DeclaredBind, DeclaredFile, FileBlockKind};
use super::diagnostics::Diagnostics;
use super::value::{Field, Located};

/// Maximum length in bytes of a path inside the silo: PATH_MAX on Linux.
pub(super) const MAX_SILO_PATH_BYTES: usize = 4096;

/// Maximum length of a bind id in characters.
const MAX_BIND_ID_CHARS: usize = 64;

/// Reports duplicate labels and silo paths, missing attributes and invalid silo paths of the
/// `file` and `files` blocks of one silo.
pub(super) fn check_files(
    files: &[DeclaredFile],
    silo_prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) {
    let mut first_use_of_label: HashMap<(FileBlockKind, &str), usize> = HashMap::new();
    let mut first_use_of_silo_path: HashMap<&str, usize> = HashMap::new();

    for file in files {
        let ident = file.kind.ident();
        check_unique_label(
            &mut first_use_of_label,
            (file.kind, file.label.as_str()),
            file.header,
            &format!("{silo_prefix}duplicate {ident} block {:?}", file.label),
            diagnostics,
        );

        if file.path.is_absent() {
            let target = match file.kind {
                FileBlockKind::File => "a file",
                FileBlockKind::Tree => "a folder",
            };
            diagnostics.report(
                file.header,
                format!(
                    "{}missing path; add path = \"...\" naming {target} on this machine (relative paths start at the silo file's folder)",
                    file.prefix
                ),
            );
        }

        let silo_path = match &file.silo_path {
            Field::Valid(silo_path) => silo_path,
            Field::Invalid => continue,
            Field::Absent => {
                diagnostics.report(
                    file.header,
                    format!(
                        "{}missing silo_path; add silo_path = \"/...\" (an absolute path inside the silo)",
                        file.prefix
                    ),
                );
                continue;
            }
        };
        if let Some(problem) =
            silo_path_problem("silo_path", &silo_path.value, path_kind(file.kind))
        {
            diagnostics.report(silo_path.offset, format!("{}{problem}", file.prefix));
            continue;
        }
        check_unique_path(
            &mut first_use_of_silo_path,
            silo_path,
            &format!("{}duplicate silo_path", file.prefix),
            "give each file and folder its own silo_path",
            diagnostics,
        );
    }
}

/// Reports duplicate labels and paths, missing attributes, invalid ids and invalid paths of the
/// `bind` blocks of one silo.
pub(super) fn check_binds(
    binds: &[DeclaredBind],
    silo_prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) {
    let mut first_use_of_label: HashMap<&str, usize> = HashMap::new();
    let mut first_use_of_path: HashMap<&str, usize> = HashMap::new();

    for bind in binds {
        check_unique_label(
            &mut first_use_of_label,
            bind.label.as_str(),
            bind.header,
            &format!("{silo_prefix}duplicate bind block {:?}", bind.label),
            diagnostics,
        );

        match &bind.id {
            Field::Absent => diagnostics.report(
                bind.header,
                format!(
                    "{}missing id; add id = \"...\" naming a bind source of the agent's configuration",
                    bind.prefix
                ),
            ),
            Field::Valid(id) if !is_simple_name(&id.value) => diagnostics.report(
                id.offset,
                format!(
                    "{}invalid bind id {:?}; use 1-{MAX_BIND_ID_CHARS} letters, digits, '-', '_' and '.', starting with a letter or digit",
                    bind.prefix, id.value
                ),
            ),
            Field::Valid(_) | Field::Invalid => {}
        }

        let path = match &bind.path {
            Field::Valid(path) => path,
            Field::Invalid => continue,
            Field::Absent => {
                diagnostics.report(
                    bind.header,
                    format!(
                        "{}missing path; add path = \"/...\" (an absolute path inside the silo)",
                        bind.prefix
                    ),
                );
                continue;
            }
        };
        if let Some(problem) = silo_path_problem("path", &path.value, PathKind::Folder) {
            diagnostics.report(path.offset, format!("{}{problem}", bind.prefix));
            continue;
        }
        check_unique_path(
            &mut first_use_of_path,
            path,
            &format!("{}duplicate bind path", bind.prefix),
            "give each bind its own path",
            diagnostics,
        );
    }
}

/// Reports a label already used by an earlier block of the same kind. `message` names the
/// duplicate; the first position and the fix are appended.
fn check_unique_label<K: std::hash::Hash + Eq>(
    first_use: &mut HashMap<K, usize>,
    key: K,
    header: usize,
    message: &str,
    diagnostics: &mut Diagnostics<'_>,
) {
    match first_use.get(&key) {
        Some(&first) => {
            let first_position = diagnostics.position(first);
            diagnostics.report(
                header,
                format!("{message}, first at {first_position}; give each block its own label"),
            );
        }
        None => {
            first_use.insert(key, header);
        }
    }
}

fn check_unique_path<'a>(
    first_use: &mut HashMap<&'a str, usize>,
    path: &'a Located<String>,
    message: &str,
    fix: &str,
    diagnostics: &mut Diagnostics<'_>,
) {
    match first_use.get(path.value.as_str()) {
        Some(&first) => {
            let first_position = diagnostics.position(first);
            diagnostics.report(
                path.offset,
                format!(
                    "{message} {:?}, first used at {first_position}; {fix}",
                    path.value
                ),
            );
        }
        None => {
            first_use.insert(&path.value, path.offset);
        }
    }
}

/// What a path inside the silo names, which decides the advice about a trailing `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathKind {
    File,
    Folder,
}

/// Returns what the `silo_path` of a `file` or `files` block names.
pub(super) fn path_kind(kind: FileBlockKind) -> PathKind {
    match kind {
        FileBlockKind::File => PathKind::File,
        FileBlockKind::Tree => PathKind::Folder,
    }
}

/// Describes what is wrong with a path inside the silo, if anything. The agent places files
/// there, so the path must be absolute, must not climb out with `..`, and must be in normal
/// form (no empty or `.` components), so that two spellings of one path are caught as
/// duplicates. `attribute` names the path in the message.
pub(super) fn silo_path_problem(attribute: &str, path: &str, kind: PathKind) -> Option<String> {
    if !path.starts_with('/') {
        return Some(format!(
            "{attribute} {path:?} is not absolute; start it with /"
        ));
    }
    if path.len() > MAX_SILO_PATH_BYTES {
        return Some(format!(
            "{attribute} is {} bytes long, over the limit of {MAX_SILO_PATH_BYTES} bytes; use a shorter path",
            path.len()
        ));
    }
    if path == "/" {
        return Some(format!(
            "{attribute} \"/\" is the silo's root folder; use a path below it"
        ));
    }
    if path.split('/').any(|component| component == "..") {
        return Some(format!(
            "{attribute} {path:?} contains a \"..\" component; write the path without \"..\""
        ));
    }
    if path.ends_with('/') {
        let fix = match kind {
            PathKind::File => "write the path of the file itself",
            PathKind::Folder => "remove the trailing /",
        };
        return Some(format!("{attribute} {path:?} ends with /; {fix}"));
    }
    let components: Vec<&str> = path.split('/').skip(1).collect();
    if components
        .iter()
        .any(|component| component.is_empty() || *component == ".")
    {
        let normal: Vec<&str> = components
            .into_iter()
            .filter(|component| !component.is_empty() && *component != ".")
            .collect();
        return Some(format!(
            "{attribute} {path:?} has an empty or \".\" component; write it as {:?}",
            format!("/{}", normal.join("/"))
        ));
    }
    None
}

/// Checks a bind id: letters, digits, '-', '_' and '.', starting with a letter or digit.
fn is_simple_name(id: &str) -> bool {
    let starts_well = id
        .chars()
        .next()
        .is_some_and(|character| character.is_ascii_alphanumeric());
    let characters_ok = id
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || matches!(character, '-' | '_' | '.'));
    starts_well && characters_ok && id.len() <= MAX_BIND_ID_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(path: &str, kind: PathKind) -> Option<String> {
        silo_path_problem("silo_path", path, kind)
    }

    #[test]
    fn silo_path_accepts_normal_absolute_paths() {
        for path in ["/script.sh", "/etc/app/conf.d/x.conf", "/a..b", "/.hidden"] {
            assert_eq!(problem(path, PathKind::File), None, "{path:?}");
        }
    }

    #[test]
    fn silo_path_rules() {
        assert_eq!(
            problem("script.sh", PathKind::File),
            Some("silo_path \"script.sh\" is not absolute; start it with /".to_owned())
        );
        assert_eq!(
            problem("/etc/../x", PathKind::File),
            Some("silo_path \"/etc/../x\" contains a \"..\" component; write the path without \"..\"".to_owned())
        );
        assert_eq!(
            problem("/etc/", PathKind::File),
            Some("silo_path \"/etc/\" ends with /; write the path of the file itself".to_owned())
        );
        assert_eq!(
            problem("/etc/", PathKind::Folder),
            Some("silo_path \"/etc/\" ends with /; remove the trailing /".to_owned())
        );
        assert_eq!(
            problem("/", PathKind::Folder),
            Some("silo_path \"/\" is the silo's root folder; use a path below it".to_owned())
        );
        assert_eq!(
            problem("/a//b/./c", PathKind::File),
            Some(
                "silo_path \"/a//b/./c\" has an empty or \".\" component; write it as \"/a/b/c\""
                    .to_owned()
            )
        );
    }

    #[test]
    fn silo_path_length_limit() {
        let at_limit = format!("/{}", "a".repeat(MAX_SILO_PATH_BYTES - 1));
        let over_limit = format!("/{}", "a".repeat(MAX_SILO_PATH_BYTES));

        assert_eq!(problem(&at_limit, PathKind::File), None);
        assert_eq!(
            problem(&over_limit, PathKind::File),
            Some(
                "silo_path is 4097 bytes long, over the limit of 4096 bytes; use a shorter path"
                    .to_owned()
            )
        );
    }

    #[test]
    fn bind_ids() {
        for id in ["data", "Data_1", "a.b-c", &"a".repeat(64)] {
            assert!(is_simple_name(id), "{id:?} should be valid");
        }
        for id in ["", ".x", "-x", "a/b", "a b", "é", &"a".repeat(65)] {
            assert!(!is_simple_name(id), "{id:?} should be invalid");
        }
    }
}
