//! [`RaftNode`]: opens the stores in a data directory, starts Raft and serves writes and reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, InitializeError,
};
use openraft::metrics::WaitError;
use openraft::{Config, ConfigError, ServerState, SnapshotPolicy};
use redb::Database;
use tokio::sync::{watch, Mutex, RwLock};

use super::join::{self, JoinError};
use super::leader::LeaderRoute;
use super::log_store::{LogStore, LogStoreError};
use super::network::NetworkFactory;
use super::state_machine::{StateMachineError, StateMachineStore};
use super::{Node, NodeId, TypeConfig};
use crate::applied::AppliedState;
use crate::state::{Command, Response};

/// File holding the Raft vote and the last purged log id. The log entries are in
/// `raft-log.entries` beside it.
pub const LOG_FILE_NAME: &str = "raft-log.redb";
/// File holding the applied state, the membership and the current snapshot.
pub const STATE_FILE_NAME: &str = "state.redb";
/// File holding this node's Raft id in decimal.
pub const NODE_ID_FILE_NAME: &str = "node-id";
/// Id of the first node of a new cluster.
const FIRST_NODE_ID: NodeId = 1;
/// How often the term and leader are read for the log.
const LEADER_LOG_INTERVAL: Duration = Duration::from_millis(100);

const CLUSTER_NAME: &str = "colex";
/// The leader's heartbeat period. openraft 0.9.25 also uses it as the timeout of each
/// AppendEntries RPC and of the heartbeat round behind a linearizable read, so it must cover a
/// loaded peer's round trip with its log fsync. Followers check their election timer every 1.5
/// heartbeats (150 ms).
///
/// NOTE: an AppendEntries that takes longer than this to encode, send and store times out and
/// is sent again, forever. With 100 ms, specs with 256 KiB of file contents still replicated on
/// a loaded 2-core VM, but 1 MiB stalled all writes, which 250 ms still replicated.
const HEARTBEAT_INTERVAL_MS: u64 = 100;
/// Range of each node's election timeout, drawn once when the node starts. A follower starts an
/// election when its leader was silent for openraft 0.9.25's leader lease (the maximum election
/// timeout) plus its own election timeout. That is 600 to 800 ms, six or more missed
/// heartbeats, so a short stall of a busy leader does not start an election.
const ELECTION_TIMEOUT_MIN_MS: u64 = 200;
const ELECTION_TIMEOUT_MAX_MS: u64 = 400;
/// Timeout of each snapshot chunk RPC. openraft's 200 ms default is too short for 1 MiB chunks
/// on a busy peer.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;
/// Size of one snapshot chunk, well below tonic's 4 MiB default message limit.
const SNAPSHOT_MAX_CHUNK_BYTES: u64 = 1024 * 1024;
/// Maximum number of log entries in one AppendEntries. A spec is at most 256 KiB
/// (`api::client::MAX_STORED_SPEC_BYTES`), about 350 KB in base64 JSON, so a batch stays near
/// 3 MB. openraft's default of 300 such entries would be about 100 MB in one request.
// NOTE: that 3 MB reach a follower within one heartbeat is an estimate. A benchmark with
// 250000-byte specs replicated and failed over (docs/benchmarks.md); full batches were not timed.
const MAX_PAYLOAD_ENTRIES: u64 = 8;
/// A snapshot is built after this many log entries since the last one.
const SNAPSHOT_EVERY_ENTRIES: u64 = 5000;

/// How long `open` waits for a node that is the only voter to become leader. One election
/// takes at most `ELECTION_TIMEOUT_MAX_MS`, and a sole voter wins the first one it starts.
const SOLE_VOTER_LEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `shutdown` waits for openraft's tasks to drop the stores and close the files.
const STORE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
const STORE_CLOSE_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Start mode of [`RaftNode::open`] for a node whose data directory contains no node id yet. A
/// data directory with a node id resumes that node and ignores the mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartMode {
    /// Start a new cluster with this node, id 1, as its only voter.
    Bootstrap,
    /// Ask a running member at one of these addresses (HOST:PORT) to add this node.
    Join(Vec<String>),
    /// Only resume; an empty data directory is an error.
    Resume,
}

/// Errors of [`RaftNode`].
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("failed to create data directory {path}")]
    CreateDataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read node id file {path}")]
    ReadNodeId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid node id {value:?} in {path}: expected a decimal number")]
    InvalidNodeId { path: PathBuf, value: String },
    #[error("node id file {path} is missing but {log_path} exists; restore the node id file")]
    MissingNodeId { path: PathBuf, log_path: PathBuf },
    #[error("failed to write node id file {path}")]
    WriteNodeId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {path} contains no controller; pass --bootstrap to start a new cluster or --join ADDR to join a running one")]
    NoCluster { path: PathBuf },
    #[error("failed to join the cluster")]
    Join(#[source] JoinError),
    #[error("failed to open the raft log")]
    OpenLog(#[source] LogStoreError),
    #[error("failed to open the state machine")]
    OpenStateMachine(#[source] StateMachineError),
    #[error("invalid raft config")]
    Config(#[source] Box<ConfigError>),
    #[error("failed to start raft")]
    Start(#[source] Fatal<NodeId>),
    #[error("failed to initialize the cluster with node {id}")]
    Initialize {
        id: NodeId,
        #[source]
        source: openraft::error::RaftError<NodeId, InitializeError<NodeId, Node>>,
    },
    #[error("node {id} did not become leader of its single-node cluster")]
    WaitForLeader {
        id: NodeId,
        #[source]
        source: WaitError,
    },
    /// This node is not the leader. `leader_id` and `leader_addr` name the leader when this node
    /// has heard from one, so the caller can send the request there.
    #[error("not the raft leader (leader: {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("raft write failed")]
    Write(#[source] openraft::error::RaftError<NodeId, ClientWriteError<NodeId, Node>>),
    #[error("raft read barrier failed")]
    ReadBarrier(#[source] openraft::error::RaftError<NodeId, CheckIsLeaderError<NodeId, Node>>),
    #[error("raft is not running")]
    Stopped(#[source] Fatal<NodeId>),
    #[error("failed to shut down raft")]
    Shutdown(#[source] tokio::task::JoinError),
}

impl RaftError {
    fn not_leader(forward: &ForwardToLeader<NodeId, Node>) -> RaftError {
        RaftError::NotLeader {
            leader_id: forward.leader_id,
            leader_addr: forward.leader_node.as_ref().map(|node| node.addr.clone()),
        }
    }
}

/// A running Raft node and the applied state it serves. Clones share the node.
#[derive(Clone)]
pub struct RaftNode {
    pub id: NodeId,
    pub raft: openraft::Raft<TypeConfig>,
    /// In-memory copy of the applied state, updated by the state machine after each apply
    /// (same lock order every time), read by the API without touching disk.
    pub state: Arc<RwLock<AppliedState>>,
    /// Last applied log index, bumped after every apply so API tasks can wait for changes.
    pub applied: watch::Receiver<u64>,
    /// Finds the leader for requests a follower forwards.
    pub leader: LeaderRoute,
    /// Held during every membership change this node makes, so they run one at a time.
    pub(super) membership_lock: Arc<Mutex<()>>,
    /// The store files, watched by `shutdown` until openraft has dropped them.
    databases: [Weak<Database>; 2],
}

impl RaftNode {
    /// Opens or creates the stores in `data_dir` and starts Raft.
    ///
    /// The node id is stored in `data_dir/node-id`. A data dir that has one resumes that node and
    /// ignores `start`. Otherwise [`StartMode::Bootstrap`] takes id 1 and calls `initialize` once
    /// with `{1: Node { addr: advertise_addr }}`, and [`StartMode::Join`] gets an id from the
    /// leader, which adds this node as a learner and replicates the log to it.
    ///
    /// A node whose membership has it as the only voter waits until it is leader, so writes work
    /// as soon as `open` returns.
    pub async fn open(data_dir: &Path, advertise_addr: &str, start: StartMode) -> Result<RaftNode, RaftError> {
        tokio::fs::create_dir_all(data_dir)
            .await
            .map_err(|source| RaftError::CreateDataDir {
                path: data_dir.to_owned(),
                source,
            })?;
        let (id, created) = match read_node_id(data_dir).await? {
            Some(id) => {
                if start != StartMode::Resume {
                    tracing::info!(node_id = id, data_dir = %data_dir.display(), "data directory already contains a node id; ignoring --bootstrap and --join");
                }
                (id, false)
            }
            None => {
                let id = match &start {
                    StartMode::Bootstrap => FIRST_NODE_ID,
                    StartMode::Join(addresses) => join::request_node_id(addresses, advertise_addr)
                        .await
                        .map_err(RaftError::Join)?,
                    StartMode::Resume => {
                        return Err(RaftError::NoCluster {
                            path: data_dir.to_owned(),
                        })
                    }
                };
                write_node_id(data_dir, id).await?;
                (id, true)
            }
        };

        // The leader replicates its appends while it syncs them; the state machine and the
        // followers' commit index wait for that sync (see `log_sync`).
        let log_store = LogStore::open(&data_dir.join(LOG_FILE_NAME))
            .await
            .map_err(RaftError::OpenLog)?
            .for_node(id);
        let log_sync = log_store.sync();
        let state_machine = StateMachineStore::open(&data_dir.join(STATE_FILE_NAME))
            .await
            .map_err(RaftError::OpenStateMachine)?
            .wait_for_log(log_sync.clone());
        let state = state_machine.shared_state();
        let applied = state_machine.subscribe_applied();
        let databases = [log_store.database_handle(), state_machine.database_handle()];

        let config = Arc::new(raft_config().map_err(RaftError::Config)?);
        let network = NetworkFactory::new().with_log_sync(log_sync);
        let raft = openraft::Raft::new(id, config, network, log_store, state_machine)
            .await
            .map_err(RaftError::Start)?;
        let node = RaftNode {
            id,
            leader: LeaderRoute::new(id, raft.clone()),
            raft,
            state,
            applied,
            membership_lock: Arc::default(),
            databases,
        };
        // Bootstrap initializes a node it has just created, or node 1 when a bootstrap stopped
        // between writing the node id and initializing. A joined node never initializes: the
        // leader's log brings it the membership.
        let bootstrap = start == StartMode::Bootstrap && (created || id == FIRST_NODE_ID);

        if let Err(error) = node.initialize_or_resume(data_dir, advertise_addr, bootstrap).await {
            // Stop Raft so it does not keep the store files open behind a failed `open`.
            if let Err(shutdown_error) = node.shutdown().await {
                tracing::warn!(node_id = id, %shutdown_error, "failed to stop raft after a failed open");
            }
            return Err(error);
        }
        node.spawn_promotion();
        node.spawn_leader_log();
        Ok(node)
    }

    /// Logs each new term with its leader, so elections show in the controller's log. The term
    /// is read every [`LEADER_LOG_INTERVAL`] instead of on every metrics change, which comes
    /// with every write. Terms only grow, so a read after an election finds a newer term, though
    /// two elections within one interval show as one.
    fn spawn_leader_log(&self) {
        let metrics = self.raft.metrics();
        let id = self.id;
        tokio::spawn(async move {
            let mut logged: Option<(u64, NodeId)> = None;
            let mut interval = tokio::time::interval(LEADER_LOG_INTERVAL);
            loop {
                interval.tick().await;
                // An error means that Raft stopped.
                if metrics.has_changed().is_err() {
                    return;
                }
                let (term, leader) = {
                    let current = metrics.borrow();
                    (current.current_term, current.current_leader)
                };
                // A term's leader becomes known after the term itself.
                let Some(leader) = leader else {
                    continue;
                };
                if logged != Some((term, leader)) {
                    tracing::info!(node_id = id, term, leader, "raft leader elected");
                    logged = Some((term, leader));
                }
            }
        });
    }

    /// Initializes a new cluster when the stores are empty and `bootstrap` is set, then waits for
    /// leadership when this node is the only voter.
    async fn initialize_or_resume(
        &self,
        data_dir: &Path,
        advertise_addr: &str,
        bootstrap: bool,
    ) -> Result<(), RaftError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(RaftError::Stopped)?;
        if initialized {
            tracing::info!(node_id = self.id, data_dir = %data_dir.display(), "restarted raft node");
            self.warn_if_address_changed(advertise_addr).await?;
        } else if !bootstrap {
            tracing::info!(
                node_id = self.id,
                "waiting for the leader to replicate the log to this learner"
            );
        } else {
            tracing::info!(
                node_id = self.id,
                advertise_addr,
                "initializing a new single-node cluster"
            );
            let members = BTreeMap::from([(
                self.id,
                Node {
                    addr: advertise_addr.to_owned(),
                },
            )]);
            self.raft
                .initialize(members)
                .await
                .map_err(|source| RaftError::Initialize {
                    id: self.id,
                    source,
                })?;
        }

        if self.is_sole_voter().await? {
            self.raft
                .wait(Some(SOLE_VOTER_LEADER_TIMEOUT))
                .state(ServerState::Leader, "sole voter becomes leader")
                .await
                .map_err(|source| RaftError::WaitForLeader {
                    id: self.id,
                    source,
                })?;
            tracing::info!(node_id = self.id, "raft node is leader");
        }
        Ok(())
    }

    /// Proposes a command, waits until it is applied and returns the state machine's response.
    /// A `ForwardToLeader` from openraft becomes [`RaftError::NotLeader`]. The API forwards whole
    /// client requests to the leader with [`LeaderRoute::forward`] before they get here.
    ///
    /// When this returns `Ok`, `state` already contains the command's effect.
    pub async fn write(&self, command: Command) -> Result<Response, RaftError> {
        // Only the leader's `client_write` succeeds, so the time in a committed entry is the
        // leader's clock. A clock before the epoch stamps 0, which shows as an unknown time.
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        let command = Command::Stamped {
            at_unix_ms,
            command: Box::new(command),
        };
        match self.raft.client_write(command).await {
            Ok(written) => Ok(written.data),
            Err(error) => match error.api_error() {
                Some(ClientWriteError::ForwardToLeader(forward)) => {
                    Err(RaftError::not_leader(forward))
                }
                _ => Err(RaftError::Write(error)),
            },
        }
    }

    /// Linearizable read barrier: `raft.ensure_linearizable()`, then the caller reads `state`.
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        match self.raft.ensure_linearizable().await {
            Ok(_read_log_id) => Ok(()),
            Err(error) => match error.api_error() {
                Some(CheckIsLeaderError::ForwardToLeader(forward)) => {
                    Err(RaftError::not_leader(forward))
                }
                _ => Err(RaftError::ReadBarrier(error)),
            },
        }
    }

    /// Stops Raft and waits until its tasks have closed the store files, so the same data
    /// directory can be opened again.
    pub async fn shutdown(&self) -> Result<(), RaftError> {
        self.raft.shutdown().await.map_err(RaftError::Shutdown)?;

        let deadline = tokio::time::Instant::now() + STORE_CLOSE_TIMEOUT;
        while self
            .databases
            .iter()
            .any(|database| database.strong_count() > 0)
        {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    node_id = self.id,
                    timeout = ?STORE_CLOSE_TIMEOUT,
                    "raft stores still open after shutdown"
                );
                break;
            }
            tokio::time::sleep(STORE_CLOSE_POLL_INTERVAL).await;
        }
        tracing::info!(node_id = self.id, "raft node shut down");
        Ok(())
    }

    /// Logs a warning when the membership records another address for this node than
    /// `advertise_addr`.
    ///
    /// NOTE: the membership is not updated, so peers keep using the recorded address until a
    /// membership change rewrites it.
    async fn warn_if_address_changed(&self, advertise_addr: &str) -> Result<(), RaftError> {
        let id = self.id;
        let recorded = self
            .raft
            .with_raft_state(move |raft_state| {
                let membership = raft_state.membership_state.effective().membership();
                membership.get_node(&id).map(|node| node.addr.clone())
            })
            .await
            .map_err(RaftError::Stopped)?;
        if let Some(recorded) = recorded.filter(|recorded| recorded != advertise_addr) {
            tracing::warn!(
                node_id = id,
                recorded_addr = %recorded,
                advertise_addr,
                "advertise address differs from the one in the raft membership, which peers still use"
            );
        }
        Ok(())
    }

    /// Returns whether this node is the only voter of its effective membership. The check runs
    /// inside openraft's core task, so it reads a membership that `initialize` has just written
    /// even when the metrics channel does not show it yet.
    async fn is_sole_voter(&self) -> Result<bool, RaftError> {
        let id = self.id;
        self.raft
            .with_raft_state(move |raft_state| {
                let mut voters = raft_state.membership_state.effective().voter_ids();
                voters.next() == Some(id) && voters.next().is_none()
            })
            .await
            .map_err(RaftError::Stopped)
    }
}

/// Returns the Raft configuration of every colex controller.
pub(super) fn raft_config() -> Result<Config, Box<ConfigError>> {
    Config {
        cluster_name: CLUSTER_NAME.to_owned(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_max_chunk_size: SNAPSHOT_MAX_CHUNK_BYTES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY_ENTRIES),
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Config::default()
    }
    .validate()
    .map_err(Box::new)
}

/// Reads the node id from `data_dir/node-id`; `None` for a new data directory.
async fn read_node_id(data_dir: &Path) -> Result<Option<NodeId>, RaftError> {
    let path = data_dir.join(NODE_ID_FILE_NAME);
    match tokio::fs::read_to_string(&path).await {
        Ok(text) => {
            let value = text.trim();
            value.parse().map(Some).map_err(|_| RaftError::InvalidNodeId {
                path: path.clone(),
                value: value.to_owned(),
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // A log without an id would restart under a guessed id, which could make this node
            // vote as another member. Return an error instead.
            let log_path = data_dir.join(LOG_FILE_NAME);
            if tokio::fs::try_exists(&log_path).await.unwrap_or(true) {
                return Err(RaftError::MissingNodeId { path, log_path });
            }
            Ok(None)
        }
        Err(source) => Err(RaftError::ReadNodeId { path, source }),
    }
}

/// Writes `id` to `data_dir/node-id` durably: a temporary file, fsynced, renamed into place,
/// then the directory fsynced so the rename survives a crash.
async fn write_node_id(data_dir: &Path, id: NodeId) -> Result<(), RaftError> {
    let path = data_dir.join(NODE_ID_FILE_NAME);
    let dir = data_dir.to_owned();
    let target = path.clone();
    let result = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;

        let temporary = dir.join(format!("{NODE_ID_FILE_NAME}.tmp"));
        let mut file = std::fs::File::create(&temporary)?;
        writeln!(file, "{id}")?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })
    .await
    .unwrap_or_else(|join_error| Err(std::io::Error::other(join_error)));
    result.map_err(|source| RaftError::WriteNodeId { path, source })
}
