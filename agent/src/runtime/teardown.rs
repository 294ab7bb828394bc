//! Undo steps of silo setup. A silo's setup pushes one step per object it creates. A failed
//! setup runs its steps in reverse, and removing a silo runs the full list built from its
//! record. Every step is idempotent and accepts an object that is already gone.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::state::{SiloDirs, TRASH_PREFIX};
use super::{iptables, Inner, RuntimeError};

/// How long the processes of a cgroup may take to die after `cgroup.kill`.
pub const CGROUP_KILL_WAIT: Duration = Duration::from_secs(10);

/// One object of a silo to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UndoStep {
    ReleaseLease {
        address: Ipv4Addr,
    },
    /// Removes the silo dir, with the record in it.
    RemoveSiloDir,
    /// Kills what is left in the silo's cgroups and removes them from every hierarchy.
    RemoveCgroup {
        path: PathBuf,
    },
    DeleteVeth {
        name: String,
    },
    RemoveMasquerade {
        address: Ipv4Addr,
    },
}

impl UndoStep {
    /// Whether the step must be skipped once an earlier undo step failed: the lease and the
    /// record must outlive every object they describe, so that a retry still finds them.
    fn needs_clean_predecessors(&self) -> bool {
        matches!(
            self,
            UndoStep::ReleaseLease { .. } | UndoStep::RemoveSiloDir
        )
    }
}

/// The undo steps of one silo, in creation order.
#[derive(Debug)]
pub struct UndoStack {
    silo_id: String,
    steps: Vec<UndoStep>,
}

impl UndoStack {
    pub fn new(silo_id: &str) -> Self {
        UndoStack {
            silo_id: silo_id.to_string(),
            steps: Vec::new(),
        }
    }

    /// Returns the steps that remove every object a silo can have, in creation order.
    pub fn full(
        silo_id: &str,
        address: Option<Ipv4Addr>,
        cgroup_dir: PathBuf,
        host_veth: String,
        internet_access: bool,
    ) -> Self {
        let mut stack = UndoStack::new(silo_id);
        if let Some(address) = address {
            stack.push(UndoStep::ReleaseLease { address });
        }
        stack.push(UndoStep::RemoveSiloDir);
        stack.push(UndoStep::RemoveCgroup { path: cgroup_dir });
        stack.push(UndoStep::DeleteVeth { name: host_veth });
        if let (Some(address), true) = (address, internet_access) {
            stack.push(UndoStep::RemoveMasquerade { address });
        }
        stack
    }

    pub fn push(&mut self, step: UndoStep) {
        self.steps.push(step);
    }

    /// Returns the steps in creation order.
    #[cfg(test)]
    pub fn steps(&self) -> &[UndoStep] {
        &self.steps
    }

    /// Runs every step in reverse creation order. A failed step is logged and the rest still
    /// run, except the lease and record removal; returns the first error.
    pub async fn run(self, inner: &Inner) -> Result<(), RuntimeError> {
        let mut first_error = None;
        for step in self.steps.iter().rev() {
            if first_error.is_some() && step.needs_clean_predecessors() {
                warn!(silo = %self.silo_id, ?step, "kept for a later retry because an earlier undo step failed");
                continue;
            }
            if let Err(err) = run_step(inner, &self.silo_id, step).await {
                warn!(silo = %self.silo_id, ?step, error = %err, "undo step failed");
                first_error.get_or_insert(err);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

async fn run_step(inner: &Inner, silo_id: &str, step: &UndoStep) -> Result<(), RuntimeError> {
    match step {
        UndoStep::ReleaseLease { address } => Ok(inner.leases.release(*address, silo_id)?),
        UndoStep::RemoveSiloDir => remove_silo_dirs(&inner.silo_dirs, silo_id).await,
        // `path` is the membership dir; the silo has a dir in every hierarchy.
        UndoStep::RemoveCgroup { .. } => Ok(inner
            .cgroups
            .silo(silo_id)
            .kill_and_remove(CGROUP_KILL_WAIT)
            .await?),
        UndoStep::DeleteVeth { name } => Ok(inner.netlink.delete_link(name).await?),
        UndoStep::RemoveMasquerade { address } => {
            Ok(iptables::remove_masquerade(*address, &inner.cfg.bridge, silo_id).await?)
        }
    }
}

/// Removes both dirs of a silo: its files first and its record dir last, so a silo whose record
/// is gone has no dirs left either, unless the removal was cut short (see [`super::state`]).
pub async fn remove_silo_dirs(dirs: &SiloDirs, silo_id: &str) -> Result<(), RuntimeError> {
    remove_silo_dir(&dirs.files, silo_id).await?;
    remove_silo_dir(&dirs.records, silo_id).await
}

/// Removes the dir `silo_id` in `silos_dir` by renaming it to a trash name first, so a crash
/// in the middle never leaves a half-deleted dir that looks like a silo.
pub async fn remove_silo_dir(silos_dir: &Path, silo_id: &str) -> Result<(), RuntimeError> {
    let dir = silos_dir.join(silo_id);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let trash = silos_dir.join(format!("{TRASH_PREFIX}{silo_id}-{nanos}"));
    match tokio::fs::rename(&dir, &trash).await {
        Ok(()) => remove_dir_all(trash).await,
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RuntimeError::RemoveDir { path: dir, source }),
    }
}

/// Removes `path` and everything below it; a missing dir is fine.
pub async fn remove_dir_all(path: PathBuf) -> Result<(), RuntimeError> {
    let removed = tokio::task::spawn_blocking({
        let path = path.clone();
        move || std::fs::remove_dir_all(path)
    })
    .await?;
    match removed {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(RuntimeError::RemoveDir { path, source: err })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_teardown_order() {
        let stack = UndoStack::full(
            "3938a44e",
            Some(Ipv4Addr::new(10, 69, 1, 2)),
            PathBuf::from("/cg/3938a44e"),
            "cx3938a44e".to_string(),
            true,
        );
        let reversed: Vec<&UndoStep> = stack.steps().iter().rev().collect();
        assert!(matches!(reversed[0], UndoStep::RemoveMasquerade { .. }));
        assert!(matches!(reversed[1], UndoStep::DeleteVeth { .. }));
        assert!(matches!(reversed[2], UndoStep::RemoveCgroup { .. }));
        assert!(matches!(reversed[3], UndoStep::RemoveSiloDir));
        // The lease goes last: only after the veth that used the address is gone.
        assert!(matches!(reversed[4], UndoStep::ReleaseLease { .. }));
    }

    #[test]
    fn full_teardown_without_address_or_nat() {
        let stack = UndoStack::full(
            "3938a44e",
            None,
            PathBuf::from("/cg/x"),
            "cx3938a44e".to_string(),
            true,
        );
        assert!(!stack.steps().iter().any(|step| matches!(
            step,
            UndoStep::ReleaseLease { .. } | UndoStep::RemoveMasquerade { .. }
        )));
    }

    #[tokio::test]
    async fn silo_dir_removal_leaves_no_trash() {
        let base = tempfile::tempdir().expect("create temp dir");
        let dirs = SiloDirs::new(&base.path().join("run"), base.path());
        let paths = dirs.paths("3938a44e");
        std::fs::create_dir_all(paths.upper().join("www")).expect("create silo dir");
        std::fs::create_dir_all(&paths.run).expect("create record dir");
        std::fs::write(paths.record(), b"{}").expect("write record");

        remove_silo_dirs(&dirs, "3938a44e").await.expect("remove");
        for silos in [&dirs.records, &dirs.files] {
            assert!(std::fs::read_dir(silos).expect("list").next().is_none());
        }
        remove_silo_dirs(&dirs, "3938a44e")
            .await
            .expect("remove again");
    }
}
