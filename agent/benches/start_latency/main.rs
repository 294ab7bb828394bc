//! Silo start latency against `crun run`, as root:
//! `cargo bench -p colex-agent --bench start_latency`.
//!
//! colex: the time of each [`Runtime::run_silo`] call, from the start request to the return.
//! `run_silo` returns once the program was exec'd with the silo's network ready. The agent
//! configures the veth, the silo's address and its default route before it releases PID 1,
//! and then waits for PID 1's "started" report. PID 1 sends that report once `execve` of the
//! program succeeded, which it learns from a close-on-exec status pipe. Each silo runs
//! `/bin/sleep 1000` and is removed after its start, untimed. The runtime runs in a network
//! namespace this benchmark creates, so its bridge, veths and firewall rules vanish with that
//! namespace. The runtime keeps two spare helpers whose PID 1 is cloned into its namespaces
//! ahead of any job, as the agent does, so a timed start includes no process spawn and no
//! clone. The spare that replaces a used one is made after the start returns: during the idle
//! time of isolated runs, and during the next start back to back. The benchmark also prints
//! the median end of each step of colex's starts, from the runtime's step timings.
//!
//! crun: the time of each `crun run` of a copy of the same busybox root file system with the
//! same namespaces (pid, mount, UTS, IPC, network) and no network setup, program `/bin/true`,
//! from spawning crun to its exit (module `crun`).
//!
//! Both runtimes keep their runtime state on tmpfs ([`RUN_DIR_PARENT`]), as in /run on a
//! systemd host: colex its run dir with the silos' records and leases, crun its `--root`. The
//! silos' writable layers and logs and crun's bundle stay in the temp dir (`TMPDIR`).
//!
//! Both sides are measured in two pacings. Isolated runs: the host idles for
//! [`ISOLATION_PAUSE`] before each timed run, and each silo is removed before the pause.
//! Back-to-back runs: colex starts a block of silos one after another and removes them after
//! the block, and crun runs one after another. The pacing changes both sides' figures by a
//! factor of two or more on the reference machine, so only figures of the same pacing are
//! compared. Within each pacing, the runs alternate between the two sides in blocks, so a
//! change in the machine's load affects both.
//!
//! Environment: `COLEX_BENCH_RUNS` sets the number of timed runs of each side in each pacing
//! (default 200). `COLEX_BENCH_USER_NAMESPACES=off` runs both sides without a user namespace;
//! by default both map root to host uid 100000, as the agent does.

mod colex;
mod cpu;
mod crun;
mod latency;
mod steps;
mod veth;

use std::hash::{BuildHasher, RandomState};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colex_agent::runtime::Runtime;

use colex::{BenchHost, CgroupGuard, Pacing, SiloIds, StartSample};
use cpu::CpuTicks;
use crun::CrunBench;
use latency::{millis, Summary};

/// Default number of timed runs of each side in each pacing.
const DEFAULT_RUNS: usize = 200;
/// Untimed runs of each side before the timed ones of each pacing, so caches are warm.
const WARMUP_RUNS: usize = 5;
/// Number of blocks the timed runs of each side are split into, alternating between sides.
const BLOCKS: usize = 4;
/// Idle time before each isolated run. On the reference machine, crun's p50 stops growing
/// with the pause from about 30 ms on: 22 ms after 30 ms, 24 ms after 100 ms.
const ISOLATION_PAUSE: Duration = Duration::from_millis(100);
/// Parent of colex's run dir and crun's state dir: a tmpfs, as /run is on a systemd host. The
/// state dir, the silos' writable layers and crun's bundle stay in the temp dir.
const RUN_DIR_PARENT: &str = "/dev/shm";
/// colex's p50 may be at most this share of crun's p50.
const TARGET_RATIO: f64 = 0.75;
/// Tokio worker threads of the measured runtime: one per core of the 2-core reference machine,
/// and the number the agent's tests use.
const WORKER_THREADS: usize = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(crun::LOOP_ARG) {
        return crun::loop_main(&args[1..]);
    }
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("CI").as_deref() == Ok("true") {
            eprintln!("start_latency needs root, and CI=true does not allow skipping it");
            return ExitCode::FAILURE;
        }
        eprintln!("skipped start_latency: it needs root (namespaces, veths, cgroups)");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("start_latency failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything the benchmark measured.
#[derive(Debug)]
struct Report {
    pacings: Vec<Samples>,
    veth: veth::VethSamples,
}

/// The timed runs of both sides in one pacing.
#[derive(Debug)]
struct Samples {
    pacing: Pacing,
    colex: Vec<StartSample>,
    /// The runtime's step marks of each timed colex start.
    steps: Vec<String>,
    /// Each timed crun run with the machine's CPU ticks during it.
    crun: Vec<(Duration, CpuTicks)>,
}

fn run() -> anyhow::Result<()> {
    let runs = runs_from_env()?;
    let user_namespaces = user_namespaces_from_env()?;
    let tools = crun::find_tools();
    print_machine();
    match &tools {
        Ok(tools) => println!("reference: {}", crun::version(tools)),
        Err(message) => println!("reference: {message}; measuring colex only"),
    }
    println!("load average before: {}", load_average());
    println!(
        "user namespaces: {}",
        if user_namespaces { "on, both sides (root is host uid 100000)" } else { "off, both sides" }
    );
    println!(
        "{runs} timed runs of each side in each pacing, after {WARMUP_RUNS} untimed ones, in \
         {BLOCKS} alternating blocks"
    );
    println!(
        "colex: run_silo from the start request to its return; it returns once the program \
         was exec'd (PID 1 reports after execve succeeded) and after the veth, address and \
         route were configured (done before PID 1 is released)"
    );
    println!(
        "crun: `crun run` of /bin/true from spawning crun to its exit (create, start, exit, \
         delete), same root file system and namespaces, no network setup"
    );
    println!(
        "runtime state on tmpfs ({RUN_DIR_PARENT}) on both sides: colex's records and leases, \
         crun's --root; colex's writable layers and crun's bundle in {}",
        std::env::temp_dir().display()
    );

    let started = Instant::now();
    let tools = tools.ok();
    let step_log = steps::StepLog::install()?;
    let report =
        std::thread::spawn(move || measure_in_netns(runs, user_namespaces, tools, &step_log))
            .join()
            .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))??;
    for samples in &report.pacings {
        print_samples(samples)?;
    }
    print_veth(&report.veth);
    println!();
    println!(
        "load average after: {}; wall time {:.1} s",
        load_average(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn print_samples(samples: &Samples) -> anyhow::Result<()> {
    println!();
    match samples.pacing {
        Pacing::Isolated { pause } => println!(
            "isolated runs ({} idle before each timed run on both sides):",
            millis(pause)
        ),
        Pacing::BackToBack => println!(
            "back-to-back runs (colex: starts one after another, removals after each block; \
             crun: runs one after another):"
        ),
    }

    let starts: Vec<Duration> = samples.colex.iter().map(|s| s.start).collect();
    let removals: Vec<Duration> = samples.colex.iter().map(|s| s.removal).collect();
    let colex = Summary::of(&starts).context("no colex samples")?;
    println!("  colex run_silo:       {colex}");
    steps::print_medians(&samples.steps);
    if let Some(removal) = Summary::of(&removals) {
        println!("  colex removal, untimed above: {removal}");
    }

    let crun_times: Vec<Duration> = samples.crun.iter().map(|(time, _)| *time).collect();
    let Some(crun) = Summary::of(&crun_times) else {
        println!(
            "  crun: not measured; install it with `{}`",
            crun::INSTALL_HINT
        );
        return Ok(());
    };
    println!("  crun run /bin/true:   {crun}");

    let ratio = colex.p50.as_secs_f64() / crun.p50.as_secs_f64();
    let verdict = if ratio <= TARGET_RATIO {
        "met"
    } else {
        "missed"
    };
    println!(
        "  ratio colex p50 / crun p50: {ratio:.2} ({} / {}; target at most {TARGET_RATIO}: \
         {verdict})",
        millis(colex.p50),
        millis(crun.p50)
    );
    let busy = |ticks: &mut dyn Iterator<Item = CpuTicks>| {
        let mut sum = CpuTicks::default();
        ticks.for_each(|span| sum += span);
        sum.busy_percent()
            .map_or_else(|| "unknown".to_string(), |percent| format!("{percent:.0} %"))
    };
    println!(
        "  CPUs busy during the timed runs (all cores, from /proc/stat): colex {}, crun {}",
        busy(&mut samples.colex.iter().map(|sample| sample.cpu)),
        busy(&mut samples.crun.iter().map(|(_, cpu)| *cpu))
    );
    Ok(())
}

fn print_veth(samples: &veth::VethSamples) {
    println!();
    println!(
        "veth pair for a new network namespace, alone ({} back-to-back runs of each way):",
        samples.create_in_place.len()
    );
    if let Some(moved) = Summary::of(&samples.create_and_move) {
        println!("  create here, look up and move the peer: {moved}");
    }
    if let Some(in_place) = Summary::of(&samples.create_in_place) {
        println!("  create the peer in its namespace:       {in_place}");
    }
}

fn runs_from_env() -> anyhow::Result<usize> {
    let Ok(value) = std::env::var("COLEX_BENCH_RUNS") else {
        return Ok(DEFAULT_RUNS);
    };
    let runs: usize = value
        .parse()
        .with_context(|| format!("invalid COLEX_BENCH_RUNS {value:?}: expected a count"))?;
    if runs < BLOCKS {
        bail!("invalid COLEX_BENCH_RUNS {runs}: expected at least {BLOCKS}");
    }
    Ok(runs)
}

/// Reads `COLEX_BENCH_USER_NAMESPACES`: `on` (the default) or `off`.
fn user_namespaces_from_env() -> anyhow::Result<bool> {
    match std::env::var("COLEX_BENCH_USER_NAMESPACES").as_deref() {
        Err(_) | Ok("on") => Ok(true),
        Ok("off") => Ok(false),
        Ok(other) => bail!("invalid COLEX_BENCH_USER_NAMESPACES {other:?}: expected on or off"),
    }
}

/// Creates a network namespace on this thread and measures both sides in it. The namespace,
/// with the bridge and every veth and firewall rule in it, vanishes when the thread ends.
fn measure_in_netns(
    runs: usize,
    user_namespaces: bool,
    tools: Option<crun::Tools>,
    step_log: &steps::StepLog,
) -> anyhow::Result<Report> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("failed to create a network namespace")?;
    // Threads inherit the namespace of the thread that spawns them, so every worker of this
    // tokio runtime works in the new namespace.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .context("failed to build the tokio runtime")?;
    tokio.block_on(colex::set_loopback_up())?;

    let unique = random_hex();
    let host = BenchHost::new(&unique, user_namespaces)?;
    let _cgroups = CgroupGuard::for_host(&host.cfg.host_name)?;
    let (runtime, _exits) = tokio
        .block_on(Runtime::start(host.cfg.clone()))
        .context("failed to start the silo runtime")?;

    let measured = measure(&tokio, &runtime, &host, &unique, runs, tools, step_log);
    let shut_down = tokio
        .block_on(runtime.shutdown())
        .context("failed to shut the silo runtime down");
    let pacings = measured?;
    shut_down?;

    let veth = tokio.block_on(veth::measure(&unique, veth::VETH_RUNS))?;
    Ok(Report { pacings, veth })
}

fn measure(
    tokio: &tokio::runtime::Runtime,
    runtime: &Runtime,
    host: &BenchHost,
    unique: &str,
    runs: usize,
    tools: Option<crun::Tools>,
    step_log: &steps::StepLog,
) -> anyhow::Result<Vec<Samples>> {
    let id_prefix = u16::from_str_radix(&unique[..4], 16).context("invalid random prefix")?;
    let mut ids = SiloIds::new(id_prefix);
    let mut crun = match tools {
        Some(tools) => Some(CrunBench::prepare(
            tools,
            &host.busybox_image_dir(),
            format!("cx{unique}"),
            host.cfg.id_map.map(|map| crun::UserMapping {
                host_id: map.host_base,
                size: map.count,
            }),
        )?),
        None => None,
    };

    let mut all = Vec::new();
    for pacing in [
        Pacing::Isolated {
            pause: ISOLATION_PAUSE,
        },
        Pacing::BackToBack,
    ] {
        let pause = match pacing {
            Pacing::Isolated { pause } => pause,
            Pacing::BackToBack => Duration::ZERO,
        };
        tokio.block_on(colex::measure_block(runtime, &mut ids, WARMUP_RUNS, pacing))?;
        if let Some(crun) = crun.as_mut() {
            crun.run_block(WARMUP_RUNS, pause)?;
        }
        let _warmup_steps = step_log.take();

        let mut samples = Samples {
            pacing,
            colex: Vec::with_capacity(runs),
            steps: Vec::new(),
            crun: Vec::with_capacity(runs),
        };
        for block in 0..BLOCKS {
            let size = runs / BLOCKS + usize::from(block < runs % BLOCKS);
            let colex = colex::measure_block(runtime, &mut ids, size, pacing);
            samples.colex.extend(tokio.block_on(colex)?);
            if let Some(crun) = crun.as_mut() {
                samples.crun.extend(crun.run_block(size, pause)?);
            }
        }
        samples.steps = step_log.take();
        all.push(samples);
    }

    if let Some(crun) = &crun {
        let leftovers = crun.remove_leftover_cgroups();
        if !leftovers.is_empty() {
            bail!("crun left cgroups, now removed: {leftovers:?}");
        }
    }
    Ok(all)
}

/// Returns 8 random lowercase hex characters.
fn random_hex() -> String {
    let value = RandomState::new().hash_one((std::process::id(), Instant::now()));
    format!("{:08x}", value as u32)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Prints what the figures depend on: cores, memory, kernel and CPU model.
fn print_machine() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|line| line.starts_with("model name"))?;
            Some(line.split_once(':')?.1.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!(
        "machine: {cores} cores, {} MiB memory, kernel {kernel}, CPU {cpu}",
        memory_kib / 1024
    );
}
