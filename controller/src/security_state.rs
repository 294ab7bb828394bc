//! The replicated part of the cluster's security: the authority's certificate and key, the
//! join tokens and the enrollment window (secrets only as SHA-256 digests), the certificates
//! issued to agents, controllers and users, and the revocation list.
//!
//! The authority's key is in the replicated state so that any leader can sign certificates.
//! Every controller's data folder therefore contains it; see docs/security.md.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The cluster authority's certificate and private key, in PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAuthority {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for StoredAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredAuthority").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// A join token as the cluster stores it: never its secret, only the secret's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// "agent" or "controller".
    pub role: String,
    pub secret_digest: String,
    /// Expiry in seconds since the Unix epoch.
    pub expires_unix: i64,
    pub revoked: bool,
}

/// The open enrollment window: the SHA-256 of its key's secret, the role it grants and when
/// it closes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentWindow {
    pub secret_digest: String,
    /// "admin" or "reader": the highest role a user may enroll with.
    pub role: String,
    /// End of the window in seconds since the Unix epoch.
    pub expires_unix: i64,
}

/// A certificate the cluster issued, by `ROLE/IDENTITY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub role: String,
    pub identity: String,
    /// Serial number in lower-case hex.
    pub serial: String,
    /// SHA-256 of the holder's public key, which identifies a host across certificates.
    pub key_fingerprint: String,
    /// End of the validity in seconds since the Unix epoch.
    pub not_after_unix: i64,
}

/// Everything the cluster replicates about its certificates and tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityState {
    #[serde(default)]
    pub authority: Option<StoredAuthority>,
    /// Join tokens by id.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenRecord>,
    #[serde(default)]
    pub enrollment: Option<EnrollmentWindow>,
    /// The newest certificate of each holder, by [`issued_key`].
    #[serde(default)]
    pub issued: BTreeMap<String, IssuedRecord>,
    /// Revoked serial numbers (lower-case hex) and the `ROLE/IDENTITY` each belonged to.
    #[serde(default)]
    pub revoked: BTreeMap<String, String>,
}

/// A change to [`SecurityState`], one variant of the replicated `Command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SecurityCommand {
    /// Store the authority of a new cluster. Accepted while none is stored, and again with the
    /// same certificate.
    SetAuthority(StoredAuthority),
    /// Replace the enrollment window.
    OpenEnrollment(EnrollmentWindow),
    /// Add a join token with id `id`.
    AddToken { id: String, record: TokenRecord },
    /// Mark the token `id` revoked.
    RevokeToken { id: String },
    /// Record a newly issued certificate. The holder's earlier certificate, if any, is revoked.
    RecordIssued(IssuedRecord),
    /// Revoke the certificate of `ROLE/IDENTITY`.
    RevokeHolder { role: String, identity: String },
}

/// Returns the key of a holder in [`SecurityState::issued`].
pub fn issued_key(role: &str, identity: &str) -> String {
    format!("{role}/{identity}")
}

/// The result of a [`SecurityCommand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityOutcome {
    Applied,
    /// The command referred to nothing that exists, or conflicts with the stored state.
    Rejected(String),
}

impl SecurityState {
    /// Applies one command.
    pub fn apply(&mut self, command: &SecurityCommand) -> SecurityOutcome {
        match command {
            SecurityCommand::SetAuthority(authority) => match &self.authority {
                Some(stored) if stored.cert_pem != authority.cert_pem => {
                    SecurityOutcome::Rejected("the cluster already has an authority".to_owned())
                }
                _ => {
                    self.authority = Some(authority.clone());
                    SecurityOutcome::Applied
                }
            },
            SecurityCommand::OpenEnrollment(window) => {
                self.enrollment = Some(window.clone());
                SecurityOutcome::Applied
            }
            SecurityCommand::AddToken { id, record } => {
                self.tokens.insert(id.clone(), record.clone());
                SecurityOutcome::Applied
            }
            SecurityCommand::RevokeToken { id } => match self.tokens.get_mut(id) {
                Some(token) => {
                    token.revoked = true;
                    SecurityOutcome::Applied
                }
                None => SecurityOutcome::Rejected(format!("no join token has id {id}; see `colex-cli tokens list`")),
            },
            SecurityCommand::RecordIssued(record) => {
                let key = issued_key(&record.role, &record.identity);
                if let Some(earlier) = self.issued.insert(key.clone(), record.clone()) {
                    if earlier.serial != record.serial {
                        self.revoked.insert(earlier.serial, key);
                    }
                }
                SecurityOutcome::Applied
            }
            SecurityCommand::RevokeHolder { role, identity } => {
                if self.revoke_holder(role, identity) {
                    SecurityOutcome::Applied
                } else {
                    SecurityOutcome::Rejected(format!("no {role} named {identity} has a certificate"))
                }
            }
        }
    }

    /// Revokes the newest certificate of `ROLE/IDENTITY`; false when it has none.
    pub fn revoke_holder(&mut self, role: &str, identity: &str) -> bool {
        let key = issued_key(role, identity);
        match self.issued.get(&key) {
            Some(record) => {
                self.revoked.insert(record.serial.clone(), key);
                true
            }
            None => false,
        }
    }

    /// Returns whether the certificate with serial `serial` was revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.contains_key(serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(identity: &str, serial: &str) -> IssuedRecord {
        IssuedRecord {
            role: "agent".to_owned(),
            identity: identity.to_owned(),
            serial: serial.to_owned(),
            key_fingerprint: "k".to_owned(),
            not_after_unix: 0,
        }
    }

    #[test]
    fn new_certificate_revokes_earlier_one() {
        let mut state = SecurityState::default();
        assert_eq!(state.apply(&SecurityCommand::RecordIssued(issued("h1", "01"))), SecurityOutcome::Applied);
        assert_eq!(state.apply(&SecurityCommand::RecordIssued(issued("h1", "02"))), SecurityOutcome::Applied);
        assert!(state.is_revoked("01"));
        assert!(!state.is_revoked("02"));
    }

    #[test]
    fn revoke_holder_needs_a_certificate() {
        let mut state = SecurityState::default();
        let revoke = SecurityCommand::RevokeHolder {
            role: "admin".to_owned(),
            identity: "ann".to_owned(),
        };
        assert!(matches!(state.apply(&revoke), SecurityOutcome::Rejected(_)));
        state.apply(&SecurityCommand::RecordIssued(IssuedRecord {
            role: "admin".to_owned(),
            ..issued("ann", "0a")
        }));
        assert_eq!(state.apply(&revoke), SecurityOutcome::Applied);
        assert!(state.is_revoked("0a"));
    }

    #[test]
    fn second_authority_is_rejected() {
        let mut state = SecurityState::default();
        let first = StoredAuthority {
            cert_pem: "a".to_owned(),
            key_pem: "k".to_owned(),
        };
        assert_eq!(state.apply(&SecurityCommand::SetAuthority(first.clone())), SecurityOutcome::Applied);
        assert_eq!(state.apply(&SecurityCommand::SetAuthority(first)), SecurityOutcome::Applied);
        let second = StoredAuthority {
            cert_pem: "b".to_owned(),
            key_pem: "k".to_owned(),
        };
        assert!(matches!(state.apply(&SecurityCommand::SetAuthority(second)), SecurityOutcome::Rejected(_)));
        assert!(!format!("{:?}", state.authority).contains("\"k\""));
    }
}
