//! The applied state that the API reads, with indexes that the state machine keeps up to date
//! row by row. A placement, a new silo id or an agent session's view then costs work for what
//! it looks at, and not a pass over every stored silo on each applied change.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use colex_proto as proto;

use crate::id_hash::IdMap;
use crate::scheduler::{Reservation, Reserved};
use crate::security_state::SecurityState;
use crate::blobs::StoredContent;
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
#[derive(Debug, Default)]
pub struct AppliedState {
    state: ClusterState,
    indexes: Indexes,
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

/// The instances assigned to one host.
#[derive(Debug, Default)]
struct HostPlaced {
    /// Instances by record key.
    instances: BTreeMap<String, PlacedInstance>,
    /// Sum of the instances' reservations. `same_silo` stays 0.
    reserved: Reserved,
    /// The instances as a list in key order, built on first use after a change. A host whose
    /// instances did not change hands out the same list, so a session can tell by pointer.
    listed: OnceLock<Arc<Vec<AssignedInstance>>>,
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
        AppliedState { state, indexes }
    }

    /// Replaces the whole state, as a snapshot install does.
    pub fn replace(&mut self, state: ClusterState) {
        *self = AppliedState::new(state);
    }

    /// Stores `record` under `key`, or removes the row when `None`.
    pub fn set_silo(&mut self, key: &str, record: Option<SiloRecord>) {
        let removed = match self.state.silos.get(key) {
            Some(old) => self.indexes.remove(key, old),
            None => None,
        };
        match record {
            Some(record) => {
                self.indexes.add(key, &record, removed);
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

    pub fn set_network(&mut self, network: Option<ClusterNetwork>) {
        self.state.network = network;
    }

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

    /// Returns every host with assigned instances and the list of them in key order. A host
    /// whose instances did not change since the last call gives the same list.
    pub fn assigned(&self) -> impl Iterator<Item = (&str, Arc<Vec<AssignedInstance>>)> + '_ {
        self.indexes
            .placed
            .iter()
            .map(|(host, placed)| (host.as_str(), placed.listed()))
    }

    /// Returns the placed instances that their agents report UP, in key order.
    pub fn up_instances(&self) -> impl Iterator<Item = &SiloRecord> + '_ {
        self.indexes
            .up
            .iter()
            .filter_map(|key| self.state.silos.get(key))
    }
}

impl Deref for AppliedState {
    type Target = ClusterState;

    fn deref(&self) -> &ClusterState {
        &self.state
    }
}

/// Equal when the states are: the indexes follow from them.
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
        let up = record
            .status
            .as_ref()
            .is_some_and(|status| status.state == proto::SiloState::Up as i32);
        if up {
            self.up.insert(key.to_owned());
        }
    }

    /// Removes `old`, stored under `key`, and returns its entry when it was placed.
    fn remove(&mut self, key: &str, old: &SiloRecord) -> Option<PlacedInstance> {
        // A later record that reused the id keeps its entry.
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
        if host.instances.is_empty() {
            self.placed.remove(old.host.as_str());
        }
        Some(instance)
    }
}

impl HostPlaced {
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
        let lists = |state: &AppliedState| -> BTreeMap<String, Vec<AssignedInstance>> {
            state
                .assigned()
                .map(|(host, instances)| (host.to_owned(), (*instances).clone()))
                .collect()
        };
        assert_eq!(lists(applied), lists(&fresh));
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
        assert_eq!(applied.assigned().count(), 0);
    }

    #[test]
    fn unchanged_host_keeps_its_list() {
        let mut applied = AppliedState::new(ClusterState::default());
        applied.set_silo("web", Some(record("web", 0, "00000001", "a", 0, Desired::Run, false)));
        applied.set_silo("db", Some(record("db", 0, "00000002", "b", 0, Desired::Run, false)));
        let before: BTreeMap<String, Arc<Vec<AssignedInstance>>> =
            applied.assigned().map(|(host, list)| (host.to_owned(), list)).collect();

        applied.set_silo("job", Some(record("job", 0, "00000003", "b", 0, Desired::Run, false)));
        let after: BTreeMap<String, Arc<Vec<AssignedInstance>>> =
            applied.assigned().map(|(host, list)| (host.to_owned(), list)).collect();

        assert!(Arc::ptr_eq(&before["a"], &after["a"]), "host a did not change");
        assert!(!Arc::ptr_eq(&before["b"], &after["b"]));
        let keys: Vec<&str> = after["b"].iter().map(|instance| instance.key.as_str()).collect();
        assert_eq!(keys, ["db", "job"]);
    }
}
