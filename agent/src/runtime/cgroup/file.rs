//! Reading and writing cgroup interface files.

use std::io;
use std::path::Path;

use super::CgroupError;

/// Writes `value` to the cgroup file `path`.
pub async fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    tokio::fs::write(path, value)
        .await
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: value.to_string(),
            source,
        })
}

/// Writes the limit `value` to the cgroup file `path` on the calling thread. A limit file
/// (`pids.max`, `cpu.max`, `memory.max` and their v1 peers) takes no lock that a move into a
/// cgroup takes, so the write costs microseconds. A trip to tokio's blocking pool costs up to
/// 1 ms while a silo starts on the reference machine.
pub fn write_limit(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

/// Reports on the calling thread whether the optional limit file `path` exists; see
/// [`write_limit`].
pub fn limit_file_exists(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads the cgroup file `path`.
pub async fn read(path: &Path) -> Result<String, CgroupError> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Reports whether the cgroup file `path` exists, which for optional files (such as
/// `memory.swap.max`) depends on the kernel's configuration.
pub async fn exists(path: &Path) -> Result<bool, CgroupError> {
    match tokio::fs::metadata(path).await {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads a file that contains one number.
pub async fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = read(path).await?;
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

/// Reads the value of `key` from a flat keyed file (`key value` per line, such as
/// `memory.stat` or `cpu.stat`).
pub async fn read_keyed(path: &Path, key: &str) -> Result<u64, CgroupError> {
    let text = read(path).await?;
    keyed_value(&text, key).ok_or_else(|| CgroupError::MissingKey {
        path: path.to_path_buf(),
        key: key.to_string(),
    })
}

/// Returns the value of `key` in a flat keyed text.
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keyed_value() {
        let text = "oom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(text, "oom_kill"), Some(1));
        assert_eq!(keyed_value(text, "oom"), Some(2));
        assert_eq!(keyed_value(text, "max"), None);
        assert_eq!(keyed_value("usage_usec abc\n", "usage_usec"), None);
    }
}
