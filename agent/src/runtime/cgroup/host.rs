//! The cgroups of one host: a dir `colex-<host>` in every hierarchy colex uses, which
//! contains one dir per silo.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use super::layout::{Controller, Hierarchy, Layout, Version};
use super::limits::{CpuQuota, Limits};
use super::silo::{SiloCgroup, SiloDir};
use super::{membership, rmdir, v2, CgroupError};

/// The cgroup dirs of one host and how silo limits map onto them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCgroups {
    layout: Layout,
    /// Name of the host's dir in each hierarchy, `colex-<host>`.
    dir_name: String,
    /// Online CPUs of the host, the base of `cpu_percent`.
    cpu_count: u32,
    /// Maximum number of tasks of each silo, from the runtime config.
    pids_limit: Option<u64>,
}

impl HostCgroups {
    /// Returns the cgroups of host dir `dir_name` in `layout`. Touches nothing on disk.
    pub fn new(layout: Layout, dir_name: &str, cpu_count: u32, pids_limit: Option<u64>) -> Self {
        HostCgroups {
            layout,
            dir_name: dir_name.to_string(),
            cpu_count,
            pids_limit,
        }
    }

    /// Detects the hierarchies of this mount namespace and the host's online CPUs.
    pub fn detect(dir_name: &str, pids_limit: Option<u64>) -> Result<Self, CgroupError> {
        let layout = Layout::detect()?;
        Ok(HostCgroups::new(
            layout,
            dir_name,
            online_cpu_count(),
            pids_limit,
        ))
    }

    /// Returns the host dir of the hierarchy that tracks the silos' processes.
    pub fn membership_host_dir(&self) -> PathBuf {
        self.host_dir(&self.layout.hierarchies()[self.layout.membership_index()])
    }

    /// Returns the host dir in every hierarchy.
    pub fn host_dirs(&self) -> Vec<PathBuf> {
        self.layout
            .hierarchies()
            .iter()
            .map(|hierarchy| self.host_dir(hierarchy))
            .collect()
    }

    /// Returns the limits of a silo with the given spec values and the host's pids limit. The
    /// pids limit is left out on a host without the pids controller (see [`HostCgroups::create`]).
    pub fn limits(&self, cpu_percent: Option<u32>, memory_bytes: Option<u64>) -> Limits {
        let has_pids = self.layout.hierarchy_of(Controller::Pids).is_some();
        Limits {
            cpu: cpu_percent.map(|percent| CpuQuota::from_host_percent(percent, self.cpu_count)),
            memory_bytes,
            pids_max: self.pids_limit.filter(|_| has_pids),
        }
    }

    /// Creates the host dir in every hierarchy and, in cgroup2, enables the controllers colex
    /// uses there for the children of the root and of the host dir. Existing dirs are fine.
    pub async fn create(&self) -> Result<(), CgroupError> {
        for hierarchy in self.layout.hierarchies() {
            let dir = self.host_dir(hierarchy);
            if hierarchy.version == Version::V2 {
                v2::enable_controllers(&hierarchy.mount_point, &hierarchy.controllers).await?;
            }
            match tokio::fs::create_dir(&dir).await {
                Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Create {
                        path: dir,
                        source: err,
                    })
                }
                _ => {}
            }
            if hierarchy.version == Version::V2 {
                v2::enable_controllers(&dir, &hierarchy.controllers).await?;
            }
        }
        if self.pids_limit.is_some() && self.layout.hierarchy_of(Controller::Pids).is_none() {
            // TODO: a host without the pids controller runs silos with no task limit, so a fork
            // bomb in a silo reaches the host. Such hosts still run silos to stay usable.
            warn!(host = %self.dir_name, "the pids controller is not available; silos run without a pids limit");
        }
        info!(host = %self.dir_name, layout = %self.describe(), cpu_count = self.cpu_count, "cgroup hierarchies detected");
        Ok(())
    }

    /// Returns the cgroups of silo `silo_id`. Touches nothing on disk.
    pub fn silo(&self, silo_id: &str) -> SiloCgroup {
        let dirs = self
            .layout
            .hierarchies()
            .iter()
            .map(|hierarchy| SiloDir {
                version: hierarchy.version,
                path: self.host_dir(hierarchy).join(silo_id),
                controllers: hierarchy.controllers.clone(),
            })
            .collect();
        SiloCgroup::new(silo_id, dirs, self.layout.membership_index())
    }

    /// Returns the names of the silo dirs in any hierarchy, sorted and without duplicates.
    pub async fn silo_names(&self) -> Result<Vec<String>, CgroupError> {
        let mut names = BTreeSet::new();
        for host_dir in self.host_dirs() {
            for dir in membership::child_dirs(&host_dir).await? {
                if let Some(name) = dir.file_name().and_then(|name| name.to_str()) {
                    names.insert(name.to_string());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Kills and removes every silo cgroup, then removes the host dir in every hierarchy, the
    /// membership hierarchy's last.
    pub async fn remove(&self, wait: Duration) -> Result<(), CgroupError> {
        for name in self.silo_names().await? {
            self.silo(&name).kill_and_remove(wait).await?;
        }
        let membership = self.membership_host_dir();
        for dir in self.host_dirs() {
            if dir != membership {
                rmdir::remove(&dir).await?;
            }
        }
        rmdir::remove(&membership).await
    }

    fn host_dir(&self, hierarchy: &Hierarchy) -> PathBuf {
        hierarchy.mount_point.join(&self.dir_name)
    }

    /// Describes where each hierarchy is, for the start log line.
    fn describe(&self) -> String {
        self.layout
            .hierarchies()
            .iter()
            .map(|hierarchy| {
                let names: Vec<&str> = hierarchy
                    .controllers
                    .iter()
                    .map(|controller| controller.name())
                    .collect();
                format!(
                    "{:?} {} [{}]",
                    hierarchy.version,
                    hierarchy.mount_point.display(),
                    names.join(" ")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Returns the number of online CPUs, at least 1.
fn online_cpu_count() -> u32 {
    // SAFETY: sysconf reads a system value and touches no memory of the caller.
    let count = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u32::try_from(count)
        .ok()
        .filter(|count| *count > 0)
        .unwrap_or(1)
}
