//! Tests of the AppendEntries link on loopback: plain beside gRPC on one port, under TLS with
//! the cluster's certificates, and a server stopping.

use std::time::Duration;

use colex_proto::pki::{CertificateAuthority, Role, Validity};
use openraft::error::RPCError;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesResponse;
use openraft::{RaftNetwork, RaftNetworkFactory};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::link::{Link, LinkError, LinkServer, ALPN};
use super::network::NetworkFactory;
use super::node_tests::stale_append_entries;
use super::{raft_service, Node, RaftNode, StartMode};
use crate::tls::Credentials;

const DAY: Duration = Duration::from_secs(24 * 3600);
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a bootstrapped node in a temporary folder, with `listener`'s address.
async fn node_on(listener: &TcpListener) -> (tempfile::TempDir, RaftNode, String) {
    let addr = listener.local_addr().expect("local address").to_string();
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = RaftNode::open(dir.path(), &addr, StartMode::Bootstrap).await.expect("open node");
    (dir, node, addr)
}

/// gRPC and links on one plain port, as `colex-controller --insecure` serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_link_carries_append_entries_beside_grpc() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let (_dir, node, addr) = node_on(&listener).await;
    let (stopping, stopping_rx) = watch::channel(false);
    let links = LinkServer::new(node.raft.clone(), stopping_rx.clone());
    let server = tonic::transport::Server::builder()
        .add_service(raft_service(&node, stopping_rx))
        .serve_with_incoming(super::link::plain_incoming(listener, links));
    let server_task = tokio::spawn(server);

    let mut factory = NetworkFactory::new();
    let mut peer = factory.new_client(1, &Node { addr }).await;
    for _ in 0..3 {
        let response = peer
            .append_entries(stale_append_entries(), RPCOption::new(RPC_TIMEOUT))
            .await
            .expect("AppendEntries on the link");
        assert!(matches!(response, AppendEntriesResponse::HigherVote(_)), "got {response:?}");
        assert_eq!(peer.transports_open(), (true, false));
    }
    // The same port still serves gRPC.
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(0, 2), None);
    let response = peer.vote(vote, RPCOption::new(RPC_TIMEOUT)).await.expect("vote over gRPC");
    assert!(!response.vote_granted);

    // A stopping server ends the link, so its graceful shutdown waits for no leader.
    stopping.send(true).expect("links listen");
    let result = peer.append_entries(stale_append_entries(), RPCOption::new(RPC_TIMEOUT)).await;
    assert!(matches!(result, Err(RPCError::Unreachable(_))), "got {result:?}");

    server_task.abort();
    node.shutdown().await.expect("shutdown");
}

/// Credentials issued by `authority` for `role`.
fn credentials(authority: &CertificateAuthority, role: Role, name: &str) -> Credentials {
    let issued = authority.issue(role, name, Validity::from_now(DAY)).expect("issue");
    Credentials {
        key_pem: issued.key_pem().expect("issued with its key").to_owned(),
        cert_pem: issued.cert_pem,
        authority_pem: authority.cert_pem().to_owned(),
    }
}

/// Opens a TLS link to `addr` with `client`'s certificate.
async fn open_tls_link(addr: &str, client: &Credentials) -> Result<Link, LinkError> {
    let connector = crate::tls::link_connector(client).expect("link TLS settings");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = crate::tls::peer_server_name().expect("server name");
    let tls = connector.connect(name, stream).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN));
    Link::open(Box::new(tls), false).await
}

/// Under TLS a controller's certificate opens a link, and an agent's is rejected with the
/// reason, as on a gRPC AppendEntries stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_link_admits_controllers_only() {
    let authority = CertificateAuthority::create("lab").expect("authority");
    let server_credentials = credentials(&authority, Role::Controller, "controller-1");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let (_dir, node, addr) = node_on(&listener).await;
    let (_stopping, stopping_rx) = watch::channel(false);
    let verifier = crate::tls_server::ChainVerifier::new(authority.cert_pem()).expect("verifier");
    let links = LinkServer::new(node.raft.clone(), stopping_rx.clone()).with_authorization(verifier, node.state.clone());
    let acceptor = crate::tls_server::acceptor(&server_credentials).expect("acceptor");
    let server = tonic::transport::Server::builder()
        .add_service(raft_service(&node, stopping_rx))
        .serve_with_incoming(crate::tls_server::incoming(listener, acceptor, links));
    let server_task = tokio::spawn(server);

    let controller = credentials(&authority, Role::Controller, "controller-2");
    let mut link = open_tls_link(&addr, &controller).await.expect("controller's link");
    let request = serde_json::to_vec(&stale_append_entries()).expect("encode");
    let response = link.exchange(&request).await.expect("exchange");
    let result: Result<AppendEntriesResponse<u64>, openraft::error::RaftError<u64>> =
        serde_json::from_slice(&response).expect("decode");
    assert!(matches!(result, Ok(AppendEntriesResponse::HigherVote(_))), "got {result:?}");

    let agent = credentials(&authority, Role::Agent, "host-a");
    match open_tls_link(&addr, &agent).await {
        Err(LinkError::Denied(reason)) => assert!(reason.contains("has role agent"), "{reason}"),
        Err(other) => panic!("expected a denial, got {other}"),
        Ok(_) => panic!("an agent opened an AppendEntries link"),
    }

    server_task.abort();
    node.shutdown().await.expect("shutdown");
}
