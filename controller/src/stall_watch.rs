//! A watch on the async runtime: one task sleeps a short tick again and again and measures how
//! late it wakes. A late wake means that every worker thread was busy that long with other
//! tasks, either one that ran long without awaiting or a queue of many. Every Raft heartbeat,
//! vote and reply of this controller waited too, and a long stall can start an election, so
//! each one is logged and counted.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

/// Interval the watch task sleeps between two checks.
const TICK: Duration = Duration::from_millis(25);

/// Lateness of a wake above which it counts as a stall: half the heartbeat interval (100 ms).
/// A follower starts an election after 600 ms or more without a heartbeat, so a stall is
/// reported well before it could cost the leader its term.
const STALL_THRESHOLD: Duration = Duration::from_millis(50);

/// Watches the runtime until it stops, and adds one to `stalls` per stall.
pub async fn watch(stalls: Counter) {
    tracing::debug!(tick_ms = TICK.as_millis(), threshold_ms = STALL_THRESHOLD.as_millis(), "watching the runtime for stalls");
    loop {
        let asleep = Instant::now();
        tokio::time::sleep(TICK).await;
        if let Some(late) = lateness(asleep.elapsed()) {
            stalls.inc();
            tracing::warn!(
                late_ms = late.as_millis(),
                threshold_ms = STALL_THRESHOLD.as_millis(),
                "runtime stalled: its workers were busy this long before a ready task ran, so Raft messages waited too"
            );
        }
    }
}

/// Returns how much later than the tick a sleep of `slept` ended, when that is a stall.
fn lateness(slept: Duration) -> Option<Duration> {
    let late = slept.saturating_sub(TICK);
    (late > STALL_THRESHOLD).then_some(late)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_time_wakes_are_not_stalls() {
        assert_eq!(lateness(TICK), None);
        assert_eq!(lateness(TICK + STALL_THRESHOLD), None);
        assert_eq!(lateness(Duration::ZERO), None);
    }

    #[test]
    fn late_wakes_are_stalls() {
        let slept = TICK + STALL_THRESHOLD + Duration::from_millis(1);
        assert_eq!(lateness(slept), Some(STALL_THRESHOLD + Duration::from_millis(1)));
    }

    /// A task that blocks the only worker for longer than the threshold is counted once.
    #[tokio::test(flavor = "current_thread")]
    async fn blocking_task_is_counted() {
        let stalls = Counter::default();
        let watch_task = tokio::spawn(watch(stalls.clone()));

        // Two ticks pass first, so the watch is asleep when the worker blocks.
        tokio::time::sleep(TICK * 2).await;
        std::thread::sleep(STALL_THRESHOLD * 3);
        tokio::time::sleep(TICK * 2).await;
        assert_eq!(stalls.get(), 1);

        tokio::time::sleep(TICK * 4).await;
        assert_eq!(stalls.get(), 1, "no stall after the worker was free again");
        watch_task.abort();
    }
}
