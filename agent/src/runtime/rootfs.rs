//! Mount setup of a silo, run by the silo's PID 1 in its fresh mount namespace before the
//! program starts. The steps: overlayfs root, `/proc`, a minimal `/dev`, read-only `/sys`, the
//! bind mounts of host paths, host name, and `pivot_root` into the new root.
//!
//! PID 1 first opens every host path it mounts ([`RootfsSources::open`]) and then, in a user
//! namespace, becomes the silo's root, whose host uid has no permission on private dirs such as
//! a 0700 state dir. The mounts name the opened dirs as `/proc/self/fd/N`, so the only host
//! dirs searched again are the silo dir, for the name of the mount point, and `/dev`. After the
//! overlayfs mount, every path is relative to the new root, which PID 1 makes its working dir.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use nix::sys::statvfs::{fstatvfs, FsFlags};
use nix::unistd::{chdir, mkdir, pivot_root, sethostname, unlinkat, UnlinkatFlags};

use super::binds::BindMount;
use super::files;
use super::protocol::HelperJob;

/// Device nodes bind-mounted from the host into the silo's `/dev`.
const BIND_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// Symlinks in the silo's `/dev`: link name and target.
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];
/// Options of the tmpfs on `/dev`, which holds only mount points and symlinks.
const DEV_TMPFS_OPTIONS: &str = "mode=755,size=64k";
/// Option that makes overlayfs keep its metadata in `user.overlay.*` xattrs. A user namespace
/// may not set the default `trusted.overlay.*` ones: without the option, Linux 6.18 mounts but
/// logs "failed to set xattr on upper" and turns off features such as `redirect_dir`.
const OVERLAY_USER_XATTR_OPTION: &str = "userxattr";
/// Options of the silo's private devpts instance.
const DEVPTS_OPTIONS: &str = "newinstance,ptmxmode=0666,mode=0620";
/// Options of the tmpfs on `/dev/shm`.
const SHM_TMPFS_OPTIONS: &str = "mode=1777,size=64m";
/// Mode of the directories created in the silo root as bind mount points.
const BIND_DIR_MODE: u32 = 0o755;
/// Flags of a source mount that the kernel locks for a less privileged mount namespace: a
/// read-only remount of a bind must repeat them, or it fails with EPERM.
const LOCKED_MOUNT_FLAGS: &[(FsFlags, MsFlags)] = &[
    (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
    (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
    (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
    (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
    (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
];

/// Errors of a silo's mount setup.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("failed to make mounts private: {source}")]
    MakePrivate { source: Errno },
    #[error("failed to create mount point {path}: {source}")]
    CreateMountPoint { path: PathBuf, source: io::Error },
    #[error(
        "mount point {path} is a symlink in the silo image; the image must have a directory there"
    )]
    MountPointSymlink { path: PathBuf },
    #[error("failed to open the generated file {path}: {source}")]
    OpenEtcSource { path: PathBuf, source: Errno },
    #[error(
        "failed to mount the generated /etc/{name} in the silo root: {source}; the image's /etc \
         must be a directory, and /etc/{name} a file, a symlink or missing"
    )]
    MountEtcFile { name: String, source: Errno },
    #[error("bind {id:?}: failed to inspect host path {path}: {source}")]
    BindSource {
        id: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("bind {id:?}: cannot mount on {target:?} in the silo: {reason}")]
    BindTarget {
        id: String,
        target: String,
        reason: String,
    },
    #[error("bind {id:?}: failed to create mount point {path}: {source}")]
    CreateBindTarget {
        id: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("bind {id:?}: failed to bind-mount {source_path} on {target:?}: {source}")]
    BindMount {
        id: String,
        source_path: PathBuf,
        target: String,
        source: Errno,
    },
    #[error("bind {id:?}: failed to make {target:?} read-only: {source}")]
    BindReadOnly {
        id: String,
        target: String,
        source: Errno,
    },
    #[error("failed to mount overlayfs on {target} (lower {lower}): {source}")]
    MountOverlay {
        target: PathBuf,
        lower: PathBuf,
        source: Errno,
    },
    #[error("failed to mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: PathBuf,
        source: Errno,
    },
    #[error("failed to bind-mount /dev/{device} into the silo: {source}")]
    BindDevice { device: &'static str, source: Errno },
    #[error("failed to create {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("failed to set host name {name:?}: {source}")]
    SetHostname { name: String, source: Errno },
    #[error("failed to change dir to {path}: {source}")]
    Chdir { path: PathBuf, source: Errno },
    #[error("failed to pivot_root into {path}: {source}")]
    PivotRoot { path: PathBuf, source: Errno },
    #[error("failed to detach the old root: {source}")]
    DetachOldRoot { source: Errno },
    #[error("failed to open {path} for the silo's mounts: {source}")]
    OpenSource { path: PathBuf, source: Errno },
    #[error("mount point {path} of the silo root has no parent dir")]
    NoParent { path: PathBuf },
    #[error("bind {id:?}: failed to inspect host path {path}: {source}")]
    InspectBindSource {
        id: String,
        path: PathBuf,
        source: Errno,
    },
}

/// Handles on the host dirs and files of a silo's root file system, opened by PID 1 in its own
/// mount namespace: overlayfs rejects a layer whose mount belongs to another namespace.
#[derive(Debug)]
pub struct RootfsSources {
    lower: OwnedFd,
    upper: OwnedFd,
    work: OwnedFd,
    /// The dir that contains the mount point of the root. A path through it and the mount
    /// point's name enters the overlayfs mount, which a handle on the mount point itself,
    /// opened before the mount, never does.
    rootfs_parent: OwnedFd,
    rootfs_name: OsString,
    /// Bind sources, in the order of the job's binds.
    binds: Vec<OwnedFd>,
    /// The generated `/etc` files, in the order of the job's `etc_files`.
    etc_files: Vec<OwnedFd>,
}

impl RootfsSources {
    /// Opens the silo's layers, its mount point (created if missing) and its bind sources.
    /// PID 1 calls it with the host ids it was cloned with. Host root owns the state dir, so
    /// the owner bits let it search a 0700 state dir, which silo root may not.
    pub fn open(job: &HelperJob) -> Result<RootfsSources, RootfsError> {
        let open_dir = |path: &Path| open_path(path, OFlag::O_DIRECTORY);
        create_mount_point(&job.rootfs_dir)?;
        let (Some(parent), Some(rootfs_name)) =
            (job.rootfs_dir.parent(), job.rootfs_dir.file_name())
        else {
            return Err(RootfsError::NoParent {
                path: job.rootfs_dir.clone(),
            });
        };
        let mut binds = Vec::with_capacity(job.binds.len());
        for bind in &job.binds {
            let flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
            let fd = open(&bind.source, flags, Mode::empty()).map_err(|errno| {
                RootfsError::BindSource {
                    id: bind.id.clone(),
                    path: bind.source.clone(),
                    source: io::Error::from(errno),
                }
            })?;
            binds.push(fd);
        }
        let mut etc_files = Vec::with_capacity(job.etc_files.len());
        for path in &job.etc_files {
            let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = open(path, flags, Mode::empty()).map_err(|source| {
                RootfsError::OpenEtcSource {
                    path: path.clone(),
                    source,
                }
            })?;
            etc_files.push(fd);
        }
        Ok(RootfsSources {
            lower: open_dir(&job.lower_dir)?,
            upper: open_dir(&job.upper_dir)?,
            work: open_dir(&job.work_dir)?,
            rootfs_parent: open_dir(parent)?,
            rootfs_name: rootfs_name.to_os_string(),
            binds,
            etc_files,
        })
    }

    /// Returns the path of the mount point through the handle on its parent.
    ///
    /// The silo root searches the parent, the silo dir, by this path, so the agent makes the
    /// silo dir searchable by others (mode 0711) whatever its umask.
    fn rootfs_path(&self) -> PathBuf {
        fd_path(&self.rootfs_parent).join(&self.rootfs_name)
    }
}

/// Opens `path` with O_PATH: a handle for mounts and `fstat`, which needs no read permission.
fn open_path(path: &Path, extra_flags: OFlag) -> Result<OwnedFd, RootfsError> {
    let flags = OFlag::O_PATH | OFlag::O_CLOEXEC | extra_flags;
    open(path, flags, Mode::empty()).map_err(|source| RootfsError::OpenSource {
        path: path.to_path_buf(),
        source,
    })
}

/// Returns the `/proc/self/fd` path of `fd`. Path lookup follows it to the opened file without
/// searching the dirs of the file's original path. It needs the host's `/proc`, so it is valid
/// until `pivot_root`.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Builds the silo's root file system from `sources` and makes it the root of this process.
///
/// Must run in a fresh mount and UTS namespace, as the silo's PID 1 (for `/proc`).
pub fn enter(job: &HelperJob, sources: &RootfsSources) -> Result<(), RootfsError> {
    make_mounts_private()?;
    mount_overlay(job, sources)?;

    let rootfs_path = sources.rootfs_path();
    chdir(&rootfs_path).map_err(|source| RootfsError::Chdir {
        path: job.rootfs_dir.clone(),
        source,
    })?;
    let root = Path::new(".");
    mount_proc(&root.join("proc"))?;
    mount_dev(&root.join("dev"))?;
    mount_sys(&root.join("sys"));
    for (path, source) in job.etc_files.iter().zip(&sources.etc_files) {
        mount_etc_file(path, source)?;
    }
    // After /dev, so a bind can place a host device below the silo's /dev.
    for (bind, source) in job.binds.iter().zip(&sources.binds) {
        mount_bind(root, bind, source)?;
    }

    sethostname(&job.hostname).map_err(|source| RootfsError::SetHostname {
        name: job.hostname.clone(),
        source,
    })?;

    pivot(root)
}

/// Stops mount events from propagating to the host: the copy of a shared mount would
/// otherwise receive the silo's mounts, and `pivot_root` rejects a shared parent mount.
fn make_mounts_private() -> Result<(), RootfsError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|source| RootfsError::MakePrivate { source })
}

/// Mounts the overlayfs root. The layer paths are `/proc/self/fd` paths, which contain none of
/// the option separators ',', ':' and '\'.
fn mount_overlay(job: &HelperJob, sources: &RootfsSources) -> Result<(), RootfsError> {
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={}",
        fd_path(&sources.lower).display(),
        fd_path(&sources.upper).display(),
        fd_path(&sources.work).display()
    );
    if job.id_map.is_some() {
        options.push(',');
        options.push_str(OVERLAY_USER_XATTR_OPTION);
    }
    mount(
        Some("overlay"),
        &sources.rootfs_path(),
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|source| RootfsError::MountOverlay {
        target: job.rootfs_dir.clone(),
        lower: job.lower_dir.clone(),
        source,
    })
}

fn mount_proc(target: &Path) -> Result<(), RootfsError> {
    create_mount_point(target)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), target, Some("proc"), flags, None::<&str>).map_err(|source| {
        RootfsError::Mount {
            fstype: "proc",
            target: target.to_path_buf(),
            source,
        }
    })
}

fn mount_dev(dev: &Path) -> Result<(), RootfsError> {
    create_mount_point(dev)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_STRICTATIME;
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        flags,
        Some(DEV_TMPFS_OPTIONS),
    )
    .map_err(|source| RootfsError::Mount {
        fstype: "tmpfs",
        target: dev.to_path_buf(),
        source,
    })?;

    for device in BIND_DEVICES {
        let target = dev.join(device);
        File::create(&target).map_err(|source| RootfsError::Create {
            path: target.clone(),
            source,
        })?;
        let source_path = Path::new("/dev").join(device);
        mount(
            Some(&source_path),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| RootfsError::BindDevice { device, source })?;
    }

    let pts = dev.join("pts");
    create_mount_point(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(DEVPTS_OPTIONS),
    )
    .map_err(|source| RootfsError::Mount {
        fstype: "devpts",
        target: pts.clone(),
        source,
    })?;

    let shm = dev.join("shm");
    create_mount_point(&shm)?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(SHM_TMPFS_OPTIONS),
    )
    .map_err(|source| RootfsError::Mount {
        fstype: "tmpfs",
        target: shm.clone(),
        source,
    })?;

    for (name, target) in DEV_SYMLINKS {
        let link = dev.join(name);
        symlink(target, &link).map_err(|source| RootfsError::Create { path: link, source })?;
    }
    Ok(())
}

/// Mounts a read-only sysfs. `/sys` is optional for busybox programs, so a failure is only
/// logged to the helper log.
fn mount_sys(target: &Path) {
    let result = create_mount_point(target).and_then(|()| {
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("sysfs"), target, Some("sysfs"), flags, None::<&str>).map_err(|source| {
            RootfsError::Mount {
                fstype: "sysfs",
                target: target.to_path_buf(),
                source,
            }
        })
    });
    if let Err(err) = result {
        eprintln!("colex-init: warning: {err}; the silo runs without /sys");
    }
}

/// Makes `root` the root directory with the `pivot_root(".", ".")` idiom: after the call the
/// old root is stacked on top of the new one at "/", and detaching it leaves the new root.
/// This needs no put-old directory inside the silo root.
fn pivot(root: &Path) -> Result<(), RootfsError> {
    chdir(root).map_err(|source| RootfsError::Chdir {
        path: root.to_path_buf(),
        source,
    })?;
    pivot_root(".", ".").map_err(|source| RootfsError::PivotRoot {
        path: root.to_path_buf(),
        source,
    })?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|source| RootfsError::DetachOldRoot { source })?;
    chdir("/").map_err(|source| RootfsError::Chdir {
        path: PathBuf::from("/"),
        source,
    })
}

/// Creates a mount point, refusing a symlink in its place: mounting there would follow the
/// symlink out of the silo root.
fn create_mount_point(path: &Path) -> Result<(), RootfsError> {
    if fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_symlink()) {
        return Err(RootfsError::MountPointSymlink {
            path: path.to_path_buf(),
        });
    }
    fs::create_dir_all(path).map_err(|source| RootfsError::CreateMountPoint {
        path: path.to_path_buf(),
        source,
    })
}

/// Bind-mounts the generated file `path`, opened as `source`, at `/etc/<file name>` of the silo
/// root, the current dir. The image's entry there gives way, as it did to a file in the
/// writable layer before: a symlink (such as `resolv.conf` pointing into `/run`) is removed
/// first, and a missing file is created empty as the mount point. `/etc` is opened without
/// following a symlink, so the mount cannot land outside the root.
fn mount_etc_file(path: &Path, source: &OwnedFd) -> Result<(), RootfsError> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let error = |source| RootfsError::MountEtcFile {
        name: name.clone(),
        source,
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let etc = match open("etc", dir_flags, Mode::empty()) {
        Err(Errno::ENOENT) => {
            mkdir("etc", Mode::from_bits_truncate(0o755)).map_err(error)?;
            open("etc", dir_flags, Mode::empty())
        }
        opened => opened,
    }
    .map_err(error)?;

    match fstatat(&etc, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG => {}
        Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
            unlinkat(&etc, name.as_str(), UnlinkatFlags::NoRemoveDir).map_err(error)?;
            create_empty_file(&etc, &name).map_err(error)?;
        }
        Ok(stat) if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            return Err(error(Errno::EISDIR))
        }
        Ok(_) => return Err(error(Errno::EINVAL)),
        Err(Errno::ENOENT) => create_empty_file(&etc, &name).map_err(error)?,
        Err(errno) => return Err(error(errno)),
    }
    let target_flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let target = openat(&etc, name.as_str(), target_flags, Mode::empty()).map_err(error)?;
    mount(
        Some(&fd_path(source)),
        &fd_path(&target),
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(error)
}

/// Creates the empty file `name` in the open dir `dir`, failing if anything is there.
fn create_empty_file(dir: &OwnedFd, name: &str) -> Result<(), Errno> {
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat(dir, name, flags, Mode::from_bits_truncate(0o644)).map(drop)
}

/// Bind-mounts a host path, opened as `source`, into the silo root, read-only unless the bind
/// is writable. The bind is not recursive, so mounts below the host path stay out of the silo,
/// and a read-only bind has no writable submount.
fn mount_bind(root: &Path, bind: &BindMount, source: &OwnedFd) -> Result<(), RootfsError> {
    let source_stat = fstat(source).map_err(|errno| RootfsError::InspectBindSource {
        id: bind.id.clone(),
        path: bind.source.clone(),
        source: errno,
    })?;
    let source_is_dir =
        SFlag::from_bits_truncate(source_stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    let target = prepare_bind_target(root, bind, source_is_dir)?;

    mount(
        Some(&fd_path(source)),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| RootfsError::BindMount {
        id: bind.id.clone(),
        source_path: bind.source.clone(),
        target: bind.target.clone(),
        source,
    })?;
    if bind.writable {
        return Ok(());
    }

    // MS_RDONLY is ignored on the first bind call; only a remount applies it.
    let read_only_error = |source| RootfsError::BindReadOnly {
        id: bind.id.clone(),
        target: bind.target.clone(),
        source,
    };
    let source_flags = fstatvfs(source).map_err(read_only_error)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    for (source_flag, mount_flag) in LOCKED_MOUNT_FLAGS {
        if source_flags.contains(*source_flag) {
            flags |= *mount_flag;
        }
    }
    mount(None::<&str>, &target, None::<&str>, flags, None::<&str>).map_err(read_only_error)
}

/// Walks the bind's silo path below `root` one component at a time and returns the host path
/// of the mount point. Missing directories are created, and so is an empty file as the last
/// component when the source is a file. Symlinks are rejected, so the mount cannot land outside
/// the silo root. Nothing else runs in the silo yet, so the checked path cannot change before
/// the mount.
fn prepare_bind_target(
    root: &Path,
    bind: &BindMount,
    source_is_dir: bool,
) -> Result<PathBuf, RootfsError> {
    let target_error = |reason: String| RootfsError::BindTarget {
        id: bind.id.clone(),
        target: bind.target.clone(),
        reason,
    };
    let components =
        files::silo_path_components(&bind.target).map_err(|err| target_error(err.to_string()))?;
    let mut path = root.to_path_buf();
    let last_index = components.len().saturating_sub(1);
    for (index, component) in components.iter().enumerate() {
        path.push(component);
        let is_last = index == last_index;
        let create_error = |source| RootfsError::CreateBindTarget {
            id: bind.id.clone(),
            path: path.clone(),
            source,
        };
        match fs::symlink_metadata(&path) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(target_error(format!("{component:?} is a symlink")));
            }
            Ok(metadata) if !is_last && !metadata.is_dir() => {
                return Err(target_error(format!("{component:?} is not a directory")));
            }
            Ok(metadata) if is_last && metadata.is_dir() != source_is_dir => {
                let (target_kind, source_kind) = if source_is_dir {
                    ("a file", "a directory")
                } else {
                    ("a directory", "a file")
                };
                return Err(target_error(format!(
                    "the target is {target_kind} but the host path is {source_kind}"
                )));
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if is_last && !source_is_dir {
                    File::create(&path).map_err(create_error)?;
                } else {
                    DirBuilder::new()
                        .mode(BIND_DIR_MODE)
                        .create(&path)
                        .map_err(create_error)?;
                }
            }
            Err(err) => return Err(create_error(err)),
        }
    }
    Ok(path)
}
