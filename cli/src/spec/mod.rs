//! Silo files: the HCL files that `colex-cli up` reads. This module parses a silo file, checks
//! it, reads the files its `file` blocks name and returns wire-ready `SiloSpec`s.
//!
//! ```hcl
//! Silo "s" {
//!   name = "test-sh"          # default: the block label
//!   class = "web"
//!   tags = ["a", "b"]
//!   base = "img://busybox"    # the default, and the only image built in
//!   binary {
//!     path = "/bin/sh"
//!     args = ["/script.sh"]
//!     env = ["A=1"]
//!   }
//!   file "main script" {
//!     path = "test-script.sh"  # relative to the silo file's folder
//!     silo_path = "/script.sh"
//!   }
//!   network {
//!     internet_access = true
//!     nameservers = ["9.9.9.9"]
//!     hosts = { db = "10.69.0.5" }
//!   }
//! }
//! ```
//!
//! Every problem is reported as `FILE:LINE:COLUMN: message`, and all problems of a file are
//! reported together, except that a syntax error stops at the first one.

mod bundle;
mod declared;
mod diagnostics;
mod error;
mod parse;
mod schema;
mod validate;
mod value;

use std::fs;
use std::path::{Path, PathBuf};

use colex_proto::{Binary, FileEntry, Network, SiloSpec};

pub use bundle::MAX_BUNDLE_BYTES;
pub use error::{Problem, SpecError};

use declared::DeclaredSilo;
use diagnostics::Diagnostics;

/// Scheme of image references in `base`. `SiloSpec.base` carries the image name without it.
const IMAGE_SCHEME: &str = "img://";

/// Reads, validates and bundles a silo file. Relative `file.path`s resolve against the folder
/// that contains the silo file.
pub fn load(path: &Path) -> Result<Vec<SiloSpec>, SpecError> {
    let text = fs::read_to_string(path).map_err(|cause| SpecError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    load_str(&text, &path.display().to_string(), &containing_folder(path))
}

/// Validates and bundles silo file text that is already in memory. `origin` names the file in
/// messages and `base_dir` resolves relative `file.path`s.
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
        .map(|(silo, files)| build_spec(silo, files))
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

/// Turns a silo that passed every check into its wire form.
fn build_spec(silo: DeclaredSilo, files: Vec<FileEntry>) -> SiloSpec {
    let name = silo
        .effective_name()
        .map(|name| name.value)
        .unwrap_or_default();
    let base = silo
        .base
        .map_or_else(|| validate::BUILT_IN_BASE.to_owned(), |base| base.value);
    let base = base.strip_prefix(IMAGE_SCHEME).unwrap_or(&base).to_owned();

    let binary = silo.binary.into_valid().map(|binary| Binary {
        path: binary
            .path
            .into_valid()
            .map(|path| path.value)
            .unwrap_or_default(),
        args: binary.args.into_iter().map(|arg| arg.value).collect(),
        env: binary.env.into_iter().map(|entry| entry.value).collect(),
    });

    // A silo without a network block gets the defaults: no internet access, an empty
    // nameserver list and no extra hosts.
    let network = silo.network.unwrap_or_default();
    let network = Network {
        internet_access: network.internet_access,
        nameservers: network
            .nameservers
            .into_iter()
            .map(|server| server.value)
            .collect(),
        hosts: network
            .hosts
            .into_iter()
            .map(|(hostname, address)| (hostname.value, address.value))
            .collect(),
    };

    SiloSpec {
        name,
        class: silo.class.unwrap_or_default(),
        tags: silo.tags,
        base,
        binary,
        files,
        network: Some(network),
        ..SiloSpec::default()
    }
}
