//! Roles and identities as certificates carry them.

use std::fmt;
use std::str::FromStr;

use super::{PkiError, IDENTITY_URI_SCHEME};

/// Maximum identity length in bytes, the kernel's limit on a host name, so every host name
/// fits.
pub const MAX_IDENTITY_BYTES: usize = 64;

/// Role of a certificate's holder, which sets what it may do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A controller: serves clients and agents, and talks Raft with the other controllers.
    Controller,
    /// An agent: keeps one session with the controllers for its host.
    Agent,
    /// A CLI user who may do everything.
    Admin,
    /// A CLI user who may list, inspect and read logs, and change nothing.
    Reader,
}

impl Role {
    /// Every role, in the order tables list them.
    pub const ALL: [Role; 4] = [Role::Controller, Role::Agent, Role::Admin, Role::Reader];

    /// Returns the lower-case name used in certificates, flags and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Reader => "reader",
        }
    }

    /// Returns whether the role may change the cluster's state through the client API.
    pub fn may_write(self) -> bool {
        matches!(self, Role::Admin | Role::Controller)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(text: &str) -> Result<Role, PkiError> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| PkiError::UnknownRole(text.to_owned()))
    }
}

/// Checks that `identity` can stand in a certificate's identity URI unescaped.
pub(crate) fn check_identity(identity: &str) -> Result<(), PkiError> {
    let bad = |problem| PkiError::BadIdentity {
        identity: identity.to_owned(),
        problem,
    };
    if identity.is_empty() {
        return Err(bad("is empty"));
    }
    if identity.len() > MAX_IDENTITY_BYTES {
        return Err(bad("is longer than 64 bytes"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !identity.chars().all(allowed) {
        return Err(bad("has a character other than letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Returns the URI that names `role` and `identity` in a certificate.
pub(crate) fn identity_uri(role: Role, identity: &str) -> String {
    format!("{IDENTITY_URI_SCHEME}{role}/{identity}")
}

/// Reads a role and identity back from a certificate's identity URI; `None` for any other URI.
pub(crate) fn parse_identity_uri(uri: &str) -> Option<(Role, String)> {
    let rest = uri.strip_prefix(IDENTITY_URI_SCHEME)?;
    let (role, identity) = rest.split_once('/')?;
    let role = role.parse().ok()?;
    check_identity(identity).ok()?;
    Some((role, identity.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().ok(), Some(role));
        }
        let error = "root".parse::<Role>().err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("role \"root\" is not one of controller, agent, admin or reader"));
    }

    #[test]
    fn identity_uris_round_trip_and_reject_strangers() {
        let uri = identity_uri(Role::Agent, "host-a.lab");
        assert_eq!(uri, "colex://agent/host-a.lab");
        assert_eq!(parse_identity_uri(&uri), Some((Role::Agent, "host-a.lab".to_owned())));
        assert_eq!(parse_identity_uri("https://agent/host-a"), None);
        assert_eq!(parse_identity_uri("colex://root/host-a"), None);
        assert_eq!(parse_identity_uri("colex://agent/a/b"), None);
    }

    #[test]
    fn identities_are_checked() {
        assert!(check_identity("ops_1").is_ok());
        assert!(check_identity("").is_err());
        assert!(check_identity(&"a".repeat(65)).is_err());
        let error = check_identity("a b").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("\"a b\""), "{error}");
        assert!(error.contains("use 1 to 64"), "{error}");
    }
}
