//! Tests of joining, forwarding and removing controllers: three nodes on loopback, each serving
//! the `Raft` and `Members` gRPC services.

use std::collections::BTreeSet;
use std::time::Duration;

use colex_proto as proto;
use colex_proto::members_client::MembersClient;

use crate::api::members::MembersService;
use crate::raft::{raft_service, MembershipError, RaftNode, StartMode};
use crate::state::Command;

const WAIT: Duration = Duration::from_secs(30);

/// One controller of the test cluster and the task serving its gRPC services.
struct TestController {
    node: RaftNode,
    addr: String,
    server: tokio::task::JoinHandle<()>,
    stop_server: tokio::sync::oneshot::Sender<()>,
    /// Ends the AppendEntries streams, as the controller does when it stops.
    stopping: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl TestController {
    async fn start(listener: tokio::net::TcpListener, start: StartMode) -> TestController {
        let addr = listener.local_addr().expect("local address").to_string();
        let dir = tempfile::tempdir().expect("temporary directory");
        let node = RaftNode::open(dir.path(), &addr, start).await.expect("open node");
        let (stop_server, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopping, stopping_rx) = tokio::sync::watch::channel(false);
        let server = tonic::transport::Server::builder()
            .add_service(raft_service(&node, stopping_rx))
            .add_service(MembersService::server(node.clone()))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stop_rx.await;
            });
        let server = tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "test controller server failed");
            }
        });
        TestController {
            node,
            addr,
            server,
            stop_server,
            stopping,
            _dir: dir,
        }
    }

    /// Stops the server, so its connections close as when the process exits, then Raft.
    async fn stop(self) {
        let _ = self.stopping.send(true);
        let _ = self.stop_server.send(());
        tokio::time::timeout(WAIT, self.server).await.expect("server stopped in time").expect("server task");
        self.node.shutdown().await.expect("shutdown");
    }
}

async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback")
}

async fn wait_for_voters(node: &RaftNode, voters: &[u64]) {
    let expected: BTreeSet<u64> = voters.iter().copied().collect();
    node.raft
        .wait(Some(WAIT))
        .metrics(
            |metrics| metrics.membership_config.membership().voter_ids().collect::<BTreeSet<_>>() == expected,
            "voters",
        )
        .await
        .unwrap_or_else(|error| panic!("voters never became {expected:?}: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_forward_and_removal_keeps_quorum() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info,openraft=warn").try_init();
    let first = TestController::start(bind().await, StartMode::Bootstrap).await;
    let second = TestController::start(bind().await, StartMode::Join(vec![first.addr.clone()])).await;
    assert_eq!(second.node.id, 2);
    // The third controller sends its join to the follower, which forwards it to the leader.
    wait_for_voters(&first.node, &[1, 2]).await;
    let third = TestController::start(bind().await, StartMode::Join(vec![second.addr.clone()])).await;
    assert_eq!(third.node.id, 3);
    wait_for_voters(&first.node, &[1, 2, 3]).await;

    // A list asked of a follower is built by the leader and probes every member.
    let mut client = MembersClient::connect(format!("http://{}", third.addr)).await.expect("connect");
    let listed = client
        .list(proto::ListMembersRequest { local: false })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.served_by, 1, "the leader builds the list");
    assert_eq!(listed.members.len(), 3);
    assert_eq!(listed.members.iter().filter(|member| member.leader).count(), 1);
    for member in &listed.members {
        assert_eq!(member.role(), proto::MemberRole::Voter, "{member:?}");
        assert!(member.reachable, "{member:?}");
        assert!(member.last_applied.is_some(), "{member:?}");
    }

    // A joined node must not take an address a member already has.
    let mut leader_client = MembersClient::connect(format!("http://{}", first.addr)).await.expect("connect");
    let address_taken = leader_client
        .join(proto::JoinRequest {
            address: second.addr.clone(),
        })
        .await
        .expect_err("address taken");
    assert_eq!(address_taken.code(), tonic::Code::AlreadyExists, "{address_taken:?}");

    // A write on the leader reaches the followers.
    first
        .node
        .write(Command::StopSilo { name: "none".to_owned() })
        .await
        .expect("write with three voters");

    // With node 3 down, removing node 2 would leave voters {1, 3} with one live member.
    third.stop().await;
    let rejected = first.node.remove_member(2).await.expect_err("quorum loss");
    assert!(matches!(rejected, MembershipError::QuorumLoss { id: 2, live: 1, voters: 2, needed: 2, .. }), "{rejected}");
    let missing = first.node.remove_member(9).await.expect_err("not a member");
    assert!(matches!(missing, MembershipError::NotMember { id: 9 }), "{missing}");

    // Removing the down node 3 leaves voters {1, 2}, both live.
    first.node.remove_member(3).await.expect("remove the down member");
    wait_for_voters(&first.node, &[1, 2]).await;

    second.stop().await;
    first.stop().await;
}
