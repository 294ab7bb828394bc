//! Tables of `state.redb` and the blocking functions that read and write them.
//!
//! The silos and hosts tables contain one row per [`ClusterState`] record, the JSON encoding of
//! the record keyed by its name. The meta table contains the last applied log id, the last
//! membership, the current snapshot and the cluster network.

use openraft::{LogId, SnapshotMeta, StoredMembership};
use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::state_machine::StateMachineError;
use super::{Node, NodeId};
use crate::blobs::StoredContent;
use crate::security_state::SecurityState;
use crate::state::{ClusterNetwork, ClusterState, HostRecord, SiloRecord};

pub(super) const SILOS_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("silos");
pub(super) const HOSTS_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
pub(super) const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Stored file contents by SHA-256 in hex, each the JSON of a `StoredContent`.
pub(super) const FILE_CONTENTS_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("file_contents");

/// `Option<LogId<NodeId>>` of the last entry applied to the tables.
const LAST_APPLIED_KEY: &str = "last_applied";
/// `StoredMembership<NodeId, Node>` of the last membership entry applied.
const LAST_MEMBERSHIP_KEY: &str = "last_membership";
/// `SnapshotMeta<NodeId, Node>` of the current snapshot.
const SNAPSHOT_META_KEY: &str = "snapshot_meta";
/// `ClusterNetwork` set at bootstrap; absent for the default network.
const CLUSTER_NETWORK_KEY: &str = "cluster_network";
/// `SecurityState`: authority, tokens, certificates and revocations; absent before any.
const SECURITY_KEY: &str = "security";
/// Data of the current snapshot: a JSON-encoded `SnapshotContent`.
const SNAPSHOT_DATA_KEY: &str = "snapshot_data";

/// Everything the state machine keeps, as read from one transaction.
#[derive(Debug, Clone, Default)]
pub(super) struct StoredState {
    pub state: ClusterState,
    pub last_applied: Option<LogId<NodeId>>,
    pub last_membership: StoredMembership<NodeId, Node>,
}

/// The current snapshot as stored in the meta table.
#[derive(Debug)]
pub(super) struct StoredSnapshot {
    pub meta: SnapshotMeta<NodeId, Node>,
    pub data: Vec<u8>,
}

/// A change to one row of the silos or hosts table.
#[derive(Debug)]
pub(super) enum RowWrite {
    /// Insert or replace the row with this JSON value.
    Put(String, Vec<u8>),
    Delete(String),
}

/// Row changes and meta values that one apply commits together.
#[derive(Debug, Default)]
pub(super) struct AppliedWrites {
    pub silos: Vec<RowWrite>,
    pub hosts: Vec<RowWrite>,
    pub file_contents: Vec<RowWrite>,
    pub last_applied: Option<LogId<NodeId>>,
    /// `Some` when the applied entries included a membership entry.
    pub last_membership: Option<StoredMembership<NodeId, Node>>,
    /// `Some` when the applied entries set the cluster network.
    pub network: Option<ClusterNetwork>,
    /// `Some` when the applied entries changed the security state.
    pub security: Option<SecurityState>,
}

/// Creates the tables so later read transactions find them.
pub(super) fn create_tables(transaction: &WriteTransaction) -> Result<(), redb::Error> {
    transaction.open_table(SILOS_TABLE)?;
    transaction.open_table(HOSTS_TABLE)?;
    transaction.open_table(META_TABLE)?;
    transaction.open_table(FILE_CONTENTS_TABLE)?;
    Ok(())
}

/// Reads the cluster state rows and the applied meta values.
pub(super) fn read_stored_state(
    transaction: &ReadTransaction,
) -> Result<StoredState, StateMachineError> {
    let mut state = ClusterState::default();

    let silos = transaction
        .open_table(SILOS_TABLE)
        .map_err(redb::Error::from)?;
    for row in silos.iter().map_err(redb::Error::from)? {
        let (name, value) = row.map_err(redb::Error::from)?;
        let record: SiloRecord = decode("silo row", name.value(), value.value())?;
        state.silos.insert(name.value().to_owned(), record);
    }

    let hosts = transaction
        .open_table(HOSTS_TABLE)
        .map_err(redb::Error::from)?;
    for row in hosts.iter().map_err(redb::Error::from)? {
        let (name, value) = row.map_err(redb::Error::from)?;
        let record: HostRecord = decode("host row", name.value(), value.value())?;
        state.hosts.insert(name.value().to_owned(), record);
    }

    let file_contents = transaction
        .open_table(FILE_CONTENTS_TABLE)
        .map_err(redb::Error::from)?;
    for row in file_contents.iter().map_err(redb::Error::from)? {
        let (hash, value) = row.map_err(redb::Error::from)?;
        let content: StoredContent = decode("file content row", hash.value(), value.value())?;
        state.file_contents.insert(hash.value().to_owned(), content);
    }
    state.rebuild_content_users();

    let meta = transaction
        .open_table(META_TABLE)
        .map_err(redb::Error::from)?;
    let last_applied = read_meta(&meta, LAST_APPLIED_KEY)?.flatten();
    let last_membership = read_meta(&meta, LAST_MEMBERSHIP_KEY)?.unwrap_or_default();
    state.network = read_meta(&meta, CLUSTER_NETWORK_KEY)?;
    state.security = read_meta(&meta, SECURITY_KEY)?.unwrap_or_default();

    Ok(StoredState {
        state,
        last_applied,
        last_membership,
    })
}

/// Writes the rows and meta values of one apply into `transaction`.
pub(super) fn write_applied(
    transaction: &WriteTransaction,
    writes: &AppliedWrites,
) -> Result<(), StateMachineError> {
    let mut silos = transaction
        .open_table(SILOS_TABLE)
        .map_err(redb::Error::from)?;
    write_rows(&mut silos, &writes.silos)?;
    let mut hosts = transaction
        .open_table(HOSTS_TABLE)
        .map_err(redb::Error::from)?;
    write_rows(&mut hosts, &writes.hosts)?;
    if !writes.file_contents.is_empty() {
        let mut file_contents = transaction
            .open_table(FILE_CONTENTS_TABLE)
            .map_err(redb::Error::from)?;
        write_rows(&mut file_contents, &writes.file_contents)?;
    }

    let mut meta = transaction
        .open_table(META_TABLE)
        .map_err(redb::Error::from)?;
    write_meta(&mut meta, LAST_APPLIED_KEY, &writes.last_applied)?;
    if let Some(membership) = &writes.last_membership {
        write_meta(&mut meta, LAST_MEMBERSHIP_KEY, membership)?;
    }
    if let Some(network) = &writes.network {
        write_meta(&mut meta, CLUSTER_NETWORK_KEY, network)?;
    }
    if let Some(security) = &writes.security {
        write_meta(&mut meta, SECURITY_KEY, security)?;
    }
    Ok(())
}

/// Replaces every row and meta value with those of a snapshot, and makes it the current one.
pub(super) fn write_installed(
    transaction: &WriteTransaction,
    state: &ClusterState,
    meta: &SnapshotMeta<NodeId, Node>,
    data: &[u8],
) -> Result<(), StateMachineError> {
    let mut silos = transaction
        .open_table(SILOS_TABLE)
        .map_err(redb::Error::from)?;
    silos.retain(|_, _| false).map_err(redb::Error::from)?;
    for (name, record) in &state.silos {
        let encoded = encode("silo row", record)?;
        silos
            .insert(name.as_str(), encoded.as_slice())
            .map_err(redb::Error::from)?;
    }

    let mut hosts = transaction
        .open_table(HOSTS_TABLE)
        .map_err(redb::Error::from)?;
    hosts.retain(|_, _| false).map_err(redb::Error::from)?;
    for (name, record) in &state.hosts {
        let encoded = encode("host row", record)?;
        hosts
            .insert(name.as_str(), encoded.as_slice())
            .map_err(redb::Error::from)?;
    }

    let mut file_contents = transaction
        .open_table(FILE_CONTENTS_TABLE)
        .map_err(redb::Error::from)?;
    file_contents.retain(|_, _| false).map_err(redb::Error::from)?;
    for (hash, content) in &state.file_contents {
        let encoded = encode("file content row", content)?;
        file_contents
            .insert(hash.as_str(), encoded.as_slice())
            .map_err(redb::Error::from)?;
    }

    let mut meta_table = transaction
        .open_table(META_TABLE)
        .map_err(redb::Error::from)?;
    write_meta(&mut meta_table, LAST_APPLIED_KEY, &meta.last_log_id)?;
    write_meta(&mut meta_table, LAST_MEMBERSHIP_KEY, &meta.last_membership)?;
    match &state.network {
        Some(network) => write_meta(&mut meta_table, CLUSTER_NETWORK_KEY, network)?,
        None => {
            meta_table.remove(CLUSTER_NETWORK_KEY).map_err(redb::Error::from)?;
        }
    }
    write_meta(&mut meta_table, SECURITY_KEY, &state.security)?;
    write_snapshot(&mut meta_table, meta, data)
}

/// Reads the current snapshot's meta and data, if a snapshot was built or installed.
pub(super) fn read_current_snapshot(
    transaction: &ReadTransaction,
) -> Result<Option<StoredSnapshot>, StateMachineError> {
    let meta_table = transaction
        .open_table(META_TABLE)
        .map_err(redb::Error::from)?;
    let Some(meta) = read_meta(&meta_table, SNAPSHOT_META_KEY)? else {
        return Ok(None);
    };
    let data = meta_table
        .get(SNAPSHOT_DATA_KEY)
        .map_err(redb::Error::from)?
        .ok_or(StateMachineError::MissingSnapshotData)?
        .value()
        .to_vec();
    Ok(Some(StoredSnapshot { meta, data }))
}

/// Makes a freshly built snapshot the current one, unless the current one is newer.
///
/// A build reads the tables while apply and install go on. A snapshot installed from the leader
/// in the meantime can therefore be ahead of the one just built, and is then kept.
pub(super) fn store_built_snapshot(
    transaction: &WriteTransaction,
    meta: &SnapshotMeta<NodeId, Node>,
    data: &[u8],
) -> Result<bool, StateMachineError> {
    let mut meta_table = transaction
        .open_table(META_TABLE)
        .map_err(redb::Error::from)?;
    let current: Option<SnapshotMeta<NodeId, Node>> = read_meta(&meta_table, SNAPSHOT_META_KEY)?;
    if current.is_some_and(|current| current.last_log_id > meta.last_log_id) {
        return Ok(false);
    }
    write_snapshot(&mut meta_table, meta, data)?;
    Ok(true)
}

/// Encodes the row of a changed record, or a delete when the record no longer exists.
pub(super) fn row_write<T: Serialize>(
    what: &'static str,
    name: &str,
    record: Option<&T>,
) -> Result<RowWrite, StateMachineError> {
    match record {
        Some(record) => Ok(RowWrite::Put(name.to_owned(), encode(what, record)?)),
        None => Ok(RowWrite::Delete(name.to_owned())),
    }
}

pub(super) fn encode<T: Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StateMachineError> {
    serde_json::to_vec(value).map_err(|source| StateMachineError::Encode { what, source })
}

fn decode<T: DeserializeOwned>(
    what: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StateMachineError> {
    serde_json::from_slice(bytes).map_err(|source| StateMachineError::Decode {
        what,
        key: key.to_owned(),
        source,
    })
}

fn write_rows(table: &mut Table<&str, &[u8]>, rows: &[RowWrite]) -> Result<(), StateMachineError> {
    for row in rows {
        match row {
            RowWrite::Put(name, encoded) => {
                table
                    .insert(name.as_str(), encoded.as_slice())
                    .map_err(redb::Error::from)?;
            }
            RowWrite::Delete(name) => {
                table.remove(name.as_str()).map_err(redb::Error::from)?;
            }
        }
    }
    Ok(())
}

fn write_snapshot(
    meta_table: &mut Table<&str, &[u8]>,
    meta: &SnapshotMeta<NodeId, Node>,
    data: &[u8],
) -> Result<(), StateMachineError> {
    write_meta(meta_table, SNAPSHOT_META_KEY, meta)?;
    meta_table
        .insert(SNAPSHOT_DATA_KEY, data)
        .map_err(redb::Error::from)?;
    Ok(())
}

fn read_meta<T, M>(meta_table: &M, key: &'static str) -> Result<Option<T>, StateMachineError>
where
    T: DeserializeOwned,
    M: ReadableTable<&'static str, &'static [u8]>,
{
    match meta_table.get(key).map_err(redb::Error::from)? {
        Some(value) => Ok(Some(decode("meta value", key, value.value())?)),
        None => Ok(None),
    }
}

fn write_meta<T: Serialize>(
    meta_table: &mut Table<&str, &[u8]>,
    key: &'static str,
    value: &T,
) -> Result<(), StateMachineError> {
    let encoded = encode(key, value)?;
    meta_table
        .insert(key, encoded.as_slice())
        .map_err(redb::Error::from)?;
    Ok(())
}
