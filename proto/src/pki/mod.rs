//! The cluster's public key infrastructure: one certificate authority per cluster, the
//! certificates it issues to controllers, agents and CLI users, and the join tokens that let a
//! new agent or controller trust the authority before it sends anything.
//!
//! Every certificate names its holder's [`Role`] and identity in one URI subject alternative
//! name, `colex://ROLE/IDENTITY`, so a server learns who called from the verified chain alone.
//! Controllers also carry the DNS name [`SERVER_NAME`], which clients verify in place of a host
//! name: controllers move between addresses, the authority does not.
//!
//! Nothing here logs or formats a private key or a token's secret: the types that hold them
//! print placeholders in their `Debug` output.

mod authority;
mod enrollment;
mod join;
mod peer;
mod pin;
mod role;
mod token;

pub use authority::{certificate_request, key_fingerprint, request_key_fingerprint, CertificateAuthority, IssuedCertificate, Validity};
pub use enrollment::{secret_matches_digest, EnrollmentKey, ENROLLMENT_KEY_PREFIX};
pub use join::{enroll, join_with_token, JoinError, JoinedCredentials};
pub use pin::{der_to_pem, fetch_pinned_authority};
pub use peer::{peer_identity, PeerIdentity};
pub use role::{Role, MAX_IDENTITY_BYTES};
pub use token::{JoinToken, TOKEN_PREFIX};

/// DNS name in every controller certificate. Clients and peers check it instead of an address.
pub const SERVER_NAME: &str = "controller.colex";

/// Scheme of the subject alternative name that carries a certificate's role and identity.
pub(crate) const IDENTITY_URI_SCHEME: &str = "colex://";

/// Errors of the cluster PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("role {0:?} is not one of controller, agent, admin or reader")]
    UnknownRole(String),
    #[error("identity {identity:?} {problem}; use 1 to 64 letters, digits, '.', '_' or '-'")]
    BadIdentity { identity: String, problem: &'static str },
    #[error("could not make a key pair: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    #[error("could not read the {what} as PEM: {source}")]
    ReadPem {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("could not sign a certificate for {identity}: {source}")]
    Sign {
        identity: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("the validity ends before it starts ({not_before} to {not_after})")]
    EmptyValidity { not_before: String, not_after: String },
    #[error("could not parse the peer certificate: {0}")]
    ParseCertificate(String),
    #[error("the peer certificate has no colex identity (a colex:// subject alternative name)")]
    NoIdentity,
    #[error("join token {shown} is malformed: {problem}; ask an admin for a new one with `colex-cli tokens create`")]
    BadToken { shown: String, problem: &'static str },
    #[error("enrollment key is malformed: {problem}; copy it again from the controller's data folder or ask an admin for `colex-cli enroll --reopen`")]
    BadEnrollmentKey { problem: &'static str },
    #[error("cannot verify the controller at {address}: {problem}")]
    Pin { address: String, problem: String },
    #[error("could not read random bytes from the system")]
    Random,
}

/// Returns the lower-case hex SHA-256 digest of `bytes`, the form fingerprints take in tokens
/// and messages.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    hex(digest.as_ref())
}

/// Formats `bytes` as lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;

    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // `fmt::Write` for String never returns an error.
        let _ = write!(text, "{byte:02x}");
    }
    text
}
