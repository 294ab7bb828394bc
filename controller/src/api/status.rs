//! The `Status` request of the `Client` service: one silo's spec and its instances with their
//! recent events.

use colex_proto as proto;
use tonic::Status;

use crate::state::{ClusterState, SiloRecord};
use crate::view;

/// Builds the status of silo `name` from `state`, or NOT_FOUND when it has no instance.
pub fn silo_status(state: &ClusterState, name: &str) -> Result<proto::StatusResponse, Status> {
    let records = state.instances(name);
    let Some(first) = records.first() else {
        // The CLI adds the closest existing name, because it already has the spelling helper.
        return Err(Status::not_found(format!(
            "silo {name} not found; see `colex-cli list` for the names"
        )));
    };

    let count = state.running_count(name);
    let spec = spec_summary(first, count);
    let instances = records
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
    fn missing_silo_is_not_found() {
        let error = silo_status(&state_with_web(), "wbe").expect_err("no silo wbe");
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert!(error.message().contains("wbe"), "{}", error.message());
    }
}
