//! Bind mounts of host paths into silos. The agent's configuration offers host paths under
//! bind ids; a silo's `bind` block names an id and the path inside the silo. The silo's PID 1
//! mounts them (module `rootfs`) before `pivot_root`.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::files::{self, FilesError};

/// Maximum length of a bind id in bytes.
pub const MAX_BIND_ID_BYTES: usize = 64;
/// Silo paths under which a bind is rejected: the kernel file systems the runtime mounts there
/// would hide or refuse it.
const KERNEL_FS_DIRS: &[&str] = &["proc", "sys"];

/// A host path the agent offers to silos under a bind id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSource {
    /// Absolute path on the host.
    pub path: PathBuf,
    /// Whether silos may write to it; bind mounts are read-only otherwise.
    pub writable: bool,
}

/// One bind mount that a silo's PID 1 makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    /// The bind id, for messages.
    pub id: String,
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Absolute path inside the silo, checked by [`files::silo_path_components`].
    pub target: String,
    pub writable: bool,
}

/// Errors in a silo's `bind` blocks.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("bind id {id:?} is not offered by this host, which offers {offered}")]
    NotOffered { id: String, offered: String },
    #[error("invalid path of bind {id:?}: {source}")]
    InvalidTarget { id: String, source: FilesError },
    #[error(
        "bind {id:?} targets {path:?}, inside a kernel file system of the silo; choose a path \
         outside /proc and /sys"
    )]
    KernelFileSystem { id: String, path: String },
    #[error("bind path {path:?} appears more than once")]
    DuplicateTarget { path: String },
    #[error("host path {path} of bind id {id:?} cannot be used: {source}")]
    SourceMissing {
        id: String,
        path: PathBuf,
        source: io::Error,
    },
}

/// Checks a bind id: 1 to [`MAX_BIND_ID_BYTES`] ASCII letters, digits, '-', '_' and '.',
/// starting with a letter or digit.
pub fn is_bind_id(id: &str) -> bool {
    let starts_well = id
        .bytes()
        .next()
        .is_some_and(|byte| byte.is_ascii_alphanumeric());
    let characters_ok = id
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
    starts_well && characters_ok && id.len() <= MAX_BIND_ID_BYTES
}

/// Maps a silo's `bind` blocks to mounts of the sources `offered` by this host. A bind id the
/// host does not offer is an error, never skipped. Touches no file.
pub fn plan_binds(
    offered: &BTreeMap<String, BindSource>,
    binds: &[colex_proto::Bind],
) -> Result<Vec<BindMount>, BindError> {
    let mut mounts = Vec::with_capacity(binds.len());
    let mut targets = HashSet::new();
    for bind in binds {
        let Some(source) = offered.get(&bind.id) else {
            return Err(BindError::NotOffered {
                id: bind.id.clone(),
                offered: offered_list(offered),
            });
        };
        let components =
            files::silo_path_components(&bind.path).map_err(|source| BindError::InvalidTarget {
                id: bind.id.clone(),
                source,
            })?;
        if components
            .first()
            .is_some_and(|first| KERNEL_FS_DIRS.contains(first))
        {
            return Err(BindError::KernelFileSystem {
                id: bind.id.clone(),
                path: bind.path.clone(),
            });
        }
        if !targets.insert(components.join("/")) {
            return Err(BindError::DuplicateTarget {
                path: bind.path.clone(),
            });
        }
        mounts.push(BindMount {
            id: bind.id.clone(),
            source: source.path.clone(),
            target: bind.path.clone(),
            writable: source.writable,
        });
    }
    Ok(mounts)
}

/// Checks that every source exists, so a missing host path fails the start before anything
/// is created. Blocking.
pub fn check_sources(mounts: &[BindMount]) -> Result<(), BindError> {
    for mount in mounts {
        std::fs::metadata(&mount.source).map_err(|source| BindError::SourceMissing {
            id: mount.id.clone(),
            path: mount.source.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Lists the offered bind ids for a message, or "none".
fn offered_list(offered: &BTreeMap<String, BindSource>) -> String {
    if offered.is_empty() {
        "none".to_string()
    } else {
        offered.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered() -> BTreeMap<String, BindSource> {
        BTreeMap::from([
            (
                "data".to_string(),
                BindSource {
                    path: PathBuf::from("/srv/data"),
                    writable: false,
                },
            ),
            (
                "logs".to_string(),
                BindSource {
                    path: PathBuf::from("/var/log/app"),
                    writable: true,
                },
            ),
        ])
    }

    fn bind(id: &str, path: &str) -> colex_proto::Bind {
        colex_proto::Bind {
            id: id.to_string(),
            path: path.to_string(),
        }
    }

    #[test]
    fn offered_binds_become_mounts() {
        let mounts = plan_binds(
            &offered(),
            &[bind("data", "/data"), bind("logs", "/var/log")],
        )
        .expect("plan");
        assert_eq!(
            mounts,
            [
                BindMount {
                    id: "data".to_string(),
                    source: PathBuf::from("/srv/data"),
                    target: "/data".to_string(),
                    writable: false,
                },
                BindMount {
                    id: "logs".to_string(),
                    source: PathBuf::from("/var/log/app"),
                    target: "/var/log".to_string(),
                    writable: true,
                },
            ]
        );
    }

    #[test]
    fn unoffered_id_is_rejected() {
        let err = plan_binds(&offered(), &[bind("secrets", "/s")]).expect_err("not offered");
        assert_eq!(
            err.to_string(),
            "bind id \"secrets\" is not offered by this host, which offers data, logs"
        );
        let err = plan_binds(&BTreeMap::new(), &[bind("data", "/d")]).expect_err("none offered");
        assert_eq!(
            err.to_string(),
            "bind id \"data\" is not offered by this host, which offers none"
        );
    }

    #[test]
    fn invalid_targets_are_rejected() {
        for (path, expected) in [
            ("data", "is not absolute"),
            ("/a/../etc", "must not contain '.' or '..' components"),
            ("/", "names the root directory"),
            ("/proc/x", "inside a kernel file system"),
            ("/sys", "inside a kernel file system"),
        ] {
            let err = plan_binds(&offered(), &[bind("data", path)]).expect_err(path);
            assert!(err.to_string().contains(expected), "{path}: {err}");
        }
        let err = plan_binds(&offered(), &[bind("data", "/d"), bind("logs", "//d/")])
            .expect_err("duplicate");
        assert_eq!(err.to_string(), "bind path \"//d/\" appears more than once");
    }

    #[test]
    fn bind_ids() {
        for id in ["data", "Data-1", "a.b_c", "0"] {
            assert!(is_bind_id(id), "{id:?} should be valid");
        }
        let too_long = "a".repeat(MAX_BIND_ID_BYTES + 1);
        for id in ["", "-a", ".a", "a/b", "a b", too_long.as_str()] {
            assert!(!is_bind_id(id), "{id:?} should be invalid");
        }
    }

    #[test]
    fn missing_source_is_reported() {
        let mounts = [BindMount {
            id: "data".to_string(),
            source: PathBuf::from("/nonexistent/colex-bind-source"),
            target: "/data".to_string(),
            writable: false,
        }];
        let err = check_sources(&mounts).expect_err("missing source");
        assert!(
            err.to_string()
                .starts_with("host path /nonexistent/colex-bind-source of bind id \"data\""),
            "{err}"
        );
    }
}
