//! Tests of the file contents in the replicated state: stored once, users kept up to date with
//! the records, and removed in the entry that drops the last user.

use std::collections::BTreeSet;
use std::sync::Arc;

use colex_proto as proto;
use prost::Message;

use super::{sha256_hex, take_contents, NewContent};
use crate::state::{Change, ClusterState, Command, Desired, InstancePlacement, InstanceUpdate, Response, SiloStatus};

/// Returns the stored spec of silo `name` with one file of `content`, and the new content that
/// stores the file.
fn spec_with_file(name: &str, content: &[u8]) -> (Vec<u8>, NewContent) {
    let mut spec = proto::SiloSpec {
        name: name.to_owned(),
        files: vec![proto::FileEntry {
            silo_path: "/data".to_owned(),
            content: content.to_vec(),
            mode: 0o644,
            ..Default::default()
        }],
        ..Default::default()
    };
    let contents = take_contents(&mut spec).expect("small file");
    let (sha256, bytes) = contents.into_iter().next().expect("one content");
    (spec.encode_to_vec(), NewContent { sha256, bytes })
}

fn put(name: &str, spec: &[u8], id: &str) -> Command {
    Command::PutInstances {
        name: name.to_owned(),
        spec: spec.to_vec(),
        count: 1,
        instances: vec![InstanceUpdate {
            index: 0,
            id: id.to_owned(),
            placement: InstancePlacement::Host("a".to_owned()),
        }],
        rolling: Vec::new(),
    }
}

fn put_contents(content: &NewContent) -> Command {
    Command::PutFileContents {
        contents: vec![content.clone()],
    }
}

fn users(state: &ClusterState, content: &NewContent) -> Vec<String> {
    state.file_contents[&content.sha256].users.iter().cloned().collect()
}

/// Stops silo `name` and deletes its record, as `down` and the agent's report do.
fn down(state: &mut ClusterState, name: &str) -> Vec<Change> {
    state.apply(&Command::StopSilo { name: name.to_owned() });
    let id = state.silos[name].id.clone();
    let (response, changes) = state.apply(&Command::DeleteSilo {
        name: name.to_owned(),
        id,
    });
    assert_eq!(response, Response::SiloDeleted);
    changes
}

#[test]
fn shared_content_is_stored_once() {
    let mut state = ClusterState::default();
    let (spec, content) = spec_with_file("s0", &[7; 1000]);
    let mut commands = vec![put_contents(&content)];
    for index in 0..200 {
        commands.push(put(&format!("s{index}"), &spec, &format!("{index:08x}")));
    }
    let (response, changes) = state.apply(&Command::Batch { commands });
    let Response::Batched { responses } = response else {
        panic!("a batch has batched responses");
    };
    assert_eq!(responses[0], Response::FileContentsStored { added: 1 });
    assert!(responses[1..].iter().all(|response| *response == Response::InstancesStored { stopping: 0 }), "{responses:?}");
    assert!(changes.contains(&Change::FileContent(content.sha256.clone())), "{changes:?}");
    assert_eq!(state.file_contents.len(), 1);
    assert_eq!(state.file_content_totals(), (1, 1000));
    assert_eq!(users(&state, &content).len(), 200);

    // A later entry refers to the stored content without carrying it.
    let (response, _) = state.apply(&put("later", &spec, "000000aa"));
    assert_eq!(response, Response::InstancesStored { stopping: 0 });
    assert_eq!(users(&state, &content).len(), 201);
    let (response, _) = state.apply(&put_contents(&content));
    assert_eq!(response, Response::FileContentsStored { added: 0 }, "a stored content is not added again");
}

#[test]
fn last_user_removes_the_content() {
    let mut state = ClusterState::default();
    let (spec, content) = spec_with_file("web", b"shared");
    state.apply(&Command::Batch {
        commands: vec![put_contents(&content), put("web", &spec, "0000000a"), put("db", &spec, "0000000b")],
    });
    let changes = down(&mut state, "web");
    assert_eq!(users(&state, &content), vec!["db".to_owned()]);
    assert!(changes.contains(&Change::FileContentUsers(content.sha256.clone())), "{changes:?}");
    assert!(!changes.contains(&Change::FileContent(content.sha256.clone())), "the row stays: {changes:?}");

    let changes = down(&mut state, "db");
    assert!(state.file_contents.is_empty(), "removed in the entry that dropped the last user");
    assert!(changes.contains(&Change::FileContent(content.sha256.clone())), "{changes:?}");
    assert!(!changes.contains(&Change::FileContentUsers(content.sha256.clone())), "{changes:?}");
}

#[test]
fn pending_instance_stop_removes_the_content() {
    let mut state = ClusterState::default();
    let (spec, content) = spec_with_file("web", b"pending");
    let mut pending = put("web", &spec, "0000000a");
    if let Command::PutInstances { instances, .. } = &mut pending {
        instances[0].placement = InstancePlacement::Pending {
            reason: "no host".to_owned(),
        };
    }
    state.apply(&Command::Batch {
        commands: vec![put_contents(&content), pending],
    });
    assert_eq!(state.file_contents.len(), 1);
    state.apply(&Command::StopSilo { name: "web".to_owned() });
    assert!(state.silos.is_empty(), "a pending instance is deleted at once");
    assert!(state.file_contents.is_empty());
}

#[test]
fn new_spec_drops_the_old_content() {
    let mut state = ClusterState::default();
    let (old_spec, old) = spec_with_file("web", b"old");
    state.apply(&Command::Batch {
        commands: vec![put_contents(&old), put("web", &old_spec, "0000000a")],
    });
    let (new_spec, new) = spec_with_file("web", b"new");
    state.apply(&Command::Batch {
        commands: vec![put_contents(&new), put("web", &new_spec, "0000000b")],
    });
    let stored: BTreeSet<&String> = state.file_contents.keys().collect();
    assert_eq!(stored, BTreeSet::from([&new.sha256]));
}

#[test]
fn next_spec_keeps_its_content() {
    let mut state = ClusterState::default();
    let (old_spec, old) = spec_with_file("web", b"old");
    state.apply(&Command::Batch {
        commands: vec![put_contents(&old), put("web", &old_spec, "0000000a")],
    });
    state.apply(&Command::ReportStatus {
        host: "a".to_owned(),
        silo_id: "0000000a".to_owned(),
        status: SiloStatus {
            state: proto::SiloState::Up as i32,
            ..SiloStatus::default()
        },
    });
    // A rolling replacement keeps the running instance and stores the new spec as its next.
    let (new_spec, new) = spec_with_file("web", b"new");
    let rolling = Command::PutInstances {
        name: "web".to_owned(),
        spec: new_spec,
        count: 1,
        instances: Vec::new(),
        rolling: vec![0],
    };
    state.apply(&Command::Batch {
        commands: vec![put_contents(&new), rolling],
    });
    assert_eq!(users(&state, &old), vec!["web".to_owned()], "the running spec's content stays");
    assert_eq!(users(&state, &new), vec!["web".to_owned()], "the next spec's content stays");
    assert_eq!(state.silos["web"].desired, Desired::Run);

    state.apply(&Command::ReplaceInstance {
        name: "web".to_owned(),
        replaced_id: "0000000a".to_owned(),
        instance: InstanceUpdate {
            index: 0,
            id: "0000000b".to_owned(),
            placement: InstancePlacement::Host("a".to_owned()),
        },
    });
    let stored: BTreeSet<&String> = state.file_contents.keys().collect();
    assert_eq!(stored, BTreeSet::from([&new.sha256]), "the replaced spec's content is removed");
}

#[test]
fn missing_content_is_rejected() {
    let mut state = ClusterState::default();
    let (spec, content) = spec_with_file("web", b"never stored");
    let (response, changes) = state.apply(&put("web", &spec, "0000000a"));
    let Response::Rejected { reason } = response else {
        panic!("a spec without its content must be rejected: {response:?}");
    };
    assert!(reason.contains(&content.sha256), "{reason}");
    assert!(reason.contains("run up again"), "{reason}");
    assert!(changes.is_empty());
    assert!(state.silos.is_empty());
}

#[test]
fn unused_new_content_is_not_kept() {
    let mut state = ClusterState::default();
    let (_, content) = spec_with_file("web", b"nobody uses me");
    let (response, changes) = state.apply(&put_contents(&content));
    assert_eq!(response, Response::FileContentsStored { added: 1 });
    assert!(state.file_contents.is_empty());
    // Added and removed within the entry: the row is written as a delete.
    assert_eq!(changes, vec![Change::FileContent(content.sha256.clone()), Change::FileContent(content.sha256)]);
}

#[test]
fn specs_without_hashes_need_no_contents() {
    let mut state = ClusterState::default();
    let inline = proto::SiloSpec {
        name: "old".to_owned(),
        files: vec![proto::FileEntry {
            silo_path: "/data".to_owned(),
            content: b"inline, as written before contents were stored apart".to_vec(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (response, _) = state.apply(&put("old", &inline.encode_to_vec(), "0000000a"));
    assert_eq!(response, Response::InstancesStored { stopping: 0 });
    assert!(state.file_contents.is_empty());
}

#[test]
fn users_are_rebuilt_after_decoding() {
    let mut state = ClusterState::default();
    let (spec, content) = spec_with_file("web", b"snapshot me");
    state.apply(&Command::Batch {
        commands: vec![put_contents(&content), put("web", &spec, "0000000a"), put("db", &spec, "0000000b")],
    });
    let snapshot = serde_json::to_vec(&state).expect("encode a snapshot");
    let mut restored: ClusterState = serde_json::from_slice(&snapshot).expect("decode a snapshot");
    assert!(restored.file_contents[&content.sha256].users.is_empty(), "users are not written");
    restored.rebuild_content_users();
    assert_eq!(restored, state);

    let old_snapshot = r#"{"silos":{},"hosts":{}}"#;
    let old: ClusterState = serde_json::from_str(old_snapshot).expect("a snapshot from before contents");
    assert!(old.file_contents.is_empty());
}

#[test]
fn put_file_contents_survives_the_log_encoding() {
    let command = put_contents(&NewContent {
        sha256: sha256_hex(b"x"),
        bytes: Arc::new(b"x".to_vec()),
    });
    let encoded = serde_json::to_string(&command).expect("encode");
    let decoded: Command = serde_json::from_str(&encoded).expect("decode");
    assert_eq!(decoded, command);
}

/// Prints the bytes of the Raft entries and of one host's `Assignments` for 50 silos that share a
/// 100 KiB file, with the content inside every spec (before) and stored apart (now). Run with
/// `cargo test -p colex-controller shared_file_bytes -- --nocapture`.
#[test]
fn shared_file_bytes_before_and_after() {
    const SILOS: usize = 50;
    const FILE_BYTES: usize = 100 * 1024;
    let file: Vec<u8> = (0..FILE_BYTES).map(|index| (index * 7 % 251) as u8).collect();
    let spec_of = |index: usize| proto::SiloSpec {
        name: format!("share-{index:02}"),
        base: "busybox".to_owned(),
        binary: Some(proto::Binary {
            path: "/bin/sleep".to_owned(),
            args: vec!["1000000".to_owned()],
            ..Default::default()
        }),
        files: vec![proto::FileEntry {
            silo_path: "/data/shared.bin".to_owned(),
            content: file.clone(),
            mode: 0o644,
            ..Default::default()
        }],
        ..Default::default()
    };
    let entry_bytes = |command: Command| {
        let stamped = Command::Stamped {
            at_unix_ms: 1_700_000_000_000,
            command: Box::new(command),
        };
        serde_json::to_vec(&stamped).expect("encode").len()
    };
    let assignment = |index: usize, spec: proto::SiloSpec| proto::Assignment {
        silo_id: format!("{index:08x}"),
        generation: 1,
        spec: Some(spec),
    };

    let mut before_entries = 0;
    let mut after_entries = 0;
    let mut before_largest = 0;
    let mut after_largest = 0;
    // The controller sends a host's whole set whenever it changes: with one silo placed at a
    // time, the sets of 1, 2, ... 50 silos.
    let mut before_resent = 0;
    let mut after_resent = 0;
    let mut before_assignments = proto::Assignments::default();
    let mut after_assignments = proto::Assignments::default();
    let mut stored = BTreeSet::new();
    for index in 0..SILOS {
        let inline = spec_of(index);
        let before_entry = entry_bytes(put(&inline.name, &inline.encode_to_vec(), &format!("{index:08x}")));
        before_entries += before_entry;
        before_largest = before_largest.max(before_entry);
        before_assignments.silos.push(assignment(index, inline.clone()));
        before_resent += before_assignments.encoded_len();

        let mut apart = inline;
        let contents = take_contents(&mut apart).expect("small file");
        let put_apart = put(&apart.name, &apart.encode_to_vec(), &format!("{index:08x}"));
        let new: Vec<NewContent> = contents
            .into_iter()
            .filter(|(sha256, _)| stored.insert(sha256.clone()))
            .map(|(sha256, bytes)| NewContent { sha256, bytes })
            .collect();
        let after_entry = if new.is_empty() {
            entry_bytes(put_apart)
        } else {
            entry_bytes(Command::Batch {
                commands: vec![Command::PutFileContents { contents: new }, put_apart],
            })
        };
        after_entries += after_entry;
        after_largest = after_largest.max(after_entry);
        after_assignments.silos.push(assignment(index, apart));
        after_resent += after_assignments.encoded_len();
    }
    let before_assignment_bytes = before_assignments.encoded_len();
    let after_assignment_bytes = after_assignments.encoded_len();
    println!("{SILOS} silos sharing a {FILE_BYTES}-byte file, one up each:");
    println!("  Raft entries (JSON of the commands), all {SILOS}: before {before_entries} bytes, now {after_entries} bytes");
    println!("  largest Raft entry: before {before_largest} bytes, now {after_largest} bytes");
    println!("  one Assignments of a host running all {SILOS}: before {before_assignment_bytes} bytes, now {after_assignment_bytes} bytes");
    println!("  Assignments sent while the {SILOS} are placed one by one: before {before_resent} bytes, now {after_resent} bytes");
    assert!(after_entries * 10 < before_entries, "{after_entries} vs {before_entries}");
    assert!(after_assignment_bytes * 100 < before_assignment_bytes, "{after_assignment_bytes} vs {before_assignment_bytes}");
}

/// Address recorded in the membership of the one-node cluster below. No test listens on it.
const ADVERTISE_ADDR: &str = "127.0.0.1:7402";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contents_survive_a_restart() {
    use crate::raft::{RaftNode, StartMode};

    let dir = tempfile::tempdir().expect("temporary directory");
    let (spec, content) = spec_with_file("web", b"kept on disk");
    {
        let node = RaftNode::open(dir.path(), ADVERTISE_ADDR, StartMode::Bootstrap).await.expect("open node");
        let batch = Command::Batch {
            commands: vec![put_contents(&content), put("web", &spec, "0000000a"), put("db", &spec, "0000000b")],
        };
        node.write(batch).await.expect("write");
        node.shutdown().await.expect("shutdown");
    }

    let node = RaftNode::open(dir.path(), ADVERTISE_ADDR, StartMode::Bootstrap).await.expect("reopen node");
    {
        let state = node.state.read().await;
        assert_eq!(state.file_content_totals(), (1, 12), "the content is loaded from its row");
        assert_eq!(users(&state, &content), vec!["db".to_owned(), "web".to_owned()], "users are derived again");
    }
    node.write(Command::StopSilo { name: "web".to_owned() }).await.expect("stop web");
    node.write(Command::DeleteSilo {
        name: "web".to_owned(),
        id: "0000000a".to_owned(),
    })
    .await
    .expect("delete web");
    node.write(Command::StopSilo { name: "db".to_owned() }).await.expect("stop db");
    node.write(Command::DeleteSilo {
        name: "db".to_owned(),
        id: "0000000b".to_owned(),
    })
    .await
    .expect("delete db");
    assert!(node.state.read().await.file_contents.is_empty(), "the last delete removes the content");
    node.shutdown().await.expect("shutdown");

    let node = RaftNode::open(dir.path(), ADVERTISE_ADDR, StartMode::Bootstrap).await.expect("reopen node");
    assert!(node.state.read().await.file_contents.is_empty(), "the row was deleted");
    node.shutdown().await.expect("shutdown");
}
