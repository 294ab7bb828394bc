//! Tables in the look of the original colex: `|---|` rules above and below
//! the header and at the bottom, upper-case centred headers.

use std::time::Duration;

use colex_proto as proto;
use tabled::settings::object::{Cell, Rows};
use tabled::settings::{Alignment, Style};
use tabled::{Table, Tabled};

use crate::colour;

/// Row of the table `up` and `down` print.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
pub struct SiloRow {
    pub silo: String,
    pub id: String,
    pub state: String,
    pub host: String,
    pub interfaces: String,
}

/// Row of the table `list` prints.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
pub struct ListRow {
    pub name: String,
    pub id: String,
    pub class: String,
    pub tags: String,
    pub host: String,
    pub state: String,
    pub addresses: String,
    #[tabled(inline)]
    pub usage: UsageCells,
    pub restarts: u32,
}

/// Row of the table `list` prints when a silo has a message, such as why it is pending: the
/// `list` columns and MESSAGE.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
pub struct ListRowWithMessage {
    #[tabled(inline)]
    pub row: ListRow,
    pub message: String,
}

/// Row of the per-host tables of `list --all-hosts`.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
pub struct HostSiloRow {
    pub name: String,
    pub id: String,
    pub class: String,
    pub tags: String,
    pub state: String,
    pub addresses: String,
    #[tabled(inline)]
    pub usage: UsageCells,
    pub restarts: u32,
}

/// The usage columns of both `list` tables, `-` where the usage is unknown: the silo is not
/// running or its agent has not reported yet.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
pub struct UsageCells {
    /// Share of the whole host's CPU time over the agent's last report interval.
    pub cpu: String,
    pub memory: String,
    /// Bytes received / bytes sent.
    #[tabled(rename = "NET I/O")]
    pub net_io: String,
    pub pids: String,
    pub uptime: String,
}

/// Row of the table of pending instances, which have no host, under `list --all-hosts`.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
pub struct PendingRow {
    pub name: String,
    pub id: String,
    pub class: String,
    pub tags: String,
    pub state: String,
    pub message: String,
}

/// Text of a cell whose value is unknown.
const UNKNOWN: &str = "-";
/// Binary unit prefixes of byte counts, each 1024 times the one before.
const BYTE_UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/// Header of the column whose cells [`render`] colours on a terminal.
const STATE_HEADER: &str = "STATE";

/// Renders rows in the colex table style, with the STATE column coloured when colour is on.
pub fn render<T: Tabled>(rows: &[T]) -> String {
    render_with_colour(rows, colour::enabled())
}

/// Renders rows in the colex table style, colouring the STATE column when `coloured` is true.
/// The colour is cell formatting outside the cell text, so column widths ignore the escape
/// codes and the table stays aligned.
pub fn render_with_colour<T: Tabled>(rows: &[T], coloured: bool) -> String {
    let style = Style::markdown()
        .top('-')
        .bottom('-')
        .corner_top_left('|')
        .corner_top_right('|')
        .corner_bottom_left('|')
        .corner_bottom_right('|')
        .intersection_top('|')
        .intersection_bottom('|');
    let mut table = Table::new(rows);
    table.with(style).modify(Rows::first(), Alignment::center());
    if coloured {
        colour_states(&mut table, rows);
    }
    table.to_string()
}

/// Colours every cell of the STATE column by its state word. Row 0 is the header.
fn colour_states<T: Tabled>(table: &mut Table, rows: &[T]) {
    let Some(column) = T::headers().iter().position(|header| header == STATE_HEADER) else {
        return;
    };
    for (index, row) in rows.iter().enumerate() {
        let fields = row.fields();
        let Some(color) = fields.get(column).and_then(|state| colour::state_color(state)) else {
            continue;
        };
        table.modify(Cell::new(index + 1, column), color);
    }
}

/// Returns the silo's state label, with the exit code for an exited silo.
pub fn state_label(silo: &proto::SiloInfo) -> String {
    let state = silo.state();
    match (state, silo.exit_code) {
        (proto::SiloState::Exited, Some(code)) => format!("EXITED ({code})"),
        _ => state.label().to_owned(),
    }
}

/// Returns the name a table shows for a silo instance: `NAME` for a silo of one instance and
/// `NAME[INDEX]` when the silo has more, or the instance is a leftover above a lowered count.
pub fn instance_name(silo: &proto::SiloInfo) -> String {
    if silo.count > 1 || silo.index > 0 {
        format!("{}[{}]", silo.name, silo.index)
    } else {
        silo.name.clone()
    }
}

/// Returns the host cell of a silo instance, `-` while it is pending on no host.
fn host_cell(silo: &proto::SiloInfo) -> String {
    if silo.host.is_empty() {
        UNKNOWN.to_owned()
    } else {
        silo.host.clone()
    }
}

pub fn silo_row(silo: &proto::SiloInfo) -> SiloRow {
    let interfaces = silo
        .interfaces
        .iter()
        .map(|interface| format!("{} ({})", interface.name, interface.address))
        .collect::<Vec<_>>()
        .join(", ");
    SiloRow {
        silo: instance_name(silo),
        id: silo.id.clone(),
        state: state_label(silo),
        host: host_cell(silo),
        interfaces,
    }
}

/// Returns the row of a silo instance that `down` removed. It shows no interfaces, because
/// they were removed with the instance.
pub fn removed_row(silo: &proto::SiloInfo) -> SiloRow {
    SiloRow {
        state: proto::SiloState::Removed.label().to_owned(),
        interfaces: String::new(),
        ..silo_row(silo)
    }
}

fn addresses(silo: &proto::SiloInfo) -> String {
    silo.interfaces
        .iter()
        .map(|interface| interface.address.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn list_row(silo: &proto::SiloInfo) -> ListRow {
    ListRow {
        name: instance_name(silo),
        id: silo.id.clone(),
        class: silo.class.clone(),
        tags: silo.tags.join(", "),
        host: host_cell(silo),
        state: state_label(silo),
        addresses: addresses(silo),
        usage: usage_cells(silo.usage.as_ref()),
        restarts: silo.restarts,
    }
}

/// Renders the `list` table, with a MESSAGE column only when a silo has a message, so the usual
/// table keeps its columns.
pub fn render_list(silos: &[proto::SiloInfo]) -> String {
    if silos.iter().all(|silo| silo.message.is_empty()) {
        let rows: Vec<ListRow> = silos.iter().map(list_row).collect();
        return render(&rows);
    }
    let rows: Vec<ListRowWithMessage> = silos
        .iter()
        .map(|silo| ListRowWithMessage {
            row: list_row(silo),
            message: silo.message.clone(),
        })
        .collect();
    render(&rows)
}

pub fn pending_row(silo: &proto::SiloInfo) -> PendingRow {
    PendingRow {
        name: instance_name(silo),
        id: silo.id.clone(),
        class: silo.class.clone(),
        tags: silo.tags.join(", "),
        state: state_label(silo),
        message: silo.message.clone(),
    }
}

pub fn host_silo_row(silo: &proto::SiloInfo) -> HostSiloRow {
    HostSiloRow {
        name: instance_name(silo),
        id: silo.id.clone(),
        class: silo.class.clone(),
        tags: silo.tags.join(", "),
        state: state_label(silo),
        addresses: addresses(silo),
        usage: usage_cells(silo.usage.as_ref()),
        restarts: silo.restarts,
    }
}

/// Formats a silo's usage for the table, `-` for each value the agent did not report.
pub fn usage_cells(usage: Option<&proto::SiloUsage>) -> UsageCells {
    let Some(usage) = usage else {
        return UsageCells {
            cpu: UNKNOWN.to_owned(),
            memory: UNKNOWN.to_owned(),
            net_io: UNKNOWN.to_owned(),
            pids: UNKNOWN.to_owned(),
            uptime: UNKNOWN.to_owned(),
        };
    };
    let net_io = match (usage.rx_bytes, usage.tx_bytes) {
        (Some(rx), Some(tx)) => format!("{} / {}", format_bytes(rx), format_bytes(tx)),
        _ => UNKNOWN.to_owned(),
    };
    UsageCells {
        cpu: usage
            .cpu_percent
            .map_or_else(|| UNKNOWN.to_owned(), |percent| format!("{percent:.1}%")),
        memory: usage
            .memory_bytes
            .map_or_else(|| UNKNOWN.to_owned(), format_bytes),
        net_io,
        pids: usage.processes.to_string(),
        uptime: usage.uptime_ms.map_or_else(
            || UNKNOWN.to_owned(),
            |millis| format_duration(Duration::from_millis(millis)),
        ),
    }
}

/// Formats a byte count with binary prefixes and one decimal, such as `880B` or `3.2MiB`.
pub fn format_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let rounded_tenths = |unit_bytes: u128| (u128::from(bytes) * 10 + unit_bytes / 2) / unit_bytes;
    let mut unit_index = 1;
    let mut unit_bytes: u128 = 1024;
    let mut tenths = rounded_tenths(unit_bytes);
    // Rounded before the unit is chosen, so 1023.96KiB shows as 1.0MiB, not 1024.0KiB.
    while tenths >= 10 * 1024 && unit_index + 1 < BYTE_UNITS.len() {
        unit_index += 1;
        unit_bytes *= 1024;
        tenths = rounded_tenths(unit_bytes);
    }
    format!("{}.{}{}", tenths / 10, tenths % 10, BYTE_UNITS[unit_index])
}

/// Formats a duration in its two largest units, rounded down: `42s`, `4m12s`, `3h05m`, `2d07h`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    if minutes == 0 {
        format!("{seconds}s")
    } else if hours == 0 {
        format!("{minutes}m{:02}s", seconds % 60)
    } else if days == 0 {
        format!("{hours}h{:02}m", minutes % 60)
    } else {
        format!("{days}d{:02}h", hours % 24)
    }
}

/// Returns the heading line above one host's table.
/// The state word is coloured when colour is on.
pub fn host_heading(host: &proto::HostInfo) -> String {
    host_heading_with_colour(host, colour::enabled())
}

fn host_heading_with_colour(host: &proto::HostInfo, coloured: bool) -> String {
    let state = host.state().label();
    let heading = format!(
        "HOST {}  address {}  state {}  subnet {}  silos {}",
        host.name,
        host.address,
        colour::paint(state, state, coloured),
        host.subnet,
        host.silo_count
    );
    // The leader has no session with a DOWN host, so its rows are the agent's last report.
    if host.state() == proto::HostState::Down {
        let note = "(stale: its agent is not connected; rows show its last report)";
        return format!("{heading}  {}", colour::paint(note, "STALE", coloured));
    }
    heading
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_table_matches_original_look() {
        let rows = vec![SiloRow {
            silo: "test-sh".to_owned(),
            id: "3938a44e".to_owned(),
            state: "UP".to_owned(),
            host: "h1".to_owned(),
            interfaces: "cx3938a44e (10.69.1.2)".to_owned(),
        }];
        let expected = "\
|---------|----------|-------|------|------------------------|
|  SILO   |    ID    | STATE | HOST |       INTERFACES       |
|---------|----------|-------|------|------------------------|
| test-sh | 3938a44e | UP    | h1   | cx3938a44e (10.69.1.2) |
|---------|----------|-------|------|------------------------|";
        assert_eq!(render(&rows), expected);
    }

    /// Removes the SGR escape sequences (`ESC [ ... m`) that colour adds.
    fn strip_escapes(text: &str) -> String {
        let mut plain = String::new();
        let mut chars = text.chars();
        while let Some(char) = chars.next() {
            if char == '\u{1b}' {
                for code in chars.by_ref() {
                    if code == 'm' {
                        break;
                    }
                }
            } else {
                plain.push(char);
            }
        }
        plain
    }

    #[test]
    fn coloured_states_keep_alignment() {
        let rows: Vec<SiloRow> = ["UP", "FAILED", "PENDING", "EXITED (1)"]
            .into_iter()
            .map(|state| SiloRow {
                silo: "web".to_owned(),
                id: "3938a44e".to_owned(),
                state: state.to_owned(),
                host: "h1".to_owned(),
                interfaces: String::new(),
            })
            .collect();
        let plain = render_with_colour(&rows, false);
        let coloured = render_with_colour(&rows, true);
        assert!(!plain.contains('\u{1b}'), "{plain}");
        assert_eq!(strip_escapes(&coloured), plain, "only escape codes are added");
        let lines: Vec<&str> = coloured.lines().collect();
        assert!(lines[3].contains("| \u{1b}[32mUP\u{1b}[39m         |"), "{coloured:?}");
        assert!(lines[4].contains("| \u{1b}[31mFAILED\u{1b}[39m     |"), "{coloured:?}");
        assert!(lines[5].contains("| \u{1b}[33mPENDING\u{1b}[39m    |"), "{coloured:?}");
        assert!(lines[6].contains("| EXITED (1) |"), "{coloured:?}");
        assert!(!lines[1].contains('\u{1b}'), "the header is not coloured: {coloured:?}");
    }

    #[test]
    fn down_host_heading_is_coloured_stale() {
        let host = proto::HostInfo {
            name: "h2".to_owned(),
            state: proto::HostState::Down.into(),
            ..Default::default()
        };
        let plain = host_heading_with_colour(&host, false);
        let coloured = host_heading_with_colour(&host, true);
        assert_eq!(strip_escapes(&coloured), plain);
        assert!(coloured.contains("state \u{1b}[31mDOWN\u{1b}[39m"), "{coloured:?}");
        assert!(coloured.contains("\u{1b}[33m(stale: "), "{coloured:?}");
    }

    #[test]
    fn host_table_shows_restarts() {
        let silo = proto::SiloInfo {
            name: "job".to_owned(),
            id: "3938a44e".to_owned(),
            state: proto::SiloState::Exited.into(),
            exit_code: Some(1),
            restarts: 2,
            ..Default::default()
        };
        let rendered = render(&[host_silo_row(&silo)]);
        let lines: Vec<&str> = rendered.lines().collect();
        assert!(lines[1].trim_end().ends_with("| RESTARTS |"), "{rendered}");
        assert!(lines[3].contains("| EXITED (1) |"), "{rendered}");
        assert!(lines[3].trim_end().ends_with("| 2        |"), "{rendered}");
    }

    #[test]
    fn list_table_shows_usage_columns() {
        let silo = proto::SiloInfo {
            name: "web".to_owned(),
            state: proto::SiloState::Up.into(),
            usage: Some(proto::SiloUsage {
                cpu_percent: Some(25.14),
                memory_bytes: Some(3_355_443),
                processes: 4,
                rx_bytes: Some(1434),
                tx_bytes: Some(880),
                uptime_ms: Some(252_900),
            }),
            ..Default::default()
        };
        let rendered = render(&[list_row(&silo)]);
        assert_cells(
            &rendered,
            3,
            &[
                ("STATE", "UP"),
                ("CPU", "25.1%"),
                ("MEMORY", "3.2MiB"),
                ("NET I/O", "1.4KiB / 880B"),
                ("PIDS", "4"),
                ("UPTIME", "4m12s"),
                ("RESTARTS", "0"),
            ],
        );
    }

    /// Asserts the cells of line `line` of a rendered table, by column name.
    fn assert_cells(rendered: &str, line: usize, expected: &[(&str, &str)]) {
        let lines: Vec<&str> = rendered.lines().collect();
        let header = cells(lines[1]);
        let row = cells(lines[line]);
        for (column, value) in expected {
            let index = header
                .iter()
                .position(|name| name == column)
                .unwrap_or_else(|| panic!("no {column} column in\n{rendered}"));
            assert_eq!(row[index], *value, "{column} in\n{rendered}");
        }
    }

    /// Splits a `| a | b |` table line into trimmed cells.
    fn cells(line: &str) -> Vec<&str> {
        line.trim_matches('|').split('|').map(str::trim).collect()
    }

    #[test]
    fn unknown_usage_shows_dashes() {
        let cells = usage_cells(None);
        for cell in [
            &cells.cpu,
            &cells.memory,
            &cells.net_io,
            &cells.pids,
            &cells.uptime,
        ] {
            assert_eq!(cell, "-");
        }
    }

    #[test]
    fn usage_without_counters_shows_dashes() {
        let usage = proto::SiloUsage {
            processes: 1,
            rx_bytes: Some(10),
            ..Default::default()
        };
        let cells = usage_cells(Some(&usage));
        assert_eq!(cells.cpu, "-");
        assert_eq!(cells.memory, "-");
        assert_eq!(cells.net_io, "-", "rx alone is not shown");
        assert_eq!(cells.pids, "1");
        assert_eq!(cells.uptime, "-");
    }

    #[test]
    fn bytes_in_binary_units() {
        let cases = [
            (0, "0B"),
            (880, "880B"),
            (1023, "1023B"),
            (1024, "1.0KiB"),
            (1434, "1.4KiB"),
            (3_355_443, "3.2MiB"),
            (1_048_535, "1.0MiB"),
            (5 * 1024 * 1024 * 1024, "5.0GiB"),
            (u64::MAX, "16.0EiB"),
        ];
        for (bytes, expected) in cases {
            assert_eq!(format_bytes(bytes), expected, "{bytes} bytes");
        }
    }

    #[test]
    fn durations_in_two_largest_units() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (252, "4m12s"),
            (3600 + 5 * 60 + 59, "1h05m"),
            (86_400 * 2 + 7 * 3600, "2d07h"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(
                format_duration(Duration::from_secs(seconds)),
                expected,
                "{seconds} s"
            );
        }
    }

    #[test]
    fn removed_rows_have_no_interfaces() {
        let silo = proto::SiloInfo {
            name: "web".to_owned(),
            id: "83dd7e41".to_owned(),
            host: "host-a".to_owned(),
            state: proto::SiloState::Up.into(),
            interfaces: vec![proto::Interface {
                name: "cx83dd7e41".to_owned(),
                address: "10.69.1.2".to_owned(),
            }],
            ..Default::default()
        };
        assert_eq!(silo_row(&silo).interfaces, "cx83dd7e41 (10.69.1.2)");
        let removed = removed_row(&silo);
        assert_eq!(removed.state, "REMOVED");
        assert_eq!(removed.interfaces, "");
        assert_eq!(removed.host, "host-a");
    }

    #[test]
    fn instance_names() {
        let silo = |index, count| proto::SiloInfo {
            name: "web".to_owned(),
            index,
            count,
            ..Default::default()
        };
        assert_eq!(instance_name(&silo(0, 1)), "web");
        assert_eq!(
            instance_name(&silo(0, 0)),
            "web",
            "a stopping silo of one instance"
        );
        assert_eq!(instance_name(&silo(0, 3)), "web[0]");
        assert_eq!(instance_name(&silo(2, 3)), "web[2]");
        assert_eq!(
            instance_name(&silo(2, 2)),
            "web[2]",
            "an instance above a lowered count"
        );
    }

    #[test]
    fn list_shows_message_column_only_when_needed() {
        let up = proto::SiloInfo {
            name: "web".to_owned(),
            index: 0,
            count: 2,
            host: "h1".to_owned(),
            state: proto::SiloState::Up.into(),
            ..Default::default()
        };
        let plain = render_list(std::slice::from_ref(&up));
        assert!(!plain.contains("MESSAGE"), "{plain}");

        let pending = proto::SiloInfo {
            index: 1,
            host: String::new(),
            state: proto::SiloState::Pending.into(),
            message: "silo web: no live host fits".to_owned(),
            ..up.clone()
        };
        let rendered = render_list(&[up, pending]);
        assert_cells(
            &rendered,
            4,
            &[
                ("NAME", "web[1]"),
                ("HOST", "-"),
                ("STATE", "PENDING"),
                ("MESSAGE", "silo web: no live host fits"),
            ],
        );
    }
}
