//! The `Status` request of the `Client` service: one silo's spec and its instances with their
//! recent events.

use colex_proto as proto;
use tonic::Status;

use super::client::split_instance_name;
use crate::state::{ClusterState, SiloRecord};
use crate::view;

/// Builds the status of `requested` from `state`: silo `NAME` with all its instances, or
/// `NAME[INDEX]` with that one instance. Returns NOT_FOUND when the silo or the instance does
/// not exist.
pub fn silo_status(state: &ClusterState, requested: &str) -> Result<proto::StatusResponse, Status> {
    let (name, index) = match split_instance_name(requested) {
        Some((name, index)) => (name, Some(index)),
        None => (requested, None),
    };
    let records = state.instances(name);
    let Some(first) = records.first() else {
        // The CLI adds the closest existing name, because it already has the spelling helper.
        return Err(Status::not_found(format!(
            "silo {requested} not found; see `colex-cli list` for the names"
        )));
    };

    let count = state.running_count(name);
    let spec = spec_summary(first, count);
    let selected: Vec<&SiloRecord> = records
        .iter()
        .copied()
        .filter(|record| index.is_none_or(|index| record.index == index))
        .collect();
    if selected.is_empty() {
        let instances: Vec<String> = records.iter().map(|record| format!("{name}[{}]", record.index)).collect();
        return Err(Status::not_found(format!(
            "silo {requested} not found; silo {name} has instances {}",
            instances.join(", ")
        )));
    }
    let instances = selected
        .iter()
        .map(|record| proto::InstanceStatus {
            info: Some(view::silo_info(record, count)),
            events: record
                .events
                .events()
                .iter()
                .map(|event| event.kind.to_proto(event.at_unix_ms))
                .collect(),
        })
        .collect();
    Ok(proto::StatusResponse {
        spec: Some(spec),
        instances,
    })
}

/// Returns the newest spec of `record` (its next spec while a rolling replacement waits to
/// reach it) with `count` set and file contents left out, since they can be megabytes.
fn spec_summary(record: &SiloRecord, count: u32) -> proto::SiloSpec {
    let newest = SiloRecord {
        spec: record.next_spec.clone().unwrap_or_else(|| record.spec.clone()),
        ..record.clone()
    };
    let mut spec = match view::decode_spec(&newest) {
        Ok(spec) => spec,
        Err(error) => {
            tracing::error!(silo = %record.name, id = %record.id, %error, "stored silo spec does not decode");
            proto::SiloSpec {
                name: record.name.clone(),
                ..Default::default()
            }
        }
    };
    for file in &mut spec.files {
        file.content.clear();
    }
    spec.count = Some(count);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, InstancePlacement, InstanceUpdate, SiloStatus};
    use prost::Message;

    fn state_with_web() -> ClusterState {
        let spec = proto::SiloSpec {
            name: "web".to_owned(),
            base: "busybox".to_owned(),
            files: vec![proto::FileEntry {
                silo_path: "/etc/motd".to_owned(),
                content: b"hello".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut state = ClusterState::default();
        let instances = ["a", "b"]
            .iter()
            .zip(0..)
            .map(|(host, index)| InstanceUpdate {
                index,
                id: format!("0000000{index}"),
                placement: InstancePlacement::Host((*host).to_owned()),
            })
            .collect();
        let put = Command::PutInstances {
            name: "web".to_owned(),
            spec: spec.encode_to_vec(),
            count: 2,
            instances,
            rolling: Vec::new(),
        };
        state.apply(&Command::Stamped {
            at_unix_ms: 1_000,
            command: Box::new(put),
        });
        state.apply(&Command::ReportStatus {
            host: "b".to_owned(),
            silo_id: "00000001".to_owned(),
            status: SiloStatus {
                state: proto::SiloState::Up.into(),
                ..Default::default()
            },
        });
        state
    }

    #[test]
    fn status_lists_instances_and_events() {
        let response = silo_status(&state_with_web(), "web").expect("web exists");
        let spec = response.spec.expect("spec");
        assert_eq!(spec.count, Some(2));
        assert_eq!(spec.base, "busybox");
        assert_eq!(spec.files[0].silo_path, "/etc/motd");
        assert!(spec.files[0].content.is_empty(), "file contents are left out");

        assert_eq!(response.instances.len(), 2);
        let second = &response.instances[1];
        assert_eq!(second.info.as_ref().map(|info| info.host.as_str()), Some("b"));
        let kinds: Vec<&str> = second.events.iter().map(|event| event.kind.as_str()).collect();
        assert_eq!(kinds, ["placed", "started"]);
        assert_eq!(second.events[0].at_unix_ms, 1_000);
        assert_eq!(second.events[0].message, "placed on b");
    }

    #[test]
    fn instance_name_selects_one_instance() {
        let response = silo_status(&state_with_web(), "web[1]").expect("web[1] exists");
        assert_eq!(response.instances.len(), 1);
        let info = response.instances[0].info.as_ref().expect("info");
        assert_eq!(info.index, 1);
        assert_eq!(info.host, "b");
        assert_eq!(response.spec.and_then(|spec| spec.count), Some(2), "the spec is the silo's");

        let first = silo_status(&state_with_web(), "web[0]").expect("web[0] exists");
        assert_eq!(first.instances.len(), 1);
        assert_eq!(first.instances[0].info.as_ref().map(|info| info.index), Some(0));
    }

    #[test]
    fn missing_instance_lists_instances() {
        let error = silo_status(&state_with_web(), "web[5]").expect_err("no instance 5");
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert_eq!(error.message(), "silo web[5] not found; silo web has instances web[0], web[1]");
    }

    #[test]
    fn missing_silo_is_not_found() {
        let error = silo_status(&state_with_web(), "wbe").expect_err("no silo wbe");
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert!(error.message().contains("wbe"), "{}", error.message());
    }
}
