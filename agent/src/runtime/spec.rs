//! Validation of a [`SiloSpec`] before anything is created for it.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use colex_proto::{FileKind, SiloSpec};

use super::files::{self, FilesError};
use super::image::{is_image_name, BUSYBOX_IMAGE, MAX_IMAGE_NAME_BYTES};

/// `PATH` given to a silo program whose spec sets none.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Maximum length of a silo name, which is the silo's host name (a DNS label).
pub const MAX_SILO_NAME_BYTES: usize = 63;
/// Files the agent generates for every silo and PID 1 bind-mounts from the silo's run dir, as
/// Docker does, so a start writes no file for them in the disk's writable layer.
pub const GENERATED_ETC_FILES: [&str; 3] = ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"];
/// Scheme the user may write before an image name.
const IMAGE_SCHEME: &str = "img://";
/// Range of `resources.cpu_percent`, in percent of the host's whole CPU capacity; 0 means no
/// limit.
pub const CPU_PERCENT_RANGE: std::ops::RangeInclusive<u32> = 4..=100;

/// Errors in a silo spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(
        "invalid silo name {name:?}: expected a DNS label of 1 to {MAX_SILO_NAME_BYTES} letters, \
         digits and '-', not starting or ending with '-'"
    )]
    InvalidName { name: String },
    #[error(
        "invalid image {image:?} in base: expected img://NAME with NAME of 1 to \
         {MAX_IMAGE_NAME_BYTES} lower-case letters, digits, '-', '_' and '.'"
    )]
    InvalidImage { image: String },
    #[error("silo spec has no binary")]
    MissingBinary,
    #[error("`{field}` is not supported yet by this agent; remove it from the silo file")]
    Unsupported { field: &'static str },
    #[error("binary path {path:?} must be absolute without '.' or '..' components")]
    InvalidBinaryPath { path: String },
    #[error("binary argument {arg:?} contains a NUL byte")]
    InvalidArg { arg: String },
    #[error(
        "invalid env entry {entry:?}: expected KEY=VALUE with a non-empty key and no NUL byte"
    )]
    InvalidEnv { entry: String },
    #[error("file path {path:?} appears more than once")]
    DuplicateFile { path: String },
    #[error(
        "resources.cpu_percent {value} is outside {}..={}: give the share of the host's whole \
         CPU capacity in percent, or 0 for no limit",
        CPU_PERCENT_RANGE.start(),
        CPU_PERCENT_RANGE.end()
    )]
    InvalidCpuPercent { value: u32 },
    #[error(transparent)]
    File(#[from] FilesError),
}

/// The content of a validated spec, in the form the runtime uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloPlan {
    /// Silo name, also its host name.
    pub name: String,
    /// Name of the image the root file system is made of. Whether this host has it is
    /// checked when the silo starts.
    pub image: String,
    /// Absolute path of the program inside the silo.
    pub binary: String,
    /// Full argument vector; `argv[0]` is the binary path.
    pub argv: Vec<String>,
    /// Environment: the spec's entries plus [`DEFAULT_PATH_ENV`] when they set no `PATH`.
    pub env: Vec<String>,
    /// Content of `/etc/resolv.conf`, or `None` when the spec has no nameservers.
    pub resolv_conf: Option<String>,
    pub internet_access: bool,
    /// CPU cap in percent of the whole host, or `None` for no cap.
    pub cpu_percent: Option<u32>,
    /// Hard memory limit in bytes, or `None` for no limit.
    pub memory_bytes: Option<u64>,
    /// Whether the program keeps CAP_NET_RAW (`grants.raw_sockets`).
    pub raw_sockets: bool,
    /// The files of [`GENERATED_ETC_FILES`] the silo gets: those that no `file` entry of the
    /// spec replaces and no `bind` covers. The spec's own entries win.
    pub generated_etc: Vec<&'static str>,
}

/// Checks `spec` and returns the plan for it. Creates nothing.
pub fn plan(spec: &SiloSpec) -> Result<SiloPlan, SpecError> {
    validate_name(&spec.name)?;
    let image = resolve_image(&spec.base)?;

    let binary = spec.binary.as_ref().ok_or(SpecError::MissingBinary)?;
    if files::silo_path_components(&binary.path).is_err() {
        return Err(SpecError::InvalidBinaryPath {
            path: binary.path.clone(),
        });
    }
    let mut argv = Vec::with_capacity(binary.args.len() + 1);
    argv.push(binary.path.clone());
    for arg in &binary.args {
        if arg.contains('\0') {
            return Err(SpecError::InvalidArg { arg: arg.clone() });
        }
        argv.push(arg.clone());
    }
    let env = plan_env(&binary.env)?;

    let mut seen = HashSet::new();
    for file in &spec.files {
        files::check_entry(file)?;
        let normalized = normalize(&file.silo_path);
        if !seen.insert(normalized) {
            return Err(SpecError::DuplicateFile {
                path: file.silo_path.clone(),
            });
        }
    }

    // Zero in either field means no limit.
    let (cpu_percent, memory_bytes) = spec.resources.as_ref().map_or((None, None), |resources| {
        (
            (resources.cpu_percent != 0).then_some(resources.cpu_percent),
            (resources.memory_bytes != 0).then_some(resources.memory_bytes),
        )
    });
    if let Some(value) = cpu_percent.filter(|value| !CPU_PERCENT_RANGE.contains(value)) {
        return Err(SpecError::InvalidCpuPercent { value });
    }

    let network = spec.network.clone().unwrap_or_default();
    let resolv_conf = files::resolv_conf(&spec.name, &network.nameservers)?;
    // The real address is known only after leasing; this call checks the entries now.
    files::hosts_file(&spec.name, Ipv4Addr::UNSPECIFIED, &network.hosts)?;

    Ok(SiloPlan {
        name: spec.name.clone(),
        image,
        binary: binary.path.clone(),
        argv,
        env,
        resolv_conf,
        internet_access: network.internet_access,
        cpu_percent,
        memory_bytes,
        raw_sockets: spec.grants.as_ref().is_some_and(|grants| grants.raw_sockets),
        generated_etc: generated_etc_files(spec),
    })
}

/// Returns the generated `/etc` files that `spec` leaves to the agent. A `file` entry at the
/// path replaces the file, and so does a symlink or file entry above it: the spec's entries
/// win, as they did when the generated files were placed first in the writable layer. A `bind`
/// at the path or above it replaces it too, so no mount lands in a host dir. A directory entry
/// at `/etc` replaces nothing.
fn generated_etc_files(spec: &SiloSpec) -> Vec<&'static str> {
    let replacing_entries = spec.files.iter().filter_map(|entry| {
        let components = files::silo_path_components(&entry.silo_path).ok()?;
        let is_dir = entry.kind() == FileKind::Directory;
        Some((components, is_dir))
    });
    let binds = spec.binds.iter().filter_map(|bind| {
        let components = files::silo_path_components(&bind.path).ok()?;
        Some((components, false))
    });
    let replacing: Vec<(Vec<&str>, bool)> = replacing_entries.chain(binds).collect();
    GENERATED_ETC_FILES
        .into_iter()
        .filter(|generated| {
            let Ok(components) = files::silo_path_components(generated) else {
                return false;
            };
            !replacing.iter().any(|(path, is_dir)| {
                path == &components || (!is_dir && components.starts_with(path))
            })
        })
        .collect()
}

/// Maps a spec's `base` to an image name: empty means `busybox`, and an `img://` scheme is
/// accepted.
pub fn resolve_image(base: &str) -> Result<String, SpecError> {
    let name = base.strip_prefix(IMAGE_SCHEME).unwrap_or(base);
    if name.is_empty() {
        Ok(BUSYBOX_IMAGE.to_string())
    } else if is_image_name(name) {
        Ok(name.to_string())
    } else {
        Err(SpecError::InvalidImage {
            image: base.to_string(),
        })
    }
}

fn validate_name(name: &str) -> Result<(), SpecError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SILO_NAME_BYTES
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(SpecError::InvalidName {
            name: name.to_string(),
        })
    }
}

fn plan_env(entries: &[String]) -> Result<Vec<String>, SpecError> {
    let mut env = Vec::with_capacity(entries.len() + 1);
    let mut has_path = false;
    for entry in entries {
        let key = entry.split_once('=').map(|(key, _)| key);
        let valid = key.is_some_and(|key| !key.is_empty()) && !entry.contains('\0');
        if !valid {
            return Err(SpecError::InvalidEnv {
                entry: entry.clone(),
            });
        }
        has_path |= key == Some("PATH");
        env.push(entry.clone());
    }
    if !has_path {
        env.push(DEFAULT_PATH_ENV.to_string());
    }
    Ok(env)
}

fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use colex_proto::{Binary, FileEntry, Network};

    use super::*;

    fn spec() -> SiloSpec {
        SiloSpec {
            name: "web".to_string(),
            base: "busybox".to_string(),
            binary: Some(Binary {
                path: "/bin/httpd".to_string(),
                args: vec!["-f".to_string(), "-p".to_string(), "80".to_string()],
                env: vec!["A=1".to_string()],
            }),
            files: vec![FileEntry {
                silo_path: "/www/index.html".to_string(),
                content: b"hi".to_vec(),
                mode: 0o644,
                ..Default::default()
            }],
            network: Some(Network {
                internet_access: true,
                nameservers: vec!["8.8.8.8".to_string()],
                hosts: HashMap::from([("db".to_string(), "10.69.0.5".to_string())]),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn plan_of_valid_spec() {
        let plan = plan(&spec()).expect("valid spec");
        assert_eq!(plan.image, BUSYBOX_IMAGE);
        assert_eq!(plan.argv, ["/bin/httpd", "-f", "-p", "80"]);
        assert_eq!(plan.env, ["A=1", DEFAULT_PATH_ENV]);
        assert_eq!(plan.resolv_conf.as_deref(), Some("nameserver 8.8.8.8\n"));
        assert!(plan.internet_access);
        assert_eq!(plan.cpu_percent, None);
        assert_eq!(plan.memory_bytes, None);
        assert_eq!(plan.generated_etc, GENERATED_ETC_FILES);
    }

    #[test]
    fn spec_entries_and_binds_replace_generated_files() {
        let mut own_hosts = spec();
        own_hosts.files.push(FileEntry {
            silo_path: "/etc/hosts".to_string(),
            content: b"10.0.0.1 db\n".to_vec(),
            mode: 0o644,
            ..Default::default()
        });
        let plan = plan(&own_hosts).expect("valid spec");
        assert_eq!(plan.generated_etc, ["/etc/hostname", "/etc/resolv.conf"]);

        let mut bound_etc = spec();
        bound_etc.binds.push(colex_proto::Bind {
            id: "config".to_string(),
            path: "/etc".to_string(),
        });
        assert!(plan_of(&bound_etc).generated_etc.is_empty());

        let mut linked_etc = spec();
        linked_etc.files.push(FileEntry {
            silo_path: "/etc".to_string(),
            kind: FileKind::Symlink.into(),
            link_target: "/config".to_string(),
            ..Default::default()
        });
        assert!(plan_of(&linked_etc).generated_etc.is_empty());

        let mut other_etc_entries = spec();
        other_etc_entries.files.push(FileEntry {
            silo_path: "/etc".to_string(),
            kind: FileKind::Directory.into(),
            mode: 0o755,
            ..Default::default()
        });
        other_etc_entries.files.push(FileEntry {
            silo_path: "/etc/hosts.allow".to_string(),
            ..Default::default()
        });
        assert_eq!(plan_of(&other_etc_entries).generated_etc, GENERATED_ETC_FILES);
    }

    fn plan_of(spec: &SiloSpec) -> SiloPlan {
        plan(spec).expect("valid spec")
    }

    #[test]
    fn resources_are_planned() {
        let mut spec = spec();
        spec.resources = Some(colex_proto::Resources {
            cpu_percent: 25,
            memory_bytes: 64 << 20,
        });
        let plan = plan(&spec).expect("valid spec");
        assert_eq!(plan.cpu_percent, Some(25));
        assert_eq!(plan.memory_bytes, Some(64 << 20));

        spec.resources = Some(colex_proto::Resources {
            cpu_percent: 0,
            memory_bytes: 0,
        });
        let plan = super::plan(&spec).expect("zero means no limit");
        assert_eq!(plan.cpu_percent, None);
        assert_eq!(plan.memory_bytes, None);
    }

    #[test]
    fn cpu_percent_out_of_range_is_rejected() {
        for value in [1, 3, 101, 400] {
            let mut spec = spec();
            spec.resources = Some(colex_proto::Resources {
                cpu_percent: value,
                memory_bytes: 0,
            });
            let err = plan(&spec).expect_err("out of range");
            assert!(matches!(err, SpecError::InvalidCpuPercent { value: v } if v == value));
        }
        let err = SpecError::InvalidCpuPercent { value: 101 };
        assert_eq!(
            err.to_string(),
            "resources.cpu_percent 101 is outside 4..=100: give the share of the host's whole \
             CPU capacity in percent, or 0 for no limit"
        );
    }

    #[test]
    fn binds_pass_the_plan() {
        let mut spec = spec();
        spec.binds.push(colex_proto::Bind {
            id: "data".to_string(),
            path: "/data".to_string(),
        });
        // Whether this host offers the bind id is checked when the silo starts.
        assert!(plan(&spec).is_ok());
    }

    #[test]
    fn spec_path_env_is_kept() {
        let mut spec = spec();
        if let Some(binary) = spec.binary.as_mut() {
            binary.env = vec!["PATH=/bin".to_string()];
        }
        assert_eq!(plan(&spec).expect("valid spec").env, ["PATH=/bin"]);
    }

    #[test]
    fn image_names() {
        assert_eq!(resolve_image("").expect("empty"), BUSYBOX_IMAGE);
        assert_eq!(
            resolve_image("img://busybox").expect("scheme"),
            BUSYBOX_IMAGE
        );
        assert_eq!(resolve_image("img://alpine-3.20").expect("tarball image"), "alpine-3.20");
        let err = resolve_image("img://Alpine").expect_err("invalid name");
        assert_eq!(
            err.to_string(),
            "invalid image \"img://Alpine\" in base: expected img://NAME with NAME of 1 to 128 \
             lower-case letters, digits, '-', '_' and '.'"
        );
    }

    #[test]
    fn rejects_invalid_specs() {
        let mut bad_name = spec();
        bad_name.name = "-web".to_string();
        assert!(matches!(
            plan(&bad_name),
            Err(SpecError::InvalidName { .. })
        ));

        let mut no_binary = spec();
        no_binary.binary = None;
        assert!(matches!(plan(&no_binary), Err(SpecError::MissingBinary)));

        let mut relative = spec();
        if let Some(binary) = relative.binary.as_mut() {
            binary.path = "bin/sh".to_string();
        }
        assert!(matches!(
            plan(&relative),
            Err(SpecError::InvalidBinaryPath { .. })
        ));

        let mut bad_env = spec();
        if let Some(binary) = bad_env.binary.as_mut() {
            binary.env = vec!["NOEQUALS".to_string()];
        }
        assert!(matches!(plan(&bad_env), Err(SpecError::InvalidEnv { .. })));

        let mut dot_dot = spec();
        dot_dot.files[0].silo_path = "/www/../../etc/passwd".to_string();
        assert!(matches!(
            plan(&dot_dot),
            Err(SpecError::File(FilesError::DotComponent { .. }))
        ));

        let mut duplicate = spec();
        let mut copy = duplicate.files[0].clone();
        copy.silo_path = "//www//index.html".to_string();
        duplicate.files.push(copy);
        assert!(matches!(
            plan(&duplicate),
            Err(SpecError::DuplicateFile { .. })
        ));

        let mut bad_dns = spec();
        if let Some(network) = bad_dns.network.as_mut() {
            network.nameservers = vec!["dns".to_string()];
        }
        assert!(matches!(
            plan(&bad_dns),
            Err(SpecError::File(FilesError::InvalidNameserver { .. }))
        ));
    }
}
