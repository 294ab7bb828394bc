//! The agent's host certificate: kept in its state folder, requested with a join token when
//! missing or revoked.
//!
//! Files: `agent.crt`, `agent.key` (mode 0600) and `authority.crt`, all mode 0600 in the
//! state folder.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use colex_proto::addresses::split_addresses;
use colex_proto::pki::{self, JoinToken, Role, SERVER_NAME};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const CERT_FILE: &str = "agent.crt";
const KEY_FILE: &str = "agent.key";
const AUTHORITY_FILE: &str = "authority.crt";
/// Permissions of the certificate files: owner read and write only.
const FILE_MODE: u32 = 0o600;
/// Time a controller gets to finish the TLS handshake, so a frozen one is passed over.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Time allowed for the check that stored credentials still work.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent keeps asking the controllers for a certificate.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The host certificate and key and the authority's certificate, in PEM.
#[derive(Clone)]
pub struct HostCredentials {
    cert_pem: String,
    key_pem: String,
    authority_pem: String,
}

impl std::fmt::Debug for HostCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCredentials").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

impl HostCredentials {
    /// Returns the client settings for connections to controllers.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .domain_name(SERVER_NAME)
            .timeout(HANDSHAKE_TIMEOUT)
            .ca_certificate(Certificate::from_pem(&self.authority_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// Returns the host's credentials: those in `state_dir` while the controllers accept them,
/// else new ones requested from the controllers in `controllers` with `token`.
pub async fn obtain(state_dir: &Path, host_name: &str, controllers: &str, token: Option<&str>) -> anyhow::Result<HostCredentials> {
    if let Some(stored) = load(state_dir)? {
        let named = pki::PeerIdentity::from_pem(&stored.cert_pem).map(|peer| peer.identity);
        let check = match named {
            Ok(identity) if identity == host_name => check_accepted(&stored, controllers).await,
            Ok(identity) => Check::Rejected(format!("the certificate in the state folder is for host {identity}, not {host_name}")),
            Err(error) => Check::Rejected(format!("the certificate in the state folder is unreadable: {error}")),
        };
        match check {
            Check::Accepted => return Ok(stored),
            Check::Rejected(message) => {
                let Some(_) = token else {
                    anyhow::bail!("this host's certificate cannot be used: {message}; start the agent with --token and a new join token");
                };
                tracing::warn!(reason = %message, "this host's certificate cannot be used; joining again with the token");
            }
            // Unreachable controllers may accept the certificate later; the session retries.
            Check::Unknown(cause) => {
                tracing::warn!(%cause, "cannot check this host's certificate now; using it");
                return Ok(stored);
            }
        }
    }
    let token = token.context(
        "this host has no certificate; start the agent with --token (or COLEX_TOKEN) and a token from `colex-cli tokens create --role agent`",
    )?;
    let token = JoinToken::parse(token)?;
    let joined = join(&token, host_name, controllers).await?;
    if joined.role != Role::Agent.as_str() {
        anyhow::bail!(
            "join token {} is for role {}, not agent; create one with `colex-cli tokens create --role agent`",
            token.id(),
            joined.role
        );
    }
    let credentials = HostCredentials {
        cert_pem: joined.cert_pem,
        key_pem: joined.key_pem,
        authority_pem: joined.authority_pem,
    };
    save(state_dir, &credentials)?;
    tracing::info!(host = host_name, token_id = token.id(), "received this host's certificate");
    Ok(credentials)
}

async fn join(token: &JoinToken, host_name: &str, controllers: &str) -> anyhow::Result<pki::JoinedCredentials> {
    let addresses = split_addresses(controllers);
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    loop {
        let mut failures = Vec::new();
        for address in &addresses {
            match pki::join_with_token(address, token, host_name).await {
                Ok(joined) => return Ok(joined),
                Err(pki::JoinError::Rejected { address, message, .. }) => {
                    anyhow::bail!("controller {address} rejected the join: {message}")
                }
                Err(error) => {
                    tracing::warn!(%address, %error, "cannot get a certificate from this controller; trying the next one");
                    failures.push(error.to_string());
                }
            }
        }
        if tokio::time::Instant::now() + JOIN_RETRY_INTERVAL >= deadline {
            anyhow::bail!("no controller issued a certificate within {JOIN_TIMEOUT:?}: {}", failures.join("; "));
        }
        tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
    }
}

/// Whether the controllers accept a certificate.
enum Check {
    Accepted,
    /// A controller rejected it, with this message.
    Rejected(String),
    /// No controller could be asked.
    Unknown(String),
}

/// Requests the member list, which every agent may read, from the first controller that
/// responds.
async fn check_accepted(credentials: &HostCredentials, controllers: &str) -> Check {
    let mut causes = Vec::new();
    for address in split_addresses(controllers) {
        let endpoint = Endpoint::from_shared(format!("https://{address}"))
            .and_then(|endpoint| endpoint.tls_config(credentials.client_config()));
        let endpoint = match endpoint {
            Ok(endpoint) => endpoint.connect_timeout(CHECK_TIMEOUT),
            Err(error) => {
                causes.push(format!("{address}: {error}"));
                continue;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                causes.push(format!("{address}: {}", colex_proto::addresses::root_cause(&error)));
                continue;
            }
        };
        let mut request = tonic::Request::new(colex_proto::ListMembersRequest { local: true });
        request.set_timeout(CHECK_TIMEOUT);
        match colex_proto::members_client::MembersClient::new(channel).list(request).await {
            Ok(_) => return Check::Accepted,
            Err(status) if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
                return Check::Rejected(status.message().to_owned())
            }
            Err(status) => {
                let cause = status.message().to_owned();
                // A handshake the controller ended with an alert, such as an expired or foreign
                // certificate.
                if cause.contains("alert") || cause.contains("Certificate") {
                    return Check::Rejected(cause);
                }
                causes.push(format!("{address}: {cause}"));
            }
        }
    }
    Check::Unknown(causes.join("; "))
}

fn load(state_dir: &Path) -> anyhow::Result<Option<HostCredentials>> {
    let cert_path = state_dir.join(CERT_FILE);
    if !cert_path.exists() {
        return Ok(None);
    }
    let read = |name: &str| -> anyhow::Result<String> {
        let path = state_dir.join(name);
        fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    Ok(Some(HostCredentials {
        cert_pem: read(CERT_FILE)?,
        key_pem: read(KEY_FILE)?,
        authority_pem: read(AUTHORITY_FILE)?,
    }))
}

fn save(state_dir: &Path, credentials: &HostCredentials) -> anyhow::Result<()> {
    fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    write_private(&state_dir.join(KEY_FILE), &credentials.key_pem)?;
    write_private(&state_dir.join(AUTHORITY_FILE), &credentials.authority_pem)?;
    // The certificate last: its presence marks the set complete for `load`.
    write_private(&state_dir.join(CERT_FILE), &credentials.cert_pem)
}

fn write_private(path: &PathBuf, contents: &str) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("cannot replace {}", path.display())),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
