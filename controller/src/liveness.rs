//! Host liveness on the leader, kept in memory only: the time of each host's last agent
//! message, and the time this controller became leader. A host is down once neither is
//! within the TTL, so heartbeats cost no Raft traffic, and after a leader change every host
//! gets one TTL of grace to reconnect before it counts as down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Time without an agent message after which a host is down, unless configured otherwise.
/// Agents send a heartbeat every second, so three are missed first.
pub const DEFAULT_HOST_TTL: Duration = Duration::from_secs(3);

/// Last agent message per host, shared by the agent sessions and the leader's host watch.
#[derive(Debug, Clone)]
pub struct Liveness {
    inner: Arc<Mutex<Inner>>,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    last_seen: BTreeMap<String, Instant>,
    /// When this controller last became leader; `None` while it does not lead.
    leading_since: Option<Instant>,
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new(DEFAULT_HOST_TTL)
    }
}

impl Liveness {
    /// Creates a tracker whose hosts are down after `ttl` without a message.
    pub fn new(ttl: Duration) -> Self {
        Self {
            inner: Arc::default(),
            ttl,
        }
    }

    /// Returns the time without a message after which a host is down.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Records that the agent of `host` sent a message at `now`.
    pub fn seen(&self, host: &str, now: Instant) {
        self.lock().last_seen.insert(host.to_owned(), now);
    }

    /// Records whether this controller leads at `now`. Becoming leader starts every host's
    /// grace period, because agents reconnect only after the old leader ended their sessions.
    /// Returns true when this call made it leader.
    pub fn set_leading(&self, leads: bool, now: Instant) -> bool {
        let mut inner = self.lock();
        match (leads, inner.leading_since) {
            (true, None) => {
                inner.leading_since = Some(now);
                true
            }
            (false, Some(_)) => {
                inner.leading_since = None;
                false
            }
            _ => false,
        }
    }

    /// Returns true when `host` is down at `now`: this controller leads, and neither a message
    /// from its agent nor the start of the leadership is within the TTL. A controller that
    /// does not lead calls no host down, because agents hold their sessions with the leader.
    pub fn is_down(&self, host: &str, now: Instant) -> bool {
        let inner = self.lock();
        let Some(leading_since) = inner.leading_since else {
            return false;
        };
        let last = inner
            .last_seen
            .get(host)
            .map_or(leading_since, |seen| (*seen).max(leading_since));
        now.saturating_duration_since(last) > self.ttl
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The map stays consistent whatever panicked while holding the lock.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    #[test]
    fn follower_calls_no_host_down() {
        let liveness = Liveness::new(TTL);
        let start = Instant::now();
        assert!(!liveness.is_down("a", start + TTL * 10));
    }

    #[test]
    fn host_is_down_after_ttl_without_message() {
        let liveness = Liveness::new(TTL);
        let start = Instant::now();
        assert!(liveness.set_leading(true, start));
        liveness.seen("a", start);
        assert!(!liveness.is_down("a", start + TTL));
        assert!(liveness.is_down("a", start + TTL + Duration::from_millis(1)));
        liveness.seen("a", start + TTL * 2);
        assert!(!liveness.is_down("a", start + TTL * 2 + Duration::from_secs(1)));
    }

    #[test]
    fn new_leader_gives_every_host_grace() {
        let liveness = Liveness::new(TTL);
        let start = Instant::now();
        liveness.seen("a", start);
        let elected = start + Duration::from_secs(60);
        assert!(liveness.set_leading(true, elected));
        assert!(!liveness.set_leading(true, elected + TTL), "still the same leadership");
        assert!(!liveness.is_down("a", elected + TTL), "a host last seen long ago gets grace");
        assert!(!liveness.is_down("never-seen", elected + TTL), "an unseen host gets grace");
        assert!(liveness.is_down("a", elected + TTL + Duration::from_millis(1)));
        assert!(liveness.is_down("never-seen", elected + TTL + Duration::from_millis(1)));
    }

    #[test]
    fn leading_again_restarts_grace() {
        let liveness = Liveness::new(TTL);
        let start = Instant::now();
        liveness.set_leading(true, start);
        liveness.set_leading(false, start + Duration::from_secs(10));
        let again = start + Duration::from_secs(20);
        assert!(liveness.set_leading(true, again));
        assert!(!liveness.is_down("a", again + TTL));
    }
}
