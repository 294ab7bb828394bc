//! Recovery of acknowledged writes after a crash, given that applies are not synced one by one.
//!
//! A copy of the data directory taken while the node runs contains what SIGKILL would leave.
//! redb keeps the commits made with `Durability::None` in the process's memory until the next
//! durable commit, so the copy lacks them, while a clean shutdown would write them out. Each
//! test writes through a running node, copies its files, opens a node on the copy and checks
//! that every acknowledged write is there.

use std::path::Path;
use std::time::Duration;

use openraft::storage::RaftStateMachine;

use crate::raft::node::{LOG_FILE_NAME, NODE_ID_FILE_NAME, STATE_FILE_NAME};
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{RaftNode, StartMode};
use crate::state::Command;

/// Address recorded in the membership. No test listens on it.
const ADVERTISE_ADDR: &str = "127.0.0.1:7402";
/// Time a node on a copied data directory gets to apply the log again.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

fn register_host() -> Command {
    Command::RegisterHost {
        name: "host-a".to_owned(),
        address: "198.51.100.7".to_owned(),
        cpus: 4,
        memory_bytes: 8 << 30,
        attributes: Default::default(),
    }
}

fn put_silo(index: usize) -> Command {
    Command::PutSilo {
        name: format!("silo-{index}"),
        id: format!("{index:08x}"),
        spec: vec![7; 64],
        host: "host-a".to_owned(),
    }
}

/// Copies the node's files from `from` to `to` while the node may still run.
fn copy_data_dir(from: &Path, to: &Path) {
    let listing = std::fs::read_dir(from).expect("list data directory");
    let mut copied = Vec::new();
    for item in listing {
        let item = item.expect("read data directory entry");
        let name = item.file_name();
        std::fs::copy(item.path(), to.join(&name))
            .unwrap_or_else(|error| panic!("copy {name:?}: {error}"));
        copied.push(name.to_string_lossy().into_owned());
    }
    for required in [NODE_ID_FILE_NAME, LOG_FILE_NAME, STATE_FILE_NAME] {
        assert!(
            copied.iter().any(|name| name == required),
            "{required} missing from {copied:?}"
        );
    }
}

/// Writes silos `range` through `node`, each acknowledged before the next is sent.
async fn write_silos(node: &RaftNode, range: std::ops::Range<usize>) {
    for index in range {
        node.write(put_silo(index))
            .await
            .unwrap_or_else(|error| panic!("write silo {index}: {error}"));
    }
}

/// Opens a node on `dir`, waits until it has applied `index`, and checks that it has the host
/// and silos `0..silo_count`.
async fn check_recovered(dir: &Path, index: u64, silo_count: usize) {
    let node = RaftNode::open(dir, ADVERTISE_ADDR, StartMode::Resume)
        .await
        .expect("open node on the copied data directory");
    let mut applied = node.applied.clone();
    tokio::time::timeout(
        RECOVERY_TIMEOUT,
        applied.wait_for(|applied| *applied >= index),
    )
    .await
    .unwrap_or_else(|_| panic!("node on the copy did not apply index {index} in time"))
    .expect("applied watch closed");
    {
        let state = node.state.read().await;
        assert!(state.hosts.contains_key("host-a"), "host lost in the crash");
        let missing: Vec<usize> = (0..silo_count)
            .filter(|index| !state.silos.contains_key(&format!("silo-{index}")))
            .collect();
        assert!(
            missing.is_empty(),
            "acknowledged silos lost in the crash: {missing:?}"
        );
    }
    node.shutdown().await.expect("shutdown node on the copy");
}

/// Returns the last applied index that `state.redb` in `dir` holds on its own.
async fn stored_last_applied(dir: &Path) -> Option<u64> {
    let mut state_machine = StateMachineStore::open(&dir.join(STATE_FILE_NAME))
        .await
        .expect("open copied state machine");
    let (last_applied, _) = state_machine.applied_state().await.expect("applied state");
    last_applied.map(|log_id| log_id.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_keeps_acknowledged_writes() {
    const SILOS: usize = 40;
    let dir = tempfile::tempdir().expect("temporary directory");
    let crashed = tempfile::tempdir().expect("temporary directory");
    let node = RaftNode::open(dir.path(), ADVERTISE_ADDR, StartMode::Bootstrap)
        .await
        .expect("open node");
    node.write(register_host()).await.expect("register host");
    write_silos(&node, 0..SILOS).await;
    let last_index = *node.applied.borrow();

    copy_data_dir(dir.path(), crashed.path());
    node.shutdown().await.expect("shutdown");

    // The rows of the last writes are only in the log, so recovery must apply it again.
    let probe = tempfile::tempdir().expect("temporary directory");
    copy_data_dir(crashed.path(), probe.path());
    let stored = stored_last_applied(probe.path()).await;
    assert!(
        stored < Some(last_index),
        "state.redb already synced index {last_index}, so this test checks nothing"
    );

    check_recovered(crashed.path(), last_index, SILOS).await;
}

/// A snapshot is built and the log purged up to it, then more writes follow. The copy must
/// still hold every entry after the state's last synced apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_purge_keeps_writes() {
    const WAIT: Duration = Duration::from_secs(20);
    const SILOS_BEFORE_SNAPSHOT: usize = 20;
    const SILOS_AFTER_SNAPSHOT: usize = 20;
    const SILOS_AFTER_PURGE: usize = 5;
    let dir = tempfile::tempdir().expect("temporary directory");
    let crashed = tempfile::tempdir().expect("temporary directory");
    let node = RaftNode::open(dir.path(), ADVERTISE_ADDR, StartMode::Bootstrap)
        .await
        .expect("open node");
    node.write(register_host()).await.expect("register host");
    write_silos(&node, 0..SILOS_BEFORE_SNAPSHOT).await;
    let snapshot_index = *node.applied.borrow();

    node.raft
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    let metrics = node
        .raft
        .wait(Some(WAIT))
        .metrics(
            |metrics| metrics.snapshot.map(|log_id| log_id.index) >= Some(snapshot_index),
            "snapshot built",
        )
        .await
        .expect("snapshot built");
    let after_snapshot = SILOS_BEFORE_SNAPSHOT + SILOS_AFTER_SNAPSHOT;
    write_silos(&node, SILOS_BEFORE_SNAPSHOT..after_snapshot).await;
    node.raft
        .trigger()
        .purge_log(snapshot_index)
        .await
        .expect("trigger purge");
    node.raft
        .wait(Some(WAIT))
        .purged(metrics.snapshot, "log purged")
        .await
        .expect("log purged");
    let total = after_snapshot + SILOS_AFTER_PURGE;
    write_silos(&node, after_snapshot..total).await;
    let last_index = *node.applied.borrow();

    copy_data_dir(dir.path(), crashed.path());
    node.shutdown().await.expect("shutdown");

    check_recovered(crashed.path(), last_index, total).await;
}
