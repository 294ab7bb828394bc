//! A 3-controller colex cluster on loopback, started from the real `colex-controller` binary,
//! and the `Up` writes sent to it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use colex_proto as proto;
use colex_proto::client_client::ClientClient;
use colex_proto::members_client::MembersClient;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::process::{free_port, tail, Daemon};

/// Controllers in the cluster.
pub const CONTROLLER_COUNT: usize = 3;
/// Time a controller gets to start, to join, or to catch up after a restart.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of one membership list while polling, so a frozen controller cannot stall it.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Log lines of each controller printed when the benchmark fails.
const LOG_TAIL_LINES: usize = 20;

/// One controller: its address, data folder and, while it runs, its process.
#[derive(Debug)]
struct Controller {
    address: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    process: Option<Daemon>,
    /// Lazily connected channel, shared by the clients of this controller.
    channel: Channel,
}

/// A running colex cluster. Dropping it kills every controller and removes their folders.
#[derive(Debug)]
pub struct ColexCluster {
    binary: PathBuf,
    controllers: Vec<Controller>,
    // Declared last, so the processes are killed before their folders are removed.
    _dir: tempfile::TempDir,
}

impl ColexCluster {
    /// Returns the terms whose election a controller has logged so far ("raft leader elected"
    /// lines). Every election starts a new term, so a term that appears between two calls
    /// means an election in between.
    pub fn terms_logged(&self) -> std::collections::BTreeSet<u64> {
        let mut terms = std::collections::BTreeSet::new();
        for controller in &self.controllers {
            let Ok(log) = std::fs::read_to_string(&controller.log_path) else {
                continue;
            };
            let elected = log.lines().filter(|line| line.contains("raft leader elected"));
            for line in elected {
                let term = line.split_whitespace().find_map(|field| field.strip_prefix("term="));
                if let Some(term) = term.and_then(|term| term.parse().ok()) {
                    terms.insert(term);
                }
            }
        }
        terms
    }

    /// Returns the runtime stalls in the controllers' logs so far: how many, and the maximum
    /// lateness in milliseconds. A stall delays every Raft message of that controller.
    pub fn stalls_logged(&self) -> (usize, u64) {
        let mut count = 0;
        let mut max_late_ms = 0;
        for controller in &self.controllers {
            let Ok(log) = std::fs::read_to_string(&controller.log_path) else {
                continue;
            };
            for line in log.lines().filter(|line| line.contains("runtime stalled")) {
                count += 1;
                let late = line.split_whitespace().find_map(|field| field.strip_prefix("late_ms="));
                if let Some(late_ms) = late.and_then(|late| late.parse::<u64>().ok()) {
                    max_late_ms = max_late_ms.max(late_ms);
                }
            }
        }
        (count, max_late_ms)
    }

    /// Starts controller 0 with `--bootstrap`, then each other controller with `--join` to the
    /// first, and waits until every controller is a voter that has applied the leader's log.
    pub async fn start(binary: PathBuf) -> anyhow::Result<ColexCluster> {
        let dir = tempfile::Builder::new()
            .prefix("colex-bench-raft-")
            .tempdir()
            .context("failed to create the controllers' temporary folder")?;
        let mut controllers = Vec::with_capacity(CONTROLLER_COUNT);
        for index in 0..CONTROLLER_COUNT {
            let address = format!("127.0.0.1:{}", free_port()?);
            controllers.push(Controller {
                channel: lazy_channel(&address)?,
                address,
                data_dir: dir.path().join(format!("controller{index}")),
                log_path: dir.path().join(format!("controller{index}.log")),
                process: None,
            });
        }
        let mut cluster = ColexCluster {
            binary,
            controllers,
            _dir: dir,
        };

        cluster.spawn(0, &["--bootstrap"])?;
        cluster.wait_for_voters(1).await?;
        let first = cluster.controllers[0].address.clone();
        for index in 1..CONTROLLER_COUNT {
            cluster.spawn(index, &["--join", &first])?;
            cluster.wait_for_voters(index + 1).await?;
        }
        for index in 0..CONTROLLER_COUNT {
            cluster.wait_caught_up(index).await?;
        }
        Ok(cluster)
    }

    pub fn addresses(&self) -> Vec<String> {
        self.controllers.iter().map(|controller| controller.address.clone()).collect()
    }

    /// Returns a client of controller `index` on a connection of its own.
    pub async fn own_client(&self, index: usize) -> anyhow::Result<ClientClient<Channel>> {
        let address = &self.controllers[index].address;
        let channel = endpoint(address)?
            .connect()
            .await
            .with_context(|| format!("failed to connect to controller {address}"))?;
        Ok(client(channel))
    }

    /// Returns a client of controller `index` on the channel shared by this benchmark.
    pub fn shared_client(&self, index: usize) -> ClientClient<Channel> {
        client(self.controllers[index].channel.clone())
    }

    /// Returns the index of the leader, as a running controller's membership list reports it.
    pub async fn leader_index(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(members) = self.list_members().await {
                let leader = members.iter().find(|member| member.leader);
                if let Some(index) = leader.and_then(|member| self.index_of(&member.address)) {
                    return Ok(index);
                }
            }
            if Instant::now() >= deadline {
                bail!("no colex controller reported a leader within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the log index the leader has applied, as the membership list reports it.
    // Only the placements benchmark, which shares this file, calls it.
    #[allow(dead_code)]
    pub async fn leader_applied(&self) -> Option<u64> {
        let members = self.list_members().await?;
        members.iter().find(|member| member.leader)?.last_applied
    }

    /// Sends SIGKILL to controller `index` and reaps it.
    pub fn kill(&mut self, index: usize) {
        self.controllers[index].process = None;
    }

    /// Starts controller `index` again on its data folder and waits until it has caught up.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.spawn(index, &[])?;
        self.wait_caught_up(index).await
    }

    /// Returns the last log lines of every controller, for a failure report.
    pub fn log_tails(&self) -> String {
        let mut text = String::new();
        for (index, controller) in self.controllers.iter().enumerate() {
            text.push_str(&format!(
                "--- controller {index} ({}), {}:\n{}\n",
                controller.address,
                controller.log_path.display(),
                tail(&controller.log_path, LOG_TAIL_LINES)
            ));
        }
        text
    }

    fn spawn(&mut self, index: usize, mode: &[&str]) -> anyhow::Result<()> {
        let controller = &mut self.controllers[index];
        let mut command = Command::new(&self.binary);
        command
            .arg("--listen")
            .arg(&controller.address)
            .arg("--data-dir")
            .arg(&controller.data_dir)
            // Plain text: the benchmark clients and fake hosts have no certificates.
            .arg("--insecure")
            .args(mode);
        controller.process = Some(Daemon::spawn(command, &controller.log_path)?);
        Ok(())
    }

    /// Waits until the leader lists `count` voters, all of them reachable.
    async fn wait_for_voters(&mut self, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_running()?;
            if let Some(members) = self.list_members().await {
                let voters = members
                    .iter()
                    .filter(|member| member.role == proto::MemberRole::Voter as i32 && member.reachable)
                    .count();
                if voters == count && members.iter().any(|member| member.leader) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("the colex cluster did not reach {count} voters within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until controller `index` has applied at least the log index the leader had applied
    /// when this wait began. The leader probes the other members for their applied index.
    async fn wait_caught_up(&mut self, index: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let address = self.controllers[index].address.clone();
        let mut target = None;
        loop {
            self.check_running()?;
            if let Some(members) = self.list_members().await {
                let leader_applied = members.iter().find(|member| member.leader).and_then(|member| member.last_applied);
                if target.is_none() {
                    target = leader_applied;
                }
                let applied = members
                    .iter()
                    .find(|member| member.address == address)
                    .and_then(|member| member.last_applied);
                if let (Some(applied), Some(target)) = (applied, target) {
                    if applied >= target {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("colex controller {address} did not catch up within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the leader's membership list through the first running controller that
    /// returns one.
    async fn list_members(&self) -> Option<Vec<proto::Member>> {
        for controller in self.controllers.iter().filter(|controller| controller.process.is_some()) {
            let mut request = tonic::Request::new(proto::ListMembersRequest { local: false });
            request.set_timeout(LIST_TIMEOUT);
            let listed = tokio::time::timeout(LIST_TIMEOUT, MembersClient::new(controller.channel.clone()).list(request)).await;
            if let Ok(Ok(response)) = listed {
                return Some(response.into_inner().members);
            }
        }
        None
    }

    fn index_of(&self, address: &str) -> Option<usize> {
        self.controllers.iter().position(|controller| controller.address == address)
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        for controller in &mut self.controllers {
            if let Some(process) = controller.process.as_mut() {
                process
                    .check_running()
                    .with_context(|| format!("colex controller {} stopped", controller.address))?;
            }
        }
        Ok(())
    }
}

/// Size of the file that every spec carries, set once from `COLEX_BENCH_FILE_BYTES`; unset
/// means no file.
pub static SPEC_FILE_BYTES: OnceLock<usize> = OnceLock::new();
/// Path inside the silo of the file that [`SPEC_FILE_BYTES`] adds.
const SPEC_FILE_PATH: &str = "/data/payload";
const SPEC_FILE_MODE: u32 = 0o644;

/// Returns the one-silo spec the benchmark stores under `name`: busybox's `sleep`, no
/// resources, so every fake host can take it, and a file of [`SPEC_FILE_BYTES`] when set.
pub fn silo_spec(name: String) -> proto::SiloSpec {
    let file_bytes = SPEC_FILE_BYTES.get().copied().unwrap_or(0);
    let files = if file_bytes == 0 {
        Vec::new()
    } else {
        vec![proto::FileEntry {
            silo_path: SPEC_FILE_PATH.to_owned(),
            content: vec![b'x'; file_bytes],
            mode: SPEC_FILE_MODE,
            ..proto::FileEntry::default()
        }]
    };
    proto::SiloSpec {
        name,
        binary: Some(proto::Binary {
            path: "/bin/sleep".to_owned(),
            args: vec!["1000".to_owned()],
            env: Vec::new(),
        }),
        files,
        ..proto::SiloSpec::default()
    }
}

/// Sends one `Up` of the one-silo spec `name`.
pub async fn up(client: &mut ClientClient<Channel>, name: String) -> Result<(), tonic::Status> {
    let request = proto::UpRequest {
        silos: vec![silo_spec(name)],
    };
    client.up(request).await.map(|_| ())
}

fn client(channel: Channel) -> ClientClient<Channel> {
    ClientClient::new(channel)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES)
}

fn endpoint(address: &str) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("invalid controller address {address}"))?;
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
}

fn lazy_channel(address: &str) -> anyhow::Result<Channel> {
    Ok(endpoint(address)?.connect_lazy())
}
