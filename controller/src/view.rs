//! Conversion of the stored state into the messages clients and agents see.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use colex_proto as proto;
use prost::Message;

use crate::state::{ClusterState, Desired, HostRecord, SiloRecord};
use crate::usage::UsageStore;

/// Decodes the spec stored in a record. Records are written only from
/// specs the controller decoded itself, so a failure means a corrupt store.
pub fn decode_spec(record: &SiloRecord) -> Result<proto::SiloSpec, prost::DecodeError> {
    proto::SiloSpec::decode(record.spec.as_slice())
}

/// Returns the state shown to users: a stopping silo shows STOPPING until
/// its agent reports it removed, and a silo with no report yet PENDING.
pub fn silo_state(record: &SiloRecord) -> proto::SiloState {
    let reported = record
        .status
        .as_ref()
        .map(|status| proto::SiloState::try_from(status.state).unwrap_or(proto::SiloState::Unspecified));
    match (record.desired, reported) {
        (Desired::Stop, Some(proto::SiloState::Removed)) => proto::SiloState::Removed,
        (Desired::Stop, _) => proto::SiloState::Stopping,
        (Desired::Run, None) => proto::SiloState::Pending,
        (Desired::Run, Some(state)) => state,
    }
}

/// Builds the client view of one silo instance. `count` is the number of instances of the silo
/// whose desired state is run ([`ClusterState::running_count`]).
pub fn silo_info(record: &SiloRecord, count: u32) -> proto::SiloInfo {
    let (class, tags) = match decode_spec(record) {
        Ok(spec) => (spec.class, spec.tags),
        Err(error) => {
            tracing::error!(silo = %record.name, id = %record.id, %error, "stored silo spec does not decode");
            (String::new(), Vec::new())
        }
    };
    let status = record.status.clone().unwrap_or_default();
    let message = match &record.pending_reason {
        Some(reason) if record.is_pending() => reason.clone(),
        _ => status.message,
    };
    proto::SiloInfo {
        name: record.name.clone(),
        id: record.id.clone(),
        class,
        tags,
        host: record.host.clone(),
        state: silo_state(record).into(),
        interfaces: status
            .interfaces
            .into_iter()
            .map(|(name, address)| proto::Interface { name, address })
            .collect(),
        message,
        generation: record.generation,
        exit_code: status.exit_code,
        restarts: status.restarts,
        usage: None,
        index: record.index,
        count,
    }
}

/// Builds the client view of one silo with the latest usage its agent reported. Only an UP
/// silo gets usage, so a silo that stopped since the last report shows none.
pub fn silo_info_with_usage(record: &SiloRecord, count: u32, usage: &UsageStore, now: Instant) -> proto::SiloInfo {
    let mut info = silo_info(record, count);
    if info.state() == proto::SiloState::Up {
        info.usage = usage.usage(&record.id, record.generation, now);
    }
    info
}

/// Hex digits of a host id.
const HOST_ID_HEX_DIGITS: usize = 8;

/// Returns the short id of the host with WireGuard public key `public_key`, empty without a key.
pub fn host_id(public_key: &str) -> String {
    if public_key.is_empty() {
        return String::new();
    }
    let mut id = proto::pki::sha256_hex(public_key.as_bytes());
    id.truncate(HOST_ID_HEX_DIGITS);
    id
}

/// Builds the client view of one host that has `silo_count` silo instances.
pub fn host_info(host: &HostRecord, live: &BTreeSet<String>, silo_count: usize) -> proto::HostInfo {
    let host_state = if live.contains(&host.name) {
        proto::HostState::Up
    } else {
        proto::HostState::Down
    };
    proto::HostInfo {
        name: host.name.clone(),
        address: host.address.clone(),
        state: host_state.into(),
        subnet: host.subnet_cidr(),
        cpus: host.cpus,
        memory_bytes: host.memory_bytes,
        silo_count: u32::try_from(silo_count).unwrap_or(u32::MAX),
        images: host.attributes.images.clone(),
        bind_ids: host.attributes.bind_ids.clone(),
        labels: host.attributes.labels.clone().into_iter().collect(),
        draining: host.draining,
        wireguard_backend: host.attributes.wireguard_backend.clone(),
        id: host_id(&host.attributes.wireguard_public_key),
        // Summing the reservations needs every silo spec decoded, so `api::hosts::host_infos`
        // fills them in once for all hosts.
        cpu_percent_reserved: 0,
        memory_bytes_reserved: 0,
    }
}

/// Builds the client view of every instance of silo `name`, in index order.
pub fn instance_infos(state: &ClusterState, name: &str) -> Vec<proto::SiloInfo> {
    let count = state.running_count(name);
    state
        .instances(name)
        .into_iter()
        .map(|record| silo_info(record, count))
        .collect()
}

/// Builds the client view of every silo instance in the state, ordered by silo name and then
/// instance index, with the usage agents reported.
pub fn all_instance_infos(state: &ClusterState, usage: &UsageStore, now: Instant) -> Vec<proto::SiloInfo> {
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    for record in state.silos.values().filter(|record| record.desired == Desired::Run) {
        *counts.entry(record.name.as_str()).or_default() += 1;
    }
    let mut records: Vec<&SiloRecord> = state.silos.values().collect();
    records.sort_by(|left, right| (&left.name, left.index).cmp(&(&right.name, right.index)));
    records
        .into_iter()
        .map(|record| {
            let count = counts.get(record.name.as_str()).copied().unwrap_or(0);
            silo_info_with_usage(record, count, usage, now)
        })
        .collect()
}

/// Returns every silo the agent on `host` must run. Sessions build the same list from the view
/// they share (`api::session_view`), and tests check it against this one.
#[cfg(test)]
pub fn assignments(state: &ClusterState, host: &str) -> proto::Assignments {
    assignments_of(state.silos_on(host).filter(|record| record.desired == Desired::Run))
}

/// Builds the assignments of `records`, in their order. A record whose spec does not decode is
/// logged and left out.
pub fn assignments_of<'a>(records: impl Iterator<Item = &'a SiloRecord>) -> proto::Assignments {
    let silos = records
        .filter_map(|record| match decode_spec(record) {
            Ok(spec) => Some(proto::Assignment {
                silo_id: record.id.clone(),
                generation: record.generation,
                spec: Some(spec),
            }),
            Err(error) => {
                tracing::error!(silo = %record.name, id = %record.id, %error, "stored silo spec does not decode; not assigned");
                None
            }
        })
        .collect();
    proto::Assignments { silos }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::SiloStatus;

    const SILO_ID: &str = "3938a44e";

    fn record(state: proto::SiloState) -> SiloRecord {
        SiloRecord {
            name: "web".to_owned(),
            index: 0,
            pending_reason: None,
            next_spec: None,
            events: Default::default(),
            id: SILO_ID.to_owned(),
            generation: 1,
            spec: proto::SiloSpec::default().encode_to_vec(),
            host: "h1".to_owned(),
            desired: Desired::Run,
            status: Some(SiloStatus {
                state: state.into(),
                ..Default::default()
            }),
        }
    }

    fn store_with_report(now: Instant) -> UsageStore {
        let store = UsageStore::default();
        let report = proto::SiloUsageReport {
            sampled_at_unix_ms: 10_000,
            silos: vec![proto::SiloUsageSample {
                silo_id: SILO_ID.to_owned(),
                generation: 1,
                processes: 2,
                ..Default::default()
            }],
        };
        store.record("h1", 2, &report, now);
        store
    }

    #[test]
    fn up_silo_shows_usage() {
        let now = Instant::now();
        let info = silo_info_with_usage(&record(proto::SiloState::Up), 1, &store_with_report(now), now);
        assert_eq!(info.usage.map(|usage| usage.processes), Some(2));
    }

    #[test]
    fn exited_silo_shows_no_usage() {
        let now = Instant::now();
        let info = silo_info_with_usage(&record(proto::SiloState::Exited), 1, &store_with_report(now), now);
        assert_eq!(info.usage, None);
    }

    #[test]
    fn pending_instance_shows_its_reason() {
        let pending = SiloRecord {
            host: String::new(),
            status: None,
            index: 2,
            pending_reason: Some("silo web: no live host fits".to_owned()),
            ..record(proto::SiloState::Up)
        };
        let info = silo_info(&pending, 3);
        assert_eq!(info.state(), proto::SiloState::Pending);
        assert_eq!(info.message, "silo web: no live host fits");
        assert_eq!(info.host, "");
        assert_eq!((info.index, info.count), (2, 3));
    }

    #[test]
    fn list_orders_instances_by_name_then_index() {
        let mut state = ClusterState::default();
        for (name, count) in [("web", 11), ("web-2", 1)] {
            state.apply(&crate::state::Command::PutInstances {
                name: name.to_owned(),
                spec: Vec::new(),
                count,
                instances: (0..count)
                    .map(|index| crate::state::InstanceUpdate {
                        index,
                        id: format!("{name}{index}"),
                        placement: crate::state::InstancePlacement::Host("h1".to_owned()),
                    })
                    .collect(),
                rolling: Vec::new(),
            });
        }
        let infos = all_instance_infos(&state, &UsageStore::default(), Instant::now());
        let order: Vec<(String, u32, u32)> = infos
            .iter()
            .map(|info| (info.name.clone(), info.index, info.count))
            .collect();
        let mut expected: Vec<(String, u32, u32)> = (0..11).map(|index| ("web".to_owned(), index, 11)).collect();
        expected.push(("web-2".to_owned(), 0, 1));
        assert_eq!(order, expected);
    }
}
