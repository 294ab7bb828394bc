//! Names of the kernel objects and files that belong to one silo or one host.
//!
//! Every name is derived from the silo id or the host name alone, so an agent that restarts can
//! find and remove what an earlier run left behind.

/// Length of a silo id: 8 lowercase hex characters, unique in the cluster.
pub const SILO_ID_LEN: usize = 8;

/// Maximum length of a network interface name in bytes (`IFNAMSIZ` minus the NUL byte).
pub const MAX_IFNAME_BYTES: usize = 15;

/// Maximum length of a host name, which becomes part of a cgroup directory name.
pub const MAX_HOST_NAME_BYTES: usize = 64;

/// Prefix of every veth created for a silo.
pub const VETH_PREFIX: &str = "cx";

/// Name of the silo's interface inside its network namespace.
pub const SILO_IFNAME: &str = "eth0";

/// Prefix of the per-host cgroup directory under the cgroup2 mount.
pub const HOST_CGROUP_PREFIX: &str = "colex-";

/// Errors of name validation.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("invalid silo id {id:?}: expected {SILO_ID_LEN} lowercase hex characters")]
    InvalidSiloId { id: String },
    #[error(
        "invalid host name {name:?}: expected 1 to {MAX_HOST_NAME_BYTES} ASCII letters, digits, \
         '-', '_' or '.', not starting with '.'"
    )]
    InvalidHostName { name: String },
    #[error(
        "invalid interface name {name:?}: expected 1 to {MAX_IFNAME_BYTES} bytes without '/', \
         ':', whitespace or NUL"
    )]
    InvalidLinkName { name: String },
}

/// Checks that `id` is 8 lowercase hex characters, the only form the controller hands out.
pub fn validate_silo_id(id: &str) -> Result<(), NameError> {
    let valid = id.len() == SILO_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid {
        Ok(())
    } else {
        Err(NameError::InvalidSiloId { id: id.to_string() })
    }
}

/// Checks that a host name is usable as part of a directory name.
pub fn validate_host_name(name: &str) -> Result<(), NameError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_HOST_NAME_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(NameError::InvalidHostName {
            name: name.to_string(),
        })
    }
}

/// Checks that `name` is accepted by the kernel as an interface name.
pub fn validate_link_name(name: &str) -> Result<(), NameError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME_BYTES
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(NameError::InvalidLinkName {
            name: name.to_string(),
        })
    }
}

/// Returns the host-side veth name of a silo, `cx<id>` (10 bytes).
pub fn host_veth_name(silo_id: &str) -> String {
    format!("{VETH_PREFIX}{silo_id}")
}

/// Returns the name the silo-side veth had when earlier agents created it outside the silo,
/// `cx<id>p` (11 bytes), so a restart can delete a leftover link of that name. The runtime now
/// creates that end as [`SILO_IFNAME`] inside the silo's namespace.
pub fn peer_veth_name(silo_id: &str) -> String {
    format!("{VETH_PREFIX}{silo_id}p")
}

/// Returns the name of the cgroup directory that contains all silos of one host.
pub fn host_cgroup_name(host_name: &str) -> String {
    format!("{HOST_CGROUP_PREFIX}{host_name}")
}

/// Returns the iptables comment that marks the MASQUERADE rule of one silo.
pub fn masquerade_comment(silo_id: &str) -> String {
    format!("colex silo {silo_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silo_id_accepts_lowercase_hex() {
        assert!(validate_silo_id("3938a44e").is_ok());
        assert!(validate_silo_id("00000000").is_ok());
    }

    #[test]
    fn silo_id_rejects_other_forms() {
        for id in [
            "",
            "3938a44",
            "3938a44e0",
            "3938A44E",
            "3938a44g",
            "../a44e0",
            "3938a4 e",
        ] {
            assert!(validate_silo_id(id).is_err(), "{id:?} was accepted");
        }
    }

    #[test]
    fn veth_names_fit_ifnamsiz() {
        let host = host_veth_name("3938a44e");
        let peer = peer_veth_name("3938a44e");
        assert_eq!(host, "cx3938a44e");
        assert_eq!(peer, "cx3938a44ep");
        assert!(validate_link_name(&host).is_ok());
        assert!(validate_link_name(&peer).is_ok());
    }

    #[test]
    fn link_name_limits() {
        assert!(validate_link_name("colex0").is_ok());
        assert!(validate_link_name("cxb0123456789ab").is_ok());
        assert!(validate_link_name("cxb0123456789abc").is_err());
        assert!(validate_link_name("").is_err());
        assert!(validate_link_name("a b").is_err());
        assert!(validate_link_name("a/b").is_err());
    }

    #[test]
    fn host_name_limits() {
        assert!(validate_host_name("node-1.example").is_ok());
        assert!(validate_host_name("cxt0f3a").is_ok());
        assert!(validate_host_name("").is_err());
        assert!(validate_host_name(".hidden").is_err());
        assert!(validate_host_name("a/b").is_err());
        assert!(validate_host_name(&"a".repeat(MAX_HOST_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn derived_names() {
        assert_eq!(host_cgroup_name("node1"), "colex-node1");
        assert_eq!(masquerade_comment("3938a44e"), "colex silo 3938a44e");
    }
}
