//! The `hosts` command: lists the agent hosts from the leader's state, sets or clears a
//! host's drain mark, and removes a host from the cluster.

use std::collections::BTreeMap;

use colex_proto as proto;
use serde::Serialize;
use tabled::Tabled;

use crate::client::{CliError, Controller};
use crate::output::{self, OutputFormat};
use crate::table;

/// Row of the table `hosts` prints.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
pub struct HostRow {
    pub name: String,
    /// Short identity of the host's key pair, `-` while it has none.
    pub id: String,
    pub address: String,
    /// `up`, `down` or `draining`.
    pub state: String,
    pub subnet: String,
    /// WireGuard backend of the host's mesh device: `kernel` or `userspace`.
    pub backend: String,
    /// CPUs the placed silos reserve, then the host's CPUs, such as `0.5/2`.
    pub cpu: String,
    /// Memory the placed silos reserve, then the host's memory.
    pub memory: String,
    pub silos: u32,
    /// `key=value` pairs separated by commas.
    pub labels: String,
}

/// Document of `hosts --output json`. Field names are snake_case and stable: a field may be
/// added, but none is renamed or removed.
#[derive(Debug, Serialize)]
pub struct HostsDocument {
    pub hosts: Vec<HostEntry>,
}

/// One agent host in the leader's state.
#[derive(Debug, Serialize)]
pub struct HostEntry {
    pub name: String,
    /// First 8 hex digits of the SHA-256 of the host's WireGuard public key; empty while the
    /// host has none.
    pub id: String,
    pub address: String,
    /// `up`, `down` or `draining`; a host that is both down and draining is `down`.
    pub state: String,
    pub draining: bool,
    /// Silo subnet in CIDR notation.
    pub subnet: String,
    /// WireGuard backend of the host's mesh device: `kernel`, `userspace`, or empty when the
    /// agent did not report one.
    pub wireguard_backend: String,
    pub cpus: u32,
    /// Sum of the placed silos' `resources.cpu_percent`, in percent of the whole host.
    pub cpu_percent_reserved: u64,
    pub memory_bytes: u64,
    pub memory_bytes_reserved: u64,
    pub silo_count: u32,
    pub labels: BTreeMap<String, String>,
}

/// Prints every host.
pub async fn list(addresses: &str, format: OutputFormat) -> Result<(), CliError> {
    let mut controller = Controller::connect(addresses).await?;
    let response = controller
        .client
        .hosts(proto::HostsRequest {})
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?
        .into_inner();
    match format {
        OutputFormat::Json => output::print_json(&HostsDocument {
            hosts: response.hosts.iter().map(host_entry).collect(),
        }),
        OutputFormat::Table => {
            println!("{}", render(&response.hosts));
            Ok(())
        }
    }
}

/// Sets (`draining` true) or clears the drain mark of `host` and prints the host's row.
pub async fn set_draining(addresses: &str, host: &str, draining: bool) -> Result<(), CliError> {
    let mut controller = Controller::connect(addresses).await?;
    let response = controller
        .client
        .set_draining(proto::SetDrainingRequest {
            host: host.to_owned(),
            draining,
        })
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?
        .into_inner();
    if draining {
        println!("host {host} is draining: its silos move to other hosts one at a time");
    } else {
        println!("host {host} is no longer draining");
    }
    if let Some(info) = response.host {
        println!("{}", render(&[info]));
    }
    Ok(())
}

/// Removes `host` from the cluster and prints its freed subnet and how many of its silo
/// instances wait for a new host. The controller rejects a host that is up unless `force`.
pub async fn remove(addresses: &str, host: &str, force: bool) -> Result<(), CliError> {
    let mut controller = Controller::connect(addresses).await?;
    let response = controller
        .client
        .remove_host(proto::RemoveHostRequest {
            host: host.to_owned(),
            force,
        })
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?
        .into_inner();
    println!(
        "host {host} removed: subnet {} is free, {} silo instance(s) wait for another host",
        response.subnet, response.pending
    );
    Ok(())
}

/// Returns the lower-case state of a host: `down` when its agent is not connected or went
/// silent, otherwise `draining` when it is marked so, otherwise `up`.
pub fn state_label(host: &proto::HostInfo) -> &'static str {
    match host.state() {
        proto::HostState::Up if host.draining => "draining",
        proto::HostState::Up => "up",
        proto::HostState::Down => "down",
        proto::HostState::Unspecified => "unknown",
    }
}

fn render(hosts: &[proto::HostInfo]) -> String {
    let rows: Vec<HostRow> = hosts.iter().map(host_row).collect();
    table::render(&rows)
}

fn host_row(host: &proto::HostInfo) -> HostRow {
    HostRow {
        name: host.name.clone(),
        id: if host.id.is_empty() { "-".to_owned() } else { host.id.clone() },
        address: host.address.clone(),
        state: state_label(host).to_owned(),
        subnet: host.subnet.clone(),
        backend: if host.wireguard_backend.is_empty() {
            "-".to_owned()
        } else {
            host.wireguard_backend.clone()
        },
        cpu: format!("{}/{}", reserved_cpus(host), host.cpus),
        memory: format!(
            "{}/{}",
            table::format_bytes(host.memory_bytes_reserved),
            table::format_bytes(host.memory_bytes)
        ),
        silos: host.silo_count,
        labels: host
            .labels
            .iter()
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Formats the CPUs the host's silos reserve, such as `0.5`, with at most two decimals.
fn reserved_cpus(host: &proto::HostInfo) -> String {
    // `cpu_percent_reserved` percent of `cpus` CPUs is exactly this many hundredths of a CPU.
    let hundredths = host.cpu_percent_reserved.saturating_mul(u64::from(host.cpus));
    let whole = hundredths / 100;
    let fraction = hundredths % 100;
    if fraction == 0 {
        whole.to_string()
    } else if fraction % 10 == 0 {
        format!("{whole}.{}", fraction / 10)
    } else {
        format!("{whole}.{fraction:02}")
    }
}

fn host_entry(host: &proto::HostInfo) -> HostEntry {
    HostEntry {
        name: host.name.clone(),
        id: host.id.clone(),
        address: host.address.clone(),
        state: state_label(host).to_owned(),
        draining: host.draining,
        subnet: host.subnet.clone(),
        wireguard_backend: host.wireguard_backend.clone(),
        cpus: host.cpus,
        cpu_percent_reserved: host.cpu_percent_reserved,
        memory_bytes: host.memory_bytes,
        memory_bytes_reserved: host.memory_bytes_reserved,
        silo_count: host.silo_count,
        labels: host.labels.clone().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, state: proto::HostState, draining: bool) -> proto::HostInfo {
        proto::HostInfo {
            name: name.to_owned(),
            address: "198.51.100.2".to_owned(),
            state: state.into(),
            subnet: "10.69.1.0/24".to_owned(),
            cpus: 2,
            memory_bytes: 2 << 30,
            silo_count: 3,
            labels: [("zone".to_owned(), "a".to_owned()), ("disk".to_owned(), "ssd".to_owned())].into(),
            draining,
            cpu_percent_reserved: 25,
            memory_bytes_reserved: 64 << 20,
            wireguard_backend: if name == "h3" { String::new() } else { "userspace".to_owned() },
            id: match name {
                "h1" => "5f1c0a9e".to_owned(),
                "h2" => "c27d41b8".to_owned(),
                _ => String::new(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn hosts_table_shows_state_and_reservations() {
        let hosts = [
            host("h1", proto::HostState::Up, false),
            host("h2", proto::HostState::Up, true),
            host("h3", proto::HostState::Down, true),
        ];
        let expected = "\
|------|----------|--------------|----------|--------------|-----------|-------|----------------|-------|-----------------|
| NAME |    ID    |   ADDRESS    |  STATE   |    SUBNET    |  BACKEND  |  CPU  |     MEMORY     | SILOS |     LABELS      |
|------|----------|--------------|----------|--------------|-----------|-------|----------------|-------|-----------------|
| h1   | 5f1c0a9e | 198.51.100.2 | up       | 10.69.1.0/24 | userspace | 0.5/2 | 64.0MiB/2.0GiB | 3     | disk=ssd,zone=a |
| h2   | c27d41b8 | 198.51.100.2 | draining | 10.69.1.0/24 | userspace | 0.5/2 | 64.0MiB/2.0GiB | 3     | disk=ssd,zone=a |
| h3   | -        | 198.51.100.2 | down     | 10.69.1.0/24 | -         | 0.5/2 | 64.0MiB/2.0GiB | 3     | disk=ssd,zone=a |
|------|----------|--------------|----------|--------------|-----------|-------|----------------|-------|-----------------|";
        assert_eq!(render(&hosts), expected);
    }

    #[test]
    fn reserved_cpus_keep_two_decimals() {
        let mut info = host("h1", proto::HostState::Up, false);
        for (percent, cpus, expected) in [(0, 4, "0"), (25, 4, "1"), (10, 1, "0.1"), (33, 1, "0.33"), (150, 2, "3")] {
            info.cpu_percent_reserved = percent;
            info.cpus = cpus;
            assert_eq!(reserved_cpus(&info), expected, "{percent}% of {cpus}");
        }
    }

    #[test]
    fn json_entry_keeps_raw_numbers() {
        let entry = host_entry(&host("h2", proto::HostState::Up, true));
        let value = serde_json::to_value(&entry).expect("encode a host");
        assert_eq!(value["state"], "draining");
        assert_eq!(value["draining"], true);
        assert_eq!(value["cpu_percent_reserved"], 25);
        assert_eq!(value["memory_bytes_reserved"], 64 << 20);
        assert_eq!(value["labels"]["zone"], "a");
    }
}
