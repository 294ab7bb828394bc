//! Processes of one cgroup dir, in either version: moving a process in, listing, waiting for
//! the cgroup to empty, and killing everything in it.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::{sleep, Instant};

use super::CgroupError;

/// File that lists the pids of a cgroup. Writing a pid moves that process in.
pub const PROCS_FILE: &str = "cgroup.procs";
/// cgroup v2 file whose `populated` key is 0 once no process is left in the cgroup or below.
const EVENTS_FILE: &str = "cgroup.events";
/// cgroup v2 file that SIGKILLs every process in the cgroup when 1 is written (Linux 5.14 and
/// later).
const KILL_FILE: &str = "cgroup.kill";
/// Interval between two checks while waiting for a cgroup to empty.
const EMPTY_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Maximum number of SIGKILL rounds over `cgroup.procs` where there is no `cgroup.kill`. A
/// round that finds no pid it has not signalled yet ends the loop early.
const KILL_ROUNDS_MAX: usize = 50;
/// Pause between two SIGKILL rounds, so children forked during a round show up in the next.
const KILL_ROUND_INTERVAL: Duration = Duration::from_millis(10);

/// Moves process `pid` into the cgroup `path`, blocking the calling thread.
pub fn add_process_blocking(path: &Path, pid: u32) -> Result<(), CgroupError> {
    std::fs::write(path.join(PROCS_FILE), pid.to_string()).map_err(|source| {
        CgroupError::AddProcess {
            path: path.to_path_buf(),
            pid,
            source,
        }
    })
}

/// Returns the pids listed in the cgroup `path`. A missing cgroup has none.
pub async fn pids(path: &Path) -> Result<Vec<u32>, CgroupError> {
    let procs_path = path.join(PROCS_FILE);
    match tokio::fs::read_to_string(&procs_path).await {
        Ok(text) => Ok(parse_pids(&text)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CgroupError::Read {
            path: procs_path,
            source,
        }),
    }
}

fn parse_pids(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
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

/// Reports whether any process is in the cgroup `path`. A missing cgroup is empty. A v2
/// cgroup is read from `cgroup.events`, which includes its descendants. A v1 cgroup is read from
/// its own `cgroup.procs`, which is enough because silo cgroups have no children.
pub async fn is_populated(path: &Path) -> Result<bool, CgroupError> {
    let events_path = path.join(EVENTS_FILE);
    match tokio::fs::read_to_string(&events_path).await {
        Ok(events) => Ok(parse_populated(&events).unwrap_or(true)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(!pids(path).await?.is_empty()),
        Err(source) => Err(CgroupError::Read {
            path: events_path,
            source,
        }),
    }
}

/// Waits up to `timeout` for the cgroup to have no process. Returns whether it is empty.
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

/// SIGKILLs every process in the cgroup `path`. A missing cgroup is fine. Uses `cgroup.kill`
/// where the kernel has it (v2 since Linux 5.14), else signals the listed pids in rounds until
/// a round finds no new pid, so children forked meanwhile are caught too.
pub async fn kill_all(path: &Path) -> Result<(), CgroupError> {
    let kill_error = |source| CgroupError::Kill {
        path: path.to_path_buf(),
        source,
    };
    if !tokio::fs::try_exists(path).await.map_err(kill_error)? {
        return Ok(());
    }
    // Checked first because cgroupfs rejects the write of a missing file with EACCES, not
    // ENOENT.
    let kill_file = path.join(KILL_FILE);
    if tokio::fs::try_exists(&kill_file)
        .await
        .map_err(kill_error)?
    {
        tokio::fs::write(&kill_file, "1").await.map_err(kill_error)
    } else {
        kill_listed(path).await
    }
}

async fn kill_listed(path: &Path) -> Result<(), CgroupError> {
    // NOTE: a pid number that is reused inside the cgroup between two rounds is not signalled
    // again. The caller's wait for an empty cgroup reports such a survivor.
    let mut signalled = HashSet::new();
    for _ in 0..KILL_ROUNDS_MAX {
        let fresh: Vec<u32> = pids(path)
            .await?
            .into_iter()
            .filter(|pid| signalled.insert(*pid))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        for pid in fresh {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            // A process that exited since the read is not an error.
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
        sleep(KILL_ROUND_INTERVAL).await;
    }
    Ok(())
}

/// Lists the child cgroup dirs of `path`. A missing dir has none.
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

    #[test]
    fn parses_populated() {
        assert_eq!(parse_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated("frozen 0\n"), None);
    }

    #[test]
    fn parses_pids() {
        assert_eq!(parse_pids("12\n345\n\n"), [12, 345]);
        assert!(parse_pids("").is_empty());
    }

    #[tokio::test]
    async fn v1_dir_is_populated_by_its_procs() {
        let dir = tempfile::tempdir().expect("create temp dir");
        std::fs::write(dir.path().join(PROCS_FILE), "").expect("write procs");
        assert!(!is_populated(dir.path()).await.expect("read"));
        std::fs::write(dir.path().join(PROCS_FILE), "4242\n").expect("write procs");
        assert!(is_populated(dir.path()).await.expect("read"));
    }

    #[tokio::test]
    async fn missing_cgroup_is_empty() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let missing = dir.path().join("gone");
        assert!(!is_populated(&missing).await.expect("read"));
        assert!(wait_empty(&missing, Duration::ZERO).await.expect("wait"));
        kill_all(&missing).await.expect("kill of a missing cgroup");
        assert!(child_dirs(&missing).await.expect("list").is_empty());
    }
}
