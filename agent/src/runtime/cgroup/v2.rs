//! cgroup v2 interface files (Documentation/admin-guide/cgroup-v2.rst in the kernel tree).

use std::path::Path;

use super::layout::Controller;
use super::limits::CpuQuota;
use super::{file, CgroupError};

/// Controllers enabled for the children of a cgroup, written as `+name` or `-name`.
pub const SUBTREE_CONTROL_FILE: &str = "cgroup.subtree_control";
/// CPU bandwidth limit: `$QUOTA $PERIOD` in microseconds, or `max $PERIOD`.
pub const CPU_MAX_FILE: &str = "cpu.max";
/// CPU time statistics. `usage_usec` is present even without the cpu controller.
pub const CPU_STAT_FILE: &str = "cpu.stat";
/// Hard memory limit in bytes, or `max`.
pub const MEMORY_MAX_FILE: &str = "memory.max";
/// Swap limit in bytes. Missing when the kernel does not account swap.
pub const MEMORY_SWAP_MAX_FILE: &str = "memory.swap.max";
/// Memory in use by the cgroup and its descendants, in bytes.
pub const MEMORY_CURRENT_FILE: &str = "memory.current";
/// Memory breakdown. `inactive_file` is page cache the kernel reclaims first.
pub const MEMORY_STAT_FILE: &str = "memory.stat";
/// Memory events of the cgroup and its descendants. `oom_kill` counts OOM kills.
pub const MEMORY_EVENTS_FILE: &str = "memory.events";
/// Maximum number of tasks, or `max`.
pub const PIDS_MAX_FILE: &str = "pids.max";
/// The value of a limit file that means no limit.
const UNLIMITED: &str = "max";

/// Enables `controllers` for the children of `dir`. Enabled ones are left as they are.
pub async fn enable_controllers(dir: &Path, controllers: &[Controller]) -> Result<(), CgroupError> {
    if controllers.is_empty() {
        return Ok(());
    }
    let path = dir.join(SUBTREE_CONTROL_FILE);
    let enabled = match file::exists(&path).await? {
        true => file::read(&path).await?,
        false => String::new(),
    };
    let missing: Vec<String> = controllers
        .iter()
        .filter(|controller| {
            !enabled
                .split_whitespace()
                .any(|name| name == controller.name())
        })
        .map(|controller| format!("+{}", controller.name()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    file::write(&path, &missing.join(" ")).await
}

/// Writes `cpu.max`.
pub async fn set_cpu(dir: &Path, quota: CpuQuota) -> Result<(), CgroupError> {
    let value = format!("{} {}", quota.quota_us, quota.period_us);
    file::write_limit(&dir.join(CPU_MAX_FILE), &value)
}

/// Writes `memory.max`, and `memory.swap.max` = 0 where swap is accounted, so the limit
/// cannot be escaped into swap.
pub async fn set_memory(dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    file::write_limit(&dir.join(MEMORY_MAX_FILE), &bytes.to_string())?;
    let swap = dir.join(MEMORY_SWAP_MAX_FILE);
    if file::limit_file_exists(&swap)? {
        file::write_limit(&swap, "0")?;
    }
    Ok(())
}

/// Writes `pids.max`.
pub async fn set_pids(dir: &Path, max: u64) -> Result<(), CgroupError> {
    file::write_limit(&dir.join(PIDS_MAX_FILE), &max.to_string())
}

/// Returns the CPU time of the cgroup's processes, in microseconds.
pub async fn cpu_usage_usec(dir: &Path) -> Result<u64, CgroupError> {
    file::read_keyed(&dir.join(CPU_STAT_FILE), "usage_usec").await
}

/// Returns the memory in use in bytes, without the inactive page cache: the same measure as
/// `docker stats`, which the kernel would reclaim before an OOM kill.
pub async fn memory_in_use(dir: &Path) -> Result<u64, CgroupError> {
    let current = file::read_u64(&dir.join(MEMORY_CURRENT_FILE)).await?;
    let inactive = file::read_keyed(&dir.join(MEMORY_STAT_FILE), "inactive_file")
        .await
        .unwrap_or(0);
    Ok(current.saturating_sub(inactive))
}

/// Returns how many processes of the cgroup the kernel OOM-killed.
pub async fn oom_kills(dir: &Path) -> Result<u64, CgroupError> {
    file::read_keyed(&dir.join(MEMORY_EVENTS_FILE), "oom_kill").await
}

/// Returns the memory limit in bytes, or `None` without one.
pub async fn memory_limit(dir: &Path) -> Result<Option<u64>, CgroupError> {
    let path = dir.join(MEMORY_MAX_FILE);
    let text = file::read(&path).await?;
    let text = text.trim();
    if text == UNLIMITED {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| CgroupError::Parse {
        path,
        text: text.to_string(),
    })
}
