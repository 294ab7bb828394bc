//! The `up`, `down`, `list` and `logs` commands.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use colex_cli::spec;
use colex_proto as proto;

use crate::client::{CliError, Controller};
use crate::list_filter::ListFilter;
use crate::merged_logs;
use crate::silo_names::{silo_not_found, split_instance_name};
use crate::output::{self, OutputFormat};
use crate::table;
use crate::up_progress;

/// Interval between two looks at the silos' states while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Reads a silo file; a file with errors is one `CliError` listing them all.
fn load_specs(file: &Path) -> Result<Vec<proto::SiloSpec>, CliError> {
    spec::load(file).map_err(|error| CliError::from_spec(&error))
}

/// Stores the silos of `file`, then, unless `detach`, prints each instance's progress and
/// waits up to `wait` until every instance runs. Fails with the reasons of the instances that
/// failed, exited or did not run in time.
pub async fn up(address: &str, file: &Path, wait: Duration, detach: bool) -> Result<(), CliError> {
    let specs = load_specs(file)?;
    let mut controller = Controller::connect(address).await?;

    let requested = Instant::now();
    let response = controller
        .client
        .up(proto::UpRequest { silos: specs })
        .await
        .map_err(|status| CliError::from_status(address, &status))?
        .into_inner();
    for name in &response.unchanged {
        println!("silo {name} is unchanged; nothing was restarted");
    }
    if detach {
        let rows: Vec<table::SiloRow> = response.silos.iter().map(table::silo_row).collect();
        println!("{}", table::render(&rows));
        println!("stored; not waiting for the silos to run (--detach); see `colex-cli list` or `colex-cli status NAME`");
        return Ok(());
    }

    let followed: up_progress::Followed = response
        .silos
        .iter()
        .map(|silo| (silo.name.clone(), silo.index))
        .collect();
    let mut progress = up_progress::Progress::new(requested);
    let deadline = Instant::now() + wait;
    let silos = up_progress::wait_until_settled(&mut controller, &followed, response.silos, deadline, &mut progress).await?;

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

/// Returns the silo file and the silo names of `down`. `--name` takes several values, so in
/// `down --name a web.hcl` the file arrives as a name. A value with `.` or `/` cannot be a silo
/// name, which is a DNS label, so when no file was given the first such value is the file.
pub fn down_targets(file: Option<PathBuf>, mut names: Vec<String>) -> (Option<PathBuf>, Vec<String>) {
    if file.is_some() {
        return (file, names);
    }
    let path = names.iter().position(|name| name.contains(['.', '/']));
    match path {
        Some(position) => {
            let file = PathBuf::from(names.remove(position));
            (Some(file), names)
        }
        None => (None, names),
    }
}

pub async fn down(address: &str, file: Option<&Path>, mut names: Vec<String>, wait: Duration) -> Result<(), CliError> {
    // Names given with --name that do not exist are errors, because they are likely typos. A
    // silo of the file that does not exist is already in the state that `down` requests.
    let named: BTreeSet<String> = names.iter().cloned().collect();
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
        .map(|silo| match remaining.iter().find(|left| left.id == silo.id) {
            Some(left) => table::SiloRow {
                state: table::state_label(left),
                ..table::silo_row(silo)
            },
            None => table::removed_row(silo),
        })
        .collect();
    if !rows.is_empty() {
        println!("{}", table::render(&rows));
    }

    let (unknown_names, already_gone): (Vec<&String>, Vec<&String>) =
        response.not_found.iter().partition(|name| named.contains(*name));
    for name in already_gone {
        println!("silo {name} does not exist; nothing to do");
    }
    let mut problems: Vec<String> = unknown_names
        .into_iter()
        .map(|name| down_not_found(name, &before.silos))
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

/// Builds the message that `down` found no silo `name`. `down` removes whole silos, so an
/// instance name such as `web[1]` of an existing silo gets the commands that do work.
fn down_not_found(name: &str, silos: &[proto::SiloInfo]) -> String {
    match split_instance_name(name) {
        Some((silo, _)) if silos.iter().any(|info| info.name == silo) => format!(
            "silo {name} not found; down removes whole silos, so run `colex-cli down --name {silo}`, or lower its count and run `colex-cli up`"
        ),
        _ => silo_not_found(name, silos),
    }
}

/// Prints the silos that pass `filter`, as tables or JSON, and returns the filtered listing.
pub async fn list(
    address: &str,
    all_hosts: bool,
    filter: &ListFilter,
    format: OutputFormat,
) -> Result<proto::ListResponse, CliError> {
    let mut controller = Controller::connect(address).await?;
    let listed = filter.apply(controller.list().await?)?;

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
        if rows.is_empty() && filter.filters_silos_of_a_host() {
            println!("(no matching silos)");
        } else if rows.is_empty() {
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
    let report_empty = merged_logs::reports_no_output(&request);
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
    let mut received_bytes = 0;
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|status| CliError::from_status(address, &status))?
    {
        received_bytes += chunk.data.len();
        // Flushed per chunk, so followed output shows up as it is written.
        out.write_all(&chunk.data)
            .and_then(|()| out.flush())
            .map_err(|error| CliError::cluster(format!("cannot write to stdout: {error}")))?;
    }
    if received_bytes == 0 && report_empty {
        eprintln!("{}", merged_logs::no_output_message(name, stream));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_of_instance_name_explains_whole_silos() {
        let silos: Vec<proto::SiloInfo> = (0..2)
            .map(|index| proto::SiloInfo {
                name: "web".to_owned(),
                index,
                count: 2,
                ..Default::default()
            })
            .collect();
        assert_eq!(
            down_not_found("web[1]", &silos),
            "silo web[1] not found; down removes whole silos, so run `colex-cli down --name web`, or lower its count and run `colex-cli up`"
        );
        assert_eq!(
            down_not_found("wbe", &silos),
            "silo wbe not found; did you mean web? see `colex-cli list` for the names"
        );
    }

    #[test]
    fn down_targets_keep_given_file() {
        let (file, names) = down_targets(Some(PathBuf::from("a.hcl")), vec!["b.hcl".to_owned()]);
        assert_eq!(file, Some(PathBuf::from("a.hcl")));
        assert_eq!(names, ["b.hcl"]);
        let (file, names) = down_targets(None, vec!["web".to_owned(), "db".to_owned()]);
        assert_eq!(file, None);
        assert_eq!(names, ["web", "db"]);
    }
}
