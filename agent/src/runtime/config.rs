//! Configuration of the silo runtime of one agent.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::binds::{is_bind_id, BindSource, MAX_BIND_ID_BYTES};
use super::failpoint::{is_failpoint, FAILPOINTS};
use super::image::{is_image_name, BUSYBOX_IMAGE, MAX_IMAGE_NAME_BYTES};
use super::names::{self, NameError};
use super::userns::IdMap;

/// Default path of the static busybox that the built-in `busybox` image is made from.
pub const DEFAULT_BUSYBOX_PATH: &str = "/bin/busybox";

/// Maximum subnet prefix length: a /30 leaves the bridge address and one silo address.
pub const MAX_SUBNET_PREFIX_LEN: u8 = 30;

/// Default maximum number of tasks (processes and threads) of one silo: far above what a
/// service needs, and it bounds what a fork bomb in one silo takes from the host.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

/// TCP port of the metadata service on the bridge address unless the agent config sets another.
pub const DEFAULT_METADATA_PORT: u16 = 17832;
/// Name of the run dir inside the state dir when the caller chooses none.
pub const DEFAULT_RUN_DIR_NAME: &str = "run";
/// Smallest pids limit: the silo's PID 1 and its program.
pub const MIN_PIDS_LIMIT: u64 = 2;

/// Settings of one agent's silo runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Name of the host, which scopes everything outside the agent's network namespace (the
    /// cgroup directory `colex-<host_name>`; the state dir is chosen by the caller).
    pub host_name: String,
    /// Directory the runtime owns, e.g. `/var/lib/colex/agent/<host>`: images, the silos'
    /// writable layers and their logs.
    pub state_dir: PathBuf,
    /// Directory of the silos' runtime records (intent, start, exit) and address leases, e.g.
    /// `/run/colex/agent/<host>`. They describe processes, mounts and links that end with the
    /// machine, so the directory belongs on tmpfs: a start writes several small files there,
    /// which cost milliseconds on a disk file system. [`RuntimeConfig::new`] puts it in the
    /// state dir.
    pub run_dir: PathBuf,
    /// Name of the bridge the silos' veths attach to, e.g. `colex0`.
    pub bridge: String,
    /// The host's silo subnet. The bridge gets its first host address, silos the following ones.
    pub subnet: Ipv4Net,
    /// Executable that calls [`super::helper_main`] when its first argument is `silo-helper`.
    pub helper_exe: PathBuf,
    /// Static busybox binary the `busybox` image is made from.
    pub busybox: PathBuf,
    /// Tarball images by name: each path is a `docker export` tar, plain or gzip-compressed.
    /// The built-in `busybox` image is always available in addition and cannot be listed here.
    pub images: BTreeMap<String, PathBuf>,
    /// Host paths offered to the silos' `bind` blocks, by bind id.
    pub binds: BTreeMap<String, BindSource>,
    /// Maximum number of tasks of each silo (`pids.max`); `None` for no limit.
    pub pids_limit: Option<u64>,
    /// Failpoint the silo start path fails at, one of [`FAILPOINTS`]; tests only (the agent
    /// binary reads it from `COLEX_FAILPOINT`). [`super::Runtime::set_failpoint`] changes it.
    pub failpoint: Option<String>,
    /// Map of the silos' uids and gids onto host ids, the same for every silo of this agent.
    /// `None` runs silos without a user namespace, so root in a silo is host root.
    pub id_map: Option<IdMap>,
    /// TCP port of the metadata service on the bridge address, which every silo finds in its
    /// `METADATA_ENDPOINT` variable.
    pub metadata_port: u16,
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
    #[error(
        "invalid image name {name:?}: expected 1 to {MAX_IMAGE_NAME_BYTES} lower-case letters, \
         digits, '-', '_' and '.', starting with a letter or digit"
    )]
    InvalidImageName { name: String },
    #[error("image name {BUSYBOX_IMAGE:?} is built in and cannot name a tarball image")]
    BuiltInImageName,
    #[error(
        "invalid bind id {id:?}: expected 1 to {MAX_BIND_ID_BYTES} letters, digits, '-', '_' \
         and '.', starting with a letter or digit"
    )]
    InvalidBindId { id: String },
    #[error(
        "pids limit {limit} is too low: a silo needs at least {MIN_PIDS_LIMIT} tasks, its PID 1 \
         and its program; leave it unset for no limit"
    )]
    PidsLimitTooLow { limit: u64 },
    #[error("unknown failpoint {name:?}: expected one of {FAILPOINTS:?}")]
    UnknownFailpoint { name: String },
    #[error(
        "invalid id map {map:?}: expected a host base and a count above 0 whose sum is at most \
         4294967295"
    )]
    InvalidIdMap { map: IdMap },
}

impl RuntimeConfig {
    /// Creates a configuration with the default busybox path, pids limit and id map, so silos
    /// run in user namespaces.
    pub fn new(
        host_name: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        bridge: impl Into<String>,
        subnet: Ipv4Net,
        helper_exe: impl Into<PathBuf>,
    ) -> Self {
        let state_dir = state_dir.into();
        RuntimeConfig {
            host_name: host_name.into(),
            run_dir: state_dir.join(DEFAULT_RUN_DIR_NAME),
            state_dir,
            bridge: bridge.into(),
            subnet,
            helper_exe: helper_exe.into(),
            busybox: PathBuf::from(DEFAULT_BUSYBOX_PATH),
            images: BTreeMap::new(),
            binds: BTreeMap::new(),
            pids_limit: Some(DEFAULT_PIDS_LIMIT),
            failpoint: None,
            id_map: Some(IdMap::default()),
            metadata_port: DEFAULT_METADATA_PORT,
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
        check_absolute("run dir", &self.run_dir)?;
        check_absolute("helper executable", &self.helper_exe)?;
        check_absolute("busybox", &self.busybox)?;
        for (name, path) in &self.images {
            if name == BUSYBOX_IMAGE {
                return Err(ConfigError::BuiltInImageName);
            }
            if !is_image_name(name) {
                return Err(ConfigError::InvalidImageName { name: name.clone() });
            }
            check_absolute("image tarball", path)?;
        }
        for (id, source) in &self.binds {
            if !is_bind_id(id) {
                return Err(ConfigError::InvalidBindId { id: id.clone() });
            }
            check_absolute("bind source", &source.path)?;
        }
        if !is_overlay_safe(&self.state_dir) {
            return Err(ConfigError::UnsupportedStateDir {
                path: self.state_dir.clone(),
            });
        }
        if let Some(limit) = self.pids_limit.filter(|limit| *limit < MIN_PIDS_LIMIT) {
            return Err(ConfigError::PidsLimitTooLow { limit });
        }
        if let Some(name) = self.failpoint.as_deref().filter(|name| !is_failpoint(name)) {
            return Err(ConfigError::UnknownFailpoint {
                name: name.to_string(),
            });
        }
        if let Some(map) = self.id_map.filter(|map| !map.is_valid()) {
            return Err(ConfigError::InvalidIdMap { map });
        }
        Ok(())
    }

    /// Turns the silos' user namespaces on, with the default id map (silo ids 0 to 65535 are
    /// host ids 100000 to 165535), or off.
    pub fn set_user_namespaces(&mut self, enabled: bool) {
        self.id_map = enabled.then(IdMap::default);
    }

    /// Returns the names of every image silos can use: `busybox` first, then the tarball images.
    pub fn image_names(&self) -> Vec<String> {
        std::iter::once(BUSYBOX_IMAGE.to_string())
            .chain(self.images.keys().cloned())
            .collect()
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

    /// Returns the URL of the metadata service, `http://GATEWAY:PORT`.
    pub fn metadata_endpoint(&self) -> String {
        format!("http://{}:{}", self.gateway(), self.metadata_port)
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
        assert_eq!(cfg.pids_limit, Some(DEFAULT_PIDS_LIMIT));
        assert_eq!(cfg.id_map, Some(IdMap::default()));
    }

    #[test]
    fn id_map_is_checked() {
        let mut cfg = config();
        cfg.set_user_namespaces(false);
        assert_eq!(cfg.id_map, None);
        assert!(cfg.validate().is_ok());
        cfg.set_user_namespaces(true);
        assert_eq!(cfg.id_map, Some(IdMap::default()));
        cfg.id_map = Some(IdMap {
            host_base: 0,
            count: 65_536,
        });
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::InvalidIdMap { .. })
        ));
    }

    #[test]
    fn pids_limit_bounds() {
        let mut cfg = config();
        cfg.pids_limit = Some(1);
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::PidsLimitTooLow { limit: 1 })
        ));
        cfg.pids_limit = Some(MIN_PIDS_LIMIT);
        assert!(cfg.validate().is_ok());
        cfg.pids_limit = None;
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn failpoint_must_be_known() {
        let mut cfg = config();
        cfg.failpoint = Some("after-lease".to_string());
        assert!(cfg.validate().is_ok());
        cfg.failpoint = Some("after-lunch".to_string());
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::UnknownFailpoint { .. })
        ));
    }

    #[test]
    fn gateway_is_first_address() {
        let mut cfg = config();
        assert_eq!(cfg.gateway(), Ipv4Addr::new(10, 69, 1, 1));
        cfg.subnet = "10.69.1.77/24".parse().expect("valid subnet literal");
        assert_eq!(cfg.gateway(), Ipv4Addr::new(10, 69, 1, 1));
    }

    #[test]
    fn metadata_endpoint_uses_gateway_and_port() {
        let mut cfg = config();
        assert_eq!(cfg.metadata_endpoint(), "http://10.69.1.1:17832");
        cfg.metadata_port = 8080;
        assert_eq!(cfg.metadata_endpoint(), "http://10.69.1.1:8080");
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
        cfg.run_dir = PathBuf::from("run");
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::RelativePath { what: "run dir", .. })
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

    #[test]
    fn image_and_bind_names_are_checked() {
        let mut cfg = config();
        cfg.images
            .insert("alpine".to_string(), PathBuf::from("/srv/alpine.tar"));
        cfg.binds.insert(
            "data".to_string(),
            BindSource {
                path: PathBuf::from("/srv/data"),
                writable: false,
            },
        );
        assert!(cfg.validate().is_ok());
        assert_eq!(cfg.image_names(), ["busybox", "alpine"]);

        let mut built_in = config();
        built_in
            .images
            .insert(BUSYBOX_IMAGE.to_string(), PathBuf::from("/srv/b.tar"));
        assert!(matches!(
            built_in.validate(),
            Err(ConfigError::BuiltInImageName)
        ));

        let mut bad_name = config();
        bad_name
            .images
            .insert("Alpine".to_string(), PathBuf::from("/srv/a.tar"));
        assert!(matches!(
            bad_name.validate(),
            Err(ConfigError::InvalidImageName { .. })
        ));

        let mut relative = config();
        relative
            .images
            .insert("alpine".to_string(), PathBuf::from("alpine.tar"));
        assert!(matches!(
            relative.validate(),
            Err(ConfigError::RelativePath { .. })
        ));

        let mut bad_id = config();
        bad_id.binds.insert(
            "-data".to_string(),
            BindSource {
                path: PathBuf::from("/srv/data"),
                writable: false,
            },
        );
        assert!(matches!(
            bad_id.validate(),
            Err(ConfigError::InvalidBindId { .. })
        ));
    }
}
