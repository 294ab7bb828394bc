//! Usage statistics of one silo: CPU time, memory and process count from its cgroups, and the
//! traffic of its network interface.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::debug;

use super::names::{validate_silo_id, SILO_IFNAME};
use super::pidfd;
use super::state::{self, SiloRecord};
use super::{cgroup, Runtime, RuntimeError};

/// Usage of one silo at the time of the call. Counters (CPU time, bytes) grow from the silo's
/// start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiloStats {
    /// CPU time of all the silo's processes, in microseconds. `None` when the host has no CPU
    /// accounting (neither cgroup2 nor the v1 cpuacct controller).
    pub cpu_usec: Option<u64>,
    /// Memory in use in bytes, without inactive page cache (as `docker stats`). `None` when the
    /// host has no memory controller.
    pub memory_bytes: Option<u64>,
    /// Number of processes in the silo, PID 1 included.
    pub processes: u64,
    /// Bytes the silo received on its interface, or `None` when no process of the silo is left
    /// to read its network namespace from.
    pub rx_bytes: Option<u64>,
    /// Bytes the silo sent on its interface, or `None` as for `rx_bytes`.
    pub tx_bytes: Option<u64>,
    /// When the silo's current PID 1 was released to run the program, or `None` when the silo
    /// record names no PID 1 that is still in the silo's cgroup. A restart in place starts a
    /// new PID 1.
    pub started_at: Option<SystemTime>,
}

/// Implements [`Runtime::stats`].
pub async fn collect(runtime: &Runtime, silo_id: &str) -> Result<SiloStats, RuntimeError> {
    let inner = &runtime.inner;
    validate_silo_id(silo_id)?;
    let silo_cgroup = inner.cgroups.silo(silo_id);
    if !silo_cgroup.exists().await {
        return Err(RuntimeError::NotFound {
            silo_id: silo_id.to_string(),
        });
    }
    let usage = silo_cgroup.stats().await?;

    // Every process of the silo shares its network namespace. PID 1 is read first because it
    // lives as long as the silo.
    let pids = cgroup::pids(silo_cgroup.membership_dir()).await?;
    let record_path = inner.silo_dirs.paths(silo_id).record();
    let record = tokio::task::spawn_blocking(move || state::read_json::<SiloRecord>(&record_path))
        .await?
        .ok();
    let init_pid = record.as_ref().and_then(|record| record.init_pid);
    let mut candidates: Vec<u32> = init_pid
        .into_iter()
        .filter(|pid| pids.contains(pid))
        .collect();
    candidates.extend(pids.iter().copied().filter(|pid| Some(*pid) != init_pid));
    // A record written by an earlier agent version has no release time. PID 1's process start
    // is the estimate then, early by the age of the spare it came from.
    let released_at = record
        .as_ref()
        .and_then(|record| record.started_at_unix_ms)
        .map(|millis| UNIX_EPOCH + Duration::from_millis(millis));
    let started_at = match (init_pid, released_at) {
        (Some(pid), Some(released_at)) if pids.contains(&pid) => Some(released_at),
        (Some(pid), None) if pids.contains(&pid) => read_process_start(pid).await,
        _ => None,
    };
    let mut traffic = None;
    for pid in candidates {
        match read_interface_traffic(pid).await {
            Some(found) => {
                traffic = Some(found);
                break;
            }
            None => debug!(
                silo = silo_id,
                pid, "no {SILO_IFNAME} counters for this process"
            ),
        }
    }

    Ok(SiloStats {
        cpu_usec: usage.cpu_usec,
        memory_bytes: usage.memory_bytes,
        processes: usage.processes,
        rx_bytes: traffic.map(|(rx, _)| rx),
        tx_bytes: traffic.map(|(_, tx)| tx),
        started_at,
    })
}

/// Reads when process `pid` started: its start time in clock ticks since boot from
/// `/proc/<pid>/stat`, placed on the wall clock through the time since boot in `/proc/uptime`.
async fn read_process_start(pid: u32) -> Option<SystemTime> {
    let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
        .await
        .ok()?;
    let start_ticks = pidfd::parse_start_ticks(&stat)?;
    let uptime = parse_uptime(&tokio::fs::read_to_string("/proc/uptime").await.ok()?)?;
    // SAFETY: sysconf only reads a configuration value and has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_second = u64::try_from(ticks_per_second).ok()?;
    start_time(SystemTime::now(), uptime, start_ticks, ticks_per_second)
}

/// Returns the time since boot from the first field of a `/proc/uptime` text, such as
/// `350735.47`: seconds with two decimals.
fn parse_uptime(text: &str) -> Option<Duration> {
    let field = text.split_whitespace().next()?;
    let (seconds, hundredths) = field.split_once('.').unwrap_or((field, "0"));
    let seconds: u64 = seconds.parse().ok()?;
    let hundredths: u64 = hundredths.parse().ok().filter(|value| *value < 100)?;
    Some(Duration::from_secs(seconds) + Duration::from_millis(hundredths * 10))
}

/// Returns the wall-clock time a process started `start_ticks` clock ticks after boot, when the
/// system has been up for `uptime` at the time `now`.
fn start_time(
    now: SystemTime,
    uptime: Duration,
    start_ticks: u64,
    ticks_per_second: u64,
) -> Option<SystemTime> {
    if ticks_per_second == 0 {
        return None;
    }
    let since_boot = Duration::from_secs(start_ticks / ticks_per_second)
        + Duration::from_secs(start_ticks % ticks_per_second)
            / u32::try_from(ticks_per_second).ok()?;
    // A start later than the uptime can only come from rounding to whole ticks: it counts as now.
    let running_for = uptime.saturating_sub(since_boot);
    now.checked_sub(running_for)
}

/// Reads the received and sent bytes of the silo interface from `/proc/<pid>/net/dev`, which
/// shows the network namespace of process `pid` whatever namespace the reader is in.
async fn read_interface_traffic(pid: u32) -> Option<(u64, u64)> {
    let path = PathBuf::from(format!("/proc/{pid}/net/dev"));
    let text = tokio::fs::read_to_string(&path).await.ok()?;
    parse_net_dev(&text, SILO_IFNAME)
}

/// Number of receive counters that come before the transmit counters in a `/proc/net/dev` line.
pub const NET_DEV_RECEIVE_COUNTERS: usize = 8;

/// Returns the counters of `interface` in a `/proc/net/dev` text. Each interface line is
/// `name: ` followed by [`NET_DEV_RECEIVE_COUNTERS`] receive and as many transmit counters,
/// bytes first, then packets.
pub fn net_dev_counters(text: &str, interface: &str) -> Option<Vec<u64>> {
    text.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != interface {
            return None;
        }
        counters.split_whitespace().map(str::parse).collect::<Result<_, _>>().ok()
    })
}

/// Returns the received and sent bytes of `interface` in a `/proc/net/dev` text.
fn parse_net_dev(text: &str, interface: &str) -> Option<(u64, u64)> {
    let counters = net_dev_counters(text, interface)?;
    Some((*counters.first()?, *counters.get(NET_DEV_RECEIVE_COUNTERS)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    5306      48    0    0    0     0          0         0     1882      21    0    0    0     0       0          0
";

    #[test]
    fn parses_uptime_seconds() {
        assert_eq!(
            parse_uptime("350735.47 234388.90\n"),
            Some(Duration::from_millis(350_735_470))
        );
        assert_eq!(parse_uptime("12 5.00"), Some(Duration::from_secs(12)));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("-1.00 0"), None);
    }

    #[test]
    fn start_time_counts_back_from_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        // Up for 500 s; the process started 450.25 s after boot, so 49.75 s ago.
        let started = start_time(now, Duration::from_secs(500), 45_025, 100);
        assert_eq!(started, Some(now - Duration::from_millis(49_750)));
        assert_eq!(
            start_time(now, Duration::from_secs(500), 60_000, 100),
            Some(now)
        );
        assert_eq!(start_time(now, Duration::from_secs(500), 1, 0), None);
    }

    #[test]
    fn parses_interface_bytes() {
        assert_eq!(parse_net_dev(NET_DEV, "eth0"), Some((5306, 1882)));
        assert_eq!(parse_net_dev(NET_DEV, "lo"), Some((140, 140)));
        assert_eq!(parse_net_dev(NET_DEV, "eth1"), None);
    }
}
