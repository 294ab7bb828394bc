//! Root integration tests of tarball images and bind mounts: real namespaces, overlayfs and
//! mounts.
//!
//! Each test runs its runtime in a fresh network namespace made by a dedicated thread, so the
//! bridge and veths vanish with the thread's namespace. Names carry a random part, so tests run
//! in parallel. Guards remove the state dir and the host's cgroup dirs in every hierarchy, also
//! when a test fails. Without root the tests are skipped, unless CI=true, where they fail.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use colex_agent::runtime::{BindSource, Runtime, STDOUT_LOG_FILE};
use tar::EntryType;

mod common;
use common::*;

const SUBNET: &str = "10.69.7.0/24";
const EXIT_WAIT: Duration = Duration::from_secs(20);
/// Content of the marker file in the test image.
const IMAGE_MARKER: &str = "made by the tar crate\n";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Asserts that a failed start created nothing: no silo dir, lease or veth.
fn assert_nothing_created(host: &TestHost, silo_id: &str) {
    assert!(
        host.silo_dirs_gone(silo_id),
        "silo dir of {silo_id} exists"
    );
    assert!(host.leases().is_empty(), "leases left: {:?}", host.leases());
    assert!(
        !link_exists(&format!("cx{silo_id}")),
        "veth of {silo_id} exists"
    );
}

/// Builds tar archives, including entries the `tar` crate's builder refuses (absolute paths,
/// `..`), by writing the header's name field directly.
struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl TarBuilder {
    fn new() -> Self {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &str, kind: EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        let field = &mut header.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        header
    }

    fn dir(mut self, name: &str, mode: u32) -> Self {
        let header = Self::header(name, EntryType::Directory, mode, 0);
        self.builder
            .append(&header, std::io::empty())
            .expect("append dir");
        self
    }

    fn file(mut self, name: &str, content: &[u8], mode: u32) -> Self {
        let header = Self::header(name, EntryType::Regular, mode, content.len() as u64);
        self.builder.append(&header, content).expect("append file");
        self
    }

    fn link(mut self, name: &str, kind: EntryType, target: &str) -> Self {
        let mut header = Self::header(name, kind, 0o777, 0);
        let field = &mut header.as_old_mut().linkname;
        field.fill(0);
        field[..target.len()].copy_from_slice(target.as_bytes());
        header.set_cksum();
        self.builder
            .append(&header, std::io::empty())
            .expect("append link");
        self
    }

    fn char_device(mut self, name: &str) -> Self {
        let header = Self::header(name, EntryType::Char, 0o666, 0);
        self.builder
            .append(&header, std::io::empty())
            .expect("append device");
        self
    }

    fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish archive")
    }
}

/// Builds a gzip-compressed image tarball around the host's static busybox, laid out as
/// `docker export` writes one: relative paths, absolute and relative applet symlinks, a hard
/// link and a device node (which the unpacker skips). As in images of systemd distributions,
/// `/etc/resolv.conf` is a symlink into `/run`, and `/etc/hosts` and `/etc/hostname` are
/// missing.
fn busybox_tarball() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).expect("read the host's busybox");
    let archive = TarBuilder::new()
        .dir("bin/", 0o755)
        .dir("dev/", 0o755)
        .dir("etc/", 0o755)
        .dir("proc/", 0o555)
        .dir("sys/", 0o555)
        .dir("tmp/", 0o1777)
        .file("bin/busybox", &busybox, 0o755)
        .link("bin/sh", EntryType::Symlink, "/bin/busybox")
        .link("bin/cat", EntryType::Symlink, "busybox")
        .link("bin/echo", EntryType::Symlink, "busybox")
        .link("bin/ls", EntryType::Symlink, "busybox")
        .link("bin/grep", EntryType::Symlink, "busybox")
        .link("etc/resolv.conf", EntryType::Symlink, "../run/systemd/resolve/stub-resolv.conf")
        .link("bin/busybox-copy", EntryType::Link, "bin/busybox")
        .char_device("dev/null")
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("etc/image-marker", IMAGE_MARKER.as_bytes(), 0o644)
        .finish();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&archive).expect("compress archive");
    encoder.finish().expect("finish gzip")
}

fn read_stdout(host: &TestHost, silo_id: &str) -> String {
    std::fs::read_to_string(host.silo_dir(silo_id).join(STDOUT_LOG_FILE)).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn tarball_image_runs_a_silo() {
    if !has_root("tarball_image_runs_a_silo") {
        return;
    }
    in_netns(|| {
        let mut host = TestHost::with_state_subdir("colex-images-test", "cxi", SUBNET);
        let tarball = host.path("tiny.tar.gz");
        std::fs::write(&tarball, busybox_tarball()).expect("write tarball");
        host.cfg.images.insert("tiny".to_string(), tarball);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let images = list_names(&host.images_dir());
            assert_eq!(images.len(), 2, "busybox and tiny are cached: {images:?}");
            assert_eq!(images[0], "busybox+100000");
            assert!(images[1].starts_with("tiny@"), "{images:?}");

            // The generated /etc files replace the image's symlink and fill its gaps.
            let script = "cat /etc/image-marker; ls /bin/busybox-copy; ls /dev/null; \
                          cat /etc/hostname; grep -c tiny-one /etc/hosts; \
                          grep -c nameserver /etc/resolv.conf; echo done";
            let first = random_hex();
            runtime
                .run_silo(&first, 1, &shell_spec("tiny-one", "tiny", script))
                .await
                .expect("run silo on the tarball image");
            assert_eq!(wait_exit(&mut exits, &first, EXIT_WAIT).await.exit_code, 0);
            assert_eq!(
                read_stdout(&host, &first),
                format!("{IMAGE_MARKER}/bin/busybox-copy\n/dev/null\ntiny-one\n1\n1\ndone\n")
            );

            // A second silo shares the cached image; nothing is unpacked again. Its own
            // /etc/hosts wins over the generated one.
            let second = random_hex();
            let mut own_hosts = shell_spec("tiny-two", "img://tiny", "cat /etc/hosts /etc/hostname");
            own_hosts.files.push(colex_proto::FileEntry {
                silo_path: "/etc/hosts".to_string(),
                content: b"10.9.9.9 custom\n".to_vec(),
                mode: 0o644,
                ..Default::default()
            });
            runtime
                .run_silo(&second, 1, &own_hosts)
                .await
                .expect("run a second silo");
            assert_eq!(wait_exit(&mut exits, &second, EXIT_WAIT).await.exit_code, 0);
            assert_eq!(read_stdout(&host, &second), "10.9.9.9 custom\ntiny-two\n");
            assert_eq!(list_names(&host.images_dir()), images);

            for silo_id in [&first, &second] {
                runtime
                    .remove_silo(silo_id, KILL_TIMEOUT)
                    .await
                    .expect("remove silo");
                assert!(host.silo_dirs_gone(silo_id));
            }
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn rejected_tarballs_leave_nothing() {
    if !has_root("rejected_tarballs_leave_nothing") {
        return;
    }
    in_netns(|| {
        let mut host = TestHost::with_state_subdir("colex-images-test", "cxi", SUBNET);
        let cases = [
            (
                "dotdot",
                TarBuilder::new()
                    .dir("bin/", 0o755)
                    .file("../x", b"escaped\n", 0o644)
                    .finish(),
                "entry \"../x\" contains a '..' component",
            ),
            (
                "absolute",
                TarBuilder::new()
                    .file("/etc/colex-evil", b"escaped\n", 0o644)
                    .finish(),
                "entry \"/etc/colex-evil\" has an absolute path",
            ),
            (
                "escape",
                TarBuilder::new()
                    .dir("etc/", 0o755)
                    .link("etc/escape", EntryType::Symlink, "../../outside")
                    .finish(),
                "symlink entry \"etc/escape\" -> \"../../outside\" points outside the image root",
            ),
        ];
        // Each tarball lies in a folder of its own, so a `../x` written next to the unpack
        // dir or the tarball would be found.
        for (name, archive, _) in &cases {
            let dir = host.path(name);
            std::fs::create_dir(&dir).expect("create tarball dir");
            let tarball = dir.join("image.tar");
            std::fs::write(&tarball, archive).expect("write tarball");
            host.cfg.images.insert(name.to_string(), tarball);
        }
        block_on(async {
            // A broken image does not stop the runtime; the silos that use it fail.
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime with broken images");
            for (name, _, expected) in &cases {
                let silo_id = random_hex();
                let err = runtime
                    .run_silo(&silo_id, 1, &shell_spec("broken", name, "true"))
                    .await
                    .expect_err("a silo on a rejected image fails");
                let message = err.to_string();
                assert!(message.contains(expected), "{name}: {message}");
                assert!(
                    message.contains(&format!("image {name} (")),
                    "{name}: {message}"
                );
                assert_nothing_created(&host, &silo_id);
                assert_eq!(
                    list_names(&host.path(name)),
                    ["image.tar"],
                    "{name}: nothing next to the tarball"
                );
            }
            assert_eq!(
                list_names(&host.images_dir()),
                ["busybox+100000"],
                "no cache dir and no temp dir of a rejected image"
            );
            assert!(!host.cfg.state_dir.join("x").exists());
            assert!(!Path::new("/etc/colex-evil").exists());
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn unknown_image_is_rejected() {
    if !has_root("unknown_image_is_rejected") {
        return;
    }
    in_netns(|| {
        let host = TestHost::with_state_subdir("colex-images-test", "cxi", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let err = runtime
                .run_silo(&silo_id, 1, &shell_spec("alpine", "img://alpine", "true"))
                .await
                .expect_err("no such image");
            assert_eq!(
                err.to_string(),
                "failed to prepare image: image \"alpine\" is not available on this host, which \
                 has busybox"
            );
            assert_nothing_created(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn unoffered_bind_is_rejected() {
    if !has_root("unoffered_bind_is_rejected") {
        return;
    }
    in_netns(|| {
        let mut host = TestHost::with_state_subdir("colex-images-test", "cxi", SUBNET);
        let data = host.path("data");
        std::fs::create_dir(&data).expect("create bind source");
        host.cfg.binds.insert(
            "data".to_string(),
            BindSource {
                path: data,
                writable: false,
            },
        );
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let mut spec = shell_spec("binder", "", "true");
            add_binds(&mut spec, &[("secrets", "/secrets")]);
            let err = runtime
                .run_silo(&silo_id, 1, &spec)
                .await
                .expect_err("bind id not offered");
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid bind for silo {silo_id}: bind id \"secrets\" is not offered by this \
                     host, which offers data"
                )
            );
            assert_nothing_created(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn read_only_bind_is_visible_and_not_writable() {
    if !has_root("read_only_bind_is_visible_and_not_writable") {
        return;
    }
    in_netns(|| {
        let mut host = TestHost::with_state_subdir("colex-images-test", "cxi", SUBNET);
        let data = host.path("data");
        std::fs::create_dir(&data).expect("create read-only source");
        std::fs::write(data.join("hello.txt"), "hello from the host\n").expect("write file");
        let scratch = host.path("scratch");
        std::fs::create_dir(&scratch).expect("create writable source");
        // Silo root is host uid 100000 in its user namespace, and writes as that user.
        nix::unistd::chown(
            &scratch,
            Some(nix::unistd::Uid::from_raw(100_000)),
            Some(nix::unistd::Gid::from_raw(100_000)),
        )
        .expect("give the writable source to silo root");
        let motd = host.path("motd");
        std::fs::write(&motd, "message of the day\n").expect("write file source");
        let offered = [
            ("data", data.clone(), false),
            ("scratch", scratch.clone(), true),
            ("motd", motd, false),
        ];
        host.cfg.binds = offered
            .into_iter()
            .map(|(id, path, writable)| (id.to_string(), BindSource { path, writable }))
            .collect::<BTreeMap<_, _>>();

        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let script = "cat /srv/data/hello.txt; \
                 if echo x > /srv/data/new 2>/dev/null; then echo data-writable; \
                 else echo data-read-only; fi; \
                 echo y > /scratch/out && echo scratch-written; \
                 cat /etc/motd; \
                 if echo z > /etc/motd 2>/dev/null; then echo motd-writable; \
                 else echo motd-read-only; fi";
            let mut spec = shell_spec("binder", "busybox", script);
            add_binds(
                &mut spec,
                &[
                    ("data", "/srv/data"),
                    ("scratch", "/scratch"),
                    ("motd", "/etc/motd"),
                ],
            );
            let silo_id = random_hex();
            runtime
                .run_silo(&silo_id, 1, &spec)
                .await
                .expect("run silo with binds");
            assert_eq!(
                wait_exit(&mut exits, &silo_id, EXIT_WAIT).await.exit_code,
                0
            );
            assert_eq!(
                read_stdout(&host, &silo_id),
                "hello from the host\ndata-read-only\nscratch-written\nmessage of the day\n\
                 motd-read-only\n"
            );
            assert!(!data.join("new").exists(), "the read-only bind was written");
            assert_eq!(
                std::fs::read_to_string(scratch.join("out")).expect("written through the bind"),
                "y\n"
            );

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            let mountinfo =
                std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
            let data_text = data.to_string_lossy().into_owned();
            assert!(
                !mountinfo.contains(&data_text),
                "a mount of {data_text} is left"
            );
            runtime.shutdown().await.expect("shutdown");
        });
    });
}
