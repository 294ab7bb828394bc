//! Removal of a cgroup dir. `rmdir` of a cgroup fails with EBUSY for a short time after its
//! last process has exited (the kernel finishes the exit asynchronously), so it is retried
//! with a bounded exponential backoff.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::warn;

use super::CgroupError;

/// Retry schedule of `rmdir` while it fails with EBUSY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the second attempt. Each further delay doubles.
    pub first_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
    /// Total number of attempts, the first included.
    pub attempts: u32,
}

/// Schedule for silo and host cgroups: 10 ms doubling to 500 ms, 14 attempts, about 4.6 s of
/// waiting in total before EBUSY is returned.
pub const RMDIR_BACKOFF: Backoff = Backoff {
    first_delay: Duration::from_millis(10),
    max_delay: Duration::from_millis(500),
    attempts: 14,
};

/// Removes the cgroup dir `path` with [`RMDIR_BACKOFF`]. A missing dir is fine.
pub async fn remove(path: &Path) -> Result<(), CgroupError> {
    remove_with(path, RMDIR_BACKOFF, tokio::fs::remove_dir).await
}

/// Removes `path` with `rmdir`, retrying on EBUSY by `backoff`. A missing dir is fine. `rmdir`
/// is a parameter so that tests can fake a busy cgroup.
pub async fn remove_with<F, Fut>(
    path: &Path,
    backoff: Backoff,
    mut rmdir: F,
) -> Result<(), CgroupError>
where
    F: FnMut(PathBuf) -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    let mut delay = backoff.first_delay;
    let mut attempt = 1;
    loop {
        match rmdir(path.to_path_buf()).await {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && attempt < backoff.attempts => {
                warn!(cgroup = %path.display(), attempt, ?delay, "cgroup busy; retrying rmdir");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max_delay);
                attempt += 1;
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: path.to_path_buf(),
                    attempts: attempt,
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    const FAST: Backoff = Backoff {
        first_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        attempts: 5,
    };

    /// Returns an `rmdir` fake that fails with EBUSY `busy_times` times, then succeeds, and
    /// the counter of its calls.
    fn busy_rmdir(
        busy_times: u32,
    ) -> (
        impl FnMut(PathBuf) -> std::future::Ready<io::Result<()>>,
        Arc<AtomicU32>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let rmdir = move |_: PathBuf| {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(if call < busy_times {
                Err(io::Error::from_raw_os_error(libc::EBUSY))
            } else {
                Ok(())
            })
        };
        (rmdir, calls)
    }

    #[tokio::test]
    async fn rmdir_retries_while_busy() {
        let (rmdir, calls) = busy_rmdir(3);
        remove_with(Path::new("/cg/colex-h/3938a44e"), FAST, rmdir)
            .await
            .expect("removed on the fourth attempt");
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn rmdir_gives_up_after_max_attempts() {
        let (rmdir, calls) = busy_rmdir(u32::MAX);
        let err = remove_with(Path::new("/cg/colex-h/3938a44e"), FAST, rmdir)
            .await
            .expect_err("still busy");
        assert_eq!(calls.load(Ordering::SeqCst), FAST.attempts);
        assert!(matches!(
            &err,
            CgroupError::Remove { attempts: 5, source, .. } if source.raw_os_error() == Some(libc::EBUSY)
        ));
        assert_eq!(
            err.to_string(),
            "failed to remove cgroup /cg/colex-h/3938a44e after 5 attempts: Device or resource busy (os error 16)"
        );
    }

    #[tokio::test]
    async fn rmdir_does_not_retry_other_errors() {
        let calls = AtomicU32::new(0);
        let err = remove_with(Path::new("/cg/x"), FAST, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err(io::Error::from_raw_os_error(libc::EACCES)))
        })
        .await
        .expect_err("permission denied");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(err, CgroupError::Remove { attempts: 1, .. }));
    }

    #[tokio::test]
    async fn rmdir_of_missing_dir_succeeds() {
        let dir = tempfile::tempdir().expect("create temp dir");
        remove(&dir.path().join("gone"))
            .await
            .expect("missing is fine");
        let existing = dir.path().join("existing");
        std::fs::create_dir(&existing).expect("create dir");
        remove(&existing).await.expect("remove");
        assert!(!existing.exists());
    }
}
