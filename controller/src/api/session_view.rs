//! The messages that agent sessions send, derived from the applied state once per applied index and
//! shared by every session, so that a change costs one pass over the state and not one per host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use colex_proto as proto;
use tokio::sync::Mutex;

use crate::id_hash::IdMap;
use crate::applied::AppliedState;
use crate::names::silo_names_of;
use crate::raft::RaftNode;
use crate::state::{ClusterState, Desired, SiloRecord};
use crate::usage::UsageStore;
use crate::view;

pub use crate::applied::{AssignedInstance, HostChange};

/// The applied state as the sessions see it.
#[derive(Debug)]
pub struct SessionView {
    /// Applied index of the state this view was built from, or an earlier one.
    applied: u64,
    /// When the view was built: its silo names carry the network counters of that moment.
    built_at: Instant,
    /// DNS names of the running instances, the same for every host.
    pub names: Arc<proto::Names>,
    /// Every host with a WireGuard key, in name order.
    peers: Arc<Vec<proto::Peer>>,
}

impl SessionView {
    /// Builds the view of `state`. `previous` lends its parts that did not change, so sessions
    /// can tell an unchanged part by pointer. Each session reads its host's assignments from
    /// the state's journal itself ([`changes_since`]).
    fn build(state: &AppliedState, usage: &UsageStore, applied: u64, previous: Option<&SessionView>) -> SessionView {
        let built_at = Instant::now();
        let names = silo_names_of(state.up_instances(), usage, built_at);
        let names = match previous {
            Some(previous) if *previous.names == names => Arc::clone(&previous.names),
            _ => Arc::new(names),
        };
        let peers = all_mesh_peers(state);
        let peers = match previous {
            Some(previous) if *previous.peers == peers => Arc::clone(&previous.peers),
            _ => Arc::new(peers),
        };
        SessionView {
            applied,
            built_at,
            names,
            peers,
        }
    }

    /// Returns every host with a WireGuard key.
    pub fn peers(&self) -> &Arc<Vec<proto::Peer>> {
        &self.peers
    }
}

/// Returns true when the agent of the record's host must run it.
fn is_assigned(record: &SiloRecord) -> bool {
    record.desired == Desired::Run && !record.is_pending()
}

/// The latest [`SessionView`], shared by the sessions of one controller.
#[derive(Debug, Clone, Default)]
pub struct SessionViews {
    latest: Arc<Mutex<Option<Arc<SessionView>>>>,
}

impl SessionViews {
    /// Returns a view of a state at least as new as applied index `applied`, built less than
    /// `max_age` ago, so the silo names carry recent network counters from `usage`. The first
    /// session that requests a newer view builds it while the others wait for it.
    pub async fn at_least(&self, node: &RaftNode, usage: &UsageStore, applied: u64, max_age: Duration) -> Arc<SessionView> {
        let mut latest = self.latest.lock().await;
        if let Some(view) = latest
            .as_ref()
            .filter(|view| view.applied >= applied && view.built_at.elapsed() < max_age)
        {
            return Arc::clone(view);
        }
        let state = node.state.read().await;
        // The state is updated before the applied index is published, so the index read while
        // the state is locked is at most the state's own.
        let built_at = *node.applied.borrow();
        let view = Arc::new(SessionView::build(&state, usage, built_at.max(applied), latest.as_deref()));
        *latest = Some(Arc::clone(&view));
        view
    }
}

/// Assignments a session sent last, by silo id, so that the next set reuses them instead of
/// reading and decoding their records again.
pub type SentAssignments = IdMap<String, Arc<proto::Assignment>>;

/// Builds the assignments of `host` for the instances `assigned`: from `sent` where it has the
/// same id and generation, otherwise from the record of `state` under the instance's key. A
/// record that left the host or was replaced since the view was built is left out, and one that
/// came is added by the next view, which the same applied change brings. Replaces `sent` with
/// the new set.
pub fn assignments(
    state: &ClusterState,
    host: &str,
    assigned: &[AssignedInstance],
    sent: &mut SentAssignments,
) -> proto::Assignments {
    let mut next = SentAssignments::with_capacity_and_hasher(assigned.len(), Default::default());
    let mut silos = Vec::with_capacity(assigned.len());
    for instance in assigned {
        let reused = sent
            .get(&instance.id)
            .filter(|assignment| assignment.generation == instance.generation)
            .cloned();
        let assignment = match reused {
            Some(assignment) => assignment,
            None => {
                let record = state
                    .silos
                    .get(&instance.key)
                    .filter(|record| record.host == host && record.id == instance.id && is_assigned(record));
                let Some(record) = record else {
                    continue;
                };
                match view::assignments_of(std::iter::once(record)).silos.pop() {
                    Some(assignment) => Arc::new(assignment),
                    None => continue,
                }
            }
        };
        silos.push((*assignment).clone());
        next.insert(instance.id.clone(), assignment);
    }
    *sent = next;
    proto::Assignments { silos }
}

/// Returns what changed between the assignments in `sent` and the instances `assigned` of
/// `host`, and updates `sent` to match. The changes are the instances whose id and generation
/// `sent` lacks, built from the records of `state` as [`assignments`] does, and the ids that
/// left. Only the
/// new instances are copied, so a change costs a pass over the host's ids and not a copy of
/// every spec. Returns `None` when nothing changed.
pub fn assignment_changes(
    state: &ClusterState,
    host: &str,
    assigned: &[AssignedInstance],
    sent: &mut SentAssignments,
) -> Option<proto::AssignmentChanges> {
    let mut upserted = Vec::new();
    for instance in assigned {
        let known = sent
            .get(&instance.id)
            .is_some_and(|assignment| assignment.generation == instance.generation);
        if known {
            continue;
        }
        let record = state
            .silos
            .get(&instance.key)
            .filter(|record| record.host == host && record.id == instance.id && is_assigned(record));
        let Some(assignment) = record.and_then(|record| view::assignments_of(std::iter::once(record)).silos.pop()) else {
            continue;
        };
        upserted.push(assignment.clone());
        sent.insert(instance.id.clone(), Arc::new(assignment));
    }

    let assigned_ids: std::collections::HashSet<&str> = assigned.iter().map(|instance| instance.id.as_str()).collect();
    let mut removed_silo_ids = Vec::new();
    sent.retain(|id, _| {
        let keep = assigned_ids.contains(id.as_str());
        if !keep {
            removed_silo_ids.push(id.clone());
        }
        keep
    });

    if upserted.is_empty() && removed_silo_ids.is_empty() {
        return None;
    }
    Some(proto::AssignmentChanges {
        upserted,
        removed_silo_ids,
    })
}

/// Returns the assignment changes of `host` that `changes`, its journal entries since the
/// last message, make to what `sent` holds, and updates `sent` to match. Costs work for the
/// changed keys only. Returns `None` when nothing the agent receives changed.
pub fn changes_since(
    state: &ClusterState,
    host: &str,
    changes: &[&HostChange],
    sent: &mut SentAssignments,
) -> Option<proto::AssignmentChanges> {
    let mut upserted = Vec::new();
    let mut removed_silo_ids = Vec::new();
    let mut seen_keys = std::collections::HashSet::new();
    for change in changes {
        let current = state
            .silos
            .get(&change.key)
            .filter(|record| record.host == host && is_assigned(record));
        if let Some(removed_id) = &change.removed_id {
            let still_here = current.is_some_and(|record| record.id == *removed_id);
            if !still_here && sent.remove(removed_id).is_some() {
                removed_silo_ids.push(removed_id.clone());
            }
        }
        // Each key is looked up once, because its later entries would find the same record.
        if !seen_keys.insert(change.key.as_str()) {
            continue;
        }
        let Some(record) = current else {
            continue;
        };
        let known = sent
            .get(&record.id)
            .is_some_and(|assignment| assignment.generation == record.generation);
        if known {
            continue;
        }
        let Some(assignment) = view::assignments_of(std::iter::once(record)).silos.pop() else {
            continue;
        };
        upserted.push(assignment.clone());
        sent.insert(record.id.clone(), Arc::new(assignment));
    }

    if upserted.is_empty() && removed_silo_ids.is_empty() {
        return None;
    }
    Some(proto::AssignmentChanges {
        upserted,
        removed_silo_ids,
    })
}

/// Returns the mesh peer entry of every host that reported a WireGuard key, in name order.
/// Hosts that are down stay peers, so their silos are reachable again as soon as they return.
pub fn all_mesh_peers(state: &ClusterState) -> Vec<proto::Peer> {
    state
        .hosts
        .values()
        .filter(|record| !record.attributes.wireguard_public_key.is_empty())
        .map(|record| proto::Peer {
            host: record.name.clone(),
            public_key: record.attributes.wireguard_public_key.clone(),
            endpoint: record.attributes.wireguard_endpoint.clone(),
            subnet: record.subnet_cidr(),
        })
        .collect()
}

/// Returns the mesh peers of `host`: every entry of `all` but its own.
pub fn peers_of(all: &[proto::Peer], host: &str) -> proto::Peers {
    let peers = all.iter().filter(|peer| peer.host != host).cloned().collect();
    proto::Peers { peers }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::state::{Command, HostAttributes, InstancePlacement, InstanceUpdate};

    fn register(state: &mut ClusterState, name: &str) {
        state.apply(&Command::RegisterHost {
            name: name.to_owned(),
            address: "198.51.100.3".to_owned(),
            cpus: 1,
            memory_bytes: 1 << 30,
            attributes: HostAttributes::default(),
        });
    }

    fn put(state: &mut ClusterState, name: &str, hosts: &[&str]) {
        let spec = proto::SiloSpec {
            name: name.to_owned(),
            ..Default::default()
        };
        state.apply(&Command::PutInstances {
            name: name.to_owned(),
            spec: spec.encode_to_vec(),
            count: u32::try_from(hosts.len()).expect("few instances"),
            instances: hosts
                .iter()
                .zip(0..)
                .map(|(host, index)| InstanceUpdate {
                    index,
                    id: format!("{:08x}", name.len() * 100 + usize::try_from(index).expect("small index")),
                    placement: InstancePlacement::Host((*host).to_owned()),
                })
                .collect(),
            rolling: Vec::new(),
        });
    }

    #[test]
    fn assignments_match_a_scan_of_the_state() {
        let mut state = ClusterState::default();
        register(&mut state, "a");
        register(&mut state, "b");
        put(&mut state, "web", &["a", "b", "a"]);
        put(&mut state, "db", &["b"]);
        let applied = AppliedState::new(state.clone());
        for host in ["a", "b", "c"] {
            let shared = assignments(&state, host, &applied.assigned_to(host), &mut SentAssignments::default());
            assert_eq!(shared, view::assignments(&state, host), "host {host}");
        }
        assert_eq!(applied.assigned_to("a").len(), 2);
        assert!(applied.assigned_to("c").is_empty());
    }

    #[test]
    fn sent_assignments_are_reused() {
        let mut state = ClusterState::default();
        register(&mut state, "a");
        put(&mut state, "web", &["a"]);
        let mut sent = SentAssignments::default();
        let first = assignments(&state, "a", &AppliedState::new(state.clone()).assigned_to("a"), &mut sent);
        assert_eq!(first.silos.len(), 1);
        let kept = Arc::clone(&sent[&first.silos[0].silo_id]);

        put(&mut state, "db", &["a"]);
        let second = assignments(&state, "a", &AppliedState::new(state.clone()).assigned_to("a"), &mut sent);
        assert_eq!(second, view::assignments(&state, "a"));
        assert!(Arc::ptr_eq(&kept, &sent[&first.silos[0].silo_id]), "web was not decoded again");
        assert_eq!(sent.len(), 2);
    }

    #[test]
    fn changes_rebuild_the_full_set() {
        let by_id = |silos: Vec<proto::Assignment>| -> std::collections::BTreeMap<String, proto::Assignment> {
            silos.into_iter().map(|assignment| (assignment.silo_id.clone(), assignment)).collect()
        };
        let mut state = ClusterState::default();
        register(&mut state, "a");
        put(&mut state, "web", &["a"]);
        put(&mut state, "db", &["a"]);
        let first = AppliedState::new(state.clone()).assigned_to("a");
        let mut sent = SentAssignments::default();
        let mut agent = by_id(assignments(&state, "a", &first, &mut sent).silos);
        assert_eq!(agent.len(), 2);
        assert!(assignment_changes(&state, "a", &first, &mut sent).is_none());

        // One silo comes and one goes: the changes carry only those two.
        put(&mut state, "cache", &["a"]);
        state.apply(&Command::StopSilo { name: "web".to_owned() });
        let second = AppliedState::new(state.clone()).assigned_to("a");
        let changes = assignment_changes(&state, "a", &second, &mut sent).expect("a change");
        assert_eq!(changes.upserted.len(), 1);
        assert_eq!(changes.removed_silo_ids.len(), 1);
        for id in &changes.removed_silo_ids {
            agent.remove(id);
        }
        agent.extend(by_id(changes.upserted));
        assert_eq!(agent, by_id(view::assignments(&state, "a").silos));
        assert_eq!(sent.len(), 2);
    }

    #[test]
    fn unchanged_parts_keep_their_pointer() {
        let mut state = ClusterState::default();
        register(&mut state, "a");
        register(&mut state, "b");
        put(&mut state, "web", &["a"]);
        let mut applied = AppliedState::new(state.clone());
        let first = SessionView::build(&applied, &UsageStore::default(), 1, None);
        put(&mut state, "db", &["b"]);
        applied.set_silo("db", state.silos.get("db").cloned());
        let second = SessionView::build(&applied, &UsageStore::default(), 2, Some(&first));
        assert!(Arc::ptr_eq(&first.names, &second.names));
        assert!(Arc::ptr_eq(first.peers(), second.peers()));
    }

    #[test]
    fn moved_instance_leaves_the_old_host() {
        let mut state = ClusterState::default();
        register(&mut state, "a");
        register(&mut state, "b");
        put(&mut state, "web", &["a"]);
        let listed = AppliedState::new(state.clone()).assigned_to("a");
        // A newer command moves instance 0 to host b under the same key before host a's
        // session builds its assignments from the older list.
        put(&mut state, "web", &["b"]);
        assert!(assignments(&state, "a", &listed, &mut SentAssignments::default()).silos.is_empty());
    }

    /// Copies every row of `state` into `applied`, as the state machine publishes changed rows.
    fn publish(state: &ClusterState, applied: &mut AppliedState) {
        let keys: std::collections::BTreeSet<String> = state.silos.keys().chain(applied.silos.keys()).cloned().collect();
        for key in keys {
            applied.set_silo(&key, state.silos.get(&key).cloned());
        }
    }

    #[test]
    fn journal_changes_match_the_full_set() {
        let by_id = |silos: Vec<proto::Assignment>| -> std::collections::BTreeMap<String, proto::Assignment> {
            silos.into_iter().map(|assignment| (assignment.silo_id.clone(), assignment)).collect()
        };
        let mut state = ClusterState::default();
        register(&mut state, "a");
        register(&mut state, "b");
        put(&mut state, "web", &["a", "a"]);
        put(&mut state, "db", &["a"]);
        let mut applied = AppliedState::new(state.clone());
        let mut sent = SentAssignments::default();
        let mut agent = by_id(assignments(&state, "a", &applied.assigned_to("a"), &mut sent).silos);
        let seen = applied.host_version("a");

        // One silo comes, one stops, and one instance moves to host b and back under a new id.
        put(&mut state, "cache", &["a"]);
        state.apply(&Command::StopSilo { name: "db".to_owned() });
        put(&mut state, "web", &["b", "a"]);
        publish(&state, &mut applied);
        put(&mut state, "web", &["a", "a"]);
        publish(&state, &mut applied);

        let journal = applied.host_changes_since("a", seen).expect("journal reaches back");
        let changes = changes_since(&state, "a", &journal, &mut sent).expect("a change");
        for id in &changes.removed_silo_ids {
            agent.remove(id);
        }
        agent.extend(by_id(changes.upserted));
        assert_eq!(agent, by_id(view::assignments(&state, "a").silos));
        assert_eq!(sent.len(), agent.len());

        let now = applied.host_version("a");
        let journal = applied.host_changes_since("a", now).expect("journal reaches back");
        assert!(changes_since(&state, "a", &journal, &mut sent).is_none(), "nothing new");
    }
}
