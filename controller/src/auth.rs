//! Authorization of every gRPC call in one place: a tower layer in front of all services
//! that reads the caller's role from its verified client certificate, checks the revocation
//! list, and looks the method up in [`ALLOWED_ROLES`].
//!
//! The TLS handshake only proves that the client has the private key of the certificate it
//! shows. [`authorize`] checks the chain against the cluster authority and its validity, so each
//! failure gets its own message. A call the table allows gets the caller's
//! [`PeerIdentity`] as a request extension, so a handler can compare names, as the agent
//! session does with the host name of its hello.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

use colex_proto::pki::{PeerIdentity, Role};
use tokio::sync::RwLock;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::applied::AppliedState;
use crate::state::ClusterState;
use crate::tls_server::ChainVerifier;

/// The callers a method allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Any caller, with or without a certificate: the request itself carries its proof (an
    /// enrollment key or a join token).
    Anyone,
    /// Callers whose certificate carries one of these roles.
    Roles(&'static [Role]),
}

const CONTROLLER: &[Role] = &[Role::Controller];
const AGENT: &[Role] = &[Role::Agent];
/// Changes the cluster: admins, and controllers that forward an admin's request to the leader.
const WRITERS: &[Role] = &[Role::Admin, Role::Controller];
/// Reads the cluster.
const READERS: &[Role] = &[Role::Admin, Role::Reader, Role::Controller];
/// Reads the member list: agents too, which look for the leader with it.
const MEMBER_READERS: &[Role] = &[Role::Admin, Role::Reader, Role::Controller, Role::Agent];

/// gRPC method path to the callers allowed. A method missing here is denied to everyone, so a
/// new method must be added before anyone can call it.
pub const ALLOWED_ROLES: &[(&str, Allowed)] = &[
    ("/colex.v1.Client/Up", Allowed::Roles(WRITERS)),
    ("/colex.v1.Client/Down", Allowed::Roles(WRITERS)),
    ("/colex.v1.Client/List", Allowed::Roles(READERS)),
    ("/colex.v1.Client/Logs", Allowed::Roles(READERS)),
    ("/colex.v1.Client/Status", Allowed::Roles(READERS)),
    ("/colex.v1.Client/Hosts", Allowed::Roles(READERS)),
    ("/colex.v1.Client/SetDraining", Allowed::Roles(WRITERS)),
    ("/colex.v1.Client/RemoveHost", Allowed::Roles(WRITERS)),
    ("/colex.v1.Exec/Exec", Allowed::Roles(WRITERS)),
    ("/colex.v1.Watch/WatchSilos", Allowed::Roles(READERS)),
    ("/colex.v1.Agent/Session", Allowed::Roles(AGENT)),
    ("/colex.v1.AgentFiles/FetchFileContent", Allowed::Roles(AGENT)),
    ("/colex.v1.Raft/AppendEntries", Allowed::Roles(CONTROLLER)),
    ("/colex.v1.Raft/AppendEntriesStream", Allowed::Roles(CONTROLLER)),
    ("/colex.v1.Raft/Vote", Allowed::Roles(CONTROLLER)),
    ("/colex.v1.Raft/InstallSnapshot", Allowed::Roles(CONTROLLER)),
    ("/colex.v1.Members/Join", Allowed::Roles(CONTROLLER)),
    ("/colex.v1.Members/List", Allowed::Roles(MEMBER_READERS)),
    ("/colex.v1.Members/Remove", Allowed::Roles(WRITERS)),
    ("/colex.v1.Security/Enroll", Allowed::Anyone),
    ("/colex.v1.Security/JoinWithToken", Allowed::Anyone),
    ("/colex.v1.Security/OpenEnrollment", Allowed::Roles(WRITERS)),
    ("/colex.v1.Security/CreateToken", Allowed::Roles(WRITERS)),
    ("/colex.v1.Security/ListTokens", Allowed::Roles(WRITERS)),
    ("/colex.v1.Security/RevokeToken", Allowed::Roles(WRITERS)),
    ("/colex.v1.Security/ListUsers", Allowed::Roles(WRITERS)),
    ("/colex.v1.Security/RemoveUser", Allowed::Roles(WRITERS)),
];

static TABLE: LazyLock<HashMap<&'static str, Allowed>> = LazyLock::new(|| ALLOWED_ROLES.iter().copied().collect());

/// Decides whether the caller with `certificates` (leaf first) may call `path`. Returns the
/// caller's identity when it showed a certificate.
pub fn authorize(
    path: &str,
    certificates: Option<&[tonic::transport::CertificateDer<'static>]>,
    verifier: &ChainVerifier,
    state: &ClusterState,
    now_unix: i64,
) -> Result<Option<PeerIdentity>, Status> {
    let Some(allowed) = TABLE.get(path).copied() else {
        return Err(Status::permission_denied(format!("method {path} is not in the controller's authorization table")));
    };
    let chain = certificates.filter(|chain| !chain.is_empty());
    let identity = match chain {
        Some(chain) => {
            verifier
                .verify(chain)
                .map_err(|reason| Status::unauthenticated(format!("{reason}; {}", renew_hint_for_chain(chain))))?;
            Some(PeerIdentity::from_der(chain[0].as_ref()).map_err(|error| Status::unauthenticated(error.to_string()))?)
        }
        None => None,
    };
    if let Some(peer) = &identity {
        if state.security.is_revoked(&peer.serial) {
            return Err(Status::unauthenticated(format!(
                "the certificate of {} {} (serial {}) was revoked; {}",
                peer.role,
                peer.identity,
                peer.serial,
                renew_hint(peer.role)
            )));
        }
        if peer.not_after_unix < now_unix {
            return Err(Status::unauthenticated(format!(
                "the certificate of {} {} expired; {}",
                peer.role,
                peer.identity,
                renew_hint(peer.role)
            )));
        }
    }
    let roles = match allowed {
        Allowed::Anyone => return Ok(identity),
        Allowed::Roles(roles) => roles,
    };
    let Some(peer) = identity else {
        return Err(Status::unauthenticated(format!(
            "{path} needs a client certificate with role {}, and the connection has none; enroll with `colex-cli enroll` or join with a token",
            role_list(roles)
        )));
    };
    if !roles.contains(&peer.role) {
        return Err(Status::permission_denied(format!(
            "{} {} has role {}, and {path} needs role {}",
            peer.role,
            peer.identity,
            peer.role,
            role_list(roles)
        )));
    }
    Ok(Some(peer))
}

/// Checks that an agent's hello names the host its certificate names. Without TLS there is
/// no certificate and nothing to compare.
pub fn check_agent_name(peer: Option<&PeerIdentity>, hello_name: &str) -> Result<(), Status> {
    match peer {
        Some(peer) if peer.role == Role::Agent && peer.identity != hello_name => Err(Status::permission_denied(format!(
            "the agent's certificate is for host {}, and its hello names host {hello_name}; start the agent with --name {}",
            peer.identity, peer.identity
        ))),
        _ => Ok(()),
    }
}

fn role_list(roles: &[Role]) -> String {
    roles.iter().map(|role| role.as_str()).collect::<Vec<_>>().join(" or ")
}

/// Returns what the holder of `chain` should do, from the role the leaf names if it names one.
fn renew_hint_for_chain(chain: &[tonic::transport::CertificateDer<'static>]) -> &'static str {
    match PeerIdentity::from_der(chain[0].as_ref()) {
        Ok(peer) => renew_hint(peer.role),
        Err(_) => "enroll with `colex-cli enroll`, or join with a token from `colex-cli tokens create`",
    }
}

fn renew_hint(role: Role) -> &'static str {
    match role {
        Role::Admin | Role::Reader => "enroll again with `colex-cli enroll` and a key from an admin",
        Role::Agent => "join the host again with `colex-agent --token` and a new token",
        Role::Controller => "join the controller again with `colex-controller --token` and a new token",
    }
}

/// The layer that puts [`Authorize`] in front of every service.
#[derive(Clone)]
pub struct AuthLayer {
    state: Arc<RwLock<AppliedState>>,
    /// `None` under `--insecure`, where every call passes.
    verifier: Option<ChainVerifier>,
}

impl AuthLayer {
    /// Checks every call's certificate with `verifier` and against the table and the
    /// revocation list in `state`, or, without a verifier, lets every call pass.
    pub fn new(state: Arc<RwLock<AppliedState>>, verifier: Option<ChainVerifier>) -> AuthLayer {
        AuthLayer { state, verifier }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            state: Arc::clone(&self.state),
            verifier: self.verifier.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes: authorizes, then calls the wrapped service.
#[derive(Clone)]
pub struct Authorize<S> {
    inner: S,
    state: Arc<RwLock<AppliedState>>,
    verifier: Option<ChainVerifier>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authorize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready serves this call; the fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = Arc::clone(&self.state);
        let Some(verifier) = self.verifier.clone() else {
            return Box::pin(inner.call(request));
        };
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let certificates = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs);
            let decision = {
                let state = state.read().await;
                authorize(&path, certificates.as_deref().map(Vec::as_slice), &verifier, &state, now_unix())
            };
            match decision {
                Ok(identity) => {
                    if let Some(identity) = identity {
                        request.extensions_mut().insert(identity);
                    }
                    inner.call(request).await
                }
                Err(status) => {
                    let remote = request
                        .extensions()
                        .get::<TlsConnectInfo<TcpConnectInfo>>()
                        .and_then(|info| info.get_ref().remote_addr());
                    tracing::warn!(%path, ?remote, code = ?status.code(), reason = status.message(), "rejected a call");
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// Returns the current time in seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use colex_proto::pki::{CertificateAuthority, Validity};
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn verifier(authority: &CertificateAuthority) -> ChainVerifier {
        ChainVerifier::new(authority.cert_pem()).expect("verifier")
    }

    fn chain(authority: &CertificateAuthority, role: Role, name: &str) -> Vec<tonic::transport::CertificateDer<'static>> {
        let issued = authority.issue(role, name, Validity::from_now(DAY)).expect("issue");
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).expect("pem");
        vec![tonic::transport::CertificateDer::from(pem.contents)]
    }

    #[test]
    fn reader_may_list_but_not_up() {
        let authority = CertificateAuthority::create("lab").expect("authority");
        let reader = chain(&authority, Role::Reader, "rita");
        let state = ClusterState::default();
        let verifier = verifier(&authority);
        assert!(authorize("/colex.v1.Client/List", Some(&reader), &verifier, &state, now_unix()).is_ok());
        let denied = authorize("/colex.v1.Client/Up", Some(&reader), &verifier, &state, now_unix()).expect_err("reader up");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("has role reader"), "{}", denied.message());
        assert!(denied.message().contains("needs role admin or controller"), "{}", denied.message());
    }

    #[test]
    fn admin_may_up() {
        let authority = CertificateAuthority::create("lab").expect("authority");
        let admin = chain(&authority, Role::Admin, "ann");
        let identity = authorize("/colex.v1.Client/Up", Some(&admin), &verifier(&authority), &ClusterState::default(), now_unix());
        assert_eq!(identity.ok().flatten().map(|peer| peer.identity), Some("ann".to_owned()));
    }

    #[test]
    fn missing_certificate_is_unauthenticated() {
        let authority = CertificateAuthority::create("lab").expect("authority");
        let verifier = verifier(&authority);
        let denied = authorize("/colex.v1.Client/List", None, &verifier, &ClusterState::default(), now_unix()).expect_err("no cert");
        assert_eq!(denied.code(), tonic::Code::Unauthenticated);
        assert!(denied.message().contains("has none"), "{}", denied.message());
        assert!(authorize("/colex.v1.Security/Enroll", None, &verifier, &ClusterState::default(), now_unix()).is_ok());
    }

    #[test]
    fn foreign_certificate_is_unauthenticated() {
        let authority = CertificateAuthority::create("lab").expect("authority");
        let stranger = CertificateAuthority::create("other").expect("authority");
        let foreign = chain(&stranger, Role::Admin, "mallory");
        let denied = authorize("/colex.v1.Client/List", Some(&foreign), &verifier(&authority), &ClusterState::default(), now_unix())
            .expect_err("foreign");
        assert_eq!(denied.code(), tonic::Code::Unauthenticated);
        assert!(denied.message().contains("not issued by this cluster's authority"), "{}", denied.message());
    }

    #[test]
    fn expired_certificate_is_unauthenticated() {
        let authority = CertificateAuthority::create("lab").expect("authority");
        let now = time::OffsetDateTime::now_utc();
        let expired = Validity::between(now - time::Duration::days(2), now - time::Duration::days(1)).expect("validity");
        let issued = authority.issue(Role::Admin, "old", expired).expect("issue");
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).expect("pem");
        let old = vec![tonic::transport::CertificateDer::from(pem.contents)];
        let denied = authorize("/colex.v1.Client/List", Some(&old), &verifier(&authority), &ClusterState::default(), now_unix())
            .expect_err("expired");
        assert_eq!(denied.code(), tonic::Code::Unauthenticated);
        assert!(denied.message().contains("has expired"), "{}", denied.message());
        assert!(denied.message().contains("colex-cli enroll"), "{}", denied.message());
    }

    #[test]
    fn revoked_certificate_is_unauthenticated() {
        let authority = CertificateAuthority::create("lab").expect("authority");
        let agent = chain(&authority, Role::Agent, "h1");
        let peer = PeerIdentity::from_der(agent[0].as_ref()).expect("identity");
        let mut state = ClusterState::default();
        state.security.revoked.insert(peer.serial.clone(), "agent/h1".to_owned());
        let denied = authorize("/colex.v1.Agent/Session", Some(&agent), &verifier(&authority), &state, now_unix()).expect_err("revoked");
        assert_eq!(denied.code(), tonic::Code::Unauthenticated);
        assert!(denied.message().contains("was revoked"), "{}", denied.message());
    }

    #[test]
    fn agent_hello_must_name_certificate_host() {
        let authority = CertificateAuthority::create("lab").expect("authority");
        let agent = chain(&authority, Role::Agent, "h1");
        let peer = PeerIdentity::from_der(agent[0].as_ref()).expect("identity");
        assert!(check_agent_name(Some(&peer), "h1").is_ok());
        let denied = check_agent_name(Some(&peer), "h2").expect_err("other host");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("certificate is for host h1"), "{}", denied.message());
        assert!(check_agent_name(None, "h2").is_ok(), "no certificate under --insecure");
    }

    #[test]
    fn unknown_method_is_denied() {
        let authority = CertificateAuthority::create("lab").expect("authority");
        let denied = authorize("/colex.v1.Client/Nope", None, &verifier(&authority), &ClusterState::default(), now_unix())
            .expect_err("unknown");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn every_generated_method_is_in_the_table() {
        // The method names of each service, as tonic routes them.
        let services: [(&str, &[&str]); 8] = [
            ("Client", &["Up", "Down", "List", "Logs", "Status", "Hosts", "SetDraining", "RemoveHost"]),
            ("Exec", &["Exec"]),
            ("Watch", &["WatchSilos"]),
            ("Agent", &["Session"]),
            ("AgentFiles", &["FetchFileContent"]),
            (
                "Security",
                &[
                    "Enroll",
                    "JoinWithToken",
                    "OpenEnrollment",
                    "CreateToken",
                    "ListTokens",
                    "RevokeToken",
                    "ListUsers",
                    "RemoveUser",
                ],
            ),
            ("Raft", &["AppendEntries", "AppendEntriesStream", "Vote", "InstallSnapshot"]),
            ("Members", &["Join", "List", "Remove"]),
        ];
        for (service, methods) in services {
            for method in methods {
                let path = format!("/colex.v1.{service}/{method}");
                assert!(TABLE.contains_key(path.as_str()), "{path} missing");
            }
        }
    }
}
