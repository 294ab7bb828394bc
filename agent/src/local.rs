//! The agent's table of the silos it runs, and the decisions taken when
//! the controller's assignments or a runtime operation's result arrive.
//!
//! This module only decides: it returns the operations to start, and the
//! session carries them out, so every rule here is tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use colex_proto as proto;

/// Where one local silo is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Up,
    Exited,
    Failed,
    Removing,
}

/// One silo this agent started or is cleaning up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSilo {
    pub id: String,
    pub generation: u64,
    pub phase: Phase,
    pub interfaces: Vec<proto::Interface>,
    pub exit_code: Option<i32>,
    pub message: String,
    /// The assignment was withdrawn while the silo was starting: remove it
    /// as soon as the start finishes.
    pub remove_after_start: bool,
    /// Time between SIGTERM and SIGKILL when the silo is stopped.
    pub kill_timeout: Duration,
}

/// Time a silo gets to exit after SIGTERM when its spec sets none.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns the kill timeout a spec asks for, or the default.
pub fn kill_timeout_of(spec: &proto::SiloSpec) -> Duration {
    match spec.kill_timeout_ms {
        0 => DEFAULT_KILL_TIMEOUT,
        millis => Duration::from_millis(millis),
    }
}

/// An operation the session must run on the runtime.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Run {
        id: String,
        generation: u64,
        /// Boxed because a spec carries its files and is far larger than a removal.
        spec: Box<proto::SiloSpec>,
    },
    Remove {
        id: String,
        kill_timeout: Duration,
    },
}

/// The local silos by id.
#[derive(Debug, Default)]
pub struct LocalSilos {
    silos: BTreeMap<String, LocalSilo>,
}

impl LocalSilos {
    /// Compares the controller's assignments with the local silos: returns
    /// the operations to run, and marks the silos they touch.
    pub fn reconcile(&mut self, assignments: &proto::Assignments) -> Vec<Operation> {
        let assigned: BTreeSet<&str> = assignments.silos.iter().map(|silo| silo.silo_id.as_str()).collect();
        let mut operations = Vec::new();

        for silo in self.silos.values_mut() {
            if assigned.contains(silo.id.as_str()) {
                continue;
            }
            match silo.phase {
                Phase::Starting => silo.remove_after_start = true,
                Phase::Removing => {}
                Phase::Up | Phase::Exited | Phase::Failed => {
                    silo.phase = Phase::Removing;
                    operations.push(Operation::Remove {
                        id: silo.id.clone(),
                        kill_timeout: silo.kill_timeout,
                    });
                }
            }
        }

        for assignment in &assignments.silos {
            if self.silos.contains_key(&assignment.silo_id) {
                continue;
            }
            let Some(spec) = assignment.spec.clone() else {
                tracing::warn!(silo_id = %assignment.silo_id, "assignment without spec ignored");
                continue;
            };
            self.silos.insert(
                assignment.silo_id.clone(),
                LocalSilo {
                    id: assignment.silo_id.clone(),
                    generation: assignment.generation,
                    phase: Phase::Starting,
                    interfaces: Vec::new(),
                    exit_code: None,
                    message: String::new(),
                    remove_after_start: false,
                    kill_timeout: kill_timeout_of(&spec),
                },
            );
            operations.push(Operation::Run {
                id: assignment.silo_id.clone(),
                generation: assignment.generation,
                spec: Box::new(spec),
            });
        }
        operations
    }

    /// Records the result of a start; returns a removal to run when the
    /// assignment was withdrawn meanwhile.
    pub fn started(&mut self, id: &str, result: Result<Vec<proto::Interface>, String>) -> Option<Operation> {
        let silo = self.silos.get_mut(id)?;
        match result {
            Ok(interfaces) => {
                silo.phase = Phase::Up;
                silo.interfaces = interfaces;
                silo.message.clear();
            }
            Err(message) => {
                silo.phase = Phase::Failed;
                silo.message = message;
            }
        }
        if silo.remove_after_start {
            silo.phase = Phase::Removing;
            return Some(Operation::Remove {
                id: id.to_owned(),
                kill_timeout: silo.kill_timeout,
            });
        }
        None
    }

    /// Records that the silo's program ended by itself. Returns false when
    /// the exit belongs to no running silo (for example one being removed).
    pub fn exited(&mut self, id: &str, generation: u64, exit_code: i32) -> bool {
        match self.silos.get_mut(id) {
            Some(silo) if silo.generation == generation && silo.phase == Phase::Up => {
                silo.phase = Phase::Exited;
                silo.exit_code = Some(exit_code);
                true
            }
            _ => false,
        }
    }

    /// Records the result of a removal. A removed silo leaves the table; a
    /// failed removal stays in phase Removing so it can be tried again.
    pub fn removed(&mut self, id: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.silos.remove(id);
            }
            Err(message) => {
                if let Some(silo) = self.silos.get_mut(id) {
                    silo.message = format!("removal failed: {message}");
                }
            }
        }
    }

    /// Returns the local silo with id `id`.
    pub fn get(&self, id: &str) -> Option<&LocalSilo> {
        self.silos.get(id)
    }

    /// Returns the status report of every local silo.
    pub fn statuses(&self) -> Vec<proto::SiloStatus> {
        self.silos.values().map(status_of).collect()
    }
}

/// Builds the status report of one silo.
pub fn status_of(silo: &LocalSilo) -> proto::SiloStatus {
    let state = match silo.phase {
        Phase::Starting => proto::SiloState::Starting,
        Phase::Up => proto::SiloState::Up,
        Phase::Exited => proto::SiloState::Exited,
        Phase::Failed => proto::SiloState::Failed,
        Phase::Removing => proto::SiloState::Stopping,
    };
    proto::SiloStatus {
        silo_id: silo.id.clone(),
        generation: silo.generation,
        state: state.into(),
        interfaces: silo.interfaces.clone(),
        exit_code: silo.exit_code,
        message: silo.message.clone(),
    }
}

/// Returns the report that a silo is gone.
pub fn removed_status(id: &str) -> proto::SiloStatus {
    proto::SiloStatus {
        silo_id: id.to_owned(),
        state: proto::SiloState::Removed.into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignments(ids: &[&str]) -> proto::Assignments {
        proto::Assignments {
            silos: ids
                .iter()
                .map(|id| proto::Assignment {
                    silo_id: (*id).to_owned(),
                    generation: 1,
                    spec: Some(proto::SiloSpec::default()),
                })
                .collect(),
        }
    }

    #[test]
    fn new_assignment_starts_silo() {
        let mut silos = LocalSilos::default();
        let operations = silos.reconcile(&assignments(&["00000001"]));
        assert!(matches!(&operations[..], [Operation::Run { id, .. }] if id == "00000001"));
        assert_eq!(silos.get("00000001").map(|silo| silo.phase), Some(Phase::Starting));
    }

    #[test]
    fn same_assignment_twice_starts_once() {
        let mut silos = LocalSilos::default();
        silos.reconcile(&assignments(&["00000001"]));
        assert!(silos.reconcile(&assignments(&["00000001"])).is_empty());
    }

    #[test]
    fn withdrawn_assignment_removes_silo() {
        let mut silos = LocalSilos::default();
        silos.reconcile(&assignments(&["00000001"]));
        silos.started("00000001", Ok(Vec::new()));
        let operations = silos.reconcile(&assignments(&[]));
        assert_eq!(
            operations,
            vec![Operation::Remove {
                id: "00000001".to_owned(),
                kill_timeout: DEFAULT_KILL_TIMEOUT
            }]
        );
        silos.removed("00000001", Ok(()));
        assert!(silos.get("00000001").is_none());
    }

    #[test]
    fn withdrawn_while_starting_removes_after_start() {
        let mut silos = LocalSilos::default();
        silos.reconcile(&assignments(&["00000001"]));
        assert!(silos.reconcile(&assignments(&[])).is_empty());
        let follow_up = silos.started("00000001", Ok(Vec::new()));
        assert_eq!(
            follow_up,
            Some(Operation::Remove {
                id: "00000001".to_owned(),
                kill_timeout: DEFAULT_KILL_TIMEOUT
            })
        );
    }

    #[test]
    fn failed_start_is_reported_not_retried() {
        let mut silos = LocalSilos::default();
        silos.reconcile(&assignments(&["00000001"]));
        silos.started("00000001", Err("binary missing".to_owned()));
        assert!(silos.reconcile(&assignments(&["00000001"])).is_empty());
        let status = status_of(silos.get("00000001").expect("silo is in the table"));
        assert_eq!(status.state, i32::from(proto::SiloState::Failed));
        assert_eq!(status.message, "binary missing");
    }

    #[test]
    fn exit_of_stale_generation_is_ignored() {
        let mut silos = LocalSilos::default();
        silos.reconcile(&assignments(&["00000001"]));
        silos.started("00000001", Ok(Vec::new()));
        assert!(!silos.exited("00000001", 7, 0));
        assert!(silos.exited("00000001", 1, 3));
        assert_eq!(silos.get("00000001").and_then(|silo| silo.exit_code), Some(3));
    }

    #[test]
    fn spec_kill_timeout_is_kept() {
        let mut silos = LocalSilos::default();
        let mut assignment = assignments(&["00000001"]);
        if let Some(spec) = assignment.silos[0].spec.as_mut() {
            spec.kill_timeout_ms = 1500;
        }
        silos.reconcile(&assignment);
        silos.started("00000001", Ok(Vec::new()));
        let operations = silos.reconcile(&assignments(&[]));
        assert_eq!(
            operations,
            vec![Operation::Remove {
                id: "00000001".to_owned(),
                kill_timeout: Duration::from_millis(1500)
            }]
        );
    }

    #[test]
    fn failed_removal_keeps_silo() {
        let mut silos = LocalSilos::default();
        silos.reconcile(&assignments(&["00000001"]));
        silos.started("00000001", Ok(Vec::new()));
        silos.reconcile(&assignments(&[]));
        silos.removed("00000001", Err("device busy".to_owned()));
        assert_eq!(silos.get("00000001").map(|silo| silo.phase), Some(Phase::Removing));
    }
}
