//! The measured workloads, run the same way against both clusters: sequential writes,
//! saturated writes from concurrent clients, and leader failovers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use colex_proto::client_client::ClientClient;
use futures::stream::{FuturesUnordered, StreamExt};
use prost::Message;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::colex::{self, ColexCluster};
use crate::etcd::EtcdCluster;
use crate::etcd_wire::EtcdClient;

/// Time one write may take. A sequential write that takes longer fails the benchmark, and a
/// saturated one counts as failed, so a cluster that stopped committing cannot stall the run.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Key prefix of etcd puts, so they are easy to tell apart from anything else.
const ETCD_KEY_PREFIX: &str = "colex-bench/";
/// Pause between two failover probe writes. The failover figures overshoot the real outage by
/// at most this much plus one write's latency.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Time one probe write may take before it counts as failed. Several probes are in flight at
/// once, so a probe stuck at a dead leader does not delay the next one.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a cluster gets to serve writes again after its leader was killed.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a killed member caught up and before the next kill, so each round starts from a
/// cluster whose members all exchange heartbeats again.
const SETTLE_PAUSE: Duration = Duration::from_secs(1);

/// A client that stores one new record per write: an `Up` of a one-silo spec in colex, a put
/// of the same spec's bytes in etcd.
#[derive(Debug, Clone)]
pub enum Writer {
    Colex(ClientClient<Channel>),
    Etcd(EtcdClient),
}

impl Writer {
    /// Stores record number `key`.
    pub async fn write(&mut self, key: u64) -> Result<(), tonic::Status> {
        let name = format!("w{key}");
        match self {
            Writer::Colex(client) => colex::up(client, name).await,
            Writer::Etcd(client) => {
                let value = colex::silo_spec(name.clone()).encode_to_vec();
                let key = format!("{ETCD_KEY_PREFIX}{name}").into_bytes();
                client.put(key, value).await.map(|_| ())
            }
        }
    }
}

/// Latencies of requests that write nothing, sent to each leader one after another.
pub struct RoundTrips {
    /// `Up` of a silo stored before with the same spec, which the leader returns as unchanged
    /// without a Raft write: the request path of a write without its log append and commit.
    pub colex_unchanged_up: Vec<Duration>,
    /// `Status` of that silo, which the leader serves after a read barrier: one heartbeat
    /// round to the followers, without a log append.
    pub colex_status: Vec<Duration>,
    /// etcd's `Status`, served by the member without Raft.
    pub etcd_status: Vec<Duration>,
}

/// Times `count` requests of each kind in [`RoundTrips`]. Silo `w5` must exist, so this runs
/// after the sequential writes.
pub async fn round_trips(
    colex: &ColexCluster,
    colex_leader: usize,
    etcd: &EtcdCluster,
    etcd_leader: usize,
    count: usize,
) -> anyhow::Result<RoundTrips> {
    let mut client = colex.own_client(colex_leader).await?;
    let mut etcd_client = etcd.own_client(etcd_leader).await?;
    let mut trips = RoundTrips {
        colex_unchanged_up: Vec::with_capacity(count),
        colex_status: Vec::with_capacity(count),
        etcd_status: Vec::with_capacity(count),
    };
    for _ in 0..count {
        let started = Instant::now();
        colex::up(&mut client, "w5".to_owned()).await.context("unchanged Up failed")?;
        trips.colex_unchanged_up.push(started.elapsed());
        let started = Instant::now();
        client
            .status(colex_proto::StatusRequest { name: "w5".to_owned() })
            .await
            .context("colex Status failed")?;
        trips.colex_status.push(started.elapsed());
        let started = Instant::now();
        etcd_client.status().await.context("etcd Status failed")?;
        trips.etcd_status.push(started.elapsed());
    }
    Ok(trips)
}

/// Writes `warmup` records untimed, then `count` records one after another, and returns the
/// latency of each timed write.
pub async fn sequential(writer: &mut Writer, keys: &AtomicU64, warmup: usize, count: usize) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(count);
    for index in 0..warmup + count {
        let key = keys.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        tokio::time::timeout(WRITE_TIMEOUT, writer.write(key))
            .await
            .with_context(|| format!("sequential write {key} timed out after {WRITE_TIMEOUT:?}"))?
            .with_context(|| format!("sequential write {key} failed"))?;
        if index >= warmup {
            latencies.push(started.elapsed());
        }
    }
    Ok(latencies)
}

/// Writes `count` records to each of `writers` one at a time, each side alone, in `blocks`
/// blocks per side that take turns: first, second, second, first, first, … Each block starts
/// with `warmup` untimed writes. The disk's sync latency changes in phases of seconds to
/// minutes, so one long run per side can land in phases that the other side does not meet. Blocks
/// in turn spread both over the same phases. Returns the latencies of each side in order.
pub async fn sequential_blocks(
    writers: [&mut Writer; 2],
    keys: [&AtomicU64; 2],
    warmup: usize,
    count: usize,
    blocks: usize,
) -> anyhow::Result<[Vec<Duration>; 2]> {
    let blocks = blocks.clamp(1, count.max(1));
    let mut latencies = [Vec::with_capacity(count), Vec::with_capacity(count)];
    for block in 0..blocks {
        // The last block also takes the remainder of the division.
        let block_len = if block + 1 == blocks { count - count / blocks * block } else { count / blocks };
        let order = if block % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let timed = sequential(&mut *writers[side], keys[side], warmup, block_len).await?;
            latencies[side].extend(timed);
        }
    }
    Ok(latencies)
}

/// Writes `warmup + count` records to each of `writers`, one write at a time, taking the two
/// in turn and swapping which goes first on every round. So both clusters see the disk and
/// the CPUs in the same state, even when its sync latency changes from second to second.
/// Returns the latencies of the last `count` writes of each.
pub async fn interleaved(
    writers: [&mut Writer; 2],
    keys: [&AtomicU64; 2],
    warmup: usize,
    count: usize,
) -> anyhow::Result<[Vec<Duration>; 2]> {
    let mut latencies = [Vec::with_capacity(count), Vec::with_capacity(count)];
    for index in 0..warmup + count {
        let order = if index % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let key = keys[side].fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            tokio::time::timeout(WRITE_TIMEOUT, writers[side].write(key))
                .await
                .with_context(|| format!("interleaved write {key} timed out after {WRITE_TIMEOUT:?}"))?
                .with_context(|| format!("interleaved write {key} failed"))?;
            if index >= warmup {
                latencies[side].push(started.elapsed());
            }
        }
    }
    Ok(latencies)
}

/// Result of [`saturated`].
#[derive(Debug)]
pub struct Saturation {
    pub latencies: Vec<Duration>,
    pub failures: usize,
    pub elapsed: Duration,
}

impl Saturation {
    pub fn writes_per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs one task per writer, each writing new records back to back, until `duration` has
/// passed; a write still running then completes and counts.
pub async fn saturated(writers: Vec<Writer>, keys: Arc<AtomicU64>, duration: Duration) -> anyhow::Result<Saturation> {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut writer| {
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0;
                while Instant::now() < deadline {
                    let key = keys.fetch_add(1, Ordering::Relaxed);
                    let write_started = Instant::now();
                    match tokio::time::timeout(WRITE_TIMEOUT, writer.write(key)).await {
                        Ok(Ok(())) => latencies.push(write_started.elapsed()),
                        Ok(Err(_)) | Err(_) => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();

    let mut saturation = Saturation {
        latencies: Vec::new(),
        failures: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, failures) = task.await.context("a writer task panicked")?;
        saturation.latencies.extend(latencies);
        saturation.failures += failures;
    }
    saturation.elapsed = started.elapsed();
    Ok(saturation)
}

/// A cluster whose leader can be killed and restarted.
pub(crate) trait Cluster {
    /// Members in the cluster.
    fn size(&self) -> usize;
    async fn leader_index(&self) -> anyhow::Result<usize>;
    fn kill(&mut self, index: usize);
    /// Starts member `index` again and waits until it caught up.
    async fn restart(&mut self, index: usize) -> anyhow::Result<()>;
    /// Returns a writer through member `index`.
    fn writer(&self, index: usize) -> Writer;
}

impl Cluster for ColexCluster {
    fn size(&self) -> usize {
        colex::CONTROLLER_COUNT
    }
    async fn leader_index(&self) -> anyhow::Result<usize> {
        ColexCluster::leader_index(self).await
    }
    fn kill(&mut self, index: usize) {
        ColexCluster::kill(self, index);
    }
    async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        ColexCluster::restart(self, index).await
    }
    fn writer(&self, index: usize) -> Writer {
        Writer::Colex(self.shared_client(index))
    }
}

impl Cluster for EtcdCluster {
    fn size(&self) -> usize {
        crate::etcd::MEMBER_COUNT
    }
    async fn leader_index(&self) -> anyhow::Result<usize> {
        EtcdCluster::leader_index(self).await
    }
    fn kill(&mut self, index: usize) {
        EtcdCluster::kill(self, index);
    }
    async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        EtcdCluster::restart(self, index).await
    }
    fn writer(&self, index: usize) -> Writer {
        Writer::Etcd(self.shared_client(index))
    }
}

/// Result of [`failovers`].
#[derive(Debug)]
pub struct Failovers {
    /// Time from each SIGKILL of the leader until a write through a survivor succeeded.
    pub outages: Vec<Duration>,
    /// Rounds that began with another leader than the one elected after the previous kill:
    /// an election that no kill caused, such as one the restarted member started.
    pub unplanned_leader_changes: usize,
}

/// Kills the leader `rounds` times and measures, for each round, the time from the SIGKILL
/// until a write through a surviving member succeeded. After each round the killed member is
/// restarted and waited for until it caught up, and then `settle` runs.
///
/// A probe write starts every [`PROBE_INTERVAL`], alternating between the survivors, without
/// waiting for the earlier ones, and the first success ends the round.
pub async fn failovers<C, Settle, SettleFuture>(
    cluster: &mut C,
    rounds: usize,
    keys: &AtomicU64,
    mut settle: Settle,
) -> anyhow::Result<Failovers>
where
    C: Cluster,
    Settle: FnMut() -> SettleFuture,
    SettleFuture: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut outages = Vec::with_capacity(rounds);
    let mut unplanned_leader_changes = 0;
    let mut elected = None;
    for round in 0..rounds {
        let leader = cluster.leader_index().await.with_context(|| format!("failover round {round}"))?;
        if elected.is_some_and(|elected| elected != leader) {
            unplanned_leader_changes += 1;
        }
        let survivors: Vec<Writer> = (0..cluster.size())
            .filter(|index| *index != leader)
            .map(|index| cluster.writer(index))
            .collect();

        cluster.kill(leader);
        let killed_at = Instant::now();
        let mut probes = FuturesUnordered::new();
        let mut next_probe = killed_at;
        let mut sent: usize = 0;
        loop {
            if Instant::now() >= next_probe {
                let mut writer = survivors[sent % survivors.len()].clone();
                let key = keys.fetch_add(1, Ordering::Relaxed);
                probes.push(async move { tokio::time::timeout(PROBE_TIMEOUT, writer.write(key)).await });
                sent += 1;
                next_probe += PROBE_INTERVAL;
            }
            let succeeded = tokio::select! {
                Some(result) = probes.next() => matches!(result, Ok(Ok(()))),
                _ = tokio::time::sleep_until(next_probe) => false,
            };
            if succeeded {
                break;
            }
            if killed_at.elapsed() > FAILOVER_TIMEOUT {
                bail!("failover round {round}: no write succeeded within {FAILOVER_TIMEOUT:?} after the leader was killed");
            }
        }
        outages.push(killed_at.elapsed());
        drop(probes);
        elected = Some(cluster.leader_index().await.with_context(|| format!("failover round {round}: new leader"))?);

        cluster
            .restart(leader)
            .await
            .with_context(|| format!("failover round {round}: restart of member {leader}"))?;
        settle().await.with_context(|| format!("failover round {round}: settling"))?;
        tokio::time::sleep(SETTLE_PAUSE).await;
    }
    Ok(Failovers {
        outages,
        unplanned_leader_changes,
    })
}
