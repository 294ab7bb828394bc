//! File contents stored apart from silo specs, once per SHA-256.
//!
//! `up` moves the content of every regular `file` entry out of the spec and leaves its SHA-256
//! and size (`FileEntry.content_sha256`, `content_size`). The stored spec, the Raft entries
//! after the first one that carries a content, and the agents' `Assignments` thus carry 40
//! bytes per file instead of the file. The replicated state keeps each distinct content once
//! ([`ClusterState::file_contents`](crate::state::ClusterState)), with the keys of the silo
//! instance records whose spec or next spec uses it. A content loses its last user in the same
//! log entry that removes it. Agents fetch the contents their silos need with
//! `AgentFiles.FetchFileContent` (`api/agent_files.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use colex_proto as proto;
use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Largest content of one `file` entry, in bytes. A new content travels in one Raft entry, and
/// openraft 0.9 gives each AppendEntries one heartbeat interval: 256 KiB of spec still
/// replicated within it on a loaded 2-core VM, 1 MiB did not (docs/benchmarks.md, "Limit:
/// large specs under the shorter heartbeat").
pub const MAX_FILE_CONTENT_BYTES: usize = 256 * 1024;
/// Largest sum of the contents that one `up` request adds to the state, in bytes, for the same
/// reason: the placer puts a request's new contents into the entry of its first silo that uses
/// them.
pub const MAX_NEW_CONTENT_BYTES_PER_REQUEST: usize = 256 * 1024;
/// Default of the cluster-wide total of stored contents, in bytes (`--max-file-content-bytes`).
/// Every controller keeps all contents in memory and writes them into every snapshot.
pub const DEFAULT_MAX_TOTAL_CONTENT_BYTES: u64 = 256 * 1024 * 1024;
/// Length of a SHA-256 digest in bytes.
pub const SHA256_BYTES: usize = 32;

/// One distinct file content in the replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredContent {
    /// The content; base64 in rows and snapshots. Shared, so that copying the record into the
    /// state that readers see does not copy the bytes.
    #[serde(serialize_with = "serialize_shared", deserialize_with = "deserialize_shared")]
    pub bytes: Arc<Vec<u8>>,
    /// Keys of the silo instance records whose spec or next spec uses the content. Not written
    /// to rows or snapshots: [`ClusterState::rebuild_content_users`](crate::state::ClusterState)
    /// derives it from the records when a state is loaded.
    #[serde(skip)]
    pub users: BTreeSet<String>,
}

/// A content that a [`Command::PutFileContents`](crate::state::Command) adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewContent {
    /// SHA-256 of `bytes` in lower-case hex.
    pub sha256: String,
    #[serde(serialize_with = "serialize_shared", deserialize_with = "deserialize_shared")]
    pub bytes: Arc<Vec<u8>>,
}

/// Contents of one spec by SHA-256 in lower-case hex.
pub type ContentsByHash = BTreeMap<String, Arc<Vec<u8>>>;

/// Errors of file contents in an `up` request. Each message names the value and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentLimitError {
    #[error("silo {silo}: file {path} is {bytes} bytes, above the controller's limit of {MAX_FILE_CONTENT_BYTES} bytes per file; put large files into an image (`base = \"img://NAME\"`) or a `bind` instead of `file` blocks")]
    FileTooLarge { silo: String, path: String, bytes: usize },
    #[error("the request adds {bytes} bytes of new file contents, above the controller's limit of {MAX_NEW_CONTENT_BYTES_PER_REQUEST} bytes per request; run up on fewer silo files at a time")]
    RequestTooLarge { bytes: usize },
    #[error("the request adds {bytes} bytes of new file contents to the {stored} bytes stored, above the cluster's limit of {limit} bytes; remove silos with `colex-cli down` or raise --max-file-content-bytes on the controllers")]
    ClusterFull { bytes: usize, stored: u64, limit: u64 },
}

/// Returns `bytes` in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // `fmt::Write` for `String` never returns an error.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Moves the content of every regular file entry of `spec` out of it, leaving the SHA-256 and
/// size in its place, and returns the contents by hash. Empty files keep their empty content and
/// get no hash. An entry above [`MAX_FILE_CONTENT_BYTES`] is an error.
pub fn take_contents(spec: &mut proto::SiloSpec) -> Result<ContentsByHash, ContentLimitError> {
    let mut contents = ContentsByHash::new();
    for entry in &mut spec.files {
        if entry.kind() != proto::FileKind::Regular || entry.content.is_empty() {
            continue;
        }
        if entry.content.len() > MAX_FILE_CONTENT_BYTES {
            return Err(ContentLimitError::FileTooLarge {
                silo: spec.name.clone(),
                path: entry.silo_path.clone(),
                bytes: entry.content.len(),
            });
        }
        let content = std::mem::take(&mut entry.content);
        let digest = Sha256::digest(&content);
        entry.content_sha256 = digest.to_vec();
        entry.content_size = content.len() as u64;
        contents.entry(hex(&digest)).or_insert_with(|| Arc::new(content));
    }
    Ok(contents)
}

/// Returns the hex SHA-256 of every content that the protobuf-encoded spec `spec` refers to. A
/// spec that does not decode refers to none; the controller encoded every stored spec itself.
pub fn spec_content_hashes(spec: &[u8]) -> BTreeSet<String> {
    let Ok(spec) = proto::SiloSpec::decode(spec) else {
        return BTreeSet::new();
    };
    spec.files
        .iter()
        .filter(|entry| entry.content_sha256.len() == SHA256_BYTES)
        .map(|entry| hex(&entry.content_sha256))
        .collect()
}

fn serialize_shared<S: Serializer>(bytes: &Arc<Vec<u8>>, serializer: S) -> Result<S::Ok, S::Error> {
    crate::spec_bytes::serialize(bytes.as_slice(), serializer)
}

fn deserialize_shared<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<Vec<u8>>, D::Error> {
    crate::spec_bytes::deserialize(deserializer).map(Arc::new)
}

/// Returns the SHA-256 of `bytes` in lower-case hex.
#[cfg(test)]
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regular(path: &str, content: &[u8]) -> proto::FileEntry {
        proto::FileEntry {
            silo_path: path.to_owned(),
            content: content.to_vec(),
            mode: 0o644,
            ..Default::default()
        }
    }

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn take_contents_leaves_hash_and_size() {
        let mut spec = proto::SiloSpec {
            name: "web".to_owned(),
            files: vec![
                regular("/a", b"shared"),
                regular("/b", b"shared"),
                regular("/empty", b""),
                proto::FileEntry {
                    silo_path: "/dir".to_owned(),
                    kind: proto::FileKind::Directory.into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let contents = take_contents(&mut spec).expect("small files");
        assert_eq!(contents.len(), 1, "two entries with one content store it once");
        let hash = sha256_hex(b"shared");
        assert_eq!(contents[&hash].as_slice(), b"shared");
        for entry in &spec.files[..2] {
            assert!(entry.content.is_empty(), "{entry:?}");
            assert_eq!(hex(&entry.content_sha256), hash);
            assert_eq!(entry.content_size, 6);
        }
        assert!(spec.files[2].content_sha256.is_empty(), "an empty file gets no hash");
        assert!(spec.files[3].content_sha256.is_empty(), "a directory gets no hash");
        assert_eq!(spec_content_hashes(&spec.encode_to_vec()), BTreeSet::from([hash]));
    }

    #[test]
    fn file_above_the_limit_is_rejected() {
        let mut spec = proto::SiloSpec {
            name: "big".to_owned(),
            files: vec![regular("/big.bin", &vec![0; MAX_FILE_CONTENT_BYTES + 1])],
            ..Default::default()
        };
        let error = take_contents(&mut spec).expect_err("too large");
        let message = error.to_string();
        assert!(message.starts_with("silo big: file /big.bin is 262145 bytes, above the controller's limit of 262144 bytes per file"), "{message}");
        assert_eq!(message.lines().count(), 1);
        let mut spec = proto::SiloSpec {
            files: vec![regular("/edge.bin", &vec![0; MAX_FILE_CONTENT_BYTES])],
            ..Default::default()
        };
        assert!(take_contents(&mut spec).is_ok(), "a file of exactly the limit is accepted");
    }

    #[test]
    fn new_content_is_base64_in_json() {
        let content = NewContent {
            sha256: sha256_hex(b"hi"),
            bytes: Arc::new(b"hi".to_vec()),
        };
        let json = serde_json::to_string(&content).expect("encode");
        assert!(json.contains(r#""bytes":"aGk=""#), "{json}");
        assert_eq!(serde_json::from_str::<NewContent>(&json).expect("decode"), content);
    }
}

#[cfg(test)]
#[path = "blobs_tests.rs"]
mod state_tests;
