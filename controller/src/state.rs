//! The replicated cluster state: silo records and hosts.
//!
//! Every change goes through Raft as a [`Command`] and is applied by
//! [`ClusterState::apply`] in log order on every controller. `apply` must be
//! deterministic: it may read only the command and the state, never the clock,
//! randomness or the network. Decisions that need those (the silo id, the
//! chosen host) are made by the leader before it proposes the command.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Cluster-wide silo network, split into one /24 per host.
pub const CLUSTER_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 69, 0, 0);
/// Prefix length of [`CLUSTER_NETWORK`].
pub const CLUSTER_PREFIX_LEN: u8 = 16;
/// Prefix length of each host's silo subnet.
pub const HOST_PREFIX_LEN: u8 = 24;
/// Host subnets are numbered from 1: subnet 0 (10.69.0.0/24) is kept free
/// for cluster-wide services.
const FIRST_HOST_SUBNET: u32 = 1;
/// Number of /24 subnets inside the /16 cluster network.
const HOST_SUBNET_COUNT: u32 = 1 << (HOST_PREFIX_LEN - CLUSTER_PREFIX_LEN);

/// Desired outcome of a silo, as the user requested it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    Run,
    /// `down` was requested; the record is deleted once its agent reports
    /// the silo removed.
    Stop,
}

/// The last state an agent reported for a silo instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiloStatus {
    /// `colex_proto::SiloState` as its wire number.
    pub state: i32,
    /// Host-side interface name and silo address pairs.
    pub interfaces: Vec<(String, String)>,
    pub exit_code: Option<i32>,
    pub message: String,
    /// Times the agent restarted the program in place under its restart policy.
    #[serde(default)]
    pub restarts: u32,
}

/// One silo as stored in the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiloRecord {
    pub name: String,
    /// 8 lower-case hex digits; a new id for every replacement.
    pub id: String,
    /// Increases by one with every `up` that replaces this name, so a stale
    /// report about an earlier instance can be recognized.
    pub generation: u64,
    /// The `colex_proto::SiloSpec`, protobuf-encoded.
    // NOTE: serde_json writes this as an array of numbers, about 4 bytes
    // per byte in rows and snapshots; a binary row encoding would fix it.
    pub spec: Vec<u8>,
    /// Host name the silo is placed on.
    pub host: String,
    pub desired: Desired,
    /// `None` until the agent reports for this id.
    pub status: Option<SiloStatus>,
}

/// A host that registered at least once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// Address the agent reported for itself, without port.
    pub address: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Index of the host's /24 inside the cluster network, so 3 means
    /// 10.69.3.0/24. Kept for the life of the record.
    pub subnet_index: u32,
    /// Images, bind ids and labels the agent offers, from its last
    /// registration. Records written before hosts reported them decode as
    /// offering nothing.
    #[serde(default)]
    pub attributes: HostAttributes,
}

/// Images, bind ids and labels a host's agent offers to silos, as its
/// configuration file declares them. The scheduler places a silo only on a
/// host that offers its image and bind ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostAttributes {
    /// Image names, the built-in "busybox" included.
    pub images: Vec<String>,
    /// Bind ids silos may name in `bind` blocks.
    pub bind_ids: Vec<String>,
    /// Labels for placement.
    pub labels: BTreeMap<String, String>,
    /// The host's WireGuard public key in base64, or empty when the agent
    /// reported no mesh device.
    #[serde(default)]
    pub wireguard_public_key: String,
    /// Address and UDP port of the host's WireGuard device, as ADDRESS:PORT.
    #[serde(default)]
    pub wireguard_endpoint: String,
    /// WireGuard implementation of the host's mesh device: "kernel" or
    /// "userspace".
    #[serde(default)]
    pub wireguard_backend: String,
}

impl HostRecord {
    /// Returns the network address of the host's silo subnet.
    pub fn subnet_network(&self) -> Ipv4Addr {
        let base = u32::from(CLUSTER_NETWORK);
        Ipv4Addr::from(base | (self.subnet_index << (32 - u32::from(HOST_PREFIX_LEN))))
    }

    /// Returns the host's silo subnet in CIDR notation.
    pub fn subnet_cidr(&self) -> String {
        format!("{}/{}", self.subnet_network(), HOST_PREFIX_LEN)
    }
}

/// A change to the cluster state, as written to the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Add a host or update its address and capacity. A known name keeps
    /// its subnet.
    RegisterHost {
        name: String,
        address: String,
        cpus: u32,
        memory_bytes: u64,
        /// Absent in log entries written before agents reported it.
        #[serde(default)]
        attributes: HostAttributes,
    },
    /// Store a silo, replacing any silo of the same name.
    PutSilo {
        name: String,
        id: String,
        spec: Vec<u8>,
        host: String,
    },
    /// Mark a silo for removal.
    StopSilo { name: String },
    /// Record what the agent on `host` observed about silo `silo_id`.
    ReportStatus {
        host: String,
        silo_id: String,
        status: SiloStatus,
    },
    /// Delete the record, but only if it still describes instance `id`.
    DeleteSilo { name: String, id: String },
}

/// The result of applying one [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The log entry carried no command (a blank or membership entry).
    Empty,
    HostRegistered { subnet_index: u32 },
    SiloStored { generation: u64 },
    SiloStopping,
    StatusRecorded,
    SiloDeleted,
    /// The command referred to a silo, instance or host that is no longer
    /// current, so it changed nothing.
    Stale,
    /// The command was valid but cannot be carried out.
    Rejected { reason: String },
}

/// A row of the state that an applied command changed, so storage can
/// write exactly those rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Silo(String),
    Host(String),
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Silo records by silo name.
    pub silos: BTreeMap<String, SiloRecord>,
    /// Host records by host name.
    pub hosts: BTreeMap<String, HostRecord>,
}

impl ClusterState {
    /// Applies one command and returns its response and the rows it changed.
    pub fn apply(&mut self, command: &Command) -> (Response, Vec<Change>) {
        match command {
            Command::RegisterHost {
                name,
                address,
                cpus,
                memory_bytes,
                attributes,
            } => self.register_host(name, address, *cpus, *memory_bytes, attributes),
            Command::PutSilo {
                name,
                id,
                spec,
                host,
            } => self.put_silo(name, id, spec, host),
            Command::StopSilo { name } => self.stop_silo(name),
            Command::ReportStatus {
                host,
                silo_id,
                status,
            } => self.report_status(host, silo_id, status),
            Command::DeleteSilo { name, id } => self.delete_silo(name, id),
        }
    }

    /// Returns the silos placed on `host`, in name order.
    pub fn silos_on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a SiloRecord> + 'a {
        self.silos.values().filter(move |silo| silo.host == host)
    }

    /// Finds the silo record with instance id `id`.
    pub fn silo_by_id(&self, id: &str) -> Option<&SiloRecord> {
        self.silos.values().find(|silo| silo.id == id)
    }

    fn register_host(
        &mut self,
        name: &str,
        address: &str,
        cpus: u32,
        memory_bytes: u64,
        attributes: &HostAttributes,
    ) -> (Response, Vec<Change>) {
        let subnet_index = match self.hosts.get(name) {
            Some(known) => known.subnet_index,
            None => match self.free_subnet_index() {
                Some(index) => index,
                None => {
                    let reason = format!(
                        "no free /{HOST_PREFIX_LEN} subnet left in {CLUSTER_NETWORK}/{CLUSTER_PREFIX_LEN} for host {name}"
                    );
                    return (Response::Rejected { reason }, Vec::new());
                }
            },
        };

        let record = HostRecord {
            name: name.to_owned(),
            address: address.to_owned(),
            cpus,
            memory_bytes,
            subnet_index,
            attributes: attributes.clone(),
        };
        self.hosts.insert(name.to_owned(), record);
        (
            Response::HostRegistered { subnet_index },
            vec![Change::Host(name.to_owned())],
        )
    }

    fn free_subnet_index(&self) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> =
            self.hosts.values().map(|host| host.subnet_index).collect();
        (FIRST_HOST_SUBNET..HOST_SUBNET_COUNT).find(|index| !used.contains(index))
    }

    fn put_silo(&mut self, name: &str, id: &str, spec: &[u8], host: &str) -> (Response, Vec<Change>) {
        let generation = self
            .silos
            .get(name)
            .map_or(1, |previous| previous.generation + 1);
        let record = SiloRecord {
            name: name.to_owned(),
            id: id.to_owned(),
            generation,
            spec: spec.to_vec(),
            host: host.to_owned(),
            desired: Desired::Run,
            status: None,
        };
        self.silos.insert(name.to_owned(), record);
        (
            Response::SiloStored { generation },
            vec![Change::Silo(name.to_owned())],
        )
    }

    fn stop_silo(&mut self, name: &str) -> (Response, Vec<Change>) {
        match self.silos.get_mut(name) {
            Some(silo) => {
                silo.desired = Desired::Stop;
                (Response::SiloStopping, vec![Change::Silo(name.to_owned())])
            }
            None => (Response::Stale, Vec::new()),
        }
    }

    fn report_status(
        &mut self,
        host: &str,
        silo_id: &str,
        status: &SiloStatus,
    ) -> (Response, Vec<Change>) {
        let Some(silo) = self
            .silos
            .values_mut()
            .find(|silo| silo.id == silo_id && silo.host == host)
        else {
            return (Response::Stale, Vec::new());
        };
        if silo.status.as_ref() == Some(status) {
            return (Response::StatusRecorded, Vec::new());
        }
        silo.status = Some(status.clone());
        (Response::StatusRecorded, vec![Change::Silo(silo.name.clone())])
    }

    fn delete_silo(&mut self, name: &str, id: &str) -> (Response, Vec<Change>) {
        match self.silos.get(name) {
            Some(silo) if silo.id == id => {
                self.silos.remove(name);
                (Response::SiloDeleted, vec![Change::Silo(name.to_owned())])
            }
            _ => (Response::Stale, Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(state: &mut ClusterState, name: &str) -> Response {
        let command = Command::RegisterHost {
            name: name.to_owned(),
            address: "198.51.100.2".to_owned(),
            cpus: 2,
            memory_bytes: 1 << 30,
            attributes: HostAttributes::default(),
        };
        state.apply(&command).0
    }

    #[test]
    fn hosts_get_distinct_subnets() {
        let mut state = ClusterState::default();
        assert_eq!(register(&mut state, "a"), Response::HostRegistered { subnet_index: 1 });
        assert_eq!(register(&mut state, "b"), Response::HostRegistered { subnet_index: 2 });
        assert_eq!(state.hosts["b"].subnet_cidr(), "10.69.2.0/24");
    }

    #[test]
    fn host_keeps_subnet_on_register_again() {
        let mut state = ClusterState::default();
        register(&mut state, "a");
        register(&mut state, "b");
        assert_eq!(register(&mut state, "a"), Response::HostRegistered { subnet_index: 1 });
    }

    #[test]
    fn subnets_run_out_after_255_hosts() {
        let mut state = ClusterState::default();
        for index in 1..HOST_SUBNET_COUNT {
            let response = register(&mut state, &format!("h{index}"));
            assert_eq!(response, Response::HostRegistered { subnet_index: index });
        }
        assert!(matches!(register(&mut state, "one-more"), Response::Rejected { .. }));
    }

    #[test]
    fn register_again_replaces_attributes() {
        let mut state = ClusterState::default();
        let register_with = |images: &[&str]| Command::RegisterHost {
            name: "a".to_owned(),
            address: "198.51.100.2".to_owned(),
            cpus: 2,
            memory_bytes: 1 << 30,
            attributes: HostAttributes {
                images: images.iter().map(|image| (*image).to_owned()).collect(),
                bind_ids: vec!["data".to_owned()],
                labels: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
                wireguard_public_key: format!("key of {}", images.len()),
                wireguard_endpoint: "198.51.100.2:51820".to_owned(),
                wireguard_backend: "userspace".to_owned(),
            },
        };
        state.apply(&register_with(&["busybox", "alpine"]));
        assert_eq!(state.hosts["a"].attributes.wireguard_public_key, "key of 2");
        assert_eq!(state.hosts["a"].attributes.images, ["busybox", "alpine"]);
        state.apply(&register_with(&["busybox"]));
        assert_eq!(state.hosts["a"].attributes.images, ["busybox"]);
        assert_eq!(state.hosts["a"].attributes.bind_ids, ["data"]);
        assert_eq!(state.hosts["a"].attributes.labels["zone"], "a");
        assert_eq!(state.hosts["a"].attributes.wireguard_public_key, "key of 1");
        assert_eq!(state.hosts["a"].attributes.wireguard_endpoint, "198.51.100.2:51820");
        assert_eq!(state.hosts["a"].attributes.wireguard_backend, "userspace");
    }

    #[test]
    fn attributes_without_wireguard_still_decode() {
        let old = r#"{"images":["busybox"],"bind_ids":[],"labels":{}}"#;
        let attributes: HostAttributes = serde_json::from_str(old).expect("decode old attributes");
        assert_eq!(attributes.images, ["busybox"]);
        assert_eq!(attributes.wireguard_public_key, "");
        assert_eq!(attributes.wireguard_endpoint, "");
        assert_eq!(attributes.wireguard_backend, "");
    }

    #[test]
    fn records_without_attributes_still_decode() {
        let old = r#"{"RegisterHost":{"name":"a","address":"198.51.100.2","cpus":1,"memory_bytes":1}}"#;
        let command: Command = serde_json::from_str(old).expect("decode an old log entry");
        assert!(matches!(
            command,
            Command::RegisterHost { attributes, .. } if attributes == HostAttributes::default()
        ));
        let old_host = r#"{"name":"a","address":"x","cpus":1,"memory_bytes":1,"subnet_index":1}"#;
        let host: HostRecord = serde_json::from_str(old_host).expect("decode an old host row");
        assert_eq!(host.attributes, HostAttributes::default());
    }

    #[test]
    fn put_silo_replaces_and_bumps_generation() {
        let mut state = ClusterState::default();
        let put = |id: &str| Command::PutSilo {
            name: "web".to_owned(),
            id: id.to_owned(),
            spec: vec![1],
            host: "a".to_owned(),
        };
        assert_eq!(state.apply(&put("00000001")).0, Response::SiloStored { generation: 1 });
        assert_eq!(state.apply(&put("00000002")).0, Response::SiloStored { generation: 2 });
        assert_eq!(state.silos["web"].id, "00000002");
    }

    #[test]
    fn stale_report_and_delete_change_nothing() {
        let mut state = ClusterState::default();
        state.apply(&Command::PutSilo {
            name: "web".to_owned(),
            id: "00000002".to_owned(),
            spec: vec![],
            host: "a".to_owned(),
        });

        let report = Command::ReportStatus {
            host: "a".to_owned(),
            silo_id: "00000001".to_owned(),
            status: SiloStatus::default(),
        };
        assert_eq!(state.apply(&report), (Response::Stale, Vec::new()));

        let delete = Command::DeleteSilo {
            name: "web".to_owned(),
            id: "00000001".to_owned(),
        };
        assert_eq!(state.apply(&delete), (Response::Stale, Vec::new()));
        assert!(state.silos.contains_key("web"));
    }
}
