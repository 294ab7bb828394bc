//! The controller's own certificate files and the TLS settings of its server and of its
//! connections to other controllers.
//!
//! The files live in the data folder: `controller.crt`, `controller.key` (mode 0600) and
//! `authority.crt`. A restarted controller reuses them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use colex_proto::pki::SERVER_NAME;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// File names in the data folder.
pub const CERT_FILE: &str = "controller.crt";
pub const KEY_FILE: &str = "controller.key";
pub const AUTHORITY_FILE: &str = "authority.crt";
/// File the current enrollment key is written to, mode 0600.
pub const ENROLLMENT_KEY_FILE: &str = "enrollment.key";
/// Time another controller gets to finish the TLS handshake, so a frozen one delays a Raft
/// RPC or a forwarded request by no more than this.
const PEER_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Permissions of every file that contains a private key or a secret: owner read and write.
pub const SECRET_FILE_MODE: u32 = 0o600;

/// Errors of reading or writing the certificate files.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// This controller's certificate and key and the cluster authority's certificate, in PEM.
#[derive(Clone)]
pub struct Credentials {
    pub cert_pem: String,
    pub key_pem: String,
    pub authority_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the files from `data_dir`; `None` when the certificate file does not exist.
    pub fn load(data_dir: &Path) -> Result<Option<Credentials>, TlsFileError> {
        let cert_path = data_dir.join(CERT_FILE);
        if !cert_path.exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let path = data_dir.join(name);
            fs::read_to_string(&path).map_err(|source| TlsFileError::Read { path, source })
        };
        Ok(Some(Credentials {
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
            authority_pem: read(AUTHORITY_FILE)?,
        }))
    }

    /// Writes the files into `data_dir`, the key with mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), TlsFileError> {
        write_secret_file(&data_dir.join(KEY_FILE), &self.key_pem)?;
        write_public_file(&data_dir.join(AUTHORITY_FILE), &self.authority_pem)?;
        // The certificate last: its presence marks the set complete for `load`.
        write_public_file(&data_dir.join(CERT_FILE), &self.cert_pem)
    }

    /// Returns the client settings for connections to other controllers.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .domain_name(SERVER_NAME)
            .timeout(PEER_HANDSHAKE_TIMEOUT)
            .ca_certificate(Certificate::from_pem(&self.authority_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// Writes `contents` to `path` readable by its owner only.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), TlsFileError> {
    write_with_mode(path, contents, SECRET_FILE_MODE)
}

fn write_public_file(path: &Path, contents: &str) -> Result<(), TlsFileError> {
    write_with_mode(path, contents, 0o644)
}

fn write_with_mode(path: &Path, contents: &str, mode: u32) -> Result<(), TlsFileError> {
    let error = |source| TlsFileError::Write {
        path: path.to_owned(),
        source,
    };
    // Removed first so an existing file with wider permissions is not reused.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(source) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(error(source)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)
}

/// TLS settings of connections to other controllers: `Some` once this controller has its
/// certificate, never set with `--insecure`.
static PEER_TLS: OnceLock<ClientTlsConfig> = OnceLock::new();

/// TLS settings of AppendEntries links to other controllers (see [`crate::raft::link`]).
/// Set with [`PEER_TLS`], unless the certificate files cannot be parsed for them.
static PEER_LINK_TLS: OnceLock<tokio_rustls::TlsConnector> = OnceLock::new();

/// Makes every later connection to another controller use mutual TLS with `credentials`.
pub fn use_peer_tls(credentials: &Credentials) {
    // A second call keeps the first settings; the controller sets them once at start.
    let _ = PEER_TLS.set(credentials.client_config());
    match link_connector(credentials) {
        Ok(connector) => {
            let _ = PEER_LINK_TLS.set(connector);
        }
        Err(error) => {
            tracing::warn!(%error, "cannot set up TLS for AppendEntries links; they go on the gRPC stream")
        }
    }
}

/// Returns the client settings of AppendEntries links: the same certificates as
/// [`Credentials::client_config`], with the link's ALPN protocol.
pub(crate) fn link_connector(credentials: &Credentials) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let authority = CertificateDer::from_pem_slice(credentials.authority_pem.as_bytes())
        .map_err(|error| format!("authority certificate: {error}"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(authority).map_err(|error| format!("authority certificate: {error}"))?;
    let chain = CertificateDer::pem_slice_iter(credentials.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("controller certificate: {error}"))?;
    let key = PrivateKeyDer::from_pem_slice(credentials.key_pem.as_bytes())
        .map_err(|error| format!("controller key: {error}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls_server::provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|error| error.to_string())?;
    config.alpn_protocols = vec![crate::raft::link::ALPN.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
}

/// Returns the TLS settings of AppendEntries links when connections to other controllers use
/// TLS, and whether they do; `(true, None)` means the link cannot be used.
pub fn peer_link_tls() -> (bool, Option<&'static tokio_rustls::TlsConnector>) {
    (PEER_TLS.get().is_some(), PEER_LINK_TLS.get())
}

/// Time another controller gets to finish the TLS handshake of an AppendEntries link.
pub const LINK_HANDSHAKE_TIMEOUT: std::time::Duration = PEER_HANDSHAKE_TIMEOUT;

/// Returns the name every controller's certificate carries, checked on links as on gRPC calls.
pub fn peer_server_name() -> Result<rustls::pki_types::ServerName<'static>, String> {
    rustls::pki_types::ServerName::try_from(SERVER_NAME).map_err(|error| format!("server name {SERVER_NAME}: {error}"))
}

/// Returns an endpoint for the controller at `addr` (HOST:PORT, or a URI): `https` with this
/// controller's certificate after [`use_peer_tls`], plain `http` otherwise.
pub fn peer_endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let host_port = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    match PEER_TLS.get() {
        Some(tls) => Endpoint::from_shared(format!("https://{host_port}"))?.tls_config(tls.clone()),
        None => Endpoint::from_shared(format!("http://{host_port}")),
    }
}
