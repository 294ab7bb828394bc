//! Routing of `logs` requests to the agents that run the silos.
//!
//! The output of a silo stays on its host. A client's `Logs` call becomes an `AgentLogsRequest`
//! on the open session of that host's agent, with a request id unique in this controller
//! process. The agent replies with `AgentLogChunk` messages on the same session, which the
//! agent service hands to [`LogRouter::deliver`], and the router passes them on to the waiting
//! client stream. A client that goes away cancels the request on the agent; an agent session
//! that ends fails its open requests.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use colex_proto as proto;
use colex_proto::controller_message::Kind as ControllerKind;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

/// Sender of one agent session's outbound stream.
pub type AgentOutbound = mpsc::Sender<Result<proto::ControllerMessage, Status>>;

/// Chunks queued for one client before the agent session waits.
const CLIENT_QUEUE_LEN: usize = 16;

/// The open agent sessions that can serve logs, and the log requests in flight.
#[derive(Debug, Clone, Default)]
pub struct LogRouter {
    inner: Arc<Mutex<RouterState>>,
}

#[derive(Debug, Default)]
struct RouterState {
    next_id: u64,
    /// Host name to the session token and outbound stream of its agent.
    agents: HashMap<String, (u64, AgentOutbound)>,
    /// Request id to its host and the client's chunk queue.
    pending: HashMap<u64, (String, mpsc::Sender<Result<proto::LogChunk, Status>>)>,
}

/// Proof of one registered agent session, for [`LogRouter::unregister_agent`].
#[derive(Debug)]
pub struct AgentRegistration {
    host: String,
    token: u64,
}

impl LogRouter {
    /// Makes the agent session of `host` the one log requests for the host go to.
    pub fn register_agent(&self, host: &str, outbound: AgentOutbound) -> AgentRegistration {
        let mut state = self.lock();
        state.next_id += 1;
        let token = state.next_id;
        state.agents.insert(host.to_owned(), (token, outbound));
        AgentRegistration {
            host: host.to_owned(),
            token,
        }
    }

    /// Forgets an ended agent session, unless a newer one of the same host replaced it, and
    /// fails the requests that session was serving.
    pub fn unregister_agent(&self, registration: &AgentRegistration) {
        let mut state = self.lock();
        let current = state.agents.get(&registration.host).map(|(token, _)| *token);
        if current != Some(registration.token) {
            return;
        }
        state.agents.remove(&registration.host);
        let failed: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, (host, _))| *host == registration.host)
            .map(|(id, _)| *id)
            .collect();
        for id in failed {
            if let Some((host, client)) = state.pending.remove(&id) {
                let status = Status::unavailable(format!("the session of host {host}'s agent ended; run logs again"));
                // try_send: the client may be gone or full, and the lock must not be held
                // across an await.
                let _ = client.try_send(Err(status));
            }
        }
    }

    /// Sends `request` (its id is filled in here) to the agent of `host` and returns the stream
    /// of chunks for the client.
    pub async fn open(&self, host: &str, mut request: proto::AgentLogsRequest) -> Result<ClientLogStream, Status> {
        let (client_tx, client_rx) = mpsc::channel(CLIENT_QUEUE_LEN);
        let outbound = {
            let mut state = self.lock();
            let Some((_, outbound)) = state.agents.get(host).cloned() else {
                return Err(Status::unavailable(format!(
                    "the agent of host {host} is not connected; its silos' logs stay on that host until it is back"
                )));
            };
            state.next_id += 1;
            request.request_id = state.next_id;
            state.pending.insert(request.request_id, (host.to_owned(), client_tx));
            outbound
        };
        let request_id = request.request_id;
        let message = proto::ControllerMessage {
            kind: Some(ControllerKind::LogsRequest(request)),
        };
        if outbound.send(Ok(message)).await.is_err() {
            self.lock().pending.remove(&request_id);
            return Err(Status::unavailable(format!("the session of host {host}'s agent just ended; run logs again")));
        }
        Ok(ClientLogStream {
            chunks: client_rx,
            request_id,
            router: self.clone(),
        })
    }

    /// Passes one chunk from an agent on to its client. A chunk for a client that went away
    /// cancels the request on the agent.
    pub async fn deliver(&self, chunk: proto::AgentLogChunk) {
        let request_id = chunk.request_id;
        let client = {
            let mut state = self.lock();
            if chunk.end {
                state.pending.remove(&request_id)
            } else {
                state.pending.get(&request_id).cloned()
            }
        };
        let Some((host, client)) = client else {
            return;
        };
        let item = if !chunk.error.is_empty() {
            Err(Status::not_found(chunk.error))
        } else if chunk.end {
            // Dropping the sender ends the client's stream.
            return;
        } else {
            Ok(proto::LogChunk { data: chunk.data })
        };
        if client.send(item).await.is_err() {
            self.cancel(request_id, Some(&host)).await;
        }
    }

    /// Forgets request `request_id` and sends its agent an `AgentLogsCancel`.
    async fn cancel(&self, request_id: u64, host: Option<&str>) {
        let outbound = {
            let mut state = self.lock();
            let removed = state.pending.remove(&request_id).map(|(host, _)| host);
            let host = removed.as_deref().or(host);
            host.and_then(|host| state.agents.get(host).map(|(_, outbound)| outbound.clone()))
        };
        if let Some(outbound) = outbound {
            let message = proto::ControllerMessage {
                kind: Some(ControllerKind::LogsCancel(proto::AgentLogsCancel { request_id })),
            };
            let _ = outbound.send(Ok(message)).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, RouterState> {
        // The maps stay consistent across a panic of a holder, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The chunks of one `Logs` call. Dropping it (the client went away) cancels the request on
/// the agent.
#[derive(Debug)]
pub struct ClientLogStream {
    chunks: mpsc::Receiver<Result<proto::LogChunk, Status>>,
    request_id: u64,
    router: LogRouter,
}

impl Stream for ClientLogStream {
    type Item = Result<proto::LogChunk, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.poll_recv(context)
    }
}

impl Drop for ClientLogStream {
    fn drop(&mut self) {
        let still_pending = self.router.lock().pending.contains_key(&self.request_id);
        if !still_pending {
            return;
        }
        let router = self.router.clone();
        let request_id = self.request_id;
        // Drop runs inside the gRPC server's tokio runtime.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { router.cancel(request_id, None).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

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
