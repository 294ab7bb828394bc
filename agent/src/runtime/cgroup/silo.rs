//! The cgroups of one silo: one dir `colex-<host>/<silo id>` in every hierarchy colex uses.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tracing::warn;

use super::super::init::SIGNAL_EXIT_CODE_BASE;
use super::layout::{Controller, Version};
use super::limits::Limits;
use super::{membership, rmdir, v1, v2, CgroupError};

/// One of a silo's cgroup dirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloDir {
    pub version: Version,
    pub path: PathBuf,
    /// Controllers colex uses through this dir's hierarchy.
    pub controllers: Vec<Controller>,
}

/// Usage figures of a silo's cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time of all the silo's processes, in microseconds. `None` without a CPU accounting
    /// source (cgroup2 or the v1 cpuacct controller).
    pub cpu_usec: Option<u64>,
    /// Memory in use in bytes, without inactive page cache. `None` without the memory
    /// controller.
    pub memory_bytes: Option<u64>,
    /// Number of processes (not threads) in the silo.
    pub processes: u64,
}

/// The cgroup dirs of one silo. Creating the value touches nothing on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloCgroup {
    silo_id: String,
    dirs: Vec<SiloDir>,
    /// Index in `dirs` of the dir that tracks the silo's processes (see
    /// [`super::Layout::membership_index`]).
    membership: usize,
}

impl SiloCgroup {
    pub(super) fn new(silo_id: &str, dirs: Vec<SiloDir>, membership: usize) -> Self {
        SiloCgroup {
            silo_id: silo_id.to_string(),
            dirs,
            membership,
        }
    }

    /// Returns the dir that contains every process of the silo: the cgroup2 dir when cgroup2
    /// is mounted, else a v1 dir.
    pub fn membership_dir(&self) -> &Path {
        &self.dirs[self.membership].path
    }

    /// Creates the silo's dir in every hierarchy (an existing dir is fine) and writes
    /// `limits`. A limit whose controller the host lacks is an error, not a silent skip. On
    /// error the dirs stay for the caller's undo step, [`SiloCgroup::kill_and_remove`].
    pub async fn create(&self, limits: &Limits) -> Result<(), CgroupError> {
        // Plain `mkdir` calls on this thread: a trip to tokio's blocking pool costs up to 1 ms
        // on the reference machine while the other core clones PID 1, and a cgroup `mkdir`
        // costs microseconds. It can block while another process's move into a cgroup holds
        // the kernel's cgroup mutex, for a few ms at most.
        for dir in &self.dirs {
            match std::fs::create_dir(&dir.path) {
                Err(err) if err.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError::Create {
                        path: dir.path.clone(),
                        source: err,
                    })
                }
                _ => {}
            }
        }

        if let Some(quota) = limits.cpu {
            let dir = self.dir_of(Controller::Cpu, "resources.cpu_percent")?;
            match dir.version {
                Version::V1 => v1::set_cpu(&dir.path, quota).await?,
                Version::V2 => v2::set_cpu(&dir.path, quota).await?,
            }
        }
        if let Some(bytes) = limits.memory_bytes {
            let dir = self.dir_of(Controller::Memory, "resources.memory_bytes")?;
            match dir.version {
                Version::V1 => v1::set_memory(&dir.path, bytes).await?,
                Version::V2 => v2::set_memory(&dir.path, bytes).await?,
            }
        }
        if let Some(max) = limits.pids_max {
            let dir = self.dir_of(Controller::Pids, "pids_limit")?;
            match dir.version {
                Version::V1 => v1::set_pids(&dir.path, max).await?,
                Version::V2 => v2::set_pids(&dir.path, max).await?,
            }
        }
        Ok(())
    }

    /// Moves process `pid` into every dir of the silo, the membership dir first, so that
    /// killing the silo reaches the process even when a later move fails.
    ///
    /// All moves run in one trip to tokio's blocking pool. A move can wait for an RCU grace
    /// period in the kernel (several ms after an idle time), so it must not block a runtime
    /// worker, and a trip per hierarchy cost two thread hand-offs per hierarchy.
    pub async fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let paths: Vec<PathBuf> = self
            .membership_first()
            .into_iter()
            .map(|dir| dir.path.clone())
            .collect();
        let moved = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .try_for_each(|path| membership::add_process_blocking(path, pid))
        })
        .await;
        match moved {
            Ok(result) => result,
            Err(join_error) => Err(CgroupError::AddProcess {
                path: self.membership_dir().to_path_buf(),
                pid,
                source: io::Error::other(join_error),
            }),
        }
    }

    /// Kills every process of the silo, waits up to `wait` for each dir to empty, and removes
    /// the dirs, the membership dir last so that a failed removal can be found and retried.
    /// Missing dirs are fine.
    pub async fn kill_and_remove(&self, wait: Duration) -> Result<(), CgroupError> {
        for dir in self.membership_first() {
            membership::kill_all(&dir.path).await?;
            if !membership::wait_empty(&dir.path, wait).await? {
                return Err(CgroupError::NotEmpty {
                    path: dir.path.clone(),
                    waited: wait,
                });
            }
        }
        let mut removal_order = self.membership_first();
        removal_order.reverse();
        for dir in removal_order {
            rmdir::remove(&dir.path).await?;
        }
        Ok(())
    }

    /// Reports whether the membership dir exists.
    pub async fn exists(&self) -> bool {
        tokio::fs::try_exists(self.membership_dir())
            .await
            .unwrap_or(false)
    }

    /// Reads CPU time, memory in use and process count.
    pub async fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let cpu_usec = match self.find(Controller::Cpuacct) {
            Some(dir) => Some(v1::cpu_usage_usec(&dir.path).await?),
            None => match self.v2_dir() {
                Some(dir) => Some(v2::cpu_usage_usec(&dir.path).await?),
                None => None,
            },
        };
        let memory_bytes = match self.find(Controller::Memory) {
            Some(dir) => Some(match dir.version {
                Version::V1 => v1::memory_in_use(&dir.path).await?,
                Version::V2 => v2::memory_in_use(&dir.path).await?,
            }),
            None => None,
        };
        let processes = membership::pids(self.membership_dir()).await?.len();
        Ok(CgroupStats {
            cpu_usec,
            memory_bytes,
            processes: u64::try_from(processes).unwrap_or(u64::MAX),
        })
    }

    /// Returns how many of the silo's processes the kernel OOM-killed since the cgroup was
    /// created, or `None` without the memory controller.
    pub async fn oom_kills(&self) -> Result<Option<u64>, CgroupError> {
        let Some(dir) = self.find(Controller::Memory) else {
            return Ok(None);
        };
        let kills = match dir.version {
            Version::V1 => v1::oom_kills(&dir.path).await?,
            Version::V2 => v2::oom_kills(&dir.path).await?,
        };
        Ok(Some(kills))
    }

    /// Returns the memory limit in bytes, or `None` without one.
    pub async fn memory_limit(&self) -> Result<Option<u64>, CgroupError> {
        let Some(dir) = self.find(Controller::Memory) else {
            return Ok(None);
        };
        match dir.version {
            Version::V1 => v1::memory_limit(&dir.path).await,
            Version::V2 => v2::memory_limit(&dir.path).await,
        }
    }

    /// Returns why the silo's program ended when the kernel's OOM killer had a part in it, for
    /// the silo's status message. `None` otherwise. Call it before the cgroup is removed.
    /// `exit_code` is the program's, 128 + signal number when it was killed. `oom_kills_before`
    /// is [`SiloCgroup::oom_kills`] when the program started: the count stays in a cgroup that
    /// is reused for a restart.
    pub async fn exit_reason(&self, exit_code: i32, oom_kills_before: u64) -> Option<String> {
        let kills = match self.oom_kills().await {
            Ok(Some(kills)) if kills > oom_kills_before => kills - oom_kills_before,
            Ok(_) => return None,
            Err(err) => {
                warn!(silo = %self.silo_id, error = %err, "failed to read the OOM kill count");
                return None;
            }
        };
        let limit = match self.memory_limit().await {
            Ok(limit) => limit,
            Err(err) => {
                warn!(silo = %self.silo_id, error = %err, "failed to read the memory limit");
                None
            }
        };
        Some(oom_reason(exit_code, kills, limit))
    }

    fn find(&self, controller: Controller) -> Option<&SiloDir> {
        self.dirs
            .iter()
            .find(|dir| dir.controllers.contains(&controller))
    }

    fn v2_dir(&self) -> Option<&SiloDir> {
        self.dirs.iter().find(|dir| dir.version == Version::V2)
    }

    fn dir_of(&self, controller: Controller, limit: &'static str) -> Result<&SiloDir, CgroupError> {
        self.find(controller).ok_or(CgroupError::ControllerMissing {
            controller: controller.name(),
            limit,
        })
    }

    fn membership_first(&self) -> Vec<&SiloDir> {
        let mut dirs = Vec::with_capacity(self.dirs.len());
        dirs.push(&self.dirs[self.membership]);
        dirs.extend(
            self.dirs
                .iter()
                .enumerate()
                .filter(|(index, _)| *index != self.membership)
                .map(|(_, dir)| dir),
        );
        dirs
    }
}

/// Words the exit of a silo whose cgroup saw `kills` OOM kills.
fn oom_reason(exit_code: i32, kills: u64, limit: Option<u64>) -> String {
    let limit_text = match limit {
        Some(bytes) => format!("memory limit {}", format_bytes(bytes)),
        None => "no memory limit".to_string(),
    };
    if exit_code == SIGNAL_EXIT_CODE_BASE + Signal::SIGKILL as i32 {
        format!("OOM killed ({limit_text})")
    } else {
        let processes = if kills == 1 { "process" } else { "processes" };
        format!("exited with code {exit_code} after {kills} OOM-killed {processes} ({limit_text})")
    }
}

/// Formats a byte count in the largest binary unit that divides it.
fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_reason_of_killed_program() {
        assert_eq!(
            oom_reason(137, 1, Some(64 << 20)),
            "OOM killed (memory limit 64 MiB)"
        );
        assert_eq!(oom_reason(137, 2, None), "OOM killed (no memory limit)");
    }

    #[test]
    fn oom_reason_of_surviving_program() {
        assert_eq!(
            oom_reason(1, 2, Some(3 << 30)),
            "exited with code 1 after 2 OOM-killed processes (memory limit 3 GiB)"
        );
        assert_eq!(
            oom_reason(0, 1, Some(1_000_000)),
            "exited with code 0 after 1 OOM-killed process (memory limit 1000000 bytes)"
        );
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(format_bytes(512), "512 bytes");
        assert_eq!(format_bytes(4096), "4 KiB");
        assert_eq!(format_bytes(1536 << 20), "1536 MiB");
        assert_eq!(format_bytes(0), "0 bytes");
    }
}
