//! Joining the cgroups of a silo's PID 1, so an exec'd command counts against the silo's
//! limits and dies with the silo.
//!
//! The cgroups are read from `/proc/PID/cgroup` and mapped to directories through the cgroup
//! mounts in `/proc/self/mountinfo`, which covers cgroup v2, v1 and the hybrid layout alike.

use std::io;
use std::path::{Path, PathBuf};

/// File that moves a process into a cgroup when its pid is written to it.
const PROCS_FILE: &str = "cgroup.procs";

/// Errors of joining a silo's cgroups.
#[derive(Debug, thiserror::Error)]
pub enum ExecCgroupError {
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("no cgroup mount found for hierarchy {controllers:?} of the silo's init")]
    NoMount { controllers: String },
    #[error("failed to join cgroup {path}: {source}")]
    Join { path: PathBuf, source: io::Error },
}

/// One cgroup mount: its filesystem type, mount root, mount point and super options.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CgroupMount {
    version2: bool,
    root: String,
    mount_point: PathBuf,
    options: Vec<String>,
}

/// Moves process `pid` into every cgroup that process `init_pid` is in.
pub fn join_cgroups_of(init_pid: u32, pid: u32) -> Result<(), ExecCgroupError> {
    let cgroup_path = PathBuf::from(format!("/proc/{init_pid}/cgroup"));
    let memberships = read(&cgroup_path)?;
    let mounts = parse_mounts(&read(Path::new("/proc/self/mountinfo"))?);
    for dir in cgroup_dirs(&memberships, &mounts)? {
        let procs = dir.join(PROCS_FILE);
        std::fs::write(&procs, pid.to_string()).map_err(|source| ExecCgroupError::Join { path: procs, source })?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, ExecCgroupError> {
    std::fs::read_to_string(path).map_err(|source| ExecCgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Returns the cgroup mounts of a `/proc/PID/mountinfo` text.
fn parse_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    let mut mounts = Vec::new();
    for line in mountinfo.lines() {
        // Fields before " - " are per mount; after it come type, source and super options.
        let Some((mount_part, super_part)) = line.split_once(" - ") else {
            continue;
        };
        let mount_fields: Vec<&str> = mount_part.split(' ').collect();
        let super_fields: Vec<&str> = super_part.split(' ').collect();
        let (Some(root), Some(mount_point), Some(fs_type)) =
            (mount_fields.get(3), mount_fields.get(4), super_fields.first())
        else {
            continue;
        };
        let version2 = match *fs_type {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let options = super_fields
            .get(2)
            .map(|options| options.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        mounts.push(CgroupMount {
            version2,
            root: (*root).to_owned(),
            mount_point: PathBuf::from(mount_point),
            options,
        });
    }
    mounts
}

/// Maps each line of a `/proc/PID/cgroup` text (`ID:CONTROLLERS:PATH`) to its directory.
/// Hierarchies where the process is in the root cgroup are skipped: nothing of the silo is
/// there to join.
fn cgroup_dirs(memberships: &str, mounts: &[CgroupMount]) -> Result<Vec<PathBuf>, ExecCgroupError> {
    let mut dirs = Vec::new();
    for line in memberships.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if path == "/" {
            continue;
        }
        let version2 = id == "0" && controllers.is_empty();
        let mount = mounts.iter().find(|mount| {
            mount.version2 == version2
                && (version2
                    || controllers
                        .split(',')
                        .all(|controller| mount.options.iter().any(|option| option == controller)))
        });
        let Some(mount) = mount else {
            return Err(ExecCgroupError::NoMount {
                controllers: controllers.to_owned(),
            });
        };
        let relative = if mount.root == "/" {
            path
        } else {
            path.strip_prefix(mount.root.as_str()).unwrap_or(path)
        };
        dirs.push(mount.mount_point.join(relative.trim_start_matches('/')));
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
34 30 0:30 /outer /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_layout_maps_every_hierarchy() {
        let mounts = parse_mounts(MOUNTINFO);
        assert_eq!(mounts.len(), 4, "{mounts:?}");
        let memberships = "\
9:name=systemd:/
4:memory:/outer/colex-h1/s1
1:cpu:/colex-h1/s1
0::/colex-h1/s1
";
        let dirs = cgroup_dirs(memberships, &mounts).expect("every hierarchy mounted");
        assert_eq!(
            dirs,
            [
                PathBuf::from("/sys/fs/cgroup/memory/colex-h1/s1"),
                PathBuf::from("/sys/fs/cgroup/cpu/colex-h1/s1"),
                PathBuf::from("/sys/fs/cgroup/unified/colex-h1/s1"),
            ]
        );
    }

    #[test]
    fn unmounted_hierarchy_is_an_error() {
        let mounts = parse_mounts(MOUNTINFO);
        let error = cgroup_dirs("5:pids:/colex-h1/s1\n", &mounts).expect_err("pids not mounted");
        assert!(error.to_string().contains("pids"), "{error}");
    }
}
