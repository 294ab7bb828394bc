//! Tables in the look of the original colex: `|---|` rules above and below
//! the header and at the bottom, upper-case centred headers.

use colex_proto as proto;
use tabled::settings::object::Rows;
use tabled::settings::{Alignment, Style};
use tabled::{Table, Tabled};

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
    pub addresses: String,
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
    pub restarts: u32,
    pub addresses: String,
}

/// Renders rows in the colex table style.
pub fn render<T: Tabled>(rows: &[T]) -> String {
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
    table.to_string()
}

/// Returns the silo's state label, with the exit code for an exited silo.
pub fn state_label(silo: &proto::SiloInfo) -> String {
    let state = silo.state();
    match (state, silo.exit_code) {
        (proto::SiloState::Exited, Some(code)) => format!("EXITED ({code})"),
        _ => state.label().to_owned(),
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
        silo: silo.name.clone(),
        id: silo.id.clone(),
        state: state_label(silo),
        host: silo.host.clone(),
        interfaces,
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
        name: silo.name.clone(),
        id: silo.id.clone(),
        class: silo.class.clone(),
        tags: silo.tags.join(", "),
        host: silo.host.clone(),
        addresses: addresses(silo),
    }
}

pub fn host_silo_row(silo: &proto::SiloInfo) -> HostSiloRow {
    HostSiloRow {
        name: silo.name.clone(),
        id: silo.id.clone(),
        class: silo.class.clone(),
        tags: silo.tags.join(", "),
        state: state_label(silo),
        restarts: silo.restarts,
        addresses: addresses(silo),
    }
}

/// Returns the heading line above one host's table.
pub fn host_heading(host: &proto::HostInfo) -> String {
    format!(
        "HOST {}  address {}  state {}  subnet {}  silos {}",
        host.name,
        host.address,
        host.state().label(),
        host.subnet,
        host.silo_count
    )
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
        assert!(lines[1].contains("RESTARTS"), "{rendered}");
        assert!(lines[3].contains("| EXITED (1) | 2 "), "{rendered}");
    }
}
