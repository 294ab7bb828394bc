//! The leader's placer: one task that collects the `up` requests waiting at the moment, plans
//! and places them together, and commits them as one Raft entry (group commit). Between
//! batches it also places pending instances and advances rolling replacements.
//!
//! Each request waits only for the batch that carries its silos. Requests that arrive while a
//! batch commits form the next batch, so under load a commit carries many requests and writes
//! per second grow with the number of clients. A batch contains at most one silo of each name,
//! and its bytes are capped, so every entry stays within the size that replicates within one
//! heartbeat.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use colex_proto as proto;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::Instant;
use tonic::Status;

use crate::api::client::{log_placement, place_pending_and_roll, placement_of, roll_forward, MAX_STORED_SPEC_BYTES};
use crate::api::unavailable;
use crate::blobs::{ContentsByHash, NewContent};
use crate::raft::RaftNode;
use crate::applied::AppliedState;
use crate::scheduler::{self, PlacementRound};
use crate::sessions::Sessions;
use crate::state::{ClusterState, Command, InstancePlacement, InstanceUpdate, Response};
use crate::view;

/// `up` requests queued for the placer before senders wait.
const JOB_QUEUE_LEN: usize = 1024;
/// Estimated bytes of one batch's log entry above which no further silo joins it. A single
/// silo larger than this still goes alone, so an entry is at most one maximal spec plus its
/// instances, as before batching.
const MAX_BATCH_BYTES: usize = MAX_STORED_SPEC_BYTES;
/// Interval between two tries to place the pending silo instances and to take the next step
/// of rolling replacements, besides the tries a new host or a removed silo starts.
const PLACEMENT_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Estimated bytes of one instance in a log entry: id, index and host name in JSON.
const INSTANCE_ENTRY_BYTES: usize = 96;

/// One silo of an `up` request, checked and encoded.
#[derive(Debug, Clone)]
pub struct UpItem {
    pub name: String,
    /// The spec with `count` cleared.
    pub spec: proto::SiloSpec,
    /// `spec` encoded, as the state stores it.
    pub encoded: Vec<u8>,
    pub count: u32,
    /// The file contents that `spec` refers to by SHA-256, for the entry that stores them.
    pub contents: ContentsByHash,
    /// Bytes of the contents that the state did not store when `up` checked the request, and
    /// that no earlier item of the request uses.
    pub new_content_bytes: usize,
}

impl UpItem {
    /// Estimates the bytes this silo adds to a log entry: the spec and its new file contents in
    /// base64, and its instances.
    // NOTE: a request's new content counts for its first silo only. When that silo waits for a
    // later batch (one silo per name), a later silo carries the content uncounted, so one entry
    // can exceed `MAX_BATCH_BYTES` by up to one request's new contents.
    fn entry_bytes(&self) -> usize {
        let count = usize::try_from(self.count).unwrap_or(usize::MAX);
        let base64_bytes = (self.encoded.len() + self.new_content_bytes) / 3 + 1;
        base64_bytes * 4 + self.name.len() + count.saturating_mul(INSTANCE_ENTRY_BYTES)
    }
}

/// Result of `up` for one silo.
#[derive(Debug, Clone)]
pub struct UpOutcome {
    /// Every instance of the silo that is not being stopped, in index order.
    pub silos: Vec<proto::SiloInfo>,
    /// True when the spec and count matched the stored instances, so nothing changed.
    pub unchanged: bool,
}

/// Handle of the placer task. Cloning it shares the task.
#[derive(Debug, Clone)]
pub struct Placer {
    jobs: mpsc::Sender<Job>,
}

/// One `up` request: its silos and where to send their outcomes, in the same order.
#[derive(Debug)]
struct Job {
    items: Vec<UpItem>,
    reply: oneshot::Sender<Result<Vec<UpOutcome>, Status>>,
}

impl Placer {
    /// Starts the placer task. `placement` is the lock that the host watch also takes, so
    /// neither plans from a view that the other is changing. It must be called inside a Tokio
    /// runtime.
    pub fn start(node: RaftNode, sessions: Sessions, placement: Arc<Mutex<()>>) -> Placer {
        let (jobs, receiver) = mpsc::channel(JOB_QUEUE_LEN);
        tokio::spawn(run(node, sessions, placement, receiver));
        Placer { jobs }
    }

    /// Stores the silos `items` of one `up` request and returns one outcome per item, in order,
    /// once every item is committed. An error leaves the items committed before it stored.
    pub async fn up(&self, items: Vec<UpItem>) -> Result<Vec<UpOutcome>, Status> {
        let (reply, outcome) = oneshot::channel();
        self.jobs
            .send(Job { items, reply })
            .await
            .map_err(|_| Status::unavailable("the placer stopped; the controller is shutting down"))?;
        outcome
            .await
            .map_err(|_| Status::unavailable("the placer stopped before it answered; run up again"))?
    }
}

/// A request in progress: the outcomes of the items committed so far.
struct Pending {
    items: Vec<UpItem>,
    /// `None` once the request got its error.
    reply: Option<oneshot::Sender<Result<Vec<UpOutcome>, Status>>>,
    outcomes: Vec<Option<UpOutcome>>,
    /// Items already taken into a batch.
    taken: Vec<bool>,
}

impl Pending {
    fn new(job: Job) -> Self {
        let len = job.items.len();
        Pending {
            items: job.items,
            reply: Some(job.reply),
            outcomes: vec![None; len],
            taken: vec![false; len],
        }
    }

    /// Sends the request the error `status` and drops its items that are not in a batch yet.
    /// Items committed before stay stored.
    fn fail(&mut self, status: Status) {
        self.taken.iter_mut().for_each(|taken| *taken = true);
        if let Some(reply) = self.reply.take() {
            // The caller may have given up already.
            let _ = reply.send(Err(status));
        }
    }
}

/// Runs batches while requests wait, and the pending placements between them, until every
/// [`Placer`] handle is dropped.
async fn run(node: RaftNode, sessions: Sessions, placement: Arc<Mutex<()>>, mut receiver: mpsc::Receiver<Job>) {
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut pending_due_at = Instant::now() + PLACEMENT_RETRY_INTERVAL;
    loop {
        if waiting.is_empty() {
            tokio::select! {
                job = receiver.recv() => match job {
                    Some(job) => waiting.push_back(Pending::new(job)),
                    None => return,
                },
                () = tokio::time::sleep_until(pending_due_at) => {}
                () = sessions.placement_woken() => pending_due_at = Instant::now(),
            }
        }
        while let Ok(job) = receiver.try_recv() {
            waiting.push_back(Pending::new(job));
        }
        // A wakeup that came while batches kept the placer busy is still stored.
        if sessions.placement_woken().now_or_never().is_some() {
            pending_due_at = Instant::now();
        }

        if Instant::now() >= pending_due_at {
            let guard = placement.lock().await;
            place_pending_and_roll(&node, &sessions).await;
            drop(guard);
            pending_due_at = Instant::now() + PLACEMENT_RETRY_INTERVAL;
        }
        if waiting.is_empty() {
            continue;
        }

        let batch = take_batch(&mut waiting);
        let guard = placement.lock().await;
        let placed = run_batch(&node, &sessions, &mut waiting, &batch).await;
        drop(guard);

        // Reply to the finished requests. Failed ones got their error already, and a request
        // whose caller went away is dropped with its items that are not stored yet.
        let mut still_waiting = VecDeque::with_capacity(waiting.len());
        for mut pending in waiting.drain(..) {
            let Some(reply) = pending.reply.take() else {
                continue;
            };
            if pending.outcomes.iter().all(Option::is_some) {
                let outcomes = pending.outcomes.into_iter().flatten().collect();
                let _ = reply.send(Ok(outcomes));
            } else if !reply.is_closed() {
                pending.reply = Some(reply);
                still_waiting.push_back(pending);
            }
        }
        waiting = still_waiting;

        // Logged after the replies, and after the handlers that send them had their turn on
        // this runtime: the write to the log is not part of a client's wait.
        if !placed.is_empty() {
            tokio::task::yield_now().await;
        }
        for (name, instances) in placed {
            log_placements(&name, &instances);
        }
    }
}

/// Position of one item: the request in the waiting queue and the item in it.
type Slot = (usize, usize);

/// Takes the items of the next batch from `waiting`, in arrival order: at most one per silo
/// name, and no more than [`MAX_BATCH_BYTES`] unless a single item is larger.
fn take_batch(waiting: &mut VecDeque<Pending>) -> Vec<Slot> {
    let mut names: HashSet<&str> = HashSet::new();
    let mut slots = Vec::new();
    let mut bytes = 0usize;
    'requests: for (request, pending) in waiting.iter().enumerate() {
        for (item_index, item) in pending.items.iter().enumerate() {
            if pending.taken[item_index] || names.contains(item.name.as_str()) {
                continue;
            }
            let item_bytes = item.entry_bytes();
            if !slots.is_empty() && bytes.saturating_add(item_bytes) > MAX_BATCH_BYTES {
                break 'requests;
            }
            bytes = bytes.saturating_add(item_bytes);
            names.insert(item.name.as_str());
            slots.push((request, item_index));
        }
    }
    for (request, item_index) in &slots {
        waiting[*request].taken[*item_index] = true;
    }
    slots
}

/// The work left for one item of a batch once its entry is committed.
struct Planned {
    slot: Slot,
    /// Position of the item's `PutInstances` among the commands of the entry.
    command_index: usize,
    instances: Vec<InstanceUpdate>,
    rolling: Vec<u32>,
    stopping: Vec<String>,
}

/// Plans every item of `batch` against the state and the items before it, commits the changes
/// as one entry, and stores each item's outcome, or its request's error, in `waiting`. Returns
/// the committed instances of each silo, for the log.
async fn run_batch(
    node: &RaftNode,
    sessions: &Sessions,
    waiting: &mut VecDeque<Pending>,
    batch: &[Slot],
) -> Vec<(String, Vec<InstanceUpdate>)> {
    let live = sessions.live_hosts();
    let mut commands = Vec::new();
    let mut planned = Vec::new();
    {
        let state = node.state.read().await;
        let mut round = PlacementRound::new(&state, &live, |host| state.reserved_on(host));
        let mut ids = SiloIds::of(&state);
        // Contents that an earlier command of this entry stores.
        let mut carried: BTreeSet<String> = BTreeSet::new();
        for &(request, item_index) in batch {
            let item = &waiting[request].items[item_index];
            let plan = scheduler::plan_up(&state, &item.name, &item.encoded, item.count);
            if plan.is_unchanged() {
                tracing::info!(silo = %item.name, count = item.count, "spec and count unchanged; nothing to do");
                let outcome = UpOutcome {
                    silos: silos_below_count(&state, &item.name, item.count),
                    unchanged: true,
                };
                waiting[request].outcomes[item_index] = Some(outcome);
                continue;
            }

            let placed = match round.place(&item.spec, &plan.to_place, &plan.replaced) {
                Ok(placed) => placed,
                Err(error) => {
                    waiting[request].fail(Status::invalid_argument(error.to_string()));
                    continue;
                }
            };
            let instances: Vec<InstanceUpdate> = plan
                .to_place
                .iter()
                .zip(placed)
                .map(|(to_place, result)| InstanceUpdate {
                    index: to_place.index,
                    id: ids.draw(),
                    placement: placement_of(result),
                })
                .collect();
            let new_contents: Vec<NewContent> = item
                .contents
                .iter()
                .filter(|(hash, _)| !state.file_contents.contains_key(*hash) && carried.insert((*hash).clone()))
                .map(|(hash, bytes)| NewContent {
                    sha256: hash.clone(),
                    bytes: bytes.clone(),
                })
                .collect();
            if !new_contents.is_empty() {
                commands.push(Command::PutFileContents { contents: new_contents });
            }
            let command_index = commands.len();
            commands.push(Command::PutInstances {
                name: item.name.clone(),
                spec: item.encoded.clone(),
                count: item.count,
                instances: instances.clone(),
                rolling: plan.rolling.clone(),
            });
            planned.push(Planned {
                slot: (request, item_index),
                command_index,
                instances,
                rolling: plan.rolling,
                stopping: plan.to_stop,
            });
        }
    }
    if commands.is_empty() {
        return Vec::new();
    }

    let silo_count = planned.len();
    let single = commands.len() == 1;
    let command = if single {
        commands.remove(0)
    } else {
        Command::Batch { commands }
    };
    let responses = match node.write(command).await {
        Ok(Response::Batched { responses }) if !single => responses,
        Ok(response) => vec![response],
        Err(error) => {
            tracing::warn!(%error, silos = silo_count, "placement batch not committed");
            let status = unavailable(&error);
            for planned in &planned {
                waiting[planned.slot.0].fail(status.clone());
            }
            return Vec::new();
        }
    };
    tracing::debug!(silos = silo_count, "placement batch committed");

    let mut placed = Vec::with_capacity(planned.len());
    for planned in planned {
        let (request, item_index) = planned.slot;
        if let Some(Response::Rejected { reason }) = responses.get(planned.command_index) {
            tracing::warn!(silo = %waiting[request].items[item_index].name, %reason, "silo not stored");
            waiting[request].fail(Status::aborted(reason.clone()));
            continue;
        }
        let item = &waiting[request].items[item_index];
        let name = item.name.clone();
        let count = item.count;
        placed.push((name.clone(), planned.instances));
        if !planned.stopping.is_empty() {
            tracing::info!(silo = %name, count, stopping = ?planned.stopping, "instances above count stopping");
            sessions.wake_placement();
        }
        if !planned.rolling.is_empty() {
            tracing::info!(silo = %name, rolling = ?planned.rolling, "instances of the old spec are replaced one at a time");
            if let Err(error) = roll_forward(node, &sessions.live_hosts(), &name).await {
                waiting[request].fail(unavailable(&error));
                continue;
            }
        }

        let silos = silos_below_count(&*node.state.read().await, &name, count);
        if silos.is_empty() {
            let status = Status::aborted(format!("silo {name} was removed while it was being stored; run up again"));
            waiting[request].fail(status);
            continue;
        }
        waiting[request].outcomes[item_index] = Some(UpOutcome {
            silos,
            unchanged: false,
        });
    }
    placed
}

/// Logs the instances of silo `name` that a batch placed in one line, as INDEX:ID@HOST, and each
/// pending one with its reason. One line per instance made logging the main cost of a large
/// batch.
fn log_placements(name: &str, instances: &[InstanceUpdate]) {
    let placed: Vec<String> = instances
        .iter()
        .filter_map(|instance| match &instance.placement {
            InstancePlacement::Host(host) => Some(format!("{}:{}@{host}", instance.index, instance.id)),
            InstancePlacement::Pending { .. } => None,
        })
        .collect();
    if !placed.is_empty() {
        tracing::info!(silo = %name, instances = ?placed, "silo instances placed");
    }
    for instance in instances {
        if matches!(instance.placement, InstancePlacement::Pending { .. }) {
            log_placement(name, instance);
        }
    }
}

/// Returns the client view of the instances of silo `name` below `count`.
fn silos_below_count(state: &ClusterState, name: &str, count: u32) -> Vec<proto::SiloInfo> {
    view::instance_infos(state, name)
        .into_iter()
        .filter(|info| info.index < count)
        .collect()
}

/// The silo ids in use: the stored ones and those drawn for the batch being built.
struct SiloIds<'a> {
    stored: &'a AppliedState,
    drawn: BTreeSet<String>,
}

impl<'a> SiloIds<'a> {
    fn of(stored: &'a AppliedState) -> Self {
        SiloIds {
            stored,
            drawn: BTreeSet::new(),
        }
    }

    /// Returns a random silo id that no stored record and no earlier draw uses.
    fn draw(&mut self) -> String {
        loop {
            let id = crate::api::client::new_silo_id();
            if !self.stored.has_id(&id) && self.drawn.insert(id.clone()) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::StartMode;
    use crate::state::{Command, HostAttributes};

    /// Address recorded in the membership. No test listens on it.
    const ADVERTISE_ADDR: &str = "127.0.0.1:7401";

    fn item(name: &str, count: u32, cpu_percent: u32) -> UpItem {
        let spec = proto::SiloSpec {
            name: name.to_owned(),
            binary: Some(proto::Binary {
                path: "/bin/sleep".to_owned(),
                ..Default::default()
            }),
            resources: Some(proto::Resources {
                cpu_percent,
                memory_bytes: 0,
            }),
            ..Default::default()
        };
        UpItem {
            name: name.to_owned(),
            encoded: prost::Message::encode_to_vec(&spec),
            spec,
            count,
            contents: ContentsByHash::new(),
            new_content_bytes: 0,
        }
    }

    /// Opens a one-node cluster with live hosts `hosts` and starts a placer on it.
    async fn placer_with_hosts(dir: &std::path::Path, hosts: &[&str]) -> (RaftNode, Sessions, Placer) {
        let node = RaftNode::open(dir, ADVERTISE_ADDR, StartMode::Bootstrap).await.expect("open node");
        let sessions = Sessions::default();
        for host in hosts {
            node.write(Command::RegisterHost {
                name: (*host).to_owned(),
                address: "198.51.100.7".to_owned(),
                cpus: 2,
                memory_bytes: 8 << 30,
                attributes: HostAttributes {
                    images: vec!["busybox".to_owned()],
                    ..HostAttributes::default()
                },
            })
            .await
            .expect("register host");
            // The token is dropped, but the session stays open until `close`.
            let _ = sessions.open(host);
        }
        let placer = Placer::start(node.clone(), sessions.clone(), Arc::new(Mutex::new(())));
        (node, sessions, placer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_never_share_capacity() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (node, _sessions, placer) = placer_with_hosts(dir.path(), &["host-a"]).await;

        let requests = (0..8).map(|index| {
            let placer = placer.clone();
            tokio::spawn(async move { placer.up(vec![item(&format!("web{index}"), 1, 30)]).await })
        });
        let outcomes = futures::future::join_all(requests).await;
        let mut placed = 0;
        let mut pending = 0;
        for outcome in outcomes {
            let outcome = outcome.expect("request task").expect("up succeeds");
            assert_eq!(outcome.len(), 1);
            let silo = &outcome[0].silos[0];
            if silo.host == "host-a" {
                placed += 1;
            } else {
                pending += 1;
                assert!(silo.message.contains("CPU free, needs 30%"), "{}", silo.message);
            }
        }
        assert_eq!(placed, 3, "3 silos of 30% fit on one host");
        assert_eq!(pending, 5);
        let state = node.state.read().await;
        assert_eq!(state.silos.values().filter(|record| record.host == "host-a").count(), 3);
        drop(state);
        node.shutdown().await.expect("shutdown");
    }

    /// Returns an item of silo `name` with the one file `content`, as `up` builds it.
    fn item_with_file(name: &str, content: &[u8]) -> UpItem {
        let mut item = item(name, 1, 0);
        item.spec.files.push(proto::FileEntry {
            silo_path: "/data".to_owned(),
            content: content.to_vec(),
            ..Default::default()
        });
        item.contents = crate::blobs::take_contents(&mut item.spec).expect("small file");
        item.encoded = prost::Message::encode_to_vec(&item.spec);
        item
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_content_is_stored_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (node, _sessions, placer) = placer_with_hosts(dir.path(), &["host-a"]).await;

        // Two silos of one name go into two batches: the second entry finds the content stored.
        let items = vec![item_with_file("web", b"shared"), item_with_file("db", b"shared"), item_with_file("web", b"shared")];
        let outcomes = placer.up(items).await.expect("up succeeds");
        assert_eq!(outcomes.len(), 3);
        {
            let state = node.state.read().await;
            assert_eq!(state.file_content_totals(), (1, 6), "one content of 6 bytes");
            let users: Vec<&String> = state.file_contents.values().flat_map(|content| content.users.iter()).collect();
            assert_eq!(users, vec!["db", "web"]);
        }

        let other = placer.up(vec![item_with_file("web", b"changed")]).await.expect("second up");
        assert!(!other[0].unchanged);
        let state = node.state.read().await;
        assert_eq!(state.file_content_totals(), (2, 13), "db keeps the old content, web uses the new one");
        drop(state);
        node.shutdown().await.expect("shutdown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unchanged_up_changes_nothing() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (node, _sessions, placer) = placer_with_hosts(dir.path(), &["host-a", "host-b"]).await;

        let first = placer.up(vec![item("web", 2, 10)]).await.expect("first up");
        assert!(!first[0].unchanged);
        let hosts: BTreeSet<&str> = first[0].silos.iter().map(|silo| silo.host.as_str()).collect();
        assert_eq!(hosts, BTreeSet::from(["host-a", "host-b"]), "spread puts the 2 instances apart");
        let applied = *node.applied.borrow();

        let second = placer.up(vec![item("web", 2, 10)]).await.expect("second up");
        assert!(second[0].unchanged);
        assert_eq!(second[0].silos, first[0].silos);
        assert_eq!(*node.applied.borrow(), applied, "an unchanged up writes nothing");
        node.shutdown().await.expect("shutdown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_request_answers_each_silo_in_order() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (node, _sessions, placer) = placer_with_hosts(dir.path(), &["host-a"]).await;

        // The second `web` waits for the next batch, because a batch contains one silo per name.
        let outcomes = placer
            .up(vec![item("web", 1, 10), item("db", 1, 10), item("web", 2, 10)])
            .await
            .expect("up succeeds");
        assert_eq!(outcomes.len(), 3);
        assert_eq!(outcomes[0].silos.len(), 1);
        assert_eq!(outcomes[1].silos[0].name, "db");
        assert_eq!(outcomes[2].silos.len(), 2, "the later web of count 2 wins");
        assert_eq!(node.state.read().await.running_count("web"), 2);
        node.shutdown().await.expect("shutdown");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_silo_placed_when_host_joins() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (node, sessions, placer) = placer_with_hosts(dir.path(), &["host-a"]).await;
        placer.up(vec![item("web", 1, 60)]).await.expect("web fits");
        let db = placer.up(vec![item("db", 1, 60)]).await.expect("db is stored");
        assert_eq!(db[0].silos[0].host, "", "db is pending");

        node.write(Command::RegisterHost {
            name: "host-b".to_owned(),
            address: "198.51.100.8".to_owned(),
            cpus: 2,
            memory_bytes: 8 << 30,
            attributes: HostAttributes {
                images: vec!["busybox".to_owned()],
                ..HostAttributes::default()
            },
        })
        .await
        .expect("register host-b");
        // Opening the session wakes the placer.
        let _ = sessions.open("host-b");

        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if node.state.read().await.silos["db"].host == "host-b" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "db was not placed on host-b within 5 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        node.shutdown().await.expect("shutdown");
    }

    #[test]
    fn batch_takes_unique_names_under_cap() {
        let job = |items: Vec<UpItem>| {
            let (reply, _) = oneshot::channel();
            Pending::new(Job { items, reply })
        };
        let mut large = item("large", 1, 0);
        large.encoded = vec![0; MAX_BATCH_BYTES];
        let mut waiting: VecDeque<Pending> = VecDeque::from([
            job(vec![item("web", 1, 0), item("web", 2, 0)]),
            job(vec![item("db", 1, 0)]),
            job(vec![large]),
        ]);

        assert_eq!(take_batch(&mut waiting), vec![(0, 0), (1, 0)], "the large silo waits");
        assert_eq!(take_batch(&mut waiting), vec![(0, 1)], "the second web follows alone");
        assert_eq!(take_batch(&mut waiting), vec![(2, 0)], "a silo above the cap goes alone");
        assert!(take_batch(&mut waiting).is_empty());
    }
}
