//! The agent's session with the controller: register the host, receive
//! assignments, run them on the runtime and report every silo's state,
//! apply restart policies, serve log requests, set the WireGuard mesh
//! device's peers to the list the controller sends, and feed the silos' DNS
//! resolver the controller's list of running instances. A lost session is
//! opened again with exponential backoff while the silos keep running.
//!
//! Silos outlive the agent: a stopping agent leaves them running. A starting
//! agent adopts them before its first Hello when it stored its subnet in an
//! earlier session (the `subnet` file in the state dir). The controller's
//! first assignments then keep or remove them and never start a second copy.
//! Nothing is started or stopped before those assignments.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use colex_proto as proto;
use colex_proto::agent_message::Kind as AgentKind;
use colex_proto::controller_message::Kind as ControllerKind;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use crate::blobs::ContentCache;
use crate::dns::{self, NameTable, Resolver, ResolverConfig, SharedNameTable};
use crate::host::HostFacts;
use crate::local::{self, LocalSilos, Operation};
use crate::mesh::{host_mesh, HostMesh};
use crate::metadata::{self, MetadataConfig, MetadataServer, SharedDirectory};
use crate::runtime::{ExecSessions, LogQuery, LogStreamKind, Runtime, RuntimeConfig, SiloExit, SiloStats, StopReport};

/// Interval of the heartbeats the controller uses to see that the agent is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Delay before a failed removal is tried again.
const REMOVE_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Delay before a peer list that failed to apply is applied again.
const MESH_RETRY_DELAY: Duration = Duration::from_secs(5);
/// File in the state dir that keeps the host's subnet from the last welcome, so a restarted
/// agent can start its runtime and adopt its silos before it reaches the controller.
const SUBNET_FILE: &str = "subnet";
/// Chunks of one log request queued between the runtime and the session.
const LOG_CHUNK_QUEUE_LEN: usize = 8;
const OUTBOUND_QUEUE_LEN: usize = 64;
/// Interval of the silo usage reports. `list` shows the CPU use averaged over one interval, so
/// 2 s keeps it a few seconds from the present while it smooths out short bursts. Each report
/// reads fewer than ten small cgroup and /proc files per running silo.
const STATS_INTERVAL: Duration = Duration::from_secs(2);

/// Settings of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Controller addresses as HOST:PORT, separated by commas; the session prefers the leader.
    pub controller: String,
    pub host_name: String,
    /// Address reported to the controller; detected when `None`.
    pub address: Option<String>,
    pub state_dir: PathBuf,
    /// Dir of the silos' records and leases; see [`RuntimeConfig::run_dir`].
    pub run_dir: PathBuf,
    pub bridge: String,
    pub helper_exe: PathBuf,
    pub busybox: PathBuf,
    /// Settings from the agent's configuration file (`--config`): images, binds, labels.
    pub settings: crate::config::AgentSettings,
    /// Failpoint the silo start path fails at (`COLEX_FAILPOINT`); tests only.
    pub failpoint: Option<String>,
}

/// The result of a runtime operation, sent back to the session loop.
enum Done {
    /// A start or an in-place restart finished.
    Started { id: String, result: Result<Vec<proto::Interface>, String> },
    Removed { id: String, result: Result<StopReport, String> },
    RetryRemove { id: String },
    /// The delay before a restart has passed.
    RestartDue { id: String, generation: u64 },
}

/// Reason one session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

pub struct Agent {
    config: AgentConfig,
    runtime: Option<Runtime>,
    exits: Option<mpsc::Receiver<SiloExit>>,
    silos: LocalSilos,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    shutdown: watch::Receiver<bool>,
    /// Log requests being served, by request id.
    log_tasks: HashMap<u64, tokio::task::AbortHandle>,
    /// Commands run in silos for `colex-cli exec`, by exec id.
    execs: ExecSessions,
    /// Silos whose last usage read failed, so a lasting failure is logged once, not every
    /// interval.
    usage_failures: Arc<Mutex<HashSet<String>>>,
    /// The WireGuard mesh device, created when `run` starts.
    mesh: Option<Arc<HostMesh>>,
    /// A peer list that failed to apply, and when to apply it again.
    mesh_retry: Option<(proto::Peers, tokio::time::Instant)>,
    /// Holds back the starts of assignments until their removals have finished.
    removal_gate: RemovalGate,
    /// Sessions that got as far as "session open"; `run` starts its backoff again after one.
    sessions_opened: u64,
    /// Names the DNS resolver answers: the controller's latest silo list and the config's
    /// `hostnames`. Kept while the controller is unreachable.
    names: SharedNameTable,
    /// The DNS resolver on the bridge address, started once the runtime made the bridge.
    resolver: Option<Resolver>,
    /// The controller's latest list of running instances, for the metadata service. Kept while
    /// the controller is unreachable.
    directory: SharedDirectory,
    /// The metadata service on the bridge address, started once the runtime made the bridge.
    metadata: Option<MetadataServer>,
    /// File contents of the silos' specs, fetched from the controller on demand.
    contents: ContentCache,
}

/// Orders the operations of assignments so that removals finish before anything else starts.
/// A host that returns from a network cut thus stops the copies the controller placed
/// elsewhere before it starts anything.
#[derive(Debug, Default)]
struct RemovalGate {
    /// Ids of the silos whose removal the assignments started and which has not finished yet.
    in_flight: HashSet<String>,
    /// Operations that wait until `in_flight` is empty.
    deferred: Vec<Operation>,
}

impl RemovalGate {
    /// Takes the operations of one set of assignments and returns those to launch now: every
    /// removal, and the others only when no removal is in flight. The rest wait.
    fn admit(&mut self, operations: Vec<Operation>) -> Vec<Operation> {
        let (mut now, others): (Vec<Operation>, Vec<Operation>) = operations
            .into_iter()
            .partition(|operation| matches!(operation, Operation::Remove { .. }));
        for removal in &now {
            if let Operation::Remove { id, .. } = removal {
                self.in_flight.insert(id.clone());
            }
        }
        if self.in_flight.is_empty() {
            now.extend(others);
        } else if !others.is_empty() {
            tracing::info!(removing = self.in_flight.len(), waiting = others.len(), "starts wait until the withdrawn silos are removed");
            self.deferred.extend(others);
        }
        now
    }

    /// Marks the removal of silo `id` finished, whether it succeeded or not, and returns the
    /// operations to launch now: the deferred ones once no removal is left. A failed removal
    /// is retried without holding back the starts any longer.
    fn removal_finished(&mut self, id: &str) -> Vec<Operation> {
        if !self.in_flight.remove(id) || !self.in_flight.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut self.deferred)
    }
}

impl Agent {
    pub fn new(config: AgentConfig, shutdown: watch::Receiver<bool>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let names = Arc::new(std::sync::RwLock::new(NameTable::new(&config.settings.hostnames)));
        let contents = ContentCache::new(&config.state_dir, &config.host_name);
        Self {
            config,
            runtime: None,
            exits: None,
            silos: LocalSilos::default(),
            done_tx,
            done_rx,
            shutdown,
            log_tasks: HashMap::new(),
            execs: ExecSessions::default(),
            usage_failures: Arc::default(),
            mesh: None,
            mesh_retry: None,
            removal_gate: RemovalGate::default(),
            sessions_opened: 0,
            names,
            resolver: None,
            directory: metadata::directory::shared(),
            metadata: None,
            contents,
        }
    }

    /// Runs sessions until shutdown is signalled. The silos keep running
    /// after it returns; `colex-agent teardown` removes them.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mesh_port = self.config.settings.effective_mesh_port();
        let mesh = HostMesh::start(&self.config.state_dir, mesh_port)
            .await
            .map_err(|error| anyhow::anyhow!(error).context("cannot create the WireGuard mesh device"))?;
        self.mesh = Some(Arc::new(mesh));

        crate::runtime::restore_cluster_network(&self.config.state_dir).await;
        match self.read_subnet().await {
            Some(subnet) => {
                if let Err(error) = self.ensure_runtime(&subnet).await {
                    tracing::warn!(%subnet, error = %format!("{error:#}"), "cannot start the runtime before the session; retrying after the welcome");
                }
                self.ensure_resolver().await;
                self.ensure_metadata().await;
                // The adopted silos reach other hosts again before the controller is reachable.
                if let Some(peers) = self.mesh.as_ref().and_then(|mesh| mesh.stored_peers()) {
                    self.apply_peers(peers).await;
                }
            }
            None => tracing::info!(host = %self.config.host_name, "no subnet known yet; the runtime starts after the first welcome"),
        }
        let mut backoff = INITIAL_BACKOFF;
        loop {
            // A session that opened was a success: the next try after it starts from the
            // shortest wait, so a new leader is reached well within the hosts' grace period.
            let opened_before = self.sessions_opened;
            let end = self.session().await;
            if self.sessions_opened != opened_before {
                backoff = INITIAL_BACKOFF;
            }
            let wait = jittered(backoff);
            match end {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost(reason) => {
                    tracing::warn!(controller = %self.config.controller, %reason, retry_in_ms = wait.as_millis() as u64, "controller session lost; retrying");
                }
            }
            if self.wait_offline(wait).await {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }

        self.resolver = None;
        self.metadata = None;
        // Dropping the device blocks until its threads end, about a second for the embedded one.
        if let Some(mesh) = self.mesh.take() {
            if tokio::task::spawn_blocking(move || drop(mesh)).await.is_err() {
                tracing::warn!("removing the mesh device panicked");
            }
        }
        let silos = self.silos.statuses().len();
        tracing::info!(host = %self.config.host_name, silos, "agent stopped; its silos keep running");
        Ok(())
    }

    async fn read_subnet(&self) -> Option<String> {
        let path = self.config.state_dir.join(SUBNET_FILE);
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Some(text.trim().to_owned()).filter(|subnet| !subnet.is_empty()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the stored subnet");
                None
            }
        }
    }

    /// Waits `delay` while still tracking silo exits and finished
    /// operations. Returns true when shutdown was signalled.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let deadline = tokio::time::sleep(delay);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return false,
                _ = self.shutdown.changed() => return true,
                Some(done) = self.done_rx.recv() => { self.finish(done); }
                Some(exit) = recv_exit(&mut self.exits) => { self.exit(exit); }
            }
        }
    }

    async fn session(&mut self) -> SessionEnd {
        let facts = match HostFacts::gather(&self.config).await {
            Ok(facts) => facts,
            Err(error) => return SessionEnd::Lost(format!("{error:#}")),
        };

        let (channel, controller) = match crate::controllers::connect(&self.config.controller).await {
            Ok(connected) => connected,
            Err(error) => return SessionEnd::Lost(error.to_string()),
        };
        self.contents.set_controller(channel.clone());
        let mut client = proto::agent_client::AgentClient::new(channel)
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);

        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE_LEN);
        let (wireguard_public_key, wireguard_endpoint, wireguard_backend) = self.mesh_identity(&facts.address);
        let hello = proto::Hello {
            name: self.config.host_name.clone(),
            address: facts.address,
            cpus: facts.cpus,
            memory_bytes: facts.memory_bytes,
            silos: self.silos.statuses(),
            images: self.config.settings.image_names(),
            bind_ids: self.config.settings.bind_ids(),
            labels: self.config.settings.labels.clone().into_iter().collect(),
            wireguard_public_key,
            wireguard_endpoint,
            wireguard_backend,
            assignment_changes: true,
        };
        if outbound.send(agent_message(AgentKind::Hello(hello))).await.is_err() {
            return SessionEnd::Lost("outbound queue closed".to_owned());
        }
        let mut inbound = match client.session(ReceiverStream::new(outbound_rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => return SessionEnd::Lost(format!("session rejected: {}", status.message())),
        };

        let subnet = match inbound.message().await {
            Ok(Some(proto::ControllerMessage {
                kind: Some(ControllerKind::Welcome(welcome)),
            })) => {
                crate::runtime::adopt_cluster_network(&self.config.state_dir, &welcome.cluster_network).await;
                welcome.subnet
            }
            Ok(_) => return SessionEnd::Lost("the controller did not send a welcome".to_owned()),
            Err(status) => return SessionEnd::Lost(format!("session rejected: {}", status.message())),
        };
        let started_now = self.runtime.is_none();
        if let Err(error) = self.ensure_runtime(&subnet).await {
            return SessionEnd::Lost(format!("cannot prepare the silo runtime: {error:#}"));
        }
        self.ensure_resolver().await;
        self.ensure_metadata().await;
        tracing::info!(host = %self.config.host_name, %controller, %subnet, "session open");
        self.sessions_opened += 1;
        if started_now {
            // The Hello went out before the runtime adopted anything: report the adopted silos
            // now, before any assignment is acted on.
            for status in self.silos.statuses() {
                if outbound.send(agent_message(AgentKind::Status(status))).await.is_err() {
                    return SessionEnd::Lost("outbound queue closed".to_owned());
                }
            }
        }

        let end = self.session_loop(&mut inbound, &outbound).await;
        for (_, task) in self.log_tasks.drain() {
            task.abort();
        }
        self.execs.cancel_all();
        end
    }

    /// Starts and removes silos so the local ones match `assigned`, and reports the silos that
    /// entered STARTING or STOPPING at once.
    async fn apply_assignments(
        &mut self,
        assigned: &BTreeMap<String, proto::Assignment>,
        outbound: &mpsc::Sender<proto::AgentMessage>,
    ) -> Result<(), SessionEnd> {
        let assignments: Vec<&proto::Assignment> = assigned.values().collect();
        let operations = self.silos.reconcile_set(&assignments);
        for operation in self.removal_gate.admit(operations) {
            self.launch(operation);
        }
        self.prune_contents();
        for status in self.silos.statuses() {
            if outbound.send(agent_message(AgentKind::Status(status))).await.is_err() {
                return Err(SessionEnd::Lost("outbound queue closed".to_owned()));
            }
        }
        Ok(())
    }

    async fn session_loop(
        &mut self,
        inbound: &mut tonic::Streaming<proto::ControllerMessage>,
        outbound: &mpsc::Sender<proto::AgentMessage>,
    ) -> SessionEnd {
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        let mut usage_tick = tokio::time::interval(STATS_INTERVAL);
        usage_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Contains the task that reads and sends the current usage report, at most one. Dropping
        // the set when the session ends aborts it.
        let mut usage_report: JoinSet<()> = JoinSet::new();
        // The set of this session's controller, by silo id: the last Assignments with the
        // AssignmentChanges after it applied. The controller sends the whole set first.
        let mut assigned: BTreeMap<String, proto::Assignment> = BTreeMap::new();
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return SessionEnd::Shutdown,
                message = inbound.message() => match message {
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::Assignments(assignments)) })) => {
                        tracing::info!(silos = assignments.silos.len(), "assignments received");
                        assigned = assignments.silos.into_iter().map(|assignment| (assignment.silo_id.clone(), assignment)).collect();
                        if let Err(end) = self.apply_assignments(&assigned, outbound).await {
                            return end;
                        }
                    }
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::AssignmentChanges(changes)) })) => {
                        tracing::info!(
                            upserted = changes.upserted.len(),
                            removed = changes.removed_silo_ids.len(),
                            "assignment changes received"
                        );
                        for id in &changes.removed_silo_ids {
                            assigned.remove(id);
                        }
                        for assignment in changes.upserted {
                            assigned.insert(assignment.silo_id.clone(), assignment);
                        }
                        if let Err(end) = self.apply_assignments(&assigned, outbound).await {
                            return end;
                        }
                    }
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::Peers(peers)) })) => {
                        self.apply_peers(peers).await;
                    }
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::Names(names)) })) => {
                        self.set_names(&names);
                    }
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::LogsRequest(request)) })) => {
                        self.serve_logs(request, outbound.clone());
                    }
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::LogsCancel(cancel)) })) => {
                        if let Some(task) = self.log_tasks.remove(&cancel.request_id) {
                            task.abort();
                        }
                    }
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::ExecStart(start)) })) => {
                        self.execs.start(self.runtime.clone(), start, outbound.clone());
                    }
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::ExecInput(input)) })) => {
                        self.execs.input(input);
                    }
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::ExecCancel(cancel)) })) => {
                        self.execs.cancel(cancel.exec_id);
                    }
                    Ok(Some(other)) => tracing::warn!(?other, "unexpected controller message ignored"),
                    Ok(None) => return SessionEnd::Lost("the controller ended the session".to_owned()),
                    Err(status) => return SessionEnd::Lost(format!("stream error: {}", status.message())),
                },
                Some(done) = self.done_rx.recv() => {
                    if let Some(status) = self.finish(done) {
                        if outbound.send(agent_message(AgentKind::Status(status))).await.is_err() {
                            return SessionEnd::Lost("outbound queue closed".to_owned());
                        }
                    }
                }
                Some(exit) = recv_exit(&mut self.exits) => {
                    if let Some(status) = self.exit(exit) {
                        if outbound.send(agent_message(AgentKind::Status(status))).await.is_err() {
                            return SessionEnd::Lost("outbound queue closed".to_owned());
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if outbound.send(agent_message(AgentKind::Heartbeat(proto::Heartbeat {}))).await.is_err() {
                        return SessionEnd::Lost("outbound queue closed".to_owned());
                    }
                    if let Some((peers, due)) = self.mesh_retry.take() {
                        if tokio::time::Instant::now() >= due {
                            self.apply_peers(peers).await;
                        } else {
                            self.mesh_retry = Some((peers, due));
                        }
                    }
                }
                _ = usage_tick.tick() => self.start_usage_report(&mut usage_report, outbound),
            }
        }
    }

    /// Returns the WireGuard public key, endpoint and backend for the Hello. The endpoint is
    /// the reported host address with the mesh port. All three are empty when `address` is not
    /// an IP address, so no other host tries to reach this one through the mesh.
    fn mesh_identity(&self, address: &str) -> (String, String, String) {
        let Some(mesh) = &self.mesh else {
            return Default::default();
        };
        let Ok(ip) = address.parse::<IpAddr>() else {
            tracing::error!(%address, "the host address is not an IP address, so the mesh endpoint is left out and other hosts cannot reach this host's silos; pass --address with an IP address");
            return Default::default();
        };
        let endpoint = SocketAddr::new(ip, mesh.listen_port());
        (mesh.public_key().to_string(), endpoint.to_string(), mesh.backend().to_string())
    }

    /// Sets the mesh device's peers and routes to the controller's peer list. A failure is
    /// retried after `MESH_RETRY_DELAY` unless a newer list arrives first.
    async fn apply_peers(&mut self, peers: proto::Peers) {
        self.mesh_retry = None;
        let (Some(mesh), Some(runtime)) = (self.mesh.clone(), self.runtime.as_ref()) else {
            return;
        };
        let gateway = runtime.config().gateway();
        let listed = peers.peers.len();
        match host_mesh::apply_in_background(mesh, gateway, peers.clone()).await {
            Ok(applied) => tracing::info!(listed, applied, "mesh peers applied"),
            Err(error) => {
                tracing::warn!(listed, %error, retry_in_s = MESH_RETRY_DELAY.as_secs(), "failed to apply the mesh peers; retrying");
                self.mesh_retry = Some((peers, tokio::time::Instant::now() + MESH_RETRY_DELAY));
            }
        }
    }

    /// Starts the DNS resolver on the bridge address once the runtime exists. A failure, such
    /// as another server bound to port 53 on every address, is logged, and the next session
    /// start tries again. The silos run meanwhile, but their names do not resolve.
    async fn ensure_resolver(&mut self) {
        if self.resolver.is_some() {
            return;
        }
        let Some(runtime) = self.runtime.as_ref() else {
            return;
        };
        let gateway = runtime.config().gateway();
        let config = ResolverConfig {
            listen: SocketAddr::new(IpAddr::V4(gateway), dns::DNS_PORT),
            upstreams: dns::upstream::read_resolv_conf(std::path::Path::new(dns::upstream::HOST_RESOLV_CONF)),
            upstream_timeout: dns::server::DEFAULT_UPSTREAM_TIMEOUT,
        };
        match Resolver::start(config, Arc::clone(&self.names)).await {
            Ok(resolver) => self.resolver = Some(resolver),
            Err(error) => tracing::error!(%error, "cannot start the DNS resolver, so silos cannot resolve names; retrying at the next session"),
        }
    }

    /// Starts the metadata service on the bridge address once the runtime exists, after the
    /// iptables rules that let the silos reach it. A failure is logged, and the next session
    /// start tries again. The silos run meanwhile, but nothing listens at `METADATA_ENDPOINT`.
    async fn ensure_metadata(&mut self) {
        if self.metadata.is_some() {
            return;
        }
        let Some(runtime) = self.runtime.as_ref() else {
            return;
        };
        let config = runtime.config();
        let (gateway, port) = (config.gateway(), config.metadata_port);
        if let Err(error) = crate::runtime::ensure_metadata_accept(gateway, &config.bridge, port).await {
            tracing::warn!(%error, "cannot add the iptables rules for the metadata service, so a firewall may drop the silos' requests and other interfaces may reach it");
        }
        let metadata_config = MetadataConfig {
            listen: SocketAddr::new(IpAddr::V4(gateway), port),
            host_name: self.config.host_name.clone(),
        };
        match MetadataServer::start(metadata_config, Arc::clone(&self.directory), runtime.clone()).await {
            Ok(server) => self.metadata = Some(server),
            Err(error) => tracing::error!(%error, "cannot start the metadata service; retrying at the next session"),
        }
    }

    /// Replaces the resolver's silo names and the metadata service's list with the controller's
    /// list.
    fn set_names(&self, names: &proto::Names) {
        self.directory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set_names(names);
        let mut table = self.names.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let invalid = table.set_names(names);
        if invalid > 0 {
            tracing::warn!(invalid, "silo names with invalid addresses skipped");
        }
        tracing::debug!(instances = names.names.len(), silos = table.silo_count(), "silo names updated");
    }

    /// Reads the usage of every running silo in a task of its own and sends it as one
    /// `SiloUsageReport`, even an empty one, so the controller drops the silos that stopped.
    /// Skips this interval while the last report is still being read.
    fn start_usage_report(&self, running_report: &mut JoinSet<()>, outbound: &mpsc::Sender<proto::AgentMessage>) {
        while running_report.try_join_next().is_some() {}
        if !running_report.is_empty() {
            tracing::warn!(interval_ms = STATS_INTERVAL.as_millis() as u64, "usage report skipped because the previous one is still reading silo stats");
            return;
        }
        let Some(runtime) = self.runtime.clone() else {
            return;
        };
        let running: Vec<(String, u64)> = self
            .silos
            .statuses()
            .into_iter()
            .filter(|status| status.state() == proto::SiloState::Up)
            .map(|status| (status.silo_id, status.generation))
            .collect();
        let failures = Arc::clone(&self.usage_failures);
        let outbound = outbound.clone();
        running_report.spawn(async move {
            let report = read_usage(&runtime, running, &failures).await;
            // A closed queue means that the session ended, which the session loop reports.
            let _ = outbound.send(agent_message(AgentKind::UsageReport(report))).await;
        });
    }

    /// Starts the runtime, from the stored subnet or on the first welcome,
    /// and takes over the silos it adopted. Later welcomes must carry the
    /// same subnet, because running silos hold addresses from it.
    async fn ensure_runtime(&mut self, subnet: &str) -> anyhow::Result<()> {
        if let Some(runtime) = &self.runtime {
            let running = runtime.config().subnet.to_string();
            if running != subnet {
                tracing::error!(%running, welcome = %subnet, "the controller assigns another subnet than the one the silos use; keeping the running one");
            }
            return Ok(());
        }
        let mut config = RuntimeConfig::new(
            self.config.host_name.clone(),
            self.config.state_dir.clone(),
            self.config.bridge.clone(),
            subnet.parse()?,
            self.config.helper_exe.clone(),
        );
        config.run_dir = self.config.run_dir.clone();
        config.busybox = self.config.busybox.clone();
        config.images = self.config.settings.images.clone();
        config.binds = self.config.settings.binds.clone();
        config.pids_limit = self.config.settings.effective_pids_limit(config.pids_limit);
        config.failpoint = self.config.failpoint.clone();
        config.set_user_namespaces(!self.config.settings.disable_user_namespaces);
        config.metadata_port = self.config.settings.effective_metadata_port();
        // Before the runtime makes the bridge, so the rules exist once the bridge does.
        if let Err(error) = crate::runtime::ensure_dns_accept(config.gateway(), &config.bridge).await {
            tracing::warn!(%error, "cannot add the iptables rules that accept silo DNS queries, so a firewall that drops them stays in the way");
        }
        if let Err(error) = crate::runtime::ensure_forward_accept(&config.bridge).await {
            tracing::warn!(%error, "cannot add the iptables rules that accept forwarded silo traffic, so a FORWARD policy of DROP cuts the silos off");
        }
        let (runtime, exits) = Runtime::start(config).await?;
        let adopted = runtime.silos();
        tracing::info!(host = %self.config.host_name, adopted = adopted.len(), "silo runtime ready");
        self.silos.adopt(&adopted);
        self.runtime = Some(runtime);
        self.exits = Some(exits);
        let path = self.config.state_dir.join(SUBNET_FILE);
        if let Err(error) = tokio::fs::write(&path, format!("{subnet}\n")).await {
            tracing::warn!(path = %path.display(), %error, "cannot store the subnet; a restarted agent adopts its silos only after the welcome");
        }
        Ok(())
    }

    /// Streams the logs of one silo to the controller in a task of its own,
    /// ending with a chunk that has `end` set.
    fn serve_logs(&mut self, request: proto::AgentLogsRequest, outbound: mpsc::Sender<proto::AgentMessage>) {
        self.log_tasks.retain(|_, task| !task.is_finished());
        let request_id = request.request_id;
        let Some(runtime) = self.runtime.clone() else {
            let chunk = log_chunk(request_id, Vec::new(), true, Some("the agent's runtime is not ready yet".to_owned()));
            tokio::spawn(async move {
                let _ = outbound.send(chunk).await;
            });
            return;
        };
        let stream = match proto::LogStream::try_from(request.stream) {
            Ok(proto::LogStream::Stderr) => LogStreamKind::Stderr,
            _ => LogStreamKind::Stdout,
        };
        let query = LogQuery {
            tail_lines: request.tail_lines,
            follow: request.follow,
        };
        tracing::info!(silo_id = %request.silo_id, request_id, ?stream, follow = query.follow, "serving logs");
        let task = tokio::spawn(async move {
            let (sink, mut chunks) = mpsc::channel(LOG_CHUNK_QUEUE_LEN);
            let reader = {
                let silo_id = request.silo_id.clone();
                async move { runtime.stream_logs(&silo_id, stream, query, &sink).await }
            };
            let forward = async {
                while let Some(data) = chunks.recv().await {
                    if outbound.send(log_chunk(request_id, data, false, None)).await.is_err() {
                        return;
                    }
                }
            };
            let (result, ()) = tokio::join!(reader, forward);
            let error = result.err().map(|error| error.to_string());
            let _ = outbound.send(log_chunk(request_id, Vec::new(), true, error)).await;
        });
        self.log_tasks.insert(request_id, task.abort_handle());
    }

    /// Runs one operation in a task of its own; its result comes back
    /// through `done_rx`.
    fn launch(&self, operation: Operation) {
        let Some(runtime) = self.runtime.clone() else {
            tracing::error!(?operation, "no runtime yet; operation dropped");
            return;
        };
        let done = self.done_tx.clone();
        let contents = self.contents.clone();
        tokio::spawn(async move {
            let message = match operation {
                Operation::Run { id, generation, mut spec } => {
                    tracing::info!(silo = %spec.name, silo_id = %id, generation, "starting silo");
                    // A content that cannot be fetched after a few tries fails the start with
                    // the reason, instead of an empty file. An `up` that replaces the failed
                    // instance tries again.
                    let filled = contents
                        .fill_retrying(&mut spec, crate::blobs::FILL_ATTEMPTS, crate::blobs::FILL_RETRY_DELAY)
                        .await;
                    let result = match filled {
                        Ok(()) => runtime
                            .run_silo(&id, generation, &spec)
                            .await
                            .map_err(|error| error.to_string()),
                        Err(error) => Err(error.to_string()),
                    };
                    match &result {
                        Ok(_) => tracing::info!(silo = %spec.name, silo_id = %id, "silo up"),
                        Err(error) => tracing::warn!(silo = %spec.name, silo_id = %id, %error, "silo failed to start"),
                    }
                    Done::Started { id, result }
                }
                Operation::Remove { id, kill_timeout } => {
                    tracing::info!(silo_id = %id, kill_timeout_ms = kill_timeout.as_millis() as u64, "removing silo");
                    let result = runtime
                        .remove_silo(&id, kill_timeout)
                        .await
                        .map_err(|error| error.to_string());
                    Done::Removed { id, result }
                }
                Operation::ScheduleRestart { id, generation, delay } => {
                    tracing::info!(silo_id = %id, generation, delay_ms = delay.as_millis() as u64, "restart scheduled");
                    tokio::time::sleep(delay).await;
                    Done::RestartDue { id, generation }
                }
                Operation::Restart { id, generation, spec, restarts } => {
                    tracing::info!(silo = %spec.name, silo_id = %id, generation, restarts, "restarting silo");
                    let result = runtime
                        .restart_silo(&id, generation, &spec, restarts)
                        .await
                        .map_err(|error| error.to_string());
                    if let Err(error) = &result {
                        tracing::warn!(silo = %spec.name, silo_id = %id, %error, "silo failed to restart");
                    }
                    Done::Started { id, result }
                }
            };
            // The receiver lives as long as the `Agent` value, so a send fails
            // only after the agent stopped. Its silos keep running then.
            let _ = done.send(message);
        });
    }

    /// Applies a finished operation to the table; returns the status to report.
    fn finish(&mut self, done: Done) -> Option<proto::SiloStatus> {
        match done {
            Done::Started { id, result } => {
                if let Some(follow_up) = self.silos.started(&id, result) {
                    self.launch(follow_up);
                }
                self.silos.get(&id).map(local::status_of)
            }
            Done::Removed { id, result: Ok(report) } => {
                tracing::info!(silo_id = %id, exit_code = ?report.exit_code, how = %report.message, "silo removed");
                self.silos.removed(&id, Ok(()));
                self.prune_contents();
                for operation in self.removal_gate.removal_finished(&id) {
                    self.launch(operation);
                }
                Some(local::removed_status(&id, report.exit_code, report.message))
            }
            Done::Removed { id, result: Err(error) } => {
                tracing::warn!(silo_id = %id, %error, retry_in_s = REMOVE_RETRY_DELAY.as_secs(), "silo removal failed; retrying");
                self.silos.removed(&id, Err(error));
                for operation in self.removal_gate.removal_finished(&id) {
                    self.launch(operation);
                }
                let done = self.done_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(REMOVE_RETRY_DELAY).await;
                    let _ = done.send(Done::RetryRemove { id });
                });
                None
            }
            Done::RetryRemove { id } => {
                let kill_timeout = self
                    .silos
                    .get(&id)
                    .map_or(local::DEFAULT_KILL_TIMEOUT, |silo| silo.kill_timeout);
                self.launch(Operation::Remove {
                    id: id.clone(),
                    kill_timeout,
                });
                self.silos.get(&id).map(local::status_of)
            }
            Done::RestartDue { id, generation } => {
                let restart = self.silos.restart_due(&id, generation)?;
                self.launch(restart);
                self.silos.get(&id).map(local::status_of)
            }
        }
    }

    /// Deletes, in a task of its own, the cached file contents that no local silo's spec uses.
    fn prune_contents(&self) {
        let needed = crate::blobs::content_hashes(self.silos.specs());
        let contents = self.contents.clone();
        tokio::spawn(async move {
            let deleted = contents.prune(&needed).await;
            if deleted > 0 {
                tracing::info!(deleted, kept = needed.len(), "unused cached file contents deleted");
            }
        });
    }

    fn exit(&mut self, exit: SiloExit) -> Option<proto::SiloStatus> {
        tracing::info!(silo_id = %exit.silo_id, generation = exit.generation, exit_code = exit.exit_code, reason = ?exit.reason, "silo program exited");
        let (reported, restart) = self.silos.exited(&exit.silo_id, exit.generation, exit.exit_code, exit.reason);
        if let Some(restart) = restart {
            self.launch(restart);
        }
        if reported {
            self.silos.get(&exit.silo_id).map(local::status_of)
        } else {
            None
        }
    }
}

/// Builds a log chunk message; `end` is set on the last one of a request, which carries the
/// error if the request failed.
fn log_chunk(request_id: u64, data: Vec<u8>, end: bool, error: Option<String>) -> proto::AgentMessage {
    agent_message(AgentKind::LogChunk(proto::AgentLogChunk {
        request_id,
        data,
        end,
        error: error.unwrap_or_default(),
    }))
}

/// Reads the usage of the `running` silos (id and generation). A silo whose usage cannot be
/// read is left out of the report and logged with its id: at warn level when it starts failing,
/// at debug level while it keeps failing.
async fn read_usage(
    runtime: &Runtime,
    running: Vec<(String, u64)>,
    failures: &Mutex<HashSet<String>>,
) -> proto::SiloUsageReport {
    let sampled_at_unix_ms = unix_millis(SystemTime::now()).unwrap_or(0);
    let mut silos = Vec::with_capacity(running.len());
    let mut failed = HashSet::new();
    for (silo_id, generation) in running {
        match runtime.stats(&silo_id).await {
            Ok(stats) => silos.push(usage_sample(silo_id, generation, &stats)),
            Err(error) => {
                failed.insert(silo_id.clone());
                let already_failing = lock_failures(failures).contains(&silo_id);
                if already_failing {
                    tracing::debug!(%silo_id, %error, "failed to read silo usage again, so it is left out of the report");
                } else {
                    tracing::warn!(%silo_id, %error, "failed to read silo usage, so it is left out of the report");
                }
            }
        }
    }
    let mut failures = lock_failures(failures);
    for recovered in failures.difference(&failed) {
        if silos.iter().any(|sample| &sample.silo_id == recovered) {
            tracing::info!(silo_id = %recovered, "silo usage readable again");
        }
    }
    *failures = failed;
    proto::SiloUsageReport {
        sampled_at_unix_ms,
        silos,
    }
}

fn lock_failures(failures: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    // The set only steers log levels, so the contents of a poisoned lock are still usable.
    failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn usage_sample(silo_id: String, generation: u64, stats: &SiloStats) -> proto::SiloUsageSample {
    proto::SiloUsageSample {
        silo_id,
        generation,
        cpu_usec: stats.cpu_usec,
        memory_bytes: stats.memory_bytes,
        processes: stats.processes,
        rx_bytes: stats.rx_bytes,
        tx_bytes: stats.tx_bytes,
        started_at_unix_ms: stats.started_at.and_then(unix_millis),
    }
}

/// Returns `time` in milliseconds since the Unix epoch, or `None` for a time before it.
fn unix_millis(time: SystemTime) -> Option<u64> {
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    u64::try_from(since_epoch.as_millis()).ok()
}

/// Returns a random wait between half of `backoff` and all of it. After a leader change every
/// agent loses its session at once, and the spread keeps their reconnects and TLS handshakes
/// from reaching the new leader in one burst.
fn jittered(backoff: Duration) -> Duration {
    backoff.mul_f64(rand::random_range(0.5..=1.0))
}

fn agent_message(kind: AgentKind) -> proto::AgentMessage {
    proto::AgentMessage { kind: Some(kind) }
}

/// Receives the next silo exit, or waits forever while there is no runtime.
async fn recv_exit(exits: &mut Option<mpsc::Receiver<SiloExit>>) -> Option<SiloExit> {
    match exits {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jittered_wait_stays_within_half_and_whole() {
        for _ in 0..1000 {
            let wait = jittered(MAX_BACKOFF);
            assert!(wait >= MAX_BACKOFF / 2, "{wait:?} is below half of {MAX_BACKOFF:?}");
            assert!(wait <= MAX_BACKOFF, "{wait:?} is above {MAX_BACKOFF:?}");
        }
    }

    fn run(id: &str) -> Operation {
        Operation::Run {
            id: id.to_owned(),
            generation: 1,
            spec: Box::default(),
        }
    }

    fn remove(id: &str) -> Operation {
        Operation::Remove {
            id: id.to_owned(),
            kill_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn gate_launches_starts_after_removals() {
        let mut gate = RemovalGate::default();
        let now = gate.admit(vec![remove("old1"), run("new"), remove("old2")]);
        assert_eq!(now, [remove("old1"), remove("old2")]);
        assert!(gate.removal_finished("old1").is_empty(), "old2 is still being removed");
        assert!(gate.removal_finished("unknown").is_empty());
        assert_eq!(gate.removal_finished("old2"), [run("new")]);
        assert!(gate.removal_finished("old2").is_empty(), "launched once");
    }

    #[test]
    fn gate_passes_starts_without_removals() {
        let mut gate = RemovalGate::default();
        assert_eq!(gate.admit(vec![run("a"), run("b")]), [run("a"), run("b")]);
    }

    #[test]
    fn gate_holds_later_starts_too() {
        let mut gate = RemovalGate::default();
        gate.admit(vec![remove("old")]);
        assert!(gate.admit(vec![run("a")]).is_empty(), "a removal is still in flight");
        assert_eq!(gate.removal_finished("old"), [run("a")]);
    }
}
