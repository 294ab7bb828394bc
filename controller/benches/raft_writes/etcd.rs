//! A 3-member etcd cluster on loopback with etcd's default timing (heartbeat 100 ms, election
//! timeout 1000 ms), started from the Debian package's `etcd` binary.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::etcd_wire::EtcdClient;
use crate::process::{free_port, tail, Daemon};

/// Members in the cluster.
pub const MEMBER_COUNT: usize = 3;
/// The etcd binary, from the Debian package `etcd-server`.
pub const ETCD_BINARY: &str = "etcd";
pub const INSTALL_HINT: &str = "apt-get install etcd-server";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of one status call while polling.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const LOG_TAIL_LINES: usize = 20;

#[derive(Debug)]
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    process: Option<Daemon>,
    channel: Channel,
}

/// A running etcd cluster. Dropping it kills every member and removes their folders.
#[derive(Debug)]
pub struct EtcdCluster {
    initial_cluster: String,
    token: String,
    members: Vec<Member>,
    // Declared last, so the processes are killed before their folders are removed.
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts all members at once, as a new etcd cluster needs, and waits until each of them
    /// reports the leader. `token` makes the cluster id unique to this run.
    pub async fn start(token: String) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::Builder::new()
            .prefix("colex-bench-etcd-")
            .tempdir()
            .context("failed to create the etcd members' temporary folder")?;
        let mut members = Vec::with_capacity(MEMBER_COUNT);
        for index in 0..MEMBER_COUNT {
            let client_url = format!("http://127.0.0.1:{}", free_port()?);
            members.push(Member {
                name: format!("cx-bench-{index}"),
                channel: Endpoint::from_shared(client_url.clone())
                    .with_context(|| format!("invalid etcd address {client_url}"))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy(),
                client_url,
                peer_url: format!("http://127.0.0.1:{}", free_port()?),
                data_dir: dir.path().join(format!("etcd{index}")),
                log_path: dir.path().join(format!("etcd{index}.log")),
                process: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            initial_cluster,
            token,
            members,
            _dir: dir,
        };
        for index in 0..MEMBER_COUNT {
            cluster.spawn(index)?;
        }
        for index in 0..MEMBER_COUNT {
            cluster.wait_caught_up(index).await?;
        }
        Ok(cluster)
    }

    /// Returns `etcd --version`'s first line.
    pub fn version() -> anyhow::Result<String> {
        let output = Command::new(ETCD_BINARY)
            .arg("--version")
            .output()
            .with_context(|| format!("failed to run {ETCD_BINARY}; install it with `{INSTALL_HINT}`"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text.lines().next().unwrap_or("etcd, unknown version").to_owned())
    }

    /// Returns a client of member `index` on a connection of its own.
    pub async fn own_client(&self, index: usize) -> anyhow::Result<EtcdClient> {
        let url = &self.members[index].client_url;
        let channel = Endpoint::from_shared(url.clone())
            .with_context(|| format!("invalid etcd address {url}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("failed to connect to etcd member {url}"))?;
        Ok(EtcdClient::new(channel))
    }

    /// Returns a client of member `index` on the channel shared by this benchmark.
    pub fn shared_client(&self, index: usize) -> EtcdClient {
        EtcdClient::new(self.members[index].channel.clone())
    }

    /// Returns the index of the member that a running member reports as leader.
    pub async fn leader_index(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let statuses = self.statuses().await;
            let leader = statuses.iter().flatten().map(|status| status.leader).find(|leader| *leader != 0);
            if let Some(leader) = leader {
                let index = statuses
                    .iter()
                    .position(|status| status.as_ref().and_then(|status| status.header.as_ref()).map(|header| header.member_id) == Some(leader));
                if let Some(index) = index {
                    return Ok(index);
                }
            }
            if Instant::now() >= deadline {
                bail!("no etcd member reported a running leader within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Sends SIGKILL to member `index` and reaps it.
    pub fn kill(&mut self, index: usize) {
        self.members[index].process = None;
    }

    /// Starts member `index` again on its data folder and waits until it has caught up.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.spawn(index)?;
        self.wait_caught_up(index).await
    }

    /// Returns the last log lines of every member, for a failure report.
    pub fn log_tails(&self) -> String {
        let mut text = String::new();
        for member in &self.members {
            text.push_str(&format!(
                "--- etcd {} ({}), {}:\n{}\n",
                member.name,
                member.client_url,
                member.log_path.display(),
                tail(&member.log_path, LOG_TAIL_LINES)
            ));
        }
        text
    }

    /// Starts member `index` with etcd's default timing. A member whose data folder exists
    /// resumes from it and ignores the `--initial-*` flags.
    fn spawn(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        let mut command = Command::new(ETCD_BINARY);
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg("--listen-client-urls")
            .arg(&member.client_url)
            .arg("--advertise-client-urls")
            .arg(&member.client_url)
            .arg("--listen-peer-urls")
            .arg(&member.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&member.peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn");
        member.process = Some(Daemon::spawn(command, &member.log_path)?);
        Ok(())
    }

    /// Waits until member `index` reports a leader and has committed at least the index the
    /// leader had committed when this wait began.
    async fn wait_caught_up(&mut self, index: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut target = None;
        loop {
            self.check_running()?;
            let statuses = self.statuses().await;
            let leader = statuses.iter().flatten().find(|status| {
                status.leader != 0 && status.header.as_ref().map(|header| header.member_id) == Some(status.leader)
            });
            if target.is_none() {
                target = leader.map(|status| status.raft_index);
            }
            if let (Some(Some(status)), Some(target)) = (statuses.get(index), target) {
                if status.leader != 0 && status.raft_index >= target {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("etcd member {} did not catch up within {START_TIMEOUT:?}", self.members[index].name);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the status of every member, `None` for one that is stopped or does not respond.
    async fn statuses(&self) -> Vec<Option<crate::etcd_wire::StatusResponse>> {
        let mut statuses = Vec::with_capacity(self.members.len());
        for member in &self.members {
            if member.process.is_none() {
                statuses.push(None);
                continue;
            }
            let mut client = EtcdClient::new(member.channel.clone());
            let status = tokio::time::timeout(STATUS_TIMEOUT, client.status()).await;
            statuses.push(status.ok().and_then(Result::ok));
        }
        statuses
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        for member in &mut self.members {
            if let Some(process) = member.process.as_mut() {
                process
                    .check_running()
                    .with_context(|| format!("etcd member {} stopped", member.name))?;
            }
        }
        Ok(())
    }
}
