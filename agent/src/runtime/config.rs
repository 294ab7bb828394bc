//! Configuration of the silo runtime of one agent.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::names::{self, NameError};

/// Default path of the static busybox that the built-in `busybox` image is made from.
pub const DEFAULT_BUSYBOX_PATH: &str = "/bin/busybox";

/// Maximum subnet prefix length: a /30 leaves the bridge address and one silo address.
pub const MAX_SUBNET_PREFIX_LEN: u8 = 30;

/// Settings of one agent's silo runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Name of the host, which scopes everything outside the agent's network namespace (the
    /// cgroup directory `colex-<host_name>`; the state dir is chosen by the caller).
    pub host_name: String,
    /// Directory the runtime owns, e.g. `/var/lib/colex/agent/<host>`.
    pub state_dir: PathBuf,
    /// Name of the bridge the silos' veths attach to, e.g. `colex0`.
    pub bridge: String,
    /// The host's silo subnet. The bridge gets its first host address, silos the following ones.
    pub subnet: Ipv4Net,
    /// Executable that calls [`super::helper_main`] when its first argument is `silo-helper`.
    pub helper_exe: PathBuf,
    /// Static busybox binary the `busybox` image is made from.
    pub busybox: PathBuf,
}

/// Errors in a [`RuntimeConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(
        "subnet {subnet} is too small: the prefix length must be at most {MAX_SUBNET_PREFIX_LEN}"
    )]
    SubnetTooSmall { subnet: Ipv4Net },
    #[error("{what} {path} must be an absolute path")]
    RelativePath { what: &'static str, path: PathBuf },
    #[error(
        "state dir {path} cannot be used in overlayfs mount options: it must be valid UTF-8 \
         without ',', ':' or '\\'"
    )]
    UnsupportedStateDir { path: PathBuf },
}

impl RuntimeConfig {
    /// Creates a configuration with the default busybox path.
    pub fn new(
        host_name: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        bridge: impl Into<String>,
        subnet: Ipv4Net,
        helper_exe: impl Into<PathBuf>,
    ) -> Self {
        RuntimeConfig {
            host_name: host_name.into(),
            state_dir: state_dir.into(),
            bridge: bridge.into(),
            subnet,
            helper_exe: helper_exe.into(),
            busybox: PathBuf::from(DEFAULT_BUSYBOX_PATH),
        }
    }

    /// Checks every field, so that nothing is created for a configuration that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        names::validate_host_name(&self.host_name)?;
        names::validate_link_name(&self.bridge)?;
        if self.subnet.prefix_len() > MAX_SUBNET_PREFIX_LEN {
            return Err(ConfigError::SubnetTooSmall {
                subnet: self.subnet,
            });
        }
        check_absolute("state dir", &self.state_dir)?;
        check_absolute("helper executable", &self.helper_exe)?;
        check_absolute("busybox", &self.busybox)?;
        if !is_overlay_safe(&self.state_dir) {
            return Err(ConfigError::UnsupportedStateDir {
                path: self.state_dir.clone(),
            });
        }
        Ok(())
    }

    /// Returns the subnet with its host bits cleared.
    pub fn network(&self) -> Ipv4Net {
        self.subnet.trunc()
    }

    /// Returns the bridge address, the first host address of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        let first = u32::from(self.network().network()).saturating_add(1);
        Ipv4Addr::from(first)
    }
}

fn check_absolute(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::RelativePath {
            what,
            path: path.to_path_buf(),
        })
    }
}

/// Reports whether `path` can appear in an overlayfs option string, which uses ',' and ':' as
/// separators and '\' as escape character.
pub(crate) fn is_overlay_safe(path: &Path) -> bool {
    path.to_str()
        .is_some_and(|text| !text.contains([',', ':', '\\']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RuntimeConfig {
        let subnet = "10.69.1.0/24".parse().expect("valid subnet literal");
        RuntimeConfig::new(
            "node1",
            "/var/lib/colex/agent/node1",
            "colex0",
            subnet,
            "/usr/bin/colex-agent",
        )
    }

    #[test]
    fn default_config_is_valid() {
        let cfg = config();
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.busybox, PathBuf::from(DEFAULT_BUSYBOX_PATH));
    }

    #[test]
    fn gateway_is_first_address() {
        let mut cfg = config();
        assert_eq!(cfg.gateway(), Ipv4Addr::new(10, 69, 1, 1));
        cfg.subnet = "10.69.1.77/24".parse().expect("valid subnet literal");
        assert_eq!(cfg.gateway(), Ipv4Addr::new(10, 69, 1, 1));
    }

    #[test]
    fn rejects_tiny_subnet() {
        let mut cfg = config();
        cfg.subnet = "10.69.1.0/31".parse().expect("valid subnet literal");
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::SubnetTooSmall { .. })
        ));
    }

    #[test]
    fn rejects_bad_paths_and_names() {
        let mut cfg = config();
        cfg.state_dir = PathBuf::from("relative/dir");
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::RelativePath { .. })
        ));

        let mut cfg = config();
        cfg.state_dir = PathBuf::from("/var/lib/a,b");
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::UnsupportedStateDir { .. })
        ));

        let mut cfg = config();
        cfg.bridge = "a-very-long-bridge-name".to_string();
        assert!(matches!(cfg.validate(), Err(ConfigError::Name(_))));
    }
}
