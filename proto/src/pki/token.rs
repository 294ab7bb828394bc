//! Join tokens: how a new agent or controller learns to trust the cluster, and how the cluster
//! learns to trust it.
//!
//! A token is `cx1.FINGERPRINT.ID.SECRET`. FINGERPRINT is the SHA-256 of the authority's
//! certificate, so the newcomer can verify the first certificate it receives before it sends
//! the secret. ID names the token in `tokens list` and `tokens revoke`. SECRET proves the newcomer
//! got the token from an admin; the cluster keeps only its SHA-256.

use std::fmt;

use ring::rand::{SecureRandom, SystemRandom};

use super::{hex, sha256_hex, PkiError};

/// First part of every token, with the format's version.
pub const TOKEN_PREFIX: &str = "cx1";
/// Hex digits of a SHA-256 fingerprint.
const FINGERPRINT_HEX_LEN: usize = 64;
/// Random bytes in a token id: enough to tell a cluster's tokens apart, short enough to type.
const ID_BYTES: usize = 4;
/// Random bytes in a token secret: 128 bits, beyond guessing.
const SECRET_BYTES: usize = 16;

/// A join token. Its `Display` output is the whole token, secret included, for printing once
/// to the admin who made it; its `Debug` output hides the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    fingerprint: String,
    id: String,
    secret: String,
}

impl JoinToken {
    /// Makes a new token for the authority with the given fingerprint.
    pub fn generate(fingerprint: &str) -> Result<JoinToken, PkiError> {
        let random = SystemRandom::new();
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        random.fill(&mut id).map_err(|_| PkiError::Random)?;
        random.fill(&mut secret).map_err(|_| PkiError::Random)?;
        Ok(JoinToken {
            fingerprint: fingerprint.to_owned(),
            id: hex(&id),
            secret: hex(&secret),
        })
    }

    /// Reads a token as [`JoinToken`]'s `Display` wrote it. The error shows only the token's
    /// id, never its secret.
    pub fn parse(text: &str) -> Result<JoinToken, PkiError> {
        let text = text.trim();
        let parts: Vec<&str> = text.split('.').collect();
        let shown = match parts.get(2) {
            Some(id) => format!("with id {id}"),
            None => "given".to_owned(),
        };
        let bad = |problem| PkiError::BadToken {
            shown: shown.clone(),
            problem,
        };
        let [prefix, fingerprint, id, secret] = parts[..] else {
            return Err(bad("it needs four parts separated by dots"));
        };
        if prefix != TOKEN_PREFIX {
            return Err(bad("it does not start with cx1"));
        }
        if !is_lower_hex(fingerprint, FINGERPRINT_HEX_LEN) {
            return Err(bad("its fingerprint is not 64 hex digits"));
        }
        if !is_lower_hex(id, ID_BYTES * 2) {
            return Err(bad("its id is not 8 hex digits"));
        }
        if !is_lower_hex(secret, SECRET_BYTES * 2) {
            return Err(bad("its secret is not 32 hex digits"));
        }
        Ok(JoinToken {
            fingerprint: fingerprint.to_owned(),
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// Returns the SHA-256 fingerprint of the token's authority, in lower-case hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Returns the token's public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Returns the secret, which the joining agent or controller sends to the cluster.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Returns the SHA-256 of the secret in lower-case hex, which is what the cluster stores.
    pub fn secret_digest(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }

    /// Returns whether this token's secret has the stored digest, in time that does not depend
    /// on where the two differ.
    pub fn matches_digest(&self, stored_digest: &str) -> bool {
        let digest = self.secret_digest();
        digest.len() == stored_digest.len()
            && digest
                .bytes()
                .zip(stored_digest.bytes())
                .fold(0u8, |differences, (a, b)| differences | (a ^ b))
                == 0
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.{}.{}", self.fingerprint, self.id, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("fingerprint", &self.fingerprint)
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

pub(crate) fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn token_round_trip_hides_secret() -> Result<(), PkiError> {
        let token = JoinToken::generate(FINGERPRINT)?;
        let text = token.to_string();
        assert_eq!(JoinToken::parse(&format!("  {text}\n"))?, token);
        assert_eq!(token.fingerprint(), FINGERPRINT);
        assert!(!format!("{token:?}").contains(&token.secret));
        assert!(token.matches_digest(&token.secret_digest()));
        assert!(!token.matches_digest(&JoinToken::generate(FINGERPRINT)?.secret_digest()));
        Ok(())
    }

    #[test]
    fn token_parse_malformed_names_problem() {
        let secret = "ffffffffffffffffffffffffffffffff";
        let cases = [
            ("cx1.abc", "four parts"),
            (&*format!("cx2.{FINGERPRINT}.0011aabb.{secret}"), "start with cx1"),
            (&*format!("cx1.{}.0011aabb.{secret}", &FINGERPRINT[1..]), "fingerprint"),
            (&*format!("cx1.{FINGERPRINT}.0011AABB.{secret}"), "its id"),
            (&*format!("cx1.{FINGERPRINT}.0011aabb.{}", &secret[2..]), "its secret"),
        ];
        for (text, phrase) in cases {
            let message = JoinToken::parse(text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(phrase), "{text}: {message}");
            assert!(message.contains("colex-cli tokens create"), "{message}");
            assert!(!message.contains(&secret[4..]), "secret in {message}");
        }
    }
}
