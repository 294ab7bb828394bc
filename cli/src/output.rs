//! The JSON schema of `--output json`. Field names are snake_case and stable: a field may be
//! added, but none is renamed or removed. docs/cli.md shows an example of each document.

use std::collections::BTreeMap;

use colex_proto as proto;
use serde::Serialize;

use crate::client::CliError;

/// Output format of the read commands (`list`, `controllers`, `validate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Tables and summary lines for people.
    #[default]
    Table,
    /// One JSON document on standard output, and nothing else there.
    Json,
}

/// Document of `list`.
#[derive(Debug, Serialize)]
pub struct SiloList {
    pub silos: Vec<Silo>,
}

/// Document of `list --all-hosts`: every host, each with the silos placed on it.
#[derive(Debug, Serialize)]
pub struct HostList {
    pub hosts: Vec<Host>,
}

/// One silo in the leader's state.
#[derive(Debug, Serialize)]
pub struct Silo {
    pub name: String,
    /// Instance number, from 0 to `count - 1`.
    pub index: u32,
    /// Number of instances the silo's spec requests.
    pub count: u32,
    /// 8 hex digits; each instance has its own, and a replaced instance gets a new one.
    pub id: String,
    pub class: String,
    pub tags: Vec<String>,
    /// Host the silo is placed on; empty while unplaced.
    pub host: String,
    /// `PENDING`, `STARTING`, `UP`, `EXITED`, `FAILED`, `STOPPING` or `REMOVED`.
    pub state: String,
    /// Exit code of the program when `state` is `EXITED`, otherwise null.
    pub exit_code: Option<i32>,
    /// Reason the silo failed or waits; empty otherwise.
    pub message: String,
    /// IPv4 address of each interface, in the order of `interfaces`.
    pub addresses: Vec<String>,
    pub interfaces: Vec<Interface>,
    pub restarts: u32,
    /// Latest usage the agent reported; null while the silo does not run or before the first
    /// report.
    pub usage: Option<Usage>,
}

/// One network interface of a silo.
#[derive(Debug, Serialize)]
pub struct Interface {
    /// Host-side name of the veth pair.
    pub name: String,
    /// IPv4 address of the silo side, without prefix length.
    pub address: String,
}

/// Resource usage of a running silo; each optional value is null when the agent did not
/// measure it.
#[derive(Debug, Serialize)]
pub struct Usage {
    /// Share of the whole host's CPU time in percent, so one busy core of a 4-CPU host is 25.
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub processes: u64,
    pub rx_bytes: Option<u64>,
    pub tx_bytes: Option<u64>,
    pub uptime_ms: Option<u64>,
}

/// One agent host with the silos placed on it.
#[derive(Debug, Serialize)]
pub struct Host {
    pub name: String,
    pub address: String,
    /// `UP` or `DOWN`.
    pub state: String,
    /// Silo subnet in CIDR notation.
    pub subnet: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub silo_count: u32,
    pub labels: BTreeMap<String, String>,
    pub silos: Vec<Silo>,
}

/// Document of `controllers`.
#[derive(Debug, Serialize)]
pub struct ControllerList {
    pub controllers: Vec<Controller>,
}

/// One controller in the leader's member list.
#[derive(Debug, Serialize)]
pub struct Controller {
    pub id: u64,
    pub address: String,
    /// `voter` or `learner`.
    pub role: String,
    pub leader: bool,
    /// Index of the last log entry the controller applied; null when it did not respond to
    /// the leader's probe.
    pub last_applied: Option<u64>,
    /// Whether the controller responded to the leader's probe.
    pub reachable: bool,
}

/// Document of `validate`.
#[derive(Debug, Serialize)]
pub struct ValidateReport {
    pub files: Vec<ValidatedFile>,
}

/// Result of one silo file: its silos when valid, its problems otherwise.
#[derive(Debug, Serialize)]
pub struct ValidatedFile {
    pub path: String,
    pub valid: bool,
    pub silos: Vec<ValidSilo>,
    pub problems: Vec<Problem>,
}

/// Summary of one silo of a valid file.
#[derive(Debug, Serialize)]
pub struct ValidSilo {
    pub name: String,
    pub image: String,
    /// Program path inside the silo; null when the silo has no binary block.
    pub binary: Option<String>,
    /// Regular files, folders and symlinks of the bundle.
    pub files: usize,
    pub folders: usize,
    pub symlinks: usize,
    /// Total size of the bundle's file contents.
    pub content_bytes: u64,
    /// Instances requested; 1 when the file does not set `count`.
    pub count: u32,
}

/// One problem of an invalid file. `line` and `column` are 1-based and null when the file
/// could not be read at all.
#[derive(Debug, Serialize)]
pub struct Problem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Prints `document` as pretty JSON followed by a newline on standard output.
pub fn print_json<T: Serialize>(document: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(document)
        .map_err(|error| CliError::cluster(format!("failed to encode the JSON output: {error}")))?;
    println!("{text}");
    Ok(())
}

impl From<&proto::SiloInfo> for Silo {
    fn from(silo: &proto::SiloInfo) -> Self {
        let state = silo.state();
        Silo {
            name: silo.name.clone(),
            index: silo.index,
            count: silo.count.max(1),
            id: silo.id.clone(),
            class: silo.class.clone(),
            tags: silo.tags.clone(),
            host: silo.host.clone(),
            state: state.label().to_owned(),
            exit_code: silo.exit_code.filter(|_| state == proto::SiloState::Exited),
            message: silo.message.clone(),
            addresses: silo
                .interfaces
                .iter()
                .map(|interface| interface.address.clone())
                .collect(),
            interfaces: silo
                .interfaces
                .iter()
                .map(|interface| Interface {
                    name: interface.name.clone(),
                    address: interface.address.clone(),
                })
                .collect(),
            restarts: silo.restarts,
            usage: silo.usage.as_ref().map(Usage::from),
        }
    }
}

impl From<&proto::SiloUsage> for Usage {
    fn from(usage: &proto::SiloUsage) -> Self {
        Usage {
            cpu_percent: usage.cpu_percent,
            memory_bytes: usage.memory_bytes,
            processes: usage.processes,
            rx_bytes: usage.rx_bytes,
            tx_bytes: usage.tx_bytes,
            uptime_ms: usage.uptime_ms,
        }
    }
}

impl SiloList {
    pub fn new(listed: &proto::ListResponse) -> Self {
        SiloList {
            silos: listed.silos.iter().map(Silo::from).collect(),
        }
    }
}

impl HostList {
    /// Groups the silos by host as `list --all-hosts` does; an unplaced silo is in no host.
    pub fn new(listed: &proto::ListResponse) -> Self {
        let hosts = listed
            .hosts
            .iter()
            .map(|host| Host {
                name: host.name.clone(),
                address: host.address.clone(),
                state: host.state().label().to_owned(),
                subnet: host.subnet.clone(),
                cpus: host.cpus,
                memory_bytes: host.memory_bytes,
                silo_count: host.silo_count,
                labels: host.labels.clone().into_iter().collect(),
                silos: listed
                    .silos
                    .iter()
                    .filter(|silo| silo.host == host.name)
                    .map(Silo::from)
                    .collect(),
            })
            .collect();
        HostList { hosts }
    }
}

impl ControllerList {
    pub fn new(members: &[proto::Member]) -> Self {
        let controllers = members
            .iter()
            .map(|member| Controller {
                id: member.id,
                address: member.address.clone(),
                role: member.role().label().to_owned(),
                leader: member.leader,
                last_applied: member.last_applied,
                reachable: member.reachable,
            })
            .collect();
        ControllerList { controllers }
    }
}

impl ValidSilo {
    pub fn new(silo: &proto::SiloSpec) -> Self {
        let count_of = |kind: proto::FileKind| silo.files.iter().filter(|entry| entry.kind() == kind).count();
        let content_bytes: usize = silo.files.iter().map(|entry| entry.content.len()).sum();
        ValidSilo {
            name: silo.name.clone(),
            image: silo.base.clone(),
            binary: silo.binary.as_ref().map(|binary| binary.path.clone()),
            files: count_of(proto::FileKind::Regular),
            folders: count_of(proto::FileKind::Directory),
            symlinks: count_of(proto::FileKind::Symlink),
            content_bytes: u64::try_from(content_bytes).unwrap_or(u64::MAX),
            count: silo.count.unwrap_or(1),
        }
    }
}

impl ValidatedFile {
    /// Describes the outcome of loading the silo file at `path`.
    pub fn new(path: &str, loaded: &Result<Vec<proto::SiloSpec>, colex_cli::spec::SpecError>) -> Self {
        match loaded {
            Ok(specs) => ValidatedFile {
                path: path.to_owned(),
                valid: true,
                silos: specs.iter().map(ValidSilo::new).collect(),
                problems: Vec::new(),
            },
            Err(error) => {
                let mut problems: Vec<Problem> = error
                    .problems()
                    .iter()
                    .map(|problem| Problem {
                        line: Some(problem.line),
                        column: Some(problem.column),
                        message: problem.message.clone(),
                    })
                    .collect();
                // A read error has no position, so its whole message is the one problem.
                if problems.is_empty() {
                    problems.push(Problem {
                        line: None,
                        column: None,
                        message: error.to_string(),
                    });
                }
                ValidatedFile {
                    path: path.to_owned(),
                    valid: false,
                    silos: Vec::new(),
                    problems,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_only_for_exited_silos() {
        let mut silo = proto::SiloInfo {
            name: "job".to_owned(),
            state: proto::SiloState::Exited.into(),
            exit_code: Some(3),
            ..Default::default()
        };
        assert_eq!(Silo::from(&silo).exit_code, Some(3));
        silo.state = proto::SiloState::Up.into();
        assert_eq!(Silo::from(&silo).exit_code, None);
    }

    #[test]
    fn silo_fields_are_snake_case() {
        let silo = proto::SiloInfo {
            name: "web".to_owned(),
            state: proto::SiloState::Up.into(),
            interfaces: vec![proto::Interface {
                name: "cx3938a44e".to_owned(),
                address: "10.69.1.2".to_owned(),
            }],
            usage: Some(proto::SiloUsage {
                processes: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = serde_json::to_value(SiloList::new(&proto::ListResponse {
            silos: vec![silo],
            hosts: Vec::new(),
        }))
        .expect("encodes");
        let silo = &value["silos"][0];
        assert_eq!(silo["state"], "UP");
        assert_eq!(silo["addresses"][0], "10.69.1.2");
        assert_eq!(silo["interfaces"][0]["name"], "cx3938a44e");
        assert_eq!(silo["usage"]["processes"], 2);
        assert!(silo["usage"]["cpu_percent"].is_null());
        assert!(silo["exit_code"].is_null());
    }

    #[test]
    fn hosts_hold_their_silos() {
        let listed = proto::ListResponse {
            silos: vec![
                proto::SiloInfo {
                    name: "a".to_owned(),
                    host: "h1".to_owned(),
                    ..Default::default()
                },
                proto::SiloInfo {
                    name: "unplaced".to_owned(),
                    ..Default::default()
                },
            ],
            hosts: vec![
                proto::HostInfo {
                    name: "h1".to_owned(),
                    state: proto::HostState::Up.into(),
                    silo_count: 1,
                    ..Default::default()
                },
                proto::HostInfo {
                    name: "h2".to_owned(),
                    state: proto::HostState::Down.into(),
                    ..Default::default()
                },
            ],
        };
        let hosts = HostList::new(&listed).hosts;
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[0].silos.len(), 1);
        assert_eq!(hosts[0].silos[0].name, "a");
        assert_eq!(hosts[0].state, "UP");
        assert!(hosts[1].silos.is_empty());
        assert_eq!(hosts[1].state, "DOWN");
    }

    #[test]
    fn read_errors_are_one_problem_without_position() {
        let loaded = colex_cli::spec::load(std::path::Path::new("/nonexistent/colex-test.hcl"));
        let file = ValidatedFile::new("/nonexistent/colex-test.hcl", &loaded);
        assert!(!file.valid);
        assert_eq!(file.problems.len(), 1);
        assert_eq!(file.problems[0].line, None);
        assert!(
            file.problems[0].message.contains("/nonexistent/colex-test.hcl"),
            "{}",
            file.problems[0].message
        );
    }
}
