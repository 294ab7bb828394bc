//! Helpers shared by the lab benchmarks: run counts and percentiles.

use std::time::Duration;

/// Environment variable that sets the number of timed runs.
pub const RUNS_VAR: &str = "COLEX_BENCH_RUNS";

/// Returns the number of timed runs: `COLEX_BENCH_RUNS`, or `default`.
pub fn runs(default: usize) -> usize {
    std::env::var(RUNS_VAR)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|runs| *runs > 0)
        .unwrap_or(default)
}

/// Returns the `percent` percentile of `samples` by the nearest-rank method.
pub fn percentile(samples: &[Duration], percent: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
