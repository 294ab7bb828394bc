//! The `Client` service used by colex-cli.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use colex_proto as proto;
use prost::Message;
use rand::Rng;
use tokio::sync::Mutex;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::applied::AppliedState;
use crate::api::hosts;
use crate::blobs::{self, ContentLimitError};
use crate::api::logs::LogRouter;
use crate::api::unavailable;
use crate::placer::{Placer, UpItem};
use crate::raft::{RaftError, RaftNode};
use crate::scheduler::{self, InstanceRequest};
use crate::sessions::Sessions;
use crate::state::{instance_key, ClusterState, Command, Desired, InstancePlacement, InstanceUpdate, SiloRecord};
use crate::view;

/// Maximum length of a silo name, as for a DNS label.
const MAX_NAME_LEN: usize = 63;
/// Maximum `count` of one silo, the limit the silo file format states.
const MAX_COUNT: u32 = 1000;

pub struct ClientService {
    node: RaftNode,
    sessions: Sessions,
    /// Stores the silos of `up` requests in batches.
    placer: Placer,
    logs: LogRouter,
    /// Cluster-wide limit of the stored file contents, in bytes.
    max_file_content_bytes: u64,
}

impl ClientService {
    /// Creates the service and starts the placer, which also places pending silo instances while
    /// this controller leads, and the host watch. It must be called inside a Tokio runtime.
    pub fn new(node: RaftNode, sessions: Sessions, logs: LogRouter) -> Self {
        let placement = Arc::new(Mutex::new(()));
        tokio::spawn(crate::relocation::watch_hosts_forever(node.clone(), sessions.clone(), Arc::clone(&placement)));
        let placer = Placer::start(node.clone(), sessions.clone(), placement);
        Self {
            node,
            sessions,
            placer,
            logs,
            max_file_content_bytes: blobs::DEFAULT_MAX_TOTAL_CONTENT_BYTES,
        }
    }

    /// Sets the cluster-wide limit of the stored file contents, in bytes.
    pub fn with_max_file_content_bytes(mut self, bytes: u64) -> Self {
        self.max_file_content_bytes = bytes;
        self
    }
}

/// Checks one silo of an `up` request and encodes it as the state stores it: without `count`,
/// so a change of count alone leaves the other instances' spec, and so the instances
/// themselves, as they are, and with the SHA-256 and size of each file's content in place of
/// the content, so that a content is stored once however many specs use it.
fn up_item(spec: proto::SiloSpec) -> Result<UpItem, Status> {
    validate(&spec)?;
    scheduler::Strategy::of(&spec).map_err(|error| Status::invalid_argument(error.to_string()))?;
    let count = spec.count.unwrap_or(1);
    let name = spec.name.clone();
    let mut stored_spec = spec;
    stored_spec.count = None;
    let contents = blobs::take_contents(&mut stored_spec).map_err(|error| Status::invalid_argument(error.to_string()))?;
    let encoded = stored_spec.encode_to_vec();
    check_spec_size(&name, encoded.len())?;
    Ok(UpItem {
        name,
        spec: stored_spec,
        encoded,
        count,
        contents,
        new_content_bytes: 0,
    })
}

/// Finds the contents of `items` that `state` does not store, charges each to the first item
/// that uses it (`UpItem::new_content_bytes`, for the size of the placer's entries), and checks
/// them against the per-request limit and the cluster-wide limit `max_total_bytes`.
fn check_new_contents(state: &ClusterState, items: &mut [UpItem], max_total_bytes: u64) -> Result<(), ContentLimitError> {
    let mut seen = BTreeSet::new();
    let mut new_bytes = 0usize;
    for item in items.iter_mut() {
        for (hash, content) in &item.contents {
            if state.file_contents.contains_key(hash) || !seen.insert(hash.clone()) {
                continue;
            }
            item.new_content_bytes += content.len();
            new_bytes += content.len();
        }
    }
    if new_bytes > blobs::MAX_NEW_CONTENT_BYTES_PER_REQUEST {
        return Err(ContentLimitError::RequestTooLarge { bytes: new_bytes });
    }
    let (_, stored) = state.file_content_totals();
    if stored.saturating_add(new_bytes as u64) > max_total_bytes {
        return Err(ContentLimitError::ClusterFull {
            bytes: new_bytes,
            stored,
            limit: max_total_bytes,
        });
    }
    Ok(())
}

/// Places pending instances and takes the next step of rolling replacements, if this
/// controller leads. The placer calls it when `sessions` signals that capacity may have
/// appeared, and every second.
pub(crate) async fn place_pending_and_roll(node: &RaftNode, sessions: &Sessions) {
    let leads = node.raft.metrics().borrow().current_leader == Some(node.id);
    if !leads {
        return;
    }
    if let Err(error) = place_pending(node, sessions).await {
        tracing::warn!(%error, "placing pending silo instances failed; retrying later");
    }
    if let Err(error) = roll_all_forward(node, sessions).await {
        tracing::warn!(%error, "rolling replacement of silo instances failed; retrying later");
    }
}

/// Takes the next step of every rolling replacement whose newest instances are all UP.
async fn roll_all_forward(node: &RaftNode, sessions: &Sessions) -> Result<(), RaftError> {
    let names: BTreeSet<String> = node
        .state
        .read()
        .await
        .silos
        .values()
        .filter(|record| record.desired == Desired::Run && record.next_spec.is_some())
        .map(|record| record.name.clone())
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    let live = sessions.live_hosts();
    for name in names {
        roll_forward(node, &live, &name).await?;
    }
    Ok(())
}

/// Replaces the next instance of silo `name`'s rolling replacement by an instance of its next
/// spec, on its host when that host still fits, when [`scheduler::next_rollout_step`] allows
/// it. Does nothing otherwise.
pub(crate) async fn roll_forward(node: &RaftNode, live: &BTreeSet<String>, name: &str) -> Result<(), RaftError> {
    let command = {
        let state = node.state.read().await;
        let Some(record) = scheduler::next_rollout_step(&state, name) else {
            return Ok(());
        };
        let Some(next_spec) = &record.next_spec else {
            return Ok(());
        };
        let spec = match proto::SiloSpec::decode(next_spec.as_slice()) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::error!(silo = %name, id = %record.id, %error, "stored next spec does not decode; instance not replaced");
                return Ok(());
            }
        };
        let request = InstanceRequest {
            index: record.index,
            preferred: Some(record.host.clone()),
        };
        let replaced = BTreeSet::from([record.key()]);
        let placed = match scheduler::place_instances(&state, live, &spec, &[request], &replaced) {
            Ok(mut placed) => placed.pop(),
            Err(error) => {
                tracing::error!(silo = %name, %error, "next spec cannot be placed; instance not replaced");
                return Ok(());
            }
        };
        let Some(placed) = placed else {
            return Ok(());
        };
        Command::ReplaceInstance {
            name: name.to_owned(),
            replaced_id: record.id.clone(),
            instance: InstanceUpdate {
                index: record.index,
                id: unused_silo_id(&state, &mut BTreeSet::new()),
                placement: placement_of(placed),
            },
        }
    };
    if let Command::ReplaceInstance { replaced_id, instance, .. } = &command {
        tracing::info!(silo = %name, index = instance.index, replaced = %replaced_id, "rolling replacement: next instance");
        log_placement(name, instance);
    }
    node.write(command).await?;
    Ok(())
}

/// Tries once to place every pending instance, one silo at a time, and stores a newer reason
/// for those that still fit nowhere.
async fn place_pending(node: &RaftNode, sessions: &Sessions) -> Result<(), RaftError> {
    let live = sessions.live_hosts();
    // Right after a leader change no agent has reconnected yet. Reasons computed then would
    // only state that no host is live, so the stored ones are kept until agents are back.
    if live.is_empty() {
        return Ok(());
    }
    let names: BTreeSet<String> = node.state.read().await.pending().map(|record| record.name.clone()).collect();

    for name in names {
        let command = {
            let state = node.state.read().await;
            pending_command(&state, &live, &name)
        };
        let Some(command) = command else {
            continue;
        };
        if let Command::PlaceInstances { instances, .. } = &command {
            for instance in instances {
                log_placement(&name, instance);
            }
        }
        node.write(command).await?;
    }
    Ok(())
}

/// Builds the command that places the pending instances of silo `name` on the `live` hosts, or
/// returns `None` when nothing would change.
fn pending_command(state: &AppliedState, live: &BTreeSet<String>, name: &str) -> Option<Command> {
    let pending: Vec<&SiloRecord> = state
        .instances(name)
        .into_iter()
        .filter(|record| record.desired == Desired::Run && record.is_pending())
        .collect();

    let first = *pending.first()?;
    let spec = match view::decode_spec(first) {
        Ok(spec) => spec,
        Err(error) => {
            tracing::error!(silo = %name, id = %first.id, %error, "stored silo spec does not decode; not placed");
            return None;
        }
    };

    // `up` writes one spec to every instance it creates or replaces, so pending instances share
    // it. The check keeps a mismatch from placing an instance by another spec's needs.
    let pending: Vec<&SiloRecord> = pending.into_iter().filter(|record| record.spec == first.spec).collect();
    let requests: Vec<InstanceRequest> = pending
        .iter()
        .map(|record| InstanceRequest {
            index: record.index,
            preferred: None,
        })
        .collect();

    let placed = match scheduler::place_instances(state, live, &spec, &requests, &BTreeSet::new()) {
        Ok(placed) => placed,
        Err(error) => {
            tracing::error!(silo = %name, %error, "pending silo cannot be placed by its stored spec");
            return None;
        }
    };

    let mut instances = Vec::new();
    for (record, result) in pending.iter().zip(placed) {
        let placement = placement_of(result);
        let same_reason = matches!(
            &placement,
            InstancePlacement::Pending { reason } if record.pending_reason.as_ref() == Some(reason)
        );
        if !same_reason {
            instances.push(InstanceUpdate {
                index: record.index,
                id: record.id.clone(),
                placement,
            });
        }
    }
    if instances.is_empty() {
        return None;
    }
    Some(Command::PlaceInstances {
        name: name.to_owned(),
        instances,
    })
}

/// Turns the scheduler's result for one instance into what the state stores: the host, or the
/// error text as the pending reason.
pub(crate) fn placement_of(result: Result<String, scheduler::PlacementError>) -> InstancePlacement {
    match result {
        Ok(host) => InstancePlacement::Host(host),
        Err(error) => InstancePlacement::Pending {
            reason: error.to_string(),
        },
    }
}

/// Logs where one instance was placed, or why it is pending.
pub(crate) fn log_placement(name: &str, instance: &InstanceUpdate) {
    match &instance.placement {
        InstancePlacement::Host(host) => {
            tracing::info!(silo = %name, index = instance.index, id = %instance.id, %host, "silo instance placed");
        }
        InstancePlacement::Pending { reason } => {
            tracing::info!(silo = %name, index = instance.index, id = %instance.id, %reason, "silo instance pending");
        }
    }
}

/// Returns a random silo id that no stored record and none of `drawn_ids` uses, and adds it to
/// `drawn_ids`.
pub(crate) fn unused_silo_id(state: &ClusterState, drawn_ids: &mut BTreeSet<String>) -> String {
    loop {
        let id = new_silo_id();
        if state.silo_by_id(&id).is_none() && drawn_ids.insert(id.clone()) {
            return id;
        }
    }
}

/// Splits a requested `NAME[INDEX]`, as `list` shows instances, into the silo name and the
/// index. Returns `None` for a plain `NAME` or an index that is not a number.
pub(super) fn split_instance_name(requested: &str) -> Option<(&str, u32)> {
    let (name, index) = requested.strip_suffix(']')?.split_once('[')?;
    let index = index.parse::<u32>().ok()?;
    Some((name, index))
}

/// Returns the record key of a `logs` request's name: `NAME` is instance 0 and `NAME[INDEX]`
/// names another instance, as `list` shows them.
fn record_key_of(requested: &str) -> String {
    match split_instance_name(requested) {
        Some((name, index)) => instance_key(name, index),
        None => requested.to_owned(),
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
            match state.silos.get(&record_key_of(&request.name)) {
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
                Some(record) if record.is_pending() => {
                    let reason = record.pending_reason.as_deref().unwrap_or_default();
                    return Err(Status::failed_precondition(format!(
                        "silo {} ({}) is PENDING on no host, so it has no logs yet: {reason}",
                        request.name, record.id
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

        // Every silo is checked before any is stored, so an invalid one stores nothing.
        let mut items = specs.into_iter().map(up_item).collect::<Result<Vec<UpItem>, Status>>()?;
        // NOTE: concurrent requests are checked against the same stored total, so together they
        // can exceed the cluster-wide limit by up to one request's new contents each.
        check_new_contents(&*self.node.state.read().await, &mut items, self.max_file_content_bytes)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let names: Vec<String> = items.iter().map(|item| item.name.clone()).collect();
        let outcomes = self.placer.up(items).await?;
        let mut response = proto::UpResponse::default();
        for (name, outcome) in names.into_iter().zip(outcomes) {
            if outcome.unchanged {
                response.unchanged.push(name);
            }
            response.silos.extend(outcome.silos);
        }
        Ok(Response::new(response))
    }

    async fn down(&self, request: Request<proto::DownRequest>) -> Result<Response<proto::DownResponse>, Status> {
        let forwarded = self.node.leader.forward(&request, |channel, forwarded| async move { leader_client(channel).down(forwarded).await });
        if let Some(response) = forwarded.await? {
            return Ok(response);
        }
        let mut response = proto::DownResponse::default();
        for name in request.into_inner().names {
            let known = !self.node.state.read().await.instances(&name).is_empty();
            if !known {
                response.not_found.push(name);
                continue;
            }
            self.node
                .write(Command::StopSilo { name: name.clone() })
                .await
                .map_err(|error| unavailable(&error))?;
            tracing::info!(silo = %name, "silo stopping");
            self.sessions.wake_placement();
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
        // Listing 50,000 instances takes about a second. Its thread's other tasks, openraft's
        // core among them, move to another thread meanwhile, so heartbeats go out on time.
        let (silos, hosts) = outside_the_runtime(|| {
            let mut silos = view::all_instance_infos(&state, self.sessions.usage(), std::time::Instant::now());
            hosts::mark_lost_hosts(&mut silos, &self.sessions);
            (silos, hosts::host_infos(&state, &live))
        });
        Ok(Response::new(proto::ListResponse { silos, hosts }))
    }

    async fn status(&self, request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusResponse>, Status> {
        // Served like `list` without `--stale`: the leader reads after a read barrier.
        let forwarded = self.node.leader.forward(&request, |channel, forwarded| async move { leader_client(channel).status(forwarded).await });
        if let Some(response) = forwarded.await? {
            return Ok(response);
        }
        self.node.read_barrier().await.map_err(|error| unavailable(&error))?;
        let state = self.node.state.read().await;
        let response = super::status::silo_status(&state, &request.into_inner().name)?;
        Ok(Response::new(response))
    }

    async fn hosts(&self, request: Request<proto::HostsRequest>) -> Result<Response<proto::HostsResponse>, Status> {
        // Only the leader has the agent sessions that decide whether a host is up.
        let forwarded = self.node.leader.forward(&request, |channel, forwarded| async move { leader_client(channel).hosts(forwarded).await });
        if let Some(response) = forwarded.await? {
            return Ok(response);
        }
        self.node.read_barrier().await.map_err(|error| unavailable(&error))?;
        let live = self.sessions.live_hosts();
        let state = self.node.state.read().await;
        // Like `list`, it decodes every instance's spec for the reservations.
        let hosts = outside_the_runtime(|| hosts::host_infos(&state, &live));
        Ok(Response::new(proto::HostsResponse { hosts }))
    }

    async fn set_draining(
        &self,
        request: Request<proto::SetDrainingRequest>,
    ) -> Result<Response<proto::SetDrainingResponse>, Status> {
        // Storing the same mark twice changes nothing, so a retried forward is harmless.
        let forwarded = self.node.leader.forward(&request, |channel, forwarded| async move { leader_client(channel).set_draining(forwarded).await });
        if let Some(response) = forwarded.await? {
            return Ok(response);
        }
        let request = request.into_inner();
        let host = hosts::set_draining(&self.node, &self.sessions, &request.host, request.draining).await?;
        Ok(Response::new(proto::SetDrainingResponse { host: Some(host) }))
    }

    async fn remove_host(
        &self,
        request: Request<proto::RemoveHostRequest>,
    ) -> Result<Response<proto::RemoveHostResponse>, Status> {
        // Only the leader has the agent sessions that decide whether a host is up.
        let forwarded = self.node.leader.forward(&request, |channel, forwarded| async move { leader_client(channel).remove_host(forwarded).await });
        if let Some(response) = forwarded.await? {
            return Ok(response);
        }
        let request = request.into_inner();
        let response = hosts::remove_host(&self.node, &self.sessions, &request.host, request.force).await?;
        Ok(Response::new(response))
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

/// Largest spec the controller stores, in protobuf bytes, with each file's content replaced by
/// its SHA-256 and size (`blobs::take_contents`). Every spec travels in Raft log entries, and
/// openraft 0.9 gives each AppendEntries one heartbeat interval (see `raft::node`): 256 KiB
/// still replicated within it on a loaded 2-core VM, 1 MiB did not and stalled every write
/// (docs/benchmarks.md).
pub const MAX_STORED_SPEC_BYTES: usize = 256 * 1024;

/// Rejects a spec too large to store, with a message that names the alternatives.
fn check_spec_size(name: &str, encoded_bytes: usize) -> Result<(), Status> {
    if encoded_bytes <= MAX_STORED_SPEC_BYTES {
        return Ok(());
    }
    Err(Status::invalid_argument(format!(
        "silo {name}: its spec without file contents is {encoded_bytes} bytes, above the controller's limit of {MAX_STORED_SPEC_BYTES}; put large file trees into an image (`base = \"img://NAME\"`) or a `bind` instead of `file` blocks"
    )))
}

/// Returns a random silo id of 8 lower-case hex digits.
pub(crate) fn new_silo_id() -> String {
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
    match spec.count {
        Some(0) => {
            return Err(Status::invalid_argument(format!(
                "silo {}: `count = 0` is not supported yet by this cluster; use `colex-cli down` to stop every instance",
                spec.name
            )))
        }
        Some(count) if count > MAX_COUNT => {
            return Err(Status::invalid_argument(format!(
                "silo {}: count {count} is above the maximum of {MAX_COUNT}",
                spec.name
            )))
        }
        _ => {}
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
/// rejected instead of run without it. Every field is supported at present.
fn unsupported_field(_spec: &proto::SiloSpec) -> Option<&'static str> {
    None
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
}

/// Runs `work`, which may take long without awaiting, with `block_in_place` on a multi-threaded
/// runtime: the thread's queued tasks go to another worker first. On a single-threaded runtime,
/// as in tests, it runs `work` as it is.
fn outside_the_runtime<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_above_the_limit_are_rejected() {
        assert!(check_spec_size("web", MAX_STORED_SPEC_BYTES).is_ok());
        let status = check_spec_size("web", MAX_STORED_SPEC_BYTES + 1).expect_err("too large");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("silo web: its spec without file contents is 262145 bytes"), "{}", status.message());
    }

    /// Returns an `up` item of silo `name` with one file of `bytes` bytes of `fill`.
    fn item_with_file(name: &str, fill: u8, bytes: usize) -> UpItem {
        let mut spec = valid_spec();
        spec.name = name.to_owned();
        spec.files.push(proto::FileEntry {
            silo_path: "/data".to_owned(),
            content: vec![fill; bytes],
            ..Default::default()
        });
        up_item(spec).expect("valid spec")
    }

    #[test]
    fn new_contents_are_charged_once() {
        let state = ClusterState::default();
        let mut items = vec![item_with_file("a", 1, 1000), item_with_file("b", 1, 1000), item_with_file("c", 2, 500)];
        check_new_contents(&state, &mut items, u64::MAX).expect("within the limits");
        let charged: Vec<usize> = items.iter().map(|item| item.new_content_bytes).collect();
        assert_eq!(charged, vec![1000, 0, 500], "a shared content counts for its first silo only");
    }

    #[test]
    fn new_contents_above_the_limits_are_rejected() {
        let state = ClusterState::default();
        let half = blobs::MAX_NEW_CONTENT_BYTES_PER_REQUEST / 2;
        let mut items = vec![item_with_file("a", 1, half), item_with_file("b", 2, half + 1)];
        let error = check_new_contents(&state, &mut items, u64::MAX).expect_err("above the request limit");
        assert_eq!(error, ContentLimitError::RequestTooLarge { bytes: 2 * half + 1 });
        assert!(error.to_string().contains("262145 bytes of new file contents"), "{error}");

        let mut items = vec![item_with_file("a", 1, 1000)];
        let error = check_new_contents(&state, &mut items, 999).expect_err("above the cluster limit");
        let message = error.to_string();
        assert!(message.contains("adds 1000 bytes of new file contents to the 0 bytes stored, above the cluster's limit of 999 bytes"), "{message}");
        assert!(message.contains("--max-file-content-bytes"), "{message}");
        assert!(check_new_contents(&state, &mut items, 1000).is_ok(), "exactly the limit is accepted");
    }

    #[test]
    fn up_item_moves_contents_out() {
        let item = item_with_file("web", 7, 100);
        assert_eq!(item.contents.len(), 1);
        let stored = proto::SiloSpec::decode(item.encoded.as_slice()).expect("decode");
        assert!(stored.files[0].content.is_empty());
        assert_eq!(stored.files[0].content_size, 100);
        assert_eq!(stored.files[0].content_sha256.len(), blobs::SHA256_BYTES);
        let status = up_item(proto::SiloSpec {
            files: vec![proto::FileEntry {
                silo_path: "/big".to_owned(),
                content: vec![0; blobs::MAX_FILE_CONTENT_BYTES + 1],
                ..Default::default()
            }],
            ..valid_spec()
        })
        .expect_err("a file above the limit");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().starts_with("silo web: file /big is 262145 bytes"), "{}", status.message());
    }

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
    fn query_silos_grant_is_accepted() {
        let mut with_grant = valid_spec();
        with_grant.grants = Some(proto::Grants { query_silos: true, ..Default::default() });
        assert!(validate(&with_grant).is_ok());
    }

    #[test]
    fn count_limits() {
        let mut spec = valid_spec();
        spec.count = Some(MAX_COUNT);
        assert!(validate(&spec).is_ok());
        spec.count = Some(MAX_COUNT + 1);
        let status = validate(&spec).expect_err("count above the maximum");
        assert_eq!(status.message(), "silo web: count 1001 is above the maximum of 1000");
        spec.count = Some(0);
        let status = validate(&spec).expect_err("count 0 is not supported");
        assert!(status.message().contains("`count = 0`"), "{:?}", status.message());
    }

    #[test]
    fn logs_names_map_to_record_keys() {
        assert_eq!(record_key_of("web"), "web");
        assert_eq!(record_key_of("web[0]"), "web");
        assert_eq!(record_key_of("web[2]"), "web/2");
        assert_eq!(record_key_of("web[x]"), "web[x]");
    }

    #[test]
    fn pending_retry_places_on_joined_host() {
        let mut state = ClusterState::default();
        let spec = proto::SiloSpec {
            placement: Some(proto::Placement {
                labels: [("zone".to_owned(), "b".to_owned())].into(),
                ..Default::default()
            }),
            ..valid_spec()
        };
        state.apply(&Command::PutInstances {
            name: "web".to_owned(),
            spec: spec.encode_to_vec(),
            count: 1,
            instances: vec![InstanceUpdate {
                index: 0,
                id: "0000000a".to_owned(),
                placement: InstancePlacement::Pending {
                    reason: "old reason".to_owned(),
                },
            }],
            rolling: Vec::new(),
        });
        let register = |name: &str, zone: &str| Command::RegisterHost {
            name: name.to_owned(),
            address: "198.51.100.3".to_owned(),
            cpus: 1,
            memory_bytes: 1 << 30,
            attributes: crate::state::HostAttributes {
                images: vec!["busybox".to_owned()],
                bind_ids: Vec::new(),
                labels: [("zone".to_owned(), zone.to_owned())].into(),
                ..crate::state::HostAttributes::default()
            },
        };
        state.apply(&register("a", "a"));
        let live_a: BTreeSet<String> = ["a".to_owned()].into();

        let newer = pending_command(&AppliedState::new(state.clone()), &live_a, "web").expect("a newer reason is stored");
        state.apply(&newer);
        let reason = state.silos["web"].pending_reason.clone().unwrap_or_default();
        assert!(reason.contains("a: lacks label zone=b (has zone=a)"), "{reason}");
        assert_eq!(pending_command(&AppliedState::new(state.clone()), &live_a, "web"), None, "the same reason is not written again");

        state.apply(&register("b", "b"));
        let live_both: BTreeSet<String> = ["a".to_owned(), "b".to_owned()].into();
        let placed = pending_command(&AppliedState::new(state.clone()), &live_both, "web").expect("host b fits");
        state.apply(&placed);
        assert_eq!(state.silos["web"].host, "b");
        assert_eq!(state.silos["web"].id, "0000000a", "placing keeps the id");
        assert_eq!(state.pending().count(), 0);
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
