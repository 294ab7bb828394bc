//! Failpoints: named places in the silo start path where a test makes the start fail on
//! purpose, to check that the undo steps leave the host as it was. Tests only: the agent binary
//! reads one from the environment variable `COLEX_FAILPOINT`.

use super::Inner;

/// Every failpoint, in the order the start path reaches them. `after-masquerade` is reached
/// only by silos with internet access.
pub const FAILPOINTS: &[&str] = &[
    "after-lease",
    "after-silo-dir",
    "after-files",
    "after-cgroup",
    "after-masquerade",
    "after-clone",
    "after-network",
    "after-release",
    "after-started",
];

/// Reports whether `name` is one of [`FAILPOINTS`].
pub(crate) fn is_failpoint(name: &str) -> bool {
    FAILPOINTS.contains(&name)
}

/// The start reached the runtime's active failpoint.
#[derive(Debug, thiserror::Error)]
#[error("failpoint {name} reached: the start fails here on purpose")]
pub struct FailpointReached {
    pub name: &'static str,
}

/// Fails with [`FailpointReached`] when `name` is the runtime's active failpoint.
pub(super) fn failpoint(inner: &Inner, name: &'static str) -> Result<(), FailpointReached> {
    debug_assert!(
        is_failpoint(name),
        "failpoint {name} is missing from FAILPOINTS"
    );
    let active = inner
        .failpoint
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if active.as_deref() == Some(name) {
        return Err(FailpointReached { name });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_and_prefixed() {
        let mut names = FAILPOINTS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FAILPOINTS.len());
        assert!(FAILPOINTS.iter().all(|name| name.starts_with("after-")));
        assert!(!is_failpoint("after-nothing"));
    }
}
