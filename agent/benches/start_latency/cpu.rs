//! Busy share of the machine's CPUs while the benchmark timed something, from the counters in
//! `/proc/stat`. The counters move in USER_HZ ticks (10 ms on x86 Linux), coarser than one
//! start, so only the sum over many timed spans is meaningful.

use std::ops::AddAssign;

/// CPU time of all cores in clock ticks: busy (anything but idle and I/O wait) and total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub busy: u64,
    pub total: u64,
}

impl CpuTicks {
    /// Reads the counters of all cores; zero when `/proc/stat` cannot be read.
    pub fn now() -> CpuTicks {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = text.lines().find(|line| line.starts_with("cpu ")) else {
            return CpuTicks::default();
        };
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        // Fields 4 and 5 are idle and iowait. Guest time is also included in user time, so the
        // sum counts it twice. That scales both sides of a comparison alike.
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        CpuTicks {
            busy: total.saturating_sub(idle),
            total,
        }
    }

    /// Returns the ticks from `earlier` to `self`.
    pub fn since(self, earlier: CpuTicks) -> CpuTicks {
        CpuTicks {
            busy: self.busy.saturating_sub(earlier.busy),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    /// Returns the busy share in percent; `None` when no tick passed.
    pub fn busy_percent(self) -> Option<f64> {
        (self.total > 0).then(|| 100.0 * self.busy as f64 / self.total as f64)
    }
}

impl AddAssign for CpuTicks {
    fn add_assign(&mut self, other: CpuTicks) {
        self.busy += other.busy;
        self.total += other.total;
    }
}
