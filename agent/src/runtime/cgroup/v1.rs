//! cgroup v1 interface files (Documentation/admin-guide/cgroup-v1/ in the kernel tree).

use std::path::Path;

use super::limits::CpuQuota;
use super::{file, CgroupError};

/// CFS period in microseconds. Written before the quota, which is checked against it.
pub const CPU_PERIOD_FILE: &str = "cpu.cfs_period_us";
/// CFS quota in microseconds per period, or -1 for none.
pub const CPU_QUOTA_FILE: &str = "cpu.cfs_quota_us";
/// CPU time of the cgroup's tasks, in nanoseconds.
pub const CPUACCT_USAGE_FILE: &str = "cpuacct.usage";
/// Hard memory limit in bytes.
pub const MEMORY_LIMIT_FILE: &str = "memory.limit_in_bytes";
/// Memory plus swap limit in bytes. Missing when the kernel does not account swap.
pub const MEMSW_LIMIT_FILE: &str = "memory.memsw.limit_in_bytes";
/// Memory in use in bytes, page cache included.
pub const MEMORY_USAGE_FILE: &str = "memory.usage_in_bytes";
/// Memory breakdown. `total_inactive_file` is page cache the kernel reclaims first.
pub const MEMORY_STAT_FILE: &str = "memory.stat";
/// OOM state. Its `oom_kill` key (Linux 4.13 and later) counts OOM kills.
pub const MEMORY_OOM_CONTROL_FILE: &str = "memory.oom_control";
/// Maximum number of tasks, or `max`.
pub const PIDS_MAX_FILE: &str = "pids.max";
/// Smallest `memory.limit_in_bytes` that means no limit: the kernel reports "unlimited" as
/// the largest page-aligned signed 64-bit value, 0x7FFFFFFFFFFFF000 with 4 KiB pages.
const UNLIMITED_MEMORY_MIN_BYTES: u64 = 1 << 62;

/// Writes the CFS period, then the quota.
pub async fn set_cpu(dir: &Path, quota: CpuQuota) -> Result<(), CgroupError> {
    file::write_limit(&dir.join(CPU_PERIOD_FILE), &quota.period_us.to_string())?;
    file::write_limit(&dir.join(CPU_QUOTA_FILE), &quota.quota_us.to_string())
}

/// Writes the memory limit, then the memory plus swap limit to the same value where swap is
/// accounted, so the limit cannot be escaped into swap. The order matters: the kernel rejects
/// a memsw limit below the memory limit.
pub async fn set_memory(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    let value = bytes.to_string();
    file::write_limit(&dir.join(MEMORY_LIMIT_FILE), &value)?;
    let memsw = dir.join(MEMSW_LIMIT_FILE);
    if file::limit_file_exists(&memsw)? {
        file::write_limit(&memsw, &value)?;
    }
    Ok(())
}

/// Writes `pids.max`.
pub async fn set_pids(dir: &Path, max: u64) -> Result<(), CgroupError> {
    file::write_limit(&dir.join(PIDS_MAX_FILE), &max.to_string())
}

/// Returns the CPU time of the cgroup's tasks, in microseconds.
pub async fn cpu_usage_usec(dir: &Path) -> Result<u64, CgroupError> {
    Ok(file::read_u64(&dir.join(CPUACCT_USAGE_FILE)).await? / 1_000)
}

/// Returns the memory in use in bytes, without the inactive page cache (as `docker stats`).
pub async fn memory_in_use(dir: &Path) -> Result<u64, CgroupError> {
    let usage = file::read_u64(&dir.join(MEMORY_USAGE_FILE)).await?;
    let inactive = file::read_keyed(&dir.join(MEMORY_STAT_FILE), "total_inactive_file")
        .await
        .unwrap_or(0);
    Ok(usage.saturating_sub(inactive))
}

/// Returns how many processes of the cgroup the kernel OOM-killed.
pub async fn oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    file::read_keyed(&dir.join(MEMORY_OOM_CONTROL_FILE), "oom_kill").await
}

/// Returns the memory limit in bytes, or `None` without one.
pub async fn memory_limit(dir: &Path) -> Result<Option<u64>, CgroupError> {
    let bytes = file::read_u64(&dir.join(MEMORY_LIMIT_FILE)).await?;
    Ok((bytes < UNLIMITED_MEMORY_MIN_BYTES).then_some(bytes))
}
