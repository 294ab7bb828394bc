//! The applied state that the API reads, with indexes that the state machine keeps up to date
//! row by row. A placement, a new silo id or an agent session's view then costs work for what
//! it looks at, and not a pass over every stored silo on each applied change.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use colex_proto as proto;

use crate::blobs::StoredContent;
use crate::id_hash::IdMap;
use crate::scheduler::{Reservation, Reserved};
use crate::security_state::SecurityState;
use crate::state::{ClusterNetwork, ClusterState, Desired, HostRecord, SiloRecord};

/// One instance a host is assigned, as far as its agent can tell instances apart. A silo id
/// is never reused with another spec, so the same id and generation mean the same assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignedInstance {
    /// Key of the record in the state.
    pub key: String,
    pub id: String,
    pub generation: u64,
}

/// A [`ClusterState`] and its indexes. Readers see the state through `Deref`, and every change
/// goes through the setters below, which keep the indexes in step.
#[derive(Debug)]
pub struct AppliedState {
    state: ClusterState,
    indexes: Indexes,
    /// Number that tells this state's journal positions apart from those of a state it
    /// replaced.
    epoch: u64,
}

/// Counter that hands out [`AppliedState::epoch`].
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// Number of journal entries kept per host. A session further behind gets the host's whole
/// set.
const JOURNAL_ENTRIES: usize = 4096;

/// A position in the journal of one host's assignments ([`AppliedState::host_version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostVersion {
    epoch: u64,
    version: u64,
}

/// One change to a host's assignments: the instance under `key` was added or replaced, or
/// `removed_id` left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostChange {
    pub key: String,
    /// Id of the instance that left the host under this key.
    pub removed_id: Option<String>,
}

#[derive(Debug, Default)]
struct Indexes {
    /// Instances that are placed and meant to run, by host name.
    placed: IdMap<String, HostPlaced>,
    /// Key of the record of each silo id. Ids are unique: every instance gets a new one.
    ids: IdMap<String, String>,
    /// Keys of the placed instances that their agents report UP: the only ones that can have
    /// DNS names.
    up: BTreeSet<String>,
}

/// Returns true when the agent reports the instance UP.
fn is_up(record: &SiloRecord) -> bool {
    record
        .status
        .as_ref()
        .is_some_and(|status| status.state == proto::SiloState::Up as i32)
}

/// Returns true when `new` changes nothing in the indexes but UP: the same instance on the
/// same host, with the same desired state.
fn same_placement(old: &SiloRecord, new: &SiloRecord) -> bool {
    old.id == new.id
        && old.generation == new.generation
        && old.host == new.host
        && old.desired == new.desired
        && old.spec.len() == new.spec.len()
}

/// The instances assigned to one host.
#[derive(Debug, Default)]
struct HostPlaced {
    /// Instances by record key.
    instances: BTreeMap<String, PlacedInstance>,
    /// Sum of the instances' reservations, with `same_silo` always 0.
    reserved: Reserved,
    /// The instances as a list in key order, built on first use after a change.
    listed: OnceLock<Arc<Vec<AssignedInstance>>>,
    /// Number of changes to the host's instances so far.
    version: u64,
    /// The last [`JOURNAL_ENTRIES`] changes, each with the version it led to.
    journal: VecDeque<(u64, HostChange)>,
}

#[derive(Debug, Clone)]
struct PlacedInstance {
    id: String,
    generation: u64,
    /// Length of the spec the reservation was decoded from, a check beside the id.
    spec_len: usize,
    reservation: Reservation,
}

impl AppliedState {
    /// Indexes `state` with one pass over its silos.
    pub fn new(state: ClusterState) -> AppliedState {
        let mut indexes = Indexes::default();
        for (key, record) in &state.silos {
            indexes.add(key, record, None);
        }
        AppliedState {
            state,
            indexes,
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Replaces the whole state, as a snapshot install does.
    pub fn replace(&mut self, state: ClusterState) {
        *self = AppliedState::new(state);
    }

    /// Stores `record` under `key`, or removes the row when `None`.
    pub fn set_silo(&mut self, key: &str, record: Option<SiloRecord>) {
        let old = self.state.silos.get(key);
        let same_placement = match (old, &record) {
            (Some(old), Some(new)) => same_placement(old, new),
            _ => false,
        };
        if same_placement {
            // A status report: only whether the instance is UP can change.
            if let Some(record) = &record {
                self.indexes.set_up(key, record);
            }
        } else {
            let removed = match old {
                Some(old) => self.indexes.remove(key, old),
                None => None,
            };
            if let Some(record) = &record {
                self.indexes.add(key, record, removed);
            }
        }
        match record {
            Some(record) => {
                self.state.silos.insert(key.to_owned(), record);
            }
            None => {
                self.state.silos.remove(key);
            }
        }
    }

    /// Stores or removes one host row.
    pub fn set_host(&mut self, name: &str, record: Option<HostRecord>) {
        match record {
            Some(record) => self.state.hosts.insert(name.to_owned(), record),
            None => self.state.hosts.remove(name),
        };
    }

    /// Stores or removes one file content row.
    pub fn set_file_content(&mut self, hash: &str, content: Option<StoredContent>) {
        match content {
            Some(content) => self.state.file_contents.insert(hash.to_owned(), content),
            None => self.state.file_contents.remove(hash),
        };
    }

    /// Sets the cluster network.
    pub fn set_network(&mut self, network: Option<ClusterNetwork>) {
        self.state.network = network;
    }

    /// Sets the security state.
    pub fn set_security(&mut self, security: SecurityState) {
        self.state.security = security;
    }

    /// Returns what the placed instances on `host` reserve.
    pub fn reserved_on(&self, host: &str) -> Reserved {
        self.indexes
            .placed
            .get(host)
            .map(|placed| placed.reserved)
            .unwrap_or_default()
    }

    /// Returns true when a stored record carries silo id `id`.
    pub fn has_id(&self, id: &str) -> bool {
        self.indexes.ids.contains_key(id)
    }

    /// Finds the silo record with instance id `id`, as [`ClusterState::silo_by_id`] does
    /// without its pass over every silo.
    pub fn silo_by_id(&self, id: &str) -> Option<&SiloRecord> {
        let key = self.indexes.ids.get(id)?;
        self.state.silos.get(key).filter(|record| record.id == id)
    }

    /// Returns the instances assigned to `host` in key order, an empty list when none.
    pub fn assigned_to(&self, host: &str) -> Arc<Vec<AssignedInstance>> {
        self.indexes
            .placed
            .get(host)
            .map(HostPlaced::listed)
            .unwrap_or_default()
    }

    /// Returns the position of `host`'s assignments in their journal.
    pub fn host_version(&self, host: &str) -> HostVersion {
        HostVersion {
            epoch: self.epoch,
            version: self.indexes.placed.get(host).map_or(0, |placed| placed.version),
        }
    }

    /// Returns the changes to `host`'s assignments after `since`, oldest first, or `None` when
    /// the journal no longer reaches back that far or `since` came from a replaced state.
    pub fn host_changes_since(&self, host: &str, since: HostVersion) -> Option<Vec<&HostChange>> {
        if since.epoch != self.epoch {
            return None;
        }
        let Some(placed) = self.indexes.placed.get(host) else {
            return (since.version == 0).then(Vec::new);
        };
        let first_kept = placed.journal.front().map_or(placed.version + 1, |(version, _)| *version);
        if since.version > placed.version || since.version + 1 < first_kept {
            return None;
        }
        let changes = placed
            .journal
            .iter()
            .filter(|(version, _)| *version > since.version)
            .map(|(_, change)| change)
            .collect();
        Some(changes)
    }

    /// Returns the placed instances that their agents report UP, in key order.
    pub fn up_instances(&self) -> impl Iterator<Item = &SiloRecord> + '_ {
        self.indexes
            .up
            .iter()
            .filter_map(|key| self.state.silos.get(key))
    }
}

impl Default for AppliedState {
    fn default() -> AppliedState {
        AppliedState::new(ClusterState::default())
    }
}

impl Deref for AppliedState {
    type Target = ClusterState;

    fn deref(&self) -> &ClusterState {
        &self.state
    }
}

/// Compares the states only, because the indexes follow from them.
impl PartialEq for AppliedState {
    fn eq(&self, other: &AppliedState) -> bool {
        self.state == other.state
    }
}

impl Indexes {
    /// Adds `record`, stored under `key`. `removed`, the entry of the record it replaces,
    /// lends its reservation when it names the same spec, which saves decoding it again.
    fn add(&mut self, key: &str, record: &SiloRecord, removed: Option<PlacedInstance>) {
        self.ids.insert(record.id.clone(), key.to_owned());
        if record.desired != Desired::Run || record.is_pending() {
            return;
        }
        let reservation = match removed {
            Some(removed) if removed.id == record.id && removed.spec_len == record.spec.len() => removed.reservation,
            _ => Reservation::of_record(record),
        };
        let host = self.placed.entry(record.host.clone()).or_default();
        host.reserved.cpu_percent += reservation.cpu_percent;
        host.reserved.memory_bytes += reservation.memory_bytes;
        host.reserved.silos += 1;
        host.instances.insert(
            key.to_owned(),
            PlacedInstance {
                id: record.id.clone(),
                generation: record.generation,
                spec_len: record.spec.len(),
                reservation,
            },
        );
        host.listed = OnceLock::new();
        host.record(HostChange {
            key: key.to_owned(),
            removed_id: None,
        });
        if is_up(record) {
            self.up.insert(key.to_owned());
        }
    }

    /// Updates whether the placed instance under `key` counts as UP.
    fn set_up(&mut self, key: &str, record: &SiloRecord) {
        let placed = record.desired == Desired::Run && !record.is_pending();
        if placed && is_up(record) {
            self.up.insert(key.to_owned());
        } else {
            self.up.remove(key);
        }
    }

    /// Removes `old`, stored under `key`, and returns its entry when it was placed.
    fn remove(&mut self, key: &str, old: &SiloRecord) -> Option<PlacedInstance> {
        // Leaves the entry alone when another key carries the id now.
        if self.ids.get(old.id.as_str()).is_some_and(|indexed| indexed == key) {
            self.ids.remove(old.id.as_str());
        }
        self.up.remove(key);
        let host = self.placed.get_mut(old.host.as_str())?;
        let instance = host.instances.remove(key)?;
        // The sums only ever hold what `add` put in, so they cannot go below zero.
        host.reserved.cpu_percent -= instance.reservation.cpu_percent;
        host.reserved.memory_bytes -= instance.reservation.memory_bytes;
        host.reserved.silos -= 1;
        host.listed = OnceLock::new();
        host.record(HostChange {
            key: key.to_owned(),
            removed_id: Some(instance.id.clone()),
        });
        Some(instance)
    }
}

impl HostPlaced {
    fn record(&mut self, change: HostChange) {
        self.version += 1;
        if self.journal.len() == JOURNAL_ENTRIES {
            self.journal.pop_front();
        }
        self.journal.push_back((self.version, change));
    }

    fn listed(&self) -> Arc<Vec<AssignedInstance>> {
        let listed = self.listed.get_or_init(|| {
            let instances = self
                .instances
                .iter()
                .map(|(key, instance)| AssignedInstance {
                    key: key.clone(),
                    id: instance.id.clone(),
                    generation: instance.generation,
                })
                .collect();
            Arc::new(instances)
        });
        Arc::clone(listed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;
    use crate::scheduler::reserved_by_host;
    use crate::state::{instance_key, SiloStatus};

    fn record(name: &str, index: u32, id: &str, host: &str, cpu_percent: u32, desired: Desired, up: bool) -> SiloRecord {
        let spec = proto::SiloSpec {
            name: name.to_owned(),
            resources: Some(proto::Resources {
                cpu_percent,
                memory_bytes: u64::from(cpu_percent) << 20,
            }),
            ..Default::default()
        };
        SiloRecord {
            name: name.to_owned(),
            index,
            id: id.to_owned(),
            generation: 1,
            spec: spec.encode_to_vec(),
            host: host.to_owned(),
            desired,
            status: up.then(|| SiloStatus {
                state: proto::SiloState::Up as i32,
                interfaces: Vec::new(),
                exit_code: None,
                message: String::new(),
                restarts: 0,
            }),
            pending_reason: host.is_empty().then(|| "no live host".to_owned()),
            next_spec: None,
            events: Default::default(),
        }
    }

    /// Checks every index of `applied` against one built from scratch and against the pass
    /// over all silos that the indexes replace.
    fn assert_indexes_match(applied: &AppliedState) {
        let fresh = AppliedState::new((**applied).clone());
        let walked = reserved_by_host(applied, &BTreeSet::new());
        for host in ["a", "b", "c", ""] {
            let expected = walked.get(host).copied().unwrap_or_default();
            assert_eq!(applied.reserved_on(host), expected, "sums on host {host:?}");
            assert_eq!(fresh.reserved_on(host), expected, "fresh sums on host {host:?}");
        }
        for host in ["a", "b", "c"] {
            assert_eq!(applied.assigned_to(host), fresh.assigned_to(host), "instances of host {host}");
        }
        let up = |state: &AppliedState| -> Vec<String> { state.up_instances().map(SiloRecord::key).collect() };
        assert_eq!(up(applied), up(&fresh));
        for record in applied.silos.values() {
            let found = applied.silo_by_id(&record.id).map(SiloRecord::key);
            assert_eq!(found, Some(record.key()), "id {}", record.id);
        }
        assert_eq!(applied.indexes.ids.len(), applied.silos.len());
    }

    #[test]
    fn indexes_follow_every_kind_of_row_change() {
        let mut applied = AppliedState::new(ClusterState::default());
        let mut put = |record: SiloRecord| {
            let key = record.key();
            applied.set_silo(&key, Some(record));
            assert_indexes_match(&applied);
        };
        put(record("web", 0, "00000001", "a", 20, Desired::Run, false));
        put(record("web", 1, "00000002", "b", 20, Desired::Run, false));
        put(record("db", 0, "00000003", "a", 50, Desired::Run, true));
        put(record("job", 0, "00000004", "", 30, Desired::Run, false));
        // Reported UP, then moved to another host with a new id, then placed from pending.
        put(record("web", 0, "00000001", "a", 20, Desired::Run, true));
        put(record("web", 0, "00000005", "c", 20, Desired::Run, false));
        put(record("job", 0, "00000004", "b", 30, Desired::Run, false));
        // Stopping frees the capacity while the record stays.
        put(record("db", 0, "00000003", "a", 50, Desired::Stop, true));

        applied.set_silo(&instance_key("db", 0), None);
        applied.set_silo(&instance_key("missing", 0), None);
        assert_indexes_match(&applied);
        assert_eq!(applied.reserved_on("a").silos, 0);
        assert_eq!(applied.reserved_on("b").cpu_percent, 50);
        assert!(applied.silo_by_id("00000003").is_none());
        assert!(!applied.has_id("00000001"), "the replaced id is gone");
        assert!(applied.has_id("00000005"));

        applied.replace(ClusterState::default());
        assert_eq!(applied.reserved_on("b"), Reserved::default());
        assert!(applied.assigned_to("b").is_empty());
    }

    #[test]
    fn unchanged_host_keeps_its_list() {
        let mut applied = AppliedState::new(ClusterState::default());
        applied.set_silo("web", Some(record("web", 0, "00000001", "a", 0, Desired::Run, false)));
        applied.set_silo("db", Some(record("db", 0, "00000002", "b", 0, Desired::Run, false)));
        let (before_a, before_b) = (applied.assigned_to("a"), applied.assigned_to("b"));

        applied.set_silo("job", Some(record("job", 0, "00000003", "b", 0, Desired::Run, false)));

        assert!(Arc::ptr_eq(&before_a, &applied.assigned_to("a")), "host a did not change");
        assert!(!Arc::ptr_eq(&before_b, &applied.assigned_to("b")));
        let keys: Vec<String> = applied.assigned_to("b").iter().map(|instance| instance.key.clone()).collect();
        assert_eq!(keys, ["db", "job"]);
    }

    #[test]
    fn journal_lists_changes_since_a_version() {
        let mut applied = AppliedState::new(ClusterState::default());
        applied.set_silo("web", Some(record("web", 0, "00000001", "a", 0, Desired::Run, false)));
        let seen = applied.host_version("a");

        // A status report changes no assignment, a replacement and a stop do.
        applied.set_silo("web", Some(record("web", 0, "00000001", "a", 0, Desired::Run, true)));
        assert_eq!(applied.host_version("a"), seen, "a status report is no change");
        applied.set_silo("db", Some(record("db", 0, "00000002", "a", 0, Desired::Run, false)));
        applied.set_silo("web", Some(record("web", 0, "00000003", "a", 0, Desired::Run, false)));
        applied.set_silo("db", Some(record("db", 0, "00000002", "a", 0, Desired::Stop, false)));

        let changes = applied.host_changes_since("a", seen).expect("journal reaches back");
        let listed: Vec<(&str, Option<&str>)> = changes
            .iter()
            .map(|change| (change.key.as_str(), change.removed_id.as_deref()))
            .collect();
        assert_eq!(
            listed,
            [("db", None), ("web", Some("00000001")), ("web", None), ("db", Some("00000002"))]
        );
        let now = applied.host_version("a");
        assert_eq!(applied.host_changes_since("a", now).map(|changes| changes.len()), Some(0));
        assert_eq!(applied.host_changes_since("c", applied.host_version("c")).map(|changes| changes.len()), Some(0));

        let replaced = AppliedState::new((*applied).clone());
        assert!(replaced.host_changes_since("a", now).is_none(), "another state's position");
    }

    #[test]
    fn journal_too_short_gives_none() {
        let mut applied = AppliedState::new(ClusterState::default());
        let start = applied.host_version("a");
        for index in 0..=JOURNAL_ENTRIES as u32 {
            let key = instance_key("web", index);
            applied.set_silo(&key, Some(record("web", index, &format!("{index:08x}"), "a", 0, Desired::Run, false)));
        }
        assert!(applied.host_changes_since("a", start).is_none());
    }
}
