//! Placements per second of a 3-controller colex cluster on loopback:
//! `cargo bench -p colex-controller --bench placements`. Root is not needed.
//!
//! The real `colex-controller` binary of this build runs as three processes, one started with
//! `--bootstrap` and two with `--join`. Simulated hosts open agent sessions with the leader
//! (Hello with CPUs, memory and the busybox image, then a heartbeat every second) and read
//! their `Assignments`. Several clients then send `Up` requests of one silo each to the leader
//! until every silo is stored. The run is timed from the first request to the moment the
//! simulated hosts together hold assignments for every instance, and `List` cross-checks the
//! count afterwards. Last, the leader is killed with every instance placed, and the new
//! leader's take-over is timed.
//!
//! Each instance reserves 32 MiB of memory and no CPU, so the scheduler checks capacity on
//! every placement: the default 50,000 instances on 1,000 hosts reserve 1.6 GiB of the 8 GiB
//! each simulated host declares.
//!
//! The controllers get the cluster network [`CLUSTER_CIDR`] through `COLEX_CLUSTER_CIDR`,
//! because the default 10.69.0.0/16 has a /24 for only 255 hosts.
//!
//! Environment: `COLEX_BENCH_HOSTS` (default 1000, at most 1023), `COLEX_BENCH_SILOS` (default
//! 5000), `COLEX_BENCH_COUNT` (instances per silo, default 10), `COLEX_BENCH_CLIENTS`
//! (concurrent clients, each on its own connection, default 64).

#[allow(dead_code)]
#[path = "../raft_writes/colex.rs"]
mod colex;
#[allow(dead_code)]
#[path = "../raft_writes/latency.rs"]
mod latency;
#[path = "../raft_writes/machine.rs"]
mod machine;
#[allow(dead_code)]
#[path = "../raft_writes/process.rs"]
mod process;
mod sim_hosts;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use colex_proto as proto;
use tokio::time::Instant;

use colex::ColexCluster;
use latency::Summary;
use machine::{load_average, print_machine};
use sim_hosts::SimHosts;

const DEFAULT_HOSTS: usize = 1000;
/// Cluster network of the benchmark's controllers: 1,024 subnets of /24.
const CLUSTER_CIDR: &str = "10.64.0.0/14";
const DEFAULT_SILOS: usize = 5000;
const DEFAULT_COUNT: usize = 10;
const DEFAULT_CLIENTS: usize = 64;
/// CPU share and memory each instance reserves.
const INSTANCE_CPU_PERCENT: u32 = 0;
const INSTANCE_MEMORY_BYTES: u64 = 32 << 20;
/// Placements per second the run should reach.
const TARGET_PLACEMENTS_PER_SECOND: f64 = 10_000.0;
/// Time the simulated hosts get to hold every assignment after the last `Up` returned.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Timeout of one `Up`. A request above it counts as failed.
const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the cluster gets after the leader's SIGKILL to serve writes and resync every host.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two probe writes after the SIGKILL, and the timeout of each.
const FAILOVER_PROBE_INTERVAL: Duration = Duration::from_millis(50);
const FAILOVER_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("placements failed: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT or SIGTERM the `run` future is dropped, and with it the cluster, whose guard
    // kills every controller the benchmark started and removes their folders.
    let interruptible = async {
        tokio::select! {
            result = run() => result,
            signal = termination_signal() => Err(anyhow::anyhow!("stopped by {signal}")),
        }
    };
    match runtime.block_on(interruptible) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("placements failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Knobs of one run, from the environment.
#[derive(Debug, Clone, Copy)]
struct Knobs {
    hosts: usize,
    silos: usize,
    count: usize,
    clients: usize,
}

impl Knobs {
    fn from_env() -> anyhow::Result<Knobs> {
        Ok(Knobs {
            hosts: count_from_env("COLEX_BENCH_HOSTS", DEFAULT_HOSTS)?,
            silos: count_from_env("COLEX_BENCH_SILOS", DEFAULT_SILOS)?,
            count: count_from_env("COLEX_BENCH_COUNT", DEFAULT_COUNT)?,
            clients: count_from_env("COLEX_BENCH_CLIENTS", DEFAULT_CLIENTS)?,
        })
    }

    fn instances(&self) -> usize {
        self.silos * self.count
    }
}

async fn run() -> anyhow::Result<()> {
    let knobs = Knobs::from_env()?;
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_colex-controller"));
    print_machine();
    println!("colex: {} ({} build)", binary.display(), build_profile());
    println!(
        "workload: {} hosts, {} silos of count {} ({} instances, {}% CPU and {} MiB each), {} clients",
        knobs.hosts,
        knobs.silos,
        knobs.count,
        knobs.instances(),
        INSTANCE_CPU_PERCENT,
        INSTANCE_MEMORY_BYTES >> 20,
        knobs.clients
    );
    println!("load average before: {}", load_average());
    let started = Instant::now();

    let unique = random_hex();
    // The controllers this process starts inherit its environment. No other thread of this
    // process reads or writes the environment, so setting it here races with nothing.
    std::env::set_var("COLEX_CLUSTER_CIDR", CLUSTER_CIDR);
    let mut cluster = ColexCluster::start(binary).await.context("failed to start the colex cluster")?;
    let hosts = SimHosts::start(&format!("cx{unique}"), knobs.hosts, &cluster.addresses());
    let measured = measure(&mut cluster, &hosts, knobs).await;
    if measured.is_err() {
        eprintln!("{}", cluster.log_tails());
    }
    measured?;
    println!(
        "load average after: {}; wall time {:.1} s",
        load_average(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn measure(cluster: &mut ColexCluster, hosts: &SimHosts, knobs: Knobs) -> anyhow::Result<()> {
    let leader = cluster.leader_index().await?;
    let registering = Instant::now();
    hosts.wait_until_up(&mut cluster.shared_client(leader)).await?;
    println!(
        "{} simulated hosts up after {:.1} s; load average {}",
        knobs.hosts,
        registering.elapsed().as_secs_f64(),
        load_average()
    );

    let mut clients = Vec::with_capacity(knobs.clients);
    for _ in 0..knobs.clients {
        clients.push(cluster.own_client(leader).await?);
    }
    let applied_before = cluster.leader_applied().await;
    let terms_before = cluster.terms_logged();
    let next_silo = Arc::new(AtomicUsize::new(0));
    let first_request = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| tokio::spawn(submit(client, Arc::clone(&next_silo), knobs)))
        .collect();
    let mut latencies = Vec::with_capacity(knobs.silos);
    let mut failures = Vec::new();
    for task in tasks {
        let (mut client_latencies, mut client_failures) = task.await.context("a client task panicked")?;
        latencies.append(&mut client_latencies);
        failures.append(&mut client_failures);
    }
    let acknowledged = first_request.elapsed();
    let applied_after = cluster.leader_applied().await;

    let target = i64::try_from(knobs.instances()).unwrap_or(i64::MAX);
    hosts
        .wait_for_assignments(target, Instant::now() + DELIVERY_TIMEOUT)
        .await
        .with_context(|| format!("{DELIVERY_TIMEOUT:?} after the last Up"))?;
    let delivered = first_request.elapsed();
    let assignment_bytes = hosts.received.assignment_bytes.load(Ordering::Relaxed);
    let assignment_messages = hosts.received.assignment_messages.load(Ordering::Relaxed);
    let total_bytes = hosts.received.total_bytes.load(Ordering::Relaxed);

    println!();
    println!("placements:");
    let per_second = knobs.instances() as f64 / delivered.as_secs_f64();
    println!(
        "  {} instances assigned to the simulated hosts {:.2} s after the first Up: {per_second:.0} placements/s \
         (target at least {TARGET_PLACEMENTS_PER_SECOND:.0}: {})",
        knobs.instances(),
        delivered.as_secs_f64(),
        verdict(per_second >= TARGET_PLACEMENTS_PER_SECOND)
    );
    println!(
        "  every Up acknowledged after {:.2} s ({:.0} instances/s acknowledged)",
        acknowledged.as_secs_f64(),
        knobs.instances() as f64 / acknowledged.as_secs_f64()
    );
    match Summary::of(&latencies) {
        Some(summary) => println!("  Up latency: {summary}"),
        None => println!("  Up latency: no request succeeded"),
    }
    println!("  failed Up requests: {}", failures.len());
    if let (Some(before), Some(after)) = (applied_before, applied_after) {
        let entries = after.saturating_sub(before);
        println!(
            "  Raft entries applied meanwhile: {entries} ({:.1} silos per entry at most; blank and other entries count too)",
            knobs.silos as f64 / entries.max(1) as f64
        );
    }
    for failure in failures.iter().take(5) {
        println!("    {failure}");
    }
    println!(
        "  sent to agents: {assignment_messages} Assignments and AssignmentChanges messages, {:.1} MB ({:.0} bytes per instance); \
         {:.1} MB of messages in all",
        assignment_bytes as f64 / 1e6,
        assignment_bytes as f64 / knobs.instances() as f64,
        total_bytes as f64 / 1e6
    );

    let placed_before = cross_check(cluster, leader, knobs).await?;
    let new_terms = cluster.terms_logged().difference(&terms_before).count();
    println!("  leader elections during the run: {new_terms}");
    let (stalls, max_stall_ms) = cluster.stalls_logged();
    println!("  runtime stalls in the controllers' logs: {stalls} (max {max_stall_ms} ms)");
    println!("  load average: {}", load_average());

    failover(cluster, hosts, leader, &placed_before).await?;
    println!("  load average: {}", load_average());
    Ok(())
}

/// Sends one `Up` per silo, taking silo numbers from `next_silo` until all are sent, and
/// returns the latencies of the successful requests and the errors of the others.
async fn submit(
    mut client: proto::client_client::ClientClient<tonic::transport::Channel>,
    next_silo: Arc<AtomicUsize>,
    knobs: Knobs,
) -> (Vec<Duration>, Vec<String>) {
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    loop {
        let silo = next_silo.fetch_add(1, Ordering::Relaxed);
        if silo >= knobs.silos {
            return (latencies, failures);
        }
        let request = proto::UpRequest {
            silos: vec![silo_spec(silo, knobs.count)],
        };
        let sent = Instant::now();
        match tokio::time::timeout(UP_TIMEOUT, client.up(request)).await {
            Ok(Ok(_)) => latencies.push(sent.elapsed()),
            Ok(Err(status)) => failures.push(format!("silo {silo}: {status}")),
            Err(_) => failures.push(format!("silo {silo}: no response within {UP_TIMEOUT:?}")),
        }
    }
}

/// Returns the spec of silo number `silo`: busybox's `sleep` with `count` instances.
fn silo_spec(silo: usize, count: usize) -> proto::SiloSpec {
    proto::SiloSpec {
        name: format!("bench{silo:05}"),
        count: Some(u32::try_from(count).unwrap_or(u32::MAX)),
        binary: Some(proto::Binary {
            path: "/bin/sleep".to_owned(),
            args: vec!["1000".to_owned()],
            env: Vec::new(),
        }),
        resources: Some(proto::Resources {
            cpu_percent: INSTANCE_CPU_PERCENT,
            memory_bytes: INSTANCE_MEMORY_BYTES,
        }),
        ..proto::SiloSpec::default()
    }
}

/// Lists the silos through the leader and prints how many are placed, pending or missing.
/// Lists every instance through the leader, prints the counts and the timings of the reads
/// that grow with the cluster, and returns each instance's host by instance id.
async fn cross_check(cluster: &ColexCluster, leader: usize, knobs: Knobs) -> anyhow::Result<HashMap<String, String>> {
    let listed = Instant::now();
    let silos = cluster
        .shared_client(leader)
        .list(proto::ListRequest {})
        .await
        .context("List after the run failed")?
        .into_inner()
        .silos;
    let placed = silos.iter().filter(|silo| !silo.host.is_empty()).count();
    let pending = silos.len() - placed;
    let hosts_used: std::collections::BTreeSet<&str> =
        silos.iter().filter(|silo| !silo.host.is_empty()).map(|silo| silo.host.as_str()).collect();
    println!(
        "  List ({:.2} s): {} instances, {placed} placed on {} hosts, {pending} pending; expected {}: {}",
        listed.elapsed().as_secs_f64(),
        silos.len(),
        hosts_used.len(),
        knobs.instances(),
        if placed == knobs.instances() && silos.len() == knobs.instances() { "match" } else { "MISMATCH" }
    );

    // The other reads whose size grows with the cluster, timed so a slow one shows here.
    let requested = Instant::now();
    let hosts = cluster
        .shared_client(leader)
        .hosts(proto::HostsRequest {})
        .await
        .context("Hosts after the run failed")?
        .into_inner()
        .hosts;
    println!("  Hosts ({:.1} ms): {} hosts", requested.elapsed().as_secs_f64() * 1e3, hosts.len());
    if let Some(silo) = silos.first() {
        let requested = Instant::now();
        let status = cluster
            .shared_client(leader)
            .status(proto::StatusRequest { name: silo.name.clone() })
            .await
            .context("Status after the run failed")?
            .into_inner();
        println!(
            "  Status of {} ({:.1} ms): {} instances",
            silo.name,
            requested.elapsed().as_secs_f64() * 1e3,
            status.instances.len()
        );
    }
    Ok(silos.into_iter().map(|silo| (silo.id, silo.host)).collect())
}

/// Sends SIGKILL to the leader with every instance placed, and times the take-over: until a
/// write through a survivor succeeds, until every simulated host has its session with the new
/// leader, and until the hosts hold all their assignments again. Then counts the instances
/// that the new leader placed elsewhere, which should be none: it gives every host a grace
/// period of the host TTL to reconnect.
async fn failover(
    cluster: &mut ColexCluster,
    hosts: &SimHosts,
    leader: usize,
    placed_before: &HashMap<String, String>,
) -> anyhow::Result<()> {
    let terms_before = cluster.terms_logged();
    let (stalls_before, _) = cluster.stalls_logged();
    let survivors: Vec<usize> = (0..cluster.addresses().len()).filter(|index| *index != leader).collect();
    let instances_before = hosts.received.assigned.load(Ordering::Relaxed);

    cluster.kill(leader);
    let killed = Instant::now();

    // A probe write through each survivor in turn until one succeeds.
    let deadline = killed + FAILOVER_TIMEOUT;
    let mut attempt = 0_usize;
    let written_by = loop {
        let survivor = survivors[attempt % survivors.len()];
        attempt += 1;
        let mut client = cluster.shared_client(survivor);
        let probe = colex::up(&mut client, format!("failover-probe-{attempt}"));
        if let Ok(Ok(())) = tokio::time::timeout(FAILOVER_PROBE_TIMEOUT, probe).await {
            break survivor;
        }
        if Instant::now() >= deadline {
            bail!("no write succeeded within {FAILOVER_TIMEOUT:?} after the leader was killed");
        }
        tokio::time::sleep(FAILOVER_PROBE_INTERVAL).await;
    };
    let written = killed.elapsed();

    let new_leader = cluster.leader_index().await?;
    hosts.wait_until_up(&mut cluster.shared_client(new_leader)).await?;
    let sessions_back = killed.elapsed();

    // One probe write succeeded, so the hosts hold at least as many instances as before.
    hosts
        .wait_for_assignments(instances_before, deadline)
        .await
        .with_context(|| format!("within {FAILOVER_TIMEOUT:?} after the leader was killed"))?;
    let assignments_back = killed.elapsed();

    let silos = cluster
        .shared_client(new_leader)
        .list(proto::ListRequest {})
        .await
        .context("List after the failover failed")?
        .into_inner()
        .silos;
    let moved = silos
        .iter()
        .filter(|silo| placed_before.get(&silo.id).is_some_and(|host| *host != silo.host))
        .count();
    let new_terms = cluster.terms_logged().difference(&terms_before).count();
    let (stalls_after, max_stall_ms) = cluster.stalls_logged();

    println!();
    println!("leader failover with every instance placed (SIGKILL of the leader; probes every {FAILOVER_PROBE_INTERVAL:?}):");
    println!("  first write through a survivor (controller {written_by}) after {:.0} ms", written.as_secs_f64() * 1e3);
    println!(
        "  every simulated host up at the new leader after {:.2} s, their assignments complete again after {:.2} s",
        sessions_back.as_secs_f64(),
        assignments_back.as_secs_f64()
    );
    println!("  instances placed on another host meanwhile: {moved} of {}", placed_before.len());
    println!("  new terms: {new_terms} (one election expected)");
    println!(
        "  runtime stalls in the controllers' logs meanwhile: {} (max of the run {max_stall_ms} ms)",
        stalls_after.saturating_sub(stalls_before)
    );
    Ok(())
}

/// Resolves with the signal's name on SIGINT or SIGTERM.
async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};

    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

/// Returns `release` for `cargo bench` and other optimized builds, `debug` otherwise.
fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

fn count_from_env(name: &str, default: usize) -> anyhow::Result<usize> {
    let Ok(value) = std::env::var(name) else {
        return Ok(default);
    };
    let count: usize = value
        .parse()
        .with_context(|| format!("invalid {name} {value:?}: expected a count"))?;
    if count == 0 {
        bail!("invalid {name} 0: expected at least 1");
    }
    Ok(count)
}

/// Returns 8 random lowercase hex characters.
fn random_hex() -> String {
    let value = RandomState::new().hash_one((std::process::id(), Instant::now()));
    format!("{:08x}", value as u32)
}
