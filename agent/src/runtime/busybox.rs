//! The built-in `busybox` image: a directory tree made once from the host's static busybox,
//! per id map, owned by root of the silos that use it.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{AtFlags, AT_FDCWD};
use nix::unistd::fchownat;

use super::image::{build_atomically, cache_dir_suffix, ImageError, BUSYBOX_IMAGE};
use super::spec::GENERATED_ETC_FILES;
use super::userns::{IdMap, Owner};

/// Path of the busybox binary inside the image, the target of every applet symlink.
const BUSYBOX_IN_IMAGE: &str = "/bin/busybox";

/// Empty directories of the image with their modes.
const IMAGE_DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("var", 0o755),
    ("var/tmp", 0o1777),
];

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n";
const GROUP: &str = "root:x:0:\n";

/// Returns the image dir of `busybox` for silos with `id_map` under `images_dir`, building it
/// first if it is missing. With an id map, every file of the tree belongs to the map's root.
///
/// The tree is built in a temp dir and renamed into place, so an existing image dir is always
/// complete, also after a crash during the build. Blocking: call from a blocking thread.
pub fn ensure_busybox_image(
    images_dir: &Path,
    busybox: &Path,
    id_map: Option<IdMap>,
) -> Result<PathBuf, ImageError> {
    let dir_name = format!("{BUSYBOX_IMAGE}{}", cache_dir_suffix(id_map));
    let target = images_dir.join(&dir_name);
    if target.is_dir() {
        return Ok(target);
    }

    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| ImageError::ListApplets {
            busybox: busybox.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(ImageError::ListAppletsStatus {
            busybox: busybox.to_path_buf(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let applets = applet_paths(&String::from_utf8_lossy(&output.stdout));

    build_atomically(images_dir, &dir_name, |temp| {
        build_tree(temp, busybox, &applets).map_err(|source| ImageError::Build {
            path: target.clone(),
            source,
        })?;
        match id_map {
            Some(map) => chown_tree(temp, map.root_owner()),
            None => Ok(()),
        }
    })
}

/// Gives `root` and everything below it to `owner`, symlinks included and never followed.
/// The tree has no setuid or setgid file, whose bits the change would clear.
fn chown_tree(root: &Path, owner: Owner) -> Result<(), ImageError> {
    let chown_error = |path: &Path, source| ImageError::Chown {
        path: path.to_path_buf(),
        uid: owner.uid,
        gid: owner.gid,
        source,
    };
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        fchownat(
            AT_FDCWD,
            &path,
            Some(owner.nix_uid()),
            Some(owner.nix_gid()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|source| chown_error(&path, source))?;
        let metadata = fs::symlink_metadata(&path).map_err(|source| ImageError::Build {
            path: path.clone(),
            source,
        })?;
        if metadata.is_dir() {
            let entries = fs::read_dir(&path).map_err(|source| ImageError::Build {
                path: path.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| ImageError::Build {
                    path: path.clone(),
                    source,
                })?;
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Returns the relative paths of the applet symlinks: every path from `busybox --list-full`
/// (such as `usr/sbin/httpd`) and also `bin/<applet>` for each, so `/bin/<applet>` works for
/// every applet as in the usual busybox container images.
pub fn applet_paths(list_full: &str) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    for line in list_full.lines() {
        let relative = line.trim().trim_start_matches('/');
        let safe = !relative.is_empty()
            && relative
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !safe {
            continue;
        }
        let path = PathBuf::from(relative);
        if let Some(name) = path.file_name() {
            paths.insert(Path::new("bin").join(name));
        }
        paths.insert(path);
    }
    paths.remove(Path::new("bin/busybox"));
    paths
}

/// Fills the empty dir `root` with the image tree.
fn build_tree(root: &Path, busybox: &Path, applets: &BTreeSet<PathBuf>) -> io::Result<()> {
    for (dir, mode) in IMAGE_DIRS {
        let path = root.join(dir);
        DirBuilder::new().recursive(true).create(&path)?;
        // The mode is set explicitly because the umask applies at creation.
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
    }

    let busybox_copy = root.join(BUSYBOX_IN_IMAGE.trim_start_matches('/'));
    fs::copy(busybox, &busybox_copy)?;
    fs::set_permissions(&busybox_copy, fs::Permissions::from_mode(0o755))?;

    for applet in applets {
        let link = root.join(applet);
        if let Some(parent) = link.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        symlink(BUSYBOX_IN_IMAGE, &link)?;
    }

    fs::write(root.join("etc/passwd"), PASSWD)?;
    fs::write(root.join("etc/group"), GROUP)?;
    // Mount points of the generated files, so a start creates none in the writable layer.
    for silo_path in GENERATED_ETC_FILES {
        fs::write(root.join(silo_path.trim_start_matches('/')), b"")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_paths_add_bin_links() {
        let paths = applet_paths("usr/sbin/httpd\nbin/sh\nbin/busybox\n\n/usr/bin/wget\n");
        let expected: BTreeSet<PathBuf> = [
            "bin/httpd",
            "bin/sh",
            "bin/wget",
            "usr/bin/wget",
            "usr/sbin/httpd",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(paths, expected);
    }

    #[test]
    fn applet_paths_skip_unsafe_lines() {
        let paths = applet_paths("../etc/x\nusr/../../y\n.\n");
        assert!(paths.is_empty(), "{paths:?}");
    }

    #[test]
    fn builds_image_from_host_busybox() {
        let busybox = Path::new(super::super::config::DEFAULT_BUSYBOX_PATH);
        if !busybox.exists() {
            eprintln!("skipped: {} is missing", busybox.display());
            return;
        }
        let images = tempfile::tempdir().expect("create temp dir");
        let image = ensure_busybox_image(images.path(), busybox, None).expect("build image");
        assert!(image.join("bin/busybox").is_file());
        assert_eq!(
            fs::read_link(image.join("bin/sh")).expect("sh link"),
            Path::new(BUSYBOX_IN_IMAGE)
        );
        assert!(fs::symlink_metadata(image.join("bin/httpd")).is_ok());
        let tmp_mode = fs::metadata(image.join("tmp"))
            .expect("stat tmp")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(tmp_mode, 0o1777);
        assert_eq!(
            fs::read_to_string(image.join("etc/passwd")).expect("passwd"),
            PASSWD
        );

        // A second call reuses the existing image.
        assert_eq!(
            ensure_busybox_image(images.path(), busybox, None).expect("reuse"),
            image
        );
        let names: Vec<_> = fs::read_dir(images.path())
            .expect("list images dir")
            .map(|entry| entry.expect("dir entry").file_name())
            .collect();
        assert_eq!(names, [BUSYBOX_IMAGE], "no temp dir is left");
    }

    #[test]
    fn shifted_image_belongs_to_silo_root() {
        use std::os::unix::fs::MetadataExt;
        let busybox = Path::new(super::super::config::DEFAULT_BUSYBOX_PATH);
        if !busybox.exists() || !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root and {}", busybox.display());
            return;
        }
        let images = tempfile::tempdir().expect("create temp dir");
        let image = ensure_busybox_image(images.path(), busybox, Some(IdMap::default()))
            .expect("build image");
        assert_eq!(image, images.path().join("busybox+100000"));
        for path in ["", "bin", "bin/busybox", "bin/sh", "etc/passwd", "tmp"] {
            let metadata = fs::symlink_metadata(image.join(path)).expect("stat");
            assert_eq!(
                (metadata.uid(), metadata.gid()),
                (100_000, 100_000),
                "{path:?}"
            );
        }
    }
}
