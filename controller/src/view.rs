//! Conversion of the stored state into the messages clients and agents see.

use std::collections::BTreeSet;

use colex_proto as proto;
use prost::Message;

use crate::state::{ClusterState, Desired, HostRecord, SiloRecord};

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
    }
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
