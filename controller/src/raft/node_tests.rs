//! Tests of [`RaftNode`] on a real data directory, and of the gRPC transport on loopback.

use std::time::Duration;

use crate::raft::{raft_service, RaftNode, StartMode};
use crate::state::{Command, Response};

/// Address recorded in the membership. No test listens on it.
const ADVERTISE_ADDR: &str = "127.0.0.1:7400";

fn register_host() -> Command {
    Command::RegisterHost {
        name: "host-a".to_owned(),
        address: "198.51.100.7".to_owned(),
        cpus: 4,
        memory_bytes: 8 << 30,
        attributes: Default::default(),
    }
}

fn put_silo(name: &str, id: &str) -> Command {
    Command::PutSilo {
        name: name.to_owned(),
        id: id.to_owned(),
        spec: vec![7],
        host: "host-a".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_node_becomes_leader_and_writes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = RaftNode::open(dir.path(), ADVERTISE_ADDR, StartMode::Bootstrap)
        .await
        .expect("open node");
    assert_eq!(node.id, 1);
    let node_id_text = std::fs::read_to_string(dir.path().join("node-id")).expect("read node-id");
    assert_eq!(node_id_text.trim(), "1");

    let response = node.write(register_host()).await.expect("write");
    assert_eq!(response, Response::HostRegistered { subnet_index: 1 });
    assert!(node.state.read().await.hosts.contains_key("host-a"));
    assert!(*node.applied.borrow() >= 1);

    node.read_barrier().await.expect("read barrier");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_writes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let node = RaftNode::open(dir.path(), ADVERTISE_ADDR, StartMode::Bootstrap)
            .await
            .expect("open node");
        node.write(register_host()).await.expect("register host");
        let stored = node
            .write(put_silo("web", "00000001"))
            .await
            .expect("put silo");
        assert_eq!(stored, Response::SiloStored { generation: 1 });
        node.shutdown().await.expect("shutdown");
    }

    let node = RaftNode::open(dir.path(), ADVERTISE_ADDR, StartMode::Bootstrap)
        .await
        .expect("reopen node");
    {
        let state = node.state.read().await;
        assert!(state.hosts.contains_key("host-a"), "host lost on restart");
        assert_eq!(state.silos["web"].id, "00000001", "silo lost on restart");
    }
    let replaced = node
        .write(put_silo("web", "00000002"))
        .await
        .expect("write after restart");
    assert_eq!(replaced, Response::SiloStored { generation: 2 });
    node.shutdown().await.expect("shutdown after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_watch_wakes_waiters() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = RaftNode::open(dir.path(), ADVERTISE_ADDR, StartMode::Bootstrap)
        .await
        .expect("open node");
    let mut applied = node.applied.clone();
    let before = *applied.borrow_and_update();

    let writer = node.clone();
    let write = tokio::spawn(async move { writer.write(register_host()).await });
    tokio::time::timeout(
        Duration::from_secs(5),
        applied.wait_for(|index| *index > before),
    )
    .await
    .expect("applied index did not advance within 5 s")
    .expect("applied watch closed");
    write.await.expect("write task").expect("write");
    node.shutdown().await.expect("shutdown");
}

/// Sends a vote request through the gRPC transport to a node served on loopback. Both ends must
/// agree on the JSON payloads, and the remote Raft's response must come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vote_over_grpc_reaches_peer() {
    use openraft::network::RPCOption;
    use openraft::raft::VoteRequest;
    use openraft::{RaftNetwork, RaftNetworkFactory, Vote};

    use crate::raft::network::NetworkFactory;
    use crate::raft::Node;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address").to_string();
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = RaftNode::open(dir.path(), &addr, StartMode::Bootstrap)
        .await
        .expect("open node");

    let server = tonic::transport::Server::builder()
        .add_service(raft_service(&node, tokio::sync::watch::channel(false).1))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server_task = tokio::spawn(server);

    let mut factory = NetworkFactory::new();
    let mut peer = factory.new_client(1, &Node { addr: addr.clone() }).await;
    // A candidate with a stale term. The node must reject it and return its own, higher vote.
    let request = VoteRequest::new(Vote::new(0, 2), None);
    let response = peer
        .vote(request, RPCOption::new(Duration::from_secs(2)))
        .await
        .expect("vote over gRPC");
    assert!(!response.vote_granted);
    assert!(response.vote.leader_id().voted_for() == Some(1));

    server_task.abort();
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn unreachable_peer_is_reported_unreachable() {
    use openraft::error::RPCError;
    use openraft::network::RPCOption;
    use openraft::raft::VoteRequest;
    use openraft::{RaftNetwork, RaftNetworkFactory, Vote};

    use crate::raft::network::NetworkFactory;
    use crate::raft::Node;

    // Bind then drop a listener so the port is very likely closed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local address").to_string();
    drop(listener);

    let mut factory = NetworkFactory::new();
    let mut peer = factory.new_client(2, &Node { addr }).await;
    let result = peer
        .vote(
            VoteRequest::new(Vote::new(1, 1), None),
            RPCOption::new(Duration::from_secs(2)),
        )
        .await;
    assert!(
        matches!(result, Err(RPCError::Unreachable(_))),
        "got {result:?}"
    );
}

/// Serves the `Raft` gRPC service of `raft` on `listener` until the returned task is aborted.
fn serve(
    raft: openraft::Raft<crate::raft::TypeConfig>,
    listener: tokio::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    let server = tonic::transport::Server::builder()
        .add_service(crate::raft::service::RaftService::new(raft, tokio::sync::watch::channel(false).1).into_server())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "test raft server failed");
        }
    })
}

/// Adds a second controller to a cluster whose log was purged, so the leader must send it a
/// snapshot larger than one 1 MiB chunk over gRPC. Once the learner is a voter, a new entry must
/// reach it through AppendEntries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_catches_up_through_snapshot() {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use crate::raft::log_store::LogStore;
    use crate::raft::network::NetworkFactory;
    use crate::raft::node::{raft_config, LOG_FILE_NAME, STATE_FILE_NAME};
    use crate::raft::state_machine::StateMachineStore;
    use crate::raft::Node;

    const WAIT: Duration = Duration::from_secs(20);
    /// Big enough that the JSON snapshot spans several chunks.
    const SPEC_BYTES: usize = 400_000;

    let listener_1 = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr_1 = listener_1.local_addr().expect("local address").to_string();
    let listener_2 = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr_2 = listener_2.local_addr().expect("local address").to_string();

    let dir_1 = tempfile::tempdir().expect("temporary directory");
    let leader = RaftNode::open(dir_1.path(), &addr_1, StartMode::Bootstrap)
        .await
        .expect("open leader");
    let server_1 = serve(leader.raft.clone(), listener_1);

    // The second controller joins an existing cluster, so it starts Raft without initializing.
    let dir_2 = tempfile::tempdir().expect("temporary directory");
    let log_store = LogStore::open(&dir_2.path().join(LOG_FILE_NAME))
        .await
        .expect("open log");
    let state_machine = StateMachineStore::open(&dir_2.path().join(STATE_FILE_NAME))
        .await
        .expect("open state machine");
    let learner_state = state_machine.shared_state();
    let mut learner_applied = state_machine.subscribe_applied();
    let config = Arc::new(raft_config().expect("config"));
    let learner = openraft::Raft::new(2, config, NetworkFactory::new(), log_store, state_machine)
        .await
        .expect("start learner");
    let server_2 = serve(learner.clone(), listener_2);

    leader.write(register_host()).await.expect("register host");
    let big_silo = Command::PutSilo {
        name: "big".to_owned(),
        id: "0000000b".to_owned(),
        spec: vec![200; SPEC_BYTES],
        host: "host-a".to_owned(),
    };
    leader.write(big_silo).await.expect("put big silo");
    let last_index = *leader.applied.borrow();

    leader
        .raft
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    let metrics = leader
        .raft
        .wait(Some(WAIT))
        .metrics(
            |metrics| metrics.snapshot.map(|log_id| log_id.index) == Some(last_index),
            "snapshot built",
        )
        .await
        .expect("snapshot built");
    leader
        .raft
        .trigger()
        .purge_log(last_index)
        .await
        .expect("trigger purge");
    leader
        .raft
        .wait(Some(WAIT))
        .purged(metrics.snapshot, "log purged")
        .await
        .expect("log purged");

    leader
        .raft
        .add_learner(
            2,
            Node {
                addr: addr_2.clone(),
            },
            true,
        )
        .await
        .expect("add learner");
    tokio::time::timeout(WAIT, learner_applied.wait_for(|index| *index >= last_index))
        .await
        .expect("learner did not apply the snapshot in time")
        .expect("learner applied watch closed");
    assert_eq!(*learner_state.read().await, *leader.state.read().await);
    // openraft updates its metrics after the state machine has installed the snapshot.
    learner
        .wait(Some(WAIT))
        .metrics(
            |metrics| metrics.snapshot.map(|log_id| log_id.index) == Some(last_index),
            "learner installed the leader's snapshot",
        )
        .await
        .expect("learner caught up without installing the leader's snapshot");

    // The leader's promotion task makes the caught-up learner a voter.
    leader
        .raft
        .wait(Some(WAIT))
        .metrics(
            |metrics| metrics.membership_config.membership().voter_ids().collect::<BTreeSet<_>>() == BTreeSet::from([1, 2]),
            "learner promoted to voter",
        )
        .await
        .expect("learner was not promoted to voter");
    leader
        .write(put_silo("web", "00000001"))
        .await
        .expect("write with two voters");
    let leader_index = *leader.applied.borrow();
    tokio::time::timeout(
        WAIT,
        learner_applied.wait_for(|index| *index >= leader_index),
    )
    .await
    .expect("follower did not apply the new entry in time")
    .expect("follower applied watch closed");
    assert!(learner_state.read().await.silos.contains_key("web"));

    learner.shutdown().await.expect("shutdown learner");
    leader.shutdown().await.expect("shutdown leader");
    server_1.abort();
    server_2.abort();
}

/// Returns an AppendEntries request of a stale leader (term 0). A node of term 1 rejects it
/// and returns its own vote.
pub(super) fn stale_append_entries() -> openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig> {
    openraft::raft::AppendEntriesRequest {
        vote: openraft::Vote::new_committed(0, 2),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    }
}

/// Several AppendEntries travel on one stream, and a stopping server ends it, so its graceful
/// shutdown does not wait for the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_stream_ends_when_stopping() {
    use openraft::error::RPCError;
    use openraft::network::RPCOption;
    use openraft::raft::AppendEntriesResponse;
    use openraft::{RaftNetwork, RaftNetworkFactory};

    use crate::raft::network::NetworkFactory;
    use crate::raft::Node;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local address").to_string();
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = RaftNode::open(dir.path(), &addr, StartMode::Bootstrap).await.expect("open node");
    let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
    let server = tonic::transport::Server::builder()
        .add_service(raft_service(&node, stopping_rx))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server_task = tokio::spawn(server);

    let mut factory = NetworkFactory::new();
    let mut peer = factory.new_client(1, &Node { addr }).await;
    for _ in 0..3 {
        let response = peer
            .append_entries(stale_append_entries(), RPCOption::new(Duration::from_secs(2)))
            .await
            .expect("AppendEntries on the stream");
        assert!(matches!(response, AppendEntriesResponse::HigherVote(_)), "got {response:?}");
        // This server offers no link, as an older controller, so the stream carried it.
        assert_eq!(peer.transports_open(), (false, true));
    }

    stopping.send(true).expect("server's streams listen");
    let result = peer
        .append_entries(stale_append_entries(), RPCOption::new(Duration::from_secs(2)))
        .await;
    assert!(matches!(result, Err(RPCError::Unreachable(_))), "got {result:?}");

    server_task.abort();
    node.shutdown().await.expect("shutdown");
}

/// A controller of an older version, whose `Raft` service has no AppendEntries stream.
struct PeerWithoutStream {
    single_calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl colex_proto::raft_server::Raft for PeerWithoutStream {
    type AppendEntriesStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<colex_proto::RaftPayload, tonic::Status>>;

    async fn append_entries_stream(
        &self,
        _request: tonic::Request<tonic::Streaming<colex_proto::RaftPayload>>,
    ) -> Result<tonic::Response<Self::AppendEntriesStreamStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("no such method"))
    }

    async fn append_entries(
        &self,
        _request: tonic::Request<colex_proto::RaftPayload>,
    ) -> Result<tonic::Response<colex_proto::RaftPayload>, tonic::Status> {
        self.single_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let result: Result<openraft::raft::AppendEntriesResponse<u64>, openraft::error::RaftError<u64>> =
            Ok(openraft::raft::AppendEntriesResponse::Success);
        let data = serde_json::to_vec(&result).expect("encode response");
        Ok(tonic::Response::new(colex_proto::RaftPayload { data }))
    }

    async fn vote(
        &self,
        _request: tonic::Request<colex_proto::RaftPayload>,
    ) -> Result<tonic::Response<colex_proto::RaftPayload>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }

    async fn install_snapshot(
        &self,
        _request: tonic::Request<colex_proto::RaftPayload>,
    ) -> Result<tonic::Response<colex_proto::RaftPayload>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this test"))
    }
}

/// A peer without the stream gets single AppendEntries calls from then on.
#[tokio::test]
async fn peer_without_stream_gets_single_calls() {
    use openraft::network::RPCOption;
    use openraft::raft::AppendEntriesResponse;
    use openraft::{RaftNetwork, RaftNetworkFactory};

    use crate::raft::network::NetworkFactory;
    use crate::raft::Node;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let addr = listener.local_addr().expect("local address").to_string();
    let single_calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let service = PeerWithoutStream {
        single_calls: single_calls.clone(),
    };
    let server = tonic::transport::Server::builder()
        .add_service(colex_proto::raft_server::RaftServer::new(service))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server_task = tokio::spawn(server);

    let mut factory = NetworkFactory::new();
    let mut peer = factory.new_client(3, &Node { addr }).await;
    for expected_calls in 1..=2 {
        let response = peer
            .append_entries(stale_append_entries(), RPCOption::new(Duration::from_secs(2)))
            .await
            .expect("AppendEntries as a single call");
        assert!(matches!(response, AppendEntriesResponse::Success), "got {response:?}");
        assert_eq!(single_calls.load(std::sync::atomic::Ordering::SeqCst), expected_calls);
    }
    server_task.abort();
}
