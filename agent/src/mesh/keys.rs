//! The host's WireGuard key pair. The private key is generated on the host, kept in a file of
//! the agent's state dir, and never leaves the host: only the public key is published.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use boringtun::x25519;
use tracing::info;
use zeroize::{Zeroize, Zeroizing};

/// Name of the private key file in the agent's state dir. It contains the key as `wg genkey` writes
/// it: one line of base64, so `wg pubkey < FILE` prints the host's public key.
pub const PRIVATE_KEY_FILE_NAME: &str = "mesh-private-key";

/// Mode of the private key file: read and write for its owner only.
const PRIVATE_KEY_FILE_MODE: u32 = 0o600;

/// Length of an x25519 key in bytes.
const KEY_BYTES: usize = 32;

/// Errors of loading or creating the host key pair.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("failed to read the mesh private key file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "invalid mesh private key in {path}: expected one line with a base64-encoded 32-byte \
         key as `wg genkey` writes; delete the file to generate a new key pair, then the other \
         hosts learn the new public key from the controller"
    )]
    Invalid { path: PathBuf },
    #[error(
        "mesh private key file {path} has mode {mode:o} and is readable by other users; run \
         `chmod 600 {path}` if the key was not exposed, or delete the file to generate a new key \
         pair"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("failed to write the mesh private key file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// A WireGuard public key. Its text form is base64, as in `wg` and WireGuard config files.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; KEY_BYTES]);

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    pub(crate) fn to_wireguard(self) -> wireguard_control::Key {
        wireguard_control::Key(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&wireguard_control::Key(self.0).to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Error of parsing a public key that is not base64 of 32 bytes.
#[derive(Debug, thiserror::Error)]
#[error("invalid WireGuard public key {text:?}: expected 32 bytes in base64 (44 characters)")]
pub struct InvalidPublicKey {
    text: String,
}

impl FromStr for PublicKey {
    type Err = InvalidPublicKey;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        wireguard_control::Key::from_base64(text)
            .map(|key| PublicKey(key.0))
            .map_err(|_| InvalidPublicKey {
                text: text.to_string(),
            })
    }
}

/// The host's key pair. The private key is wiped from memory on drop and is left out of `Debug`.
pub struct HostKey {
    private: x25519::StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for HostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl HostKey {
    /// Loads the key pair from `PRIVATE_KEY_FILE_NAME` in `state_dir`, or generates one and
    /// writes that file first when it does not exist.
    pub fn load_or_generate(state_dir: &Path) -> Result<HostKey, KeyError> {
        let path = state_dir.join(PRIVATE_KEY_FILE_NAME);
        match File::open(&path) {
            Ok(file) => {
                let key = HostKey::read(file, &path)?;
                info!(public_key = %key.public, path = %path.display(), "loaded the mesh key pair");
                Ok(key)
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let key = HostKey::generate();
                key.write(&path)?;
                info!(public_key = %key.public, path = %path.display(), "generated a mesh key pair");
                Ok(key)
            }
            Err(source) => Err(KeyError::Read { path, source }),
        }
    }

    /// Generates a key pair from the operating system's random source.
    pub fn generate() -> HostKey {
        let mut generated = wireguard_control::Key::generate_private();
        let key = HostKey::from_private_bytes(generated.0);
        generated.0.zeroize();
        key
    }

    fn from_private_bytes(bytes: [u8; KEY_BYTES]) -> HostKey {
        let private = x25519::StaticSecret::from(bytes);
        let public = PublicKey(x25519::PublicKey::from(&private).to_bytes());
        HostKey { private, public }
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Returns a copy of the private key for a device update. The copy is not wiped on drop,
    /// so callers drop it right after the update.
    pub(crate) fn to_wireguard_private(&self) -> wireguard_control::Key {
        wireguard_control::Key(self.private.to_bytes())
    }

    fn read(mut file: File, path: &Path) -> Result<HostKey, KeyError> {
        let read_error = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o777;
        if mode & !PRIVATE_KEY_FILE_MODE != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }

        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text)
            .map_err(|err| match err.kind() {
                // Bytes that are not UTF-8 are a corrupted key, not an I/O failure.
                io::ErrorKind::InvalidData => KeyError::Invalid {
                    path: path.to_path_buf(),
                },
                _ => read_error(err),
            })?;
        let mut decoded =
            wireguard_control::Key::from_base64(text.trim()).map_err(|_| KeyError::Invalid {
                path: path.to_path_buf(),
            })?;
        let key = HostKey::from_private_bytes(decoded.0);
        decoded.0.zeroize();
        Ok(key)
    }

    /// Writes the private key to `path` with mode 0600 through a synced temp file and a rename,
    /// so a crash leaves either no key file or a whole one.
    fn write(&self, path: &Path) -> Result<(), KeyError> {
        let write_error = |source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut temp_name = path.as_os_str().to_owned();
        temp_name.push(".tmp");
        let temp = PathBuf::from(temp_name);

        // A temp file left by a crash is removed first, because `create_new` keeps an existing
        // file's mode, and the mode must be set when the file is created.
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(write_error(source)),
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_KEY_FILE_MODE)
            .open(&temp)
            .map_err(write_error)?;
        let text = Zeroizing::new(format!("{}\n", self.to_wireguard_private().to_base64()));
        file.write_all(text.as_bytes()).map_err(write_error)?;
        file.sync_all().map_err(write_error)?;
        drop(file);

        fs::rename(&temp, path).map_err(write_error)?;
        // The rename is durable only once the directory entry is synced.
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(write_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base64 of 32 bytes of 0x01, a valid private key text.
    const ONES_KEY_BASE64: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

    fn state_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("colex-mesh-keys")
            .tempdir()
            .expect("create temp dir")
    }

    #[test]
    fn key_file_is_private_and_reloaded() {
        let dir = state_dir();
        let first = HostKey::load_or_generate(dir.path()).expect("generate");
        let path = dir.path().join(PRIVATE_KEY_FILE_NAME);

        let mode = fs::metadata(&path)
            .expect("stat key file")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "key file mode");
        let second = HostKey::load_or_generate(dir.path()).expect("load");
        assert_eq!(
            first.public_key(),
            second.public_key(),
            "same key after reload"
        );
        assert!(
            !dir.path()
                .join(format!("{PRIVATE_KEY_FILE_NAME}.tmp"))
                .exists(),
            "no temp file is left"
        );
    }

    #[test]
    fn key_file_is_wg_genkey_format() {
        let dir = state_dir();
        let path = dir.path().join(PRIVATE_KEY_FILE_NAME);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("create key file");
        writeln!(file, "{ONES_KEY_BASE64}").expect("write key file");

        let key = HostKey::load_or_generate(dir.path()).expect("load");
        assert_eq!(
            key.to_wireguard_private().0,
            [1u8; KEY_BYTES],
            "private key bytes"
        );
        let text = fs::read_to_string(&path).expect("read key file");
        assert_eq!(
            text,
            format!("{ONES_KEY_BASE64}\n"),
            "the file is left unchanged"
        );
    }

    #[test]
    fn corrupted_key_file_names_file_and_fix() {
        let dir = state_dir();
        let path = dir.path().join(PRIVATE_KEY_FILE_NAME);
        for content in [&b"not base64\n"[..], b"AQID\n", b"\xff\xfe\n", b""] {
            fs::write(&path, content).expect("write key file");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");

            let err = HostKey::load_or_generate(dir.path()).expect_err("corrupted key");
            let message = err.to_string();
            assert!(matches!(err, KeyError::Invalid { .. }), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("delete the file"), "{message}");
            assert!(!message.contains('\n'), "one line: {message}");
        }
    }

    #[test]
    fn key_file_readable_by_others_is_rejected() {
        let dir = state_dir();
        HostKey::load_or_generate(dir.path()).expect("generate");
        let path = dir.path().join(PRIVATE_KEY_FILE_NAME);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");

        let err = HostKey::load_or_generate(dir.path()).expect_err("mode 0644");
        assert!(
            matches!(err, KeyError::TooOpen { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn debug_output_omits_private_key() {
        let key = HostKey::from_private_bytes([1u8; KEY_BYTES]);
        let debug = format!("{key:?}");
        assert!(!debug.contains(ONES_KEY_BASE64), "{debug}");
        assert!(debug.contains(&key.public_key().to_string()), "{debug}");
    }

    #[test]
    fn public_key_text_round_trips() {
        let key = HostKey::generate().public_key();
        let text = key.to_string();
        assert_eq!(text.len(), 44, "base64 of 32 bytes");
        assert_eq!(text.parse::<PublicKey>().expect("parse"), key);
        assert!("AQID".parse::<PublicKey>().is_err(), "3 bytes is not a key");
    }
}
