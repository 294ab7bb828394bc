//! The replicated cluster state: silo instance records and hosts.
//!
//! A silo with `count = N` has N instances, indexes 0 to N-1, and each instance is one
//! [`SiloRecord`] with its own id, host, generation and status. Records are keyed by
//! [`instance_key`]: instance 0 by the silo name alone, so rows written before silos had
//! instances are instance 0, and instance `i > 0` by `NAME/i`. `up` accepts only DNS labels as
//! silo names, so `/` never occurs in a name and the two forms cannot collide.
//!
//! Every change goes through Raft as a [`Command`] and is applied by
//! [`ClusterState::apply`] in log order on every controller. `apply` must be
//! deterministic: it may read only the command and the state, never the clock,
//! randomness or the network. Decisions that need those (the silo id, the
//! chosen host) are made by the leader before it proposes the command.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::blobs::{self, NewContent, StoredContent};
use crate::events::{status_events, EventKind, EventLog};

/// Default cluster-wide silo network, split into one /24 per host.
pub const CLUSTER_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 69, 0, 0);
/// Prefix length of [`CLUSTER_NETWORK`].
pub const CLUSTER_PREFIX_LEN: u8 = 16;
/// Default prefix length of each host's silo subnet.
pub const HOST_PREFIX_LEN: u8 = 24;
/// Host subnets are numbered from 1: subnet 0 (10.69.0.0/24 by default) is kept free
/// for cluster-wide services.
const FIRST_HOST_SUBNET: u32 = 1;
/// Smallest cluster network prefix length: a /8 is the largest private IPv4 range (10.0.0.0/8).
const MIN_CLUSTER_PREFIX_LEN: u8 = 8;
/// Largest host subnet prefix length: a /30 has two usable addresses, the bridge's and one
/// silo's.
const MAX_HOST_PREFIX_LEN: u8 = 30;
/// Largest difference between the host and the cluster prefix lengths, which bounds the
/// number of host subnets (2^16) that allocation searches.
const MAX_HOST_SUBNET_BITS: u8 = 16;

/// The cluster's silo network and the size of each host's share of it. Set once at
/// bootstrap; a state without it uses the default 10.69.0.0/16 with /24 host subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNetwork {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    /// Prefix length of each host's silo subnet, longer than `prefix_len`.
    pub host_prefix_len: u8,
}

impl Default for ClusterNetwork {
    fn default() -> Self {
        ClusterNetwork {
            network: CLUSTER_NETWORK,
            prefix_len: CLUSTER_PREFIX_LEN,
            host_prefix_len: HOST_PREFIX_LEN,
        }
    }
}

/// Errors of a cluster network given at bootstrap. Each message names the value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterNetworkError {
    #[error("invalid --cluster-cidr {value:?}: expected an IPv4 network such as 10.70.0.0/16")]
    Syntax { value: String },
    #[error("invalid --cluster-cidr {value}: the prefix length must be {MIN_CLUSTER_PREFIX_LEN} to {max}, such as 10.70.0.0/16")]
    PrefixLength { value: String, max: u8 },
    #[error("invalid --cluster-cidr {value}: host bits are set; use {network}/{prefix_len}")]
    HostBits { value: String, network: Ipv4Addr, prefix_len: u8 },
    #[error("invalid --host-prefix {host_prefix_len} for cluster network {cidr}: use a value from {min} to {max}")]
    HostPrefix { host_prefix_len: u8, cidr: String, min: u8, max: u8 },
}

impl ClusterNetwork {
    /// Parses a cluster network in CIDR notation (`10.70.0.0/16`) with host subnets of prefix
    /// length `host_prefix_len`, which leave room for at least one host subnet besides subnet 0.
    pub fn parse(cidr: &str, host_prefix_len: u8) -> Result<ClusterNetwork, ClusterNetworkError> {
        let syntax = || ClusterNetworkError::Syntax { value: cidr.to_owned() };
        let (address, prefix) = cidr.trim().split_once('/').ok_or_else(syntax)?;
        let address: Ipv4Addr = address.parse().map_err(|_| syntax())?;
        let prefix_len: u8 = prefix.parse().map_err(|_| syntax())?;

        let max_prefix_len = MAX_HOST_PREFIX_LEN - 1;
        if !(MIN_CLUSTER_PREFIX_LEN..=max_prefix_len).contains(&prefix_len) {
            return Err(ClusterNetworkError::PrefixLength {
                value: cidr.to_owned(),
                max: max_prefix_len,
            });
        }

        let mask = u32::MAX << (32 - u32::from(prefix_len));
        let network = Ipv4Addr::from(u32::from(address) & mask);
        if network != address {
            return Err(ClusterNetworkError::HostBits {
                value: cidr.to_owned(),
                network,
                prefix_len,
            });
        }

        let min = prefix_len + 1;
        let max = MAX_HOST_PREFIX_LEN.min(prefix_len + MAX_HOST_SUBNET_BITS);
        if !(min..=max).contains(&host_prefix_len) {
            return Err(ClusterNetworkError::HostPrefix {
                host_prefix_len,
                cidr: cidr.to_owned(),
                min,
                max,
            });
        }
        Ok(ClusterNetwork {
            network,
            prefix_len,
            host_prefix_len,
        })
    }

    /// Returns the network in CIDR notation, such as `10.69.0.0/16`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix_len)
    }

    /// Returns the number of host subnets in the network, subnet 0 included.
    fn host_subnet_count(&self) -> u32 {
        1 << (self.host_prefix_len - self.prefix_len)
    }

    /// Returns the network address of host subnet `index`.
    pub fn subnet_network(&self, index: u32) -> Ipv4Addr {
        let base = u32::from(self.network);
        Ipv4Addr::from(base | (index << (32 - u32::from(self.host_prefix_len))))
    }
}

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

/// One instance of a silo as stored in the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiloRecord {
    pub name: String,
    /// Position among the silo's instances, 0 to count - 1. Rows written before silos had
    /// instances decode as instance 0.
    #[serde(default)]
    pub index: u32,
    /// 8 lower-case hex digits, the silo id agents know the instance by; a new id for every
    /// replacement.
    pub id: String,
    /// Increases by one with every replacement of this instance, so a stale report about an
    /// earlier one can be recognized.
    pub generation: u64,
    /// The `colex_proto::SiloSpec`, protobuf-encoded; base64 in rows and snapshots.
    #[serde(with = "crate::spec_bytes")]
    pub spec: Vec<u8>,
    /// Host name the instance is placed on; empty while it is pending.
    pub host: String,
    pub desired: Desired,
    /// `None` until the agent reports for this id.
    pub status: Option<SiloStatus>,
    /// Reason that no host can run the instance, as the scheduler describes it. `Some` exactly
    /// while `host` is empty.
    #[serde(default)]
    pub pending_reason: Option<String>,
    /// Spec that replaces `spec` when a rolling replacement reaches this instance, or `None`
    /// when the instance runs the spec `up` stored last.
    #[serde(default, with = "crate::spec_bytes::option")]
    pub next_spec: Option<Vec<u8>>,
    /// Recent events of this instance position, kept across replacements. Rows written before
    /// events existed decode with none.
    #[serde(default)]
    pub events: EventLog,
}

impl SiloRecord {
    /// Returns the key of this record in [`ClusterState::silos`].
    pub fn key(&self) -> String {
        instance_key(&self.name, self.index)
    }

    /// Returns true while no host is chosen for the instance.
    pub fn is_pending(&self) -> bool {
        self.host.is_empty()
    }
}

/// Returns the key of instance `index` of silo `name`: the name itself for instance 0, and
/// `NAME/INDEX` for the others.
pub fn instance_key(name: &str, index: u32) -> String {
    if index == 0 {
        name.to_owned()
    } else {
        format!("{name}/{index}")
    }
}

/// Placement the leader chose for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstancePlacement {
    /// On the host of this name.
    Host(String),
    /// Nowhere yet, for this reason.
    Pending { reason: String },
}

/// One instance the leader created or placed, as a command carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceUpdate {
    pub index: u32,
    pub id: String,
    pub placement: InstancePlacement,
}

/// A host that registered at least once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    /// Address the agent reported for itself, without port.
    pub address: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Index of the host's subnet inside the cluster network, so 3 means
    /// 10.69.3.0/24 in the default network. Kept for the life of the record.
    pub subnet_index: u32,
    /// Cluster network the subnet index counts in. Records written before the network was
    /// configurable decode with the default 10.69.0.0/16 and /24 subnets.
    #[serde(default)]
    pub network: ClusterNetwork,
    /// Images, bind ids and labels the agent offers, from its last
    /// registration. Records written before hosts reported them decode as
    /// offering nothing.
    #[serde(default)]
    pub attributes: HostAttributes,
    /// True after `colex-cli hosts drain`: the scheduler places nothing on the host and the
    /// leader moves its instances elsewhere one at a time. Records written before drain
    /// existed decode as not draining.
    #[serde(default)]
    pub draining: bool,
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
        self.network.subnet_network(self.subnet_index)
    }

    /// Returns the host's silo subnet in CIDR notation.
    pub fn subnet_cidr(&self) -> String {
        format!("{}/{}", self.subnet_network(), self.network.host_prefix_len)
    }
}

/// A change to the cluster state, as written to the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `command` as the leader proposed it at `at_unix_ms` (its wall clock, milliseconds since
    /// the Unix epoch), the time of the events it appends. The Raft node wraps every command it
    /// proposes; log entries written before events existed carry bare commands.
    Stamped { at_unix_ms: u64, command: Box<Command> },
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
    /// Store instance 0 of a silo on `host`, replacing it if it exists. Log entries from
    /// before silos had instances carry this command; the leader now proposes `PutInstances`.
    PutSilo {
        name: String,
        id: String,
        #[serde(with = "crate::spec_bytes")]
        spec: Vec<u8>,
        host: String,
    },
    /// Store silo `name` with `count` instances: every instance in `instances` is created or
    /// replaced with `spec` (a new generation), instances of index `count` and above are
    /// marked for removal, and the other instances are left as they are.
    PutInstances {
        name: String,
        /// The `colex_proto::SiloSpec`, protobuf-encoded, with `count` cleared.
        #[serde(with = "crate::spec_bytes")]
        spec: Vec<u8>,
        count: u32,
        instances: Vec<InstanceUpdate>,
        /// Indexes of running instances of another spec, which keep running until the leader
        /// replaces them one at a time (`ReplaceInstance`): `spec` becomes their next spec.
        /// Every other kept instance that already runs `spec` loses its next spec, which ends
        /// an earlier rolling replacement.
        #[serde(default)]
        rolling: Vec<u32>,
    },
    /// Replace instance `instance.index` of silo `name`, still the instance with id
    /// `replaced_id`, by a new instance of its next spec: one step of a rolling replacement.
    ReplaceInstance {
        name: String,
        replaced_id: String,
        instance: InstanceUpdate,
    },
    /// Give pending instances of silo `name` a host or a newer pending reason. An update whose
    /// instance no longer exists, has another id, or already has a host changes nothing.
    PlaceInstances {
        name: String,
        instances: Vec<InstanceUpdate>,
    },
    /// Mark every instance of a silo for removal. Pending instances, which no agent runs, are
    /// deleted at once.
    StopSilo { name: String },
    /// Record what the agent on `host` observed about silo `silo_id`.
    ReportStatus {
        host: String,
        silo_id: String,
        status: SiloStatus,
    },
    /// Delete the record with key `name` (see [`instance_key`]), but only if it still
    /// describes the instance with id `id`.
    DeleteSilo { name: String, id: String },
    /// Mark host `name` draining or clear the mark. Registering again keeps the mark.
    SetDraining {
        name: String,
        #[serde(default)]
        draining: bool,
    },
    /// Move instances off host `from`, which was lost or is draining: each move replaces its
    /// instance, still the one with id `replaced_id` on `from`, by a new instance of the same
    /// spec and the next generation. `reason` describes why, for example "host h1 lost".
    /// `host_lost` is set when `from` was lost rather than drained: each moved instance then
    /// gets a host-lost event, and its new placement reads "placed again".
    MoveInstances {
        from: String,
        #[serde(default)]
        reason: String,
        moves: Vec<InstanceMove>,
        #[serde(default)]
        host_lost: bool,
    },
    /// Remove host `name` and free its silo subnet. Its instances that should run become
    /// pending with the reason "host NAME removed", so the scheduler places them elsewhere, and
    /// its instances marked for removal are deleted, because no agent will report them gone.
    RemoveHost { name: String },
    /// Set the cluster network that host subnets are allocated from. Accepted while no network
    /// is set and no host has registered, and again with the same network.
    SetClusterNetwork { network: ClusterNetwork },
    /// A change to the cluster's authority, tokens, enrollment window or certificates.
    Security(crate::security_state::SecurityCommand),
    /// `commands` in order, committed as one log entry: a batch of the leader's placer, which
    /// planned each command against the state plus the commands before it in the batch. Log
    /// entries written before batches existed carry one command each.
    Batch { commands: Vec<Command> },
    /// Store file contents that the specs of later commands refer to by SHA-256. The placer
    /// puts it before the first `PutInstances` that uses them, in the same entry. A content
    /// already stored is kept as it is, and one that no record uses once the whole entry is
    /// applied is removed again.
    PutFileContents { contents: Vec<NewContent> },
}

/// One instance that [`Command::MoveInstances`] moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMove {
    pub name: String,
    pub replaced_id: String,
    pub instance: InstanceUpdate,
}

/// The result of applying one [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The log entry carried no command (a blank or membership entry).
    Empty,
    HostRegistered { subnet_index: u32 },
    SiloStored { generation: u64 },
    /// `PutInstances` stored the instances it carried and marked `stopping` instances for
    /// removal.
    InstancesStored { stopping: u32 },
    /// `PlaceInstances` changed this many instances.
    InstancesPlaced { changed: u32 },
    /// `ReplaceInstance` stored the new instance with this generation.
    InstanceReplaced { generation: u64 },
    /// `SetDraining` stored the mark.
    DrainingSet,
    /// `MoveInstances` moved this many instances; the others were stale.
    InstancesMoved { moved: u32 },
    /// `RemoveHost` removed the host and made this many of its instances pending.
    HostRemoved { pending: u32 },
    /// `SetClusterNetwork` stored the network, or it was already set to it.
    ClusterNetworkSet,
    SiloStopping,
    StatusRecorded,
    SiloDeleted,
    /// The command referred to a silo, instance or host that is no longer
    /// current, so it changed nothing.
    Stale,
    /// The command was valid but cannot be carried out.
    Rejected { reason: String },
    /// `PutFileContents` added this many contents that were not stored yet.
    FileContentsStored { added: u32 },
    /// The responses of a [`Command::Batch`], one per command in its order.
    Batched { responses: Vec<Response> },
    /// A [`Command::Security`] was applied.
    SecurityApplied,
}

/// A row of the state that an applied command changed, so storage can
/// write exactly those rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The silo record with this key (see [`instance_key`]).
    Silo(String),
    Host(String),
    /// The cluster network.
    Network,
    /// The stored file content with this SHA-256 (hex) was added or removed.
    FileContent(String),
    /// Only the users of the stored file content with this SHA-256 (hex) changed. They are
    /// derived from the silo records, so no row changes.
    FileContentUsers(String),
    /// The security state.
    Security,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Silo instance records by [`instance_key`].
    pub silos: BTreeMap<String, SiloRecord>,
    /// Host records by host name.
    pub hosts: BTreeMap<String, HostRecord>,
    /// Cluster network set at bootstrap, or `None` for the default.
    #[serde(default)]
    pub network: Option<ClusterNetwork>,
    /// File contents that stored specs refer to, by SHA-256 in lower-case hex. States written
    /// before contents were stored apart decode with none, and their specs carry the bytes.
    #[serde(default)]
    pub file_contents: BTreeMap<String, StoredContent>,
    /// The authority, tokens, certificates and revocations.
    #[serde(default)]
    pub security: crate::security_state::SecurityState,
    /// Time of the command being applied, from its [`Command::Stamped`] wrapper, for the events
    /// it appends; 0 outside `apply` and for unstamped commands.
    #[serde(skip)]
    applying_at_unix_ms: u64,
}

impl ClusterState {
    /// Applies the command of one log entry and returns its response and the rows it changed.
    /// Afterwards the users of the stored file contents match the records, and contents that no
    /// record uses any more are removed.
    pub fn apply(&mut self, command: &Command) -> (Response, Vec<Change>) {
        let (response, mut changes) = self.apply_command(command);
        self.update_content_users(&mut changes);
        (response, changes)
    }

    fn apply_command(&mut self, command: &Command) -> (Response, Vec<Change>) {
        match command {
            Command::Stamped { at_unix_ms, command } => {
                self.applying_at_unix_ms = *at_unix_ms;
                let applied = self.apply_command(command);
                self.applying_at_unix_ms = 0;
                applied
            }
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
            Command::PutInstances {
                name,
                spec,
                count,
                instances,
                rolling,
            } => self.put_instances(name, spec, *count, instances, rolling),
            Command::ReplaceInstance {
                name,
                replaced_id,
                instance,
            } => self.replace_instance(name, replaced_id, instance),
            Command::PlaceInstances { name, instances } => self.place_instances(name, instances),
            Command::StopSilo { name } => self.stop_silo(name),
            Command::ReportStatus {
                host,
                silo_id,
                status,
            } => self.report_status(host, silo_id, status),
            Command::DeleteSilo { name, id } => self.delete_silo(name, id),
            Command::SetDraining { name, draining } => self.set_draining(name, *draining),
            Command::MoveInstances {
                from, moves, host_lost, ..
            } => self.move_instances(from, moves, *host_lost),
            Command::RemoveHost { name } => self.remove_host(name),
            Command::SetClusterNetwork { network } => self.set_cluster_network(*network),
            Command::Security(command) => match self.security.apply(command) {
                crate::security_state::SecurityOutcome::Applied => (Response::SecurityApplied, vec![Change::Security]),
                crate::security_state::SecurityOutcome::Rejected(reason) => (Response::Rejected { reason }, Vec::new()),
            },
            Command::Batch { commands } => {
                let mut responses = Vec::with_capacity(commands.len());
                let mut changes = Vec::new();
                for command in commands {
                    let (response, changed) = self.apply_command(command);
                    responses.push(response);
                    changes.extend(changed);
                }
                (Response::Batched { responses }, changes)
            }
            Command::PutFileContents { contents } => self.put_file_contents(contents),
        }
    }

    fn put_file_contents(&mut self, contents: &[NewContent]) -> (Response, Vec<Change>) {
        let mut changes = Vec::new();
        for content in contents {
            if self.file_contents.contains_key(&content.sha256) {
                continue;
            }
            let stored = StoredContent {
                bytes: content.bytes.clone(),
                users: BTreeSet::new(),
            };
            self.file_contents.insert(content.sha256.clone(), stored);
            changes.push(Change::FileContent(content.sha256.clone()));
        }
        let added = u32::try_from(changes.len()).unwrap_or(u32::MAX);
        (Response::FileContentsStored { added }, changes)
    }

    /// Returns the first content that `spec` refers to and the state does not store.
    fn missing_content(&self, spec: &[u8]) -> Option<String> {
        if spec.is_empty() {
            return None;
        }
        blobs::spec_content_hashes(spec)
            .into_iter()
            .find(|hash| !self.file_contents.contains_key(hash))
    }

    /// Brings the users of the stored contents up to date with the silo records that `changes`
    /// names, and removes every content that no record uses.
    // NOTE: each changed record is compared with every stored content, so the cost of an entry
    // grows with changed records times distinct contents.
    fn update_content_users(&mut self, changes: &mut Vec<Change>) {
        if self.file_contents.is_empty() {
            return;
        }
        let keys: BTreeSet<String> = changes
            .iter()
            .filter_map(|change| match change {
                Change::Silo(key) => Some(key.clone()),
                _ => None,
            })
            .collect();
        let mut users_changed = BTreeSet::new();
        for key in keys {
            let used = self.silos.get(&key).map(record_content_hashes).unwrap_or_default();
            for (hash, content) in &mut self.file_contents {
                let changed = if used.contains(hash) {
                    content.users.insert(key.clone())
                } else {
                    content.users.remove(&key)
                };
                if changed {
                    users_changed.insert(hash.clone());
                }
            }
        }

        let unused: Vec<String> = self
            .file_contents
            .iter()
            .filter(|(_, content)| content.users.is_empty())
            .map(|(hash, _)| hash.clone())
            .collect();
        for hash in unused {
            self.file_contents.remove(&hash);
            users_changed.remove(&hash);
            changes.push(Change::FileContent(hash));
        }
        changes.extend(users_changed.into_iter().map(Change::FileContentUsers));
    }

    /// Derives the users of every stored content from the silo records. Call it once a state is
    /// loaded from rows or a snapshot, which do not store the users.
    pub fn rebuild_content_users(&mut self) {
        if self.file_contents.is_empty() {
            return;
        }
        for content in self.file_contents.values_mut() {
            content.users.clear();
        }
        for (key, record) in &self.silos {
            for hash in record_content_hashes(record) {
                if let Some(content) = self.file_contents.get_mut(&hash) {
                    content.users.insert(key.clone());
                }
            }
        }
    }

    /// Returns the number of stored contents and the sum of their sizes in bytes.
    pub fn file_content_totals(&self) -> (usize, u64) {
        let bytes = self
            .file_contents
            .values()
            .map(|content| content.bytes.len() as u64)
            .sum();
        (self.file_contents.len(), bytes)
    }

    /// Returns the cluster network that host subnets are allocated from.
    pub fn cluster_network(&self) -> ClusterNetwork {
        self.network.unwrap_or_default()
    }

    /// Returns the silo instances placed on `host`, in key order.
    pub fn silos_on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a SiloRecord> + 'a {
        self.silos.values().filter(move |silo| silo.host == host)
    }

    /// Returns every instance record of silo `name`, in index order.
    pub fn instances(&self, name: &str) -> Vec<&SiloRecord> {
        // Keys `NAME/1`, `NAME/2`, … sort between `NAME/` and `NAME0`, because `0` follows `/`
        // in ASCII.
        let others = self
            .silos
            .range(format!("{name}/")..format!("{name}0"))
            .map(|(_, record)| record);
        let mut instances: Vec<&SiloRecord> = self.silos.get(name).into_iter().chain(others).collect();
        instances.sort_by_key(|record| record.index);
        instances
    }

    /// Returns the number of instances of silo `name` whose desired state is run.
    pub fn running_count(&self, name: &str) -> u32 {
        let running = self
            .instances(name)
            .into_iter()
            .filter(|record| record.desired == Desired::Run)
            .count();
        u32::try_from(running).unwrap_or(u32::MAX)
    }

    /// Returns the instances that wait for a host, in key order.
    pub fn pending(&self) -> impl Iterator<Item = &SiloRecord> {
        self.silos
            .values()
            .filter(|silo| silo.desired == Desired::Run && silo.is_pending())
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
        let network = self.cluster_network();
        let (subnet_index, network) = match self.hosts.get(name) {
            Some(known) => (known.subnet_index, known.network),
            None => match self.free_subnet_index() {
                Some(index) => (index, network),
                None => {
                    let reason = format!(
                        "no free /{} subnet left in {} for host {name}; remove a host that is gone with `colex-cli hosts remove`",
                        network.host_prefix_len,
                        network.cidr()
                    );
                    return (Response::Rejected { reason }, Vec::new());
                }
            },
        };

        let draining = self.hosts.get(name).is_some_and(|known| known.draining);
        let record = HostRecord {
            name: name.to_owned(),
            address: address.to_owned(),
            cpus,
            memory_bytes,
            subnet_index,
            network,
            attributes: attributes.clone(),
            draining,
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
        (FIRST_HOST_SUBNET..self.cluster_network().host_subnet_count()).find(|index| !used.contains(index))
    }

    fn set_cluster_network(&mut self, network: ClusterNetwork) -> (Response, Vec<Change>) {
        if self.network == Some(network) {
            return (Response::ClusterNetworkSet, Vec::new());
        }
        if let Some(current) = self.network {
            let reason = format!("the cluster network is already {}; it is set only once, at bootstrap", current.cidr());
            return (Response::Rejected { reason }, Vec::new());
        }
        if !self.hosts.is_empty() {
            let reason = format!(
                "{} hosts already have subnets in {}; the cluster network is set only before the first host registers",
                self.hosts.len(),
                self.cluster_network().cidr()
            );
            return (Response::Rejected { reason }, Vec::new());
        }
        self.network = Some(network);
        (Response::ClusterNetworkSet, vec![Change::Network])
    }

    fn put_silo(&mut self, name: &str, id: &str, spec: &[u8], host: &str) -> (Response, Vec<Change>) {
        let previous = self.silos.remove(name);
        let generation = previous.as_ref().map_or(1, |previous| previous.generation + 1);
        let placement = InstancePlacement::Host(host.to_owned());
        let events = self.events_of_new_instance(previous, id, generation, &placement);
        let record = SiloRecord {
            name: name.to_owned(),
            index: 0,
            id: id.to_owned(),
            generation,
            spec: spec.to_vec(),
            host: host.to_owned(),
            desired: Desired::Run,
            status: None,
            pending_reason: None,
            next_spec: None,
            events,
        };
        self.silos.insert(name.to_owned(), record);
        (
            Response::SiloStored { generation },
            vec![Change::Silo(name.to_owned())],
        )
    }

    fn put_instances(
        &mut self,
        name: &str,
        spec: &[u8],
        count: u32,
        instances: &[InstanceUpdate],
        rolling: &[u32],
    ) -> (Response, Vec<Change>) {
        // The leader leaves out contents the state stored when it planned. One whose last user
        // went away since then is gone, and storing the spec without it would start silos that
        // cannot get their files.
        if let Some(hash) = self.missing_content(spec) {
            let reason = format!("silo {name}: file content {hash} is no longer stored; run up again");
            return (Response::Rejected { reason }, Vec::new());
        }
        let mut changes = Vec::new();
        // The leader never sends an instance at or above `count`; one would be stopped below
        // right away, so it is skipped instead.
        for update in instances.iter().filter(|update| update.index < count) {
            let key = self.store_instance(name, spec, update);
            changes.push(Change::Silo(key));
        }

        let untouched: Vec<String> = self
            .instances(name)
            .into_iter()
            .filter(|record| record.index < count && record.desired == Desired::Run)
            .filter(|record| !instances.iter().any(|update| update.index == record.index))
            .map(SiloRecord::key)
            .collect();
        for key in untouched {
            let Some(record) = self.silos.get_mut(&key) else {
                continue;
            };
            let next_spec = if rolling.contains(&record.index) {
                Some(spec.to_vec())
            } else if record.spec == spec {
                None
            } else {
                record.next_spec.clone()
            };
            if record.next_spec != next_spec {
                record.next_spec = next_spec;
                changes.push(Change::Silo(key));
            }
        }

        let surplus: Vec<String> = self
            .instances(name)
            .into_iter()
            .filter(|record| record.index >= count && record.desired == Desired::Run)
            .map(SiloRecord::key)
            .collect();
        let stopping = u32::try_from(surplus.len()).unwrap_or(u32::MAX);
        for key in surplus {
            self.stop_instance(&key);
            changes.push(Change::Silo(key));
        }
        (Response::InstancesStored { stopping }, changes)
    }

    /// Stores a new instance `update` of silo `name` running `spec`, replacing any record under
    /// its key with the next generation, and returns the key.
    fn store_instance(&mut self, name: &str, spec: &[u8], update: &InstanceUpdate) -> String {
        let key = instance_key(name, update.index);
        let previous = self.silos.remove(&key);
        let generation = previous.as_ref().map_or(1, |previous| previous.generation + 1);
        let events = self.events_of_new_instance(previous, &update.id, generation, &update.placement);
        let (host, pending_reason) = match &update.placement {
            InstancePlacement::Host(host) => (host.clone(), None),
            InstancePlacement::Pending { reason } => (String::new(), Some(reason.clone())),
        };
        let record = SiloRecord {
            name: name.to_owned(),
            index: update.index,
            id: update.id.clone(),
            generation,
            spec: spec.to_vec(),
            host,
            desired: Desired::Run,
            status: None,
            pending_reason,
            next_spec: None,
            events,
        };
        self.silos.insert(key.clone(), record);
        key
    }

    fn replace_instance(
        &mut self,
        name: &str,
        replaced_id: &str,
        update: &InstanceUpdate,
    ) -> (Response, Vec<Change>) {
        let key = instance_key(name, update.index);
        let next_spec = match self.silos.get(&key) {
            Some(record) if record.id == replaced_id && record.desired == Desired::Run => {
                record.next_spec.clone()
            }
            _ => None,
        };
        let Some(next_spec) = next_spec else {
            return (Response::Stale, Vec::new());
        };
        let key = self.store_instance(name, &next_spec, update);
        let generation = self.silos.get(&key).map_or(0, |record| record.generation);
        (Response::InstanceReplaced { generation }, vec![Change::Silo(key)])
    }

    fn place_instances(&mut self, name: &str, instances: &[InstanceUpdate]) -> (Response, Vec<Change>) {
        let mut changes = Vec::new();
        for update in instances {
            let key = instance_key(name, update.index);
            let Some(record) = self.silos.get_mut(&key) else {
                continue;
            };
            if record.id != update.id || record.desired != Desired::Run || !record.is_pending() {
                continue;
            }
            match &update.placement {
                InstancePlacement::Host(host) => {
                    record.host = host.clone();
                    record.pending_reason = None;
                }
                InstancePlacement::Pending { reason } => {
                    if record.pending_reason.as_ref() == Some(reason) {
                        continue;
                    }
                    record.pending_reason = Some(reason.clone());
                }
            }
            let event = placement_event(&record.events, &update.placement);
            record.events.push(self.applying_at_unix_ms, event);
            changes.push(Change::Silo(key));
        }
        let changed = u32::try_from(changes.len()).unwrap_or(u32::MAX);
        (Response::InstancesPlaced { changed }, changes)
    }

    fn stop_silo(&mut self, name: &str) -> (Response, Vec<Change>) {
        let keys: Vec<String> = self
            .instances(name)
            .into_iter()
            .map(SiloRecord::key)
            .collect();
        if keys.is_empty() {
            return (Response::Stale, Vec::new());
        }
        for key in &keys {
            self.stop_instance(key);
        }
        (Response::SiloStopping, keys.into_iter().map(Change::Silo).collect())
    }

    /// Marks the record with key `key` for removal, or deletes it when it is pending, because
    /// no agent runs it and so none reports its removal.
    fn stop_instance(&mut self, key: &str) {
        let pending = self.silos.get(key).is_some_and(SiloRecord::is_pending);
        if pending {
            self.silos.remove(key);
        } else if let Some(record) = self.silos.get_mut(key) {
            if record.desired != Desired::Stop {
                record.events.push(self.applying_at_unix_ms, EventKind::Stopping);
            }
            record.desired = Desired::Stop;
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
        for event in status_events(silo.status.as_ref(), status) {
            silo.events.push(self.applying_at_unix_ms, event);
        }
        silo.status = Some(status.clone());
        (Response::StatusRecorded, vec![Change::Silo(silo.key())])
    }

    /// Appends a host-lost event to the instance with key `key` (see [`instance_key`]) at the
    /// time of the command being applied, and returns whether the instance exists. Call it from
    /// an apply path that moves the instance off `lost_host`: the next placement of the
    /// instance then appends "placed again" in place of "placed" or "replaced".
    pub fn record_host_lost(&mut self, key: &str, lost_host: &str) -> bool {
        let at_unix_ms = self.applying_at_unix_ms;
        let Some(record) = self.silos.get_mut(key) else {
            return false;
        };
        record.events.push(
            at_unix_ms,
            EventKind::HostLost {
                host: lost_host.to_owned(),
            },
        );
        true
    }

    /// Returns the events of a new instance at a record key: those of the `previous` record
    /// there, a replacement event unless the previous host was lost, and its placement.
    fn events_of_new_instance(
        &self,
        previous: Option<SiloRecord>,
        id: &str,
        generation: u64,
        placement: &InstancePlacement,
    ) -> EventLog {
        let at_unix_ms = self.applying_at_unix_ms;
        let mut events = previous.map(|record| record.events).unwrap_or_default();
        let host_lost = is_host_lost(&events);
        if generation > 1 && !host_lost {
            let replaced = EventKind::Replaced {
                id: id.to_owned(),
                generation,
            };
            events.push(at_unix_ms, replaced);
        }
        let placed = placement_event(&events, placement);
        events.push(at_unix_ms, placed);
        events
    }

    fn set_draining(&mut self, name: &str, draining: bool) -> (Response, Vec<Change>) {
        let Some(host) = self.hosts.get_mut(name) else {
            return (Response::Stale, Vec::new());
        };
        if host.draining == draining {
            return (Response::DrainingSet, Vec::new());
        }
        host.draining = draining;
        (Response::DrainingSet, vec![Change::Host(name.to_owned())])
    }

    fn move_instances(&mut self, from: &str, moves: &[InstanceMove], host_lost: bool) -> (Response, Vec<Change>) {
        let mut changes = Vec::new();
        for instance_move in moves {
            let key = instance_key(&instance_move.name, instance_move.instance.index);
            let current = self.silos.get(&key).filter(|record| {
                record.id == instance_move.replaced_id && record.host == from && record.desired == Desired::Run
            });
            let Some(record) = current else {
                continue;
            };
            // The new instance runs the spec the moved one ran and keeps waiting for a rolling
            // replacement's next spec, if any.
            let spec = record.spec.clone();
            let next_spec = record.next_spec.clone();
            if host_lost {
                self.record_host_lost(&key, from);
            }
            let key = self.store_instance(&instance_move.name, &spec, &instance_move.instance);
            if let Some(record) = self.silos.get_mut(&key) {
                record.next_spec = next_spec;
            }
            changes.push(Change::Silo(key));
        }
        let moved = u32::try_from(changes.len()).unwrap_or(u32::MAX);
        (Response::InstancesMoved { moved }, changes)
    }

    fn remove_host(&mut self, name: &str) -> (Response, Vec<Change>) {
        if self.hosts.remove(name).is_none() {
            return (Response::Stale, Vec::new());
        }
        let mut changes = vec![Change::Host(name.to_owned())];
        // The removed host's certificate stops working: a new agent under this name joins
        // with a token and may bring another key.
        if self.security.revoke_holder(colex_proto::pki::Role::Agent.as_str(), name) {
            changes.push(Change::Security);
        }
        let keys: Vec<String> = self.silos_on(name).map(SiloRecord::key).collect();
        let reason = format!("host {name} removed");
        let mut pending = 0_u32;
        for key in keys {
            let stopping = self.silos.get(&key).is_some_and(|record| record.desired == Desired::Stop);
            if stopping {
                self.silos.remove(&key);
            } else if let Some(record) = self.silos.get_mut(&key) {
                record.host.clear();
                record.status = None;
                record.pending_reason = Some(reason.clone());
                record.events.push(
                    self.applying_at_unix_ms,
                    EventKind::Pending {
                        reason: reason.clone(),
                    },
                );
                pending += 1;
            }
            changes.push(Change::Silo(key));
        }
        (Response::HostRemoved { pending }, changes)
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

/// Returns the contents that the spec and the next spec of `record` refer to.
fn record_content_hashes(record: &SiloRecord) -> BTreeSet<String> {
    let mut hashes = blobs::spec_content_hashes(&record.spec);
    if let Some(next_spec) = &record.next_spec {
        hashes.extend(blobs::spec_content_hashes(next_spec));
    }
    hashes
}

/// Returns true when the newest event of `events`, pending reasons aside, is a lost host, so the
/// next placement is a placement again.
fn is_host_lost(events: &EventLog) -> bool {
    events
        .events()
        .iter()
        .rev()
        .find(|event| !matches!(event.kind, EventKind::Pending { .. }))
        .is_some_and(|event| matches!(event.kind, EventKind::HostLost { .. }))
}

/// Returns the event of a placement decision, after the events the instance already has.
fn placement_event(events: &EventLog, placement: &InstancePlacement) -> EventKind {
    match placement {
        InstancePlacement::Host(host) if is_host_lost(events) => EventKind::PlacedAgain { host: host.clone() },
        InstancePlacement::Host(host) => EventKind::Placed { host: host.clone() },
        InstancePlacement::Pending { reason } => EventKind::Pending {
            reason: reason.clone(),
        },
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

    fn put_one(name: &str, id: &str, host: &str) -> Command {
        Command::PutInstances {
            name: name.to_owned(),
            spec: vec![1],
            count: 1,
            instances: vec![InstanceUpdate {
                index: 0,
                id: id.to_owned(),
                placement: InstancePlacement::Host(host.to_owned()),
            }],
            rolling: Vec::new(),
        }
    }

    #[test]
    fn batch_applies_commands_in_order() {
        let mut state = ClusterState::default();
        register(&mut state, "a");
        let batch = Command::Batch {
            commands: vec![put_one("web", "0000000a", "a"), put_one("db", "0000000b", "a"), put_one("web", "0000000c", "a")],
        };
        let (response, changes) = state.apply(&batch);
        let stored = Response::InstancesStored { stopping: 0 };
        assert_eq!(
            response,
            Response::Batched {
                responses: vec![stored.clone(), stored.clone(), stored]
            }
        );
        assert_eq!(changes.len(), 3);
        assert_eq!(state.silos["web"].id, "0000000c", "the later command wins");
        assert_eq!(state.silos["web"].generation, 2);
        assert_eq!(state.silos["db"].id, "0000000b");
    }

    #[test]
    fn batch_survives_the_log_encoding() {
        let batch = Command::Stamped {
            at_unix_ms: 1_700_000_000_000,
            command: Box::new(Command::Batch {
                commands: vec![put_one("web", "0000000a", "a")],
            }),
        };
        let encoded = serde_json::to_string(&batch).expect("encode");
        let decoded: Command = serde_json::from_str(&encoded).expect("decode");
        assert_eq!(decoded, batch);
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
    fn removed_host_frees_subnet_and_instances() {
        let mut state = ClusterState::default();
        register(&mut state, "a");
        register(&mut state, "b");
        state.apply(&put_instances(2, vec![on_host(0, "00000000", "a"), on_host(1, "00000001", "b")]));
        state.apply(&Command::PutSilo {
            name: "old".to_owned(),
            id: "0000000f".to_owned(),
            spec: Vec::new(),
            host: "a".to_owned(),
        });
        state.apply(&Command::StopSilo { name: "old".to_owned() });

        let (response, changes) = state.apply(&Command::RemoveHost { name: "a".to_owned() });
        assert_eq!(response, Response::HostRemoved { pending: 1 });
        assert!(changes.contains(&Change::Host("a".to_owned())), "{changes:?}");
        assert!(!state.hosts.contains_key("a"));
        assert!(!state.silos.contains_key("old"), "an instance marked for removal is deleted");
        let moved = &state.silos["web"];
        assert!(moved.is_pending(), "{moved:?}");
        assert_eq!(moved.pending_reason.as_deref(), Some("host a removed"));
        assert_eq!(moved.id, "00000000", "the instance keeps its id");
        assert_eq!(state.silos["web/1"].host, "b", "instances on other hosts stay");

        assert_eq!(register(&mut state, "c"), Response::HostRegistered { subnet_index: 1 }, "subnet 1 is free again");
        assert_eq!(register(&mut state, "a"), Response::HostRegistered { subnet_index: 3 }, "a comes back as a new host");
        let (response, changes) = state.apply(&Command::RemoveHost { name: "gone".to_owned() });
        assert_eq!(response, Response::Stale);
        assert!(changes.is_empty());
    }

    #[test]
    fn subnets_run_out_after_255_hosts() {
        let mut state = ClusterState::default();
        for index in 1..ClusterNetwork::default().host_subnet_count() {
            let response = register(&mut state, &format!("h{index}"));
            assert_eq!(response, Response::HostRegistered { subnet_index: index });
        }
        assert!(matches!(register(&mut state, "one-more"), Response::Rejected { .. }));
    }

    #[test]
    fn configured_network_gives_subnets() {
        let mut state = ClusterState::default();
        let network = ClusterNetwork::parse("10.70.0.0/16", 24).expect("valid network");
        let (response, changes) = state.apply(&Command::SetClusterNetwork { network });
        assert_eq!(response, Response::ClusterNetworkSet);
        assert_eq!(changes, vec![Change::Network]);
        register(&mut state, "a");
        assert_eq!(state.hosts["a"].subnet_cidr(), "10.70.1.0/24");

        let (response, changes) = state.apply(&Command::SetClusterNetwork { network });
        assert_eq!(response, Response::ClusterNetworkSet, "the same network again is accepted");
        assert!(changes.is_empty());
        let other = ClusterNetwork::parse("10.71.0.0/16", 24).expect("valid network");
        let (response, _) = state.apply(&Command::SetClusterNetwork { network: other });
        assert!(matches!(response, Response::Rejected { ref reason } if reason.contains("10.70.0.0/16")), "{response:?}");
    }

    #[test]
    fn network_is_set_only_before_hosts() {
        let mut state = ClusterState::default();
        register(&mut state, "a");
        let network = ClusterNetwork::parse("10.70.0.0/16", 24).expect("valid network");
        let (response, _) = state.apply(&Command::SetClusterNetwork { network });
        assert!(matches!(response, Response::Rejected { .. }), "{response:?}");
        assert_eq!(state.hosts["a"].subnet_cidr(), "10.69.1.0/24");
    }

    #[test]
    fn small_host_subnets_and_exhaustion() {
        let mut state = ClusterState::default();
        let network = ClusterNetwork::parse("10.70.8.0/22", 26).expect("valid network");
        state.apply(&Command::SetClusterNetwork { network });
        for index in 1..16 {
            assert_eq!(register(&mut state, &format!("h{index}")), Response::HostRegistered { subnet_index: index });
        }
        assert_eq!(state.hosts["h1"].subnet_cidr(), "10.70.8.64/26");
        assert_eq!(state.hosts["h15"].subnet_cidr(), "10.70.11.192/26");
        let response = register(&mut state, "one-more");
        let Response::Rejected { reason } = response else {
            panic!("the 16th host must be rejected: {response:?}");
        };
        assert!(reason.contains("/26"), "{reason}");
        assert!(reason.contains("10.70.8.0/22"), "{reason}");
    }

    #[test]
    fn bad_networks_name_value_and_fix() {
        let cases = [
            ("10.70.0.0", 24, "expected an IPv4 network such as 10.70.0.0/16"),
            ("10.70.0.300/16", 24, "\"10.70.0.300/16\""),
            ("10.70.0.0/4", 24, "prefix length must be 8 to 29"),
            ("10.70.1.0/16", 24, "host bits are set; use 10.70.0.0/16"),
            ("10.70.0.0/16", 16, "invalid --host-prefix 16 for cluster network 10.70.0.0/16: use a value from 17 to 30"),
            ("10.0.0.0/8", 25, "use a value from 9 to 24"),
        ];
        for (cidr, host_prefix_len, expected) in cases {
            let error = ClusterNetwork::parse(cidr, host_prefix_len).expect_err(cidr).to_string();
            assert!(error.contains(expected), "{cidr} /{host_prefix_len}: {error}");
            assert_eq!(error.lines().count(), 1, "{error}");
        }
        assert_eq!(ClusterNetwork::parse("10.69.0.0/16", 24), Ok(ClusterNetwork::default()));
    }

    #[test]
    fn host_records_without_network_decode_as_default() {
        let old_host = r#"{"name":"a","address":"x","cpus":1,"memory_bytes":1,"subnet_index":3}"#;
        let record: HostRecord = serde_json::from_str(old_host).expect("old host row");
        assert_eq!(record.subnet_cidr(), "10.69.3.0/24");
        let old_state = r#"{"silos":{},"hosts":{}}"#;
        let state: ClusterState = serde_json::from_str(old_state).expect("old snapshot state");
        assert_eq!(state.cluster_network(), ClusterNetwork::default());
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

    fn on_host(index: u32, id: &str, host: &str) -> InstanceUpdate {
        InstanceUpdate {
            index,
            id: id.to_owned(),
            placement: InstancePlacement::Host(host.to_owned()),
        }
    }

    fn pending(index: u32, id: &str, reason: &str) -> InstanceUpdate {
        InstanceUpdate {
            index,
            id: id.to_owned(),
            placement: InstancePlacement::Pending {
                reason: reason.to_owned(),
            },
        }
    }

    fn put_instances(count: u32, instances: Vec<InstanceUpdate>) -> Command {
        Command::PutInstances {
            name: "web".to_owned(),
            spec: vec![1],
            count,
            instances,
            rolling: Vec::new(),
        }
    }

    /// Returns (index, id, host, generation, desired) of every instance of "web".
    fn web_instances(state: &ClusterState) -> Vec<(u32, String, String, u64, Desired)> {
        state
            .instances("web")
            .into_iter()
            .map(|record| {
                (
                    record.index,
                    record.id.clone(),
                    record.host.clone(),
                    record.generation,
                    record.desired,
                )
            })
            .collect()
    }

    fn three_instances() -> ClusterState {
        let mut state = ClusterState::default();
        let (response, changes) = state.apply(&put_instances(
            3,
            vec![on_host(0, "0000000a", "a"), on_host(1, "0000000b", "b"), on_host(2, "0000000c", "c")],
        ));
        assert_eq!(response, Response::InstancesStored { stopping: 0 });
        assert_eq!(
            changes,
            vec![
                Change::Silo("web".to_owned()),
                Change::Silo("web/1".to_owned()),
                Change::Silo("web/2".to_owned())
            ]
        );
        state
    }

    #[test]
    fn instances_are_stored_under_their_keys() {
        let state = three_instances();
        assert_eq!(
            web_instances(&state),
            vec![
                (0, "0000000a".to_owned(), "a".to_owned(), 1, Desired::Run),
                (1, "0000000b".to_owned(), "b".to_owned(), 1, Desired::Run),
                (2, "0000000c".to_owned(), "c".to_owned(), 1, Desired::Run),
            ]
        );
        assert_eq!(state.silos["web/2"].key(), "web/2");
        assert_eq!(state.running_count("web"), 3);
    }

    #[test]
    fn instances_of_similar_names_stay_apart() {
        let mut state = three_instances();
        for name in ["web-2", "we", "web0"] {
            state.apply(&Command::PutInstances {
                name: name.to_owned(),
                spec: vec![2],
                count: 2,
                instances: vec![on_host(0, "00000100", "a"), on_host(1, "00000101", "a")],
                rolling: Vec::new(),
            });
        }
        assert_eq!(state.instances("web").len(), 3);
        assert_eq!(state.instances("web-2").len(), 2);
        assert_eq!(state.instances("we").len(), 2);
    }

    #[test]
    fn count_up_adds_only_new_instances() {
        let mut state = three_instances();
        let (response, changes) = state.apply(&put_instances(4, vec![on_host(3, "0000000d", "a")]));
        assert_eq!(response, Response::InstancesStored { stopping: 0 });
        assert_eq!(changes, vec![Change::Silo("web/3".to_owned())]);
        let instances = web_instances(&state);
        assert_eq!(instances.len(), 4);
        assert_eq!(instances[0], (0, "0000000a".to_owned(), "a".to_owned(), 1, Desired::Run));
        assert_eq!(instances[3], (3, "0000000d".to_owned(), "a".to_owned(), 1, Desired::Run));
    }

    #[test]
    fn count_down_stops_only_highest_instances() {
        let mut state = three_instances();
        let (response, changes) = state.apply(&put_instances(1, Vec::new()));
        assert_eq!(response, Response::InstancesStored { stopping: 2 });
        assert_eq!(
            changes,
            vec![Change::Silo("web/1".to_owned()), Change::Silo("web/2".to_owned())]
        );
        let instances = web_instances(&state);
        assert_eq!(instances[0], (0, "0000000a".to_owned(), "a".to_owned(), 1, Desired::Run));
        assert_eq!(instances[1].4, Desired::Stop);
        assert_eq!(instances[2].4, Desired::Stop);
        assert_eq!(state.running_count("web"), 1);
    }

    #[test]
    fn unchanged_count_without_instances_changes_nothing() {
        let mut state = three_instances();
        let before = state.clone();
        let (response, changes) = state.apply(&put_instances(3, Vec::new()));
        assert_eq!(response, Response::InstancesStored { stopping: 0 });
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(state, before);
    }

    #[test]
    fn replaced_instances_get_new_generation() {
        let mut state = three_instances();
        state.apply(&Command::ReportStatus {
            host: "b".to_owned(),
            silo_id: "0000000b".to_owned(),
            status: SiloStatus {
                state: 3,
                ..Default::default()
            },
        });
        state.apply(&put_instances(
            3,
            vec![on_host(0, "0000001a", "a"), on_host(1, "0000001b", "b"), on_host(2, "0000001c", "c")],
        ));
        let instances = web_instances(&state);
        assert_eq!(instances[1], (1, "0000001b".to_owned(), "b".to_owned(), 2, Desired::Run));
        assert_eq!(state.silos["web/1"].status, None, "a replacement starts without a report");
    }

    #[test]
    fn pending_instance_is_placed_later() {
        let mut state = ClusterState::default();
        state.apply(&put_instances(
            2,
            vec![on_host(0, "0000000a", "a"), pending(1, "0000000b", "no live host fits")],
        ));
        let waiting: Vec<String> = state.pending().map(SiloRecord::key).collect();
        assert_eq!(waiting, ["web/1"]);
        assert_eq!(state.silos["web/1"].host, "");
        assert_eq!(state.silos["web/1"].pending_reason.as_deref(), Some("no live host fits"));

        // A newer reason replaces the old one; the same reason again changes nothing.
        let newer = Command::PlaceInstances {
            name: "web".to_owned(),
            instances: vec![pending(1, "0000000b", "b: lacks label zone=b")],
        };
        assert_eq!(state.apply(&newer).1, vec![Change::Silo("web/1".to_owned())]);
        assert_eq!(state.apply(&newer), (Response::InstancesPlaced { changed: 0 }, Vec::new()));

        let wrong_id = Command::PlaceInstances {
            name: "web".to_owned(),
            instances: vec![on_host(1, "ffffffff", "b")],
        };
        assert_eq!(state.apply(&wrong_id), (Response::InstancesPlaced { changed: 0 }, Vec::new()));

        let placed = Command::PlaceInstances {
            name: "web".to_owned(),
            instances: vec![on_host(1, "0000000b", "b")],
        };
        assert_eq!(
            state.apply(&placed),
            (
                Response::InstancesPlaced { changed: 1 },
                vec![Change::Silo("web/1".to_owned())]
            )
        );
        assert_eq!(state.silos["web/1"].host, "b");
        assert_eq!(state.silos["web/1"].pending_reason, None);
        assert_eq!(state.silos["web/1"].generation, 1);
        assert_eq!(state.pending().count(), 0);

        let placed_again = Command::PlaceInstances {
            name: "web".to_owned(),
            instances: vec![on_host(1, "0000000b", "c")],
        };
        assert_eq!(state.apply(&placed_again).1, Vec::new(), "a placed instance keeps its host");
    }

    #[test]
    fn stop_deletes_pending_and_marks_placed() {
        let mut state = ClusterState::default();
        state.apply(&put_instances(
            2,
            vec![on_host(0, "0000000a", "a"), pending(1, "0000000b", "no live host fits")],
        ));
        let (response, changes) = state.apply(&Command::StopSilo {
            name: "web".to_owned(),
        });
        assert_eq!(response, Response::SiloStopping);
        assert_eq!(
            changes,
            vec![Change::Silo("web".to_owned()), Change::Silo("web/1".to_owned())]
        );
        assert_eq!(state.silos["web"].desired, Desired::Stop);
        assert!(!state.silos.contains_key("web/1"), "a pending instance is deleted at once");
    }

    #[test]
    fn count_down_deletes_pending_surplus() {
        let mut state = ClusterState::default();
        state.apply(&put_instances(
            2,
            vec![on_host(0, "0000000a", "a"), pending(1, "0000000b", "no live host fits")],
        ));
        state.apply(&put_instances(1, Vec::new()));
        assert!(!state.silos.contains_key("web/1"));
        assert_eq!(state.silos["web"].desired, Desired::Run);
    }

    #[test]
    fn delete_uses_instance_key() {
        let mut state = three_instances();
        state.apply(&put_instances(2, Vec::new()));
        let delete = Command::DeleteSilo {
            name: "web/2".to_owned(),
            id: "0000000c".to_owned(),
        };
        assert_eq!(
            state.apply(&delete),
            (Response::SiloDeleted, vec![Change::Silo("web/2".to_owned())])
        );
        assert_eq!(state.instances("web").len(), 2);
    }

    #[test]
    fn silo_rows_without_instances_decode_as_instance_zero() {
        let old_row = r#"{"name":"web","id":"3938a44e","generation":4,"spec":[1],"host":"a","desired":"Run","status":null}"#;
        let record: SiloRecord = serde_json::from_str(old_row).expect("decode an old silo row");
        assert_eq!(record.index, 0);
        assert_eq!(record.pending_reason, None);
        assert_eq!(record.key(), "web");
        assert!(!record.is_pending());

        let old_entry = r#"{"PutSilo":{"name":"web","id":"3938a44e","spec":[1],"host":"a"}}"#;
        let command: Command = serde_json::from_str(old_entry).expect("decode an old log entry");
        let mut state = ClusterState::default();
        state.apply(&command);
        assert_eq!(state.instances("web").len(), 1);
        assert_eq!(state.running_count("web"), 1);
    }

    #[test]
    fn rolling_instances_get_next_spec() {
        let mut state = three_instances();
        let (response, changes) = state.apply(&Command::PutInstances {
            name: "web".to_owned(),
            spec: vec![2],
            count: 3,
            instances: vec![on_host(0, "0000001a", "a")],
            rolling: vec![1, 2],
        });
        assert_eq!(response, Response::InstancesStored { stopping: 0 });
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(state.silos["web"].spec, [2]);
        assert_eq!(state.silos["web"].generation, 2);
        for key in ["web/1", "web/2"] {
            assert_eq!(state.silos[key].spec, [1], "{key} keeps running its spec");
            assert_eq!(state.silos[key].next_spec.as_deref(), Some(&[2][..]), "{key}");
            assert_eq!(state.silos[key].generation, 1, "{key}");
        }
    }

    #[test]
    fn replace_instance_applies_next_spec() {
        let mut state = three_instances();
        state.apply(&Command::PutInstances {
            name: "web".to_owned(),
            spec: vec![2],
            count: 3,
            instances: vec![on_host(0, "0000001a", "a")],
            rolling: vec![1, 2],
        });
        let stale = Command::ReplaceInstance {
            name: "web".to_owned(),
            replaced_id: "ffffffff".to_owned(),
            instance: on_host(1, "0000001b", "b"),
        };
        assert_eq!(state.apply(&stale), (Response::Stale, Vec::new()));

        let step = Command::ReplaceInstance {
            name: "web".to_owned(),
            replaced_id: "0000000b".to_owned(),
            instance: on_host(1, "0000001b", "b"),
        };
        assert_eq!(
            state.apply(&step),
            (
                Response::InstanceReplaced { generation: 2 },
                vec![Change::Silo("web/1".to_owned())]
            )
        );
        let record = &state.silos["web/1"];
        assert_eq!(record.id, "0000001b");
        assert_eq!(record.spec, [2]);
        assert_eq!(record.next_spec, None);
        assert_eq!(state.silos["web/2"].id, "0000000c", "one instance at a time");

        assert_eq!(
            state.apply(&step),
            (Response::Stale, Vec::new()),
            "the same step again is stale"
        );
    }

    #[test]
    fn up_of_running_spec_ends_rollout() {
        let mut state = three_instances();
        state.apply(&Command::PutInstances {
            name: "web".to_owned(),
            spec: vec![2],
            count: 3,
            instances: vec![on_host(0, "0000001a", "a")],
            rolling: vec![1, 2],
        });
        // Back to spec 1, which instances 1 and 2 still run: they stop waiting for spec 2.
        let (_, changes) = state.apply(&Command::PutInstances {
            name: "web".to_owned(),
            spec: vec![1],
            count: 3,
            instances: vec![on_host(0, "0000002a", "a")],
            rolling: Vec::new(),
        });
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert_eq!(state.silos["web/1"].next_spec, None);
        assert_eq!(state.silos["web/2"].next_spec, None);
        assert_eq!(state.silos["web/2"].id, "0000000c");
    }

    /// Wraps `command` as the leader proposes it, at `at_unix_ms`.
    fn stamped(at_unix_ms: u64, command: Command) -> Command {
        Command::Stamped {
            at_unix_ms,
            command: Box::new(command),
        }
    }

    /// Returns (time, kind name) of every event of the record with key `key`.
    fn event_names(state: &ClusterState, key: &str) -> Vec<(u64, &'static str)> {
        state.silos[key]
            .events
            .events()
            .iter()
            .map(|event| (event.at_unix_ms, event.kind.name()))
            .collect()
    }

    fn report(host: &str, id: &str, state: i32, exit_code: Option<i32>, restarts: u32) -> Command {
        Command::ReportStatus {
            host: host.to_owned(),
            silo_id: id.to_owned(),
            status: SiloStatus {
                state,
                exit_code,
                restarts,
                ..Default::default()
            },
        }
    }

    #[test]
    fn events_follow_each_command_kind() {
        let mut state = ClusterState::default();
        state.apply(&stamped(
            10,
            put_instances(2, vec![on_host(0, "0000000a", "a"), pending(1, "0000000b", "no live host fits")]),
        ));
        assert_eq!(event_names(&state, "web"), [(10, "placed")]);
        assert_eq!(event_names(&state, "web/1"), [(10, "pending")]);

        let placed = Command::PlaceInstances {
            name: "web".to_owned(),
            instances: vec![on_host(1, "0000000b", "b")],
        };
        state.apply(&stamped(20, placed));
        assert_eq!(event_names(&state, "web/1"), [(10, "pending"), (20, "placed")]);

        // Wire numbers of `colex_proto::SiloState`: 2 STARTING, 3 UP, 4 EXITED, 5 FAILED.
        state.apply(&stamped(30, report("a", "0000000a", 3, None, 0)));
        state.apply(&stamped(40, report("a", "0000000a", 2, Some(3), 1)));
        state.apply(&stamped(50, report("a", "0000000a", 3, Some(3), 1)));
        state.apply(&stamped(60, report("a", "0000000a", 4, Some(3), 1)));
        assert_eq!(
            event_names(&state, "web"),
            [
                (10, "placed"),
                (30, "started"),
                (40, "exited"),
                (40, "restarted"),
                (50, "started"),
                (60, "exited")
            ]
        );
        state.apply(&stamped(65, report("b", "0000000b", 5, None, 0)));
        assert_eq!(event_names(&state, "web/1").last(), Some(&(65, "failed")));

        let replace = put_instances(2, vec![on_host(1, "0000001b", "c")]);
        state.apply(&stamped(70, replace));
        let replaced = event_names(&state, "web/1");
        assert_eq!(replaced[replaced.len() - 2..], [(70, "replaced"), (70, "placed")]);
        assert_eq!(
            state.silos["web/1"].events.events().last().map(|event| event.kind.describe()),
            Some("placed on c".to_owned())
        );

        state.apply(&stamped(80, Command::StopSilo { name: "web".to_owned() }));
        assert_eq!(event_names(&state, "web").last(), Some(&(80, "stopping")));
        state.apply(&stamped(90, Command::StopSilo { name: "web".to_owned() }));
        assert_eq!(
            event_names(&state, "web").iter().filter(|(_, name)| *name == "stopping").count(),
            1,
            "a second stop adds no event"
        );
    }

    #[test]
    fn unstamped_commands_have_unknown_time() {
        let mut state = ClusterState::default();
        state.apply(&put_instances(1, vec![on_host(0, "0000000a", "a")]));
        assert_eq!(event_names(&state, "web"), [(0, "placed")]);
    }

    #[test]
    fn host_loss_then_placed_again() {
        let mut state = three_instances();
        assert!(state.record_host_lost("web/1", "b"));
        assert!(!state.record_host_lost("web/9", "b"));
        state.apply(&put_instances(3, vec![pending(1, "0000001b", "no live host fits")]));
        let placed = Command::PlaceInstances {
            name: "web".to_owned(),
            instances: vec![on_host(1, "0000001b", "c")],
        };
        state.apply(&placed);
        let names: Vec<&str> = event_names(&state, "web/1").into_iter().map(|(_, name)| name).collect();
        assert_eq!(names, ["placed", "host-lost", "pending", "placed-again"]);
        assert_eq!(
            state.silos["web/1"].events.events().last().map(|event| event.kind.describe()),
            Some("placed again on c".to_owned())
        );
    }

    #[test]
    fn event_log_is_bounded_per_instance() {
        let mut state = three_instances();
        for restarts in 1..=40 {
            state.apply(&stamped(u64::from(restarts), report("a", "0000000a", 2, Some(3), restarts)));
            state.apply(&stamped(u64::from(restarts), report("a", "0000000a", 3, Some(3), restarts)));
        }
        let events = state.silos["web"].events.events();
        assert_eq!(events.len(), crate::events::MAX_EVENTS_PER_INSTANCE);
        assert_eq!(events.last().map(|event| event.at_unix_ms), Some(40));
    }

    #[test]
    fn rows_without_events_decode() {
        let old_row = r#"{"name":"web","index":1,"id":"3938a44e","generation":4,"spec":[1],"host":"a","desired":"Run","status":null,"pending_reason":null,"next_spec":null}"#;
        let record: SiloRecord = serde_json::from_str(old_row).expect("decode a row without events");
        assert!(record.events.events().is_empty());

        let mut state = three_instances();
        state.apply(&stamped(5, report("a", "0000000a", 3, None, 0)));
        let row = serde_json::to_string(&state.silos["web"]).expect("encode a row");
        let decoded: SiloRecord = serde_json::from_str(&row).expect("decode a row with events");
        assert_eq!(decoded, state.silos["web"]);

        let snapshot = serde_json::to_vec(&state).expect("encode a snapshot");
        let restored: ClusterState = serde_json::from_slice(&snapshot).expect("decode a snapshot");
        assert_eq!(restored, state);
    }

    #[test]
    fn stamped_command_applies_its_command() {
        let mut state = ClusterState::default();
        let (response, changes) = state.apply(&stamped(7, put_instances(1, vec![on_host(0, "0000000a", "a")])));
        assert_eq!(response, Response::InstancesStored { stopping: 0 });
        assert_eq!(changes, vec![Change::Silo("web".to_owned())]);
        assert_eq!(state.applying_at_unix_ms, 0, "the time is reset after apply");

        let entry = serde_json::to_string(&stamped(7, Command::StopSilo { name: "web".to_owned() })).expect("encode");
        let decoded: Command = serde_json::from_str(&entry).expect("decode a stamped log entry");
        assert!(matches!(decoded, Command::Stamped { at_unix_ms: 7, .. }));
    }
}
