//! Routing of client calls that an agent serves. A request goes out on the open session of
//! the agent of one host, with an id unique in this controller process. The agent's replies on
//! that session come back to the waiting client stream. `logs` and `exec` both work this way,
//! and a [`RoutedCall`] supplies what differs between them.
//!
//! A client that goes away cancels its request on the agent. An agent session that ends fails
//! the requests it was serving.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use colex_proto as proto;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::Status;

/// Sender of one agent session's outbound stream.
pub type AgentOutbound = mpsc::Sender<Result<proto::ControllerMessage, Status>>;

/// Items queued for one client before the agent session waits.
const CLIENT_QUEUE_LEN: usize = 16;

/// The parts that differ between the kinds of routed calls.
pub trait RoutedCall: Send + Sync + 'static {
    /// Item of the client's stream.
    type Item: Send + 'static;
    /// Name of the client command, for messages ("logs", "exec").
    const COMMAND: &'static str;
    /// Returns the message that cancels request `id` on the agent.
    fn cancel_message(id: u64) -> proto::ControllerMessage;
    /// Returns the error a client gets when the agent session serving its request ends.
    fn session_ended(host: &str) -> Status;
    /// Returns the error a client gets when the agent of `host` has no session.
    fn not_connected(host: &str) -> Status;
}

/// The open agent sessions, and the requests in flight, of one kind of routed call.
pub struct AgentRouter<R: RoutedCall> {
    inner: Arc<Mutex<RouterState<R::Item>>>,
}

// Derived impls would require `R` itself to be `Clone`, `Default` and `Debug`.
impl<R: RoutedCall> std::fmt::Debug for AgentRouter<R> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        formatter
            .debug_struct("AgentRouter")
            .field("command", &R::COMMAND)
            .field("agents", &state.agents.len())
            .field("pending", &state.pending.len())
            .finish()
    }
}

impl<R: RoutedCall> Clone for AgentRouter<R> {
    fn clone(&self) -> Self {
        AgentRouter {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R: RoutedCall> Default for AgentRouter<R> {
    fn default() -> Self {
        AgentRouter {
            inner: Arc::new(Mutex::new(RouterState {
                next_id: 0,
                agents: HashMap::new(),
                pending: HashMap::new(),
            })),
        }
    }
}

/// The client's queue of one request.
type ClientQueue<T> = mpsc::Sender<Result<T, Status>>;

#[derive(Debug)]
struct RouterState<T> {
    /// Last id handed out, to requests and session registrations alike.
    next_id: u64,
    /// Host name to the registration id and outbound stream of its agent's session.
    agents: HashMap<String, (u64, AgentOutbound)>,
    /// Request id to its host and the client's queue.
    pending: HashMap<u64, (String, ClientQueue<T>)>,
}

/// Proof of one registered agent session, for [`AgentRouter::unregister_agent`].
#[derive(Debug)]
pub struct Registration {
    host: String,
    token: u64,
}

impl<R: RoutedCall> AgentRouter<R> {
    /// Makes the agent session of `host` the one that requests for the host go to.
    pub fn register_agent(&self, host: &str, outbound: AgentOutbound) -> Registration {
        let mut state = self.lock();
        state.next_id += 1;
        let token = state.next_id;
        state.agents.insert(host.to_owned(), (token, outbound));
        Registration {
            host: host.to_owned(),
            token,
        }
    }

    /// Forgets an ended agent session, unless a newer one of the same host replaced it, and
    /// fails the requests that session was serving.
    pub fn unregister_agent(&self, registration: &Registration) {
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
                // try_send: the lock must not be held across an await, and a full or gone
                // client loses nothing it could still use.
                let _ = client.try_send(Err(R::session_ended(&host)));
            }
        }
    }

    /// Sends the agent of `host` the message `request` builds from a new request id, and
    /// returns the client's stream of replies.
    pub async fn open_request(
        &self,
        host: &str,
        request: impl FnOnce(u64) -> proto::ControllerMessage,
    ) -> Result<ClientStream<R>, Status> {
        let (client_tx, client_rx) = mpsc::channel(CLIENT_QUEUE_LEN);
        let (id, outbound) = {
            let mut state = self.lock();
            let Some((_, outbound)) = state.agents.get(host).cloned() else {
                return Err(R::not_connected(host));
            };
            state.next_id += 1;
            let id = state.next_id;
            state.pending.insert(id, (host.to_owned(), client_tx));
            (id, outbound)
        };

        if outbound.send(Ok(request(id))).await.is_err() {
            self.lock().pending.remove(&id);
            return Err(Status::unavailable(format!(
                "the session of host {host}'s agent just ended; run {} again",
                R::COMMAND
            )));
        }
        Ok(ClientStream {
            items: client_rx,
            id,
            router: self.clone(),
        })
    }

    /// Returns the outbound stream of the agent that serves request `id`, while it is open.
    pub fn outbound_of(&self, id: u64) -> Option<AgentOutbound> {
        let state = self.lock();
        let (host, _) = state.pending.get(&id)?;
        state.agents.get(host).map(|(_, outbound)| outbound.clone())
    }

    /// Passes `item` from an agent on to the client of request `id`; `None` only ends the
    /// client's stream. With `last`, the request is done and the client's stream ends after
    /// the item. An item for a client that went away cancels the request on the agent.
    pub async fn deliver_item(&self, id: u64, item: Option<Result<R::Item, Status>>, last: bool) {
        let client = {
            let mut state = self.lock();
            if last {
                state.pending.remove(&id)
            } else {
                state.pending.get(&id).cloned()
            }
        };
        let Some((host, client)) = client else {
            return;
        };
        // Dropping the sender without an item ends the client's stream.
        let Some(item) = item else {
            return;
        };
        if client.send(item).await.is_err() && !last {
            self.cancel(id, Some(&host)).await;
        }
    }

    /// Forgets request `id` and sends its agent the cancel message.
    async fn cancel(&self, id: u64, host: Option<&str>) {
        let outbound = {
            let mut state = self.lock();
            let removed = state.pending.remove(&id).map(|(host, _)| host);
            let host = removed.as_deref().or(host);
            host.and_then(|host| state.agents.get(host).map(|(_, outbound)| outbound.clone()))
        };
        if let Some(outbound) = outbound {
            tracing::info!(request_id = id, command = R::COMMAND, "client went away; cancelling its request on the agent");
            let _ = outbound.send(Ok(R::cancel_message(id))).await;
        }
    }

    fn is_pending(&self, id: u64) -> bool {
        self.lock().pending.contains_key(&id)
    }

    fn lock(&self) -> MutexGuard<'_, RouterState<R::Item>> {
        // The maps stay consistent across a panic of a holder, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The replies of one routed call. Dropping it (the client went away) cancels the request on
/// the agent.
pub struct ClientStream<R: RoutedCall> {
    items: mpsc::Receiver<Result<R::Item, Status>>,
    id: u64,
    router: AgentRouter<R>,
}

impl<R: RoutedCall> std::fmt::Debug for ClientStream<R> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClientStream")
            .field("command", &R::COMMAND)
            .field("id", &self.id)
            .finish()
    }
}

impl<R: RoutedCall> ClientStream<R> {
    /// Returns the request's id, which the agent's replies carry.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<R: RoutedCall> Stream for ClientStream<R> {
    type Item = Result<R::Item, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.poll_recv(context)
    }
}

impl<R: RoutedCall> Drop for ClientStream<R> {
    fn drop(&mut self) {
        if !self.router.is_pending(self.id) {
            return;
        }
        let router = self.router.clone();
        let id = self.id;
        // Drop runs inside the gRPC server's tokio runtime.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { router.cancel(id, None).await });
        }
    }
}
