//! Mutual TLS between a gRPC server and its clients with certificates of the cluster
//! authority, over loopback: a client with a valid certificate is served and identified, and
//! every other client is turned away during the handshake.

use std::net::SocketAddr;
use std::time::Duration;

use colex_proto::pki::{peer_identity, CertificateAuthority, PkiError, Role, Validity, SERVER_NAME};
use colex_proto::raft_client::RaftClient;
use colex_proto::raft_server::{Raft, RaftServer};
use colex_proto::RaftPayload;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const DAY: Duration = Duration::from_secs(24 * 3600);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Replies to every call with the caller's role and identity as the payload.
struct Echo;

#[tonic::async_trait]
impl Raft for Echo {
    type AppendEntriesStreamStream = tokio_stream::Empty<Result<RaftPayload, Status>>;

    async fn append_entries_stream(
        &self,
        _: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
        Err(Status::unimplemented("append_entries_stream"))
    }

    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let peer = peer_identity(&request)?;
        let data = format!("{}/{}", peer.role, peer.identity).into_bytes();
        Ok(Response::new(RaftPayload { data }))
    }

    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("vote"))
    }

    async fn install_snapshot(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("install_snapshot"))
    }
}

/// Starts a server with a controller certificate of `authority` that requires client
/// certificates of the same authority.
async fn serve(authority: &CertificateAuthority) -> anyhow::Result<SocketAddr> {
    let issued = authority.issue(Role::Controller, "1", Validity::from_now(DAY))?;
    let key = issued.key_pem().unwrap_or_default().to_owned();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(&issued.cert_pem, key))
        .client_ca_root(Certificate::from_pem(authority.cert_pem()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = Server::builder().tls_config(tls)?.add_service(RaftServer::new(Echo));
    tokio::spawn(server.serve_with_incoming(TcpListenerStream::new(listener)));
    Ok(address)
}

/// Calls the server, trusting `trusted` and showing `client`'s certificate and key if given.
async fn call(address: SocketAddr, trusted: &str, client: Option<(&str, &str)>) -> Result<String, String> {
    let mut tls = ClientTlsConfig::new()
        .domain_name(SERVER_NAME)
        .ca_certificate(Certificate::from_pem(trusted));
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Channel::from_shared(format!("https://{address}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(CALL_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut request = Request::new(RaftPayload::default());
    request.set_timeout(CALL_TIMEOUT);
    let reply = RaftClient::new(channel)
        .append_entries(request)
        .await
        .map_err(|status| format!("call: {status:?}"))?;
    String::from_utf8(reply.into_inner().data).map_err(|e| e.to_string())
}

fn cert_and_key(authority: &CertificateAuthority, role: Role, name: &str, validity: Validity) -> Result<(String, String), PkiError> {
    let issued = authority.issue(role, name, validity)?;
    Ok((issued.cert_pem.clone(), issued.key_pem().unwrap_or_default().to_owned()))
}

#[tokio::test]
async fn only_certificates_of_the_cluster_authority_get_in() -> anyhow::Result<()> {
    let authority = CertificateAuthority::create("lab")?;
    let stranger = CertificateAuthority::create("other")?;
    let address = serve(&authority).await?;

    let (cert, key) = cert_and_key(&authority, Role::Agent, "host-a", Validity::from_now(DAY))?;
    assert_eq!(call(address, authority.cert_pem(), Some((&cert, &key))).await, Ok("agent/host-a".to_owned()));

    let without = call(address, authority.cert_pem(), None).await;
    assert!(without.is_err(), "a client without a certificate was served: {without:?}");

    let (cert, key) = cert_and_key(&stranger, Role::Admin, "mallory", Validity::from_now(DAY))?;
    let foreign = call(address, authority.cert_pem(), Some((&cert, &key))).await;
    assert!(foreign.is_err(), "a certificate of another authority was served: {foreign:?}");

    let now = time::OffsetDateTime::now_utc();
    let expired = Validity::between(now - time::Duration::days(2), now - time::Duration::days(1))?;
    let (cert, key) = cert_and_key(&authority, Role::Agent, "host-old", expired)?;
    let old = call(address, authority.cert_pem(), Some((&cert, &key))).await;
    assert!(old.is_err(), "an expired certificate was served: {old:?}");

    // The client checks the server too: a client that trusts another authority rejects it.
    let (cert, key) = cert_and_key(&stranger, Role::Agent, "host-a", Validity::from_now(DAY))?;
    let wrong_server = call(address, stranger.cert_pem(), Some((&cert, &key))).await;
    assert!(wrong_server.is_err(), "a client accepted a server of another authority: {wrong_server:?}");
    Ok(())
}
