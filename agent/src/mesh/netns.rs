//! Work inside the network namespace a mesh device lives in.
//!
//! Netlink and generic netlink sockets, TUN devices and UDP sockets belong to the network
//! namespace of the thread that opens them. A mesh device remembers its namespace when it is
//! created, and every later step runs on a short-lived thread that enters that namespace, so its
//! methods can be called from any thread, tokio workers included.

use std::fs::File;
use std::future::Future;
use std::io;
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};

/// The calling thread's network namespace file; it stays valid while open.
const THREAD_NETNS_PATH: &str = "/proc/thread-self/ns/net";

/// Errors of running work in a device's network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("failed to open the network namespace {THREAD_NETNS_PATH}: {source}")]
    Open { source: io::Error },
    #[error("failed to start thread {thread}: {source}")]
    Spawn { thread: String, source: io::Error },
    #[error("thread {thread} failed to enter the device's network namespace: {source}")]
    Enter { thread: String, source: io::Error },
    #[error("thread {thread} failed to build its tokio runtime: {source}")]
    Runtime { thread: String, source: io::Error },
    #[error("thread {thread} panicked")]
    Panicked { thread: String },
}

/// A network namespace, kept alive by an open file descriptor of its nsfs file.
#[derive(Debug, Clone)]
pub(crate) struct Netns {
    file: Arc<File>,
}

impl Netns {
    /// Opens the calling thread's network namespace.
    pub(crate) fn current() -> Result<Netns, NetnsError> {
        let file = File::open(THREAD_NETNS_PATH).map_err(|source| NetnsError::Open { source })?;
        Ok(Netns {
            file: Arc::new(file),
        })
    }

    /// Spawns thread `thread`, enters this namespace on it and runs `work` there. The thread
    /// ends with `work`, so its namespace switch affects no other work.
    pub(crate) fn spawn<T, W>(
        &self,
        thread: &str,
        work: W,
    ) -> Result<std::thread::JoinHandle<Result<T, NetnsError>>, NetnsError>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
    {
        let file = Arc::clone(&self.file);
        let name = thread.to_string();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                setns(&*file, CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Enter {
                    thread: name,
                    source: io::Error::from(errno),
                })?;
                Ok(work())
            })
            .map_err(|source| NetnsError::Spawn {
                thread: thread.to_string(),
                source,
            })
    }

    /// Runs the future that `work` makes on a thread in this namespace with a current-thread
    /// tokio runtime, and blocks until it completes.
    pub(crate) fn block_on<T, F, W>(&self, thread: &str, work: W) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: Future<Output = T>,
        W: FnOnce() -> F + Send + 'static,
    {
        let name = thread.to_string();
        let handle = self.spawn(thread, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| NetnsError::Runtime {
                    thread: name,
                    source,
                })?;
            Ok(runtime.block_on(work()))
        })?;
        let joined = handle.join().map_err(|_| NetnsError::Panicked {
            thread: thread.to_string(),
        })?;
        joined?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netns_inode() -> std::path::PathBuf {
        std::fs::read_link(THREAD_NETNS_PATH).expect("read netns link")
    }

    #[test]
    fn block_on_runs_in_remembered_namespace() {
        let netns = Netns::current().expect("open current netns");
        let caller_netns = netns_inode();

        let thread_netns = netns
            .block_on("cx-netns-test", || async { netns_inode() })
            .expect("run in netns");
        assert_eq!(thread_netns, caller_netns);
    }
}
