//! The user's certificate files: `authority.crt`, `user.crt` and `user.key` in
//! `~/.config/colex/` or `COLEX_CONFIG_DIR`, the folder mode 0700 and the files 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use colex_proto::pki::SERVER_NAME;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::client::{CliError, Transport};

const AUTHORITY_FILE: &str = "authority.crt";
const CERT_FILE: &str = "user.crt";
const KEY_FILE: &str = "user.key";
/// Time a controller gets to finish the TLS handshake. A frozen controller completes the TCP
/// handshake in the kernel and never this one, so the CLI moves on to the next address.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Permissions of the folder: owner only.
const DIR_MODE: u32 = 0o700;
/// Permissions of every file: owner read and write only.
const FILE_MODE: u32 = 0o600;

/// Returns the folder of the certificate files: `override_dir` (`--config-dir` or
/// `COLEX_CONFIG_DIR`), else `$HOME/.config/colex`.
pub fn config_dir(override_dir: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(dir) = override_dir {
        return Ok(dir.to_owned());
    }
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .ok_or_else(|| CliError::user("HOME is not set; set COLEX_CONFIG_DIR to the folder of colex-cli's certificate files"))?;
    Ok(PathBuf::from(home).join(".config").join("colex"))
}

/// Returns the connection settings from the files in `dir`: with the user's certificate when
/// enrolled, else without one, so every command fails with a message to enroll.
pub fn load_transport(dir: &Path) -> Result<Transport, CliError> {
    let config_dir = dir.display().to_string();
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path)
            .map_err(|error| CliError::user(format!("cannot read {}: {error}; enroll again with `colex-cli enroll`", path.display())))
    };
    if !dir.join(CERT_FILE).exists() {
        // With the authority but no certificate, the CLI verifies the controller, which then
        // rejects the call for lack of a certificate. Without the authority no server is trusted.
        let mut tls = ClientTlsConfig::new().domain_name(SERVER_NAME).timeout(HANDSHAKE_TIMEOUT);
        if dir.join(AUTHORITY_FILE).exists() {
            tls = tls.ca_certificate(Certificate::from_pem(read(AUTHORITY_FILE)?));
        }
        return Ok(Transport {
            tls,
            enrolled: false,
            config_dir,
        });
    }
    let tls = ClientTlsConfig::new()
        .domain_name(SERVER_NAME)
        .timeout(HANDSHAKE_TIMEOUT)
        .ca_certificate(Certificate::from_pem(read(AUTHORITY_FILE)?))
        .identity(Identity::from_pem(read(CERT_FILE)?, read(KEY_FILE)?));
    Ok(Transport {
        tls,
        enrolled: true,
        config_dir,
    })
}

/// Stores the files of a new enrollment in `dir`, replacing earlier ones.
pub fn save(dir: &Path, authority_pem: &str, cert_pem: &str, key_pem: &str) -> Result<(), CliError> {
    let failed = |path: &Path, error: std::io::Error| CliError::user(format!("cannot write {}: {error}", path.display()));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|error| failed(dir, error))?;
    // An existing folder keeps its mode otherwise.
    fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(|error| failed(dir, error))?;
    for (name, contents) in [(KEY_FILE, key_pem), (AUTHORITY_FILE, authority_pem), (CERT_FILE, cert_pem)] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(failed(&path, error)),
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(|error| failed(&path, error))?;
        file.write_all(contents.as_bytes()).map_err(|error| failed(&path, error))?;
    }
    Ok(())
}
