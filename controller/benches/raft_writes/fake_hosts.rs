//! Fake hosts: agent sessions that only send Hello and heartbeats, so the leader counts
//! their hosts as live and `Up` can place silos on them. No silo is run.

use std::time::Duration;

use anyhow::{bail, Context};
use colex_proto as proto;
use colex_proto::agent_client::AgentClient;
use colex_proto::agent_message::Kind as AgentKind;
use colex_proto::client_client::ClientClient;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Hosts the benchmark registers.
pub const HOST_COUNT: usize = 3;
/// Heartbeat period; the real agent also sends one every second.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before a fake host tries the next controller. The real agent starts at 200 ms and
/// doubles the pause up to 5 s, so after a failover a real host may come back later.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const SESSION_QUEUE_LEN: usize = 4;
/// CPUs and memory each fake host declares. Silos without `resources` reserve nothing, so
/// these only need to be plausible.
const HOST_CPUS: u32 = 2;
const HOST_MEMORY_BYTES: u64 = 4 << 30;
const HOSTS_UP_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The sessions of every fake host. Dropping it ends them.
#[derive(Debug)]
pub struct FakeHosts {
    tasks: Vec<JoinHandle<()>>,
}

impl FakeHosts {
    /// Starts one session task per host. Each task tries the controllers at `addresses` in
    /// turn until one (the leader) accepts its Hello, and starts over when the session ends.
    pub fn start(prefix: &str, addresses: Vec<String>) -> FakeHosts {
        let tasks = (0..HOST_COUNT)
            .map(|index| {
                let name = format!("{prefix}-h{index}");
                let addresses = addresses.clone();
                tokio::spawn(hold_session(name, addresses))
            })
            .collect();
        FakeHosts { tasks }
    }

    /// Waits until the controller behind `client` lists every fake host as up.
    pub async fn wait_until_up(&self, client: &mut ClientClient<Channel>) -> anyhow::Result<()> {
        let deadline = Instant::now() + HOSTS_UP_TIMEOUT;
        loop {
            if let Ok(response) = client.list(proto::ListRequest {}).await {
                let up = response
                    .into_inner()
                    .hosts
                    .iter()
                    .filter(|host| host.state == proto::HostState::Up as i32)
                    .count();
                if up == HOST_COUNT {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("the fake hosts were not all up within {HOSTS_UP_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for FakeHosts {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Keeps a session of host `name` open with one of the controllers at `addresses`.
async fn hold_session(name: String, addresses: Vec<String>) {
    for address in addresses.iter().cycle() {
        // A follower rejects the Hello because only the leader registers hosts, so most
        // failures here are expected and not logged.
        let _ = run_session(&name, address).await;
        tokio::time::sleep(RECONNECT_INTERVAL).await;
    }
}

/// Runs one session with the controller at `address` until it ends.
async fn run_session(name: &str, address: &str) -> anyhow::Result<()> {
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
        // As the real agent does: after the first set, only what changed.
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

    let mut heartbeats = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            // Welcome and assignments are read and dropped: a fake host runs nothing.
            received = inbound.message() => {
                if received.with_context(|| format!("session with {address} failed"))?.is_none() {
                    return Ok(());
                }
            }
            _ = heartbeats.tick() => {
                if outbound.send(message(AgentKind::Heartbeat(proto::Heartbeat {}))).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

fn message(kind: AgentKind) -> proto::AgentMessage {
    proto::AgentMessage { kind: Some(kind) }
}
