//! The leak ledger: a snapshot of every kernel object and file a host's
//! agent can create, so a test can compare before and after.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::Host;

/// Snapshot of what exists for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    /// Link names in the host's namespace.
    pub links: BTreeSet<String>,
    /// `iptables-save` lines that mention colex, in the host's namespace.
    pub iptables: BTreeSet<String>,
    /// Child cgroups of the agent's cgroup folder.
    pub cgroups: BTreeSet<String>,
    /// Mount points below the agent's state folder.
    pub mounts: BTreeSet<String>,
    /// Entries of the agent's `silos` state folder.
    pub silo_dirs: BTreeSet<String>,
}

/// Pause between the snapshots of [`Ledger::take_settled`].
const SETTLE_INTERVAL: Duration = Duration::from_millis(300);
/// Maximum wait of [`Ledger::take_settled`] for two equal snapshots in a row.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

impl Ledger {
    /// Takes snapshots until two in a row, [`SETTLE_INTERVAL`] apart, are equal, and returns
    /// the last. A baseline taken right after an agent started then does not catch the agent's
    /// host set-up halfway, such as one of its two metadata rules. After [`SETTLE_TIMEOUT`] it
    /// returns the last snapshot.
    pub fn take_settled(host: &Host) -> anyhow::Result<Ledger> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut last = Ledger::take(host)?;
        loop {
            thread::sleep(SETTLE_INTERVAL);
            let next = Ledger::take(host)?;
            if next == last || Instant::now() >= deadline {
                return Ok(next);
            }
            last = next;
        }
    }

    pub fn take(host: &Host) -> anyhow::Result<Ledger> {
        let links = host
            .run("ip", &["-o", "link", "show"])?
            .stdout
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_owned())
            .collect();
        let iptables = host
            .run("iptables-save", &[])?
            .stdout
            .lines()
            .filter(|line| line.to_lowercase().contains("colex"))
            .map(str::to_owned)
            .collect();
        let cgroups = cgroup2_root()
            .map(|root| list_dir(&root.join(format!("colex-{}", host.name)), true))
            .unwrap_or_default();
        let mounts = mounts_below(&host.state_dir);
        let mut silo_dirs = list_dir(&host.state_dir.join("silos"), false);
        silo_dirs.extend(list_dir(&host.run_dir().join("silos"), false));
        Ok(Ledger {
            links,
            iptables,
            cgroups,
            mounts,
            silo_dirs,
        })
    }
}

/// Returns the names of the entries in `dir` (only folders when
/// `dirs_only`), or nothing when it does not exist.
fn list_dir(dir: &Path, dirs_only: bool) -> BTreeSet<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| !dirs_only || entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Returns the cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        if after.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        before.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// Returns mount points at or below `dir`.
pub fn mounts_below(dir: &Path) -> BTreeSet<String> {
    let prefix = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

/// Detaches every mount at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let mut points: Vec<String> = mounts_below(dir).into_iter().collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in points {
        if let Err(error) = nix::mount::umount2(point.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cannot unmount {point}: {error}");
        }
    }
}

/// Kills every process in the cgroup tree at `dir` and removes it.
pub fn kill_and_remove_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let mut children: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default();
    children.sort();
    for child in children {
        kill_and_remove_cgroup(&child);
    }
    // cgroup.kill kills the whole subtree; it exists on kernels >= 5.14.
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if fs::remove_dir(dir).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("cannot remove cgroup {}", dir.display());
}
