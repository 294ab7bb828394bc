//! Moving silo instances off lost and draining hosts, decided on the leader.
//!
//! A lost host (down for the liveness TTL) has each instance whose restart policy is
//! `on-failure` or `always` placed again on another feasible host with a new id and
//! generation, all of the host's instances in one [`Command::MoveInstances`]. An instance with
//! restart policy `never` (the default) keeps its place and counts as lost until its host is
//! back. The old copy stops when its agent reconnects, because its id is no longer assigned.
//!
//! A draining host has its instances moved one at a time: the next one moves once the last
//! moved instance is UP, failed, gone, or [`DRAIN_STEP_TIMEOUT`] passed.
//!
//! An instance that fits on no other host stays where it is, and the next watch tries again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colex_proto as proto;
use tokio::sync::Mutex;

use crate::api::client::unused_silo_id;
use crate::raft::RaftNode;
use crate::scheduler::{self, InstanceRequest};
use crate::sessions::Sessions;
use crate::state::{ClusterState, Command, Desired, InstanceMove, InstancePlacement, InstanceUpdate, SiloRecord};
use crate::view;

/// Interval between two checks for lost and draining hosts. With the default TTL of 3 s a lost
/// host is acted on at most this long after it counts as down.
const HOST_WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Time between two plans for a host whose last plan left an instance that fits nowhere else.
const UNPLACED_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Time after which a drain moves its next instance even though the last moved one is not UP
/// yet, so one instance that never starts does not stop the drain.
const DRAIN_STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns whether an instance of `spec` is placed again elsewhere when its host is lost: its
/// restart policy is `on-failure` or `always`.
pub fn moves_on_host_loss(spec: &proto::SiloSpec) -> bool {
    spec.restart.as_ref().is_some_and(|restart| {
        matches!(
            restart.mode(),
            proto::RestartMode::OnFailure | proto::RestartMode::Always
        )
    })
}

/// Moves of instances off one host, and the instances that fit nowhere else with the reason.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MovePlan {
    pub moves: Vec<InstanceMove>,
    pub unplaced: Vec<(String, String)>,
}

/// Plans the moves of `candidates`, instances placed on host `from`, to the `live` hosts other
/// than `from`, in order. Each planned move counts as placed before the next one is planned,
/// so the batch reserves capacity and spreads as `up` would.
pub fn plan_moves(
    state: &ClusterState,
    live: &BTreeSet<String>,
    from: &str,
    candidates: &[&SiloRecord],
) -> MovePlan {
    let targets: BTreeSet<String> = live.iter().filter(|host| *host != from).cloned().collect();
    let mut plan = MovePlan::default();
    if candidates.is_empty() {
        return plan;
    }
    // Later moves must see the reservations of earlier ones, so they are applied to a copy.
    let mut scratch = state.clone();
    let mut drawn_ids = BTreeSet::new();
    for record in candidates {
        let key = record.key();
        let spec = match view::decode_spec(record) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::error!(silo = %record.name, id = %record.id, %error, "stored silo spec does not decode; instance not moved");
                continue;
            }
        };
        let request = InstanceRequest {
            index: record.index,
            preferred: None,
        };
        let replaced = BTreeSet::from([key.clone()]);
        let placed = scheduler::place_instances_in(&scratch, &targets, &spec, &[request], &replaced);
        let host = match placed.map(|mut results| results.pop()) {
            Ok(Some(Ok(host))) => host,
            Ok(Some(Err(error))) => {
                plan.unplaced.push((key, error.to_string()));
                continue;
            }
            Ok(None) => continue,
            Err(error) => {
                plan.unplaced.push((key, error.to_string()));
                continue;
            }
        };
        let instance_move = InstanceMove {
            name: record.name.clone(),
            replaced_id: record.id.clone(),
            instance: InstanceUpdate {
                index: record.index,
                id: unused_silo_id(&scratch, &mut drawn_ids),
                placement: InstancePlacement::Host(host),
            },
        };
        scratch.apply(&Command::MoveInstances {
            from: from.to_owned(),
            reason: String::new(),
            moves: vec![instance_move.clone()],
            host_lost: false,
        });
        plan.moves.push(instance_move);
    }
    plan
}

/// Returns the instances on `host` that a host loss moves, in key order.
pub fn lost_candidates<'a>(state: &'a ClusterState, host: &'a str) -> Vec<&'a SiloRecord> {
    state
        .silos_on(host)
        .filter(|record| record.desired == Desired::Run)
        .filter(|record| view::decode_spec(record).is_ok_and(|spec| moves_on_host_loss(&spec)))
        .collect()
}

/// Returns the instances on `host` that a drain moves, in key order.
pub fn drain_candidates<'a>(state: &'a ClusterState, host: &'a str) -> Vec<&'a SiloRecord> {
    state
        .silos_on(host)
        .filter(|record| record.desired == Desired::Run)
        .collect()
}

/// The instance a drain moved last, which the next step waits for.
#[derive(Debug, Clone)]
struct DrainStep {
    key: String,
    id: String,
    started: Instant,
}

/// Memory of the leader's host watch between checks, emptied whenever this controller becomes
/// leader.
#[derive(Debug, Default)]
struct HostWatch {
    /// Hosts seen down, so each loss is logged once.
    lost: BTreeSet<String>,
    /// Last drain step per draining host.
    drain_steps: BTreeMap<String, DrainStep>,
    /// Time of the next plan for each host whose last plan left an instance that fits nowhere
    /// else. Planning decodes every stored spec, so such a host is planned at most every
    /// [`UNPLACED_RETRY_INTERVAL`].
    retry_at: BTreeMap<String, Instant>,
    /// Host and instance key of each instance already logged as fitting nowhere else.
    unplaced_logged: BTreeSet<(String, String)>,
}

impl HostWatch {
    /// Returns the commands that move instances off lost and draining hosts now, one per host.
    fn commands(&mut self, state: &ClusterState, sessions: &Sessions, now: Instant) -> Vec<Command> {
        let live = sessions.live_hosts();
        let occupied = hosts_with_instances(state);
        let mut commands = Vec::new();
        for host in state.hosts.values() {
            let name = host.name.as_str();
            let down = sessions.liveness().is_down(name, now);
            self.note_loss(state, name, down);
            if !host.draining {
                self.drain_steps.remove(name);
            }
            if !down && !host.draining {
                self.forget_unplaced(name);
                continue;
            }
            if !occupied.contains(name) || self.retry_at.get(name).is_some_and(|at| now < *at) {
                continue;
            }
            self.retry_at.remove(name);

            if down {
                let reason = format!("host {name} lost");
                let plan = plan_moves(state, &live, name, &lost_candidates(state, name));
                self.note_unplaced(name, &reason, &plan.unplaced, now);
                if !plan.moves.is_empty() {
                    commands.push(Command::MoveInstances {
                        from: name.to_owned(),
                        reason,
                        moves: plan.moves,
                        host_lost: true,
                    });
                }
            }

            if host.draining && self.drain_step_done(state, name, now) {
                let candidates = drain_candidates(state, name);
                let Some(next) = candidates.first() else {
                    continue;
                };
                let reason = format!("host {name} draining");
                let plan = plan_moves(state, &live, name, &[*next]);
                self.note_unplaced(name, &reason, &plan.unplaced, now);
                if let Some(instance_move) = plan.moves.into_iter().next() {
                    self.drain_steps.insert(
                        name.to_owned(),
                        DrainStep {
                            key: next.key(),
                            id: instance_move.instance.id.clone(),
                            started: now,
                        },
                    );
                    commands.push(Command::MoveInstances {
                        from: name.to_owned(),
                        reason,
                        moves: vec![instance_move],
                        host_lost: false,
                    });
                }
            }
        }
        commands
    }

    /// Logs each loss of a host and each return once.
    fn note_loss(&mut self, state: &ClusterState, host: &str, down: bool) {
        if down && self.lost.insert(host.to_owned()) {
            let placed = state
                .silos_on(host)
                .filter(|record| record.desired == Desired::Run)
                .count();
            let moving = lost_candidates(state, host).len();
            tracing::warn!(%host, moving, staying_with_restart_never = placed - moving, "host lost: no agent message within the liveness TTL");
        } else if !down && self.lost.remove(host) {
            tracing::info!(%host, "lost host is back");
        }
    }

    /// Logs each instance of `unplaced` once, and delays the next plan for `host` when there
    /// is any.
    fn note_unplaced(&mut self, host: &str, reason: &str, unplaced: &[(String, String)], now: Instant) {
        if unplaced.is_empty() {
            return;
        }
        self.retry_at.insert(host.to_owned(), now + UNPLACED_RETRY_INTERVAL);
        for (key, why) in unplaced {
            if self.unplaced_logged.insert((host.to_owned(), key.clone())) {
                tracing::warn!(%host, silo = %key, %why, "{reason}, but no other host fits the instance; it stays and is tried again");
            }
        }
    }

    fn forget_unplaced(&mut self, host: &str) {
        self.retry_at.remove(host);
        self.unplaced_logged.retain(|(logged_host, _)| logged_host != host);
    }

    /// Returns true when the last drain step of `host` is over: its new instance is UP, failed
    /// or gone, or it started more than [`DRAIN_STEP_TIMEOUT`] ago.
    fn drain_step_done(&self, state: &ClusterState, host: &str, now: Instant) -> bool {
        let Some(step) = self.drain_steps.get(host) else {
            return true;
        };
        let Some(record) = state.silos.get(&step.key).filter(|record| record.id == step.id) else {
            return true;
        };
        let settled = matches!(
            view::silo_state(record),
            proto::SiloState::Up | proto::SiloState::Failed | proto::SiloState::Exited
        );
        settled || now.saturating_duration_since(step.started) > DRAIN_STEP_TIMEOUT
    }
}

/// Returns the names of the hosts with at least one placed instance whose desired state is run,
/// in one pass over the instances.
fn hosts_with_instances(state: &ClusterState) -> BTreeSet<&str> {
    state
        .silos
        .values()
        .filter(|record| record.desired == Desired::Run && !record.is_pending())
        .map(|record| record.host.as_str())
        .collect()
}

/// Returns true when a host of `state` may need a move now: it has instances and is draining
/// or down. A cheap check before the placement lock is taken.
fn has_work(state: &ClusterState, sessions: &Sessions, now: Instant) -> bool {
    let occupied = hosts_with_instances(state);
    state.hosts.values().any(|host| {
        occupied.contains(host.name.as_str()) && (host.draining || sessions.liveness().is_down(&host.name, now))
    })
}

/// Moves instances off lost and draining hosts every [`HOST_WATCH_INTERVAL`] while this
/// controller leads, holding `placement` while it plans and writes so no `up` places from the
/// same view of the hosts' load. Runs until the runtime stops.
pub async fn watch_hosts_forever(node: RaftNode, sessions: Sessions, placement: Arc<Mutex<()>>) {
    let mut interval = tokio::time::interval(HOST_WATCH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = HostWatch::default();
    loop {
        interval.tick().await;
        let now = Instant::now();
        let leads = node.raft.metrics().borrow().current_leader == Some(node.id);
        if sessions.liveness().set_leading(leads, now) {
            let ttl_ms = u64::try_from(sessions.liveness().ttl().as_millis()).unwrap_or(u64::MAX);
            tracing::info!(ttl_ms, "leading: every host has one TTL to reconnect before it counts as down");
            watch = HostWatch::default();
        }
        if !leads || !has_work(&*node.state.read().await, &sessions, now) {
            continue;
        }

        let _placement = placement.lock().await;
        let commands = {
            let state = node.state.read().await;
            watch.commands(&state, &sessions, Instant::now())
        };
        for command in commands {
            if let Command::MoveInstances { from, reason, moves, .. } = &command {
                for instance_move in moves {
                    if let InstancePlacement::Host(host) = &instance_move.instance.placement {
                        tracing::info!(silo = %instance_move.name, index = instance_move.instance.index, old_id = %instance_move.replaced_id, new_id = %instance_move.instance.id, %from, to = %host, %reason, "silo instance placed again");
                    }
                }
            }
            if let Err(error) = node.write(command).await {
                tracing::warn!(%error, "moving silo instances off a lost or draining host failed; retrying at the next check");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::state::HostAttributes;

    fn register(state: &mut ClusterState, name: &str) {
        state.apply(&Command::RegisterHost {
            name: name.to_owned(),
            address: "198.51.100.2".to_owned(),
            cpus: 2,
            memory_bytes: 1 << 30,
            attributes: HostAttributes {
                images: vec!["busybox".to_owned()],
                ..Default::default()
            },
        });
    }

    fn spec(name: &str, mode: Option<proto::RestartMode>) -> Vec<u8> {
        proto::SiloSpec {
            name: name.to_owned(),
            restart: mode.map(|mode| proto::RestartPolicy {
                mode: mode.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn put(state: &mut ClusterState, name: &str, mode: Option<proto::RestartMode>, hosts: &[&str]) {
        let instances = hosts
            .iter()
            .zip(0..)
            .map(|(host, index)| InstanceUpdate {
                index,
                id: format!("{name}-{index}"),
                placement: InstancePlacement::Host((*host).to_owned()),
            })
            .collect();
        state.apply(&Command::PutInstances {
            name: name.to_owned(),
            spec: spec(name, mode),
            count: u32::try_from(hosts.len()).unwrap_or(u32::MAX),
            instances,
            rolling: Vec::new(),
        });
    }

    fn cluster() -> ClusterState {
        let mut state = ClusterState::default();
        for host in ["a", "b", "c"] {
            register(&mut state, host);
        }
        state
    }

    fn live(hosts: &[&str]) -> BTreeSet<String> {
        hosts.iter().map(|host| (*host).to_owned()).collect()
    }

    #[test]
    fn restart_never_stays_on_lost_host() {
        let mut state = cluster();
        put(&mut state, "never", None, &["a"]);
        put(&mut state, "explicit-never", Some(proto::RestartMode::Never), &["a"]);
        put(&mut state, "always", Some(proto::RestartMode::Always), &["a"]);
        put(&mut state, "on-failure", Some(proto::RestartMode::OnFailure), &["a"]);
        let moved: Vec<String> = lost_candidates(&state, "a").iter().map(|record| record.name.clone()).collect();
        assert_eq!(moved, ["always", "on-failure"]);
    }

    #[test]
    fn lost_instance_spreads_to_free_host() {
        let mut state = cluster();
        put(&mut state, "web", Some(proto::RestartMode::Always), &["a", "b"]);
        let plan = plan_moves(&state, &live(&["b", "c"]), "a", &lost_candidates(&state, "a"));
        assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
        assert_eq!(plan.moves.len(), 1);
        let instance_move = &plan.moves[0];
        assert_eq!(instance_move.replaced_id, "web-0");
        assert_eq!(instance_move.instance.placement, InstancePlacement::Host("c".to_owned()));
        assert_ne!(instance_move.instance.id, "web-0");

        let (_, changes) = state.apply(&Command::MoveInstances {
            from: "a".to_owned(),
            reason: "host a lost".to_owned(),
            moves: plan.moves.clone(),
            host_lost: true,
        });
        assert_eq!(changes.len(), 1);
        let record = &state.silos["web"];
        assert_eq!(record.host, "c");
        assert_eq!(record.generation, 2);
        assert_eq!(record.status, None);
        let kinds: Vec<&str> = record.events.events().iter().map(|event| event.kind.name()).collect();
        assert!(
            kinds.ends_with(&["host-lost", "placed-again"]),
            "a lost host's instance is placed again: {kinds:?}"
        );
        assert!(lost_candidates(&state, "a").is_empty());
    }

    #[test]
    fn move_is_stale_after_replacement() {
        let mut state = cluster();
        put(&mut state, "web", Some(proto::RestartMode::Always), &["a"]);
        let plan = plan_moves(&state, &live(&["b"]), "a", &lost_candidates(&state, "a"));
        put(&mut state, "web", Some(proto::RestartMode::OnFailure), &["b"]);
        let before = state.clone();
        let (_, changes) = state.apply(&Command::MoveInstances {
            from: "a".to_owned(),
            reason: String::new(),
            moves: plan.moves,
            host_lost: true,
        });
        assert!(changes.is_empty());
        assert_eq!(state, before);
    }

    #[test]
    fn batch_of_moves_spreads_over_hosts() {
        let mut state = cluster();
        put(&mut state, "one", Some(proto::RestartMode::Always), &["a"]);
        put(&mut state, "two", Some(proto::RestartMode::Always), &["a"]);
        let plan = plan_moves(&state, &live(&["b", "c"]), "a", &lost_candidates(&state, "a"));
        let hosts: BTreeSet<String> = plan
            .moves
            .iter()
            .filter_map(|instance_move| match &instance_move.instance.placement {
                InstancePlacement::Host(host) => Some(host.clone()),
                InstancePlacement::Pending { .. } => None,
            })
            .collect();
        assert_eq!(hosts, live(&["b", "c"]));
    }

    #[test]
    fn unplaceable_instance_stays() {
        let mut state = cluster();
        put(&mut state, "web", Some(proto::RestartMode::Always), &["a"]);
        let plan = plan_moves(&state, &live(&["a"]), "a", &lost_candidates(&state, "a"));
        assert!(plan.moves.is_empty());
        assert_eq!(plan.unplaced.len(), 1);
        assert!(plan.unplaced[0].1.contains("no live host"), "{:?}", plan.unplaced);
    }

    #[test]
    fn draining_host_is_infeasible() {
        let mut state = cluster();
        state.apply(&Command::SetDraining {
            name: "b".to_owned(),
            draining: true,
        });
        put(&mut state, "web", None, &["a"]);
        let plan = plan_moves(&state, &live(&["a", "b"]), "a", &drain_candidates(&state, "a"));
        assert!(plan.moves.is_empty());
        assert!(plan.unplaced[0].1.contains("b: draining"), "{:?}", plan.unplaced);

        register(&mut state, "b");
        assert!(state.hosts["b"].draining, "registering again keeps the mark");
        state.apply(&Command::SetDraining {
            name: "b".to_owned(),
            draining: false,
        });
        let plan = plan_moves(&state, &live(&["a", "b"]), "a", &drain_candidates(&state, "a"));
        assert_eq!(plan.moves.len(), 1);
    }

    #[test]
    fn drain_moves_one_at_a_time() {
        let mut state = cluster();
        put(&mut state, "one", None, &["a"]);
        put(&mut state, "two", None, &["a"]);
        state.apply(&Command::SetDraining {
            name: "a".to_owned(),
            draining: true,
        });
        let sessions = Sessions::default();
        for host in ["a", "b", "c"] {
            sessions.open(host);
        }
        let now = Instant::now();
        sessions.liveness().set_leading(true, now);
        let mut watch = HostWatch::default();

        let first = watch.commands(&state, &sessions, now);
        assert_eq!(first.len(), 1, "{first:?}");
        for command in &first {
            state.apply(command);
        }
        assert_eq!(drain_candidates(&state, "a").len(), 1);
        assert!(watch.commands(&state, &sessions, now).is_empty(), "waits for the moved instance");

        let moved_id = state.silos["one"].id.clone();
        state.apply(&Command::ReportStatus {
            host: state.silos["one"].host.clone(),
            silo_id: moved_id,
            status: crate::state::SiloStatus {
                state: proto::SiloState::Up.into(),
                ..Default::default()
            },
        });
        let second = watch.commands(&state, &sessions, now);
        assert_eq!(second.len(), 1, "{second:?}");
    }

    #[test]
    fn lost_host_moves_in_one_command() {
        let mut state = cluster();
        put(&mut state, "web", Some(proto::RestartMode::Always), &["a"]);
        put(&mut state, "api", Some(proto::RestartMode::OnFailure), &["a"]);
        put(&mut state, "job", None, &["a"]);
        let sessions = Sessions::default();
        sessions.open("b");
        sessions.open("c");
        let elected = Instant::now();
        sessions.liveness().set_leading(true, elected);
        let mut watch = HostWatch::default();

        assert!(watch.commands(&state, &sessions, elected).is_empty(), "a new leader gives grace");
        let commands = watch.commands(&state, &sessions, elected + Duration::from_secs(4));
        assert_eq!(commands.len(), 1, "{commands:?}");
        let Command::MoveInstances { from, reason, moves, host_lost } = &commands[0] else {
            panic!("expected MoveInstances, got {:?}", commands[0]);
        };
        assert_eq!(from, "a");
        assert_eq!(reason, "host a lost");
        assert!(*host_lost, "a lost host's moves say so");
        let moved: Vec<&str> = moves.iter().map(|instance_move| instance_move.name.as_str()).collect();
        assert_eq!(moved, ["api", "web"]);
    }

    #[test]
    fn unplaced_host_waits_before_retry() {
        let mut state = cluster();
        put(&mut state, "web", Some(proto::RestartMode::Always), &["a"]);
        let sessions = Sessions::default();
        let elected = Instant::now();
        sessions.liveness().set_leading(true, elected);
        let mut watch = HostWatch::default();

        let down_at = elected + Duration::from_secs(4);
        assert!(watch.commands(&state, &sessions, down_at).is_empty(), "no live host to move to");
        assert_eq!(watch.retry_at.get("a"), Some(&(down_at + UNPLACED_RETRY_INTERVAL)));
        assert_eq!(watch.unplaced_logged.len(), 1);

        sessions.open("b");
        let soon = down_at + UNPLACED_RETRY_INTERVAL / 2;
        assert!(watch.commands(&state, &sessions, soon).is_empty(), "waits for the retry time");
        let later = down_at + UNPLACED_RETRY_INTERVAL;
        assert_eq!(watch.commands(&state, &sessions, later).len(), 1);
    }
}
