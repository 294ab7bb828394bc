//! The JSON bodies of the service's replies.

use colex_proto as proto;
use serde::Serialize;

use super::clock::rfc3339_utc;
use super::counters::SiloTraffic;

/// One instance's metadata, for `/self` and `/silos/...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceMetadata {
    pub name: String,
    pub index: u32,
    pub id: String,
    pub class: String,
    pub tags: Vec<String>,
    pub host: String,
    pub addresses: Vec<String>,
    /// Start of the instance's current PID 1 in Unix seconds, or `null` when not known yet.
    pub started_at_unix: Option<u64>,
    /// The same time in RFC 3339, UTC.
    pub started_at: Option<String>,
    /// Network counters, only in replies about other silos.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkCounters>,
}

/// Source of a reply's network counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CounterSource {
    /// Read by this host's agent at the request, from the silo's host-side veth.
    Agent,
    /// The latest usage report of the silo's host, as the controller relayed it.
    Controller,
}

/// Traffic of one instance, from the instance's point of view. A counter is `null` when its
/// source does not provide it: the controller's reports carry no packet counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkCounters {
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub rx_packets: Option<u64>,
    pub tx_packets: Option<u64>,
    pub source: CounterSource,
    /// Time of the reading in Unix seconds, in the clock of the host that read it.
    pub sampled_at_unix: Option<u64>,
    pub sampled_at: Option<String>,
}

/// One entry of `/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    pub name: String,
    pub index: u32,
    pub host: String,
    pub addresses: Vec<String>,
}

/// The body of `/list` and `/silos/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing<T> {
    pub silos: Vec<T>,
}

/// The body of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Builds the metadata of `instance`, started at `started_at_unix` (Unix seconds) when known.
pub fn instance_metadata(instance: &proto::SiloName, started_at_unix: Option<u64>) -> InstanceMetadata {
    InstanceMetadata {
        name: instance.silo.clone(),
        index: instance.index,
        id: instance.id.clone(),
        class: instance.class.clone(),
        tags: instance.tags.clone(),
        host: instance.host.clone(),
        addresses: instance.addresses.clone(),
        started_at_unix,
        started_at: started_at_unix.map(rfc3339_utc),
        network: None,
    }
}

/// Builds the counters of a silo on this host from its veth, read at `now_unix` (Unix seconds).
pub fn local_counters(traffic: SiloTraffic, now_unix: u64) -> NetworkCounters {
    NetworkCounters {
        rx_bytes: Some(traffic.rx_bytes),
        tx_bytes: Some(traffic.tx_bytes),
        rx_packets: Some(traffic.rx_packets),
        tx_packets: Some(traffic.tx_packets),
        source: CounterSource::Agent,
        sampled_at_unix: Some(now_unix),
        sampled_at: Some(rfc3339_utc(now_unix)),
    }
}

/// Builds the counters of a silo from the controller's list: bytes only, as of its host's
/// latest usage report.
pub fn relayed_counters(instance: &proto::SiloName) -> NetworkCounters {
    let sampled_at_unix = instance.usage_sampled_at_unix_ms.map(|millis| millis / 1000);
    NetworkCounters {
        rx_bytes: instance.rx_bytes,
        tx_bytes: instance.tx_bytes,
        rx_packets: None,
        tx_packets: None,
        source: CounterSource::Controller,
        sampled_at_unix,
        sampled_at: sampled_at_unix.map(rfc3339_utc),
    }
}

/// Builds the `/list` entry of `instance`.
pub fn list_entry(instance: &proto::SiloName) -> ListEntry {
    ListEntry {
        name: instance.silo.clone(),
        index: instance.index,
        host: instance.host.clone(),
        addresses: instance.addresses.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> proto::SiloName {
        proto::SiloName {
            silo: "web".to_owned(),
            index: 1,
            id: "3938a44e".to_owned(),
            class: "frontend".to_owned(),
            tags: vec!["blue".to_owned()],
            host: "h2".to_owned(),
            addresses: vec!["10.69.2.3".to_owned()],
            rx_bytes: Some(1500),
            tx_bytes: Some(700),
            usage_sampled_at_unix_ms: Some(1_764_906_000_500),
            ..Default::default()
        }
    }

    #[test]
    fn own_metadata_json() {
        let metadata = instance_metadata(&instance(), Some(1_764_906_000));
        let json = serde_json::to_string(&metadata).expect("encodes");
        assert_eq!(
            json,
            r#"{"name":"web","index":1,"id":"3938a44e","class":"frontend","tags":["blue"],"host":"h2","addresses":["10.69.2.3"],"started_at_unix":1764906000,"started_at":"2025-12-05T03:40:00Z"}"#
        );
    }

    #[test]
    fn relayed_counters_have_no_packets() {
        let counters = relayed_counters(&instance());
        let json = serde_json::to_string(&counters).expect("encodes");
        assert_eq!(
            json,
            r#"{"rx_bytes":1500,"tx_bytes":700,"rx_packets":null,"tx_packets":null,"source":"controller","sampled_at_unix":1764906000,"sampled_at":"2025-12-05T03:40:00Z"}"#
        );
    }

    #[test]
    fn local_counters_have_packets() {
        let traffic = SiloTraffic {
            rx_bytes: 10,
            rx_packets: 1,
            tx_bytes: 20,
            tx_packets: 2,
        };
        let counters = local_counters(traffic, 0);
        assert_eq!(counters.rx_packets, Some(1));
        assert_eq!(counters.tx_bytes, Some(20));
        assert_eq!(counters.source, CounterSource::Agent);
    }
}
