//! The `up`, `down`, `list` and `logs` commands.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use colex_cli::spec;
use colex_proto as proto;

use crate::client::{CliError, Controller};
use crate::merged_logs;
use crate::output::{self, OutputFormat};
use crate::table;

/// Interval between two looks at the silos' states while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Reads a silo file; a file with errors is one `CliError` listing them all.
fn load_specs(file: &Path) -> Result<Vec<proto::SiloSpec>, CliError> {
    spec::load(file).map_err(|error| CliError::from_spec(&error))
}

pub async fn up(address: &str, file: &Path, wait: Duration) -> Result<(), CliError> {
    let specs = load_specs(file)?;
    let mut controller = Controller::connect(address).await?;

    let response = controller
        .client
        .up(proto::UpRequest { silos: specs })
        .await
        .map_err(|status| CliError::from_status(address, &status))?
        .into_inner();
    for name in &response.unchanged {
        println!("silo {name} is unchanged; nothing was restarted");
    }
    // Instances are followed by name and index, not id: a rolling replacement gives an
    // instance a new id while `up` waits.
    let followed: BTreeSet<(String, u32)> = response
        .silos
        .iter()
        .map(|silo| (silo.name.clone(), silo.index))
        .collect();

    let deadline = Instant::now() + wait;
    let silos = loop {
        let listed = controller.list().await?;
        let current: Vec<proto::SiloInfo> = listed
            .silos
            .into_iter()
            .filter(|silo| followed.contains(&(silo.name.clone(), silo.index)))
            .collect();
        let settled = current.len() == followed.len() && current.iter().all(is_settled);
        if settled || Instant::now() >= deadline {
            break current;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };

    let rows: Vec<table::SiloRow> = silos.iter().map(table::silo_row).collect();
    println!("{}", table::render(&rows));

    let problems: Vec<String> = silos
        .iter()
        .filter(|silo| silo.state() != proto::SiloState::Up)
        .map(|silo| describe_problem(silo, wait))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::cluster(problems.join("; ")))
    }
}

/// Returns true for the states `up` stops waiting at. An instance pending on no host is one of
/// them: it waits for a host with room, which may take longer than any `--wait`.
fn is_settled(silo: &proto::SiloInfo) -> bool {
    match silo.state() {
        proto::SiloState::Up | proto::SiloState::Failed | proto::SiloState::Exited => true,
        proto::SiloState::Pending => silo.host.is_empty(),
        _ => false,
    }
}

fn describe_problem(silo: &proto::SiloInfo, wait: Duration) -> String {
    let name = table::instance_name(silo);
    match silo.state() {
        proto::SiloState::Failed => format!("silo {name} failed to start on {}: {}", silo.host, silo.message),
        proto::SiloState::Exited => format!(
            "silo {name} exited with code {} right after starting; see its program's output on host {}",
            silo.exit_code.unwrap_or(-1),
            silo.host
        ),
        proto::SiloState::Pending if silo.host.is_empty() => {
            // The scheduler's reason starts with the silo's name, which the line already has.
            let own_prefix = format!("silo {}: ", silo.name);
            let reason = silo.message.strip_prefix(&own_prefix).unwrap_or(&silo.message);
            format!("silo {name} is PENDING and starts once a host fits: {reason}")
        }
        state => format!(
            "silo {name} is still {} after {}s; see `colex-cli list --all-hosts` or raise --wait",
            state.label(),
            wait.as_secs()
        ),
    }
}

pub async fn down(address: &str, file: Option<&Path>, mut names: Vec<String>, wait: Duration) -> Result<(), CliError> {
    if let Some(file) = file {
        // `down NAME` is a common slip for `down --name NAME`.
        if !file.exists() && file.components().count() == 1 && !file.to_string_lossy().contains('.') {
            return Err(CliError::user(format!(
                "silo file {} not found; to remove the silo named {0}, run `colex-cli down --name {0}`",
                file.display()
            )));
        }
        names.extend(load_specs(file)?.into_iter().map(|spec| spec.name));
    }
    if names.is_empty() {
        return Err(CliError::user("no silo to remove; give a silo file or --name NAME"));
    }
    let mut controller = Controller::connect(address).await?;

    let before = controller.list().await?;
    let response = controller
        .client
        .down(proto::DownRequest { names: names.clone() })
        .await
        .map_err(|status| CliError::from_status(address, &status))?
        .into_inner();

    let deadline = Instant::now() + wait;
    let remaining = loop {
        let listed = controller.list().await?;
        let remaining: Vec<proto::SiloInfo> = listed
            .silos
            .into_iter()
            .filter(|silo| response.stopping.contains(&silo.name))
            .collect();
        if remaining.is_empty() || Instant::now() >= deadline {
            break remaining;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };

    let rows: Vec<table::SiloRow> = before
        .silos
        .iter()
        .filter(|silo| response.stopping.contains(&silo.name))
        .map(|silo| {
            let mut row = table::silo_row(silo);
            row.state = match remaining.iter().find(|left| left.id == silo.id) {
                Some(left) => table::state_label(left),
                None => proto::SiloState::Removed.label().to_owned(),
            };
            row
        })
        .collect();
    if !rows.is_empty() {
        println!("{}", table::render(&rows));
    }

    let mut problems: Vec<String> = response
        .not_found
        .iter()
        .map(|name| silo_not_found(name, &before.silos))
        .collect();
    problems.extend(remaining.iter().map(|silo| {
        format!(
            "silo {} is still {} on host {} after {}s; its agent may be down",
            table::instance_name(silo),
            table::state_label(silo),
            silo.host,
            wait.as_secs()
        )
    }));
    match (problems.is_empty(), remaining.is_empty()) {
        (true, _) => Ok(()),
        (false, true) => Err(CliError::user(problems.join("; "))),
        (false, false) => Err(CliError::cluster(problems.join("; "))),
    }
}

/// Prints the silos, as tables or JSON, and returns what was listed.
pub async fn list(address: &str, all_hosts: bool, format: OutputFormat) -> Result<proto::ListResponse, CliError> {
    let mut controller = Controller::connect(address).await?;
    let listed = controller.list().await?;

    match (format, all_hosts) {
        (OutputFormat::Json, false) => {
            output::print_json(&output::SiloList::new(&listed))?;
            return Ok(listed);
        }
        (OutputFormat::Json, true) => {
            output::print_json(&output::HostList::new(&listed))?;
            return Ok(listed);
        }
        (OutputFormat::Table, _) => {}
    }

    if !all_hosts {
        println!("{}", table::render_list(&listed.silos));
        return Ok(listed);
    }

    let mut first = true;
    for host in &listed.hosts {
        if !first {
            println!();
        }
        first = false;
        println!("{}", table::host_heading(host));
        let rows: Vec<table::HostSiloRow> = listed
            .silos
            .iter()
            .filter(|silo| silo.host == host.name)
            .map(table::host_silo_row)
            .collect();
        if rows.is_empty() {
            println!("(no silos)");
        } else {
            println!("{}", table::render(&rows));
        }
    }
    if listed.hosts.is_empty() {
        println!("no hosts have joined; start one with `colex-agent --join {address}`");
    }
    let pending: Vec<table::PendingRow> = listed
        .silos
        .iter()
        .filter(|silo| silo.host.is_empty())
        .map(table::pending_row)
        .collect();
    if !pending.is_empty() {
        println!();
        println!("HOST -  pending instances, placed once a host fits");
        println!("{}", table::render(&pending));
    }
    Ok(listed)
}

/// Prints the output of silo `name`'s program as the agent that runs it sends it: the last
/// `tail` lines (all kept output when `None`), then, with `follow`, new output until the
/// silo is removed or the user interrupts.
pub async fn logs(address: &str, name: &str, follow: bool, tail: Option<u32>, stderr: bool) -> Result<(), CliError> {
    let mut controller = Controller::connect_streaming(address).await?;
    let stream = if stderr { proto::LogStream::Stderr } else { proto::LogStream::Stdout };
    let request = proto::LogsRequest {
        name: name.to_owned(),
        stream: stream.into(),
        tail_lines: tail,
        follow,
    };
    // A silo with several instances prints all of them, merged and prefixed; `NAME[INDEX]`
    // names one instance and prints it alone.
    if !name.contains('[') {
        let silos = controller.list().await?.silos;
        let instances = merged_logs::instances_of(name, &silos);
        if !instances.is_empty() {
            return merged_logs::print_merged(&controller, instances, request).await;
        }
    }
    let mut chunks = match controller.client.logs(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            // The controller's message does not name the closest silo, so it is rebuilt here,
            // unless the silo is listed and something else was not found.
            let silos = controller.list().await.map(|listed| listed.silos).unwrap_or_default();
            if silos.iter().any(|silo| silo.name == name) {
                return Err(CliError::from_status(address, &status));
            }
            return Err(CliError::user(silo_not_found(name, &silos)));
        }
        Err(status) => return Err(CliError::from_status(address, &status)),
    };
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|status| CliError::from_status(address, &status))?
    {
        // Flushed per chunk, so followed output shows up as it is written.
        out.write_all(&chunk.data)
            .and_then(|()| out.flush())
            .map_err(|error| CliError::cluster(format!("cannot write to stdout: {error}")))?;
    }
    Ok(())
}

/// Builds the message that silo `name` does not exist, naming the closest of `silos` when one
/// is a likely typo of it.
pub fn silo_not_found(name: &str, silos: &[proto::SiloInfo]) -> String {
    let closest = spec::closest_name(name, silos.iter().map(|silo| silo.name.as_str()));
    match closest {
        Some(closest) => format!("silo {name} not found; did you mean {closest}? see `colex-cli list` for the names"),
        None => format!("silo {name} not found; see `colex-cli list` for the names"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silos(names: &[&str]) -> Vec<proto::SiloInfo> {
        names
            .iter()
            .map(|name| proto::SiloInfo {
                name: (*name).to_owned(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn missing_silo_names_closest() {
        let message = silo_not_found("web-c", &silos(&["web-a", "db"]));
        assert_eq!(message, "silo web-c not found; did you mean web-a? see `colex-cli list` for the names");
    }

    #[test]
    fn missing_silo_without_close_name() {
        let message = silo_not_found("frontend", &silos(&["web-a", "db"]));
        assert_eq!(message, "silo frontend not found; see `colex-cli list` for the names");
    }
}
