//! Resource limits of one silo, in the units the kernel files take.

/// CFS period of a silo's CPU bandwidth limit, in microseconds: the kernel default, short
/// enough that a capped silo runs in slices of at most 100 ms.
pub const CPU_PERIOD_US: u64 = 100_000;

/// CPU bandwidth: the silo's processes together run at most `quota_us` per `period_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuQuota {
    /// Returns the quota for `percent` of the whole host's CPU capacity: 50 on a 2-core host is
    /// one core, so the quota is `percent / 100 * cpu_count` periods.
    pub fn from_host_percent(percent: u32, cpu_count: u32) -> CpuQuota {
        let quota_us = u64::from(percent) * u64::from(cpu_count.max(1)) * CPU_PERIOD_US / 100;
        CpuQuota {
            quota_us,
            period_us: CPU_PERIOD_US,
        }
    }
}

/// Limits written into a silo's cgroups. `None` leaves the kernel default (no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu: Option<CpuQuota>,
    /// Hard memory limit in bytes. Swap is disabled where the kernel accounts it.
    pub memory_bytes: Option<u64>,
    /// Maximum number of tasks (processes and threads).
    pub pids_max: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_share_of_whole_host() {
        assert_eq!(
            CpuQuota::from_host_percent(50, 2),
            CpuQuota {
                quota_us: 100_000,
                period_us: CPU_PERIOD_US
            }
        );
        assert_eq!(CpuQuota::from_host_percent(25, 2).quota_us, 50_000);
        assert_eq!(CpuQuota::from_host_percent(100, 8).quota_us, 800_000);
        assert_eq!(CpuQuota::from_host_percent(4, 1).quota_us, 4_000);
    }

    #[test]
    fn zero_cpu_count_counts_as_one() {
        assert_eq!(CpuQuota::from_host_percent(50, 0).quota_us, 50_000);
    }
}
