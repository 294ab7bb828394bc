//! Conversion of the stored state into the messages clients and agents see.

use std::collections::BTreeSet;
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

/// Builds the client view of one silo.
pub fn silo_info(record: &SiloRecord) -> proto::SiloInfo {
    let (class, tags) = match decode_spec(record) {
        Ok(spec) => (spec.class, spec.tags),
        Err(error) => {
            tracing::error!(silo = %record.name, id = %record.id, %error, "stored silo spec does not decode");
            (String::new(), Vec::new())
        }
    };
    let status = record.status.clone().unwrap_or_default();
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
        message: status.message,
        generation: record.generation,
        exit_code: status.exit_code,
        restarts: status.restarts,
        usage: None,
    }
}

/// Builds the client view of one silo with the latest usage its agent reported. Only an UP
/// silo gets usage, so a silo that stopped since the last report shows none.
pub fn silo_info_with_usage(record: &SiloRecord, usage: &UsageStore, now: Instant) -> proto::SiloInfo {
    let mut info = silo_info(record);
    if info.state() == proto::SiloState::Up {
        info.usage = usage.usage(&record.id, record.generation, now);
    }
    info
}

/// Builds the client view of one host.
pub fn host_info(state: &ClusterState, host: &HostRecord, live: &BTreeSet<String>) -> proto::HostInfo {
    let host_state = if live.contains(&host.name) {
        proto::HostState::Up
    } else {
        proto::HostState::Down
    };
    let silo_count = state.silos_on(&host.name).count();
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
    }
}

/// Returns every silo the agent on `host` must run.
pub fn assignments(state: &ClusterState, host: &str) -> proto::Assignments {
    let silos = state
        .silos_on(host)
        .filter(|record| record.desired == Desired::Run)
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
        let info = silo_info_with_usage(&record(proto::SiloState::Up), &store_with_report(now), now);
        assert_eq!(info.usage.map(|usage| usage.processes), Some(2));
    }

    #[test]
    fn exited_silo_shows_no_usage() {
        let now = Instant::now();
        let info = silo_info_with_usage(&record(proto::SiloState::Exited), &store_with_report(now), now);
        assert_eq!(info.usage, None);
    }
}
