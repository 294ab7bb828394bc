//! The `Exec` service and the routing of exec requests to the agents that run the silos.
//!
//! A client's `Exec` call becomes an `AgentExecStart` on the open session of the silo's host,
//! with an exec id unique in this controller process. Later client requests (stdin, its end,
//! window sizes) become `AgentExecInput` messages. The agent replies with `AgentExecOutput`
//! messages and one `AgentExecExit`, which the agent service hands to [`ExecRouter`], and the
//! router passes them on to the client stream. A client that goes away cancels the exec on the
//! agent, which kills the command; an agent session that ends fails its open execs.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use colex_proto as proto;
use colex_proto::controller_message::Kind as ControllerKind;
use colex_proto::exec_request::Kind as RequestKind;
use colex_proto::exec_response::Kind as ResponseKind;
use futures::Stream;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::api::client::split_instance_name;
use crate::api::agent_router::{AgentRouter, ClientStream, RoutedCall};
use crate::raft::leader::Route;
use crate::raft::RaftNode;
use crate::state::{instance_key, Desired, SiloRecord};
use crate::view;

/// How long an exec on a follower waits for a leader to be known.
const LEADER_WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `exec` kind of routed call.
#[derive(Debug)]
pub struct ExecRoute;

impl RoutedCall for ExecRoute {
    type Item = proto::ExecResponse;
    const COMMAND: &'static str = "exec";

    fn cancel_message(id: u64) -> proto::ControllerMessage {
        proto::ControllerMessage {
            kind: Some(ControllerKind::ExecCancel(proto::AgentExecCancel { exec_id: id })),
        }
    }

    fn session_ended(host: &str) -> Status {
        Status::unavailable(format!(
            "the session of host {host}'s agent ended while the command ran; its result is unknown"
        ))
    }

    fn not_connected(host: &str) -> Status {
        Status::unavailable(format!(
            "the agent of host {host} is not connected; run exec again once the host is back"
        ))
    }
}

/// The open agent sessions that can run execs, and the execs in flight.
pub type ExecRouter = AgentRouter<ExecRoute>;

impl AgentRouter<ExecRoute> {
    /// Sends `start` (its exec id is filled in here) to the agent of `host` and returns the
    /// stream of responses for the client.
    pub async fn open(&self, host: &str, start: proto::AgentExecStart) -> Result<ClientExecStream, Status> {
        let responses = self
            .open_request(host, |exec_id| proto::ControllerMessage {
                kind: Some(ControllerKind::ExecStart(proto::AgentExecStart { exec_id, ..start })),
            })
            .await?;
        Ok(ClientExecStream {
            responses,
            input_task: None,
        })
    }

    /// Sends one input message of exec `exec_id` to its agent. Returns false once the exec has
    /// ended or its agent is gone.
    pub async fn send_input(&self, exec_id: u64, kind: proto::agent_exec_input::Kind) -> bool {
        let Some(outbound) = self.outbound_of(exec_id) else {
            return false;
        };
        let message = proto::ControllerMessage {
            kind: Some(ControllerKind::ExecInput(proto::AgentExecInput {
                exec_id,
                kind: Some(kind),
            })),
        };
        outbound.send(Ok(message)).await.is_ok()
    }

    /// Passes one output chunk from an agent on to its client. A chunk for a client that went
    /// away cancels the exec on the agent.
    pub async fn deliver_output(&self, output: proto::AgentExecOutput) {
        let kind = if output.stderr {
            ResponseKind::Stderr(output.data)
        } else {
            ResponseKind::Stdout(output.data)
        };
        let response = proto::ExecResponse { kind: Some(kind) };
        self.deliver_item(output.exec_id, Some(Ok(response)), false).await;
    }

    /// Passes the exit of an exec on to its client and ends the client's stream.
    pub async fn deliver_exit(&self, exit: proto::AgentExecExit) {
        let kind = ResponseKind::Exit(exit.exit.unwrap_or_default());
        let response = proto::ExecResponse { kind: Some(kind) };
        self.deliver_item(exit.exec_id, Some(Ok(response)), true).await;
    }
}

/// The responses of one `Exec` call. Dropping it (the client went away) cancels the exec on
/// the agent and stops relaying the client's input.
#[derive(Debug)]
pub struct ClientExecStream {
    responses: ClientStream<ExecRoute>,
    input_task: Option<tokio::task::AbortHandle>,
}

impl ClientExecStream {
    /// Returns the exec's id.
    pub fn exec_id(&self) -> u64 {
        self.responses.id()
    }
}

impl Stream for ClientExecStream {
    type Item = Result<proto::ExecResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.responses).poll_next(context)
    }
}

impl Drop for ClientExecStream {
    fn drop(&mut self) {
        // The responses drop after this, which cancels the exec on the agent if it still runs.
        if let Some(task) = self.input_task.take() {
            task.abort();
        }
    }
}

/// Responses of one `Exec` call: from the agent through this controller's router, or relayed
/// from the leader when this controller is a follower.
pub type ExecResponseStream = Pin<Box<dyn Stream<Item = Result<proto::ExecResponse, Status>> + Send>>;

/// The `Exec` service.
pub struct ExecService {
    node: RaftNode,
    execs: ExecRouter,
}

impl ExecService {
    pub fn new(node: RaftNode, execs: ExecRouter) -> Self {
        Self { node, execs }
    }

    /// Returns the agent request for `start`, and the silo's host, if the silo runs.
    async fn resolve(&self, start: &proto::ExecStart) -> Result<(String, proto::AgentExecStart), Status> {
        if start.argv.is_empty() {
            return Err(Status::invalid_argument(format!(
                "exec in silo {} has no command; give it after `--`",
                start.name
            )));
        }
        let state = self.node.state.read().await;
        let key = match split_instance_name(&start.name) {
            Some((name, index)) => instance_key(name, index),
            None => start.name.clone(),
        };
        let Some(record) = state.silos.get(&key) else {
            return Err(Status::not_found(format!(
                "silo {} not found; see `colex-cli list` for the names",
                start.name
            )));
        };
        check_running(&start.name, record)?;
        let spec = view::decode_spec(record).ok();
        let raw_sockets = spec
            .as_ref()
            .and_then(|spec| spec.grants.as_ref())
            .is_some_and(|grants| grants.raw_sockets);
        let env = spec.and_then(|spec| spec.binary).map(|binary| binary.env).unwrap_or_default();
        let agent_start = proto::AgentExecStart {
            exec_id: 0,
            silo_id: record.id.clone(),
            argv: start.argv.clone(),
            env,
            tty: start.tty,
            size: start.size,
            term: start.term.clone(),
            stdin: start.stdin,
            raw_sockets,
        };
        Ok((record.host.clone(), agent_start))
    }

    /// Relays the call to the leader, where the agents' sessions are.
    async fn forward(
        &self,
        channel: tonic::transport::Channel,
        inbound: Streaming<proto::ExecRequest>,
    ) -> Result<Response<ExecResponseStream>, Status> {
        // A client that goes away drops the relayed response stream, which resets the call to
        // the leader, so the leader cancels the exec.
        let requests = inbound.map_while(|request| request.ok());
        let mut forwarded = Request::new(requests);
        forwarded
            .metadata_mut()
            .insert(proto::FORWARDED_BY_HEADER, MetadataValue::from(self.node.id));
        let mut client = proto::exec_client::ExecClient::new(channel)
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
        let response = client.exec(forwarded).await?;
        let relayed: ExecResponseStream = Box::pin(response.into_inner());
        Ok(Response::new(relayed))
    }
}

/// Rejects an exec in a silo instance that does not run, naming its state.
fn check_running(name: &str, record: &SiloRecord) -> Result<(), Status> {
    if record.is_pending() {
        let reason = record.pending_reason.as_deref().unwrap_or("not placed yet");
        return Err(Status::failed_precondition(format!(
            "silo {name} ({}) is PENDING on no host, so nothing runs to exec in: {reason}",
            record.id
        )));
    }
    let state = record
        .status
        .as_ref()
        .and_then(|status| proto::SiloState::try_from(status.state).ok())
        .unwrap_or(proto::SiloState::Unspecified);
    if record.desired == Desired::Stop || state != proto::SiloState::Up {
        let reported = if record.desired == Desired::Stop {
            proto::SiloState::Stopping
        } else {
            state
        };
        return Err(Status::failed_precondition(format!(
            "silo {name} ({}) is {} on host {}, not running; exec needs a running silo, see `colex-cli status {name}`",
            record.id,
            reported.label(),
            record.host
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl proto::exec_server::Exec for ExecService {
    type ExecStream = ExecResponseStream;

    async fn exec(&self, request: Request<Streaming<proto::ExecRequest>>) -> Result<Response<Self::ExecStream>, Status> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT_TIMEOUT;
        let route = self
            .node
            .leader
            .route(request.metadata(), deadline)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        let mut inbound = request.into_inner();
        if let Route::Leader { channel, .. } = route {
            return self.forward(channel, inbound).await;
        }

        let start = match inbound.message().await? {
            Some(proto::ExecRequest {
                kind: Some(RequestKind::Start(start)),
            }) => start,
            _ => return Err(Status::invalid_argument("the first exec request must be start")),
        };
        let (host, agent_start) = self.resolve(&start).await?;
        tracing::info!(silo = %start.name, silo_id = %agent_start.silo_id, %host, tty = start.tty, argv = ?start.argv, "exec requested");
        let mut stream = self.execs.open(&host, agent_start).await?;

        let router = self.execs.clone();
        let exec_id = stream.exec_id();
        let input_task = tokio::spawn(async move {
            while let Ok(Some(request)) = inbound.message().await {
                let kind = match request.kind {
                    Some(RequestKind::Stdin(data)) => proto::agent_exec_input::Kind::Stdin(data),
                    Some(RequestKind::StdinClose(close)) => proto::agent_exec_input::Kind::StdinClose(close),
                    Some(RequestKind::Resize(size)) => proto::agent_exec_input::Kind::Resize(size),
                    Some(RequestKind::Start(_)) | None => continue,
                };
                if !router.send_input(exec_id, kind).await {
                    return;
                }
            }
        });
        stream.input_task = Some(input_task.abort_handle());
        let stream: ExecResponseStream = Box::pin(stream);
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn start() -> proto::AgentExecStart {
        proto::AgentExecStart {
            silo_id: "00000001".to_owned(),
            argv: vec!["true".to_owned()],
            ..Default::default()
        }
    }

    async fn sent_start(agent: &mut mpsc::Receiver<Result<proto::ControllerMessage, Status>>) -> proto::AgentExecStart {
        match agent.recv().await {
            Some(Ok(proto::ControllerMessage {
                kind: Some(ControllerKind::ExecStart(start)),
            })) => start,
            other => panic!("expected an exec start, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn output_and_exit_reach_the_client() {
        let router = ExecRouter::default();
        let (agent_tx, mut agent_rx) = mpsc::channel(4);
        let _registration = router.register_agent("h1", agent_tx);
        let mut stream = router.open("h1", start()).await.expect("open");
        let sent = sent_start(&mut agent_rx).await;
        assert_eq!(sent.silo_id, "00000001");

        router
            .deliver_output(proto::AgentExecOutput {
                exec_id: sent.exec_id,
                data: b"out".to_vec(),
                stderr: false,
            })
            .await;
        router
            .deliver_output(proto::AgentExecOutput {
                exec_id: sent.exec_id,
                data: b"err".to_vec(),
                stderr: true,
            })
            .await;
        router
            .deliver_exit(proto::AgentExecExit {
                exec_id: sent.exec_id,
                exit: Some(proto::ExecExit {
                    code: Some(7),
                    ..Default::default()
                }),
            })
            .await;
        let mut kinds = Vec::new();
        while let Some(response) = stream.next().await {
            kinds.push(response.expect("response").kind);
        }
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        assert_eq!(kinds[0], Some(ResponseKind::Stdout(b"out".to_vec())));
        assert_eq!(kinds[1], Some(ResponseKind::Stderr(b"err".to_vec())));
        match &kinds[2] {
            Some(ResponseKind::Exit(exit)) => assert_eq!(exit.code, Some(7)),
            other => panic!("expected the exit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn input_reaches_the_agent() {
        let router = ExecRouter::default();
        let (agent_tx, mut agent_rx) = mpsc::channel(4);
        let _registration = router.register_agent("h1", agent_tx);
        let _stream = router.open("h1", start()).await.expect("open");
        let sent = sent_start(&mut agent_rx).await;
        let delivered = router
            .send_input(sent.exec_id, proto::agent_exec_input::Kind::Stdin(b"hi\n".to_vec()))
            .await;
        assert!(delivered);
        match agent_rx.recv().await {
            Some(Ok(proto::ControllerMessage {
                kind: Some(ControllerKind::ExecInput(input)),
            })) => {
                assert_eq!(input.exec_id, sent.exec_id);
                assert_eq!(input.kind, Some(proto::agent_exec_input::Kind::Stdin(b"hi\n".to_vec())));
            }
            other => panic!("expected exec input, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unknown_host_is_unavailable() {
        let router = ExecRouter::default();
        let status = router.open("h9", start()).await.expect_err("no agent");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("h9"), "{}", status.message());
    }

    #[tokio::test]
    async fn dropped_client_cancels_on_agent() {
        let router = ExecRouter::default();
        let (agent_tx, mut agent_rx) = mpsc::channel(4);
        let _registration = router.register_agent("h1", agent_tx);
        let stream = router.open("h1", start()).await.expect("open");
        let sent = sent_start(&mut agent_rx).await;
        drop(stream);
        match agent_rx.recv().await {
            Some(Ok(proto::ControllerMessage {
                kind: Some(ControllerKind::ExecCancel(cancel)),
            })) => assert_eq!(cancel.exec_id, sent.exec_id),
            other => panic!("expected a cancel, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn ended_session_fails_its_execs() {
        let router = ExecRouter::default();
        let (agent_tx, _agent_rx) = mpsc::channel(4);
        let registration = router.register_agent("h1", agent_tx);
        let mut stream = router.open("h1", start()).await.expect("open");
        router.unregister_agent(&registration);
        let item = stream.next().await.expect("an error item");
        let status = item.expect_err("session ended");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("h1"), "{}", status.message());
    }

    fn record(host: &str, desired: Desired, state: proto::SiloState) -> SiloRecord {
        SiloRecord {
            name: "web".to_owned(),
            index: 0,
            id: "0000abcd".to_owned(),
            generation: 1,
            spec: Vec::new(),
            host: host.to_owned(),
            desired,
            status: Some(crate::state::SiloStatus {
                state: state as i32,
                ..Default::default()
            }),
            pending_reason: None,
            next_spec: None,
            events: Default::default(),
        }
    }

    #[test]
    fn only_running_silos_accept_exec() {
        assert!(check_running("web", &record("h1", Desired::Run, proto::SiloState::Up)).is_ok());

        let exited = check_running("web", &record("h1", Desired::Run, proto::SiloState::Exited)).expect_err("exited");
        assert_eq!(exited.code(), tonic::Code::FailedPrecondition);
        assert!(exited.message().contains("silo web (0000abcd) is EXITED on host h1"), "{}", exited.message());

        let stopping = check_running("web", &record("h1", Desired::Stop, proto::SiloState::Up)).expect_err("stopping");
        assert!(stopping.message().contains("STOPPING"), "{}", stopping.message());

        let pending = check_running("web", &record("", Desired::Run, proto::SiloState::Pending)).expect_err("pending");
        assert!(pending.message().contains("PENDING"), "{}", pending.message());
    }
}
