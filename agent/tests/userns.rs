//! Root integration tests of the silos' user namespaces and capability set: the id map seen
//! from the host and from inside, image and bind owners, and Docker's default capabilities.
//!
//! Each test runs its runtime in a fresh network namespace made by a dedicated thread, so the
//! bridge and veths vanish with the thread's namespace. Names carry a random part, so tests run
//! in parallel. Guards remove the state dir and the host's cgroup dirs, also when a test fails.
//! Without root the tests are skipped, unless CI=true, where they fail.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use colex_agent::runtime::{BindSource, Runtime};
use tar::EntryType;

mod common;
use common::*;

const SUBNET: &str = "10.69.9.0/24";
/// Host uid and gid of silo root with the default id map.
const SILO_ROOT_HOST_ID: u32 = 100_000;
/// Docker's default capability set without CAP_NET_RAW, as the `Cap*` lines of
/// `/proc/PID/status` print it: what a silo without `grants.raw_sockets` keeps.
const DOCKER_CAPABILITY_MASK: &str = "00000000a80405fb";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Returns `/proc/PID/uid_map` with its columns separated by single spaces.
fn uid_map(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).expect("read uid_map");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Returns the owner uid and gid of `path` without following a symlink.
fn owner(path: &Path) -> (u32, u32) {
    let metadata = std::fs::symlink_metadata(path)
        .unwrap_or_else(|err| panic!("stat {}: {err}", path.display()));
    (metadata.uid(), metadata.gid())
}

/// Appends a tar entry with the given owner, mode and content.
fn append(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    (uid, gid, mode): (u64, u64, u32),
    content: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_uid(uid);
    header.set_gid(gid);
    header.set_mode(mode);
    header.set_size(content.len() as u64);
    header.set_mtime(1_700_000_000);
    builder
        .append_data(&mut header, name, content)
        .expect("append entry");
}

/// One tar entry: name, type, owner uid, gid and mode, and content.
type TarEntry<'a> = (&'a str, EntryType, (u64, u64, u32), &'a [u8]);

/// Returns an image tarball with the host's busybox, a file owned by 1000:1000, a setuid file,
/// and a file in dirs the archive does not list.
fn owners_tarball() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).expect("read the host's busybox");
    let script: &[u8] = b"#!/bin/sh\n";
    // Owner uid, gid and mode of each entry. No entries for opt/ and opt/app/: the unpacker
    // creates them.
    let entries: [TarEntry<'_>; 6] = [
        ("bin/", EntryType::Directory, (0, 0, 0o755), b""),
        ("bin/busybox", EntryType::Regular, (0, 0, 0o755), &busybox),
        ("data/", EntryType::Directory, (1000, 1000, 0o750), b""),
        (
            "data/owned",
            EntryType::Regular,
            (1000, 1000, 0o640),
            b"mine\n",
        ),
        ("data/tool", EntryType::Regular, (0, 0, 0o4755), script),
        ("opt/app/run", EntryType::Regular, (0, 0, 0o755), script),
    ];
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, owner_and_mode, content) in entries {
        append(&mut builder, name, kind, owner_and_mode, content);
    }

    let mut sh = tar::Header::new_gnu();
    sh.set_entry_type(EntryType::Symlink);
    sh.set_uid(0);
    sh.set_gid(0);
    sh.set_mode(0o777);
    sh.set_size(0);
    builder
        .append_link(&mut sh, "bin/sh", "busybox")
        .expect("append symlink");
    builder.into_inner().expect("finish archive")
}

/// Returns the cache dir of tarball image `name` in the host's image cache.
fn tarball_cache_dir(host: &TestHost, name: &str) -> PathBuf {
    let names = list_names(&host.images_dir());
    let dir = names
        .iter()
        .find(|entry| entry.starts_with(&format!("{name}@")))
        .unwrap_or_else(|| panic!("no cache dir of {name} in {names:?}"));
    host.images_dir().join(dir)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn silo_root_is_host_uid_100000() {
    if !has_root("silo_root_is_host_uid_100000") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-userns-test", "cxu", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let images = list_names(&host.images_dir());
            assert_eq!(images, ["busybox+100000"], "the cache dir names the map");

            let silo_id = random_hex();
            let script = "id -u; touch /etc/created && echo created; ls -ln /bin/busybox; \
                          ls /sys/class/net; echo end; exec sleep 1000";
            runtime
                .run_silo(&silo_id, 1, &shell_spec("mapped", "busybox", script))
                .await
                .expect("run silo");
            let stdout = wait_for_stdout(&host, &silo_id, "end\n");
            let pid = program_pid(&host, &silo_id);
            let host_uids = status_field(pid, "Uid");
            let host_gids = status_field(pid, "Gid");
            let map = uid_map(pid);
            let created = host.silo_dir(&silo_id).join("upper/etc/created");
            let created_owner = owner(&created);

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            assert!(host.silo_dirs_gone(&silo_id), "silo dir left");
            runtime.shutdown().await.expect("shutdown");

            assert_eq!(host_uids, "100000\t100000\t100000\t100000");
            assert_eq!(host_gids, "100000\t100000\t100000\t100000");
            assert_eq!(map, "0 100000 65536");
            let lines: Vec<&str> = stdout.lines().collect();
            assert_eq!(lines[0], "0", "id -u inside: {stdout:?}");
            assert_eq!(lines[1], "created", "stdout: {stdout:?}");
            let ls_fields: Vec<&str> = lines[2].split_whitespace().collect();
            assert_eq!(ls_fields[2], "0", "owner of /bin/busybox: {}", lines[2]);
            assert_eq!(ls_fields[3], "0", "group of /bin/busybox: {}", lines[2]);
            assert!(
                lines.contains(&"lo"),
                "sysfs of the silo's network namespace is mounted: {stdout:?}"
            );
            assert_eq!(created_owner, (SILO_ROOT_HOST_ID, SILO_ROOT_HOST_ID));
        });
    });
}

#[test]
fn program_has_dockers_capabilities() {
    if !has_root("program_has_dockers_capabilities") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-userns-test", "cxu", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let script = "mkdir -p /mnt; echo mkdir=$?; mount -t tmpfs none /mnt 2>/dev/null; \
                          echo mount=$?; echo end; exec sleep 1000";
            runtime
                .run_silo(&silo_id, 1, &shell_spec("capable", "busybox", script))
                .await
                .expect("run silo");
            let stdout = wait_for_stdout(&host, &silo_id, "end\n");
            let pid = program_pid(&host, &silo_id);
            let fields = ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"]
                .map(|field| status_field(pid, field));

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            runtime.shutdown().await.expect("shutdown");

            let [bounding, effective, permitted, inheritable, ambient] = fields;
            assert_eq!(bounding, DOCKER_CAPABILITY_MASK, "CapBnd");
            assert_eq!(effective, DOCKER_CAPABILITY_MASK, "CapEff");
            assert_eq!(permitted, DOCKER_CAPABILITY_MASK, "CapPrm");
            assert_eq!(inheritable, DOCKER_CAPABILITY_MASK, "CapInh");
            assert_eq!(ambient, "0000000000000000", "CapAmb");
            assert!(stdout.contains("mkdir=0\n"), "stdout: {stdout:?}");
            assert!(stdout.contains("mount="), "stdout: {stdout:?}");
            assert!(
                !stdout.contains("mount=0\n"),
                "mounting tmpfs succeeded without CAP_SYS_ADMIN: {stdout:?}"
            );
        });
    });
}

#[test]
fn disabled_user_namespaces_keep_host_ids() {
    if !has_root("disabled_user_namespaces_keep_host_ids") {
        return;
    }
    in_netns(|| {
        let mut host = TestHost::new("colex-userns-test", "cxu", SUBNET);
        host.cfg.id_map = None;
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            assert_eq!(list_names(&host.images_dir()), ["busybox"]);

            let silo_id = random_hex();
            let script = "id -u; ls -ln /bin/busybox; echo end; exec sleep 1000";
            runtime
                .run_silo(&silo_id, 1, &shell_spec("unmapped", "busybox", script))
                .await
                .expect("run silo");
            let stdout = wait_for_stdout(&host, &silo_id, "end\n");
            let pid = program_pid(&host, &silo_id);
            let host_uids = status_field(pid, "Uid");
            let map = uid_map(pid);
            let bounding = status_field(pid, "CapBnd");
            let effective = status_field(pid, "CapEff");

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            runtime.shutdown().await.expect("shutdown");

            assert_eq!(map, "0 0 4294967295");
            assert_eq!(host_uids, "0\t0\t0\t0");
            assert_eq!(bounding, DOCKER_CAPABILITY_MASK, "CapBnd");
            assert_eq!(effective, DOCKER_CAPABILITY_MASK, "CapEff");
            assert!(stdout.starts_with("0\n"), "stdout: {stdout:?}");
        });
    });
}

#[test]
fn tarball_owners_are_shifted() {
    if !has_root("tarball_owners_are_shifted") {
        return;
    }
    in_netns(|| {
        let mut host = TestHost::with_state_subdir("colex-userns-test", "cxu", SUBNET);
        let tarball = host.path("owners.tar");
        std::fs::write(&tarball, owners_tarball()).expect("write tarball");
        host.cfg.images.insert("owners".to_string(), tarball);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let cache = tarball_cache_dir(&host, "owners");
            let cache_name = cache
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();

            let silo_id = random_hex();
            let script = "/bin/busybox stat -c %u:%g /data/owned /data/tool /opt/app /; \
                          echo end; exec /bin/busybox sleep 1000";
            runtime
                .run_silo(&silo_id, 1, &shell_spec("owners", "owners", script))
                .await
                .expect("run silo on the tarball image");
            let stdout = wait_for_stdout(&host, &silo_id, "end\n");
            let pid = program_pid(&host, &silo_id);
            let through_proc = owner(&PathBuf::from(format!("/proc/{pid}/root/data/owned")));

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            runtime.shutdown().await.expect("shutdown");

            assert!(cache_name.ends_with("+100000"), "{cache_name}");
            assert_eq!(stdout, "1000:1000\n0:0\n0:0\n0:0\nend\n");
            assert_eq!(through_proc, (101_000, 101_000));
            assert_eq!(owner(&cache.join("data/owned")), (101_000, 101_000));
            assert_eq!(owner(&cache.join("data")), (101_000, 101_000));
            assert_eq!(owner(&cache.join("bin/sh")), (100_000, 100_000));
            assert_eq!(owner(&cache.join("opt")), (100_000, 100_000));
            assert_eq!(owner(&cache.join("opt/app")), (100_000, 100_000));
            assert_eq!(owner(&cache), (100_000, 100_000));
            let tool_mode = std::fs::metadata(cache.join("data/tool"))
                .expect("stat tool")
                .permissions()
                .mode();
            assert_eq!(
                tool_mode & 0o7777,
                0o4755,
                "the setuid bit survives the shift"
            );
        });
    });
}

#[test]
fn binds_show_host_owners() {
    if !has_root("binds_show_host_owners") {
        return;
    }
    in_netns(|| {
        let mut host = TestHost::with_state_subdir("colex-userns-test", "cxu", SUBNET);
        let motd = host.path("motd");
        std::fs::write(&motd, "from the host\n").expect("write file source");
        let mapped = host.path("mapped");
        std::fs::create_dir(&mapped).expect("create writable source");
        nix::unistd::chown(
            &mapped,
            Some(nix::unistd::Uid::from_raw(SILO_ROOT_HOST_ID)),
            Some(nix::unistd::Gid::from_raw(SILO_ROOT_HOST_ID)),
        )
        .expect("give the source to silo root");
        let host_owned = host.path("host-owned");
        std::fs::create_dir(&host_owned).expect("create host-owned source");
        host.cfg.binds = [
            ("motd", motd, false),
            ("mapped", mapped.clone(), true),
            ("host-owned", host_owned.clone(), true),
        ]
        .into_iter()
        .map(|(id, path, writable)| (id.to_string(), BindSource { path, writable }))
        .collect::<BTreeMap<_, _>>();

        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let script = "cat /etc/motd; stat -c %u:%g /etc/motd; \
                 echo y > /mapped/out && echo mapped-written; \
                 if echo z > /host-owned/out 2>/dev/null; then echo host-owned-written; \
                 else echo host-owned-denied; fi";
            let mut spec = shell_spec("binder", "busybox", script);
            add_binds(
                &mut spec,
                &[
                    ("motd", "/etc/motd"),
                    ("mapped", "/mapped"),
                    ("host-owned", "/host-owned"),
                ],
            );
            let silo_id = random_hex();
            runtime
                .run_silo(&silo_id, 1, &spec)
                .await
                .expect("run silo with binds");
            let exit = wait_exit(&mut exits, &silo_id, OUTPUT_WAIT).await;
            let stdout = read_stdout(&host, &silo_id);
            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            runtime.shutdown().await.expect("shutdown");

            assert_eq!(exit.exit_code, 0, "stdout: {stdout:?}");
            assert_eq!(
                stdout,
                "from the host\n65534:65534\nmapped-written\nhost-owned-denied\n"
            );
            assert_eq!(
                owner(&mapped.join("out")),
                (SILO_ROOT_HOST_ID, SILO_ROOT_HOST_ID)
            );
            assert!(!host_owned.join("out").exists());
        });
    });
}
