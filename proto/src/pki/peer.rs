//! The identity of the peer on a verified connection.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::role::parse_identity_uri;
use super::{hex, PkiError, Role};

/// The role and identity a verified peer certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Role of the peer, which sets what it may do.
    pub role: Role,
    /// Controller id, host name or user name.
    pub identity: String,
    /// Serial number of the certificate in lower-case hex, for revocation checks.
    pub serial: String,
    /// End of the certificate's validity, in seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl PeerIdentity {
    /// Reads the identity from a certificate in PEM, such as a client's own certificate file.
    pub fn from_pem(pem: &str) -> Result<PeerIdentity, PkiError> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|error| PkiError::ParseCertificate(error.to_string()))?;
        PeerIdentity::from_der(&block.contents)
    }

    /// Reads the identity from a certificate in DER that the TLS layer already verified
    /// against the cluster's authority. The certificate must carry exactly one colex identity.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, PkiError> {
        let (_, certificate) =
            X509Certificate::from_der(der).map_err(|error| PkiError::ParseCertificate(error.to_string()))?;
        let names = certificate
            .subject_alternative_name()
            .map_err(|error| PkiError::ParseCertificate(error.to_string()))?
            .ok_or(PkiError::NoIdentity)?;

        let mut identities = names.value.general_names.iter().filter_map(|name| match name {
            GeneralName::URI(uri) => parse_identity_uri(uri),
            _ => None,
        });
        let (role, identity) = identities.next().ok_or(PkiError::NoIdentity)?;
        if identities.next().is_some() {
            return Err(PkiError::ParseCertificate("it names more than one colex identity".to_owned()));
        }

        Ok(PeerIdentity {
            role,
            identity,
            serial: hex(certificate.raw_serial()),
            not_after_unix: certificate.validity().not_after.timestamp(),
        })
    }
}

/// Returns the verified identity of the peer that sent `request`, from the client certificate
/// the TLS layer checked against the cluster's authority. `UNAUTHENTICATED` when the
/// connection carries no certificate (plain text, or a server that does not ask for one).
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Result<PeerIdentity, tonic::Status> {
    let certificates = request
        .peer_certs()
        .ok_or_else(|| tonic::Status::unauthenticated("the connection has no client certificate; enroll first with `colex-cli enroll`"))?;
    let leaf = certificates
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("the connection has no client certificate; enroll first with `colex-cli enroll`"))?;
    PeerIdentity::from_der(leaf.as_ref()).map_err(|error| tonic::Status::unauthenticated(error.to_string()))
}
