//! cgroups of the silos, v1 and v2: `<mount>/colex-<host>/<silo id>` in every hierarchy colex
//! uses, detected per controller at start (module `layout`).
//!
//! Every process of a silo is in its membership dir, the cgroup2 one whenever cgroup2 is
//! mounted, even on hybrid hosts where it has no controllers. That dir is how a silo is killed
//! for sure (`cgroup.kill`) and how the runtime learns that it is gone (`populated 0` in
//! `cgroup.events`). Limits go to the hierarchy of their controller: `cpu_percent` to cpu,
//! the memory limit to memory, the pids limit to pids. Statistics and OOM kills are read from
//! the same hierarchies.

mod file;
mod host;
mod layout;
mod limits;
mod membership;
mod mountinfo;
mod rmdir;
mod silo;
mod v1;
mod v2;

#[cfg(test)]
mod tree_tests;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use host::HostCgroups;
pub use membership::{kill_all, pids, wait_empty};
pub use limits::Limits;
pub use silo::SiloCgroup;

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup hierarchy found in /proc/self/mountinfo: mount cgroup2 or the cgroup v1 \
         cpu, cpuacct, memory and pids controllers"
    )]
    NoHierarchy,
    #[error(
        "the {controller} controller is not available on this host (no cgroup v1 hierarchy \
         and no cgroup2 root offers it), so `{limit}` cannot be applied"
    )]
    ControllerMissing {
        controller: &'static str,
        limit: &'static str,
    },
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to parse {path}: unexpected content {text:?}")]
    Parse { path: PathBuf, text: String },
    #[error("{path} has no {key:?} entry")]
    MissingKey { path: PathBuf, key: String },
    #[error("failed to write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("failed to create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("failed to move pid {pid} into cgroup {path}: {source}")]
    AddProcess {
        path: PathBuf,
        pid: u32,
        source: io::Error,
    },
    #[error("failed to kill the processes of cgroup {path}: {source}")]
    Kill { path: PathBuf, source: io::Error },
    #[error("cgroup {path} still has processes {waited:?} after kill")]
    NotEmpty { path: PathBuf, waited: Duration },
    #[error("failed to remove cgroup {path} after {attempts} attempts: {source}")]
    Remove {
        path: PathBuf,
        attempts: u32,
        source: io::Error,
    },
}
