//! Registry of the agents that have an open session with this controller, and the usage
//! reports they sent on it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{watch, Notify};

use crate::liveness::Liveness;
use crate::usage::UsageStore;

/// Open agent sessions by host name. A host is live while it has one and its agent sent a
/// message within the liveness TTL.
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
    /// Time of each host's last agent message, which decides when a host is down.
    liveness: Liveness,
    /// Latest silo usage of the hosts with an open session. A host's entries are dropped when
    /// its session closes.
    usage: UsageStore,
    /// Wakes the task that places pending silo instances: a host joined, or a silo or
    /// instance was stopped or removed, so capacity may have appeared.
    placement_wakeup: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Inner {
    next_token: u64,
    /// Host name to the token of its current session and a sender that
    /// ends that session when dropped or signalled.
    open: BTreeMap<String, (u64, watch::Sender<bool>)>,
}

/// Proof of one registered session; `Sessions::close` with it removes the
/// session only if no newer session of the same host replaced it.
#[derive(Debug)]
pub struct SessionToken {
    host: String,
    token: u64,
}

impl Sessions {
    /// Creates an empty registry whose hosts are down as `liveness` decides.
    pub fn with_liveness(liveness: Liveness) -> Self {
        Self {
            liveness,
            ..Self::default()
        }
    }

    /// Returns the liveness tracker that agent messages update.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// Registers a session for `host`, replacing (and ending) any earlier one.
    /// The returned receiver turns `true` when a newer session replaced
    /// this one.
    pub fn open(&self, host: &str) -> (SessionToken, watch::Receiver<bool>) {
        let mut inner = self.lock();
        inner.next_token += 1;
        let token = inner.next_token;
        let (replaced_tx, replaced_rx) = watch::channel(false);
        if let Some((old_token, old)) = inner.open.insert(host.to_owned(), (token, replaced_tx)) {
            tracing::warn!(host, old_token, token, "new session replaces an open one");
            // The old session may already be gone, so a failed send is fine.
            let _ = old.send(true);
        }
        drop(inner);
        self.liveness.seen(host, Instant::now());
        self.wake_placement();
        (
            SessionToken {
                host: host.to_owned(),
                token,
            },
            replaced_rx,
        )
    }

    /// Removes the session and the usage its agent reported, unless a newer session of the
    /// host replaced it.
    pub fn close(&self, token: &SessionToken) {
        let mut inner = self.lock();
        if inner.open.get(&token.host).map(|(current, _)| *current) == Some(token.token) {
            inner.open.remove(&token.host);
            self.usage.forget_host(&token.host);
        }
    }

    /// Returns the store of the silo usage that agents report on their sessions.
    pub fn usage(&self) -> &UsageStore {
        &self.usage
    }

    /// Wakes the pending placement task. A wakeup while it is busy is kept, so it runs once more.
    pub fn wake_placement(&self) {
        self.placement_wakeup.notify_one();
    }

    /// Waits until [`Sessions::wake_placement`] is called, or returns at once when it was
    /// called since the last wait.
    pub async fn placement_woken(&self) {
        self.placement_wakeup.notified().await;
    }

    /// Returns the names of the hosts with an open session that are not down: a session can
    /// stay open for a while after its agent went silent.
    pub fn live_hosts(&self) -> BTreeSet<String> {
        let now = Instant::now();
        self.lock()
            .open
            .keys()
            .filter(|host| !self.liveness.is_down(host, now))
            .cloned()
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only a map of senders,
        // which stays consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_session_survives_close_of_older() {
        let sessions = Sessions::default();
        let (first, first_replaced) = sessions.open("a");
        let (_second, _) = sessions.open("a");
        assert!(*first_replaced.borrow());
        sessions.close(&first);
        assert!(sessions.live_hosts().contains("a"));
    }

    #[test]
    fn close_forgets_host_usage() {
        let sessions = Sessions::default();
        let (token, _) = sessions.open("a");
        let report = colex_proto::SiloUsageReport {
            sampled_at_unix_ms: 10_000,
            silos: vec![colex_proto::SiloUsageSample {
                silo_id: "3938a44e".to_owned(),
                generation: 1,
                ..Default::default()
            }],
        };
        let now = std::time::Instant::now();
        sessions.usage().record("a", 2, &report, now);
        assert!(sessions.usage().usage("3938a44e", 1, now).is_some());
        sessions.close(&token);
        assert!(sessions.usage().usage("3938a44e", 1, now).is_none());
    }

    #[test]
    fn close_removes_host() {
        let sessions = Sessions::default();
        let (token, _) = sessions.open("a");
        sessions.close(&token);
        assert!(sessions.live_hosts().is_empty());
    }

    #[tokio::test]
    async fn open_wakes_placement() {
        let sessions = Sessions::default();
        let (_token, _) = sessions.open("a");
        tokio::time::timeout(std::time::Duration::from_secs(1), sessions.placement_woken())
            .await
            .expect("a new session wakes the placement task");
    }
}
