//! Trust on first use, checked: fetches the cluster authority's certificate from a controller
//! and accepts it only if its SHA-256 is the fingerprint a join token or enrollment key
//! carries, and the authority signed the controller's certificate.
//!
//! The fetch is one TLS handshake that sends no client certificate and no data. The caller
//! then opens its real connection trusting only the returned authority.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{sha256_hex, PkiError, SERVER_NAME};

/// Checks the server's chain against the pinned fingerprint and keeps the matching
/// authority certificate.
#[derive(Debug)]
struct FingerprintVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
    authority: Mutex<Option<CertificateDer<'static>>>,
}

impl FingerprintVerifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<CertificateDer<'static>>> {
        self.authority.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Controllers send the authority's certificate after their own.
        let authority = intermediates
            .iter()
            .find(|certificate| sha256_hex(certificate.as_ref()) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the controller's certificate chain has no authority with fingerprint {}",
                    self.fingerprint
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots
            .add(authority.clone().into_owned())
            .map_err(|error| rustls::Error::General(format!("the pinned authority certificate is invalid: {error}")))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&self.provider))
            .build()
            .map_err(|error| rustls::Error::General(error.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self.lock() = Some(authority.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects to the controller at `address` (HOST:PORT) and returns the authority's
/// certificate in PEM once its SHA-256 is `fingerprint` and it signed the controller's
/// certificate for [`SERVER_NAME`]. Nothing but a TLS client hello is sent before the check.
pub async fn fetch_pinned_authority(address: &str, fingerprint: &str, timeout: Duration) -> Result<String, PkiError> {
    let pin_error = |problem: String| PkiError::Pin {
        address: address.to_owned(),
        problem,
    };
    // rustls 0.23.48 deprecates the ring provider for lacking post-quantum key exchange; tonic
    // 0.14's `tls-ring` feature uses the same provider, and ring needs no C build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(FingerprintVerifier {
        fingerprint: fingerprint.to_owned(),
        provider: Arc::clone(&provider),
        authority: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| pin_error(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(SERVER_NAME).map_err(|error| pin_error(error.to_string()))?;

    let handshake = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| pin_error(format!("cannot connect: {error}")))?;
        connector
            .connect(server_name, stream)
            .await
            .map_err(|error| pin_error(format!("TLS handshake failed: {error}")))
    };
    let stream = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| pin_error(format!("no TLS handshake within {} s", timeout.as_secs())))??;
    drop(stream);

    let authority = verifier
        .lock()
        .take()
        .ok_or_else(|| pin_error("the handshake ended without a verified authority".to_owned()))?;
    Ok(der_to_pem(authority.as_ref()))
}

/// Encodes a certificate in DER as PEM, with Unix line endings as rcgen writes them.
pub fn der_to_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der.to_vec()), config)
}
