//! cgroup v2 directories of silos: `<cgroup2 mount>/colex-<host>/<silo id>`.
//!
//! Every process of a silo is in its cgroup, so the cgroup is how a silo is killed for sure
//! (`cgroup.kill`) and how the runtime learns that it is gone (`populated 0` in
//! `cgroup.events`). Only the cgroup2 hierarchy is used; v1 controllers are left alone.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{sleep, Instant};

/// File that lists the pids of a cgroup; writing a pid moves that process in.
const PROCS_FILE: &str = "cgroup.procs";
/// File whose `populated` key is 0 once no process is left in the cgroup or below it.
const EVENTS_FILE: &str = "cgroup.events";
/// File that SIGKILLs every process in the cgroup when 1 is written (Linux 5.14 and later).
const KILL_FILE: &str = "cgroup.kill";
/// Interval between two reads of `cgroup.events` while waiting for a cgroup to empty.
const EMPTY_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long `rmdir` is retried while it fails with EBUSY, which it does for a short time after
/// the last process of a cgroup has exited.
const RMDIR_RETRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of cgroup handling.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 mount found in /proc/self/mountinfo")]
    NoCgroup2Mount,
    #[error("failed to read /proc/self/mountinfo: {source}")]
    ReadMountinfo { source: io::Error },
    #[error("failed to create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("failed to move pid {pid} into cgroup {path}: {source}")]
    AddProcess {
        path: PathBuf,
        pid: u32,
        source: io::Error,
    },
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to kill the processes of cgroup {path}: {source}")]
    Kill { path: PathBuf, source: io::Error },
    #[error("cgroup {path} still has processes {waited:?} after kill")]
    NotEmpty { path: PathBuf, waited: Duration },
    #[error("failed to remove cgroup {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Returns the mount point of the first cgroup2 file system in a `/proc/<pid>/mountinfo` text.
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options [optional...] - fstype ...
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = before.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// Returns the cgroup2 mount point of this process's mount namespace.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| CgroupError::ReadMountinfo { source })?;
    find_cgroup2_mount(&mountinfo).ok_or(CgroupError::NoCgroup2Mount)
}

/// Decodes the octal escapes (`\040` for a space) the kernel writes in mountinfo paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Returns the `populated` value of a `cgroup.events` text.
pub fn parse_populated(events: &str) -> Option<bool> {
    events.lines().find_map(|line| {
        let value = line.strip_prefix("populated ")?;
        match value.trim() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        }
    })
}

/// Creates the cgroup dir `path`; an existing dir is fine.
pub async fn create(path: &Path) -> Result<(), CgroupError> {
    match tokio::fs::create_dir(path).await {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: path.to_path_buf(),
            source: err,
        }),
        _ => Ok(()),
    }
}

/// Moves process `pid` into the cgroup `path`.
pub async fn add_process(path: &Path, pid: u32) -> Result<(), CgroupError> {
    tokio::fs::write(path.join(PROCS_FILE), pid.to_string())
        .await
        .map_err(|source| CgroupError::AddProcess {
            path: path.to_path_buf(),
            pid,
            source,
        })
}

/// Reports whether any process is in the cgroup `path`; a missing cgroup is empty.
pub async fn is_populated(path: &Path) -> Result<bool, CgroupError> {
    let events_path = path.join(EVENTS_FILE);
    match tokio::fs::read_to_string(&events_path).await {
        Ok(events) => Ok(parse_populated(&events).unwrap_or(true)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CgroupError::Read {
            path: events_path,
            source,
        }),
    }
}

/// Waits up to `timeout` for the cgroup to have no process; returns whether it is empty.
pub async fn wait_empty(path: &Path, timeout: Duration) -> Result<bool, CgroupError> {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_populated(path).await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        sleep(EMPTY_POLL_INTERVAL).await;
    }
}

/// SIGKILLs every process in the cgroup `path`; a missing cgroup is fine.
pub async fn kill_all(path: &Path) -> Result<(), CgroupError> {
    let kill_error = |source| CgroupError::Kill {
        path: path.to_path_buf(),
        source,
    };
    if !tokio::fs::try_exists(path).await.map_err(kill_error)? {
        return Ok(());
    }
    match tokio::fs::write(path.join(KILL_FILE), "1").await {
        Ok(()) => Ok(()),
        // Kernels before 5.14 have no cgroup.kill: signal every listed process instead.
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            kill_listed(path).await.map_err(kill_error)
        }
        Err(source) => Err(kill_error(source)),
    }
}

async fn kill_listed(path: &Path) -> io::Result<()> {
    let procs = tokio::fs::read_to_string(path.join(PROCS_FILE)).await?;
    for pid in procs
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
    {
        // A process that exited since the read is not an error.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    Ok(())
}

/// Removes the cgroup dir `path`, retrying while the kernel still reports it busy; a missing
/// dir is fine.
pub async fn remove(path: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + RMDIR_RETRY_TIMEOUT;
    loop {
        match tokio::fs::remove_dir(path).await {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                sleep(EMPTY_POLL_INTERVAL).await;
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Kills every process in the cgroup `path`, waits up to `wait` for them to be gone and
/// removes the dir.
pub async fn kill_and_remove(path: &Path, wait: Duration) -> Result<(), CgroupError> {
    kill_all(path).await?;
    if !wait_empty(path, wait).await? {
        return Err(CgroupError::NotEmpty {
            path: path.to_path_buf(),
            waited: wait,
        });
    }
    remove(path).await
}

/// Lists the child cgroup dirs of `path`; a missing dir has none.
pub async fn child_dirs(path: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let read_error = |source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut entries = match tokio::fs::read_dir(path).await {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(read_error(source)),
    };
    let mut dirs = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(read_error)? {
        if entry.file_type().await.map_err(read_error)?.is_dir() {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_hybrid_cgroup2_mount() {
        assert_eq!(
            find_cgroup2_mount(HYBRID_MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn finds_pure_v2_mount() {
        let text =
            "25 20 0:22 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            find_cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup2_mount() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_cgroup2_mount(text), None);
    }

    #[test]
    fn unescapes_mount_point() {
        let text = "41 31 0:38 / /mnt/my\\040cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2_mount(text),
            Some(PathBuf::from("/mnt/my cgroup"))
        );
    }

    #[test]
    fn parses_populated() {
        assert_eq!(parse_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated("frozen 0\n"), None);
    }
}
