//! Step timings of colex's starts. The collector keeps the runtime's "silo start steps" debug
//! events (`step=MICROS` pairs, module `step_clock` of the runtime) and prints the median end of
//! each step, counted from the start request.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::latency::millis;

/// Target of the runtime's step events.
const STEP_TARGET: &str = "colex_agent::runtime::step_clock";

/// The step lines seen since the last [`StepLog::take`].
#[derive(Debug, Clone, Default)]
pub struct StepLog {
    lines: Arc<Mutex<Vec<String>>>,
}

impl StepLog {
    /// Installs the collector as the process's tracing subscriber. Only the step events pass
    /// its filter, so the runtime's other logs cost nothing.
    pub fn install() -> anyhow::Result<StepLog> {
        let log = StepLog::default();
        tracing_subscriber::registry()
            .with(
                Collector { log: log.clone() }
                    .with_filter(Targets::new().with_target(STEP_TARGET, tracing::Level::DEBUG)),
            )
            .try_init()
            .map_err(|err| anyhow::anyhow!("cannot install the step collector: {err}"))?;
        Ok(log)
    }

    /// Returns the lines collected so far and starts over.
    pub fn take(&self) -> Vec<String> {
        let mut lines = self
            .lines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *lines)
    }
}

struct Collector {
    log: StepLog,
}

impl<S: Subscriber> Layer<S> for Collector {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let mut visitor = StepsField(None);
        event.record(&mut visitor);
        if let Some(steps) = visitor.0 {
            let mut lines = self
                .log
                .lines
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            lines.push(steps);
        }
    }
}

/// Picks the `steps` field of an event.
struct StepsField(Option<String>);

impl Visit for StepsField {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "steps" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// Prints each step's median end over `lines`, in the order of the first line's steps.
pub fn print_medians(lines: &[String]) {
    let mut order: Vec<String> = Vec::new();
    let mut ends: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in lines {
        for pair in line.split_whitespace() {
            let Some((step, micros)) = pair.split_once('=') else {
                continue;
            };
            let Ok(micros) = micros.parse::<u64>() else {
                continue;
            };
            if !ends.contains_key(step) {
                order.push(step.to_string());
            }
            ends.entry(step.to_string()).or_default().push(micros);
        }
    }
    if order.is_empty() {
        return;
    }
    println!(
        "  colex steps, median end from the start request ({} starts):",
        lines.len()
    );
    for step in order {
        let Some(values) = ends.get_mut(&step) else {
            continue;
        };
        values.sort_unstable();
        let median = values[values.len() / 2];
        println!("    {step:<16} {}", millis(Duration::from_micros(median)));
    }
}
