//! The `Security` service: enrollment of CLI users, join tokens for agents and controllers,
//! and the lists and revocations of both. A follower forwards every call to the leader, which
//! signs certificates with the authority in the replicated state.

use std::path::PathBuf;
use std::time::Duration;

use colex_proto as proto;
use colex_proto::pki::{
    request_key_fingerprint, secret_matches_digest, CertificateAuthority, EnrollmentKey, JoinToken, PeerIdentity, Role,
    Validity,
};
use colex_proto::security_client::SecurityClient;
use colex_proto::security_server::{Security, SecurityServer};
use tonic::{Request, Response, Status};

use crate::auth::now_unix;
use crate::raft::RaftNode;
use crate::security_state::{issued_key, EnrollmentWindow, IssuedRecord, SecurityCommand, TokenRecord};
use crate::state::{Command, Response as StateResponse};

/// Lifetime of the certificates of agents, controllers and users: one year.
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of a join token created without `--ttl`.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The `Security` gRPC service of one controller.
pub struct SecurityService {
    node: RaftNode,
    /// Folder the enrollment key file is written to.
    data_dir: PathBuf,
    /// Window of `OpenEnrollment` requests that give none.
    default_window: Duration,
}

impl SecurityService {
    /// Returns the gRPC server.
    pub fn server(node: RaftNode, data_dir: PathBuf, default_window: Duration) -> SecurityServer<SecurityService> {
        SecurityServer::new(SecurityService {
            node,
            data_dir,
            default_window,
        })
    }

    /// Loads the authority from the replicated state.
    async fn authority(&self) -> Result<CertificateAuthority, Status> {
        let stored = self.node.state.read().await.security.authority.clone();
        let stored = stored.ok_or_else(|| {
            Status::failed_precondition("the cluster has no certificate authority; it runs with --insecure")
        })?;
        CertificateAuthority::load(&stored.cert_pem, &stored.key_pem)
            .map_err(|error| Status::internal(format!("cannot load the cluster authority: {error}")))
    }

    /// Signs `request_pem` for `identity` in `role`, records the certificate and returns it.
    async fn issue(&self, request_pem: &str, role: Role, identity: &str) -> Result<proto::CertificateResponse, Status> {
        let authority = self.authority().await?;
        let key_fingerprint =
            request_key_fingerprint(request_pem).map_err(|error| Status::invalid_argument(error.to_string()))?;
        let validity = Validity::from_now(CERTIFICATE_LIFETIME);
        let issued = authority
            .sign_request(request_pem, role, identity, validity)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let record = IssuedRecord {
            role: role.as_str().to_owned(),
            identity: identity.to_owned(),
            serial: issued.serial.clone(),
            key_fingerprint,
            not_after_unix: validity.not_after().unix_timestamp(),
        };
        write(&self.node, SecurityCommand::RecordIssued(record)).await?;
        tracing::info!(%role, identity, serial = %issued.serial, "issued a certificate");
        Ok(proto::CertificateResponse {
            cert_pem: issued.cert_pem,
            authority_pem: authority.cert_pem().to_owned(),
            role: role.as_str().to_owned(),
            identity: identity.to_owned(),
        })
    }
}

/// Opens an enrollment window of `window` for `role` on the leader, writes the key to
/// `ENROLLMENT_KEY_FILE` in `data_dir` and returns the key and its expiry.
pub async fn open_enrollment(
    node: &RaftNode,
    data_dir: &std::path::Path,
    role: Role,
    window: Duration,
) -> Result<(EnrollmentKey, i64), Status> {
    let fingerprint = {
        let state = node.state.read().await;
        let stored = state
            .security
            .authority
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("the cluster has no certificate authority; it runs with --insecure"))?;
        CertificateAuthority::load(&stored.cert_pem, &stored.key_pem)
            .map_err(|error| Status::internal(format!("cannot load the cluster authority: {error}")))?
            .fingerprint()
    };
    let key = EnrollmentKey::generate(&fingerprint).map_err(|error| Status::internal(error.to_string()))?;
    let window_secs = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    let expires_unix = now_unix().saturating_add(window_secs);
    write(
        node,
        SecurityCommand::OpenEnrollment(EnrollmentWindow {
            secret_digest: key.secret_digest(),
            role: role.as_str().to_owned(),
            expires_unix,
        }),
    )
    .await?;
    let path = data_dir.join(crate::tls::ENROLLMENT_KEY_FILE);
    crate::tls::write_secret_file(&path, &format!("{key}\n")).map_err(|error| Status::internal(error.to_string()))?;
    tracing::info!(file = %path.display(), %role, expires_unix, window_secs, "enrollment window open; the key is in the file");
    Ok((key, expires_unix))
}

/// Proposes `command` and maps a rejection to `FAILED_PRECONDITION`.
async fn write(node: &RaftNode, command: SecurityCommand) -> Result<(), Status> {
    let response = node
        .write(Command::Security(command))
        .await
        .map_err(|error| Status::unavailable(format!("cannot store the change: {error}")))?;
    match response {
        StateResponse::Rejected { reason } => Err(Status::failed_precondition(reason)),
        _ => Ok(()),
    }
}

fn parse_role(text: &str, allowed: &[Role], what: &str) -> Result<Role, Status> {
    let role: Role = text.parse().map_err(|error: colex_proto::pki::PkiError| Status::invalid_argument(error.to_string()))?;
    if !allowed.contains(&role) {
        let names: Vec<&str> = allowed.iter().map(|role| role.as_str()).collect();
        return Err(Status::invalid_argument(format!("{what} takes role {}, not {role}", names.join(" or "))));
    }
    Ok(role)
}

/// Returns the seconds since the Unix epoch as a UTC time for messages.
fn show_time(unix: i64) -> String {
    time_text(unix)
}

fn time_text(unix: i64) -> String {
    // Seconds are enough for expiry messages; no time zone database is needed for UTC.
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days` algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[tonic::async_trait]
impl Security for SecurityService {
    async fn enroll(&self, request: Request<proto::EnrollRequest>) -> Result<Response<proto::CertificateResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { SecurityClient::new(channel).enroll(forwarded).await })
            .await?
        {
            return Ok(response);
        }

        let request = request.into_inner();
        let window = self.node.state.read().await.security.enrollment.clone();
        let Some(window) = window else {
            tracing::warn!(name = %request.name, "enrollment rejected: no window is open");
            return Err(Status::unauthenticated(
                "no enrollment window is open; ask an admin to run `colex-cli enroll --reopen`",
            ));
        };
        if window.expires_unix < now_unix() {
            tracing::warn!(name = %request.name, expired_unix = window.expires_unix, "enrollment rejected: the window closed");
            return Err(Status::unauthenticated(format!(
                "the enrollment window closed at {}; ask an admin to run `colex-cli enroll --reopen`",
                show_time(window.expires_unix)
            )));
        }
        if !secret_matches_digest(&request.secret, &window.secret_digest) {
            tracing::warn!(name = %request.name, "enrollment rejected: the key does not match the open window");
            return Err(Status::unauthenticated(
                "the enrollment key does not match the open window; use the newest key (`colex-cli enroll --reopen` replaces the key)",
            ));
        }

        let window_role = parse_role(&window.role, &[Role::Admin, Role::Reader], "an enrollment window")?;
        let role = if request.role.is_empty() {
            window_role
        } else {
            parse_role(&request.role, &[Role::Admin, Role::Reader], "enrollment")?
        };
        if role == Role::Admin && window_role == Role::Reader {
            tracing::warn!(name = %request.name, "enrollment rejected: admin requested from a reader window");
            return Err(Status::permission_denied(
                "this enrollment window is open for readers only; enroll with --role reader or ask an admin for `colex-cli enroll --reopen --role admin`",
            ));
        }
        let response = self.issue(&request.request_pem, role, &request.name).await?;
        Ok(Response::new(response))
    }

    async fn join_with_token(
        &self,
        request: Request<proto::JoinWithTokenRequest>,
    ) -> Result<Response<proto::CertificateResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move {
                SecurityClient::new(channel).join_with_token(forwarded).await
            })
            .await?
        {
            return Ok(response);
        }
        let request = request.into_inner();
        let id = request.token_id;
        let (token, issued) = {
            let state = self.node.state.read().await;
            let token = state.security.tokens.get(&id).cloned();
            let issued = token
                .as_ref()
                .and_then(|token| state.security.issued.get(&issued_key(&token.role, &request.name)).cloned())
                .filter(|record| !state.security.is_revoked(&record.serial));
            (token, issued)
        };
        let token = token.ok_or_else(|| {
            Status::unauthenticated(format!("join token {id} is unknown to this cluster; create one with `colex-cli tokens create`"))
        })?;
        if token.revoked {
            return Err(Status::unauthenticated(format!(
                "join token {id} was revoked; create a new one with `colex-cli tokens create`"
            )));
        }
        if token.expires_unix < now_unix() {
            return Err(Status::unauthenticated(format!(
                "join token {id} expired at {}; create a new one with `colex-cli tokens create`",
                show_time(token.expires_unix)
            )));
        }
        if !secret_matches_digest(&request.token_secret, &token.secret_digest) {
            return Err(Status::unauthenticated(format!("join token {id} has a wrong secret; copy the whole token again")));
        }
        let role = parse_role(&token.role, &[Role::Agent, Role::Controller], "a join token")?;

        // A host is its key: a second machine under a taken name must not take over its silos.
        let key_fingerprint =
            request_key_fingerprint(&request.request_pem).map_err(|error| Status::invalid_argument(error.to_string()))?;
        if let Some(issued) = issued.filter(|issued| issued.key_fingerprint != key_fingerprint) {
            return Err(Status::already_exists(format!(
                "{role} name {} is taken by another key (certificate serial {}); if this is a rebuilt machine, run `colex-cli hosts remove {}` first",
                request.name, issued.serial, request.name
            )));
        }
        let response = self.issue(&request.request_pem, role, &request.name).await?;
        Ok(Response::new(response))
    }

    async fn open_enrollment(
        &self,
        request: Request<proto::OpenEnrollmentRequest>,
    ) -> Result<Response<proto::OpenEnrollmentResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move {
                SecurityClient::new(channel).open_enrollment(forwarded).await
            })
            .await?
        {
            return Ok(response);
        }
        let caller = request.extensions().get::<PeerIdentity>().map(|peer| peer.identity.clone());
        let request = request.into_inner();
        let role = if request.role.is_empty() {
            Role::Reader
        } else {
            parse_role(&request.role, &[Role::Admin, Role::Reader], "an enrollment window")?
        };
        let window = match request.window_secs {
            0 => self.default_window,
            secs => Duration::from_secs(u64::from(secs)),
        };
        let (key, expires_unix) = open_enrollment(&self.node, &self.data_dir, role, window).await?;
        tracing::info!(by = ?caller, %role, "enrollment window reopened");
        Ok(Response::new(proto::OpenEnrollmentResponse {
            key: key.to_string(),
            expires_unix,
        }))
    }

    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { SecurityClient::new(channel).create_token(forwarded).await })
            .await?
        {
            return Ok(response);
        }

        let request = request.into_inner();
        let role = parse_role(&request.role, &[Role::Agent, Role::Controller], "a join token")?;
        let ttl = match request.ttl_secs {
            0 => DEFAULT_TOKEN_TTL,
            secs => Duration::from_secs(secs),
        };
        let fingerprint = self.authority().await?.fingerprint();
        let token = JoinToken::generate(&fingerprint).map_err(|error| Status::internal(error.to_string()))?;

        let expires_unix = now_unix().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        let record = TokenRecord {
            role: role.as_str().to_owned(),
            secret_digest: token.secret_digest(),
            expires_unix,
            revoked: false,
        };
        write(
            &self.node,
            SecurityCommand::AddToken {
                id: token.id().to_owned(),
                record,
            },
        )
        .await?;
        tracing::info!(id = token.id(), %role, expires_unix, "join token created");
        Ok(Response::new(proto::CreateTokenResponse {
            id: token.id().to_owned(),
            token: token.to_string(),
            expires_unix,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { SecurityClient::new(channel).list_tokens(forwarded).await })
            .await?
        {
            return Ok(response);
        }
        let now = now_unix();
        let state = self.node.state.read().await;
        let tokens = state
            .security
            .tokens
            .iter()
            .map(|(id, token)| proto::TokenInfo {
                id: id.clone(),
                role: token.role.clone(),
                expires_unix: token.expires_unix,
                state: if token.revoked {
                    "revoked"
                } else if token.expires_unix < now {
                    "expired"
                } else {
                    "valid"
                }
                .to_owned(),
            })
            .collect();
        Ok(Response::new(proto::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::RevokeTokenResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { SecurityClient::new(channel).revoke_token(forwarded).await })
            .await?
        {
            return Ok(response);
        }
        let id = request.into_inner().id;
        write(&self.node, SecurityCommand::RevokeToken { id: id.clone() })
            .await
            .map_err(|status| Status::not_found(status.message()))?;
        tracing::info!(%id, "join token revoked");
        Ok(Response::new(proto::RevokeTokenResponse {}))
    }

    async fn list_users(&self, request: Request<proto::ListUsersRequest>) -> Result<Response<proto::ListUsersResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { SecurityClient::new(channel).list_users(forwarded).await })
            .await?
        {
            return Ok(response);
        }
        let state = self.node.state.read().await;
        let users = state
            .security
            .issued
            .values()
            .filter(|record| record.role == Role::Admin.as_str() || record.role == Role::Reader.as_str())
            .map(|record| proto::UserInfo {
                name: record.identity.clone(),
                role: record.role.clone(),
                serial: record.serial.clone(),
                not_after_unix: record.not_after_unix,
                revoked: state.security.is_revoked(&record.serial),
            })
            .collect();
        Ok(Response::new(proto::ListUsersResponse { users }))
    }

    async fn remove_user(&self, request: Request<proto::RemoveUserRequest>) -> Result<Response<proto::RemoveUserResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { SecurityClient::new(channel).remove_user(forwarded).await })
            .await?
        {
            return Ok(response);
        }
        let name = request.into_inner().name;
        let mut removed = false;
        for role in [Role::Admin, Role::Reader] {
            let known = self
                .node
                .state
                .read()
                .await
                .security
                .issued
                .contains_key(&issued_key(role.as_str(), &name));
            if known {
                write(
                    &self.node,
                    SecurityCommand::RevokeHolder {
                        role: role.as_str().to_owned(),
                        identity: name.clone(),
                    },
                )
                .await?;
                removed = true;
            }
        }
        if !removed {
            return Err(Status::not_found(format!("no user named {name} is enrolled; see `colex-cli users list`")));
        }
        tracing::info!(user = %name, "user certificate revoked");
        Ok(Response::new(proto::RemoveUserResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_as_utc() {
        assert_eq!(time_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time_text(1_764_950_400), "2025-12-05 16:00:00 UTC");
    }
}
