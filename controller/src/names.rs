//! The cluster's silo names for the agents' DNS resolvers and metadata services: every running
//! instance with its addresses, id, class, tags, host, grant and latest network counters.

use std::time::Instant;

use colex_proto as proto;

use crate::state::{Desired, SiloRecord};
use crate::usage::UsageStore;

/// The fields of a stored `SiloSpec` that the names carry, with the spec's field numbers.
/// Decoding only these skips the file contents, which can take hundreds of KiB per spec, so a
/// list of many silos is rebuilt cheaply after every change.
#[derive(Clone, PartialEq, prost::Message)]
struct SpecSummary {
    #[prost(string, tag = "2")]
    class: String,
    #[prost(string, repeated, tag = "3")]
    tags: Vec<String>,
    #[prost(message, optional, tag = "9")]
    grants: Option<proto::Grants>,
}

/// Returns every instance of `records` that is UP and meant to run, with its addresses, ordered
/// by silo name and then index. A stopping instance is left out at once, so clients stop
/// resolving it before it goes away. Start time and network counters come from the latest
/// usage report in `usage` as of `now`, and are absent while the instance has none younger
/// than [`crate::usage::MAX_REPORT_AGE`]. The applied state's UP instances
/// ([`crate::applied::AppliedState::up_instances`]) give every such instance without a pass
/// over all silos.
pub fn silo_names_of<'a>(
    records: impl Iterator<Item = &'a SiloRecord>,
    usage: &UsageStore,
    now: Instant,
) -> proto::Names {
    let mut names: Vec<proto::SiloName> = records
        .filter(|record| record.desired == Desired::Run && !record.is_pending())
        .filter_map(|record| {
            let status = record.status.as_ref()?;
            if status.state != proto::SiloState::Up as i32 {
                return None;
            }
            let addresses: Vec<String> = status
                .interfaces
                .iter()
                .map(|(_, address)| address.clone())
                .filter(|address| !address.is_empty())
                .collect();
            Some(silo_name(record, addresses, usage, now))
        })
        .filter(|name| !name.addresses.is_empty())
        .collect();
    // The map is ordered by key, and "web/10" sorts before "web/2", so sort by index explicitly
    // to keep the message stable.
    names.sort_by(|left, right| left.silo.cmp(&right.silo).then(left.index.cmp(&right.index)));
    proto::Names { names }
}

/// Reports whether `new` differs from `old` in more than the usage fields (start time, byte
/// counters and their sample time), which change with every usage report.
pub fn differ_beyond_usage(old: &proto::Names, new: &proto::Names) -> bool {
    old.names.len() != new.names.len()
        || old
            .names
            .iter()
            .zip(&new.names)
            .any(|(old, new)| without_usage(old) != without_usage(new))
}

fn without_usage(name: &proto::SiloName) -> proto::SiloName {
    proto::SiloName {
        started_at_unix_ms: None,
        rx_bytes: None,
        tx_bytes: None,
        usage_sampled_at_unix_ms: None,
        ..name.clone()
    }
}

/// Builds the entry of one running instance.
fn silo_name(record: &SiloRecord, addresses: Vec<String>, usage: &UsageStore, now: Instant) -> proto::SiloName {
    // The spec was decoded when `up` stored it, so a decode error means a damaged row. The
    // instance then keeps its name and addresses, without class, tags or grant.
    let summary = <SpecSummary as prost::Message>::decode(record.spec.as_slice()).unwrap_or_else(|error| {
        tracing::warn!(silo = %record.name, silo_id = %record.id, %error, "stored spec does not decode; its class, tags and grants are left out of the names");
        SpecSummary::default()
    });
    let sample = usage.latest_sample(&record.id, record.generation, now);
    let (sample, sampled_at_unix_ms) = match sample {
        Some((sample, sampled_at_unix_ms)) => (Some(sample), Some(sampled_at_unix_ms)),
        None => (None, None),
    };
    proto::SiloName {
        silo: record.name.clone(),
        index: record.index,
        addresses,
        id: record.id.clone(),
        class: summary.class,
        tags: summary.tags,
        host: record.host.clone(),
        started_at_unix_ms: sample.as_ref().and_then(|sample| sample.started_at_unix_ms),
        query_silos: summary.grants.is_some_and(|grants| grants.query_silos),
        rx_bytes: sample.as_ref().and_then(|sample| sample.rx_bytes),
        tx_bytes: sample.as_ref().and_then(|sample| sample.tx_bytes),
        usage_sampled_at_unix_ms: sampled_at_unix_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterState;

    fn silo_names(state: &ClusterState, usage: &UsageStore, now: Instant) -> proto::Names {
        silo_names_of(state.silos.values(), usage, now)
    }
    use crate::state::{instance_key, SiloStatus};

    fn insert(state: &mut ClusterState, name: &str, index: u32, desired: Desired, status: Option<(proto::SiloState, &str)>) {
        let record = SiloRecord {
            name: name.to_owned(),
            index,
            id: format!("{index:08x}"),
            generation: 1,
            spec: prost::Message::encode_to_vec(&proto::SiloSpec {
                name: name.to_owned(),
                class: "frontend".to_owned(),
                tags: vec!["blue".to_owned()],
                grants: Some(proto::Grants { query_silos: name == "web", ..Default::default() }),
                files: vec![proto::FileEntry::default()],
                ..Default::default()
            }),
            host: "h1".to_owned(),
            desired,
            status: status.map(|(state, address)| SiloStatus {
                state: state as i32,
                interfaces: vec![("cx00000001".to_owned(), address.to_owned())],
                exit_code: None,
                message: String::new(),
                restarts: 0,
            }),
            pending_reason: None,
            next_spec: None,
            events: Default::default(),
        };
        state.silos.insert(instance_key(name, index), record);
    }

    #[test]
    fn names_list_running_instances_only() {
        let mut state = ClusterState::default();
        insert(&mut state, "web", 0, Desired::Run, Some((proto::SiloState::Up, "10.69.1.2")));
        insert(&mut state, "web", 1, Desired::Run, Some((proto::SiloState::Up, "10.69.2.2")));
        insert(&mut state, "web", 2, Desired::Run, Some((proto::SiloState::Starting, "10.69.1.3")));
        insert(&mut state, "old", 0, Desired::Stop, Some((proto::SiloState::Up, "10.69.1.4")));
        insert(&mut state, "new", 0, Desired::Run, None);

        let names = silo_names(&state, &UsageStore::default(), Instant::now()).names;
        let listed: Vec<(&str, u32, &[String])> = names
            .iter()
            .map(|name| (name.silo.as_str(), name.index, name.addresses.as_slice()))
            .collect();
        assert_eq!(listed.len(), 2, "{names:?}");
        assert_eq!(listed[0], ("web", 0, &["10.69.1.2".to_owned()][..]));
        assert_eq!(listed[1], ("web", 1, &["10.69.2.2".to_owned()][..]));
    }

    #[test]
    fn names_sort_by_numeric_index() {
        let mut state = ClusterState::default();
        for index in [10, 2, 0] {
            let address = format!("10.69.1.{}", index + 2);
            insert(&mut state, "web", index, Desired::Run, Some((proto::SiloState::Up, &address)));
        }
        let indexes: Vec<u32> = silo_names(&state, &UsageStore::default(), Instant::now()).names.iter().map(|name| name.index).collect();
        assert_eq!(indexes, [0, 2, 10]);
    }

    #[test]
    fn names_carry_spec_fields_and_host() {
        let mut state = ClusterState::default();
        insert(&mut state, "web", 0, Desired::Run, Some((proto::SiloState::Up, "10.69.1.2")));
        insert(&mut state, "api", 0, Desired::Run, Some((proto::SiloState::Up, "10.69.1.3")));

        let names = silo_names(&state, &UsageStore::default(), Instant::now()).names;
        let web = names.iter().find(|name| name.silo == "web").expect("web listed");
        assert_eq!(web.id, "00000000");
        assert_eq!(web.class, "frontend");
        assert_eq!(web.tags, ["blue"]);
        assert_eq!(web.host, "h1");
        assert!(web.query_silos);
        assert_eq!(web.rx_bytes, None, "no usage report yet");
        assert_eq!(web.usage_sampled_at_unix_ms, None);
        let api = names.iter().find(|name| name.silo == "api").expect("api listed");
        assert!(!api.query_silos);
    }

    #[test]
    fn usage_only_changes_are_detected() {
        let mut state = ClusterState::default();
        insert(&mut state, "web", 0, Desired::Run, Some((proto::SiloState::Up, "10.69.1.2")));
        let old = silo_names(&state, &UsageStore::default(), Instant::now());
        let mut counters_only = old.clone();
        counters_only.names[0].rx_bytes = Some(10);
        counters_only.names[0].usage_sampled_at_unix_ms = Some(1);
        assert!(!differ_beyond_usage(&old, &counters_only));

        let mut moved = old.clone();
        moved.names[0].addresses = vec!["10.69.1.3".to_owned()];
        assert!(differ_beyond_usage(&old, &moved));
        insert(&mut state, "web", 1, Desired::Run, Some((proto::SiloState::Up, "10.69.1.4")));
        let more = silo_names(&state, &UsageStore::default(), Instant::now());
        assert!(differ_beyond_usage(&old, &more));
    }

    #[test]
    fn names_carry_latest_usage() {
        let mut state = ClusterState::default();
        insert(&mut state, "web", 0, Desired::Run, Some((proto::SiloState::Up, "10.69.1.2")));
        let usage = UsageStore::default();
        let now = Instant::now();
        let report = proto::SiloUsageReport {
            sampled_at_unix_ms: 1_700_000_002_000,
            silos: vec![proto::SiloUsageSample {
                silo_id: "00000000".to_owned(),
                generation: 1,
                rx_bytes: Some(1500),
                tx_bytes: Some(700),
                started_at_unix_ms: Some(1_700_000_000_000),
                ..Default::default()
            }],
        };
        usage.record("h1", 2, &report, now);

        let names = silo_names(&state, &usage, now).names;
        assert_eq!(names[0].rx_bytes, Some(1500));
        assert_eq!(names[0].tx_bytes, Some(700));
        assert_eq!(names[0].started_at_unix_ms, Some(1_700_000_000_000));
        assert_eq!(names[0].usage_sampled_at_unix_ms, Some(1_700_000_002_000));
    }
}
