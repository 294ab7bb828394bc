//! On-disk intent records: what a silo has or may have created, so that a restarted agent can
//! remove it.
//!
//! Each silo has two dirs of the same name. `<run_dir>/silos/<id>/` contains `silo.json` (the
//! [`SiloRecord`]), `exit.json` (the [`ExitRecord`] that the helper writes), the mount point
//! `rootfs/` and the generated `etc/hostname`, `etc/hosts` and `etc/resolv.conf` that PID 1
//! bind-mounts: small files a start writes, which end with the machine as its processes do.
//! `<state_dir>/silos/<id>/` contains what may outlive a reboot or grow large: `stdout.log` and
//! `stderr.log` with their rotated predecessors `stdout.log.1` and `stderr.log.1`,
//! `helper.log`, and the overlayfs dirs `upper/` and `work/`.
//!
//! The record dir is made first and removed last, so a silo with files in the state dir and no
//! record is a leftover: of a removal cut short, or of a reboot that emptied a tmpfs run dir.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// File name of the silo record.
pub const RECORD_FILE: &str = "silo.json";
/// File name of the exit record the helper writes when the silo's PID 1 has exited.
pub const EXIT_FILE: &str = "exit.json";
/// File name of the silo program's standard output.
pub const STDOUT_LOG_FILE: &str = "stdout.log";
/// File name of the silo program's standard error.
pub const STDERR_LOG_FILE: &str = "stderr.log";
/// File name of the helper's and the silo init's own diagnostics.
pub const HELPER_LOG_FILE: &str = "helper.log";
/// Prefix of a silo dir that is being deleted; such dirs are removed on start.
pub const TRASH_PREFIX: &str = ".trash-";

/// Errors reading and writing state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("failed to write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to parse {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("failed to encode {path}: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Record of what a silo has or may have created. Written before the first kernel object is made and
/// updated when the helper's pids are known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiloRecord {
    pub silo_id: String,
    pub generation: u64,
    /// Host-side veth name.
    pub host_veth: String,
    /// Leased silo address.
    pub address: Ipv4Addr,
    /// cgroup v2 directory of the silo.
    pub cgroup_dir: PathBuf,
    /// Whether a MASQUERADE rule is (or may be) installed for the silo.
    pub internet_access: bool,
    /// Pid of the helper process, in the agent's pid namespace.
    pub helper_pid: Option<u32>,
    /// Pid of the silo's PID 1, in the agent's pid namespace.
    pub init_pid: Option<u32>,
    /// Start time of the helper (field 22 of `/proc/PID/stat`, in clock ticks since boot), so
    /// a restarted agent can tell the helper from a later process that reuses its pid.
    #[serde(default)]
    pub helper_start_ticks: Option<u64>,
    /// Whether the program was exec'd: a record without it belongs to a setup that never
    /// finished, which a restarted agent removes instead of adopting.
    #[serde(default)]
    pub started: bool,
    /// Times the program was restarted in place under the silo's restart policy.
    #[serde(default)]
    pub restarts: u32,
    /// When PID 1 was released to run the program, in ms since the Unix epoch. PID 1 may be a
    /// spare cloned long before, so its process start time is not the program's.
    #[serde(default)]
    pub started_at_unix_ms: Option<u64>,
}

/// Exit status of a silo's PID 1: its exit code, or 128 + signal number when it was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
}

/// One of the two output streams of a silo's program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStreamKind {
    Stdout,
    Stderr,
}

/// The two dirs that contain one dir per silo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloDirs {
    /// `<run_dir>/silos`: records and mount points.
    pub records: PathBuf,
    /// `<state_dir>/silos`: logs and writable layers.
    pub files: PathBuf,
}

impl SiloDirs {
    pub fn new(run_dir: &Path, state_dir: &Path) -> Self {
        SiloDirs {
            records: run_dir.join("silos"),
            files: state_dir.join("silos"),
        }
    }

    /// Returns the paths of silo `silo_id`.
    pub fn paths(&self, silo_id: &str) -> SiloPaths {
        SiloPaths {
            run: self.records.join(silo_id),
            dir: self.files.join(silo_id),
        }
    }
}

/// Paths of one silo's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloPaths {
    /// The silo's dir in the run dir: records and the root's mount point.
    pub run: PathBuf,
    /// The silo's dir in the state dir: logs and the writable layer.
    pub dir: PathBuf,
}

impl SiloPaths {
    pub fn record(&self) -> PathBuf {
        self.run.join(RECORD_FILE)
    }

    pub fn exit(&self) -> PathBuf {
        self.run.join(EXIT_FILE)
    }

    pub fn stdout_log(&self) -> PathBuf {
        self.dir.join(STDOUT_LOG_FILE)
    }

    pub fn stderr_log(&self) -> PathBuf {
        self.dir.join(STDERR_LOG_FILE)
    }

    /// Returns the path of the stdout or stderr log.
    pub fn log(&self, stream: LogStreamKind) -> PathBuf {
        match stream {
            LogStreamKind::Stdout => self.stdout_log(),
            LogStreamKind::Stderr => self.stderr_log(),
        }
    }

    pub fn helper_log(&self) -> PathBuf {
        self.dir.join(HELPER_LOG_FILE)
    }

    /// Overlayfs upper dir: the silo's writable layer, where its files are placed.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// Overlayfs work dir, on the same file system as the upper dir.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// Mount point of the silo's root file system inside its mount namespace.
    pub fn rootfs(&self) -> PathBuf {
        self.run.join("rootfs")
    }

    /// Tells whether either of the silo's dirs exists. An error counts as existing, so the
    /// caller removes what may be there. Two `stat` calls cost less than a trip to the blocking
    /// pool.
    pub fn exist(&self) -> bool {
        [&self.run, &self.dir]
            .iter()
            .any(|dir| dir.try_exists().unwrap_or(true))
    }
}

/// Writes `value` as JSON to `path` through a temp file and a rename, so readers see either the
/// old or the new content, also after a crash of the agent.
///
/// The file is not synced: a record describes processes, mounts and links that a host crash
/// or power loss ends anyway, and a process crash loses nothing from the page cache. An `fsync`
/// costs 0.3 to 0.5 ms on the reference machine, and a start writes the record twice.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let encoded = serde_json::to_vec_pretty(value).map_err(|source| StateError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    let mut temp_name = path.as_os_str().to_owned();
    temp_name.push(".tmp");
    let temp = PathBuf::from(temp_name);
    let write_error = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };

    let mut file = File::create(&temp).map_err(write_error)?;
    file.write_all(&encoded).map_err(write_error)?;
    drop(file);
    fs::rename(&temp, path).map_err(write_error)
}

/// Rewrites the JSON file at `path`, written before by [`write_json_atomic`], with `value`, in
/// one write at offset 0 of the same file. A shorter encoding is padded with spaces to the old
/// length, which JSON allows after the value, so the file is never truncated. A crash of the
/// agent therefore leaves the old or the new content, as with a rename. A host crash ends what
/// the record describes anyway (see [`write_json_atomic`]).
///
/// A rename would free the old file's block. On ext4 mounted with `discard` and without a
/// journal, freeing a block sends a discard to the device and waits for it: 0.3 to 1 ms on the
/// reference machine, on every start that updated its record that way.
pub fn rewrite_json_in_place<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut encoded = serde_json::to_vec_pretty(value).map_err(|source| StateError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    let write_error = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };

    let file = OpenOptions::new().write(true).open(path).map_err(write_error)?;
    let old_len = file.metadata().map_err(write_error)?.len();
    if let Ok(old_len) = usize::try_from(old_len) {
        if encoded.len() < old_len {
            encoded.resize(old_len, b' ');
        }
    }
    file.write_all_at(&encoded, 0).map_err(write_error)
}

/// Reads a JSON file written by [`write_json_atomic`] or [`rewrite_json_in_place`].
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, StateError> {
    let bytes = fs::read(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Lists the entries of the silos dir: silo dirs by name, and leftover trash dirs. A missing
/// dir has none.
pub fn list_dir(silos_dir: &Path) -> Result<Vec<String>, StateError> {
    let read_error = |source| StateError::Read {
        path: silos_dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(silos_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(read_error(source)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_error)?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SiloRecord {
        SiloRecord {
            silo_id: "3938a44e".to_string(),
            generation: 7,
            host_veth: "cx3938a44e".to_string(),
            address: Ipv4Addr::new(10, 69, 1, 2),
            cgroup_dir: PathBuf::from("/sys/fs/cgroup/colex-node1/3938a44e"),
            internet_access: true,
            helper_pid: Some(1234),
            init_pid: None,
            helper_start_ticks: Some(98_765),
            started: true,
            restarts: 2,
            started_at_unix_ms: Some(1_764_900_000_000),
        }
    }

    #[test]
    fn record_round_trip() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join(RECORD_FILE);
        write_json_atomic(&path, &record()).expect("write record");
        let read: SiloRecord = read_json(&path).expect("read record");
        assert_eq!(read, record());
        assert!(!dir.path().join("silo.json.tmp").exists());
    }

    #[test]
    fn record_overwrite_replaces() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join(RECORD_FILE);
        write_json_atomic(&path, &record()).expect("write record");
        let mut updated = record();
        updated.init_pid = Some(1235);
        write_json_atomic(&path, &updated).expect("overwrite record");
        let read: SiloRecord = read_json(&path).expect("read record");
        assert_eq!(read.init_pid, Some(1235));
    }

    #[test]
    fn rewrite_in_place_pads_and_grows() {
        use std::os::unix::fs::MetadataExt;

        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join(RECORD_FILE);
        let mut long = record();
        long.host_veth = "cx".repeat(40);
        write_json_atomic(&path, &long).expect("write record");
        let inode = fs::metadata(&path).expect("metadata").ino();

        // Shorter: padded with spaces, still one JSON value.
        let short = record();
        rewrite_json_in_place(&path, &short).expect("rewrite shorter");
        assert_eq!(read_json::<SiloRecord>(&path).expect("read shorter"), short);
        let padded = fs::read(&path).expect("read bytes");
        assert!(padded.ends_with(b" "), "the shorter value is padded");

        // Longer again: the file grows.
        rewrite_json_in_place(&path, &long).expect("rewrite longer");
        assert_eq!(read_json::<SiloRecord>(&path).expect("read longer"), long);
        assert_eq!(fs::metadata(&path).expect("metadata").ino(), inode, "same file");
    }

    #[test]
    fn rewrite_in_place_needs_the_file() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join(RECORD_FILE);
        let err = rewrite_json_in_place(&path, &record()).expect_err("no file to rewrite");
        assert!(err.to_string().contains(RECORD_FILE), "{err}");
    }

    #[test]
    fn read_reports_parse_errors() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join(EXIT_FILE);
        fs::write(&path, b"{not json").expect("write garbage");
        let err = read_json::<ExitRecord>(&path).expect_err("garbage must not parse");
        assert!(matches!(err, StateError::Parse { .. }));
        assert!(err.to_string().contains("exit.json"));
    }

    #[test]
    fn records_and_files_split_dirs() {
        let paths = SiloDirs::new(Path::new("/run/cx"), Path::new("/state")).paths("3938a44e");
        assert_eq!(
            paths.record(),
            PathBuf::from("/run/cx/silos/3938a44e/silo.json")
        );
        assert_eq!(paths.exit(), PathBuf::from("/run/cx/silos/3938a44e/exit.json"));
        assert_eq!(paths.rootfs(), PathBuf::from("/run/cx/silos/3938a44e/rootfs"));
        assert_eq!(
            paths.stdout_log(),
            PathBuf::from("/state/silos/3938a44e/stdout.log")
        );
        assert_eq!(paths.upper(), PathBuf::from("/state/silos/3938a44e/upper"));
        assert_eq!(paths.work(), PathBuf::from("/state/silos/3938a44e/work"));
    }
}
