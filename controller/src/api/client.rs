//! The `Client` service used by colex-cli.

use std::pin::Pin;
use std::sync::Arc;

use colex_proto as proto;
use prost::Message;
use rand::Rng;
use tokio::sync::Mutex;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::logs::LogRouter;
use crate::api::unavailable;
use crate::raft::RaftNode;
use crate::scheduler;
use crate::sessions::Sessions;
use crate::state::{Command, Desired};
use crate::view;

/// Maximum length of a silo name, as for a DNS label.
const MAX_NAME_LEN: usize = 63;

pub struct ClientService {
    node: RaftNode,
    sessions: Sessions,
    /// Serializes `up` so two requests never place silos from the same
    /// stale view of the hosts' load.
    placement: Arc<Mutex<()>>,
    logs: LogRouter,
}

impl ClientService {
    pub fn new(node: RaftNode, sessions: Sessions, logs: LogRouter) -> Self {
        Self {
            node,
            sessions,
            placement: Arc::new(Mutex::new(())),
            logs,
        }
    }

    /// Stores one silo, or leaves it alone when an identical spec already
    /// runs under that name.
    async fn up_one(&self, spec: proto::SiloSpec) -> Result<proto::SiloInfo, Status> {
        validate(&spec)?;
        let encoded = spec.encode_to_vec();

        let (host, id) = {
            let state = self.node.state.read().await;
            if let Some(existing) = state.silos.get(&spec.name) {
                let unchanged = existing.spec == encoded && existing.desired == Desired::Run;
                let failed = view::silo_state(existing) == proto::SiloState::Failed;
                if unchanged && !failed {
                    tracing::info!(silo = %spec.name, id = %existing.id, "spec unchanged; nothing to do");
                    return Ok(view::silo_info(existing));
                }
            }

            let live = self.sessions.live_hosts();
            // A replacement stays on its host while that host is live and has
            // what the new spec needs, so the old instance is stopped before
            // the new one takes its place there.
            let current_host = state
                .silos
                .get(&spec.name)
                .map(|existing| existing.host.clone())
                .filter(|host| live.contains(host));
            let host = scheduler::place(&state, &live, &spec, current_host.as_deref()).map_err(|error| match error {
                scheduler::PlacementError::UnknownStrategy { .. } => Status::invalid_argument(error.to_string()),
                _ => Status::failed_precondition(error.to_string()),
            })?;

            let mut id = new_silo_id();
            while state.silo_by_id(&id).is_some() {
                id = new_silo_id();
            }
            (host, id)
        };

        let name = spec.name.clone();
        self.node
            .write(Command::PutSilo {
                name: name.clone(),
                id: id.clone(),
                spec: encoded,
                host: host.clone(),
            })
            .await
            .map_err(|error| unavailable(&error))?;
        tracing::info!(silo = %name, %id, %host, "silo placed");

        let state = self.node.state.read().await;
        state
            .silos
            .get(&name)
            .map(view::silo_info)
            .ok_or_else(|| Status::aborted(format!("silo {name} was removed while it was being stored; run up again")))
    }
}

/// Log chunks of one `logs` request: from the agent through this controller's log router, or
/// relayed from the leader when this controller is a follower.
pub type LogChunkStream = Pin<Box<dyn Stream<Item = Result<proto::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl proto::client_server::Client for ClientService {
    type LogsStream = LogChunkStream;

    async fn logs(&self, request: Request<proto::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        // Agents hold their sessions with the leader, so only the leader can reach the silo's
        // agent. Reading logs twice is harmless, so a retried forward is fine.
        let forwarded = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { leader_client(channel).logs(forwarded).await });
        if let Some(response) = forwarded.await? {
            let relayed: LogChunkStream = Box::pin(response.into_inner());
            return Ok(Response::new(relayed));
        }
        let request = request.into_inner();
        let (host, silo_id) = {
            let state = self.node.state.read().await;
            match state.silos.get(&request.name) {
                // A start that failed removed everything of the silo, its logs included, so
                // the failure message is all there is to show.
                Some(record)
                    if record
                        .status
                        .as_ref()
                        .is_some_and(|status| status.state == proto::SiloState::Failed as i32) =>
                {
                    let message = record.status.as_ref().map(|status| status.message.as_str()).unwrap_or_default();
                    return Err(Status::failed_precondition(format!(
                        "silo {} ({}) FAILED on host {}: {message}; it left no logs, fix the silo file and run up again",
                        request.name, record.id, record.host
                    )));
                }
                Some(record) => (record.host.clone(), record.id.clone()),
                None => {
                    return Err(Status::not_found(format!(
                        "silo {} not found; see `colex-cli list` for the names",
                        request.name
                    )))
                }
            }
        };
        let agent_request = proto::AgentLogsRequest {
            request_id: 0,
            silo_id,
            stream: request.stream,
            tail_lines: request.tail_lines,
            follow: request.follow,
        };
        tracing::info!(silo = %request.name, %host, follow = request.follow, "logs requested");
        let stream: LogChunkStream = Box::pin(self.logs.open(&host, agent_request).await?);
        Ok(Response::new(stream))
    }

    async fn up(&self, request: Request<proto::UpRequest>) -> Result<Response<proto::UpResponse>, Status> {
        // An `up` whose first attempt committed is a no-op when forwarded again: the spec is unchanged.
        let forwarded = self.node.leader.forward(&request, |channel, forwarded| async move { leader_client(channel).up(forwarded).await });
        if let Some(response) = forwarded.await? {
            return Ok(response);
        }
        let specs = request.into_inner().silos;
        if specs.is_empty() {
            return Err(Status::invalid_argument("the request contains no silo"));
        }

        let _placement = self.placement.lock().await;
        let mut silos = Vec::with_capacity(specs.len());
        for spec in specs {
            silos.push(self.up_one(spec).await?);
        }
        Ok(Response::new(proto::UpResponse { silos }))
    }

    async fn down(&self, request: Request<proto::DownRequest>) -> Result<Response<proto::DownResponse>, Status> {
        let forwarded = self.node.leader.forward(&request, |channel, forwarded| async move { leader_client(channel).down(forwarded).await });
        if let Some(response) = forwarded.await? {
            return Ok(response);
        }
        let mut response = proto::DownResponse::default();
        for name in request.into_inner().names {
            let known = self.node.state.read().await.silos.contains_key(&name);
            if !known {
                response.not_found.push(name);
                continue;
            }
            self.node
                .write(Command::StopSilo { name: name.clone() })
                .await
                .map_err(|error| unavailable(&error))?;
            tracing::info!(silo = %name, "silo stopping");
            response.stopping.push(name);
        }
        Ok(Response::new(response))
    }

    async fn list(&self, request: Request<proto::ListRequest>) -> Result<Response<proto::ListResponse>, Status> {
        // A stale read is served from this controller's applied state. Otherwise the leader, which
        // also has the agent sessions that decide host states, serves a linearizable read.
        if !is_stale_read(request.metadata()) {
            let forwarded = self.node.leader.forward(&request, |channel, forwarded| async move { leader_client(channel).list(forwarded).await });
            if let Some(response) = forwarded.await? {
                return Ok(response);
            }
            self.node.read_barrier().await.map_err(|error| unavailable(&error))?;
        }

        let live = self.sessions.live_hosts();
        let state = self.node.state.read().await;
        let now = std::time::Instant::now();
        let silos = state.silos.values().map(|record| view::silo_info_with_usage(record, self.sessions.usage(), now)).collect();
        let hosts = state
            .hosts
            .values()
            .map(|host| view::host_info(&state, host, &live))
            .collect();
        Ok(Response::new(proto::ListResponse { silos, hosts }))
    }
}

/// Returns a client of the leader's `Client` service on `channel`.
fn leader_client(channel: tonic::transport::Channel) -> proto::client_client::ClientClient<tonic::transport::Channel> {
    proto::client_client::ClientClient::new(channel)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES)
}

/// Returns true when the request is for a read from the local state.
fn is_stale_read(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get(proto::READ_CONSISTENCY_HEADER)
        .is_some_and(|value| value.as_bytes() == proto::STALE_READ.as_bytes())
}

/// Returns a random silo id of 8 lower-case hex digits.
fn new_silo_id() -> String {
    format!("{:08x}", rand::rng().random::<u32>())
}

/// Checks what the controller relies on. The CLI validates files in depth
/// with line numbers; this guards against other clients.
fn validate(spec: &proto::SiloSpec) -> Result<(), Status> {
    if !is_dns_label(&spec.name) {
        return Err(Status::invalid_argument(format!(
            "invalid silo name {:?}: use 1 to {MAX_NAME_LEN} of a-z, 0-9 and -, not starting or ending with -",
            spec.name
        )));
    }
    let binary_path = spec.binary.as_ref().map(|binary| binary.path.as_str()).unwrap_or("");
    if !binary_path.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "silo {}: binary.path {:?} must be an absolute path inside the silo",
            spec.name, binary_path
        )));
    }
    if let Some(field) = unsupported_field(spec) {
        return Err(Status::invalid_argument(format!(
            "silo {}: `{field}` is not supported yet by this cluster; remove it from the silo file",
            spec.name
        )));
    }
    Ok(())
}

/// Returns the first field the cluster cannot act on yet. Such a spec is
/// rejected instead of run without it.
fn unsupported_field(spec: &proto::SiloSpec) -> Option<&'static str> {
    if spec.grants.as_ref().is_some_and(|grants| grants.query_silos) {
        return Some("grants.query_silos");
    }
    if spec.count.is_some_and(|count| count != 1) {
        return Some("count");
    }
    None
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("web-1"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("-web"));
        assert!(!is_dns_label("Web"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    fn valid_spec() -> proto::SiloSpec {
        proto::SiloSpec {
            name: "web".to_owned(),
            base: "busybox".to_owned(),
            binary: Some(proto::Binary {
                path: "/bin/httpd".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn valid_spec_passes() {
        assert!(validate(&valid_spec()).is_ok());
    }

    #[test]
    fn unsupported_fields_are_rejected() {
        let mut with_count = valid_spec();
        with_count.count = Some(3);
        let status = validate(&with_count).expect_err("unsupported field rejected");
        assert!(status.message().contains("`count`"), "`count` named in {:?}", status.message());
        assert!(status.message().contains("not supported yet"), "{:?}", status.message());
    }

    #[test]
    fn placement_passes() {
        let mut spec = valid_spec();
        spec.placement = Some(proto::Placement {
            hosts: vec!["host-b".to_owned()],
            labels: [("zone".to_owned(), "b".to_owned())].into(),
            strategy: proto::PlacementStrategy::Binpack.into(),
        });
        assert!(validate(&spec).is_ok());
    }

    #[test]
    fn resources_pass() {
        let mut spec = valid_spec();
        spec.resources = Some(proto::Resources {
            cpu_percent: 50,
            memory_bytes: 64 << 20,
        });
        assert!(validate(&spec).is_ok());
    }

    #[test]
    fn restart_policies_pass() {
        let mut spec = valid_spec();
        spec.restart = Some(proto::RestartPolicy {
            mode: proto::RestartMode::OnFailure.into(),
            attempts: 2,
            delay_ms: 500,
        });
        assert!(validate(&spec).is_ok());
    }

    #[test]
    fn count_of_one_and_never_restart_pass() {
        let mut spec = valid_spec();
        spec.count = Some(1);
        spec.restart = Some(proto::RestartPolicy::default());
        spec.kill_timeout_ms = 10_000;
        assert!(validate(&spec).is_ok());
    }

    #[test]
    fn images_and_binds_are_left_to_the_scheduler() {
        // Whether a host has the image and bind ids is checked at placement.
        let mut spec = valid_spec();
        spec.base = "alpine".to_owned();
        spec.binds.push(proto::Bind {
            id: "data".to_owned(),
            path: "/data".to_owned(),
        });
        assert!(validate(&spec).is_ok());
    }

    #[test]
    fn silo_ids_are_eight_hex_digits() {
        let id = new_silo_id();
        assert_eq!(id.len(), 8);
        assert!(id.bytes().all(|byte| byte.is_ascii_hexdigit()));
    }
}
