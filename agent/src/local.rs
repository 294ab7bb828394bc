//! The agent's table of the silos it runs, and the decisions taken when
//! the controller's assignments or a runtime operation's result arrive.
//!
//! This module only decides: it returns the operations to start, and the
//! session carries them out, so every rule here is tested without root.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use colex_proto as proto;

use crate::runtime::AdoptedSilo;

/// Lifecycle phase of one local silo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Up,
    Exited,
    Failed,
    Removing,
    /// The program exited and the restart policy restarts it once the delay has passed.
    RestartPending,
    /// The runtime is restarting the program in place.
    Restarting,
}

/// One silo this agent started, adopted or is cleaning up.
#[derive(Debug, Clone, PartialEq)]
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
    /// Spec from the assignment, without file contents because a restart keeps
    /// the files in the writable layer. The entries stay, so their SHA-256s tell
    /// which cached contents the silo uses. `None` for a silo adopted from an
    /// earlier agent until an assignment lists it.
    pub spec: Option<Box<proto::SiloSpec>>,
    /// Times the program was restarted in place under its restart policy.
    pub restarts: u32,
}

/// Time a silo gets to exit after SIGTERM when its spec sets none.
pub const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns the kill timeout a spec requests, or the default.
pub fn kill_timeout_of(spec: &proto::SiloSpec) -> Duration {
    match spec.kill_timeout_ms {
        0 => DEFAULT_KILL_TIMEOUT,
        millis => Duration::from_millis(millis),
    }
}

/// Reports whether the restart policy of `spec` restarts a program that
/// exited with `exit_code` after `restarts` earlier restarts. An attempts
/// count of 0 allows any number of restarts.
pub fn should_restart(spec: &proto::SiloSpec, exit_code: i32, restarts: u32) -> bool {
    let Some(policy) = &spec.restart else {
        return false;
    };
    let wanted = match policy.mode() {
        proto::RestartMode::Never => false,
        proto::RestartMode::OnFailure => exit_code != 0,
        proto::RestartMode::Always => true,
    };
    wanted && (policy.attempts == 0 || restarts < policy.attempts)
}

/// Returns a copy of `spec` without its file contents, which can be large. The file entries
/// stay with their SHA-256 and size.
fn without_files(spec: &proto::SiloSpec) -> proto::SiloSpec {
    let mut copy = spec.clone();
    for entry in &mut copy.files {
        entry.content = Vec::new();
    }
    copy
}

/// Returns the pause before a restart that the spec requests.
fn restart_delay_of(spec: &proto::SiloSpec) -> Duration {
    Duration::from_millis(spec.restart.as_ref().map_or(0, |policy| policy.delay_ms))
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
    /// Wait `delay`, then call [`LocalSilos::restart_due`].
    ScheduleRestart {
        id: String,
        generation: u64,
        delay: Duration,
    },
    /// Restart the exited program in place; `restarts` counts this restart.
    Restart {
        id: String,
        generation: u64,
        spec: Box<proto::SiloSpec>,
        restarts: u32,
    },
}

/// The local silos by id.
#[derive(Debug, Default)]
pub struct LocalSilos {
    silos: BTreeMap<String, LocalSilo>,
}

impl LocalSilos {
    /// Takes over the silos the runtime adopted from an earlier agent, so the
    /// next assignments keep the ones still assigned (never starting a second
    /// copy) and remove the others.
    pub fn adopt(&mut self, adopted: &[AdoptedSilo]) {
        for silo in adopted {
            if self.silos.contains_key(&silo.silo_id) {
                continue;
            }
            let phase = match silo.exit_code {
                None => Phase::Up,
                Some(_) => Phase::Exited,
            };
            self.silos.insert(
                silo.silo_id.clone(),
                LocalSilo {
                    id: silo.silo_id.clone(),
                    generation: silo.generation,
                    phase,
                    interfaces: silo.interfaces.clone(),
                    exit_code: silo.exit_code,
                    message: String::new(),
                    remove_after_start: false,
                    kill_timeout: DEFAULT_KILL_TIMEOUT,
                    spec: None,
                    restarts: silo.restarts,
                },
            );
        }
    }

    /// Compares the controller's assignments with the local silos: returns
    /// the operations to run, and marks the silos they touch.
    pub fn reconcile(&mut self, assignments: &proto::Assignments) -> Vec<Operation> {
        let assignments: Vec<&proto::Assignment> = assignments.silos.iter().collect();
        self.reconcile_set(&assignments)
    }

    /// Like [`LocalSilos::reconcile`], for a set the caller keeps in another shape.
    pub fn reconcile_set(&mut self, assignments: &[&proto::Assignment]) -> Vec<Operation> {
        let assigned: BTreeSet<&str> = assignments.iter().map(|silo| silo.silo_id.as_str()).collect();
        let mut operations = Vec::new();

        for silo in self.silos.values_mut() {
            if assigned.contains(silo.id.as_str()) {
                continue;
            }
            match silo.phase {
                Phase::Starting | Phase::Restarting => silo.remove_after_start = true,
                Phase::Removing => {}
                Phase::Up | Phase::Exited | Phase::Failed | Phase::RestartPending => {
                    silo.phase = Phase::Removing;
                    operations.push(Operation::Remove {
                        id: silo.id.clone(),
                        kill_timeout: silo.kill_timeout,
                    });
                }
            }
        }

        for assignment in assignments {
            let Some(spec) = assignment.spec.clone() else {
                tracing::warn!(silo_id = %assignment.silo_id, "assignment without spec ignored");
                continue;
            };
            if let Some(silo) = self.silos.get_mut(&assignment.silo_id) {
                if silo.spec.is_none() && silo.generation == assignment.generation {
                    // An adopted silo learns its spec; one that exited while no
                    // agent ran gets its restart policy applied now.
                    silo.kill_timeout = kill_timeout_of(&spec);
                    silo.spec = Some(Box::new(without_files(&spec)));
                    if let Some(operation) = schedule_restart(silo) {
                        operations.push(operation);
                    }
                }
                continue;
            }
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
                    spec: Some(Box::new(without_files(&spec))),
                    restarts: 0,
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

    /// Records the result of a start or a restart; returns a removal to run
    /// when the assignment was withdrawn meanwhile.
    pub fn started(&mut self, id: &str, result: Result<Vec<proto::Interface>, String>) -> Option<Operation> {
        let silo = self.silos.get_mut(id)?;
        if !matches!(silo.phase, Phase::Starting | Phase::Restarting) {
            return None;
        }
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

    /// Records that the silo's program ended by itself, with `reason` when the
    /// runtime found the cause. Returns false when the exit belongs to no running
    /// silo, for example one being removed. Otherwise returns true, plus the
    /// operation that schedules a restart when the restart policy wants one.
    pub fn exited(
        &mut self,
        id: &str,
        generation: u64,
        exit_code: i32,
        reason: Option<String>,
    ) -> (bool, Option<Operation>) {
        match self.silos.get_mut(id) {
            Some(silo) if silo.generation == generation && silo.phase == Phase::Up => {
                silo.phase = Phase::Exited;
                silo.exit_code = Some(exit_code);
                silo.message = reason.unwrap_or_default();
                (true, schedule_restart(silo))
            }
            _ => (false, None),
        }
    }

    /// Returns the restart of a silo whose restart delay has passed, if it is
    /// still waiting for it.
    pub fn restart_due(&mut self, id: &str, generation: u64) -> Option<Operation> {
        let silo = self.silos.get_mut(id)?;
        if silo.phase != Phase::RestartPending || silo.generation != generation {
            return None;
        }
        let spec = silo.spec.clone()?;
        silo.phase = Phase::Restarting;
        silo.restarts += 1;
        Some(Operation::Restart {
            id: id.to_owned(),
            generation,
            spec,
            restarts: silo.restarts,
        })
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

    /// Returns the specs of the local silos that have one.
    pub fn specs(&self) -> impl Iterator<Item = &proto::SiloSpec> {
        self.silos.values().filter_map(|silo| silo.spec.as_deref())
    }

    /// Returns the status report of every local silo.
    pub fn statuses(&self) -> Vec<proto::SiloStatus> {
        self.silos.values().map(status_of).collect()
    }
}

/// Moves an exited silo to RestartPending when its policy restarts it, and
/// returns the operation that schedules the restart.
fn schedule_restart(silo: &mut LocalSilo) -> Option<Operation> {
    let (Phase::Exited, Some(exit_code), Some(spec)) = (silo.phase, silo.exit_code, &silo.spec) else {
        return None;
    };
    if !should_restart(spec, exit_code, silo.restarts) {
        return None;
    }
    silo.phase = Phase::RestartPending;
    Some(Operation::ScheduleRestart {
        id: silo.id.clone(),
        generation: silo.generation,
        delay: restart_delay_of(spec),
    })
}

/// Builds the status report of one silo. A silo waiting for or going
/// through a restart is reported STARTING with the last exit code.
pub fn status_of(silo: &LocalSilo) -> proto::SiloStatus {
    let state = match silo.phase {
        Phase::Starting | Phase::RestartPending | Phase::Restarting => proto::SiloState::Starting,
        Phase::Up => proto::SiloState::Up,
        Phase::Exited => proto::SiloState::Exited,
        Phase::Failed => proto::SiloState::Failed,
        Phase::Removing => proto::SiloState::Stopping,
    };
    let message = match (silo.phase, silo.exit_code) {
        (Phase::RestartPending | Phase::Restarting, Some(code)) => {
            let attempts = silo
                .spec
                .as_ref()
                .and_then(|spec| spec.restart.as_ref())
                .map_or(0, |policy| policy.attempts);
            let limit = if attempts == 0 { "unlimited".to_owned() } else { attempts.to_string() };
            format!("restarting after exit code {code} (restarts so far {}, allowed {limit})", silo.restarts)
        }
        _ => silo.message.clone(),
    };
    proto::SiloStatus {
        silo_id: silo.id.clone(),
        generation: silo.generation,
        state: state.into(),
        interfaces: silo.interfaces.clone(),
        exit_code: silo.exit_code,
        message,
        restarts: silo.restarts,
    }
}

/// Returns the report that a silo is gone, with how its program ended.
pub fn removed_status(id: &str, exit_code: Option<i32>, message: String) -> proto::SiloStatus {
    proto::SiloStatus {
        silo_id: id.to_owned(),
        state: proto::SiloState::Removed.into(),
        exit_code,
        message,
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
    fn kept_spec_has_hashes_without_contents() {
        let mut table = LocalSilos::default();
        let mut assigned = assignments(&["0000000a"]);
        let file = proto::FileEntry {
            silo_path: "/data".to_owned(),
            content: b"inline".to_vec(),
            content_sha256: vec![7; 32],
            content_size: 6,
            ..Default::default()
        };
        if let Some(spec) = assigned.silos[0].spec.as_mut() {
            spec.files.push(file);
        }
        let operations = table.reconcile(&assigned);
        let Some(Operation::Run { spec, .. }) = operations.first() else {
            panic!("a new assignment is started: {operations:?}");
        };
        assert_eq!(spec.files[0].content, b"inline", "the start gets the whole spec");

        let kept: Vec<&proto::SiloSpec> = table.specs().collect();
        assert_eq!(kept.len(), 1);
        assert!(kept[0].files[0].content.is_empty(), "the table keeps no content");
        assert_eq!(kept[0].files[0].content_sha256, vec![7; 32], "the table keeps the hash");
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
        assert!(!silos.exited("00000001", 7, 0, None).0);
        assert!(silos.exited("00000001", 1, 3, None).0);
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

    fn on_failure(attempts: u32) -> proto::Assignments {
        let mut assignment = assignments(&["00000001"]);
        if let Some(spec) = assignment.silos[0].spec.as_mut() {
            spec.restart = Some(proto::RestartPolicy {
                mode: proto::RestartMode::OnFailure.into(),
                attempts,
                delay_ms: 250,
            });
        }
        assignment
    }

    #[test]
    fn on_failure_restarts_up_to_attempts() {
        let mut silos = LocalSilos::default();
        silos.reconcile(&on_failure(2));
        silos.started("00000001", Ok(Vec::new()));
        for restart in 1..=2 {
            let (reported, scheduled) = silos.exited("00000001", 1, 1, None);
            assert!(reported);
            assert_eq!(
                scheduled,
                Some(Operation::ScheduleRestart {
                    id: "00000001".to_owned(),
                    generation: 1,
                    delay: Duration::from_millis(250)
                })
            );
            let status = status_of(silos.get("00000001").expect("silo"));
            assert_eq!(status.state, i32::from(proto::SiloState::Starting));
            let due = silos.restart_due("00000001", 1);
            assert!(matches!(due, Some(Operation::Restart { restarts, .. }) if restarts == restart));
            assert!(silos.restart_due("00000001", 1).is_none(), "a restart is due once");
            silos.started("00000001", Ok(Vec::new()));
        }
        let (reported, scheduled) = silos.exited("00000001", 1, 1, None);
        assert!(reported);
        assert_eq!(scheduled, None, "attempts are used up");
        let status = status_of(silos.get("00000001").expect("silo"));
        assert_eq!(status.state, i32::from(proto::SiloState::Exited));
        assert_eq!(status.restarts, 2);
        assert_eq!(status.exit_code, Some(1));
    }

    #[test]
    fn on_failure_keeps_clean_exit() {
        let mut silos = LocalSilos::default();
        silos.reconcile(&on_failure(0));
        silos.started("00000001", Ok(Vec::new()));
        assert_eq!(silos.exited("00000001", 1, 0, None), (true, None));
    }

    #[test]
    fn policies_decide_restarts() {
        let mut spec = proto::SiloSpec::default();
        assert!(!should_restart(&spec, 1, 0), "no policy never restarts");
        spec.restart = Some(proto::RestartPolicy {
            mode: proto::RestartMode::Always.into(),
            attempts: 0,
            delay_ms: 0,
        });
        assert!(should_restart(&spec, 0, 1000), "always with unlimited attempts");
        if let Some(policy) = spec.restart.as_mut() {
            policy.attempts = 3;
        }
        assert!(should_restart(&spec, 0, 2));
        assert!(!should_restart(&spec, 0, 3));
    }

    #[test]
    fn withdrawn_during_restart_delay_is_removed() {
        let mut silos = LocalSilos::default();
        silos.reconcile(&on_failure(0));
        silos.started("00000001", Ok(Vec::new()));
        silos.exited("00000001", 1, 1, None);
        let operations = silos.reconcile(&assignments(&[]));
        assert!(matches!(&operations[..], [Operation::Remove { .. }]));
        assert!(silos.restart_due("00000001", 1).is_none());
    }

    fn adopted(exit_code: Option<i32>) -> AdoptedSilo {
        AdoptedSilo {
            silo_id: "00000001".to_owned(),
            generation: 1,
            interfaces: vec![proto::Interface {
                name: "cx00000001".to_owned(),
                address: "10.69.1.2".to_owned(),
            }],
            exit_code,
            restarts: 1,
        }
    }

    #[test]
    fn adopted_silo_still_assigned_is_kept() {
        let mut silos = LocalSilos::default();
        silos.adopt(&[adopted(None)]);
        let status = status_of(silos.get("00000001").expect("adopted"));
        assert_eq!(status.state, i32::from(proto::SiloState::Up));
        assert_eq!(status.restarts, 1);
        assert!(silos.reconcile(&assignments(&["00000001"])).is_empty(), "no second copy");
        assert!(silos.get("00000001").and_then(|silo| silo.spec.as_ref()).is_some());
    }

    #[test]
    fn adopted_silo_not_assigned_is_removed() {
        let mut silos = LocalSilos::default();
        silos.adopt(&[adopted(None)]);
        let operations = silos.reconcile(&assignments(&["00000002"]));
        assert!(operations.contains(&Operation::Remove {
            id: "00000001".to_owned(),
            kill_timeout: DEFAULT_KILL_TIMEOUT
        }));
        assert!(!operations.iter().any(|operation| matches!(operation, Operation::Run { id, .. } if id == "00000001")));
    }

    #[test]
    fn adopted_exited_silo_gets_its_policy() {
        let mut silos = LocalSilos::default();
        silos.adopt(&[adopted(Some(1))]);
        let operations = silos.reconcile(&on_failure(3));
        assert!(matches!(&operations[..], [Operation::ScheduleRestart { .. }]));
    }
}
