//! Step timings of one silo start. The start marks the end of each step, and the runtime logs
//! all marks in one debug event when the start ends, so a slow step shows up in the agent's
//! log (target `colex_agent::runtime::step_clock`) without a profiler. The start latency
//! benchmark reads the same events.

use std::cell::RefCell;
use std::fmt;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use tracing::debug;

tokio::task_local! {
    /// The clock of the start that runs in this task. A step that runs on another thread is
    /// marked by the start's task once that step's result arrives.
    static CLOCK: StepClock;
}

/// Marks of one start: each step's name and its end, counted from the start request.
#[derive(Debug)]
pub(super) struct StepClock {
    started: Instant,
    /// `CLOCK_MONOTONIC` at `started`, in nanoseconds, to place steps of other processes.
    started_ns: u64,
    marks: RefCell<Vec<(&'static str, Duration)>>,
}

impl StepClock {
    fn new() -> StepClock {
        StepClock {
            started: Instant::now(),
            started_ns: monotonic_ns(),
            marks: RefCell::new(Vec::with_capacity(16)),
        }
    }
}

impl fmt::Display for StepClock {
    /// `step=MICROS` pairs in the order of the marks, e.g. `lease=310 files=720`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let marks = self.marks.borrow();
        for (position, (step, elapsed)) in marks.iter().enumerate() {
            if position > 0 {
                formatter.write_str(" ")?;
            }
            write!(formatter, "{step}={}", elapsed.as_micros())?;
        }
        Ok(())
    }
}

/// Runs `start` with a fresh clock and logs its marks for `silo_id` once it returns.
pub(super) async fn timed<T>(silo_id: &str, start: impl std::future::Future<Output = T>) -> T {
    CLOCK
        .scope(StepClock::new(), async {
            let result = start.await;
            CLOCK.with(
                |clock| debug!(silo = silo_id, steps = %clock, "silo start steps in microseconds"),
            );
            result
        })
        .await
}

/// Marks of steps that ran in a task of their own, in the order they were made.
pub(super) type TaskMarks = Vec<(&'static str, Duration)>;

/// Spawns `work` as a task of its own, which marks its steps on the clock of the current start
/// (if any). Await the handle and pass the marks to [`merge`], so they join this start's log.
pub(super) fn spawn_marked<F>(work: F) -> tokio::task::JoinHandle<(F::Output, TaskMarks)>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let clock = CLOCK
        .try_with(|clock| StepClock {
            started: clock.started,
            started_ns: clock.started_ns,
            marks: RefCell::new(Vec::with_capacity(4)),
        })
        .ok();
    tokio::spawn(async move {
        match clock {
            Some(clock) => {
                CLOCK
                    .scope(clock, async {
                        let output = work.await;
                        (output, CLOCK.with(|clock| clock.marks.take()))
                    })
                    .await
            }
            None => (work.await, Vec::new()),
        }
    })
}

/// Adds the marks a task of [`spawn_marked`] made to the current start's clock.
pub(super) fn merge(marks: TaskMarks) {
    let _ = CLOCK.try_with(|clock| clock.marks.borrow_mut().extend(marks));
}

/// Marks the end of `step` of another process, which read `CLOCK_MONOTONIC` as `at_ns`
/// nanoseconds. Does nothing for a zero time, or outside a timed start.
pub(super) fn mark_at(step: &'static str, at_ns: u64) {
    if at_ns == 0 {
        return;
    }
    let _ = CLOCK.try_with(|clock| {
        let elapsed = Duration::from_nanos(at_ns.saturating_sub(clock.started_ns));
        clock.marks.borrow_mut().push((step, elapsed));
    });
}

/// Reads `CLOCK_MONOTONIC` in nanoseconds, the clock behind `Instant`, so steps of the silo's
/// PID 1 can be placed on the agent's timeline. Zero if the clock cannot be read.
pub(super) fn monotonic_ns() -> u64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(now) => (now.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(now.tv_nsec() as u64),
        Err(_) => 0,
    }
}

/// Marks the end of `step` in the current start. Outside a timed start it does nothing.
pub(super) fn mark(step: &'static str) {
    let _ = CLOCK.try_with(|clock| {
        let elapsed = clock.started.elapsed();
        clock.marks.borrow_mut().push((step, elapsed));
    });
}
