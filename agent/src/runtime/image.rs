//! The images of one host and their cache: the built-in `busybox` image and the tarball images
//! the agent's configuration declares.
//!
//! Each image is unpacked once into `<state_dir>/images/` and shared read-only by every silo
//! that uses it as its overlayfs lower dir. Each silo writes to its own upper dir. A tarball
//! image is cached under `<name>@<sha256 of the tarball>`, so a changed tarball is unpacked again
//! into a new dir. With a user namespace id map, every cache dir name ends in `+<host base>`
//! (`busybox+100000`) and its files are owned by the shifted ids (module `userns`). Every cache dir is built in a temp dir (prefix [`TEMP_PREFIX`]) and renamed
//! into place, so a cache dir that exists is complete. Temp dirs that a crash left behind are
//! removed when the store opens.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::busybox::ensure_busybox_image;
use super::tarball::{self, Owners, TarballError};
use super::userns::IdMap;

/// Name of the built-in image, made from the host's static busybox.
pub const BUSYBOX_IMAGE: &str = "busybox";
/// Maximum length of an image name in bytes; the name is part of a cache dir name.
pub const MAX_IMAGE_NAME_BYTES: usize = 128;
/// Prefix of the temp dirs in which cache dirs are built.
const TEMP_PREFIX: &str = ".tmp-";
/// Separator between image name and content hash in a cache dir name. Image names never
/// contain it.
const HASH_SEPARATOR: char = '@';
/// Separator before the host base of the id map in a cache dir name. Image names and hashes
/// never contain it.
const ID_MAP_SEPARATOR: char = '+';
/// Size of the buffer used to hash a tarball, in bytes.
const HASH_BUFFER_BYTES: usize = 256 * 1024;

/// Numbers the temp dirs of one process, so concurrent builds never share one.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Errors in preparing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("failed to run {busybox} --list-full: {source}")]
    ListApplets { busybox: PathBuf, source: io::Error },
    #[error("{busybox} --list-full failed with {status}: {stderr}")]
    ListAppletsStatus {
        busybox: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("failed to build image at {path}: {source}")]
    Build { path: PathBuf, source: io::Error },
    #[error("image {image:?} is not available on this host, which has {available}")]
    NotAvailable { image: String, available: String },
    #[error("failed to read the tarball {path} of image {image}: {source}")]
    ReadTarball {
        image: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image {image} ({path}) is rejected: {source}")]
    Tarball {
        image: String,
        path: PathBuf,
        source: TarballError,
    },
    #[error("failed to clean the image cache {path}: {source}")]
    Clean { path: PathBuf, source: io::Error },
    #[error("failed to give {path} to the silo id map's root {uid}:{gid}: {source}")]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: nix::errno::Errno,
    },
}

/// Returns the suffix of cache dir names for silos with `id_map`: `+<host base>`, or nothing
/// without a user namespace.
pub fn cache_dir_suffix(id_map: Option<IdMap>) -> String {
    match id_map {
        Some(map) => format!("{ID_MAP_SEPARATOR}{}", map.host_base),
        None => String::new(),
    }
}

/// Checks an image name: 1 to [`MAX_IMAGE_NAME_BYTES`] lower-case letters, digits, '-', '_'
/// and '.', starting with a letter or digit. Such a name is a safe file name, never `.` or
/// `..`, and contains no overlayfs option separator.
pub fn is_image_name(name: &str) -> bool {
    let starts_well = name
        .bytes()
        .next()
        .is_some_and(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
    let characters_ok = name.bytes().all(|byte| {
        byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'-' | b'_' | b'.')
    });
    starts_well && characters_ok && name.len() <= MAX_IMAGE_NAME_BYTES
}

/// The images of one host. Cheap to clone; clones share the cache state.
#[derive(Debug, Clone)]
pub struct ImageStore {
    images_dir: PathBuf,
    /// Cache dir of the built-in busybox image.
    busybox_dir: PathBuf,
    tarballs: Arc<BTreeMap<String, TarballImage>>,
    /// Id map whose shifted owners the cache dirs have; `None` keeps the images' own owners.
    id_map: Option<IdMap>,
}

/// One tarball image. The lock is held while the image is checked or unpacked, so concurrent
/// silo starts unpack it once.
#[derive(Debug)]
struct TarballImage {
    path: PathBuf,
    cached: Mutex<Option<CachedTarball>>,
}

/// A tarball's cache dir, with the tarball's metadata when it was hashed.
#[derive(Debug, Clone)]
struct CachedTarball {
    fingerprint: Fingerprint,
    dir: PathBuf,
}

/// Metadata that changes whenever a tarball's content is replaced, so the tarball is hashed
/// again only then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    device: u64,
    inode: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    fn of(metadata: &fs::Metadata) -> Self {
        let nanos = |seconds: i64, nanoseconds: i64| {
            i128::from(seconds) * 1_000_000_000 + i128::from(nanoseconds)
        };
        Fingerprint {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            mtime_ns: nanos(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: nanos(metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

impl ImageStore {
    /// Opens the image cache in `images_dir` for silos with `id_map`: removes temp dirs left by
    /// a crash, builds the busybox image if it is missing, and unpacks every tarball image that
    /// is not cached yet. A tarball that fails is logged and left out of the cache; every silo
    /// that names it fails with the same error. Blocking.
    pub fn open(
        images_dir: &Path,
        busybox: &Path,
        tarballs: &BTreeMap<String, PathBuf>,
        id_map: Option<IdMap>,
    ) -> Result<ImageStore, ImageError> {
        remove_temp_dirs(images_dir)?;
        let busybox_dir = ensure_busybox_image(images_dir, busybox, id_map)?;
        let store = ImageStore {
            id_map,
            images_dir: images_dir.to_path_buf(),
            busybox_dir,
            tarballs: Arc::new(
                tarballs
                    .iter()
                    .map(|(name, path)| {
                        let image = TarballImage {
                            path: path.clone(),
                            cached: Mutex::new(None),
                        };
                        (name.clone(), image)
                    })
                    .collect(),
            ),
        };
        for name in store.tarballs.keys() {
            if let Err(err) = store.lower_dir(name) {
                warn!(image = %name, error = %err, "image is unusable; silos that use it will fail");
            }
        }
        Ok(store)
    }

    /// Returns a store that prepares nothing and offers only the built-in image's path, for a
    /// runtime that removes silos and starts none.
    pub fn unprepared(images_dir: &Path) -> ImageStore {
        ImageStore {
            images_dir: images_dir.to_path_buf(),
            busybox_dir: images_dir.join(BUSYBOX_IMAGE),
            tarballs: Arc::new(BTreeMap::new()),
            id_map: None,
        }
    }

    /// Returns the names of every image, the built-in one first.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(BUSYBOX_IMAGE.to_string())
            .chain(self.tarballs.keys().cloned())
            .collect()
    }

    /// Returns the cache dir of image `name`, the lower dir for a silo's overlayfs. A tarball
    /// whose metadata changed since it was unpacked is hashed again and, if its content
    /// changed, unpacked into a new cache dir. Blocking.
    pub fn lower_dir(&self, name: &str) -> Result<PathBuf, ImageError> {
        if name == BUSYBOX_IMAGE {
            return Ok(self.busybox_dir.clone());
        }
        let Some(image) = self.tarballs.get(name) else {
            return Err(ImageError::NotAvailable {
                image: name.to_string(),
                available: self.names().join(", "),
            });
        };

        let mut cached = image
            .cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let read_error = |source| ImageError::ReadTarball {
            image: name.to_string(),
            path: image.path.clone(),
            source,
        };
        let fingerprint = Fingerprint::of(&fs::metadata(&image.path).map_err(read_error)?);
        if let Some(known) = cached.as_ref() {
            if known.fingerprint == fingerprint && known.dir.is_dir() {
                return Ok(known.dir.clone());
            }
        }

        let digest = sha256_hex(&image.path).map_err(read_error)?;
        let dir_name = format!(
            "{name}{HASH_SEPARATOR}{digest}{}",
            cache_dir_suffix(self.id_map)
        );
        let dir = if self.images_dir.join(&dir_name).is_dir() {
            self.images_dir.join(&dir_name)
        } else {
            self.unpack(name, &image.path, &dir_name)?
        };
        *cached = Some(CachedTarball {
            fingerprint,
            dir: dir.clone(),
        });
        Ok(dir)
    }

    fn unpack(&self, name: &str, path: &Path, dir_name: &str) -> Result<PathBuf, ImageError> {
        let started = Instant::now();
        let owners = match self.id_map {
            Some(map) => Owners::Shifted(map),
            None if nix::unistd::geteuid().is_root() => Owners::FromArchive,
            None => Owners::Caller,
        };
        let dir = build_atomically(&self.images_dir, dir_name, |temp| {
            let report =
                tarball::unpack(path, temp, owners).map_err(|source| ImageError::Tarball {
                    image: name.to_string(),
                    path: path.to_path_buf(),
                    source,
                })?;
            if !report.skipped.is_empty() {
                warn!(image = %name, count = report.skipped.len(), first = ?report.skipped.first(), "skipped device and FIFO entries of the image tarball");
            }
            Ok(())
        })?;
        info!(image = %name, tarball = %path.display(), dir = %dir.display(), elapsed_ms = started.elapsed().as_millis() as u64, "image unpacked");
        // TODO: remove cache dirs of earlier versions of this tarball once no silo (adopted
        // ones included) uses them as lower dir. Until then they stay on disk.
        Ok(dir)
    }
}

/// Builds the cache dir `dir_name` under `images_dir` by running `build` on a fresh temp dir
/// and renaming it into place; returns the cache dir. The temp dir is removed when `build`
/// fails, so a failed build leaves nothing behind. When another caller finished the same dir
/// first, its dir is kept and this one removed.
pub fn build_atomically(
    images_dir: &Path,
    dir_name: &str,
    build: impl FnOnce(&Path) -> Result<(), ImageError>,
) -> Result<PathBuf, ImageError> {
    let target = images_dir.join(dir_name);
    let sequence = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = images_dir.join(format!(
        "{TEMP_PREFIX}{dir_name}-{}-{sequence}",
        std::process::id()
    ));
    let build_error = |source| ImageError::Build {
        path: target.clone(),
        source,
    };
    remove_dir_if_present(&temp).map_err(build_error)?;
    fs::create_dir(&temp).map_err(build_error)?;

    if let Err(err) = build(&temp) {
        if let Err(clean_err) = remove_dir_if_present(&temp) {
            warn!(dir = %temp.display(), error = %clean_err, "failed to remove the temp dir of a failed image build");
        }
        return Err(err);
    }
    match fs::rename(&temp, &target) {
        Ok(()) => Ok(target),
        Err(_) if target.is_dir() => {
            remove_dir_if_present(&temp).map_err(build_error)?;
            Ok(target)
        }
        Err(source) => {
            let _ = remove_dir_if_present(&temp);
            Err(build_error(source))
        }
    }
}

/// Removes the temp dirs of builds that an earlier process did not finish.
fn remove_temp_dirs(images_dir: &Path) -> Result<(), ImageError> {
    let clean_error = |source| ImageError::Clean {
        path: images_dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(images_dir).map_err(clean_error)? {
        let entry = entry.map_err(clean_error)?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            warn!(dir = %entry.path().display(), "removing an unfinished image build");
            remove_dir_if_present(&entry.path()).map_err(clean_error)?;
        }
    }
    Ok(())
}

fn remove_dir_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Returns the SHA-256 of a file's content as 64 lower-case hex digits.
fn sha256_hex(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        hasher.update(&buffer[..read]);
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest.iter() {
        hex.push_str(&format!("{byte:02x}"));
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a one-file tar archive whose file `marker` contains `content`.
    fn write_tarball(path: &Path, content: &str) {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        builder
            .append_data(&mut header, "marker", content.as_bytes())
            .expect("append marker");
        fs::write(path, builder.into_inner().expect("finish archive")).expect("write tarball");
    }

    fn cache_entries(images_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(images_dir)
            .expect("list images dir")
            .map(|entry| {
                entry
                    .expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Makes a store without the busybox build, for tests that need no host busybox.
    fn store(images_dir: &Path, tarballs: &[(&str, &Path)]) -> ImageStore {
        ImageStore {
            images_dir: images_dir.to_path_buf(),
            busybox_dir: images_dir.join(BUSYBOX_IMAGE),
            tarballs: Arc::new(
                tarballs
                    .iter()
                    .map(|(name, path)| {
                        let image = TarballImage {
                            path: path.to_path_buf(),
                            cached: Mutex::new(None),
                        };
                        (name.to_string(), image)
                    })
                    .collect(),
            ),
            id_map: None,
        }
    }

    #[test]
    fn cache_dir_suffix_names_the_host_base() {
        assert_eq!(cache_dir_suffix(None), "");
        assert_eq!(cache_dir_suffix(Some(IdMap::default())), "+100000");
    }

    #[test]
    fn image_names() {
        for name in ["busybox", "alpine-3.20", "my_image", "0day", "a.b"] {
            assert!(is_image_name(name), "{name:?} should be valid");
        }
        let too_long = "a".repeat(MAX_IMAGE_NAME_BYTES + 1);
        for name in [
            "",
            "Alpine",
            ".hidden",
            "-x",
            "a/b",
            "a@b",
            "a,b",
            "a:b",
            too_long.as_str(),
        ] {
            assert!(!is_image_name(name), "{name:?} should be invalid");
        }
    }

    #[test]
    fn tarball_is_unpacked_once_and_again_when_changed() {
        let work = tempfile::tempdir().expect("create temp dir");
        let images_dir = work.path().join("images");
        fs::create_dir(&images_dir).expect("create images dir");
        let tarball = work.path().join("app.tar");
        write_tarball(&tarball, "one");
        let store = store(&images_dir, &[("app", &tarball)]);

        let first = store.lower_dir("app").expect("unpack");
        assert_eq!(
            fs::read_to_string(first.join("marker")).expect("marker"),
            "one"
        );
        let name = first
            .file_name()
            .expect("dir name")
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("app@"), "{name}");
        assert_eq!(name.len(), "app@".len() + 64);
        assert_eq!(store.lower_dir("app").expect("cached"), first);

        write_tarball(&tarball, "two");
        let second = store.lower_dir("app").expect("unpack changed tarball");
        assert_ne!(second, first);
        assert_eq!(
            fs::read_to_string(second.join("marker")).expect("marker"),
            "two"
        );
        assert_eq!(cache_entries(&images_dir).len(), 2, "no temp dir is left");
    }

    #[test]
    fn unknown_image_names_the_available_ones() {
        let work = tempfile::tempdir().expect("create temp dir");
        let tarball = work.path().join("web.tar");
        let store = store(work.path(), &[("web", &tarball)]);
        let err = store.lower_dir("alpine").expect_err("unknown image");
        assert_eq!(
            err.to_string(),
            "image \"alpine\" is not available on this host, which has busybox, web"
        );
    }

    #[test]
    fn rejected_tarball_leaves_nothing() {
        let work = tempfile::tempdir().expect("create temp dir");
        let images_dir = work.path().join("images");
        fs::create_dir(&images_dir).expect("create images dir");
        let tarball = work.path().join("bad.tar");
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.as_old_mut().name[..4].copy_from_slice(b"../x");
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"x"[..]).expect("append");
        fs::write(&tarball, builder.into_inner().expect("finish")).expect("write tarball");

        let store = store(&images_dir, &[("bad", &tarball)]);
        let err = store.lower_dir("bad").expect_err("rejected");
        assert!(err.to_string().contains("entry \"../x\""), "{err}");
        assert!(cache_entries(&images_dir).is_empty());
        assert!(!work.path().join("x").exists());
    }

    #[test]
    fn temp_dirs_of_a_crash_are_removed() {
        let work = tempfile::tempdir().expect("create temp dir");
        fs::create_dir_all(work.path().join(".tmp-app@00-1-0/etc")).expect("create temp dir");
        fs::create_dir(work.path().join("app@00")).expect("create cache dir");
        remove_temp_dirs(work.path()).expect("remove temp dirs");
        assert_eq!(cache_entries(work.path()), ["app@00"]);
    }
}
