//! The agent's configuration file, given with `colex-agent --config FILE`: the images and bind
//! sources this host offers to silos, its labels, and runtime limits. HCL:
//!
//! ```hcl
//! labels = { zone = "a", disk = "ssd" }
//! pids_limit = 4096
//! mesh_port = 51820
//! metadata_port = 17832
//! hostnames = { "db.internal" = "10.1.2.3" }
//! disable_user_namespaces = false
//!
//! image "alpine" {
//!   path = "/var/lib/colex/images/alpine.tar.gz"
//! }
//!
//! bind "data" {
//!   path     = "/srv/data"
//!   writable = false
//! }
//! ```
//!
//! Every problem is reported as `FILE:LINE:COLUMN: message`, and all problems of a file are
//! reported together, except that a syntax error stops at the first one.

mod parse;
mod position;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::runtime::BindSource;

/// Smallest `pids_limit` other than 0: the silo's PID 1 and its program.
pub const MIN_PIDS_LIMIT: u64 = 2;

/// The settings of an agent's configuration file. `Default` is what an agent without
/// `--config` uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSettings {
    /// Tarball images by name.
    pub images: BTreeMap<String, PathBuf>,
    /// Host paths offered to silos, by bind id.
    pub binds: BTreeMap<String, BindSource>,
    /// Labels of this host, reported to the controller for placement.
    pub labels: BTreeMap<String, String>,
    /// `pids_limit` as written: `None` when absent (the runtime's default applies), `Some(0)`
    /// for no limit.
    pub pids_limit: Option<u64>,
    /// Turns user namespaces off for this host's silos, so root in a silo is host root; see
    /// [`crate::runtime::RuntimeConfig::set_user_namespaces`].
    pub disable_user_namespaces: bool,
    /// UDP port of the host's WireGuard mesh device as written; `None` when absent, which
    /// means [`crate::mesh::DEFAULT_MESH_PORT`].
    pub mesh_port: Option<u16>,
    /// TCP port of the metadata service on the bridge address as written; `None` when absent,
    /// which means [`crate::runtime::DEFAULT_METADATA_PORT`].
    pub metadata_port: Option<u16>,
    /// Fixed names the host's DNS resolver answers for its silos, in lower case, with their
    /// addresses.
    pub hostnames: BTreeMap<String, IpAddr>,
}

impl AgentSettings {
    /// Returns the names of every image this host offers: the built-in `busybox` first, then
    /// the tarball images in name order.
    pub fn image_names(&self) -> Vec<String> {
        std::iter::once(crate::runtime::BUSYBOX_IMAGE.to_string())
            .chain(self.images.keys().cloned())
            .collect()
    }

    /// Returns the names of the bind ids this host offers, sorted.
    pub fn bind_ids(&self) -> Vec<String> {
        self.binds.keys().cloned().collect()
    }

    /// Returns the TCP port of the metadata service: `metadata_port`, or the default 17832.
    pub fn effective_metadata_port(&self) -> u16 {
        self.metadata_port.unwrap_or(crate::runtime::DEFAULT_METADATA_PORT)
    }

    /// Returns the UDP port of the mesh device: `mesh_port`, or the default 51820.
    pub fn effective_mesh_port(&self) -> u16 {
        self.mesh_port.unwrap_or(crate::mesh::DEFAULT_MESH_PORT)
    }

    /// Returns the pids limit for the runtime: `default` when the file sets none, `None` for
    /// `pids_limit = 0` (no limit).
    pub fn effective_pids_limit(&self, default: Option<u64>) -> Option<u64> {
        match self.pids_limit {
            None => default,
            Some(0) => None,
            Some(limit) => Some(limit),
        }
    }
}

/// One problem in a configuration file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// Description of the problem, naming the offending value and the fix.
    pub message: String,
}

/// Failure to load an agent configuration file. Each problem displays as one line
/// `FILE:LINE:COLUMN: message`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    // The OS error is part of the message, so it is not also returned by `source()`, which
    // would print it twice in anyhow's `{:#}`.
    #[error("failed to read agent config file {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },
    #[error("{origin}:{}:{}: invalid HCL syntax: {}", problem.line, problem.column, problem.message)]
    Syntax { origin: String, problem: Problem },
    #[error("{}", ProblemLines { origin, problems })]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

impl ConfigFileError {
    /// Returns the problems with their positions. A `Read` error has none.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigFileError::Read { .. } => &[],
            ConfigFileError::Syntax { problem, .. } => std::slice::from_ref(problem),
            ConfigFileError::Invalid { problems, .. } => problems,
        }
    }
}

/// Display adapter that writes one `FILE:LINE:COLUMN: message` line per problem.
struct ProblemLines<'a> {
    origin: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for ProblemLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.origin, problem.line, problem.column, problem.message
            )?;
        }
        Ok(())
    }
}

/// Reads and checks the configuration file at `path`, including that every image tarball is
/// a readable file and every bind source exists.
pub fn load(path: &Path) -> Result<AgentSettings, ConfigFileError> {
    let text = fs::read_to_string(path).map_err(|cause| ConfigFileError::Read {
        path: path.to_path_buf(),
        cause,
    })?;
    parse::parse(&text, &path.display().to_string(), parse::PathCheck::Host)
}

/// Checks configuration text that is already in memory; `origin` names the file in messages.
/// Paths are checked for form only, not on disk.
pub fn parse_str(text: &str, origin: &str) -> Result<AgentSettings, ConfigFileError> {
    parse::parse(text, origin, parse::PathCheck::FormOnly)
}
