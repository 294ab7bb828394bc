//! The controller's TLS listener.
//!
//! The handshake requests a certificate from every client but accepts any, or none, as long as
//! the client proves that it has the certificate's private key. The authorization layer
//! ([`crate::auth`]) checks the chain against the cluster authority on every call. So a client
//! with a foreign, expired or revoked certificate gets a gRPC status that names the cause. A
//! rejected handshake would give it only a TLS alert, which clients report as a bare transport
//! error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::raft::link::LinkServer;
use crate::tls::Credentials;

/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";

/// Errors of setting up the listener.
#[derive(Debug, thiserror::Error)]
pub enum TlsServerError {
    #[error("cannot read the {what} from its PEM file: {source}")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("invalid TLS settings: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot use the authority certificate as a trust anchor: {0}")]
    Verifier(String),
}

/// Returns the ring provider, the one tonic 0.14's `tls-ring` feature uses.
pub fn provider() -> Arc<CryptoProvider> {
    // rustls 0.23.48 deprecates it for lacking post-quantum key exchange; ring needs no C build.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any client certificate in the handshake; see the module documentation.
#[derive(Debug)]
struct DeferredClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for DeferredClientCert {
    fn client_auth_mandatory(&self) -> bool {
        // Enrolling users and joining hosts have no certificate yet.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// Checks client certificate chains against the cluster authority, and remembers chains that
/// passed for [`VERIFIED_CACHE_TTL`], so that the Raft heartbeats and agent messages of one
/// peer do not each cost a signature check. Expiry and revocation are checked on every call
/// all the same, by [`crate::auth::authorize`].
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// SHA-256 of a verified leaf certificate, to when it was verified.
    verified: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Time a verified chain is not verified again.
const VERIFIED_CACHE_TTL: Duration = Duration::from_secs(60);
/// Verified chains remembered at most; the cache is emptied when it is full.
const VERIFIED_CACHE_MAX_ENTRIES: usize = 4096;

impl ChainVerifier {
    /// Trusts the authority certificate `authority_pem`.
    pub fn new(authority_pem: &str) -> Result<ChainVerifier, TlsServerError> {
        let authority = CertificateDer::from_pem_slice(authority_pem.as_bytes()).map_err(|source| TlsServerError::Pem {
            what: "authority certificate",
            source,
        })?;
        let mut roots = RootCertStore::empty();
        roots.add(authority)?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|error| TlsServerError::Verifier(error.to_string()))?;
        Ok(ChainVerifier {
            inner,
            verified: Arc::default(),
        })
    }

    /// Checks `chain` (leaf first) and returns why it is not acceptable, in words for the
    /// client.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("the connection has no client certificate".to_owned());
        };
        // Only the leaf is hashed: the authority signs leaves directly, so a chain differs from
        // another one by its leaf.
        let digest = colex_proto::pki::sha256_hex(leaf.as_ref());
        let now = Instant::now();
        let cached = self
            .lock_verified()
            .get(&digest)
            .is_some_and(|at| now.duration_since(*at) < VERIFIED_CACHE_TTL);
        if cached {
            return Ok(());
        }
        match self.inner.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            Ok(_) => {
                let mut verified = self.lock_verified();
                if verified.len() >= VERIFIED_CACHE_MAX_ENTRIES {
                    verified.clear();
                }
                verified.insert(digest, now);
                Ok(())
            }
            Err(rustls::Error::InvalidCertificate(error)) => Err(describe(&error)),
            Err(error) => Err(format!("the client certificate is invalid: {error}")),
        }
    }
}

impl ChainVerifier {
    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.verified.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn describe(error: &CertificateError) -> String {
    match error {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("the client certificate has expired ({error})")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            format!("the client certificate is not valid yet ({error}); check the clocks")
        }
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            format!("the client certificate was not issued by this cluster's authority ({error})")
        }
        _ => format!("the client certificate is invalid ({error})"),
    }
}

/// Returns the TLS settings of the listener: the controller's certificate followed by the
/// authority's, so a joining client can check the authority's fingerprint.
pub fn acceptor(credentials: &Credentials) -> Result<TlsAcceptor, TlsServerError> {
    let pem_error = |what| move |source| TlsServerError::Pem { what, source };
    let mut chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(credentials.cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(pem_error("controller certificate"))?;
    chain.push(
        CertificateDer::from_pem_slice(credentials.authority_pem.as_bytes()).map_err(pem_error("authority certificate"))?,
    );
    let key = PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes()).map_err(pem_error("controller key"))?;
    let provider = provider();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(DeferredClientCert { provider }))
        .with_single_cert(chain, key)?;
    // gRPC clients offer h2 and links offer only theirs, so each gets what it offered.
    config.alpn_protocols = vec![ALPN_H2.to_vec(), crate::raft::link::ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections on `listener`, serves the AppendEntries links among them with `links`,
/// and yields the others whose TLS handshake succeeded. Each handshake runs on a task of its
/// own, so a slow client delays no other.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    links: LinkServer,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(crate::raft::link::ACCEPTED_QUEUE_LEN);
    tokio::spawn(async move {
        loop {
            let (stream, remote) = crate::raft::link::accept(&listener).await;
            let acceptor = acceptor.clone();
            let queue = sender.clone();
            let links = links.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) if tls.get_ref().1.alpn_protocol() == Some(crate::raft::link::ALPN) => {
                        links.serve_tls(tls, remote).await;
                    }
                    Ok(Ok(tls)) => {
                        // The server has stopped when the receiver is gone.
                        let _ = queue.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::warn!(%error, %remote, "TLS handshake failed"),
                    Err(_) => tracing::warn!(%remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out"),
                }
            });
            if sender.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}
