//! Mount setup of a silo, run by the silo's PID 1 in its fresh mount namespace before the
//! program starts: overlayfs root, `/proc`, a minimal `/dev`, read-only `/sys`, host name, and
//! `pivot_root` into the new root.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root, sethostname};

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
/// Options of the silo's private devpts instance.
const DEVPTS_OPTIONS: &str = "newinstance,ptmxmode=0666,mode=0620";
/// Options of the tmpfs on `/dev/shm`.
const SHM_TMPFS_OPTIONS: &str = "mode=1777,size=64m";

/// Errors of a silo's mount setup.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("failed to make mounts private: {source}")]
    MakePrivate { source: Errno },
    #[error("failed to create mount point {path}: {source}")]
    CreateMountPoint { path: PathBuf, source: io::Error },
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
}

/// Builds the silo's root file system and makes it the root of this process.
///
/// Must run in a fresh mount and UTS namespace, as the silo's PID 1 (for `/proc`).
pub fn enter(job: &HelperJob) -> Result<(), RootfsError> {
    make_mounts_private()?;
    mount_overlay(job)?;

    let root = &job.rootfs_dir;
    mount_proc(&root.join("proc"))?;
    mount_dev(&root.join("dev"))?;
    mount_sys(&root.join("sys"));

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

fn mount_overlay(job: &HelperJob) -> Result<(), RootfsError> {
    create_mount_point(&job.rootfs_dir)?;
    // The agent checked that these paths contain no ',', ':' or '\', the option separators.
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        job.lower_dir.display(),
        job.upper_dir.display(),
        job.work_dir.display()
    );
    mount(
        Some("overlay"),
        &job.rootfs_dir,
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

fn create_mount_point(path: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(path).map_err(|source| RootfsError::CreateMountPoint {
        path: path.to_path_buf(),
        source,
    })
}
