//! Silos as written in the silo file: typed values with their positions, before the checks of
//! `validate` and the file reads of `bundle`. A value is `None`, empty or `Field::Absent` when it
//! was absent or null. A value of the wrong type was reported while reading and is left out
//! (`Field::Invalid` where a later rule would otherwise report it as missing).

use super::diagnostics::quoted_name;
use super::value::{Field, Located};

#[derive(Debug, Default)]
pub(super) struct DeclaredSilo {
    /// Byte offset of the block identifier (`Silo`).
    pub(super) header: usize,
    /// Text that starts every message about this silo, made by `silo_prefix`.
    pub(super) prefix: String,
    pub(super) label: Option<String>,
    pub(super) name: Field<Located<String>>,
    pub(super) class: Option<String>,
    pub(super) tags: Vec<String>,
    pub(super) base: Option<Located<String>>,
    pub(super) binary: Field<DeclaredBinary>,
    /// The `file` and `files` blocks in the order written, which is the order of the bundle.
    pub(super) files: Vec<DeclaredFile>,
    pub(super) network: Option<DeclaredNetwork>,
    pub(super) binds: Vec<DeclaredBind>,
    pub(super) grants: Option<DeclaredGrants>,
    pub(super) resources: Option<DeclaredResources>,
    pub(super) count: Field<Located<i128>>,
    pub(super) placement: Option<DeclaredPlacement>,
    pub(super) restart: Option<DeclaredRestart>,
    /// Milliseconds between SIGTERM and SIGKILL.
    pub(super) kill_timeout_ms: Field<Located<u64>>,
}

#[derive(Debug, Default)]
pub(super) struct DeclaredBinary {
    pub(super) header: usize,
    pub(super) path: Field<Located<String>>,
    pub(super) args: Vec<Located<String>>,
    pub(super) env: Vec<Located<String>>,
}

/// Which of the two file blocks a `DeclaredFile` comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(super) enum FileBlockKind {
    /// `file`: one regular file.
    #[default]
    File,
    /// `files`: a directory tree.
    Tree,
}

impl FileBlockKind {
    pub(super) fn ident(self) -> &'static str {
        match self {
            FileBlockKind::File => "file",
            FileBlockKind::Tree => "files",
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct DeclaredFile {
    pub(super) header: usize,
    pub(super) kind: FileBlockKind,
    pub(super) label: String,
    /// Text that starts every message about this block, made by `block_prefix`.
    pub(super) prefix: String,
    /// Path on the user's machine, relative to the silo file's folder unless absolute.
    pub(super) path: Field<Located<String>>,
    pub(super) silo_path: Field<Located<String>>,
}

#[derive(Debug, Default)]
pub(super) struct DeclaredNetwork {
    pub(super) internet_access: bool,
    pub(super) nameservers: Vec<Located<String>>,
    /// Hostname and address pairs in the order written.
    pub(super) hosts: Vec<(Located<String>, Located<String>)>,
}

#[derive(Debug, Default)]
pub(super) struct DeclaredBind {
    pub(super) header: usize,
    pub(super) label: String,
    pub(super) prefix: String,
    pub(super) id: Field<Located<String>>,
    pub(super) path: Field<Located<String>>,
}

#[derive(Debug, Default)]
pub(super) struct DeclaredGrants {
    pub(super) query_silos: bool,
    pub(super) raw_sockets: bool,
}

#[derive(Debug, Default)]
pub(super) struct DeclaredResources {
    pub(super) cpu_percent: Field<Located<i128>>,
    pub(super) max_memory_bytes: Field<Located<i128>>,
    /// `memory`, the size-string alternative to `max_memory_bytes`, in bytes.
    pub(super) memory_bytes: Field<Located<u64>>,
}

#[derive(Debug, Default)]
pub(super) struct DeclaredPlacement {
    pub(super) hosts: Vec<Located<String>>,
    /// Label key and value pairs in the order written.
    pub(super) labels: Vec<(Located<String>, Located<String>)>,
    pub(super) strategy: Field<Located<String>>,
}

#[derive(Debug, Default)]
pub(super) struct DeclaredRestart {
    pub(super) header: usize,
    pub(super) policy: Field<Located<String>>,
    pub(super) attempts: Field<Located<i128>>,
    pub(super) delay_ms: Field<Located<u64>>,
}

impl DeclaredSilo {
    /// Returns the silo's name as users know it: the `name` attribute, or else the block label.
    /// Returns `None` when neither is usable, including when `name` has the wrong type.
    pub(super) fn effective_name(&self) -> Option<Located<String>> {
        match &self.name {
            Field::Valid(name) => Some(name.clone()),
            Field::Invalid => None,
            Field::Absent => self.label.as_ref().map(|label| Located {
                value: label.clone(),
                offset: self.header,
            }),
        }
    }
}

/// Starts every message about a silo, for example `silo "web": `.
pub(super) fn silo_prefix(display_name: &str) -> String {
    format!("silo {}: ", quoted_name(display_name))
}

/// Starts every message about a labelled block of a silo, for example
/// `silo "web": file "script": `.
pub(super) fn block_prefix(silo_prefix: &str, ident: &str, label: &str) -> String {
    format!("{silo_prefix}{ident} {}: ", quoted_name(label))
}
