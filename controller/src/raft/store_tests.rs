//! Tests of the redb log store and state machine: openraft's conformance suite, and the
//! colex-specific behaviour the suite cannot check (commands, persistence across reopen).

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageError, StorageIOError, Vote,
};
use tempfile::TempDir;

use super::log_store::LogStore;
use super::node::{LOG_FILE_NAME, STATE_FILE_NAME};
use super::state_machine::StateMachineStore;
use super::{Node, NodeId, TypeConfig};
use crate::state::{Command, Response};

/// Makes a fresh log store and state machine in a new temporary directory for each suite test.
struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir =
            tempfile::tempdir().map_err(|error| StorageIOError::write(AnyError::new(&error)))?;
        let log_store = LogStore::open(&dir.path().join(LOG_FILE_NAME))
            .await
            .map_err(|error| StorageIOError::write_logs(AnyError::new(&error)))?;
        let state_machine = StateMachineStore::open(&dir.path().join(STATE_FILE_NAME))
            .await
            .map_err(|error| StorageIOError::write_state_machine(AnyError::new(&error)))?;
        Ok((dir, log_store, state_machine))
    }
}

/// The same with the log store of controller 1, which reports its own appends as leader
/// before their sync. The suite applies entries that it never appended, so its state machine
/// does not wait for the log.
struct LeaderStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for LeaderStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let (dir, log_store, state_machine) = RedbStoreBuilder.build().await?;
        Ok((dir, log_store.for_node(1), state_machine))
    }
}

#[test]
fn conformance_suite_passes() {
    // The suite starts its own tokio runtime for each case, so this is a plain test.
    Suite::test_all(RedbStoreBuilder).expect("openraft storage conformance suite");
    Suite::test_all(LeaderStoreBuilder).expect("openraft storage conformance suite, leader store");
}

#[tokio::test]
async fn leader_appends_sync_after_report() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut log_store = LogStore::open(&dir.path().join(LOG_FILE_NAME))
        .await
        .expect("open log store")
        .for_node(1);
    let sync = log_store.sync();

    // As leader of term 1, the append is reported before its sync, which follows.
    log_store.save_vote(&Vote::new_committed(1, 1)).await.expect("save vote");
    log_store
        .blocking_append([membership_entry(0), command_entry(1, register_host("host-a"))])
        .await
        .expect("append as leader");
    sync.wait_durable(1).await.expect("synced by the thread");

    // As follower of controller 2 in term 2, the append is synced before it returns.
    log_store.save_vote(&Vote::new_committed(2, 2)).await.expect("save vote");
    let from_leader = Entry {
        log_id: LogId::new(CommittedLeaderId::new(2, 2), 2),
        payload: EntryPayload::Normal(register_host("host-b")),
    };
    log_store.blocking_append([from_leader]).await.expect("append as follower");
    assert_eq!(sync.durable().map(|log_id| log_id.index), Some(2));
    let later = LogId::new(CommittedLeaderId::new(2, 2), 9);
    assert_eq!(sync.clamp_commit(Some(later)), sync.durable());
}

#[tokio::test]
async fn entries_are_applied_only_once_durable() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (sync, _thread) = super::log_sync::LogSync::start(None).expect("start the sync thread");
    let mut state_machine = open_state_machine(dir.path()).await.wait_for_log(sync.clone());
    let applied = state_machine.subscribe_applied();

    let applying = tokio::spawn(async move {
        state_machine
            .apply([command_entry(1, register_host("host-a"))])
            .await
            .map(|_| state_machine)
    });
    tokio::task::yield_now().await;
    assert!(!applying.is_finished(), "applied before the entry was durable");
    assert_eq!(*applied.borrow(), 0);

    sync.synced(log_id(1));
    applying.await.expect("apply task").expect("apply");
    assert_eq!(*applied.borrow(), 1);
}

fn log_id(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn command_entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(command),
    }
}

fn membership_entry(index: u64) -> Entry<TypeConfig> {
    let nodes = std::collections::BTreeMap::from([(
        1,
        Node {
            addr: "127.0.0.1:7000".to_owned(),
        },
    )]);
    let voters = std::collections::BTreeSet::from([1]);
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

fn register_host(name: &str) -> Command {
    Command::RegisterHost {
        name: name.to_owned(),
        address: "198.51.100.7".to_owned(),
        cpus: 4,
        memory_bytes: 8 << 30,
        attributes: Default::default(),
    }
}

fn put_silo(name: &str, id: &str) -> Command {
    Command::PutSilo {
        name: name.to_owned(),
        id: id.to_owned(),
        spec: vec![1, 2, 3],
        host: "host-a".to_owned(),
    }
}

async fn open_state_machine(dir: &Path) -> StateMachineStore {
    StateMachineStore::open(&dir.join(STATE_FILE_NAME))
        .await
        .expect("open state machine")
}

#[tokio::test]
async fn apply_updates_shared_state_and_watch() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut state_machine = open_state_machine(dir.path()).await;
    let shared = state_machine.shared_state();
    let applied = state_machine.subscribe_applied();

    let responses = state_machine
        .apply([
            membership_entry(0),
            command_entry(1, register_host("host-a")),
            command_entry(2, put_silo("web", "00000001")),
        ])
        .await
        .expect("apply");

    assert_eq!(
        responses,
        vec![
            Response::Empty,
            Response::HostRegistered { subnet_index: 1 },
            Response::SiloStored { generation: 1 },
        ]
    );
    assert_eq!(*applied.borrow(), 2);
    let state = shared.read().await;
    assert_eq!(state.hosts["host-a"].subnet_index, 1);
    assert_eq!(state.silos["web"].id, "00000001");
}

#[tokio::test]
async fn applied_rows_survive_reopen() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let mut state_machine = open_state_machine(dir.path()).await;
        state_machine
            .apply([
                membership_entry(0),
                command_entry(1, register_host("host-a")),
                command_entry(2, put_silo("web", "00000001")),
                command_entry(3, put_silo("db", "00000002")),
                command_entry(
                    4,
                    Command::DeleteSilo {
                        name: "db".to_owned(),
                        id: "00000002".to_owned(),
                    },
                ),
            ])
            .await
            .expect("apply");
    }

    let mut reopened = open_state_machine(dir.path()).await;
    let (last_applied, membership) = reopened.applied_state().await.expect("applied state");
    assert_eq!(last_applied, Some(log_id(4)));
    assert_eq!(membership.log_id(), &Some(log_id(0)));
    assert_eq!(*reopened.subscribe_applied().borrow(), 4);

    let shared = reopened.shared_state();
    let state = shared.read().await;
    assert!(state.hosts.contains_key("host-a"));
    assert!(state.silos.contains_key("web"));
    assert!(
        !state.silos.contains_key("db"),
        "deleted row must be gone after reopen"
    );
}

#[tokio::test]
async fn snapshot_install_replaces_state() {
    let leader_dir = tempfile::tempdir().expect("temporary directory");
    let follower_dir = tempfile::tempdir().expect("temporary directory");
    let mut leader = open_state_machine(leader_dir.path()).await;
    let mut follower = open_state_machine(follower_dir.path()).await;

    leader
        .apply([
            membership_entry(0),
            command_entry(1, register_host("host-a")),
            command_entry(2, put_silo("web", "00000001")),
        ])
        .await
        .expect("apply on leader");
    // The follower has a row that the snapshot does not contain, and installing must remove it.
    follower
        .apply([
            membership_entry(0),
            command_entry(1, register_host("stale-host")),
        ])
        .await
        .expect("apply on follower");

    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build snapshot");
    follower
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("install snapshot");

    let expected = leader.shared_state().read().await.clone();
    assert_eq!(**follower.shared_state().read().await, expected);
    assert_eq!(*follower.subscribe_applied().borrow(), 2);
    drop(follower);

    let reopened = open_state_machine(follower_dir.path()).await;
    assert_eq!(**reopened.shared_state().read().await, expected);
}

#[tokio::test]
async fn log_and_vote_survive_reopen() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(LOG_FILE_NAME);
    let vote = Vote::new_committed(3, 1);
    {
        let mut log_store = LogStore::open(&path).await.expect("open log store");
        log_store.save_vote(&vote).await.expect("save vote");
        log_store
            .blocking_append([
                membership_entry(0),
                command_entry(1, register_host("host-a")),
            ])
            .await
            .expect("append");
        log_store.purge(log_id(0)).await.expect("purge");
    }

    let mut reopened = LogStore::open(&path).await.expect("reopen log store");
    assert_eq!(reopened.read_vote().await.expect("read vote"), Some(vote));
    let log_state = reopened.get_log_state().await.expect("log state");
    assert_eq!(log_state.last_purged_log_id, Some(log_id(0)));
    assert_eq!(log_state.last_log_id, Some(log_id(1)));
    let entries = reopened
        .try_get_log_entries(0..10)
        .await
        .expect("read entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].payload,
        EntryPayload::Normal(register_host("host-a"))
    );
}

/// A `raft-log.redb` of a build that kept the entries in its `log` table opens with every entry
/// moved into the entries file, and the table empty.
#[tokio::test]
async fn table_entries_move_to_entries_file() {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};

    const OLD_LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join(LOG_FILE_NAME);
    {
        let database = redb::Database::create(&path).expect("create old database");
        let transaction = database.begin_write().expect("begin write");
        {
            let mut table = transaction.open_table(OLD_LOG_TABLE).expect("open table");
            for entry in [
                membership_entry(0),
                command_entry(1, register_host("host-a")),
            ] {
                let encoded = serde_json::to_vec(&entry).expect("encode entry");
                table
                    .insert(entry.log_id.index, encoded.as_slice())
                    .expect("insert entry");
            }
        }
        transaction.commit().expect("commit old entries");
    }

    for open in ["first open", "second open"] {
        let mut log_store = LogStore::open(&path).await.expect(open);
        let log_state = log_store.get_log_state().await.expect("log state");
        assert_eq!(log_state.last_log_id, Some(log_id(1)), "{open}");
        let entries = log_store
            .try_get_log_entries(0..10)
            .await
            .expect("read entries");
        assert_eq!(entries.len(), 2, "{open}");
        assert_eq!(
            entries[1].payload,
            EntryPayload::Normal(register_host("host-a")),
            "{open}"
        );
    }

    let database = redb::Database::open(&path).expect("open database");
    let transaction = database.begin_read().expect("begin read");
    let table = transaction.open_table(OLD_LOG_TABLE).expect("open table");
    assert_eq!(
        table.len().expect("table length"),
        0,
        "entries left in the table"
    );
}
