//! The latest resource usage of each running silo, from the reports agents send every few
//! seconds on their session.
//!
//! The store is in memory only, with no Raft write per report. A report is replaced seconds
//! later and is of no use after a controller restart, and writing it through Raft would put
//! heartbeat-rate traffic of every host into the replicated log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use colex_proto as proto;

/// Age after which a silo's last report is dropped. Agents report every 2 s, so an entry this
/// old means the agent stopped reporting while its session stayed open.
pub const MAX_REPORT_AGE: Duration = Duration::from_secs(10);

/// Latest usage of the silos on every host with an open session, by silo id. Cheap to clone,
/// and clones share the entries.
#[derive(Debug, Clone, Default)]
pub struct UsageStore {
    entries: Arc<Mutex<BTreeMap<String, Entry>>>,
}

/// The last sample of one silo.
#[derive(Debug, Clone)]
struct Entry {
    host: String,
    sample: proto::SiloUsageSample,
    /// The agent's wall clock at the sample, in milliseconds since the Unix epoch.
    sampled_at_unix_ms: u64,
    /// When this controller received the sample.
    received_at: Instant,
    /// CPU use between the previous sample and this one, in percent of the whole host.
    cpu_percent: Option<f64>,
}

/// One CPU time reading of a silo, in the agent's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuReading {
    /// CPU time of the silo's processes, in microseconds.
    pub cpu_usec: u64,
    /// Time of the reading, in milliseconds since the Unix epoch.
    pub sampled_at_unix_ms: u64,
    /// Start of the silo's current PID 1, in milliseconds since the Unix epoch.
    pub started_at_unix_ms: Option<u64>,
}

impl UsageStore {
    /// Stores the report of `host`, which has `host_cpus` CPUs, received at `received_at`. The
    /// report replaces the host's previous one: silos it leaves out are dropped. Entries of
    /// every host older than [`MAX_REPORT_AGE`] are dropped too.
    pub fn record(
        &self,
        host: &str,
        host_cpus: u32,
        report: &proto::SiloUsageReport,
        received_at: Instant,
    ) {
        let mut entries = self.lock();
        entries.retain(|silo_id, entry| {
            let reported =
                entry.host != host || report.silos.iter().any(|sample| &sample.silo_id == silo_id);
            reported && !is_stale(entry, received_at)
        });

        for sample in &report.silos {
            let previous = entries
                .get(&sample.silo_id)
                .filter(|entry| entry.host == host && entry.sample.generation == sample.generation);
            let cpu_percent = previous.and_then(|previous| {
                cpu_percent(
                    cpu_reading(&previous.sample, previous.sampled_at_unix_ms)?,
                    cpu_reading(sample, report.sampled_at_unix_ms)?,
                    host_cpus,
                )
            });
            entries.insert(
                sample.silo_id.clone(),
                Entry {
                    host: host.to_owned(),
                    sample: sample.clone(),
                    sampled_at_unix_ms: report.sampled_at_unix_ms,
                    received_at,
                    cpu_percent,
                },
            );
        }
    }

    /// Drops every entry of `host`, whose session closed.
    pub fn forget_host(&self, host: &str) {
        self.lock().retain(|_, entry| entry.host != host);
    }

    /// Returns the latest usage of silo `silo_id` in generation `generation` as of `now`, or
    /// `None` when there is no report of it younger than [`MAX_REPORT_AGE`].
    pub fn usage(&self, silo_id: &str, generation: u64, now: Instant) -> Option<proto::SiloUsage> {
        let entries = self.lock();
        let entry = entries
            .get(silo_id)
            .filter(|entry| entry.sample.generation == generation && !is_stale(entry, now))?;
        // The age of the sample is added on the controller's clock, so clock offsets between
        // the agent, the controller and the client do not distort the uptime.
        let since_sample = now.saturating_duration_since(entry.received_at);
        let uptime_ms = entry
            .sample
            .started_at_unix_ms
            .and_then(|started| entry.sampled_at_unix_ms.checked_sub(started))
            .map(|at_sample| {
                at_sample
                    .saturating_add(u64::try_from(since_sample.as_millis()).unwrap_or(u64::MAX))
            });
        Some(proto::SiloUsage {
            cpu_percent: entry.cpu_percent,
            memory_bytes: entry.sample.memory_bytes,
            processes: entry.sample.processes,
            rx_bytes: entry.sample.rx_bytes,
            tx_bytes: entry.sample.tx_bytes,
            uptime_ms,
        })
    }

    /// Returns the latest sample of silo `silo_id` in generation `generation` with the time of
    /// its report in the agent's clock (milliseconds since the Unix epoch), or `None` as for
    /// [`UsageStore::usage`].
    pub fn latest_sample(
        &self,
        silo_id: &str,
        generation: u64,
        now: Instant,
    ) -> Option<(proto::SiloUsageSample, u64)> {
        let entries = self.lock();
        let entry = entries
            .get(silo_id)
            .filter(|entry| entry.sample.generation == generation && !is_stale(entry, now))?;
        Some((entry.sample.clone(), entry.sampled_at_unix_ms))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // Each write replaces whole entries, so a panic while holding the lock leaves the map
        // consistent and a poisoned lock is still usable.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn is_stale(entry: &Entry, now: Instant) -> bool {
    now.saturating_duration_since(entry.received_at) > MAX_REPORT_AGE
}

fn cpu_reading(sample: &proto::SiloUsageSample, sampled_at_unix_ms: u64) -> Option<CpuReading> {
    Some(CpuReading {
        cpu_usec: sample.cpu_usec?,
        sampled_at_unix_ms,
        started_at_unix_ms: sample.started_at_unix_ms,
    })
}

/// Returns the CPU use between two readings of one silo in percent of a host with `host_cpus`
/// CPUs, where 100 means every CPU was busy for the silo. Returns `None` when no time passed
/// between the readings or the host has no CPUs.
///
/// A restart in place keeps the silo's cgroup, so its counter goes on growing. A counter below
/// the previous reading started again from zero after that reading, so the whole current
/// value counts, over the time since the later of the previous reading and the start of the
/// current PID 1.
pub fn cpu_percent(previous: CpuReading, current: CpuReading, host_cpus: u32) -> Option<f64> {
    if host_cpus == 0 {
        return None;
    }
    let (used_usec, since_unix_ms) = if current.cpu_usec >= previous.cpu_usec {
        (
            current.cpu_usec - previous.cpu_usec,
            previous.sampled_at_unix_ms,
        )
    } else {
        let started = current.started_at_unix_ms.unwrap_or(0);
        (current.cpu_usec, previous.sampled_at_unix_ms.max(started))
    };
    let elapsed_ms = current
        .sampled_at_unix_ms
        .checked_sub(since_unix_ms)
        .filter(|ms| *ms > 0)?;

    // f64 represents integers up to 2^53 exactly: about 285 years of CPU time in microseconds.
    let busy_cpus = used_usec as f64 / (elapsed_ms as f64 * 1000.0);
    let percent = busy_cpus / f64::from(host_cpus) * 100.0;
    // The two counters and the two clock readings are not taken at the same instant, so a
    // silo at its limit can come out slightly above 100.
    Some(percent.min(100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "h1";
    const CPUS: u32 = 2;

    fn reading(cpu_usec: u64, sampled_at_unix_ms: u64, started_at_unix_ms: u64) -> CpuReading {
        CpuReading {
            cpu_usec,
            sampled_at_unix_ms,
            started_at_unix_ms: Some(started_at_unix_ms),
        }
    }

    fn sample(silo_id: &str, cpu_usec: u64, started_at_unix_ms: u64) -> proto::SiloUsageSample {
        proto::SiloUsageSample {
            silo_id: silo_id.to_owned(),
            generation: 1,
            cpu_usec: Some(cpu_usec),
            memory_bytes: Some(4096),
            processes: 3,
            rx_bytes: Some(100),
            tx_bytes: Some(200),
            started_at_unix_ms: Some(started_at_unix_ms),
        }
    }

    fn report(
        sampled_at_unix_ms: u64,
        silos: Vec<proto::SiloUsageSample>,
    ) -> proto::SiloUsageReport {
        proto::SiloUsageReport {
            sampled_at_unix_ms,
            silos,
        }
    }

    fn assert_close(actual: Option<f64>, expected: f64) {
        let actual = actual.expect("a CPU percent");
        assert!(
            (actual - expected).abs() < 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    #[test]
    fn cpu_percent_is_share_of_whole_host() {
        // Half a CPU for 2 s on a 2-CPU host is a quarter of the host.
        let percent = cpu_percent(
            reading(1_000_000, 10_000, 0),
            reading(2_000_000, 12_000, 0),
            2,
        );
        assert_close(percent, 25.0);
    }

    #[test]
    fn cpu_percent_continues_over_restart_in_place() {
        // The cgroup stays, so the counter grows on while PID 1 is new.
        let percent = cpu_percent(
            reading(1_000_000, 10_000, 0),
            reading(1_500_000, 12_000, 11_000),
            1,
        );
        assert_close(percent, 25.0);
    }

    #[test]
    fn cpu_percent_after_counter_reset() {
        // The counter restarted at 11 s; 0.5 s of CPU in the 1 s since then on one CPU.
        let percent = cpu_percent(
            reading(9_000_000, 10_000, 0),
            reading(500_000, 12_000, 11_000),
            1,
        );
        assert_close(percent, 50.0);
    }

    #[test]
    fn cpu_percent_after_reset_with_unknown_start() {
        let previous = reading(9_000_000, 10_000, 0);
        let current = CpuReading {
            started_at_unix_ms: None,
            ..reading(500_000, 12_000, 0)
        };
        assert_close(cpu_percent(previous, current, 1), 25.0);
    }

    #[test]
    fn cpu_percent_needs_elapsed_time() {
        assert_eq!(
            cpu_percent(reading(1, 10_000, 0), reading(2, 10_000, 0), 1),
            None
        );
        assert_eq!(
            cpu_percent(reading(1, 12_000, 0), reading(2, 10_000, 0), 1),
            None
        );
        assert_eq!(
            cpu_percent(reading(1, 10_000, 0), reading(2, 12_000, 0), 0),
            None
        );
    }

    #[test]
    fn cpu_percent_capped_at_whole_host() {
        let percent = cpu_percent(reading(0, 10_000, 0), reading(2_100_000, 12_000, 0), 1);
        assert_close(percent, 100.0);
    }

    #[test]
    fn store_computes_cpu_from_two_reports() {
        let store = UsageStore::default();
        let start = Instant::now();
        store.record(
            HOST,
            CPUS,
            &report(10_000, vec![sample("a", 1_000_000, 5_000)]),
            start,
        );
        let first = store.usage("a", 1, start).expect("usage after one report");
        assert_eq!(first.cpu_percent, None, "one report gives no rate");
        assert_eq!(first.memory_bytes, Some(4096));
        assert_eq!(first.processes, 3);
        assert_eq!(first.uptime_ms, Some(5_000));

        let later = start + Duration::from_secs(2);
        store.record(
            HOST,
            CPUS,
            &report(12_000, vec![sample("a", 2_000_000, 5_000)]),
            later,
        );
        let second = store
            .usage("a", 1, later + Duration::from_millis(500))
            .expect("usage after two reports");
        assert_close(second.cpu_percent, 25.0);
        assert_eq!(
            second.uptime_ms,
            Some(7_500),
            "uptime grows between reports"
        );
    }

    #[test]
    fn store_drops_silos_left_out_of_report() {
        let store = UsageStore::default();
        let now = Instant::now();
        store.record(
            HOST,
            CPUS,
            &report(10_000, vec![sample("a", 1, 0), sample("b", 1, 0)]),
            now,
        );
        store.record("h2", CPUS, &report(10_000, vec![sample("c", 1, 0)]), now);
        store.record(HOST, CPUS, &report(12_000, vec![sample("b", 2, 0)]), now);
        assert!(store.usage("a", 1, now).is_none(), "a stopped running");
        assert!(store.usage("b", 1, now).is_some());
        assert!(
            store.usage("c", 1, now).is_some(),
            "another host's report stays"
        );
    }

    #[test]
    fn store_drops_stale_entries() {
        let store = UsageStore::default();
        let start = Instant::now();
        store.record(HOST, CPUS, &report(10_000, vec![sample("a", 1, 0)]), start);
        let late = start + MAX_REPORT_AGE + Duration::from_secs(1);
        assert!(
            store.usage("a", 1, late).is_none(),
            "a stale entry is not shown"
        );

        store.record("h2", CPUS, &report(21_000, vec![sample("c", 1, 0)]), late);
        assert!(
            !store.lock().contains_key("a"),
            "a later report prunes stale entries"
        );
    }

    #[test]
    fn store_forgets_closed_host() {
        let store = UsageStore::default();
        let now = Instant::now();
        store.record(HOST, CPUS, &report(10_000, vec![sample("a", 1, 0)]), now);
        store.record("h2", CPUS, &report(10_000, vec![sample("c", 1, 0)]), now);
        store.forget_host(HOST);
        assert!(store.usage("a", 1, now).is_none());
        assert!(store.usage("c", 1, now).is_some());
    }

    #[test]
    fn store_ignores_other_generation() {
        let store = UsageStore::default();
        let now = Instant::now();
        store.record(HOST, CPUS, &report(10_000, vec![sample("a", 1, 0)]), now);
        assert!(store.usage("a", 2, now).is_none());
    }
}
