//! Waiting for the silos of `up`: follows the controller's `Watch` stream, prints a line per
//! instance as it is placed, starts and runs, and stops once every instance has settled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use colex_proto as proto;

use crate::client::{CliError, Controller};
use crate::table;

/// Interval between two `List` calls when the controller has no `Watch` service.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Pause before watching again after the stream broke, such as on a change of leader.
const REWATCH_INTERVAL: Duration = Duration::from_millis(100);

/// Instances of `up`, followed by silo name and index, not id: a rolling replacement gives an
/// instance a new id while `up` waits.
pub type Followed = BTreeSet<(String, u32)>;

/// Host and state of one instance as its last progress line printed them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PrintedStatus {
    host: String,
    state: proto::SiloState,
}

/// Prints one line per instance each time its host or state changes, such as
/// `web: placed on h1`, `web: starting on h1` and `web: running on h1 at 10.69.1.2 (34 ms)`.
pub struct Progress {
    started: Instant,
    printed: BTreeMap<(String, u32), PrintedStatus>,
}

impl Progress {
    /// Starts the clock that the `running` lines report, at the `up` request.
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            printed: BTreeMap::new(),
        }
    }

    /// Prints what changed in `silos` since the last call.
    pub fn report(&mut self, silos: &[proto::SiloInfo]) {
        for silo in silos {
            let now = PrintedStatus {
                host: silo.host.clone(),
                state: silo.state(),
            };
            let key = (silo.name.clone(), silo.index);
            if self.printed.get(&key) == Some(&now) {
                continue;
            }
            if let Some(line) = self.line(silo) {
                println!("{line}");
            }
            self.printed.insert(key, now);
        }
    }

    fn line(&self, silo: &proto::SiloInfo) -> Option<String> {
        let name = table::instance_name(silo);
        let host = &silo.host;
        let line = match silo.state() {
            proto::SiloState::Pending if host.is_empty() => format!("{name}: pending, no host fits yet"),
            proto::SiloState::Pending => format!("{name}: placed on {host}"),
            proto::SiloState::Starting => format!("{name}: starting on {host}"),
            proto::SiloState::Up => {
                let address = silo
                    .interfaces
                    .first()
                    .map(|interface| format!(" at {}", interface.address))
                    .unwrap_or_default();
                format!("{name}: running on {host}{address} ({} ms)", self.started.elapsed().as_millis())
            }
            proto::SiloState::Failed => format!("{name}: failed on {host}"),
            proto::SiloState::Exited => format!("{name}: exited on {host}"),
            // Stopping and removed instances are above the new count; `up` does not follow them.
            _ => return None,
        };
        Some(line)
    }
}

/// Returns true for the states `up` stops waiting at. An instance pending on no host is one of
/// them: it waits for a host with room, which may take longer than any `--wait`.
pub fn is_settled(silo: &proto::SiloInfo) -> bool {
    match silo.state() {
        proto::SiloState::Up | proto::SiloState::Failed | proto::SiloState::Exited => true,
        proto::SiloState::Pending => silo.host.is_empty(),
        _ => false,
    }
}

/// Returns the followed instances among `silos`, and whether all of them have settled.
fn followed_of(silos: Vec<proto::SiloInfo>, followed: &Followed) -> (Vec<proto::SiloInfo>, bool) {
    let current: Vec<proto::SiloInfo> = silos
        .into_iter()
        .filter(|silo| followed.contains(&(silo.name.clone(), silo.index)))
        .collect();
    let settled = current.len() == followed.len() && current.iter().all(is_settled);
    (current, settled)
}

/// Waits until every followed instance has settled or `deadline` passes, printing progress,
/// and returns the instances as last seen. `initial` is what the `Up` response showed.
///
/// The controller's `Watch` stream sends the instances after each commit that changes them,
/// so `up` returns within one message of the agent's report. A stream that breaks, as on a
/// change of leader, is opened again. A controller without the `Watch` service is polled
/// with `List`.
pub async fn wait_until_settled(
    controller: &mut Controller,
    followed: &Followed,
    initial: Vec<proto::SiloInfo>,
    deadline: Instant,
    progress: &mut Progress,
) -> Result<Vec<proto::SiloInfo>, CliError> {
    let (mut latest, settled) = followed_of(initial, followed);
    progress.report(&latest);
    if settled {
        return Ok(latest);
    }
    let names: Vec<String> = followed
        .iter()
        .map(|(name, _)| name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut watch = proto::watch_client::WatchClient::new(controller.channel.clone())
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
    loop {
        let Some(remaining) = deadline.checked_duration_since(Instant::now()) else {
            return Ok(latest);
        };
        let mut request = tonic::Request::new(proto::WatchSilosRequest { names: names.clone() });
        request.set_timeout(remaining);
        let opened = tokio::time::timeout(remaining, watch.watch_silos(request)).await;
        let mut stream = match opened {
            Err(_elapsed) => return Ok(latest),
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                return poll_until_settled(controller, followed, latest, deadline, progress).await;
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                pause_before_rewatch().await;
                continue;
            }
            Ok(Err(status)) => return Err(CliError::from_status(&controller.address, &status)),
        };

        loop {
            let message = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), stream.message()).await;
            match message {
                Err(_elapsed) => return Ok(latest),
                Ok(Ok(Some(message))) => {
                    let (current, settled) = followed_of(message.silos, followed);
                    progress.report(&current);
                    latest = current;
                    if settled {
                        return Ok(latest);
                    }
                }
                // The stream ended or broke: watch again, through the new leader if it changed.
                Ok(Ok(None)) | Ok(Err(_)) => {
                    pause_before_rewatch().await;
                    break;
                }
            }
        }
    }
}

/// Pauses before the next watch, so a controller that keeps failing is not asked in a loop.
async fn pause_before_rewatch() {
    tokio::time::sleep(REWATCH_INTERVAL).await;
}

/// Polls `List` until every followed instance has settled or `deadline` passes.
async fn poll_until_settled(
    controller: &mut Controller,
    followed: &Followed,
    mut latest: Vec<proto::SiloInfo>,
    deadline: Instant,
    progress: &mut Progress,
) -> Result<Vec<proto::SiloInfo>, CliError> {
    loop {
        if Instant::now() >= deadline {
            return Ok(latest);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        let listed = controller.list().await?;
        let (current, settled) = followed_of(listed.silos, followed);
        progress.report(&current);
        latest = current;
        if settled {
            return Ok(latest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(state: proto::SiloState, host: &str) -> proto::SiloInfo {
        proto::SiloInfo {
            name: "web".to_owned(),
            host: host.to_owned(),
            state: state.into(),
            count: 1,
            interfaces: vec![proto::Interface {
                name: "cx0000000a".to_owned(),
                address: "10.69.1.2".to_owned(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn progress_lines_per_state() {
        let progress = Progress::new(Instant::now());
        let line = |state, host| progress.line(&instance(state, host));
        assert_eq!(line(proto::SiloState::Pending, "").as_deref(), Some("web: pending, no host fits yet"));
        assert_eq!(line(proto::SiloState::Pending, "h1").as_deref(), Some("web: placed on h1"));
        assert_eq!(line(proto::SiloState::Starting, "h1").as_deref(), Some("web: starting on h1"));
        let running = line(proto::SiloState::Up, "h1").unwrap_or_default();
        assert!(running.starts_with("web: running on h1 at 10.69.1.2 ("), "{running}");
        assert!(running.ends_with(" ms)"), "{running}");
        assert_eq!(line(proto::SiloState::Failed, "h1").as_deref(), Some("web: failed on h1"));
        assert_eq!(line(proto::SiloState::Stopping, "h1"), None);
    }

    #[test]
    fn settled_needs_every_followed_instance() {
        let followed: Followed = [("web".to_owned(), 0), ("web".to_owned(), 1)].into_iter().collect();
        let mut second = instance(proto::SiloState::Up, "h2");
        second.index = 1;
        let (current, settled) = followed_of(vec![instance(proto::SiloState::Up, "h1")], &followed);
        assert_eq!(current.len(), 1);
        assert!(!settled, "one of two instances is missing");
        let (_, settled) = followed_of(vec![instance(proto::SiloState::Up, "h1"), second.clone()], &followed);
        assert!(settled, "both instances run");
        let (_, settled) = followed_of(vec![instance(proto::SiloState::Starting, "h1"), second], &followed);
        assert!(!settled, "one instance is still starting");
    }
}
