//! The recent history of each silo instance: what `colex-cli status NAME` shows as events.
//!
//! Events are appended only while a Raft command is applied, so every controller stores the
//! same events in the same order. Their time is the wall clock of the leader that proposed the
//! command (see `Command::Stamped`), never the clock of the controller that applies it.

use colex_proto as proto;
use serde::{Deserialize, Serialize};

use crate::state::SiloStatus;

/// Number of events kept per silo instance; appending one more drops the oldest.
pub const MAX_EVENTS_PER_INSTANCE: usize = 16;

/// One change in the life of a silo instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiloEvent {
    /// Time the leader proposed the change, in milliseconds since the Unix epoch; 0 when the
    /// command carried no time, as in log entries written before events existed.
    pub at_unix_ms: u64,
    pub kind: EventKind,
}

/// Kind of a change in the life of a silo instance, with its details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The scheduler chose this host.
    Placed { host: String },
    /// No host fits the instance, for this reason.
    Pending { reason: String },
    /// The agent reported the program running.
    Started,
    /// The program exited with this code; `None` when the agent reported no code.
    Exited { code: Option<i32> },
    /// The agent could not set the silo up.
    Failed { message: String },
    /// The program exited after the kernel OOM-killed a process of the silo.
    OomKilled { code: Option<i32>, message: String },
    /// The agent restarted the program in place under the restart policy; `restarts` counts
    /// every restart of this instance so far.
    Restarted { restarts: u32 },
    /// A new spec replaced the instance, which now has this id and generation.
    Replaced { id: String, generation: u64 },
    /// `down`, or a lower `count`, asked the agent to stop the instance.
    Stopping,
    /// The instance's host was declared lost, so the instance must run elsewhere.
    HostLost { host: String },
    /// The scheduler chose this host after the previous host was lost.
    PlacedAgain { host: String },
}

impl EventKind {
    /// Returns the stable lower-case name of the kind, as JSON output and the API carry it.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Placed { .. } => "placed",
            EventKind::Pending { .. } => "pending",
            EventKind::Started => "started",
            EventKind::Exited { .. } => "exited",
            EventKind::Failed { .. } => "failed",
            EventKind::OomKilled { .. } => "oom-killed",
            EventKind::Restarted { .. } => "restarted",
            EventKind::Replaced { .. } => "replaced",
            EventKind::Stopping => "stopping",
            EventKind::HostLost { .. } => "host-lost",
            EventKind::PlacedAgain { .. } => "placed-again",
        }
    }

    /// Returns the one-line description a person reads, such as `exited with code 3`.
    pub fn describe(&self) -> String {
        match self {
            EventKind::Placed { host } => format!("placed on {host}"),
            EventKind::Pending { reason } => format!("pending: {reason}"),
            EventKind::Started => "started".to_owned(),
            EventKind::Exited { code: Some(code) } => format!("exited with code {code}"),
            EventKind::Exited { code: None } => "exited".to_owned(),
            // Agent messages often start with "failed to ...", which needs no second "failed".
            EventKind::Failed { message } if message.to_lowercase().starts_with("failed") => message.clone(),
            EventKind::Failed { message } => format!("failed: {message}"),
            EventKind::OomKilled { message, .. } => format!("OOM-killed: {message}"),
            EventKind::Restarted { restarts } => format!("restarted (restart {restarts})"),
            EventKind::Replaced { id, generation } => {
                format!("replaced by a new spec (id {id}, generation {generation})")
            }
            EventKind::Stopping => "stopping".to_owned(),
            EventKind::HostLost { host } => format!("host {host} lost"),
            EventKind::PlacedAgain { host } => format!("placed again on {host}"),
        }
    }

    /// Returns the exit code the event carries, if any.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            EventKind::Exited { code } | EventKind::OomKilled { code, .. } => *code,
            _ => None,
        }
    }

    /// Builds the API message of this event at `at_unix_ms`.
    pub fn to_proto(&self, at_unix_ms: u64) -> proto::SiloEvent {
        proto::SiloEvent {
            at_unix_ms,
            kind: self.name().to_owned(),
            message: self.describe(),
            exit_code: self.exit_code(),
        }
    }
}

/// The last [`MAX_EVENTS_PER_INSTANCE`] events of one silo instance, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventLog(Vec<SiloEvent>);

impl EventLog {
    /// Appends `kind` at `at_unix_ms`, dropping the oldest event when the log is full.
    pub fn push(&mut self, at_unix_ms: u64, kind: EventKind) {
        // A row decoded from a store may hold more than the bound if it was ever lowered.
        while self.0.len() >= MAX_EVENTS_PER_INSTANCE {
            self.0.remove(0);
        }
        self.0.push(SiloEvent { at_unix_ms, kind });
    }

    /// Returns the events, oldest first.
    pub fn events(&self) -> &[SiloEvent] {
        &self.0
    }
}

/// Derives the events of one agent report: `previous` is the status stored before it, `None`
/// when the agent had not reported for this instance yet.
///
/// The agent reports the state of the program, not each transition, so events are read from
/// the difference. A rise of `restarts` is a restart. A new exit code, or an exit while the
/// program was up, is an exit. The first UP after any other state is a start.
pub fn status_events(previous: Option<&SiloStatus>, current: &SiloStatus) -> Vec<EventKind> {
    let state_of = |status: &SiloStatus| proto::SiloState::try_from(status.state).unwrap_or(proto::SiloState::Unspecified);
    let state = state_of(current);
    let previous_state = previous.map(state_of);
    let was_up = previous_state == Some(proto::SiloState::Up);
    let mut events = Vec::new();

    if state == proto::SiloState::Failed {
        if previous_state != Some(proto::SiloState::Failed) {
            events.push(EventKind::Failed {
                message: current.message.clone(),
            });
        }
        return events;
    }

    // The agent reports a program waiting for its restart as STARTING with the exit code, and
    // an exit the policy does not restart as EXITED.
    let exit_state = matches!(state, proto::SiloState::Exited | proto::SiloState::Starting);
    let new_exit_code = previous.map(|status| status.exit_code) != Some(current.exit_code);
    let exited_with_code = exit_state && current.exit_code.is_some() && (new_exit_code || was_up);
    let exited_without_code = state == proto::SiloState::Exited && current.exit_code.is_none() && was_up;
    if exited_with_code || exited_without_code {
        events.push(exit_event(current));
    }

    let previous_restarts = previous.map_or(0, |status| status.restarts);
    if current.restarts > previous_restarts {
        events.push(EventKind::Restarted {
            restarts: current.restarts,
        });
    }

    if state == proto::SiloState::Up && !was_up {
        events.push(EventKind::Started);
    }
    events
}

/// Returns the exit event of `status`: OOM-killed when the agent's message reports that the kernel
/// OOM-killed a process (the agent writes "OOM killed" or "OOM-killed"), otherwise exited.
// NOTE: the agent reports an exit that the policy restarts as "restarting after exit code N",
// without the OOM note, so such an exit shows as exited. Only the agent can fix this.
fn exit_event(status: &SiloStatus) -> EventKind {
    if status.message.contains("OOM") {
        EventKind::OomKilled {
            code: status.exit_code,
            message: status.message.clone(),
        }
    } else {
        EventKind::Exited { code: status.exit_code }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: proto::SiloState, exit_code: Option<i32>, restarts: u32, message: &str) -> SiloStatus {
        SiloStatus {
            state: state.into(),
            interfaces: Vec::new(),
            exit_code,
            message: message.to_owned(),
            restarts,
        }
    }

    #[test]
    fn log_keeps_only_newest_events() {
        let mut log = EventLog::default();
        for restarts in 0..40 {
            log.push(u64::from(restarts), EventKind::Restarted { restarts });
        }
        assert_eq!(log.events().len(), MAX_EVENTS_PER_INSTANCE);
        assert_eq!(log.events()[0].kind, EventKind::Restarted { restarts: 24 });
        assert_eq!(log.events().last().map(|event| event.at_unix_ms), Some(39));
    }

    #[test]
    fn restart_sequence_gives_each_event_once() {
        use proto::SiloState::{Exited, Starting, Up};
        // The reports an agent sends for a program that exits with 3 twice under
        // `on-failure` with one attempt.
        let reports = [
            status(Starting, None, 0, ""),
            status(Up, None, 0, ""),
            status(Starting, Some(3), 0, "restarting after exit code 3"),
            status(Starting, Some(3), 1, "restarting after exit code 3"),
            status(Up, Some(3), 1, ""),
            status(Exited, Some(3), 1, "exited with code 3"),
        ];
        let mut previous: Option<SiloStatus> = None;
        let mut seen = Vec::new();
        for report in reports {
            seen.extend(status_events(previous.as_ref(), &report));
            previous = Some(report);
        }
        assert_eq!(
            seen,
            vec![
                EventKind::Started,
                EventKind::Exited { code: Some(3) },
                EventKind::Restarted { restarts: 1 },
                EventKind::Started,
                EventKind::Exited { code: Some(3) },
            ]
        );
    }

    #[test]
    fn oom_message_gives_oom_event() {
        let up = status(proto::SiloState::Up, None, 0, "");
        let killed = status(proto::SiloState::Exited, Some(137), 0, "OOM killed (memory limit 64 MiB)");
        let events = status_events(Some(&up), &killed);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name(), "oom-killed");
        assert_eq!(events[0].exit_code(), Some(137));
    }

    #[test]
    fn failure_is_reported_once() {
        let failed = status(proto::SiloState::Failed, None, 0, "image alpine missing");
        assert_eq!(
            status_events(None, &failed),
            vec![EventKind::Failed {
                message: "image alpine missing".to_owned()
            }]
        );
        assert!(status_events(Some(&failed), &failed).is_empty());
    }

    #[test]
    fn unchanged_up_report_gives_no_event() {
        let up = status(proto::SiloState::Up, None, 0, "");
        assert!(status_events(Some(&up), &up).is_empty());
    }

    #[test]
    fn descriptions_name_the_values() {
        assert_eq!(EventKind::Placed { host: "a".to_owned() }.describe(), "placed on a");
        assert_eq!(EventKind::Exited { code: Some(3) }.describe(), "exited with code 3");
        assert_eq!(EventKind::Restarted { restarts: 2 }.describe(), "restarted (restart 2)");
        assert_eq!(EventKind::PlacedAgain { host: "b".to_owned() }.describe(), "placed again on b");
    }

    #[test]
    fn failure_descriptions_say_failed_once() {
        let failed = |message: &str| EventKind::Failed {
            message: message.to_owned(),
        };
        assert_eq!(failed("image alpine missing").describe(), "failed: image alpine missing");
        assert_eq!(
            failed("failed to start silo 0000000a: binary /bin/x not found").describe(),
            "failed to start silo 0000000a: binary /bin/x not found"
        );
    }
}
