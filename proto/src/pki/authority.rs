//! The cluster's certificate authority and the certificates it issues.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use super::role::{check_identity, identity_uri};
use super::{sha256_hex, PkiError, Role, SERVER_NAME};

/// Lifetime of a new cluster's authority: 10 years, so no cluster meets its end by surprise.
const AUTHORITY_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Bytes of randomness in a serial number. RFC 5280 allows up to 20 octets, and 16 random bytes
/// make a collision between two certificates of one authority practically impossible.
const SERIAL_BYTES: usize = 16;
/// Time before now that a new certificate is already valid from, in case the clocks of the
/// issuing controller and the checking peer differ a little.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Validity {
    /// Returns a validity from a few minutes ago (clock skew) until `lifetime` from now.
    pub fn from_now(lifetime: Duration) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + lifetime,
        }
    }

    /// Returns a validity between two points in time. Tests use it to make expired certificates.
    pub fn between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Validity, PkiError> {
        if not_after <= not_before {
            return Err(PkiError::EmptyValidity {
                not_before: not_before.to_string(),
                not_after: not_after.to_string(),
            });
        }
        Ok(Validity { not_before, not_after })
    }

    /// Returns the end of the validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// A certificate the authority issued, in PEM, with its private key when the authority made
/// the key pair too.
pub struct IssuedCertificate {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// Serial number as lower-case hex, the key of revocation lists.
    pub serial: String,
    key_pem: Option<String>,
}

impl IssuedCertificate {
    /// Returns the private key in PKCS #8 PEM, when the authority generated it. Write it to a
    /// file only its owner may read.
    pub fn key_pem(&self) -> Option<&str> {
        self.key_pem.as_deref()
    }
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial", &self.serial)
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// The certificate authority of one cluster: its certificate and its signing key.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Makes a new authority for the cluster named `cluster`, valid for 10 years.
    pub fn create(cluster: &str) -> Result<CertificateAuthority, PkiError> {
        check_identity(cluster)?;
        let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
        let validity = Validity::from_now(AUTHORITY_LIFETIME);

        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&format!("colex cluster {cluster} authority"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(random_serial()?);

        let certificate = params.self_signed(&key).map_err(|source| PkiError::Sign {
            identity: cluster.to_owned(),
            source,
        })?;
        let key_pem = key.serialize_pem();
        Ok(CertificateAuthority {
            cert_pem: certificate.pem(),
            cert_der: certificate.der().to_vec(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an authority from its certificate and private key in PEM, as
    /// [`CertificateAuthority::create`] made them.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, PkiError> {
        let read = |what| move |source| PkiError::ReadPem { what, source };
        let key = KeyPair::from_pem(key_pem).map_err(read("authority key"))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| PkiError::ReadPem {
            what: "authority certificate",
            source: rcgen::Error::CouldNotParseCertificate,
        })?;
        let cert_der = pem.contents;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(read("authority certificate"))?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Returns the authority's certificate in PEM, which every member trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Returns the authority's private key in PEM. Only controllers keep it, in a file only root
    /// may read.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Returns the SHA-256 of the authority's certificate (DER) in lower-case hex. Join tokens
    /// and enrollment keys carry it, so a newcomer can verify that it talks to this cluster.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// Makes a key pair and a certificate for `identity` in `role`.
    pub fn issue(&self, role: Role, identity: &str, validity: Validity) -> Result<IssuedCertificate, PkiError> {
        let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
        let mut issued = self.sign(role, identity, validity, &key)?;
        issued.key_pem = Some(key.serialize_pem());
        Ok(issued)
    }

    /// Signs the public key of a certificate request (PEM) for `identity` in `role`. The names
    /// in the request are ignored: the role and identity come from the caller, who checked a
    /// join token or enrollment key, so the requester's key never leaves its host.
    pub fn sign_request(
        &self,
        request_pem: &str,
        role: Role,
        identity: &str,
        validity: Validity,
    ) -> Result<IssuedCertificate, PkiError> {
        let request = CertificateSigningRequestParams::from_pem(request_pem).map_err(|source| PkiError::ReadPem {
            what: "certificate request",
            source,
        })?;
        self.sign(role, identity, validity, &request.public_key)
    }

    fn sign(
        &self,
        role: Role,
        identity: &str,
        validity: Validity,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<IssuedCertificate, PkiError> {
        check_identity(identity)?;
        let sign_error = |source| PkiError::Sign {
            identity: identity.to_owned(),
            source,
        };
        let uri = identity_uri(role, identity).try_into().map_err(sign_error)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(identity);
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if role == Role::Controller {
            // Controllers serve clients and agents, and are clients of each other's Raft service.
            let server_name = SERVER_NAME.try_into().map_err(sign_error)?;
            params.subject_alt_names.push(SanType::DnsName(server_name));
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let serial = random_serial()?;
        let serial_hex = super::hex(serial.as_ref());
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;

        let certificate = params.signed_by(public_key, &self.issuer).map_err(sign_error)?;
        Ok(IssuedCertificate {
            cert_pem: certificate.pem(),
            serial: serial_hex,
            key_pem: None,
        })
    }
}

/// Makes a key pair and a certificate request for it, as an agent or user does before it
/// requests to join. Returns the request and the private key, both in PEM.
pub fn certificate_request(identity: &str) -> Result<(String, String), PkiError> {
    check_identity(identity)?;
    let key = KeyPair::generate().map_err(PkiError::KeyGeneration)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(identity);
    let sign_error = |source| PkiError::Sign {
        identity: identity.to_owned(),
        source,
    };
    let request = params.serialize_request(&key).map_err(sign_error)?;
    let request_pem = request.pem().map_err(sign_error)?;
    Ok((request_pem, key.serialize_pem()))
}

/// Returns the SHA-256 of the public key in a certificate request (PEM), in lower-case hex.
/// The cluster identifies an agent by it, so a host name stays with the key that first took it.
pub fn request_key_fingerprint(request_pem: &str) -> Result<String, PkiError> {
    use rcgen::PublicKeyData;

    let request = CertificateSigningRequestParams::from_pem(request_pem).map_err(|source| PkiError::ReadPem {
        what: "certificate request",
        source,
    })?;
    Ok(super::sha256_hex(request.public_key.der_bytes()))
}

/// Returns the SHA-256 of the public key of a private key in PEM, in lower-case hex: the same
/// value [`request_key_fingerprint`] returns for a request made with that key.
pub fn key_fingerprint(key_pem: &str) -> Result<String, PkiError> {
    use rcgen::PublicKeyData;

    let key = KeyPair::from_pem(key_pem).map_err(|source| PkiError::ReadPem {
        what: "private key",
        source,
    })?;
    Ok(super::sha256_hex(key.der_bytes()))
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "colex");
    name.push(DnType::CommonName, common_name);
    name
}

/// Returns a random positive serial number.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; SERIAL_BYTES];
    SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Random)?;
    // DER integers are signed and minimal. A clear top bit keeps the serial positive, as RFC
    // 5280 requires. A non-zero first byte keeps all 16 bytes, so the hex that revocation lists
    // use as key is the same before and after encoding.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}
