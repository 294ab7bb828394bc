//! Enrollment keys: how a CLI user's first connection learns to trust the cluster.
//!
//! A key is `cxe1.FINGERPRINT.SECRET`. FINGERPRINT is the SHA-256 of the authority's
//! certificate, which the CLI checks before it sends anything. SECRET proves the user got the
//! key from the controller's data folder or from an admin; the cluster keeps only its SHA-256.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

use super::{hex, sha256_hex, PkiError};

/// First part of every enrollment key, with the format's version.
pub const ENROLLMENT_KEY_PREFIX: &str = "cxe1";
/// Hex digits of a SHA-256 fingerprint.
const FINGERPRINT_HEX_LEN: usize = 64;
/// Random bytes in the secret: 128 bits, beyond guessing within a window of seconds.
const SECRET_BYTES: usize = 16;

/// An enrollment key. `Display` writes the whole key, secret included; `Debug` hides the
/// secret.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentKey {
    fingerprint: String,
    secret: String,
}

impl EnrollmentKey {
    /// Makes a new key for the authority with the given fingerprint.
    pub fn generate(fingerprint: &str) -> Result<EnrollmentKey, PkiError> {
        let mut secret = [0u8; SECRET_BYTES];
        SystemRandom::new().fill(&mut secret).map_err(|_| PkiError::Random)?;
        Ok(EnrollmentKey {
            fingerprint: fingerprint.to_owned(),
            secret: hex(&secret),
        })
    }

    /// Reads a key as `Display` wrote it. The error never contains the key.
    pub fn parse(text: &str) -> Result<EnrollmentKey, PkiError> {
        let bad = |problem| PkiError::BadEnrollmentKey { problem };
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, fingerprint, secret] = parts[..] else {
            return Err(bad("it needs three parts separated by dots"));
        };
        if prefix != ENROLLMENT_KEY_PREFIX {
            return Err(bad("it does not start with cxe1"));
        }
        if !super::token::is_lower_hex(fingerprint, FINGERPRINT_HEX_LEN) {
            return Err(bad("its fingerprint is not 64 hex digits"));
        }
        if !super::token::is_lower_hex(secret, SECRET_BYTES * 2) {
            return Err(bad("its secret is not 32 hex digits"));
        }
        Ok(EnrollmentKey {
            fingerprint: fingerprint.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// Returns the SHA-256 fingerprint of the authority, in lower-case hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Returns the secret, which the enrolling client sends to the controller.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Returns the SHA-256 of the secret in lower-case hex, which is what the cluster stores.
    pub fn secret_digest(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }
}

impl fmt::Display for EnrollmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ENROLLMENT_KEY_PREFIX}.{}.{}", self.fingerprint, self.secret)
    }
}

impl fmt::Debug for EnrollmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentKey")
            .field("fingerprint", &self.fingerprint)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Returns whether `secret` has the SHA-256 `stored_digest`, in time that does not depend on
/// where the two differ.
pub fn secret_matches_digest(secret: &str, stored_digest: &str) -> bool {
    let digest = sha256_hex(secret.as_bytes());
    digest.len() == stored_digest.len()
        && digest
            .bytes()
            .zip(stored_digest.bytes())
            .fold(0u8, |differences, (a, b)| differences | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn enrollment_key_round_trip_hides_secret() -> Result<(), PkiError> {
        let key = EnrollmentKey::generate(FINGERPRINT)?;
        let text = key.to_string();
        assert_eq!(EnrollmentKey::parse(&format!("{text}\n"))?, key);
        assert!(!format!("{key:?}").contains(key.secret()));
        assert!(secret_matches_digest(key.secret(), &key.secret_digest()));
        assert!(!secret_matches_digest("other", &key.secret_digest()));
        Ok(())
    }

    #[test]
    fn enrollment_key_parse_names_problem() {
        let secret = "ffffffffffffffffffffffffffffffff";
        for (text, phrase) in [
            ("cxe1.abc", "three parts"),
            (&*format!("cx1.{FINGERPRINT}.{secret}"), "start with cxe1"),
            (&*format!("cxe1.{}.{secret}", &FINGERPRINT[2..]), "fingerprint"),
            (&*format!("cxe1.{FINGERPRINT}.{}", &secret[2..]), "secret"),
        ] {
            let message = EnrollmentKey::parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(phrase), "{text}: {message}");
            assert!(!message.contains(&secret[4..]), "secret in {message}");
        }
    }
}
