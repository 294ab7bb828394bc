//! User namespaces of silos: the id map of an agent's silos, writing it for a new PID 1, and
//! the ownership of what the agent writes for a silo.
//!
//! Every silo of an agent uses the same map, as Docker's `userns-remap` does: silo uids and gids
//! 0 to [`SILO_ID_COUNT`] - 1 are host ids [`SILO_HOST_ID_BASE`] upward. Root in a silo is then
//! an unprivileged host user, and its capabilities apply only to objects its namespaces own.
//!
//! Ownership design: the kernel shows a host file inside the silo under its host owner minus
//! the base, and a host owner outside the map as `nobody` (65534). So everything a silo must
//! see with its real owner is owned by the shifted ids on the host:
//! - image cache dirs are built per map (`busybox+100000`) with every owner shifted by the base
//!   while unpacking, so the lower layer shows the image's owners (root:root, not `nobody`);
//! - the silo's overlayfs upper and work dirs, and every file colex places in the upper dir,
//!   are owned by the shifted silo root, so the silo can write its own root.
//!
//! This is Docker's design. Idmapped mounts would avoid the per-map copy of each image but
//! need support by every lower file system and a mount API that the rest of the runtime does
//! not use.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

/// First host uid and gid of the silos' range. 100000 is `SUB_UID_MIN` and `SUB_GID_MIN` in
/// the shadow-utils `/etc/login.defs`, where `useradd` starts the subordinate ranges of
/// `/etc/subuid` and `/etc/subgid`, so ids from there up are commonly kept free of real users.
pub const SILO_HOST_ID_BASE: u32 = 100_000;
/// Number of uids and gids mapped into each silo: 0 to 65535, the 16-bit id space that images
/// use, `nobody` (65534) included.
pub const SILO_ID_COUNT: u32 = 65_536;

/// Errors of setting up a silo's user namespace.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("failed to write {path}: {source}")]
    WriteMap { path: PathBuf, source: io::Error },
    #[error("failed to drop the supplementary groups of the host: {source}")]
    SetGroups { source: Errno },
    #[error("failed to set gid 0 in the silo's user namespace: {source}")]
    SetGid { source: Errno },
    #[error("failed to set uid 0 in the silo's user namespace: {source}")]
    SetUid { source: Errno },
}

/// Mapping of silo uids and gids onto host ids: silo id `n` is host id `host_base + n` for
/// `n < count`. The same map is used for uids and gids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// Host id of silo root.
    pub host_base: u32,
    /// Number of mapped ids.
    pub count: u32,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap {
            host_base: SILO_HOST_ID_BASE,
            count: SILO_ID_COUNT,
        }
    }
}

impl IdMap {
    /// Returns the host id of silo id `id`, or `None` when the map does not cover it.
    pub fn host_id(&self, id: u64) -> Option<u32> {
        let id = u32::try_from(id).ok().filter(|id| *id < self.count)?;
        self.host_base.checked_add(id)
    }

    /// Returns the host uid and gid of silo root.
    pub fn root_owner(&self) -> Owner {
        Owner {
            uid: self.host_base,
            gid: self.host_base,
        }
    }

    /// Returns the line written to `/proc/PID/uid_map` and `gid_map`: inside id, outside id,
    /// count.
    pub fn proc_map_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.count)
    }

    /// Returns whether the map is usable: not empty, not mapping host root, and inside the
    /// 32-bit id space without its last id, which the kernel reserves as the invalid id.
    pub fn is_valid(&self) -> bool {
        let end = u64::from(self.host_base) + u64::from(self.count);
        self.count > 0 && self.host_base > 0 && end <= u64::from(u32::MAX)
    }
}

/// A host uid and gid that the agent gives to what it writes for a silo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub fn nix_uid(&self) -> Uid {
        Uid::from_raw(self.uid)
    }

    pub fn nix_gid(&self) -> Gid {
        Gid::from_raw(self.gid)
    }
}

/// Writes `map` as the uid and gid map of process `pid`, which must be in a user namespace
/// whose maps are not written yet. The caller needs CAP_SETUID and CAP_SETGID in the parent
/// user namespace (host root). Such a writer may write `gid_map` without first writing "deny"
/// to `/proc/PID/setgroups`, so the silo keeps `setgroups`.
pub fn write_id_maps(pid: Pid, map: &IdMap) -> Result<(), UsernsError> {
    let line = map.proc_map_line();
    for file in ["uid_map", "gid_map"] {
        let path = Path::new("/proc").join(pid.to_string()).join(file);
        // One write call: the kernel accepts a map only in a single write.
        File::options()
            .write(true)
            .open(&path)
            .and_then(|mut map_file| map_file.write_all(line.as_bytes()))
            .map_err(|source| UsernsError::WriteMap { path, source })?;
    }
    Ok(())
}

/// Makes the calling process root of its user namespace: no supplementary groups, then gid 0
/// and uid 0 in the namespace. A process cloned into a new user namespace keeps the host ids it
/// had, which the namespace does not map, so files it creates in the silo would fail with
/// EOVERFLOW. It keeps its capabilities in the namespace, because its new uid is the
/// namespace's root.
///
/// Changing the ids clears the parent-death signal, so the caller sets it again.
pub fn become_namespace_root() -> Result<(), UsernsError> {
    setgroups(&[]).map_err(|source| UsernsError::SetGroups { source })?;
    let root_gid = Gid::from_raw(0);
    setresgid(root_gid, root_gid, root_gid).map_err(|source| UsernsError::SetGid { source })?;
    let root_uid = Uid::from_raw(0);
    setresuid(root_uid, root_uid, root_uid).map_err(|source| UsernsError::SetUid { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_map_shifts_by_base() {
        let map = IdMap::default();
        assert_eq!(map.host_id(0), Some(100_000));
        assert_eq!(map.host_id(1000), Some(101_000));
        assert_eq!(map.host_id(65_535), Some(165_535));
        assert_eq!(map.host_id(65_536), None);
        assert_eq!(map.host_id(u64::MAX), None);
        assert_eq!(map.proc_map_line(), "0 100000 65536\n");
        assert_eq!(
            map.root_owner(),
            Owner {
                uid: 100_000,
                gid: 100_000
            }
        );
        assert!(map.is_valid());
    }

    #[test]
    fn invalid_maps() {
        let maps = [
            IdMap {
                host_base: 0,
                count: 65_536,
            },
            IdMap {
                host_base: 100_000,
                count: 0,
            },
            IdMap {
                host_base: u32::MAX - 10,
                count: 65_536,
            },
        ];
        for map in maps {
            assert!(!map.is_valid(), "{map:?}");
        }
    }
}
