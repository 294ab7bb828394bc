//! The host's cache of file contents, shared by all its silos.
//!
//! The controller's assignments carry each regular file of a spec as its SHA-256 and size
//! (`FileEntry.content_sha256`, `content_size`) in place of its content. Before a silo starts,
//! [`ContentCache::fill`] puts the content back into the spec from `STATE_DIR/file-contents/HASH`
//! and fetches a missing one from the controller with `AgentFiles.FetchFileContent` first. The
//! agent keeps a content while a local silo's spec refers to it, and [`ContentCache::prune`]
//! deletes the rest.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use colex_proto as proto;
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;
use tonic::transport::Channel;

/// Folder of the cache inside the agent's state dir.
pub const CACHE_DIR_NAME: &str = "file-contents";
/// Length of a SHA-256 digest in bytes.
const SHA256_BYTES: usize = 32;
/// Tries of [`ContentCache::fill_retrying`] before a start fails. With [`FILL_RETRY_DELAY`] they
/// span 7 s, longer than the 4.5 to 6 s a new leader takes with openraft 0.9.25's timing, after
/// which the agent's session opens again with the new leader.
pub const FILL_ATTEMPTS: u32 = 8;
/// Pause between two tries of [`ContentCache::fill_retrying`].
pub const FILL_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Errors of getting one file content for a silo start. Each names the content and the file.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("file content {sha256} for {path} is not cached and no controller session is open to fetch it; the start is tried again with the next assignment")]
    NoController { sha256: String, path: String },
    #[error("failed to fetch file content {sha256} for {path} from the controller: {}", source.message())]
    Fetch {
        sha256: String,
        path: String,
        #[source]
        source: tonic::Status,
    },
    #[error("file content for {path} from the controller has SHA-256 {actual} and {size} bytes, expected {sha256} and {expected_size} bytes")]
    Mismatch {
        sha256: String,
        path: String,
        actual: String,
        size: usize,
        expected_size: u64,
    },
    #[error("failed to write cached file content {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("failed to read cached file content {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
}

/// The cache folder and the controller connection that fills it. Cloning shares both.
#[derive(Debug, Clone)]
pub struct ContentCache {
    dir: PathBuf,
    host: String,
    /// Channel of the current controller session; `None` before the first session.
    controller: Arc<Mutex<Option<Channel>>>,
    /// Held shared while a start checks, fetches and reads contents, and exclusively while
    /// [`ContentCache::prune`] deletes them, so a prune never deletes a content between the
    /// check and the read of a start.
    files: Arc<RwLock<()>>,
    /// One lock per content being fetched, so silos that start together fetch it once.
    fetching: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl ContentCache {
    /// Returns the cache of host `host` in `STATE_DIR/file-contents`. The folder is created on
    /// the first fetch.
    pub fn new(state_dir: &Path, host: &str) -> ContentCache {
        ContentCache {
            dir: state_dir.join(CACHE_DIR_NAME),
            host: host.to_owned(),
            controller: Arc::new(Mutex::new(None)),
            files: Arc::new(RwLock::new(())),
            fetching: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Fetches missing contents through `channel` from now on: the channel of the session that
    /// just opened.
    pub fn set_controller(&self, channel: Channel) {
        *lock(&self.controller) = Some(channel);
    }

    /// Puts the content of every file entry of `spec` that carries only a SHA-256 back into
    /// the entry, from the cache or, when it is missing there, from the controller. Every
    /// content is checked against its SHA-256 and size.
    pub async fn fill(&self, spec: &mut proto::SiloSpec) -> Result<(), ContentError> {
        let _files = self.files.read().await;
        for entry in &mut spec.files {
            if entry.content_sha256.len() != SHA256_BYTES || !entry.content.is_empty() {
                continue;
            }
            let sha256 = hex(&entry.content_sha256);
            let content = match self.read_cached(&sha256, entry.content_size).await {
                Some(content) => content,
                None => self.fetch(&sha256, entry).await?,
            };
            entry.content = content;
        }
        Ok(())
    }

    /// Runs [`ContentCache::fill`] up to `attempts` times, `delay` apart, and returns the last
    /// error when every try failed. A lost session or a leader change thus costs a start a few
    /// seconds, not a FAILED state.
    pub async fn fill_retrying(
        &self,
        spec: &mut proto::SiloSpec,
        attempts: u32,
        delay: std::time::Duration,
    ) -> Result<(), ContentError> {
        let mut attempt = 1;
        loop {
            match self.fill(spec).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt < attempts => {
                    tracing::warn!(silo = %spec.name, attempt, %error, retry_in_ms = delay.as_millis() as u64, "file content not available; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Returns the cached content `sha256` when it is there and intact. A damaged one is
    /// deleted, so the caller fetches it again.
    async fn read_cached(&self, sha256: &str, size: u64) -> Option<Vec<u8>> {
        let path = self.dir.join(sha256);
        let content = tokio::fs::read(&path).await.ok()?;
        if content.len() as u64 == size && hex(&Sha256::digest(&content)) == sha256 {
            return Some(content);
        }
        tracing::warn!(path = %path.display(), "cached file content does not match its SHA-256; fetching it again");
        if let Err(error) = tokio::fs::remove_file(&path).await {
            tracing::warn!(path = %path.display(), %error, "failed to delete a damaged cached file content");
        }
        None
    }

    /// Fetches content `sha256` of `entry` from the controller into the cache and returns it.
    /// Silos that need the same content wait for one fetch.
    async fn fetch(&self, sha256: &str, entry: &proto::FileEntry) -> Result<Vec<u8>, ContentError> {
        let fetch_lock = {
            let mut fetching = lock(&self.fetching);
            Arc::clone(fetching.entry(sha256.to_owned()).or_default())
        };
        let _fetching = fetch_lock.lock().await;
        // Another start may have fetched it while this one waited.
        if let Some(content) = self.read_cached(sha256, entry.content_size).await {
            return Ok(content);
        }

        let path = entry.silo_path.clone();
        let Some(channel) = lock(&self.controller).clone() else {
            return Err(ContentError::NoController {
                sha256: sha256.to_owned(),
                path,
            });
        };
        let mut client = proto::agent_files_client::AgentFilesClient::new(channel)
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
        let request = proto::FetchFileContentRequest {
            host: self.host.clone(),
            sha256: entry.content_sha256.clone(),
        };
        let content = client
            .fetch_file_content(request)
            .await
            .map_err(|source| ContentError::Fetch {
                sha256: sha256.to_owned(),
                path: path.clone(),
                source,
            })?
            .into_inner()
            .content;

        let actual = hex(&Sha256::digest(&content));
        if actual != sha256 || content.len() as u64 != entry.content_size {
            return Err(ContentError::Mismatch {
                sha256: sha256.to_owned(),
                path,
                actual,
                size: content.len(),
                expected_size: entry.content_size,
            });
        }
        self.store(sha256, &content).await?;
        tracing::info!(sha256, bytes = content.len(), "file content fetched from the controller");
        Ok(content)
    }

    /// Writes content `sha256` into the cache: into a temporary file first and then renamed,
    /// so the cache never contains a partly written content under its hash.
    async fn store(&self, sha256: &str, content: &[u8]) -> Result<(), ContentError> {
        tokio::fs::create_dir_all(&self.dir).await.map_err(|source| ContentError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.dir.join(sha256);
        let partial = self.dir.join(format!(".{sha256}.partial"));
        tokio::fs::write(&partial, content)
            .await
            .map_err(|source| ContentError::Write {
                path: partial.clone(),
                source,
            })?;
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|source| ContentError::Write { path, source })
    }

    /// Deletes every cached content whose SHA-256 (hex) is not in `needed`, and returns how many
    /// it deleted. Failures are logged and the file is tried again at the next prune.
    pub async fn prune(&self, needed: &HashSet<String>) -> usize {
        let _files = self.files.write().await;
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "failed to list the file content cache");
                return 0;
            }
        };
        let mut deleted = 0;
        loop {
            let entry = match entries.next_entry().await {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(dir = %self.dir.display(), %error, "failed to list the file content cache");
                    break;
                }
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            // Leftovers of a fetch that the agent's end interrupted have the form `.HASH.partial`.
            let hash = name.strip_prefix('.').and_then(|rest| rest.strip_suffix(".partial")).unwrap_or(&name);
            if needed.contains(hash) {
                continue;
            }
            match tokio::fs::remove_file(entry.path()).await {
                Ok(()) => deleted += 1,
                Err(error) => tracing::warn!(path = %entry.path().display(), %error, "failed to delete a cached file content"),
            }
        }
        lock(&self.fetching).retain(|hash, _| needed.contains(hash));
        deleted
    }
}

/// Returns the SHA-256 (hex) of every content that `specs` refer to.
pub fn content_hashes<'a>(specs: impl Iterator<Item = &'a proto::SiloSpec>) -> HashSet<String> {
    specs
        .flat_map(|spec| spec.files.iter())
        .filter(|entry| entry.content_sha256.len() == SHA256_BYTES)
        .map(|entry| hex(&entry.content_sha256))
        .collect()
}

/// Returns `bytes` in lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Locks `mutex`, also after a panic of another holder: the values it guards stay valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_for(content: &[u8]) -> proto::FileEntry {
        proto::FileEntry {
            silo_path: "/data".to_owned(),
            mode: 0o644,
            content_sha256: Sha256::digest(content).to_vec(),
            content_size: content.len() as u64,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn fill_reads_cached_content() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = ContentCache::new(dir.path(), "a");
        let entry = entry_for(b"hello");
        cache.store(&hex(&entry.content_sha256), b"hello").await.expect("store");
        let mut spec = proto::SiloSpec {
            files: vec![entry],
            ..Default::default()
        };
        cache.fill(&mut spec).await.expect("cached");
        assert_eq!(spec.files[0].content, b"hello");
    }

    #[tokio::test]
    async fn missing_content_without_controller_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = ContentCache::new(dir.path(), "a");
        let mut spec = proto::SiloSpec {
            files: vec![entry_for(b"absent")],
            ..Default::default()
        };
        let error = cache.fill(&mut spec).await.expect_err("nothing to fetch from");
        assert!(matches!(error, ContentError::NoController { .. }), "{error}");
        assert!(error.to_string().contains("/data"), "{error}");
        assert!(spec.files[0].content.is_empty(), "no empty stand-in content is written");
    }

    #[tokio::test]
    async fn damaged_content_is_not_used() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = ContentCache::new(dir.path(), "a");
        let entry = entry_for(b"right");
        let sha256 = hex(&entry.content_sha256);
        cache.store(&sha256, b"wrong").await.expect("store");
        let mut spec = proto::SiloSpec {
            files: vec![entry],
            ..Default::default()
        };
        assert!(cache.fill(&mut spec).await.is_err(), "a damaged content must not be used");
        assert!(!dir.path().join(CACHE_DIR_NAME).join(&sha256).exists(), "the damaged content is deleted");
    }

    #[tokio::test]
    async fn prune_keeps_needed_contents() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cache = ContentCache::new(dir.path(), "a");
        let kept = hex(&Sha256::digest(b"kept"));
        let dropped = hex(&Sha256::digest(b"dropped"));
        cache.store(&kept, b"kept").await.expect("store");
        cache.store(&dropped, b"dropped").await.expect("store");
        let cache_dir = dir.path().join(CACHE_DIR_NAME);
        std::fs::write(cache_dir.join(format!(".{dropped}.partial")), b"dro").expect("partial file");

        let deleted = cache.prune(&HashSet::from([kept.clone()])).await;
        assert_eq!(deleted, 2, "the unused content and the partial file");
        assert!(cache_dir.join(&kept).exists());
        assert!(!cache_dir.join(&dropped).exists());
        assert_eq!(cache.prune(&HashSet::new()).await, 1);
    }

    /// A controller's `AgentFiles` service that returns UNAVAILABLE for its first `failures`
    /// requests and `reply` for every other one, and counts the requests.
    struct FakeController {
        reply: Result<Vec<u8>, tonic::Status>,
        failures: usize,
        requests: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[tonic::async_trait]
    impl proto::agent_files_server::AgentFiles for FakeController {
        async fn fetch_file_content(
            &self,
            _request: tonic::Request<proto::FetchFileContentRequest>,
        ) -> Result<tonic::Response<proto::FetchFileContentResponse>, tonic::Status> {
            let earlier = self.requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Slow enough that starts which begin together overlap.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            if earlier < self.failures {
                return Err(tonic::Status::unavailable("controller is changing leaders"));
            }
            self.reply
                .clone()
                .map(|content| tonic::Response::new(proto::FetchFileContentResponse { content }))
        }
    }

    /// Serves a fake controller on loopback and returns a cache in `dir` that fetches from it,
    /// and the counter of its requests.
    async fn cache_with_controller(
        dir: &Path,
        reply: Result<Vec<u8>, tonic::Status>,
        failures: usize,
    ) -> (ContentCache, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let address = listener.local_addr().expect("local address");
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let service = proto::agent_files_server::AgentFilesServer::new(FakeController {
            reply,
            failures,
            requests: Arc::clone(&requests),
        });
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        let channel = Channel::from_shared(format!("http://{address}"))
            .expect("valid uri")
            .connect()
            .await
            .expect("connect to the fake controller");
        let cache = ContentCache::new(dir, "a");
        cache.set_controller(channel);
        (cache, requests)
    }

    #[tokio::test]
    async fn silos_starting_together_fetch_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cache, requests) = cache_with_controller(dir.path(), Ok(b"shared".to_vec()), 0).await;
        let spec = proto::SiloSpec {
            files: vec![entry_for(b"shared")],
            ..Default::default()
        };
        let starts = (0..4).map(|_| {
            let cache = cache.clone();
            let mut spec = spec.clone();
            tokio::spawn(async move {
                cache.fill(&mut spec).await.map(|()| spec)
            })
        });
        for start in futures::future::join_all(starts).await {
            let spec = start.expect("start task").expect("content fetched");
            assert_eq!(spec.files[0].content, b"shared");
        }
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1, "one fetch for four starts");
        let cached = dir.path().join(CACHE_DIR_NAME).join(hex(&Sha256::digest(b"shared")));
        assert_eq!(std::fs::read(cached).expect("cached"), b"shared");
    }

    #[tokio::test]
    async fn fetched_bytes_of_another_hash_fail() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cache, _) = cache_with_controller(dir.path(), Ok(b"other bytes".to_vec()), 0).await;
        let mut spec = proto::SiloSpec {
            files: vec![entry_for(b"expected")],
            ..Default::default()
        };
        let error = cache.fill(&mut spec).await.expect_err("wrong bytes");
        assert!(matches!(error, ContentError::Mismatch { .. }), "{error}");
        assert!(error.to_string().contains("/data"), "{error}");
        assert!(spec.files[0].content.is_empty(), "no wrong content is written");
        assert!(!dir.path().join(CACHE_DIR_NAME).join(hex(&Sha256::digest(b"expected"))).exists());
    }

    #[tokio::test]
    async fn failed_fetch_names_the_reason() {
        let dir = tempfile::tempdir().expect("temp dir");
        let reply = Err(tonic::Status::not_found("file content is not used by any silo on host a"));
        let (cache, _) = cache_with_controller(dir.path(), reply, 0).await;
        let mut spec = proto::SiloSpec {
            files: vec![entry_for(b"gone")],
            ..Default::default()
        };
        let message = cache.fill(&mut spec).await.expect_err("not found").to_string();
        assert!(message.starts_with("failed to fetch file content"), "{message}");
        assert!(message.ends_with("from the controller: file content is not used by any silo on host a"), "{message}");
    }

    #[tokio::test]
    async fn fill_retries_a_failed_fetch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cache, requests) = cache_with_controller(dir.path(), Ok(b"later".to_vec()), 2).await;
        let mut spec = proto::SiloSpec {
            files: vec![entry_for(b"later")],
            ..Default::default()
        };
        let delay = std::time::Duration::from_millis(10);
        let error = cache.fill_retrying(&mut spec, 2, delay).await.expect_err("two tries fail");
        assert!(error.to_string().contains("controller is changing leaders"), "{error}");
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);

        cache.fill_retrying(&mut spec, 2, delay).await.expect("the third request succeeds");
        assert_eq!(spec.files[0].content, b"later");
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn hashes_of_specs() {
        let spec = proto::SiloSpec {
            files: vec![entry_for(b"one"), entry_for(b"one"), proto::FileEntry::default()],
            ..Default::default()
        };
        let hashes = content_hashes(std::iter::once(&spec));
        assert_eq!(hashes, HashSet::from([hex(&Sha256::digest(b"one"))]));
    }
}
