//! Silos as written in the silo file: typed values with their positions, before the checks of
//! `validate` and the file reads of `bundle`. A value is `None`, empty or `Field::Absent` when it
//! was absent or null. A value of the wrong type was reported while reading and is left out.

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
    /// `Invalid` when `binary` was written as an attribute instead of a block.
    pub(super) binary: Field<DeclaredBinary>,
    pub(super) files: Vec<DeclaredFile>,
    pub(super) network: Option<DeclaredNetwork>,
}

#[derive(Debug, Default)]
pub(super) struct DeclaredBinary {
    pub(super) header: usize,
    pub(super) path: Field<Located<String>>,
    pub(super) args: Vec<Located<String>>,
    pub(super) env: Vec<Located<String>>,
}

#[derive(Debug, Default)]
pub(super) struct DeclaredFile {
    pub(super) header: usize,
    pub(super) label: String,
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
    format!("silo {display_name:?}: ")
}

/// Starts every message about a file block of a silo.
pub(super) fn file_prefix(silo_prefix: &str, label: &str) -> String {
    format!("{silo_prefix}file {label:?}: ")
}
