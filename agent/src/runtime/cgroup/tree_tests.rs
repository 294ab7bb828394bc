//! Tests of host and silo cgroups against file trees in a temporary folder that imitate a
//! pure cgroup v2 host and a hybrid host with v1 controllers. A plain file system does not
//! create interface files or merge writes as cgroupfs does, so each test checks exactly what
//! the runtime wrote.
//!
//! NOTE: nothing here calls `kill_all` on a fake tree: without `cgroup.kill` it would signal
//! the pids listed in the fake `cgroup.procs`.

use std::fs;
use std::path::{Path, PathBuf};

use super::layout::Layout;
use super::limits::Limits;
use super::silo::CgroupStats;
use super::{CgroupError, HostCgroups};

const HOST_DIR: &str = "colex-h1";
const SILO_ID: &str = "3938a44e";
const CPU_COUNT: u32 = 2;
const PIDS_LIMIT: u64 = 4096;
const MEMORY_BYTES: u64 = 64 << 20;
const FAKE_PID: u32 = 4242;

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

fn write(path: impl AsRef<Path>, text: &str) {
    let path = path.as_ref();
    fs::write(path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
}

fn mkdir(path: impl AsRef<Path>) {
    let path = path.as_ref();
    fs::create_dir_all(path).unwrap_or_else(|err| panic!("create {}: {err}", path.display()));
}

fn layout_of(mountinfo: &str) -> Layout {
    Layout::from_mounts(mountinfo, |path| fs::read_to_string(path)).expect("layout")
}

/// A pure v2 tree: one cgroup2 mount whose root offers cpu, memory and pids.
struct V2Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cgroups: HostCgroups,
}

impl V2Tree {
    fn new() -> V2Tree {
        let dir = tempfile::tempdir().expect("create temp dir");
        let root = dir.path().join("cgroup");
        mkdir(&root);
        write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        );
        write(root.join("cgroup.subtree_control"), "cpuset memory\n");
        let mountinfo = format!(
            "25 20 0:22 / {} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n",
            root.display()
        );
        let cgroups =
            HostCgroups::new(layout_of(&mountinfo), HOST_DIR, CPU_COUNT, Some(PIDS_LIMIT));
        V2Tree {
            _dir: dir,
            root,
            cgroups,
        }
    }

    fn silo_dir(&self) -> PathBuf {
        self.root.join(HOST_DIR).join(SILO_ID)
    }
}

/// A hybrid tree: cgroup2 without controllers, cpu, cpuacct, memory and pids as v1
/// hierarchies.
struct HybridTree {
    _dir: tempfile::TempDir,
    base: PathBuf,
    cgroups: HostCgroups,
}

impl HybridTree {
    fn new() -> HybridTree {
        let dir = tempfile::tempdir().expect("create temp dir");
        let base = dir.path().to_path_buf();
        let mut mountinfo = String::new();
        for (id, controller) in ["cpu", "cpuacct", "memory", "pids", "systemd"]
            .iter()
            .enumerate()
        {
            mkdir(base.join(controller));
            let option = if *controller == "systemd" {
                "name=systemd"
            } else {
                controller
            };
            mountinfo.push_str(&format!(
                "{} 31 0:{} / {} rw,relatime - cgroup cgroup rw,{option}\n",
                32 + id,
                29 + id,
                base.join(controller).display()
            ));
        }
        mkdir(base.join("unified"));
        write(base.join("unified/cgroup.controllers"), "\n");
        mountinfo.push_str(&format!(
            "41 31 0:38 / {} rw,relatime - cgroup2 cgroup2 rw\n",
            base.join("unified").display()
        ));
        let cgroups =
            HostCgroups::new(layout_of(&mountinfo), HOST_DIR, CPU_COUNT, Some(PIDS_LIMIT));
        HybridTree {
            _dir: dir,
            base,
            cgroups,
        }
    }

    fn silo_dir(&self, hierarchy: &str) -> PathBuf {
        self.base.join(hierarchy).join(HOST_DIR).join(SILO_ID)
    }
}

#[tokio::test]
async fn v2_host_enables_controllers() {
    let tree = V2Tree::new();
    tree.cgroups.create().await.expect("create host cgroups");

    // memory was enabled already. Cpu and pids are added. cpuacct has no v2 controller.
    assert_eq!(read(tree.root.join("cgroup.subtree_control")), "+cpu +pids");
    let host_dir = tree.root.join(HOST_DIR);
    assert_eq!(
        read(host_dir.join("cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert_eq!(tree.cgroups.membership_host_dir(), host_dir);
    assert_eq!(tree.cgroups.host_dirs(), [host_dir]);
}

#[tokio::test]
async fn v2_silo_limits_written_exactly() {
    let tree = V2Tree::new();
    tree.cgroups.create().await.expect("create host cgroups");
    // A kernel that accounts swap has memory.swap.max in every cgroup with memory enabled.
    mkdir(tree.silo_dir());
    write(tree.silo_dir().join("memory.swap.max"), "max\n");

    let silo = tree.cgroups.silo(SILO_ID);
    let limits = tree.cgroups.limits(Some(25), Some(MEMORY_BYTES));
    silo.create(&limits).await.expect("create silo cgroup");
    silo.add_process(FAKE_PID).await.expect("add process");

    let dir = tree.silo_dir();
    assert_eq!(read(dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(dir.join("memory.max")), "67108864");
    assert_eq!(read(dir.join("memory.swap.max")), "0");
    assert_eq!(read(dir.join("pids.max")), "4096");
    assert_eq!(read(dir.join("cgroup.procs")), "4242");
    let written: Vec<String> = fs::read_dir(&dir)
        .expect("list silo dir")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written.len(), 5, "unexpected files: {written:?}");
}

#[tokio::test]
async fn v2_without_swap_accounting_writes_no_swap_file() {
    let tree = V2Tree::new();
    tree.cgroups.create().await.expect("create host cgroups");
    let silo = tree.cgroups.silo(SILO_ID);
    silo.create(&tree.cgroups.limits(None, Some(MEMORY_BYTES)))
        .await
        .expect("create silo cgroup");
    assert_eq!(read(tree.silo_dir().join("memory.max")), "67108864");
    assert!(!tree.silo_dir().join("memory.swap.max").exists());
    assert!(!tree.silo_dir().join("cpu.max").exists());
}

#[tokio::test]
async fn v2_stats_and_oom() {
    let tree = V2Tree::new();
    tree.cgroups.create().await.expect("create host cgroups");
    let silo = tree.cgroups.silo(SILO_ID);
    silo.create(&tree.cgroups.limits(None, Some(MEMORY_BYTES)))
        .await
        .expect("create silo cgroup");
    let dir = tree.silo_dir();
    write(
        dir.join("cpu.stat"),
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
    );
    write(dir.join("memory.current"), "1000000\n");
    write(
        dir.join("memory.stat"),
        "anon 700000\nfile 300000\ninactive_file 200000\n",
    );
    write(dir.join("cgroup.procs"), "17\n18\n");
    write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n",
    );

    let stats = silo.stats().await.expect("stats");
    assert_eq!(
        stats,
        CgroupStats {
            cpu_usec: Some(1500),
            memory_bytes: Some(800_000),
            processes: 2,
        }
    );
    assert_eq!(silo.oom_kills().await.expect("oom kills"), Some(1));
    assert_eq!(
        silo.exit_reason(137, 0).await.as_deref(),
        Some("OOM killed (memory limit 64 MiB)")
    );

    write(
        dir.join("memory.events"),
        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
    );
    assert_eq!(silo.exit_reason(137, 0).await, None);
}

#[tokio::test]
async fn hybrid_host_creates_dir_in_every_hierarchy() {
    let tree = HybridTree::new();
    tree.cgroups.create().await.expect("create host cgroups");
    for hierarchy in ["unified", "cpu", "cpuacct", "memory", "pids"] {
        assert!(
            tree.base.join(hierarchy).join(HOST_DIR).is_dir(),
            "no host dir in {hierarchy}"
        );
    }
    // The named systemd hierarchy has no controller colex uses.
    assert!(!tree.base.join("systemd").join(HOST_DIR).exists());
    // cgroup2 has no controllers here, so nothing is enabled there.
    assert!(!tree.base.join("unified/cgroup.subtree_control").exists());
    assert_eq!(
        tree.cgroups.membership_host_dir(),
        tree.base.join("unified").join(HOST_DIR)
    );
}

#[tokio::test]
async fn v1_silo_limits_written_exactly() {
    let tree = HybridTree::new();
    tree.cgroups.create().await.expect("create host cgroups");
    // A kernel with swap accounting has memory.memsw.limit_in_bytes in every memory cgroup.
    mkdir(tree.silo_dir("memory"));
    write(
        tree.silo_dir("memory").join("memory.memsw.limit_in_bytes"),
        "9223372036854771712\n",
    );

    let silo = tree.cgroups.silo(SILO_ID);
    silo.create(&tree.cgroups.limits(Some(25), Some(MEMORY_BYTES)))
        .await
        .expect("create silo cgroup");
    silo.add_process(FAKE_PID).await.expect("add process");

    let cpu = tree.silo_dir("cpu");
    assert_eq!(read(cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(cpu.join("cpu.cfs_quota_us")), "50000");
    let memory = tree.silo_dir("memory");
    assert_eq!(read(memory.join("memory.limit_in_bytes")), "67108864");
    assert_eq!(read(memory.join("memory.memsw.limit_in_bytes")), "67108864");
    assert_eq!(read(tree.silo_dir("pids").join("pids.max")), "4096");
    for hierarchy in ["unified", "cpu", "cpuacct", "memory", "pids"] {
        assert_eq!(
            read(tree.silo_dir(hierarchy).join("cgroup.procs")),
            "4242",
            "pid not moved into the {hierarchy} hierarchy"
        );
    }
    // No v2 limit file is written on a hybrid host.
    assert!(!tree.silo_dir("unified").join("cpu.max").exists());
    assert!(!tree.silo_dir("unified").join("memory.max").exists());
}

#[tokio::test]
async fn v1_stats_and_oom() {
    let tree = HybridTree::new();
    tree.cgroups.create().await.expect("create host cgroups");
    let silo = tree.cgroups.silo(SILO_ID);
    silo.create(&tree.cgroups.limits(None, Some(MEMORY_BYTES)))
        .await
        .expect("create silo cgroup");
    write(tree.silo_dir("cpuacct").join("cpuacct.usage"), "2500000\n");
    write(
        tree.silo_dir("memory").join("memory.usage_in_bytes"),
        "1000000\n",
    );
    write(
        tree.silo_dir("memory").join("memory.stat"),
        "cache 300000\nrss 700000\ntotal_inactive_file 100000\n",
    );
    write(tree.silo_dir("unified").join("cgroup.procs"), "17\n");
    write(
        tree.silo_dir("memory").join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    );

    let stats = silo.stats().await.expect("stats");
    assert_eq!(
        stats,
        CgroupStats {
            cpu_usec: Some(2500),
            memory_bytes: Some(900_000),
            processes: 1,
        }
    );
    assert_eq!(
        silo.exit_reason(1, 0).await.as_deref(),
        Some("exited with code 1 after 2 OOM-killed processes (memory limit 64 MiB)")
    );
    // Kills counted before a restart are not the restarted program's.
    assert_eq!(
        silo.exit_reason(137, 1).await.as_deref(),
        Some("OOM killed (memory limit 64 MiB)")
    );
    assert_eq!(silo.exit_reason(137, 2).await, None);
}

#[tokio::test]
async fn v1_unlimited_memory_has_no_limit() {
    let tree = HybridTree::new();
    tree.cgroups.create().await.expect("create host cgroups");
    let silo = tree.cgroups.silo(SILO_ID);
    silo.create(&Limits::default())
        .await
        .expect("create silo cgroup");
    write(
        tree.silo_dir("memory").join("memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    assert_eq!(silo.memory_limit().await.expect("limit"), None);
}

#[tokio::test]
async fn missing_controller_is_an_error() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let root = dir.path().join("unified");
    mkdir(&root);
    write(root.join("cgroup.controllers"), "\n");
    let mountinfo = format!("41 31 0:38 / {} rw - cgroup2 cgroup2 rw\n", root.display());
    let cgroups = HostCgroups::new(layout_of(&mountinfo), HOST_DIR, CPU_COUNT, Some(PIDS_LIMIT));
    cgroups.create().await.expect("create host cgroups");
    // Without the pids controller the host's pids limit is dropped, not an error.
    assert_eq!(cgroups.limits(None, None), Limits::default());

    let silo = cgroups.silo(SILO_ID);
    let err = silo
        .create(&cgroups.limits(None, Some(MEMORY_BYTES)))
        .await
        .expect_err("no memory controller");
    assert!(matches!(
        err,
        CgroupError::ControllerMissing {
            controller: "memory",
            limit: "resources.memory_bytes"
        }
    ));
    // Without limits, a cgroup2 dir for membership is all a silo needs.
    silo.create(&Limits::default())
        .await
        .expect("create without limits");
    let stats = silo.stats().await;
    assert!(stats.is_err(), "a fake dir without cpu.stat has no stats");
}

#[tokio::test]
async fn silo_names_span_hierarchies() {
    let tree = HybridTree::new();
    tree.cgroups.create().await.expect("create host cgroups");
    mkdir(tree.base.join("unified").join(HOST_DIR).join("00000001"));
    mkdir(tree.base.join("memory").join(HOST_DIR).join("00000002"));
    mkdir(tree.base.join("pids").join(HOST_DIR).join("00000001"));
    assert_eq!(
        tree.cgroups.silo_names().await.expect("list"),
        ["00000001", "00000002"]
    );
}
