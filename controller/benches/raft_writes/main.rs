//! Write latency, write throughput and leader failover of a 3-controller colex cluster beside
//! a 3-member etcd cluster, both on loopback, in the same run:
//! `cargo bench -p colex-controller --bench raft_writes`. Needs `etcd` from the Debian package
//! `etcd-server`; root is not needed.
//!
//! colex: the real `colex-controller` binary of this build, one controller started with
//! `--bootstrap` and two with `--join`. Three fake hosts hold agent sessions (Hello, then a
//! heartbeat every second) so that `Up` can place silos. Each write is one `Up` of a new
//! one-silo spec, which the leader places on a host and commits through Raft.
//!
//! etcd: three members started together with etcd's default timing. Each write is one put of a
//! new key whose value is the bytes of the same one-silo spec.
//!
//! Sequential and saturated writes go to the leader on both sides. The sequential writes run
//! twice: first all of colex's and then all of etcd's, then interleaved, one write to each
//! side in turn, so both see the same phases of the disk's sync latency. After the sequential writes
//! the benchmark also times requests that write nothing: an `Up` of an unchanged silo and a
//! `Status` on colex, and etcd's `Status`, as the part of a write that is not Raft. Each failover round sends
//! SIGKILL to the leader, then probe writes through the survivors until one succeeds. The
//! killed member is restarted, and the next round waits until it has caught up.
//!
//! Environment: `COLEX_BENCH_WRITES` sets the number of timed sequential writes of each side in
//! each of the two runs (default 500), `COLEX_BENCH_FAILOVERS` the number of failover rounds of
//! each side (default 20). `COLEX_BENCH_FILE_BYTES` adds a file of that many bytes to every spec, and so
//! to every etcd value (default none). etcd rejects requests over 1.5 MiB by default.

mod colex;
mod etcd;
mod etcd_wire;
mod fake_hosts;
mod latency;
mod machine;
mod process;
mod workload;

use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use colex::ColexCluster;
use etcd::EtcdCluster;
use fake_hosts::FakeHosts;
use latency::{millis, Summary};
use machine::{load_average, print_machine};
use workload::{Saturation, Writer};

/// Default number of timed sequential writes of each side.
const DEFAULT_WRITES: usize = 500;
/// Untimed sequential writes before the timed ones, so connections and caches are warm.
const WARMUP_WRITES: usize = 20;
/// Blocks per side of the sequential writes, so both sides see the same phases of the disk.
const SEQUENTIAL_BLOCKS: usize = 4;
/// Concurrent clients of the saturated run, each with a connection of its own.
const CLIENTS: usize = 64;
/// Length of the saturated run of each side.
const SATURATION_DURATION: Duration = Duration::from_secs(5);
/// Requests of each kind in the round trips without a write.
const ROUND_TRIPS: usize = 300;
/// Default number of failover rounds of each side.
const DEFAULT_FAILOVERS: usize = 20;
/// colex's sequential p50 may be at most this multiple of etcd's.
const TARGET_LATENCY_RATIO: f64 = 1.0;
/// colex's failover median may be at most this long.
const TARGET_FAILOVER: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("raft_writes failed: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // On SIGINT or SIGTERM the `run` future is dropped, and with it the clusters, whose
    // guards kill every process the benchmark started and remove their folders.
    let interruptible = async {
        tokio::select! {
            result = run() => result,
            signal = termination_signal() => Err(anyhow::anyhow!("stopped by {signal}")),
        }
    };
    match runtime.block_on(interruptible) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("raft_writes failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let writes = count_from_env("COLEX_BENCH_WRITES", DEFAULT_WRITES)?;
    let failover_rounds = count_from_env("COLEX_BENCH_FAILOVERS", DEFAULT_FAILOVERS)?;
    if std::env::var_os("COLEX_BENCH_FILE_BYTES").is_some() {
        let file_bytes = count_from_env("COLEX_BENCH_FILE_BYTES", 0)?;
        // Set once here, before any spec is built.
        let _ = colex::SPEC_FILE_BYTES.set(file_bytes);
    }
    let etcd_version = EtcdCluster::version()?;
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_colex-controller"));

    print_machine();
    println!("colex: {} ({} build)", binary.display(), build_profile());
    println!("reference: {etcd_version}, default timing (heartbeat 100 ms, election timeout 1000 ms)");
    if let Some(file_bytes) = colex::SPEC_FILE_BYTES.get() {
        println!("every spec and etcd value carries a file of {file_bytes} bytes");
    }
    println!("load average before: {}", load_average());
    let started = Instant::now();

    let unique = random_hex();
    let mut colex = ColexCluster::start(binary).await.context("failed to start the colex cluster")?;
    let hosts = FakeHosts::start(&format!("cx{unique}"), colex.addresses());
    let mut etcd = match EtcdCluster::start(format!("cx-bench-{unique}")).await {
        Ok(etcd) => etcd,
        Err(error) => {
            eprintln!("{}", colex.log_tails());
            return Err(error.context("failed to start the etcd cluster"));
        }
    };

    let measured = measure(&mut colex, &hosts, &mut etcd, writes, failover_rounds).await;
    if measured.is_err() {
        eprintln!("{}", colex.log_tails());
        eprintln!("{}", etcd.log_tails());
    }
    measured?;

    println!();
    println!(
        "load average after: {}; wall time {:.1} s",
        load_average(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn measure(
    colex: &mut ColexCluster,
    hosts: &FakeHosts,
    etcd: &mut EtcdCluster,
    writes: usize,
    failover_rounds: usize,
) -> anyhow::Result<()> {
    let colex_keys = Arc::new(AtomicU64::new(0));
    let etcd_keys = Arc::new(AtomicU64::new(0));
    let colex_leader = colex.leader_index().await?;
    let etcd_leader = etcd.leader_index().await?;
    hosts.wait_until_up(&mut colex.shared_client(colex_leader)).await?;
    // A new term in the logs later means an election, even one that kept the same leader.
    let colex_terms_before = colex.terms_logged();

    println!();
    println!(
        "sequential writes ({writes} timed per side, one client, sent to the leader; each side alone in \
         {SEQUENTIAL_BLOCKS} blocks taken in turn, each after {WARMUP_WRITES} untimed):"
    );
    let mut colex_writer = Writer::Colex(colex.own_client(colex_leader).await?);
    let mut etcd_writer = Writer::Etcd(etcd.own_client(etcd_leader).await?);
    let [colex_latencies, etcd_latencies] = workload::sequential_blocks(
        [&mut colex_writer, &mut etcd_writer],
        [&colex_keys, &etcd_keys],
        WARMUP_WRITES,
        writes,
        SEQUENTIAL_BLOCKS,
    )
    .await?;
    print_latency_comparison(&colex_latencies, &etcd_latencies)?;
    // The first and the last 100 writes: a write must not get slower as silos accumulate.
    let tail = writes.min(100);
    println!(
        "  first and last {tail} writes, p50: colex {} and {}, etcd {} and {}",
        p50_of(&colex_latencies[..tail])?,
        p50_of(&colex_latencies[colex_latencies.len() - tail..])?,
        p50_of(&etcd_latencies[..tail])?,
        p50_of(&etcd_latencies[etcd_latencies.len() - tail..])?,
    );

    // The disk's sync latency changes in phases of a fraction of a second to minutes on the
    // virtual machines this runs on, so even the blocks above can land in different phases.
    // Here the two sides take turns, write by write, and see the same phases.
    println!("interleaved writes ({writes} timed per side after {WARMUP_WRITES} untimed, one write to each side in turn):");
    let mut colex_writer = Writer::Colex(colex.own_client(colex_leader).await?);
    let mut etcd_writer = Writer::Etcd(etcd.own_client(etcd_leader).await?);
    let [colex_turns, etcd_turns] = workload::interleaved(
        [&mut colex_writer, &mut etcd_writer],
        [&colex_keys, &etcd_keys],
        WARMUP_WRITES,
        writes,
    )
    .await?;
    print_latency_comparison(&colex_turns, &etcd_turns)?;

    let round_trips = workload::round_trips(colex, colex_leader, etcd, etcd_leader, ROUND_TRIPS).await?;
    println!(
        "  round trips without a write ({ROUND_TRIPS} each), p50: colex unchanged Up {}, colex Status with its \
         read barrier {}, etcd Status {}",
        p50_of(&round_trips.colex_unchanged_up)?,
        p50_of(&round_trips.colex_status)?,
        p50_of(&round_trips.etcd_status)?,
    );
    println!("  load average: {}", load_average());

    println!();
    println!(
        "saturated writes ({CLIENTS} clients, each on its own connection to the leader, {} s each side):",
        SATURATION_DURATION.as_secs()
    );
    let mut colex_writers = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        colex_writers.push(Writer::Colex(colex.own_client(colex_leader).await?));
    }
    let colex_saturation = workload::saturated(colex_writers, colex_keys.clone(), SATURATION_DURATION).await?;
    let mut etcd_writers = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        etcd_writers.push(Writer::Etcd(etcd.own_client(etcd_leader).await?));
    }
    let etcd_saturation = workload::saturated(etcd_writers, etcd_keys.clone(), SATURATION_DURATION).await?;
    let colex_leader_kept = colex.leader_index().await? == colex_leader && colex.terms_logged() == colex_terms_before;
    let etcd_leader_kept = etcd.leader_index().await? == etcd_leader;
    print_saturation("colex Up ", &colex_saturation);
    print_saturation("etcd put ", &etcd_saturation);
    println!(
        "  ratio colex / etcd writes per second: {:.2}",
        colex_saturation.writes_per_second() / etcd_saturation.writes_per_second()
    );
    println!(
        "  leader unchanged through both write runs: colex {}, etcd {}",
        yes_no(colex_leader_kept),
        yes_no(etcd_leader_kept)
    );
    let (stalls, max_stall_ms) = colex.stalls_logged();
    println!("  runtime stalls in the colex controllers' logs: {stalls} (max {max_stall_ms} ms)");
    println!("  load average: {}", load_average());

    println!();
    println!(
        "leader failover ({failover_rounds} rounds each side: SIGKILL of the leader until a write through a \
         survivor succeeds; probes every 50 ms, so figures overshoot by up to 50 ms plus one write):"
    );
    let colex_failovers = {
        // After each round, wait until the fake hosts have their sessions with the new leader
        // again, through a List that any controller forwards to the leader.
        let list_client = colex.shared_client(colex_leader);
        workload::failovers(colex, failover_rounds, &colex_keys, || {
            let mut client = list_client.clone();
            async move { hosts.wait_until_up(&mut client).await }
        })
        .await?
    };
    print_failover("colex", &colex_failovers);
    let etcd_failovers = workload::failovers(etcd, failover_rounds, &etcd_keys, || async { Ok(()) }).await?;
    print_failover("etcd ", &etcd_failovers);
    let colex_outages = colex_failovers.outages;
    let etcd_outages = etcd_failovers.outages;
    let colex_failover = Summary::of(&colex_outages).context("no colex failover samples")?;
    let etcd_failover = Summary::of(&etcd_outages).context("no etcd failover samples")?;
    println!(
        "  ratio colex median / etcd median: {:.2}; colex median target at most {} ms: {}",
        colex_failover.p50.as_secs_f64() / etcd_failover.p50.as_secs_f64(),
        TARGET_FAILOVER.as_millis(),
        verdict(colex_failover.p50 <= TARGET_FAILOVER)
    );
    println!("  load average: {}", load_average());
    Ok(())
}

/// Returns the median of `samples` in milliseconds, as text.
/// Prints both sides' latency summaries and the ratio of their p50s against the target.
fn print_latency_comparison(colex: &[Duration], etcd: &[Duration]) -> anyhow::Result<()> {
    let colex_summary = Summary::of(colex).context("no colex samples")?;
    let etcd_summary = Summary::of(etcd).context("no etcd samples")?;
    println!("  colex Up:  {colex_summary}");
    println!("  etcd put:  {etcd_summary}");
    let ratio = colex_summary.p50.as_secs_f64() / etcd_summary.p50.as_secs_f64();
    println!(
        "  ratio colex p50 / etcd p50: {ratio:.2} ({} / {}; target at most {TARGET_LATENCY_RATIO}: {}); p99 ratio {:.2}",
        millis(colex_summary.p50),
        millis(etcd_summary.p50),
        verdict(ratio <= TARGET_LATENCY_RATIO),
        colex_summary.p99.as_secs_f64() / etcd_summary.p99.as_secs_f64()
    );
    Ok(())
}

fn p50_of(samples: &[Duration]) -> anyhow::Result<String> {
    Ok(millis(Summary::of(samples).context("no samples")?.p50))
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

fn print_saturation(label: &str, saturation: &Saturation) {
    let latency = Summary::of(&saturation.latencies)
        .map(|summary| format!("latency p50 {}  p99 {}", millis(summary.p50), millis(summary.p99)))
        .unwrap_or_else(|| "no write succeeded".to_owned());
    println!(
        "  {label}: {:.0} writes/s ({} writes in {:.2} s, {} failed; {latency})",
        saturation.writes_per_second(),
        saturation.latencies.len(),
        saturation.elapsed.as_secs_f64(),
        saturation.failures
    );
}

fn print_failover(label: &str, failovers: &workload::Failovers) {
    match Summary::of(&failovers.outages) {
        Some(summary) => println!(
            "  {label}: median {}  p90 {}  (n {}, min {}, max {}; unplanned leader changes {})",
            millis(summary.p50),
            millis(summary.p90),
            summary.count,
            millis(summary.min),
            millis(summary.max),
            failovers.unplanned_leader_changes
        ),
        None => println!("  {label}: no rounds"),
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
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
