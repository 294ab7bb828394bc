//! The `Agent` service: one long-lived session per agent.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use colex_proto as proto;
use colex_proto::agent_message::Kind as AgentKind;
use colex_proto::controller_message::Kind as ControllerKind;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::exec::ExecRouter;
use crate::api::logs::LogRouter;
use crate::api::unavailable;
use crate::api::session_view::{self, peers_of, SentAssignments, SessionViews};
use crate::applied::HostVersion;
use crate::names::differ_beyond_usage;
use crate::raft::RaftNode;
use crate::sessions::Sessions;
use crate::state::{Command, Desired, HostAttributes, Response as StateResponse, SiloRecord, SiloStatus};

/// Pause between an applied change and the session's message about it. It is shorter than
/// any start of a silo, and the tokio timer rounds it up to a whole millisecond.
const CHANGE_PAUSE: Duration = Duration::from_micros(200);

/// A session with no message from the agent for this long is closed and
/// its host counts as down. Agents send a heartbeat every second.
const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages queued for one agent before the session task waits.
const OUTBOUND_QUEUE_LEN: usize = 16;
/// Shortest interval between two silo name lists that differ only in the silos' usage fields.
/// The network counters that the metadata service reports for silos on other hosts are thus at
/// most this old plus the agents' 2 s usage interval. Any other change is sent at once.
// NOTE: counters change with every report, so each agent receives the whole list once per
// interval: about 200 bytes per running instance (an estimate for short names).
const NAMES_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

type ControllerStream = Pin<Box<dyn Stream<Item = Result<proto::ControllerMessage, Status>> + Send>>;

pub struct AgentService {
    node: RaftNode,
    sessions: Sessions,
    /// Turns true when the controller stops, so sessions end and the
    /// server's graceful shutdown does not wait for agents forever.
    stopping: watch::Receiver<bool>,
    logs: LogRouter,
    execs: ExecRouter,
    /// Shared view of the applied state that the sessions send from, built once per change.
    views: SessionViews,
}

impl AgentService {
    pub fn new(node: RaftNode, sessions: Sessions, logs: LogRouter, stopping: watch::Receiver<bool>) -> Self {
        Self {
            node,
            sessions,
            stopping,
            logs,
            execs: ExecRouter::default(),
            views: SessionViews::default(),
        }
    }

    /// Routes execs through `execs`, the router the `Exec` service opens them on.
    pub fn with_execs(mut self, execs: ExecRouter) -> Self {
        self.execs = execs;
        self
    }
}

#[tonic::async_trait]
impl proto::agent_server::Agent for AgentService {
    type SessionStream = ControllerStream;

    async fn session(
        &self,
        request: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request.extensions().get::<colex_proto::pki::PeerIdentity>().cloned();
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(proto::AgentMessage {
                kind: Some(AgentKind::Hello(hello)),
            }) => hello,
            _ => return Err(Status::invalid_argument("the first message of a session must be Hello")),
        };
        if hello.name.is_empty() {
            return Err(Status::invalid_argument("Hello has an empty host name; start the agent with --name HOST"));
        }

        crate::auth::check_agent_name(peer.as_ref(), &hello.name)?;
        check_wireguard(&hello)?;

        let host = hello.name.clone();
        let registered = self
            .node
            .write(Command::RegisterHost {
                name: host.clone(),
                address: hello.address.clone(),
                cpus: hello.cpus,
                memory_bytes: hello.memory_bytes,
                attributes: HostAttributes {
                    images: hello.images.clone(),
                    bind_ids: hello.bind_ids.clone(),
                    labels: hello.labels.clone().into_iter().collect(),
                    wireguard_public_key: hello.wireguard_public_key.clone(),
                    wireguard_endpoint: hello.wireguard_endpoint.clone(),
                    wireguard_backend: hello.wireguard_backend.clone(),
                },
            })
            .await
            .map_err(|error| unavailable(&error))?;
        if let StateResponse::Rejected { reason } = registered {
            return Err(Status::resource_exhausted(reason));
        }
        let (subnet, cluster_network) = match self.node.state.read().await.hosts.get(&host) {
            Some(record) => (record.subnet_cidr(), record.network.cidr()),
            None => return Err(Status::internal(format!("host {host} is missing right after its registration"))),
        };
        tracing::info!(
            %host,
            address = %hello.address,
            %subnet,
            silos = hello.silos.len(),
            wireguard_endpoint = %hello.wireguard_endpoint,
            wireguard_backend = %hello.wireguard_backend,
            "agent session opened"
        );

        let session = Session {
            node: self.node.clone(),
            host: host.clone(),
            cpus: hello.cpus,
            assignment_changes: hello.assignment_changes,
            logs: self.logs.clone(),
            execs: self.execs.clone(),
            sessions: self.sessions.clone(),
            views: self.views.clone(),
        };
        session.forget_removed(&hello.silos).await?;
        for status in hello.silos {
            session.record(status).await?;
        }

        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE_LEN);
        let welcome = proto::ControllerMessage {
            kind: Some(ControllerKind::Welcome(proto::Welcome { subnet, cluster_network })),
        };
        outbound
            .send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("agent went away before the welcome"))?;

        let (token, replaced) = self.sessions.open(&host);
        let sessions = self.sessions.clone();
        let stopping = self.stopping.clone();
        let logs = self.logs.clone();
        let log_registration = logs.register_agent(&host, outbound.clone());
        let execs = self.execs.clone();
        let exec_registration = execs.register_agent(&host, outbound.clone());
        tokio::spawn(async move {
            let reason = session.run(inbound, outbound, replaced, stopping).await;
            logs.unregister_agent(&log_registration);
            execs.unregister_agent(&exec_registration);
            sessions.close(&token);
            tracing::info!(%host, %reason, "agent session closed");
        });

        Ok(Response::new(Box::pin(ReceiverStream::new(outbound_rx))))
    }
}

/// The controller side of one agent session.
struct Session {
    node: RaftNode,
    host: String,
    /// CPU count from the agent's Hello. CPU percents of the host's silos are shares of all of
    /// them.
    cpus: u32,
    /// The agent applies `AssignmentChanges` after the session's first `Assignments`.
    assignment_changes: bool,
    logs: LogRouter,
    execs: ExecRouter,
    /// The registry this session is in, for its usage store and for waking the pending
    /// placement task when a record is deleted.
    sessions: Sessions,
    views: SessionViews,
}

impl Session {
    /// Relays assignments to the agent and status reports to the state
    /// until the session ends; returns why it ended.
    async fn run(
        &self,
        mut inbound: Streaming<proto::AgentMessage>,
        outbound: mpsc::Sender<Result<proto::ControllerMessage, Status>>,
        mut replaced: watch::Receiver<bool>,
        mut stopping: watch::Receiver<bool>,
    ) -> String {
        let mut applied = self.node.applied.clone();
        // Journal position of the host's assignments when the last message about them was sent.
        let mut last_version: Option<HostVersion> = None;
        let mut sent = SentAssignments::default();
        let mut last_peers: Option<proto::Peers> = None;
        let mut last_all_peers: Option<Arc<Vec<proto::Peer>>> = None;
        let mut last_names: Option<Arc<proto::Names>> = None;
        // Only the leader tracks live hosts and places silos, so once another controller leads,
        // the session ends and the agent reconnects to that leader. No known leader (an
        // election in progress) keeps the session.
        //
        // The server metrics change only with the vote, the server state, the leader or the
        // membership. openraft 0.9.25 sends its full metrics on every turn of its core loop,
        // several times per write. A wait on those woke every session and copied the metrics
        // each time while the write's client waited.
        let id = self.node.id;
        let mut server_metrics = self.node.raft.server_metrics();
        let demoted = async move {
            // The channel closes when Raft stops, which ends the session with no leader named.
            server_metrics
                .wait_for(|metrics| metrics.current_leader.is_some_and(|leader| leader != id))
                .await
                .ok()
                .and_then(|metrics| metrics.current_leader)
        };
        tokio::pin!(demoted);
        // The names carry the silos' latest network counters, which change without a Raft
        // write. The loop also runs on this interval, so a list whose counters changed goes out
        // without waiting for a state change.
        let mut names_refresh = tokio::time::interval(NAMES_REFRESH_INTERVAL);
        names_refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_names_sent = Instant::now();

        loop {
            let index = *applied.borrow_and_update();
            let view = self.views.at_least(&self.node, self.sessions.usage(), index, NAMES_REFRESH_INTERVAL).await;

            // Peers go first, so the routes to other hosts exist before new silos start.
            let all_peers = view.peers();
            if last_all_peers.as_ref().is_none_or(|last| !Arc::ptr_eq(last, all_peers)) {
                let peers = peers_of(all_peers, &self.host);
                last_all_peers = Some(Arc::clone(all_peers));
                if last_peers.as_ref() != Some(&peers) {
                    tracing::info!(host = %self.host, peers = peers.peers.len(), "sending mesh peers");
                    let message = proto::ControllerMessage {
                        kind: Some(ControllerKind::Peers(peers.clone())),
                    };
                    if outbound.send(Ok(message)).await.is_err() {
                        return "the agent closed the stream".to_owned();
                    }
                    last_peers = Some(peers);
                }
            }

            // The whole set goes out first, so after a reconnect the first message alone lists
            // what the agent must run, and it stops everything else. Later an agent that
            // applies changes gets only what changed, so a change costs bytes for the changed
            // silos and not for all of the host's. An older agent gets the whole set again.
            // An instance's id and generation decide its assignment, so comparing them is
            // enough to tell whether the set changed.
            let kind = {
                let state = self.node.state.read().await;
                let version = state.host_version(&self.host);
                if last_version == Some(version) {
                    None
                } else {
                    let kind = match last_version.filter(|_| self.assignment_changes) {
                        Some(last) => match state.host_changes_since(&self.host, last) {
                            Some(journal) => session_view::changes_since(&state, &self.host, &journal, &mut sent),
                            // The journal no longer reaches back that far: compare the whole set.
                            None => session_view::assignment_changes(&state, &self.host, &state.assigned_to(&self.host), &mut sent),
                        }
                        .map(ControllerKind::AssignmentChanges),
                        None => Some(ControllerKind::Assignments(session_view::assignments(
                            &state,
                            &self.host,
                            &state.assigned_to(&self.host),
                            &mut sent,
                        ))),
                    };
                    last_version = Some(version);
                    Some(kind)
                }
            };
            if let Some(kind) = kind {
                // Debug, because a busy leader sends every host new assignments many times a second.
                match &kind {
                    Some(ControllerKind::AssignmentChanges(changes)) => tracing::debug!(
                        host = %self.host,
                        upserted = changes.upserted.len(),
                        removed = changes.removed_silo_ids.len(),
                        "sending assignment changes"
                    ),
                    Some(ControllerKind::Assignments(assignments)) => {
                        tracing::debug!(host = %self.host, silos = assignments.silos.len(), "sending assignments")
                    }
                    _ => {}
                }
                if let Some(kind) = kind {
                    let message = proto::ControllerMessage { kind: Some(kind) };
                    if outbound.send(Ok(message)).await.is_err() {
                        return "the agent closed the stream".to_owned();
                    }
                }
            }

            // A list that differs only in network counters goes out once the refresh interval
            // has passed since the last list, and any other change goes out at once.
            let names_due = match &last_names {
                None => true,
                Some(last) if Arc::ptr_eq(last, &view.names) || **last == *view.names => false,
                Some(last) => {
                    differ_beyond_usage(last, &view.names) || last_names_sent.elapsed() >= NAMES_REFRESH_INTERVAL
                }
            };
            if names_due {
                tracing::debug!(host = %self.host, names = view.names.names.len(), "sending silo names");
                let message = proto::ControllerMessage {
                    kind: Some(ControllerKind::Names((*view.names).clone())),
                };
                if outbound.send(Ok(message)).await.is_err() {
                    return "the agent closed the stream".to_owned();
                }
                last_names = Some(Arc::clone(&view.names));
                last_names_sent = Instant::now();
            }
            drop(view);

            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return "the controller is shutting down".to_owned();
                    }
                    // The change also completes a client's request, whose response passes
                    // several tasks on this runtime, so the session lets them go first. The
                    // pause also lets the changes of the next moment join this message.
                    tokio::time::sleep(CHANGE_PAUSE).await;
                }
                _ = names_refresh.tick() => {}
                _ = replaced.changed() => return "a newer session of the same host replaced it".to_owned(),
                _ = stopping.changed() => return "the controller is stopping".to_owned(),
                _ = outbound.closed() => return "the agent closed the stream".to_owned(),
                leader = &mut demoted => {
                    return format!("this controller no longer leads (leader {leader:?}); the agent reconnects to the leader");
                }
                message = tokio::time::timeout(SESSION_IDLE_TIMEOUT, inbound.message()) => {
                    match message {
                        Err(_) => return format!("no message from the agent for {}s", SESSION_IDLE_TIMEOUT.as_secs()),
                        Ok(Err(status)) => return format!("stream error: {status}"),
                        Ok(Ok(None)) => return "the agent ended the session".to_owned(),
                        Ok(Ok(Some(message))) => {
                            self.sessions.liveness().seen(&self.host, Instant::now());
                            if let Err(status) = self.handle(message).await {
                                tracing::warn!(host = %self.host, %status, "agent message not handled");
                                return format!("message not handled: {status}");
                            }
                        }
                    }
                }
            }
        }
    }

    async fn handle(&self, message: proto::AgentMessage) -> Result<(), Status> {
        match message.kind {
            Some(AgentKind::Status(status)) => self.record(status).await,
            Some(AgentKind::Heartbeat(_)) => Ok(()),
            Some(AgentKind::UsageReport(report)) => {
                self.sessions.usage().record(&self.host, self.cpus, &report, Instant::now());
                Ok(())
            }
            Some(AgentKind::LogChunk(chunk)) => {
                self.logs.deliver(chunk).await;
                Ok(())
            }
            Some(AgentKind::ExecOutput(output)) => {
                self.execs.deliver_output(output).await;
                Ok(())
            }
            Some(AgentKind::ExecExit(exit)) => {
                self.execs.deliver_exit(exit).await;
                Ok(())
            }
            Some(AgentKind::Hello(_)) => Err(Status::invalid_argument("Hello sent twice in one session")),
            None => Err(Status::invalid_argument("empty agent message")),
        }
    }

    /// Stores one status report. A report that a stopping silo is removed
    /// deletes its record.
    async fn record(&self, status: proto::SiloStatus) -> Result<(), Status> {
        let state = proto::SiloState::try_from(status.state).unwrap_or(proto::SiloState::Unspecified);
        if state == proto::SiloState::Removed {
            tracing::info!(host = %self.host, silo_id = %status.silo_id, exit_code = ?status.exit_code, how = %status.message, "agent removed silo");
            let key = {
                let cluster = self.node.state.read().await;
                cluster
                    .silo_by_id(&status.silo_id)
                    .filter(|record| record.host == self.host && record.desired == Desired::Stop)
                    .map(SiloRecord::key)
            };
            if let Some(key) = key {
                self.delete(key, status.silo_id).await?;
            }
            return Ok(());
        }

        let command = Command::ReportStatus {
            host: self.host.clone(),
            silo_id: status.silo_id.clone(),
            status: SiloStatus {
                state: status.state,
                interfaces: status
                    .interfaces
                    .into_iter()
                    .map(|interface| (interface.name, interface.address))
                    .collect(),
                exit_code: status.exit_code,
                message: status.message,
                restarts: status.restarts,
            },
        };
        self.node.write(command).await.map_err(|error| unavailable(&error))?;
        tracing::debug!(host = %self.host, silo_id = %status.silo_id, state = state.label(), "status recorded");
        Ok(())
    }

    /// Deletes the records of stopping silos on this host that the agent
    /// no longer has: it removed them while the controller could not hear
    /// its report.
    async fn forget_removed(&self, reported: &[proto::SiloStatus]) -> Result<(), Status> {
        let gone: Vec<(String, String)> = {
            let cluster = self.node.state.read().await;
            cluster
                .silos_on(&self.host)
                .filter(|record| record.desired == Desired::Stop)
                .filter(|record| !reported.iter().any(|status| status.silo_id == record.id))
                .map(|record| (record.key(), record.id.clone()))
                .collect()
        };
        for (key, id) in gone {
            self.delete(key, id).await?;
        }
        Ok(())
    }

    /// Deletes the record with key `key` (the silo name, or `NAME/INDEX` for instances after the
    /// first) if it still describes instance `id`.
    async fn delete(&self, key: String, id: String) -> Result<(), Status> {
        self.node
            .write(Command::DeleteSilo {
                name: key.clone(),
                id: id.clone(),
            })
            .await
            .map_err(|error| unavailable(&error))?;
        tracing::info!(host = %self.host, silo = %key, %id, "silo removed");
        self.sessions.wake_placement();
        Ok(())
    }
}

/// Length of a WireGuard key in base64: 32 bytes make 43 characters and one `=` of padding.
const WIREGUARD_KEY_BASE64_LEN: usize = 44;

/// Rejects a Hello whose WireGuard fields other agents could not use. All three are empty for
/// an agent without a mesh device.
fn check_wireguard(hello: &proto::Hello) -> Result<(), Status> {
    if hello.wireguard_public_key.is_empty() && hello.wireguard_endpoint.is_empty() {
        return Ok(());
    }
    let key = &hello.wireguard_public_key;
    let key_valid = key.len() == WIREGUARD_KEY_BASE64_LEN
        && key.ends_with('=')
        && key[..WIREGUARD_KEY_BASE64_LEN - 1]
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/');
    if !key_valid {
        return Err(Status::invalid_argument(format!(
            "Hello of host {} has invalid WireGuard public key {key:?}: expected 32 bytes in base64 (44 characters)",
            hello.name
        )));
    }
    if hello.wireguard_endpoint.parse::<SocketAddr>().is_err() {
        return Err(Status::invalid_argument(format!(
            "Hello of host {} has invalid WireGuard endpoint {:?}: expected ADDRESS:PORT",
            hello.name, hello.wireguard_endpoint
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ClusterState;

    const KEY_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn mesh_peers(state: &ClusterState, host: &str) -> proto::Peers {
        peers_of(&session_view::all_mesh_peers(state), host)
    }

    fn register(state: &mut ClusterState, name: &str, public_key: &str) {
        state.apply(&Command::RegisterHost {
            name: name.to_owned(),
            address: "198.51.100.3".to_owned(),
            cpus: 1,
            memory_bytes: 1 << 30,
            attributes: HostAttributes {
                wireguard_public_key: public_key.to_owned(),
                wireguard_endpoint: format!("198.51.100.3:{}", 51820 + name.len()),
                wireguard_backend: "userspace".to_owned(),
                ..HostAttributes::default()
            },
        });
    }

    fn hello(public_key: &str, endpoint: &str) -> proto::Hello {
        proto::Hello {
            name: "a".to_owned(),
            wireguard_public_key: public_key.to_owned(),
            wireguard_endpoint: endpoint.to_owned(),
            ..proto::Hello::default()
        }
    }

    #[test]
    fn peers_are_other_hosts_with_keys() {
        let mut state = ClusterState::default();
        register(&mut state, "a", KEY_A);
        register(&mut state, "b", "key of b");
        register(&mut state, "old", "");

        let peers = mesh_peers(&state, "a").peers;
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[0].host, "b");
        assert_eq!(peers[0].public_key, "key of b");
        assert_eq!(peers[0].endpoint, "198.51.100.3:51821");
        assert_eq!(peers[0].subnet, "10.69.2.0/24");

        let peers_of_old = mesh_peers(&state, "old").peers;
        let names: Vec<&str> = peers_of_old.iter().map(|peer| peer.host.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn wireguard_fields_are_checked() {
        assert!(check_wireguard(&hello("", "")).is_ok(), "no mesh device");
        assert!(check_wireguard(&hello(KEY_A, "198.51.100.3:51820")).is_ok());
        assert!(check_wireguard(&hello(KEY_A, "[2001:db8::1]:51820")).is_ok());

        let bad_key = check_wireguard(&hello("AQID", "198.51.100.3:51820")).expect_err("short key");
        assert!(bad_key.message().contains("invalid WireGuard public key"), "{bad_key}");
        let bad_endpoint = check_wireguard(&hello(KEY_A, "198.51.100.3")).expect_err("no port");
        assert!(bad_endpoint.message().contains("invalid WireGuard endpoint"), "{bad_endpoint}");
    }
}
