//! The three sources of a controller's certificate: its data folder on a restart, a running
//! controller that signs it for a join token, or, at `--bootstrap`, the cluster authority that
//! the controller creates.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use colex_proto::pki::{self, CertificateAuthority, JoinToken, Role, Validity};
use tokio::time::Instant;

use crate::raft::RaftNode;
use crate::security_service::{open_enrollment, CERTIFICATE_LIFETIME};
use crate::security_state::{IssuedRecord, SecurityCommand, StoredAuthority};
use crate::state::{Command, Response};
use crate::tls::Credentials;

/// Name in the new authority's certificate.
const CLUSTER_NAME: &str = "colex";
/// How long a joining controller keeps asking for its certificate, as for its node id.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Returns the certificate files of `data_dir`, or, when there are none and `join` names
/// controllers, requests a certificate with `token` and stores it.
pub async fn load_or_join(
    data_dir: &Path,
    join: &[String],
    token: Option<&str>,
    advertise: &str,
) -> anyhow::Result<Option<Credentials>> {
    if let Some(credentials) = Credentials::load(data_dir)? {
        return Ok(Some(credentials));
    }
    if join.is_empty() {
        return Ok(None);
    }
    let token = token.context(
        "--join needs --token (or COLEX_TOKEN) to get this controller's certificate; create one with `colex-cli tokens create --role controller`",
    )?;
    let token = JoinToken::parse(token)?;
    let name = controller_name(advertise);
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        let mut failures = Vec::new();
        for address in join {
            match pki::join_with_token(address, &token, &name).await {
                Ok(joined) => {
                    if joined.role != Role::Controller.as_str() {
                        anyhow::bail!(
                            "join token {} is for role {}, not controller; create one with `colex-cli tokens create --role controller`",
                            token.id(),
                            joined.role
                        );
                    }
                    let credentials = Credentials {
                        cert_pem: joined.cert_pem,
                        key_pem: joined.key_pem,
                        authority_pem: joined.authority_pem,
                    };
                    credentials.save(data_dir)?;
                    tracing::info!(via = %address, identity = %name, token_id = token.id(), "received this controller's certificate");
                    return Ok(Some(credentials));
                }
                Err(pki::JoinError::Rejected { address, message, .. }) => {
                    anyhow::bail!("controller {address} rejected the join token: {message}");
                }
                Err(error) => {
                    tracing::warn!(%address, %error, "cannot get a certificate from this controller; trying the next one");
                    failures.push(error.to_string());
                }
            }
        }
        if Instant::now() + JOIN_RETRY_INTERVAL >= deadline {
            anyhow::bail!("no controller issued a certificate within {JOIN_TIMEOUT:?}: {}", failures.join("; "));
        }
        tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
    }
}

/// Returns the identity a controller's certificate carries: `controller-` and its advertised
/// address with every character a certificate identity does not allow replaced by `-`.
fn controller_name(advertise: &str) -> String {
    let cleaned: String = advertise
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect();
    let mut name = format!("controller-{cleaned}");
    name.truncate(pki::MAX_IDENTITY_BYTES);
    name
}

/// Creates the cluster authority, stores it in the replicated state, and issues and saves
/// this controller's certificate. Called once, on the leader of a new cluster.
pub async fn create_authority(node: &RaftNode, data_dir: &Path) -> anyhow::Result<Credentials> {
    let authority = CertificateAuthority::create(CLUSTER_NAME)?;
    write(
        node,
        SecurityCommand::SetAuthority(StoredAuthority {
            cert_pem: authority.cert_pem().to_owned(),
            key_pem: authority.key_pem().to_owned(),
        }),
    )
    .await
    .context("cannot store the cluster authority")?;

    let identity = format!("controller-{}", node.id);
    let validity = Validity::from_now(CERTIFICATE_LIFETIME);
    let issued = authority.issue(Role::Controller, &identity, validity)?;
    let key_pem = issued.key_pem().context("the authority made no key for this controller")?.to_owned();
    let key_fingerprint = pki::key_fingerprint(&key_pem)?;
    write(
        node,
        SecurityCommand::RecordIssued(IssuedRecord {
            role: Role::Controller.as_str().to_owned(),
            identity: identity.clone(),
            serial: issued.serial.clone(),
            key_fingerprint,
            not_after_unix: validity.not_after().unix_timestamp(),
        }),
    )
    .await
    .context("cannot record this controller's certificate")?;

    let credentials = Credentials {
        cert_pem: issued.cert_pem.clone(),
        key_pem,
        authority_pem: authority.cert_pem().to_owned(),
    };
    credentials.save(data_dir)?;
    tracing::info!(fingerprint = %authority.fingerprint(), %identity, "created the cluster authority and this controller's certificate");
    Ok(credentials)
}

/// Opens the first enrollment window of a new cluster, for an admin. The key goes to a file
/// in `data_dir` and, only when standard output is a terminal, to standard output.
pub async fn open_first_enrollment(node: &RaftNode, data_dir: &Path, window: Duration) -> anyhow::Result<()> {
    let (key, expires_unix) = open_enrollment(node, data_dir, Role::Admin, window)
        .await
        .map_err(|status| anyhow::anyhow!("cannot open the enrollment window: {}", status.message()))?;
    if std::io::stdout().is_terminal() {
        println!("enrollment key, valid for {} s: {key}", window.as_secs());
        println!("enroll the first admin with: colex-cli --serv ADDRESS enroll --name NAME");
    }
    tracing::debug!(expires_unix, "first enrollment window open");
    Ok(())
}

async fn write(node: &RaftNode, command: SecurityCommand) -> anyhow::Result<()> {
    match node.write(Command::Security(command)).await? {
        Response::Rejected { reason } => anyhow::bail!("{reason}"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_names_are_identities() {
        assert_eq!(controller_name("198.51.100.201:7069"), "controller-198.51.100.201-7069");
        assert_eq!(controller_name("[::1]:7069"), "controller----1--7069");
    }
}
