//! The newcomer's side of joining and enrolling: verify the controller by the fingerprint in
//! a join token or enrollment key, then send a certificate request over TLS and receive the
//! certificate.

use std::fmt;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use super::{certificate_request, fetch_pinned_authority, EnrollmentKey, JoinToken, PkiError, SERVER_NAME};
use crate::security_client::SecurityClient;

/// Time allowed for the pinned handshake, the connection and the request, each.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// The certificate, private key and authority certificate a newcomer stores after joining or
/// enrolling, in PEM.
#[derive(Clone)]
pub struct JoinedCredentials {
    pub cert_pem: String,
    pub key_pem: String,
    pub authority_pem: String,
    /// Role and identity the certificate carries.
    pub role: String,
    pub identity: String,
}

impl fmt::Debug for JoinedCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinedCredentials")
            .field("role", &self.role)
            .field("identity", &self.identity)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Errors of joining or enrolling.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("cannot connect to controller {address} over TLS: {cause}")]
    Connect { address: String, cause: String },
    #[error("controller {address} rejected the request: {message}")]
    Rejected {
        address: String,
        code: tonic::Code,
        message: String,
    },
}

/// Asks the controller at `address` (HOST:PORT) for a certificate for `name` with a join
/// token.
pub async fn join_with_token(address: &str, token: &JoinToken, name: &str) -> Result<JoinedCredentials, JoinError> {
    let authority_pem = fetch_pinned_authority(address, token.fingerprint(), STEP_TIMEOUT).await?;
    let (request_pem, key_pem) = certificate_request(name)?;
    let mut client = connect_pinned(address, &authority_pem).await?;
    let mut request = tonic::Request::new(crate::JoinWithTokenRequest {
        token_id: token.id().to_owned(),
        token_secret: token.secret().to_owned(),
        name: name.to_owned(),
        request_pem,
    });
    request.set_timeout(STEP_TIMEOUT);
    let response = client.join_with_token(request).await.map_err(|status| rejected(address, &status))?;
    Ok(credentials(response.into_inner(), key_pem))
}

/// Enrolls the user `name` with an enrollment key at the controller at `address`; `role`
/// empty takes the role the window was opened for.
pub async fn enroll(address: &str, key: &EnrollmentKey, role: &str, name: &str) -> Result<JoinedCredentials, JoinError> {
    let authority_pem = fetch_pinned_authority(address, key.fingerprint(), STEP_TIMEOUT).await?;
    let (request_pem, key_pem) = certificate_request(name)?;
    let mut client = connect_pinned(address, &authority_pem).await?;
    let mut request = tonic::Request::new(crate::EnrollRequest {
        secret: key.secret().to_owned(),
        role: role.to_owned(),
        name: name.to_owned(),
        request_pem,
    });
    request.set_timeout(STEP_TIMEOUT);
    let response = client.enroll(request).await.map_err(|status| rejected(address, &status))?;
    Ok(credentials(response.into_inner(), key_pem))
}

/// Connects to `address` trusting only the pinned authority, without a client certificate.
async fn connect_pinned(address: &str, authority_pem: &str) -> Result<SecurityClient<tonic::transport::Channel>, JoinError> {
    let connect_error = |cause: String| JoinError::Connect {
        address: address.to_owned(),
        cause,
    };
    let tls = ClientTlsConfig::new()
        .domain_name(SERVER_NAME)
        .timeout(STEP_TIMEOUT)
        .ca_certificate(Certificate::from_pem(authority_pem));
    let channel = Endpoint::from_shared(format!("https://{address}"))
        .map_err(|error| connect_error(error.to_string()))?
        .tls_config(tls)
        .map_err(|error| connect_error(error.to_string()))?
        .connect_timeout(STEP_TIMEOUT)
        .connect()
        .await
        .map_err(|error| connect_error(crate::addresses::root_cause(&error)))?;
    Ok(SecurityClient::new(channel))
}

fn rejected(address: &str, status: &tonic::Status) -> JoinError {
    JoinError::Rejected {
        address: address.to_owned(),
        code: status.code(),
        message: status.message().to_owned(),
    }
}

fn credentials(response: crate::CertificateResponse, key_pem: String) -> JoinedCredentials {
    JoinedCredentials {
        cert_pem: response.cert_pem,
        key_pem,
        authority_pem: response.authority_pem,
        role: response.role,
        identity: response.identity,
    }
}
