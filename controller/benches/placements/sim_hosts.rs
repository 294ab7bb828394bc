//! Simulated hosts: agent sessions that send Hello and heartbeats, read their assignments and
//! count them, but run nothing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use colex_proto as proto;
use colex_proto::agent_client::AgentClient;
use colex_proto::agent_message::Kind as AgentKind;
use colex_proto::client_client::ClientClient;
use colex_proto::controller_message::Kind as ControllerKind;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Heartbeat period; the real agent also sends one every second.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before a simulated host tries the next controller.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SESSION_QUEUE_LEN: usize = 4;
/// CPUs and memory each simulated host declares.
pub const HOST_CPUS: u32 = 4;
pub const HOST_MEMORY_BYTES: u64 = 8 << 30;
const HOSTS_UP_TIMEOUT: Duration = Duration::from_secs(300);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Poll interval of [`SimHosts::wait_for_assignments`], short because it ends a timing.
const ASSIGNMENTS_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Counters of the messages the simulated hosts received, summed over all of them.
#[derive(Debug, Default)]
pub struct Received {
    /// Sum over the hosts of the silo count that each host's assignments add up to.
    pub assigned: AtomicI64,
    /// Protobuf bytes of every `Assignments` and `AssignmentChanges` message.
    pub assignment_bytes: AtomicU64,
    pub assignment_messages: AtomicU64,
    /// Protobuf bytes of every message from the controllers.
    pub total_bytes: AtomicU64,
}

/// The sessions of every simulated host. Dropping it ends them.
#[derive(Debug)]
pub struct SimHosts {
    count: usize,
    tasks: Vec<JoinHandle<()>>,
    pub received: Arc<Received>,
}

impl SimHosts {
    /// Starts one session task per host. Each tries the controllers at `addresses` in turn
    /// until one (the leader) accepts its Hello, and starts over when the session ends.
    pub fn start(prefix: &str, count: usize, addresses: &[String]) -> SimHosts {
        let received = Arc::new(Received::default());
        let tasks = (0..count)
            .map(|index| {
                let name = format!("{prefix}-h{index:04}");
                tokio::spawn(hold_session(name, addresses.to_vec(), Arc::clone(&received)))
            })
            .collect();
        SimHosts { count, tasks, received }
    }

    /// Waits until the simulated hosts together hold at least `target` assignments, polling
    /// every [`ASSIGNMENTS_POLL_INTERVAL`], and fails at `deadline`.
    pub async fn wait_for_assignments(&self, target: i64, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let assigned = self.received.assigned.load(Ordering::Relaxed);
            if assigned >= target {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the simulated hosts hold {assigned} of {target} assignments");
            }
            tokio::time::sleep(ASSIGNMENTS_POLL_INTERVAL).await;
        }
    }

    /// Waits until the controller behind `client` lists every simulated host as up.
    pub async fn wait_until_up(&self, client: &mut ClientClient<Channel>) -> anyhow::Result<()> {
        let deadline = Instant::now() + HOSTS_UP_TIMEOUT;
        loop {
            if let Ok(response) = client.hosts(proto::HostsRequest {}).await {
                let up = response
                    .into_inner()
                    .hosts
                    .iter()
                    .filter(|host| host.state == proto::HostState::Up as i32)
                    .count();
                if up >= self.count {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("the {} simulated hosts were not all up within {HOSTS_UP_TIMEOUT:?}", self.count);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for SimHosts {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps a session of host `name` open with one of the controllers at `addresses`.
async fn hold_session(name: String, addresses: Vec<String>, received: Arc<Received>) {
    for address in addresses.iter().cycle() {
        // A follower rejects the Hello because only the leader registers hosts, so most
        // failures here are expected and not logged.
        let _ = run_session(&name, address, &received).await;
        tokio::time::sleep(RECONNECT_INTERVAL).await;
    }
}

/// Runs one session with the controller at `address` until it ends.
async fn run_session(name: &str, address: &str, received: &Received) -> anyhow::Result<()> {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("invalid controller address {address}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("failed to connect to controller {address}"))?;
    let mut client = AgentClient::new(channel).max_decoding_message_size(proto::MAX_MESSAGE_BYTES);

    let (outbound, outbound_rx) = mpsc::channel(SESSION_QUEUE_LEN);
    let hello = proto::Hello {
        name: name.to_owned(),
        address: "127.0.0.1".to_owned(),
        cpus: HOST_CPUS,
        memory_bytes: HOST_MEMORY_BYTES,
        images: vec!["busybox".to_owned()],
        assignment_changes: true,
        ..proto::Hello::default()
    };
    outbound
        .send(message(AgentKind::Hello(hello)))
        .await
        .context("the session queue closed before the hello")?;
    let mut inbound = client
        .session(ReceiverStream::new(outbound_rx))
        .await
        .with_context(|| format!("controller {address} rejected the session"))?
        .into_inner();

    // The silo ids this session's assignments add up to, so a new session replaces the
    // host's share of the sum instead of adding to it. The controller sends the whole set
    // first and then only the changes, as the real agent requests in its Hello.
    let mut ids: HashSet<String> = HashSet::new();
    let mut assigned: i64 = 0;
    let mut heartbeats = tokio::time::interval(HEARTBEAT_INTERVAL);
    let ended = loop {
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(anyhow::anyhow!("session with {address} failed: {status}")),
                };
                let bytes = u64::try_from(message.encoded_len()).unwrap_or(u64::MAX);
                received.total_bytes.fetch_add(bytes, Ordering::Relaxed);
                match message.kind {
                    Some(ControllerKind::Assignments(assignments)) => {
                        ids = assignments.silos.into_iter().map(|silo| silo.silo_id).collect();
                    }
                    Some(ControllerKind::AssignmentChanges(changes)) => {
                        for id in &changes.removed_silo_ids {
                            ids.remove(id);
                        }
                        ids.extend(changes.upserted.into_iter().map(|silo| silo.silo_id));
                    }
                    _ => continue,
                }
                received.assignment_bytes.fetch_add(bytes, Ordering::Relaxed);
                received.assignment_messages.fetch_add(1, Ordering::Relaxed);
                let now = i64::try_from(ids.len()).unwrap_or(i64::MAX);
                received.assigned.fetch_add(now - assigned, Ordering::Relaxed);
                assigned = now;
            }
            _ = heartbeats.tick() => {
                if outbound.send(message(AgentKind::Heartbeat(proto::Heartbeat {}))).await.is_err() {
                    break Ok(());
                }
            }
        }
    };
    received.assigned.fetch_sub(assigned, Ordering::Relaxed);
    ended
}

fn message(kind: AgentKind) -> proto::AgentMessage {
    proto::AgentMessage { kind: Some(kind) }
}
