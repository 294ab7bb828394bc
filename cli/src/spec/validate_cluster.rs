//! Rules on the resource limits and on the colex extensions that the original tool did not
//! have: `count`, `placement`, `restart`, `kill_timeout` and `resources.memory`.

use super::declared::{DeclaredPlacement, DeclaredResources, DeclaredRestart, DeclaredSilo};
use super::diagnostics::Diagnostics;
use super::value::{Field, Located};

/// Allowed range of `resources.cpu_percent`, in percent of the host's whole CPU capacity.
pub(super) const MIN_CPU_PERCENT: i128 = 4;
pub(super) const MAX_CPU_PERCENT: i128 = 100;

/// Smallest memory limit accepted, in bytes (4 MiB).
pub(super) const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;

/// Maximum number of instances of one silo.
pub(super) const MAX_COUNT: i128 = 1000;

/// Words accepted by `placement.strategy`, the first being the default.
pub(super) const PLACEMENT_STRATEGIES: [&str; 2] = ["spread", "binpack"];

/// Words accepted by `restart.policy`.
pub(super) const RESTART_POLICIES: [&str; 3] = ["never", "on-failure", "always"];

/// Reports every resource and cluster-extension rule that one silo breaks.
pub(super) fn check(silo: &DeclaredSilo, diagnostics: &mut Diagnostics<'_>) {
    let prefix = silo.prefix.as_str();

    if let Field::Valid(count) = &silo.count {
        if !(0..=MAX_COUNT).contains(&count.value) {
            diagnostics.report(
                count.offset,
                format!(
                    "{prefix}count {} is outside 0..={MAX_COUNT}; set the number of instances from 0 to {MAX_COUNT}",
                    count.value
                ),
            );
        }
    }

    if let Field::Valid(timeout) = &silo.kill_timeout_ms {
        if timeout.value == 0 {
            diagnostics.report(
                timeout.offset,
                format!(
                    "{prefix}kill_timeout of 0ms is too short; give a longer duration, or remove kill_timeout for the default of 5s"
                ),
            );
        }
    }

    if let Some(resources) = &silo.resources {
        check_resources(resources, prefix, diagnostics);
    }
    if let Some(placement) = &silo.placement {
        check_placement(placement, prefix, diagnostics);
    }
    if let Some(restart) = &silo.restart {
        check_restart(restart, prefix, diagnostics);
    }
}

fn check_resources(resources: &DeclaredResources, prefix: &str, diagnostics: &mut Diagnostics<'_>) {
    if let Field::Valid(cpu) = &resources.cpu_percent {
        if !(MIN_CPU_PERCENT..=MAX_CPU_PERCENT).contains(&cpu.value) {
            diagnostics.report(
                cpu.offset,
                format!(
                    "{prefix}resources.cpu_percent {} is outside {MIN_CPU_PERCENT}..={MAX_CPU_PERCENT}; give the share of the host's whole CPU capacity in percent, from {MIN_CPU_PERCENT} to {MAX_CPU_PERCENT}",
                    cpu.value
                ),
            );
        }
    }

    if let Field::Valid(bytes) = &resources.max_memory_bytes {
        if bytes.value < i128::from(MIN_MEMORY_BYTES) {
            report_memory_below_minimum(
                prefix,
                "max_memory_bytes",
                bytes.value,
                bytes.offset,
                diagnostics,
            );
        } else if bytes.value > i128::from(u64::MAX) {
            diagnostics.report(
                bytes.offset,
                format!(
                    "{prefix}resources.max_memory_bytes {} is too large; give at most {} bytes",
                    bytes.value,
                    u64::MAX
                ),
            );
        }
    }

    if let Field::Valid(bytes) = &resources.memory_bytes {
        if bytes.value < MIN_MEMORY_BYTES {
            report_memory_below_minimum(
                prefix,
                "memory",
                i128::from(bytes.value),
                bytes.offset,
                diagnostics,
            );
        }
    }

    // Both given: the one written later is reported, because the first reads as the intent.
    if let (Field::Valid(first), Field::Valid(second)) =
        (&resources.max_memory_bytes, &resources.memory_bytes)
    {
        let later = first.offset.max(second.offset);
        diagnostics.report(
            later,
            format!(
                "{prefix}resources.memory and resources.max_memory_bytes are both set; keep only one of them"
            ),
        );
    }
}

fn report_memory_below_minimum(
    prefix: &str,
    attribute: &str,
    bytes: i128,
    offset: usize,
    diagnostics: &mut Diagnostics<'_>,
) {
    diagnostics.report(
        offset,
        format!(
            "{prefix}resources.{attribute} of {bytes} bytes is below the minimum of 4 MiB ({MIN_MEMORY_BYTES} bytes); give at least \"4MiB\""
        ),
    );
}

fn check_placement(placement: &DeclaredPlacement, prefix: &str, diagnostics: &mut Diagnostics<'_>) {
    for host in &placement.hosts {
        if host.value.trim().is_empty() {
            diagnostics.report(
                host.offset,
                format!(
                    "{prefix}empty placement.hosts entry; write a host name or remove the entry"
                ),
            );
        }
    }
    for (key, _) in &placement.labels {
        if key.value.trim().is_empty() {
            diagnostics.report(
                key.offset,
                format!(
                    "{prefix}empty placement.labels key; write a label name or remove the entry"
                ),
            );
        }
    }
    if let Field::Valid(strategy) = &placement.strategy {
        check_word(
            strategy,
            "placement.strategy",
            &PLACEMENT_STRATEGIES,
            prefix,
            diagnostics,
        );
    }
}

fn check_restart(restart: &DeclaredRestart, prefix: &str, diagnostics: &mut Diagnostics<'_>) {
    match &restart.policy {
        Field::Valid(policy) => check_word(
            policy,
            "restart.policy",
            &RESTART_POLICIES,
            prefix,
            diagnostics,
        ),
        Field::Invalid => {}
        Field::Absent => diagnostics.report(
            restart.header,
            format!(
                "{prefix}missing restart.policy; add policy = {}",
                quoted_words(&RESTART_POLICIES)
            ),
        ),
    }

    if let Field::Valid(attempts) = &restart.attempts {
        if attempts.value < 0 {
            diagnostics.report(
                attempts.offset,
                format!(
                    "{prefix}restart.attempts {} is negative; give the number of restarts, or 0 for no limit",
                    attempts.value
                ),
            );
        } else if attempts.value > i128::from(u32::MAX) {
            diagnostics.report(
                attempts.offset,
                format!(
                    "{prefix}restart.attempts {} is too large; give at most {}, or 0 for no limit",
                    attempts.value,
                    u32::MAX
                ),
            );
        }
    }
}

/// Reports a value that is not one of the allowed words.
fn check_word(
    value: &Located<String>,
    attribute: &str,
    allowed: &[&str],
    prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
) {
    if !allowed.contains(&value.value.as_str()) {
        diagnostics.report(
            value.offset,
            format!(
                "{prefix}invalid {attribute} {:?}; use {}",
                value.value,
                quoted_words(allowed)
            ),
        );
    }
}

/// Lists words for a message: `"a", "b" or "c"`.
fn quoted_words(words: &[&str]) -> String {
    let quoted: Vec<String> = words.iter().map(|word| format!("{word:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_joins_with_or() {
        assert_eq!(
            quoted_words(&RESTART_POLICIES),
            "\"never\", \"on-failure\" or \"always\""
        );
        assert_eq!(
            quoted_words(&PLACEMENT_STRATEGIES),
            "\"spread\" or \"binpack\""
        );
        assert_eq!(quoted_words(&["one"]), "\"one\"");
    }
}
