//! `logs` of a silo with several instances: one stream per instance, merged line by line, each
//! line prefixed with the instance and its host, as `docker compose logs` does per service.

use std::io::Write;

use colex_proto as proto;
use tokio::sync::mpsc;

use crate::client::{CliError, Controller};
use crate::table;

/// Lines in flight between the instances' streams and stdout.
const LINE_QUEUE_LEN: usize = 256;

/// One instance whose output is merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSource {
    /// `NAME[INDEX]`, which the controller's Logs request takes.
    pub name: String,
    /// Prefix of each of its lines, e.g. `web[1] host-b | `.
    pub prefix: String,
}

/// Returns the instances of silo `name` in index order, or an empty list when the silo has
/// at most one instance (its output is then printed without prefixes).
pub fn instances_of(name: &str, silos: &[proto::SiloInfo]) -> Vec<InstanceSource> {
    let mut instances: Vec<&proto::SiloInfo> = silos.iter().filter(|silo| silo.name == name).collect();
    if instances.len() < 2 {
        return Vec::new();
    }
    instances.sort_by_key(|silo| silo.index);
    let labels: Vec<String> = instances
        .iter()
        .map(|silo| {
            let host = if silo.host.is_empty() { "-" } else { silo.host.as_str() };
            format!("{} {host}", table::instance_name(silo))
        })
        .collect();
    // Padded to one width, so the lines of all instances start in the same column.
    let width = labels.iter().map(String::len).max().unwrap_or(0);
    instances
        .iter()
        .zip(labels)
        .map(|(silo, label)| InstanceSource {
            name: table::instance_name(silo),
            prefix: format!("{label:<width$} | "),
        })
        .collect()
}

/// A message from an instance's stream task to the printer.
enum Event {
    Line(Vec<u8>),
    /// The stream ended without a byte; the message is printed to stderr.
    NoOutput(String),
    /// The stream failed; the message is printed to stderr and the others go on.
    Failed(String),
}

/// Streams the output of `instances` at the same time and prints whole lines as they arrive.
/// Fails only when every instance's stream failed.
pub async fn print_merged(
    controller: &Controller,
    instances: Vec<InstanceSource>,
    template: proto::LogsRequest,
) -> Result<(), CliError> {
    let (lines_tx, mut lines_rx) = mpsc::channel(LINE_QUEUE_LEN);
    let total = instances.len();
    let report_empty = reports_no_output(&template);
    let stream = template.stream();
    for instance in instances {
        let mut client = controller.client.clone();
        let address = controller.address.clone();
        let lines = lines_tx.clone();
        let request = proto::LogsRequest {
            name: instance.name.clone(),
            ..template.clone()
        };
        tokio::spawn(async move {
            let prefix = instance.prefix.into_bytes();
            let failed = |message: String| Event::Failed(format!("{}: {message}", instance.name));
            let mut chunks = match client.logs(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = lines.send(failed(CliError::from_status(&address, &status).to_string())).await;
                    return;
                }
            };
            let mut splitter = LineSplitter::new(prefix);
            let mut received_bytes = 0;
            loop {
                match chunks.message().await {
                    Ok(Some(chunk)) => {
                        received_bytes += chunk.data.len();
                        for line in splitter.push(&chunk.data) {
                            if lines.send(Event::Line(line)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let _ = lines.send(failed(CliError::from_status(&address, &status).to_string())).await;
                        return;
                    }
                }
            }
            if let Some(line) = splitter.finish() {
                let _ = lines.send(Event::Line(line)).await;
            }
            if received_bytes == 0 && report_empty {
                let _ = lines.send(Event::NoOutput(no_output_message(&instance.name, stream))).await;
            }
        });
    }
    drop(lines_tx);

    let mut failures = 0;
    let mut out = std::io::stdout().lock();
    while let Some(event) = lines_rx.recv().await {
        match event {
            Event::Line(line) => out
                .write_all(&line)
                .and_then(|()| out.flush())
                .map_err(|error| CliError::cluster(format!("cannot write to stdout: {error}")))?,
            Event::NoOutput(message) => eprintln!("{message}"),
            Event::Failed(message) => {
                failures += 1;
                eprintln!("warning: no output of {message}");
            }
        }
    }
    if failures == total {
        return Err(CliError::cluster(format!(
            "no instance of {} sent its output; see the warnings above",
            template.name
        )));
    }
    Ok(())
}

/// Returns true when an empty stream of `request` is reported: the output was read to its end
/// (no `-f`) and lines were asked for (not `--tail 0`).
pub fn reports_no_output(request: &proto::LogsRequest) -> bool {
    !request.follow && request.tail_lines != Some(0)
}

/// Builds the stderr line for an instance whose stream ended without a byte, so that a user
/// can distinguish a silo that printed nothing from a broken `logs`.
pub fn no_output_message(instance: &str, stream: proto::LogStream) -> String {
    let stream = match stream {
        proto::LogStream::Stderr => "stderr",
        _ => "stdout",
    };
    format!("no output yet from {instance} ({stream})")
}

/// Cuts a byte stream into lines that each start with a prefix. A line that is not finished
/// waits for the next chunk, so lines of different instances never mix.
struct LineSplitter {
    prefix: Vec<u8>,
    pending: Vec<u8>,
}

impl LineSplitter {
    fn new(prefix: Vec<u8>) -> Self {
        LineSplitter {
            prefix,
            pending: Vec::new(),
        }
    }

    /// Takes a chunk and returns the lines it finished, each with prefix and newline.
    fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|&byte| byte == b'\n') {
            let rest = self.pending.split_off(end + 1);
            let mut line = self.prefix.clone();
            line.extend_from_slice(&self.pending);
            lines.push(line);
            self.pending = rest;
        }
        lines
    }

    /// Returns the last line when the output did not end with a newline, with one added.
    fn finish(self) -> Option<Vec<u8>> {
        if self.pending.is_empty() {
            return None;
        }
        let mut line = self.prefix;
        line.extend_from_slice(&self.pending);
        line.push(b'\n');
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, index: u32, count: u32, host: &str) -> proto::SiloInfo {
        proto::SiloInfo {
            name: name.to_owned(),
            index,
            count,
            host: host.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn splitter_prefixes_whole_lines_only() {
        let mut splitter = LineSplitter::new(b"web[0] a | ".to_vec());
        assert!(splitter.push(b"hel").is_empty());
        assert_eq!(
            splitter.push(b"lo\nsecond\nthi"),
            vec![b"web[0] a | hello\n".to_vec(), b"web[0] a | second\n".to_vec()]
        );
        assert_eq!(splitter.finish(), Some(b"web[0] a | thi\n".to_vec()));
    }

    #[test]
    fn splitter_adds_nothing_after_a_final_newline() {
        let mut splitter = LineSplitter::new(b"p | ".to_vec());
        assert_eq!(splitter.push(b"one\n"), vec![b"p | one\n".to_vec()]);
        assert_eq!(splitter.finish(), None);
    }

    #[test]
    fn empty_streams_name_instance_and_stream() {
        assert_eq!(
            no_output_message("web[0]", proto::LogStream::Stdout),
            "no output yet from web[0] (stdout)"
        );
        assert_eq!(
            no_output_message("web", proto::LogStream::Stderr),
            "no output yet from web (stderr)"
        );
    }

    #[test]
    fn empty_streams_are_not_reported_when_following() {
        let request = proto::LogsRequest {
            name: "web".to_owned(),
            ..Default::default()
        };
        assert!(reports_no_output(&request));
        let followed = proto::LogsRequest {
            follow: true,
            ..request.clone()
        };
        assert!(!reports_no_output(&followed));
        let no_lines = proto::LogsRequest {
            tail_lines: Some(0),
            ..request
        };
        assert!(!reports_no_output(&no_lines));
    }

    #[test]
    fn single_instance_silos_are_not_merged() {
        let silos = vec![instance("web", 0, 1, "a"), instance("db", 0, 2, "a")];
        assert!(instances_of("web", &silos).is_empty());
        assert!(instances_of("missing", &silos).is_empty());
    }

    #[test]
    fn instances_come_in_index_order_with_aligned_prefixes() {
        let silos = vec![
            instance("web", 1, 2, "host-bb"),
            instance("other", 0, 1, "a"),
            instance("web", 0, 2, "a"),
        ];
        let instances = instances_of("web", &silos);
        assert_eq!(
            instances,
            vec![
                InstanceSource {
                    name: "web[0]".to_owned(),
                    prefix: "web[0] a       | ".to_owned(),
                },
                InstanceSource {
                    name: "web[1]".to_owned(),
                    prefix: "web[1] host-bb | ".to_owned(),
                },
            ]
        );
    }
}
