//! Routing of `logs` requests to the agents that run the silos.
//!
//! The output of a silo stays on its host. A client's `Logs` call becomes an `AgentLogsRequest`
//! on the open session of that host's agent, with a request id unique in this controller
//! process. The agent replies with `AgentLogChunk` messages on the same session, which the
//! agent service hands to [`LogRouter::deliver`], and the router passes them on to the waiting
//! client stream. A client that goes away cancels the request on the agent; an agent session
//! that ends fails its open requests.

use colex_proto as proto;
use colex_proto::controller_message::Kind as ControllerKind;
use tonic::Status;

use crate::api::agent_router::{AgentRouter, ClientStream, RoutedCall};

/// The `logs` kind of routed call.
#[derive(Debug)]
pub struct LogsRoute;

impl RoutedCall for LogsRoute {
    type Item = proto::LogChunk;
    const COMMAND: &'static str = "logs";

    fn cancel_message(id: u64) -> proto::ControllerMessage {
        proto::ControllerMessage {
            kind: Some(ControllerKind::LogsCancel(proto::AgentLogsCancel { request_id: id })),
        }
    }

    fn session_ended(host: &str) -> Status {
        Status::unavailable(format!("the session of host {host}'s agent ended; run logs again"))
    }

    fn not_connected(host: &str) -> Status {
        Status::unavailable(format!(
            "the agent of host {host} is not connected; its silos' logs stay on that host until it is back"
        ))
    }
}

/// The open agent sessions that can serve logs, and the log requests in flight.
pub type LogRouter = AgentRouter<LogsRoute>;

/// The chunks of one `Logs` call. Dropping it (the client went away) cancels the request on
/// the agent.
pub type ClientLogStream = ClientStream<LogsRoute>;

impl AgentRouter<LogsRoute> {
    /// Sends `request` (its id is filled in here) to the agent of `host` and returns the stream
    /// of chunks for the client.
    pub async fn open(&self, host: &str, request: proto::AgentLogsRequest) -> Result<ClientLogStream, Status> {
        self.open_request(host, |request_id| proto::ControllerMessage {
            kind: Some(ControllerKind::LogsRequest(proto::AgentLogsRequest { request_id, ..request })),
        })
        .await
    }

    /// Passes one chunk from an agent on to its client. A chunk for a client that went away
    /// cancels the request on the agent.
    pub async fn deliver(&self, chunk: proto::AgentLogChunk) {
        let item = if !chunk.error.is_empty() {
            Some(Err(Status::not_found(chunk.error)))
        } else if chunk.end {
            None
        } else {
            Some(Ok(proto::LogChunk { data: chunk.data }))
        };
        self.deliver_item(chunk.request_id, item, chunk.end).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::sync::mpsc;

    fn request() -> proto::AgentLogsRequest {
        proto::AgentLogsRequest {
            silo_id: "00000001".to_owned(),
            ..Default::default()
        }
    }

    async fn sent_request(agent: &mut mpsc::Receiver<Result<proto::ControllerMessage, Status>>) -> proto::AgentLogsRequest {
        match agent.recv().await {
            Some(Ok(proto::ControllerMessage {
                kind: Some(ControllerKind::LogsRequest(request)),
            })) => request,
            other => panic!("expected a logs request, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn chunks_reach_the_client_in_order() {
        let router = LogRouter::default();
        let (agent_tx, mut agent_rx) = mpsc::channel(4);
        let _registration = router.register_agent("h1", agent_tx);
        let mut stream = router.open("h1", request()).await.expect("open");
        let sent = sent_request(&mut agent_rx).await;
        assert_eq!(sent.silo_id, "00000001");

        for data in [b"one\n".to_vec(), b"two\n".to_vec()] {
            router
                .deliver(proto::AgentLogChunk {
                    request_id: sent.request_id,
                    data,
                    ..Default::default()
                })
                .await;
        }
        router
            .deliver(proto::AgentLogChunk {
                request_id: sent.request_id,
                end: true,
                ..Default::default()
            })
            .await;
        let mut received = Vec::new();
        while let Some(chunk) = stream.next().await {
            received.extend(chunk.expect("chunk").data);
        }
        assert_eq!(received, b"one\ntwo\n");
    }

    #[tokio::test]
    async fn unknown_host_is_unavailable() {
        let router = LogRouter::default();
        let status = router.open("h9", request()).await.expect_err("no agent");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("h9"), "{}", status.message());
    }

    #[tokio::test]
    async fn dropped_client_cancels_on_agent() {
        let router = LogRouter::default();
        let (agent_tx, mut agent_rx) = mpsc::channel(4);
        let _registration = router.register_agent("h1", agent_tx);
        let stream = router.open("h1", request()).await.expect("open");
        let sent = sent_request(&mut agent_rx).await;
        drop(stream);
        match agent_rx.recv().await {
            Some(Ok(proto::ControllerMessage {
                kind: Some(ControllerKind::LogsCancel(cancel)),
            })) => assert_eq!(cancel.request_id, sent.request_id),
            other => panic!("expected a cancel, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn ended_session_fails_its_requests() {
        let router = LogRouter::default();
        let (agent_tx, _agent_rx) = mpsc::channel(4);
        let registration = router.register_agent("h1", agent_tx);
        let mut stream = router.open("h1", request()).await.expect("open");
        router.unregister_agent(&registration);
        let item = stream.next().await.expect("an error item");
        assert_eq!(item.expect_err("session ended").code(), tonic::Code::Unavailable);
    }
}
