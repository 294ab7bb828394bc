//! The `status NAME` command: a silo's spec summary, its instances, and their recent events.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Local, SecondsFormat, Utc};
use colex_proto as proto;
use serde::Serialize;
use tabled::Tabled;

use crate::client::{CliError, Controller};
use crate::silo_names::silo_not_found;
use crate::output::{self, OutputFormat};
use crate::table;

/// Prints the status of silo `name` as text or one JSON document.
pub async fn run(address: &str, name: &str, format: OutputFormat) -> Result<(), CliError> {
    let mut controller = Controller::connect(address).await?;
    let request = proto::StatusRequest { name: name.to_owned() };
    let response = match controller.client.status(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            // The controller's message does not name the closest silo, so it is built here.
            let silos = controller.list().await.map(|listed| listed.silos).unwrap_or_default();
            return Err(CliError::user(silo_not_found(name, &silos)));
        }
        Err(status) => return Err(CliError::from_status(&controller.address, &status)),
    };

    let now = SystemTime::now();
    match format {
        OutputFormat::Json => output::print_json(&SiloStatusDocument::new(name, &response)),
        OutputFormat::Table => {
            println!("{}", render_text(name, &response, now));
            Ok(())
        }
    }
}

/// Returns the whole text output: summary block, instance table and event table.
fn render_text(name: &str, response: &proto::StatusResponse, now: SystemTime) -> String {
    let spec = response.spec.clone().unwrap_or_default();
    let mut text = summary_block(name, &spec);

    let instances: Vec<InstanceRow> = response
        .instances
        .iter()
        .filter_map(|instance| instance.info.as_ref())
        .map(instance_row)
        .collect();
    text.push('\n');
    text.push_str(&table::render(&instances));

    let events = event_rows(response, now);
    text.push_str("\n\nEVENTS\n");
    if events.is_empty() {
        text.push_str("(no events)");
    } else {
        text.push_str(&table::render(&events));
    }
    text
}

/// Returns the summary lines of the spec, each `Label:` padded to one column.
fn summary_block(name: &str, spec: &proto::SiloSpec) -> String {
    let lines = [
        ("Name", name.to_owned()),
        ("Image", spec.base.clone()),
        ("Binary", binary_text(spec.binary.as_ref())),
        ("Count", spec.count.unwrap_or(1).to_string()),
        ("Resources", resources_text(spec.resources.as_ref())),
        ("Placement", placement_text(spec.placement.as_ref())),
        ("Restart", restart_text(spec.restart.as_ref())),
    ];
    let mut text = String::new();
    for (label, value) in lines {
        text.push_str(&format!("{:<11}{value}\n", format!("{label}:")));
    }
    text
}

/// Returns the program and its arguments as one line; an argument that is empty or contains
/// whitespace is quoted, so the words stay apart.
fn binary_text(binary: Option<&proto::Binary>) -> String {
    let Some(binary) = binary else {
        return "-".to_owned();
    };
    let mut words = vec![binary.path.clone()];
    for arg in &binary.args {
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            words.push(format!("{arg:?}"));
        } else {
            words.push(arg.clone());
        }
    }
    words.join(" ")
}

fn resources_text(resources: Option<&proto::Resources>) -> String {
    let resources = resources.copied().unwrap_or_default();
    let cpu = match resources.cpu_percent {
        0 => "cpu no limit".to_owned(),
        percent => format!("cpu {percent}%"),
    };
    let memory = match resources.memory_bytes {
        0 => "memory no limit".to_owned(),
        bytes => format!("memory {}", table::format_bytes(bytes)),
    };
    format!("{cpu}, {memory}")
}

fn placement_text(placement: Option<&proto::Placement>) -> String {
    let placement = placement.cloned().unwrap_or_default();
    let mut parts = vec![strategy_label(placement.strategy()).to_owned()];
    if !placement.hosts.is_empty() {
        parts.push(format!("hosts {}", placement.hosts.join(", ")));
    }
    if !placement.labels.is_empty() {
        let mut labels: Vec<String> = placement
            .labels
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        labels.sort();
        parts.push(format!("labels {}", labels.join(", ")));
    }
    parts.join("; ")
}

fn strategy_label(strategy: proto::PlacementStrategy) -> &'static str {
    match strategy {
        proto::PlacementStrategy::Spread => "spread",
        proto::PlacementStrategy::Binpack => "binpack",
    }
}

fn restart_mode_label(mode: proto::RestartMode) -> &'static str {
    match mode {
        proto::RestartMode::Never => "never",
        proto::RestartMode::OnFailure => "on-failure",
        proto::RestartMode::Always => "always",
    }
}

fn restart_text(restart: Option<&proto::RestartPolicy>) -> String {
    let Some(policy) = restart else {
        return "never".to_owned();
    };
    let mode = policy.mode();
    if mode == proto::RestartMode::Never {
        return "never".to_owned();
    }
    let attempts = match policy.attempts {
        0 => "unlimited attempts".to_owned(),
        1 => "1 attempt".to_owned(),
        attempts => format!("{attempts} attempts"),
    };
    format!("{}, {attempts}, delay {} ms", restart_mode_label(mode), policy.delay_ms)
}

/// Row of the instance table.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
struct InstanceRow {
    index: u32,
    id: String,
    host: String,
    state: String,
    addresses: String,
    restarts: u32,
    #[tabled(rename = "EXIT CODE")]
    exit_code: String,
    message: String,
}

fn instance_row(info: &proto::SiloInfo) -> InstanceRow {
    let host = if info.host.is_empty() { "-".to_owned() } else { info.host.clone() };
    let addresses: Vec<&str> = info
        .interfaces
        .iter()
        .map(|interface| interface.address.as_str())
        .collect();
    InstanceRow {
        index: info.index,
        id: info.id.clone(),
        host,
        state: table::state_label(info),
        addresses: addresses.join(", "),
        restarts: info.restarts,
        exit_code: info.exit_code.map_or_else(|| "-".to_owned(), |code| code.to_string()),
        message: info.message.clone(),
    }
}

/// Row of the event table.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
struct EventRow {
    time: String,
    age: String,
    instance: u32,
    event: String,
}

/// Returns the events of every instance, oldest first; events of one time keep instance order.
fn event_rows(response: &proto::StatusResponse, now: SystemTime) -> Vec<EventRow> {
    let mut events: Vec<(u64, u32, &proto::SiloEvent)> = Vec::new();
    for instance in &response.instances {
        let index = instance.info.as_ref().map_or(0, |info| info.index);
        for event in &instance.events {
            events.push((event.at_unix_ms, index, event));
        }
    }
    // A stable sort keeps each instance's own order for events of the same millisecond.
    events.sort_by_key(|(at_unix_ms, index, _)| (*at_unix_ms, *index));
    events
        .into_iter()
        .map(|(at_unix_ms, instance, event)| EventRow {
            time: local_time(at_unix_ms),
            age: age_text(at_unix_ms, now),
            instance,
            event: event.message.clone(),
        })
        .collect()
}

/// Formats a Unix time in milliseconds as local time, `-` when unknown (0).
fn local_time(at_unix_ms: u64) -> String {
    match utc_time(at_unix_ms) {
        Some(time) => time.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string(),
        None => "-".to_owned(),
    }
}

fn utc_time(at_unix_ms: u64) -> Option<DateTime<Utc>> {
    if at_unix_ms == 0 {
        return None;
    }
    DateTime::from_timestamp_millis(i64::try_from(at_unix_ms).ok()?)
}

/// Formats the time between `at_unix_ms` and `now` in its largest unit, such as `2m ago`, or
/// `-` when the time is unknown. A time after `now`, from clocks that differ, shows `0s ago`.
fn age_text(at_unix_ms: u64, now: SystemTime) -> String {
    if at_unix_ms == 0 {
        return "-".to_owned();
    }
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    let seconds = Duration::from_millis(now_ms.saturating_sub(at_unix_ms)).as_secs();
    let text = match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    };
    format!("{text} ago")
}

/// Document of `status NAME --output json`.
#[derive(Debug, Serialize)]
struct SiloStatusDocument {
    name: String,
    spec: SpecSummary,
    instances: Vec<InstanceDocument>,
}

/// The parts of the spec `status` shows.
#[derive(Debug, Serialize)]
struct SpecSummary {
    image: String,
    /// Program path inside the silo; null when the silo has no binary block.
    binary: Option<String>,
    args: Vec<String>,
    /// Instances that are not being stopped.
    count: u32,
    /// Share of the host's CPU capacity in percent; 0 means no limit.
    cpu_percent: u32,
    /// Memory limit in bytes; 0 means no limit.
    memory_bytes: u64,
    /// `spread` or `binpack`.
    placement_strategy: String,
    placement_hosts: Vec<String>,
    placement_labels: std::collections::BTreeMap<String, String>,
    /// `never`, `on-failure` or `always`.
    restart_mode: String,
    /// Restarts allowed; 0 means unlimited.
    restart_attempts: u32,
    restart_delay_ms: u64,
}

/// One instance: the `list` fields and its events.
#[derive(Debug, Serialize)]
struct InstanceDocument {
    #[serde(flatten)]
    silo: output::Silo,
    events: Vec<EventDocument>,
}

/// One event of an instance.
#[derive(Debug, Serialize)]
struct EventDocument {
    /// Milliseconds since the Unix epoch; 0 when unknown.
    at_unix_ms: u64,
    /// The same time in RFC 3339 (UTC); null when unknown.
    time: Option<String>,
    /// `placed`, `pending`, `started`, `exited`, `failed`, `oom-killed`, `restarted`,
    /// `replaced`, `stopping`, `host-lost` or `placed-again`.
    kind: String,
    message: String,
    exit_code: Option<i32>,
}

impl SiloStatusDocument {
    fn new(name: &str, response: &proto::StatusResponse) -> Self {
        let spec = response.spec.clone().unwrap_or_default();
        let resources = spec.resources.unwrap_or_default();
        let placement = spec.placement.clone().unwrap_or_default();
        let restart = spec.restart.unwrap_or_default();
        let summary = SpecSummary {
            image: spec.base.clone(),
            binary: spec.binary.as_ref().map(|binary| binary.path.clone()),
            args: spec.binary.as_ref().map(|binary| binary.args.clone()).unwrap_or_default(),
            count: spec.count.unwrap_or(1),
            cpu_percent: resources.cpu_percent,
            memory_bytes: resources.memory_bytes,
            placement_strategy: strategy_label(placement.strategy()).to_owned(),
            placement_hosts: placement.hosts.clone(),
            placement_labels: placement.labels.clone().into_iter().collect(),
            restart_mode: restart_mode_label(restart.mode()).to_owned(),
            restart_attempts: restart.attempts,
            restart_delay_ms: restart.delay_ms,
        };
        let instances = response
            .instances
            .iter()
            .map(|instance| InstanceDocument {
                silo: output::Silo::from(&instance.info.clone().unwrap_or_default()),
                events: instance.events.iter().map(EventDocument::from).collect(),
            })
            .collect();
        SiloStatusDocument {
            name: name.to_owned(),
            spec: summary,
            instances,
        }
    }
}

impl From<&proto::SiloEvent> for EventDocument {
    fn from(event: &proto::SiloEvent) -> Self {
        EventDocument {
            at_unix_ms: event.at_unix_ms,
            time: utc_time(event.at_unix_ms).map(|time| time.to_rfc3339_opts(SecondsFormat::Millis, true)),
            kind: event.kind.clone(),
            message: event.message.clone(),
            exit_code: event.exit_code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0_MS: u64 = 1_780_000_000_000;

    fn event(at_unix_ms: u64, kind: &str, message: &str) -> proto::SiloEvent {
        proto::SiloEvent {
            at_unix_ms,
            kind: kind.to_owned(),
            message: message.to_owned(),
            exit_code: None,
        }
    }

    fn response() -> proto::StatusResponse {
        let spec = proto::SiloSpec {
            name: "job".to_owned(),
            base: "busybox".to_owned(),
            binary: Some(proto::Binary {
                path: "/bin/sh".to_owned(),
                args: vec!["-c".to_owned(), "exit 3".to_owned()],
                ..Default::default()
            }),
            count: Some(1),
            restart: Some(proto::RestartPolicy {
                mode: proto::RestartMode::OnFailure.into(),
                attempts: 1,
                delay_ms: 0,
            }),
            ..Default::default()
        };
        let info = proto::SiloInfo {
            name: "job".to_owned(),
            id: "0000000a".to_owned(),
            host: "host-a".to_owned(),
            state: proto::SiloState::Exited.into(),
            exit_code: Some(3),
            restarts: 1,
            count: 1,
            ..Default::default()
        };
        let mut exited = event(T0_MS + 2_000, "exited", "exited with code 3");
        exited.exit_code = Some(3);
        proto::StatusResponse {
            spec: Some(spec),
            instances: vec![proto::InstanceStatus {
                info: Some(info),
                events: vec![
                    event(T0_MS, "placed", "placed on host-a"),
                    event(T0_MS + 1_000, "started", "started"),
                    exited,
                ],
            }],
        }
    }

    #[test]
    fn text_has_summary_instances_and_events() {
        let now = UNIX_EPOCH + Duration::from_millis(T0_MS + 122_000);
        let text = render_text("job", &response(), now);
        assert!(text.contains(r#"Binary:    /bin/sh -c "exit 3""#), "{text}");
        assert!(text.contains("Restart:   on-failure, 1 attempt, delay 0 ms"), "{text}");
        assert!(text.contains("| INDEX |"), "{text}");
        assert!(text.contains("EXITED (3)"), "{text}");
        assert!(text.contains("placed on host-a"), "{text}");
        assert!(text.contains("2m ago"), "{text}");
        assert!(text.contains("exited with code 3"), "{text}");
    }

    #[test]
    fn ages_use_largest_unit() {
        let now = UNIX_EPOCH + Duration::from_millis(T0_MS);
        assert_eq!(age_text(T0_MS - 42_000, now), "42s ago");
        assert_eq!(age_text(T0_MS - 150_000, now), "2m ago");
        assert_eq!(age_text(T0_MS - 3 * 3_600_000, now), "3h ago");
        assert_eq!(age_text(T0_MS - 2 * 86_400_000, now), "2d ago");
        assert_eq!(age_text(T0_MS + 5_000, now), "0s ago");
        assert_eq!(age_text(0, now), "-");
    }

    #[test]
    fn json_document_has_spec_and_events() {
        let value = serde_json::to_value(SiloStatusDocument::new("job", &response())).expect("encodes");
        assert_eq!(value["name"], "job");
        assert_eq!(value["spec"]["restart_mode"], "on-failure");
        assert_eq!(value["spec"]["restart_attempts"], 1);
        assert_eq!(value["instances"][0]["host"], "host-a");
        assert_eq!(value["instances"][0]["exit_code"], 3);
        assert_eq!(value["instances"][0]["events"][2]["kind"], "exited");
        assert_eq!(value["instances"][0]["events"][2]["exit_code"], 3);
        assert_eq!(value["instances"][0]["events"][0]["time"], "2026-05-28T20:26:40.000Z");
    }
}
