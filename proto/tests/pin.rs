//! The pinned first handshake of a newcomer, over loopback: it accepts a controller whose
//! chain contains the authority with the fingerprint from the token, and rejects a controller
//! of another authority before sending anything.

use std::net::SocketAddr;
use std::time::Duration;

use colex_proto::pki::{fetch_pinned_authority, CertificateAuthority, Role, Validity};
use colex_proto::raft_server::{Raft, RaftServer};
use colex_proto::RaftPayload;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const DAY: Duration = Duration::from_secs(24 * 3600);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

struct Silent;

#[tonic::async_trait]
impl Raft for Silent {
    type AppendEntriesStreamStream = tokio_stream::Empty<Result<RaftPayload, Status>>;

    async fn append_entries_stream(
        &self,
        _: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendEntriesStreamStream>, Status> {
        Err(Status::unimplemented("append_entries_stream"))
    }

    async fn append_entries(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("append_entries"))
    }

    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("vote"))
    }

    async fn install_snapshot(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        Err(Status::unimplemented("install_snapshot"))
    }
}

/// Starts a server that presents a controller certificate of `authority` followed by the
/// authority's certificate, as colex controllers do.
async fn serve(authority: &CertificateAuthority) -> anyhow::Result<SocketAddr> {
    let issued = authority.issue(Role::Controller, "1", Validity::from_now(DAY))?;
    let chain = format!("{}{}", issued.cert_pem, authority.cert_pem());
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(chain, issued.key_pem().unwrap_or_default()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = Server::builder().tls_config(tls)?.add_service(RaftServer::new(Silent));
    tokio::spawn(server.serve_with_incoming(TcpListenerStream::new(listener)));
    Ok(address)
}

#[tokio::test]
async fn pinned_fingerprint_accepts_its_authority() -> anyhow::Result<()> {
    let authority = CertificateAuthority::create("lab")?;
    let address = serve(&authority).await?.to_string();
    let fetched = fetch_pinned_authority(&address, &authority.fingerprint(), HANDSHAKE_TIMEOUT).await?;
    assert_eq!(fetched.trim(), authority.cert_pem().trim());
    Ok(())
}

#[tokio::test]
async fn pinned_fingerprint_rejects_other_authority() -> anyhow::Result<()> {
    let authority = CertificateAuthority::create("lab")?;
    let stranger = CertificateAuthority::create("lab")?;
    let address = serve(&stranger).await?.to_string();
    let error = fetch_pinned_authority(&address, &authority.fingerprint(), HANDSHAKE_TIMEOUT)
        .await
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
    assert!(error.contains("no authority with fingerprint"), "{error}");
    assert!(error.contains(&address), "{error}");
    Ok(())
}
