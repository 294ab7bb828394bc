//! The cluster authority issues certificates whose role and identity read back, and keeps its
//! fingerprint across a save and load.

use std::time::Duration;

use colex_proto::pki::{certificate_request, CertificateAuthority, PeerIdentity, PkiError, Role};
use colex_proto::pki::Validity;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn der_of(pem: &str) -> Vec<u8> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("PEM certificate");
    parsed.contents
}

#[test]
fn issued_certificates_name_their_role_and_identity() -> Result<(), PkiError> {
    let authority = CertificateAuthority::create("lab")?;
    for role in Role::ALL {
        let issued = authority.issue(role, "node-1", Validity::from_now(DAY))?;
        assert!(issued.key_pem().is_some_and(|key| key.contains("PRIVATE KEY")));
        let peer = PeerIdentity::from_der(&der_of(&issued.cert_pem))?;
        assert_eq!((peer.role, peer.identity.as_str()), (role, "node-1"));
        assert_eq!(peer.serial, issued.serial, "serial of the {role} certificate");
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"), "Debug hides the key");
    }
    Ok(())
}

#[test]
fn requests_get_the_callers_names_not_their_own() -> Result<(), PkiError> {
    let authority = CertificateAuthority::create("lab")?;
    let (request, key) = certificate_request("host-a")?;
    assert!(key.contains("PRIVATE KEY"));
    let issued = authority.sign_request(&request, Role::Reader, "alice", Validity::from_now(DAY))?;
    assert!(issued.key_pem().is_none(), "the requester keeps its key");
    let peer = PeerIdentity::from_der(&der_of(&issued.cert_pem))?;
    assert_eq!((peer.role, peer.identity.as_str()), (Role::Reader, "alice"));
    Ok(())
}

#[test]
fn authority_load_keeps_fingerprint() -> Result<(), PkiError> {
    let authority = CertificateAuthority::create("lab")?;
    let loaded = CertificateAuthority::load(authority.cert_pem(), authority.key_pem())?;
    assert_eq!(loaded.fingerprint(), authority.fingerprint());
    assert_eq!(loaded.fingerprint().len(), 64);
    assert_ne!(CertificateAuthority::create("lab")?.fingerprint(), authority.fingerprint());
    loaded.issue(Role::Agent, "host-b", Validity::from_now(DAY))?;
    assert!(!format!("{loaded:?}").contains("PRIVATE KEY"), "Debug hides the key");
    Ok(())
}

fn message<T>(result: Result<T, PkiError>) -> String {
    result.err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn bad_input_is_named() -> Result<(), PkiError> {
    let authority = CertificateAuthority::create("lab")?;
    let bad_name = message(authority.issue(Role::Admin, "bob smith", Validity::from_now(DAY)));
    assert!(bad_name.contains("\"bob smith\""), "{bad_name}");
    let bad_request = message(authority.sign_request("not a request", Role::Agent, "a", Validity::from_now(DAY)));
    assert!(bad_request.contains("certificate request"), "{bad_request}");
    let bad_key = message(CertificateAuthority::load(authority.cert_pem(), "junk"));
    assert!(bad_key.contains("authority key"), "{bad_key}");
    let now = time::OffsetDateTime::now_utc();
    assert!(Validity::between(now, now).is_err(), "an empty validity is refused");
    Ok(())
}
