//! The agent's session with the controller: register the host, receive
//! assignments, run them on the runtime and report every silo's state.
//! A lost session is opened again with exponential backoff while the
//! silos keep running.

use std::path::PathBuf;
use std::time::Duration;

use colex_proto as proto;
use colex_proto::agent_message::Kind as AgentKind;
use colex_proto::controller_message::Kind as ControllerKind;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::host::HostFacts;
use crate::local::{self, LocalSilos, Operation};
use crate::runtime::{Runtime, RuntimeConfig, SiloExit};

/// Interval of the heartbeats the controller uses to see that the agent is alive.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Delay before a failed removal is tried again.
const REMOVE_RETRY_DELAY: Duration = Duration::from_secs(5);
const OUTBOUND_QUEUE_LEN: usize = 64;

/// Settings of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Controller address as HOST:PORT.
    pub controller: String,
    pub host_name: String,
    /// Address reported to the controller; detected when `None`.
    pub address: Option<String>,
    pub state_dir: PathBuf,
    pub bridge: String,
    pub helper_exe: PathBuf,
    pub busybox: PathBuf,
}

/// The result of a runtime operation, sent back to the session loop.
enum Done {
    Started { id: String, result: Result<Vec<proto::Interface>, String> },
    Removed { id: String, result: Result<(), String> },
    RetryRemove { id: String },
}

/// Why one session ended.
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
}

impl Agent {
    pub fn new(config: AgentConfig, shutdown: watch::Receiver<bool>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            config,
            runtime: None,
            exits: None,
            silos: LocalSilos::default(),
            done_tx,
            done_rx,
            shutdown,
        }
    }

    /// Runs sessions until shutdown is signalled, then stops every silo.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut backoff = INITIAL_BACKOFF;
        loop {
            match self.session().await {
                SessionEnd::Shutdown => break,
                SessionEnd::Lost(reason) => {
                    tracing::warn!(controller = %self.config.controller, %reason, retry_in_ms = backoff.as_millis() as u64, "controller session lost; retrying");
                }
            }
            if self.wait_offline(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }

        tracing::info!(host = %self.config.host_name, "agent stopping; removing its silos");
        if let Some(runtime) = &self.runtime {
            runtime.shutdown().await?;
        }
        tracing::info!(host = %self.config.host_name, "agent stopped");
        Ok(())
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

        let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{}", self.config.controller)) {
            Ok(endpoint) => endpoint,
            Err(error) => return SessionEnd::Lost(format!("invalid controller address {}: {error}", self.config.controller)),
        };
        let channel = match endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect()
            .await
        {
            Ok(channel) => channel,
            Err(error) => return SessionEnd::Lost(format!("cannot connect: {error}")),
        };
        let mut client = proto::agent_client::AgentClient::new(channel)
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);

        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_QUEUE_LEN);
        let hello = proto::Hello {
            name: self.config.host_name.clone(),
            address: facts.address,
            cpus: facts.cpus,
            memory_bytes: facts.memory_bytes,
            silos: self.silos.statuses(),
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
            })) => welcome.subnet,
            Ok(_) => return SessionEnd::Lost("the controller did not send a welcome".to_owned()),
            Err(status) => return SessionEnd::Lost(format!("session rejected: {}", status.message())),
        };
        if let Err(error) = self.ensure_runtime(&subnet).await {
            return SessionEnd::Lost(format!("cannot prepare the silo runtime: {error:#}"));
        }
        tracing::info!(host = %self.config.host_name, controller = %self.config.controller, %subnet, "session open");

        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                _ = self.shutdown.changed() => return SessionEnd::Shutdown,
                message = inbound.message() => match message {
                    Ok(Some(proto::ControllerMessage { kind: Some(ControllerKind::Assignments(assignments)) })) => {
                        tracing::info!(silos = assignments.silos.len(), "assignments received");
                        for operation in self.silos.reconcile(&assignments) {
                            self.launch(operation);
                        }
                        // Silos entering STARTING or STOPPING are reported at once.
                        for status in self.silos.statuses() {
                            if outbound.send(agent_message(AgentKind::Status(status))).await.is_err() {
                                return SessionEnd::Lost("outbound queue closed".to_owned());
                            }
                        }
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
                }
            }
        }
    }

    /// Starts the runtime on the first welcome; later welcomes must carry
    /// the same subnet, because running silos hold addresses from it.
    async fn ensure_runtime(&mut self, subnet: &str) -> anyhow::Result<()> {
        if self.runtime.is_some() {
            return Ok(());
        }
        let config = RuntimeConfig {
            host_name: self.config.host_name.clone(),
            state_dir: self.config.state_dir.clone(),
            bridge: self.config.bridge.clone(),
            subnet: subnet.parse()?,
            helper_exe: self.config.helper_exe.clone(),
            busybox: self.config.busybox.clone(),
        };
        let (runtime, exits) = Runtime::start(config).await?;
        self.runtime = Some(runtime);
        self.exits = Some(exits);
        Ok(())
    }

    /// Runs one operation in a task of its own; its result comes back
    /// through `done_rx`.
    fn launch(&self, operation: Operation) {
        let Some(runtime) = self.runtime.clone() else {
            tracing::error!(?operation, "no runtime yet; operation dropped");
            return;
        };
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let message = match operation {
                Operation::Run { id, generation, spec } => {
                    tracing::info!(silo = %spec.name, silo_id = %id, generation, "starting silo");
                    let result = runtime
                        .run_silo(&id, generation, &spec)
                        .await
                        .map_err(|error| error.to_string());
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
            };
            // The receiver lives as long as the agent; a send fails only
            // during shutdown, when the runtime removes everything anyway.
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
            Done::Removed { id, result: Ok(()) } => {
                tracing::info!(silo_id = %id, "silo removed");
                self.silos.removed(&id, Ok(()));
                Some(local::removed_status(&id))
            }
            Done::Removed { id, result: Err(error) } => {
                tracing::warn!(silo_id = %id, %error, retry_in_s = REMOVE_RETRY_DELAY.as_secs(), "silo removal failed; retrying");
                self.silos.removed(&id, Err(error));
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
        }
    }

    fn exit(&mut self, exit: SiloExit) -> Option<proto::SiloStatus> {
        tracing::info!(silo_id = %exit.silo_id, generation = exit.generation, exit_code = exit.exit_code, "silo program exited");
        if self.silos.exited(&exit.silo_id, exit.generation, exit.exit_code) {
            self.silos.get(&exit.silo_id).map(local::status_of)
        } else {
            None
        }
    }
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
