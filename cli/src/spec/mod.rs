//! Silo files: the HCL files that `colex-cli up` and `colex-cli validate` read. This module
//! parses a silo file, checks it, reads the files its `file` and `files` blocks name and
//! returns wire-ready `SiloSpec`s. `docs/silo-spec.md` describes every field.
//!
//! ```hcl
//! Silo "s" {
//!   name  = "test-sh"         # default: the block label
//!   base  = "img://busybox"   # the default
//!   count = 2                 # colex extension; default 1
//!   binary {
//!     path = "/bin/sh"
//!     args = ["/script.sh"]
//!     env  = ["A=1"]
//!   }
//!   file "main script" {
//!     path      = "test-script.sh"  # relative to the silo file's folder
//!     silo_path = "/script.sh"
//!   }
//!   files "site" {
//!     path      = "site"            # a folder, copied as a tree
//!     silo_path = "/www"
//!   }
//!   resources = { cpu_percent = 50, memory = "64MiB" }
//!   restart   = { policy = "on-failure", attempts = 3, delay = "2s" }
//! }
//! ```
//!
//! Every problem is reported as `FILE:LINE:COLUMN: message`, and all problems of a file are
//! reported together, except that a syntax error stops at the first one.

mod build;
mod bundle;
mod conflicts;
mod declared;
mod diagnostics;
mod error;
mod parse;
mod reader;
mod schema;
mod section;
mod settings;
mod tree;
mod units;
mod validate;
mod validate_cluster;
mod validate_paths;
mod value;

use std::fs;
use std::path::{Path, PathBuf};

use colex_proto::SiloSpec;

pub use bundle::{MAX_BUNDLE_BYTES, MAX_BUNDLE_ENTRIES};
pub use error::{Problem, SpecError};
pub use schema::closest_name;

use diagnostics::Diagnostics;

/// Reads, validates and bundles a silo file. Relative `path`s of `file` and `files` blocks
/// resolve against the folder that contains the silo file.
pub fn load(path: &Path) -> Result<Vec<SiloSpec>, SpecError> {
    let text = fs::read_to_string(path).map_err(|cause| SpecError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    load_str(&text, &path.display().to_string(), &containing_folder(path))
}

/// Validates and bundles silo file text that is already in memory. `origin` names the file in
/// messages and `base_dir` resolves relative `path`s of `file` and `files` blocks.
pub fn load_str(text: &str, origin: &str, base_dir: &Path) -> Result<Vec<SiloSpec>, SpecError> {
    let body = hcl_edit::parser::parse_body(text).map_err(|error| SpecError::Syntax {
        origin: origin.to_owned(),
        problem: Problem {
            line: error.location().line(),
            column: error.location().column(),
            message: error.message().to_owned(),
        },
    })?;

    let mut diagnostics = Diagnostics::new(origin, text);
    let silos = parse::read_silos(&body, &mut diagnostics);
    validate::validate(&silos, &mut diagnostics);
    let bundle = bundle::read_bundle(&silos, base_dir, &mut diagnostics);

    if !diagnostics.is_empty() {
        return Err(SpecError::Invalid {
            origin: origin.to_owned(),
            problems: diagnostics.into_problems(),
        });
    }
    Ok(silos
        .into_iter()
        .zip(bundle)
        .map(|(silo, files)| build::build_spec(silo, files))
        .collect())
}

/// Returns the absolute folder of a silo file, so messages show where relative paths led. The
/// path is made absolute without resolving symbolic links.
fn containing_folder(path: &Path) -> PathBuf {
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf())
}
