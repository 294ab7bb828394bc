//! Benchmark of the WireGuard mesh: silo-to-silo TCP throughput and round-trip latency across
//! two lab hosts through the mesh, beside the same between the two host namespaces on the lab
//! bridge without the mesh, measured in one run.
//!
//! Run as root after `cargo build --workspace --bins`:
//! `target/debug/mesh-bench [--megabytes 200] [--round-trips 1000]`.
//! The orchestrating process builds a two-host lab and runs itself again inside network
//! namespaces (`nsenter --net=...`) as `serve` and `client`: for the mesh figures inside the
//! two silos' namespaces (`/proc/PID/ns/net`), and for the baseline inside the two host
//! namespaces.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colex_cluster_tests::mesh_tools::{up, wait_for_silo_address};
use colex_cluster_tests::{Host, Lab};

/// Port the `serve` mode listens on, in whichever namespace it runs.
const BENCH_PORT: u16 = 17900;
/// Size of each write of the throughput transfer.
const CHUNK_BYTES: usize = 64 * 1024;
/// Size of each request and reply of the latency test.
const MESSAGE_BYTES: usize = 64;
const DEFAULT_MEGABYTES: u64 = 200;
const DEFAULT_ROUND_TRIPS: usize = 1000;
/// Time the server gets to listen before the client gives up connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BYTES_PER_MEGABYTE: u64 = 1_000_000;

/// First byte a client sends: which test follows.
const MODE_THROUGHPUT: u8 = b't';
const MODE_LATENCY: u8 = b'l';

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(),
        Some("client") => {
            let address = args.get(2).context("client needs ADDRESS MEGABYTES ROUND_TRIPS")?;
            let megabytes: u64 = args.get(3).context("missing MEGABYTES")?.parse()?;
            let round_trips: usize = args.get(4).context("missing ROUND_TRIPS")?.parse()?;
            client(address, megabytes, round_trips)
        }
        _ => orchestrate(args.get(1..).unwrap_or_default()),
    }
}

/// Accepts connections forever. A throughput client sends a length and that many bytes, and
/// gets the count back; a latency client sends fixed-size messages that are echoed.
fn serve() -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", BENCH_PORT)).with_context(|| format!("cannot listen on port {BENCH_PORT}"))?;
    println!("listening");
    for stream in listener.incoming() {
        let mut stream = stream.context("accept failed")?;
        stream.set_nodelay(true)?;
        let mut mode = [0_u8; 1];
        stream.read_exact(&mut mode)?;
        match mode[0] {
            MODE_THROUGHPUT => {
                let mut length = [0_u8; 8];
                stream.read_exact(&mut length)?;
                let mut remaining = u64::from_be_bytes(length);
                let mut buffer = vec![0_u8; CHUNK_BYTES];
                while remaining > 0 {
                    let read = stream.read(&mut buffer)?;
                    if read == 0 {
                        bail!("client closed with {remaining} bytes left");
                    }
                    remaining -= read as u64;
                }
                stream.write_all(&length)?;
            }
            MODE_LATENCY => {
                let mut message = [0_u8; MESSAGE_BYTES];
                while stream.read_exact(&mut message).is_ok() {
                    stream.write_all(&message)?;
                }
            }
            other => bail!("unknown mode byte {other}"),
        }
    }
    Ok(())
}

/// Runs both tests against `address` and prints `throughput_mb_s=X p50_us=Y p99_us=Z`.
fn client(address: &str, megabytes: u64, round_trips: usize) -> anyhow::Result<()> {
    let connect = || -> anyhow::Result<TcpStream> {
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        loop {
            match TcpStream::connect((address, BENCH_PORT)) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                Err(error) => return Err(error).with_context(|| format!("cannot connect to {address}:{BENCH_PORT}")),
            }
        }
    };

    let total = megabytes * BYTES_PER_MEGABYTE;
    let mut stream = connect()?;
    let chunk = vec![0x5a_u8; CHUNK_BYTES];
    let started = Instant::now();
    stream.write_all(&[MODE_THROUGHPUT])?;
    stream.write_all(&total.to_be_bytes())?;
    let mut sent = 0_u64;
    while sent < total {
        let size = usize::try_from((total - sent).min(CHUNK_BYTES as u64))?;
        stream.write_all(&chunk[..size])?;
        sent += size as u64;
    }
    let mut echoed = [0_u8; 8];
    stream.read_exact(&mut echoed)?;
    let elapsed = started.elapsed();
    if u64::from_be_bytes(echoed) != total {
        bail!("server counted {} bytes, sent {total}", u64::from_be_bytes(echoed));
    }
    let throughput = total as f64 / BYTES_PER_MEGABYTE as f64 / elapsed.as_secs_f64();

    let mut stream = connect()?;
    stream.write_all(&[MODE_LATENCY])?;
    let mut message = [0x5a_u8; MESSAGE_BYTES];
    let mut samples = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let started = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut message)?;
        samples.push(started.elapsed());
    }
    samples.sort();
    let percentile = |fraction: f64| {
        let index = ((samples.len() as f64 * fraction).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[index].as_micros()
    };
    println!("throughput_mb_s={throughput:.1} p50_us={} p99_us={}", percentile(0.50), percentile(0.99));
    Ok(())
}

/// One side's figures, parsed from a client's output line.
#[derive(Debug, Clone, Copy)]
struct Figures {
    throughput_mb_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn parse_figures(line: &str) -> anyhow::Result<Figures> {
    let value = |key: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix(&format!("{key}=")))
            .with_context(|| format!("no {key} in {line:?}"))?
            .parse::<f64>()
            .with_context(|| format!("invalid {key} in {line:?}"))
    };
    Ok(Figures {
        throughput_mb_s: value("throughput_mb_s")?,
        p50_us: value("p50_us")?,
        p99_us: value("p99_us")?,
    })
}

/// Returns a silo file with a silo that only sleeps, whose network namespace the benchmark
/// enters.
fn idle_silo(name: &str, host: &str) -> String {
    format!(
        r#"
Silo "{name}" {{
  name = "{name}"

  binary {{
    path = "/bin/sh"
    args = ["-c", "while true; do sleep 60; done"]
  }}

  placement {{
    hosts = ["{host}"]
  }}
}}
"#
    )
}

/// Returns a PID of a process of a silo on `host`: the first PID in a `cgroup.procs` below the
/// host's silo cgroup whose network namespace is not the host's.
fn silo_pid(lab: &Lab, host: &Host) -> anyhow::Result<u32> {
    let root = lab.agent_cgroup(host).context("no cgroup2 mount")?;
    let host_inode = std::fs::metadata(format!("/run/netns/{}", host.netns)).map(|meta| meta.ino())?;
    let mut folders = vec![root];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).with_context(|| format!("cannot read {}", folder.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
            }
        }
        let procs = std::fs::read_to_string(folder.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|line| line.trim().parse::<u32>().ok()) {
            let netns = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|meta| meta.ino());
            if netns.is_ok_and(|inode| inode != host_inode) {
                return Ok(pid);
            }
        }
    }
    bail!("no silo process found on {}", host.name)
}

/// Starts `serve` in the network namespace at `netns_path` and waits until it listens.
fn start_server(exe: &Path, netns_path: &str) -> anyhow::Result<Child> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={netns_path}"))
        .arg("--")
        .arg(exe)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the bench server")?;
    let mut stdout = child.stdout.take().context("no server stdout")?;
    let mut first = [0_u8; 9];
    stdout.read_exact(&mut first).context("the bench server did not start listening")?;
    Ok(child)
}

/// Runs `client` in the network namespace at `netns_path` against `address`.
fn run_client(exe: &Path, netns_path: &str, address: &str, megabytes: u64, round_trips: usize) -> anyhow::Result<Figures> {
    let output = Command::new("nsenter")
        .arg(format!("--net={netns_path}"))
        .arg("--")
        .arg(exe)
        .args(["client", address, &megabytes.to_string(), &round_trips.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("cannot run the bench client")?;
    if !output.status.success() {
        bail!("bench client failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    parse_figures(String::from_utf8_lossy(&output.stdout).trim())
}

/// Ends a server this process started, by its PID.
fn stop_server(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn orchestrate(args: &[String]) -> anyhow::Result<()> {
    let mut megabytes = DEFAULT_MEGABYTES;
    let mut round_trips = DEFAULT_ROUND_TRIPS;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--megabytes" => megabytes = rest.next().context("--megabytes needs a number")?.parse()?,
            "--round-trips" => round_trips = rest.next().context("--round-trips needs a number")?.parse()?,
            other => bail!("unknown argument {other}; usage: mesh-bench [--megabytes N] [--round-trips N]"),
        }
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("mesh-bench needs root for network namespaces, cgroups and mounts");
    }
    let exe: PathBuf = std::env::current_exe().context("cannot find this executable")?;
    if std::env::var_os("COLEX_BIN_DIR").is_none() {
        // The colex binaries are built next to this one. Set before any thread starts.
        std::env::set_var("COLEX_BIN_DIR", exe.parent().context("executable has no folder")?);
    }

    let lab = Lab::start(2).context("lab starts")?;
    let (host_1, host_2) = (lab.hosts[0].clone(), lab.hosts[1].clone());
    up(&lab, "bench-a.hcl", &idle_silo("bench-a", &host_1.name))?;
    up(&lab, "bench-b.hcl", &idle_silo("bench-b", &host_2.name))?;
    wait_for_silo_address(&lab, "bench-a")?;
    let silo_b_address = wait_for_silo_address(&lab, "bench-b")?;
    let silo_a_netns = format!("/proc/{}/ns/net", silo_pid(&lab, &host_1)?);
    let silo_b_netns = format!("/proc/{}/ns/net", silo_pid(&lab, &host_2)?);
    let host_1_netns = format!("/run/netns/{}", host_1.netns);
    let host_2_netns = format!("/run/netns/{}", host_2.netns);

    // Baseline first, then the mesh, each with its own server.
    let server = start_server(&exe, &host_2_netns)?;
    let direct = run_client(&exe, &host_1_netns, &host_2.address.to_string(), megabytes, round_trips);
    stop_server(server);
    let direct = direct?;
    let server = start_server(&exe, &silo_b_netns)?;
    let mesh = run_client(&exe, &silo_a_netns, &silo_b_address, megabytes, round_trips);
    stop_server(server);
    let mesh = mesh?;

    println!("mesh-bench: {megabytes} MB one way, {round_trips} round trips of {MESSAGE_BYTES} bytes, TCP");
    println!("{:<34} {:>12} {:>10} {:>10}", "path", "MB/s", "p50 us", "p99 us");
    println!(
        "{:<34} {:>12.1} {:>10} {:>10}",
        "host to host, lab bridge", direct.throughput_mb_s, direct.p50_us, direct.p99_us
    );
    println!(
        "{:<34} {:>12.1} {:>10} {:>10}",
        "silo to silo, WireGuard mesh", mesh.throughput_mb_s, mesh.p50_us, mesh.p99_us
    );
    println!(
        "mesh / direct: throughput {:.3}, p50 latency {:.2}, p99 latency {:.2}",
        mesh.throughput_mb_s / direct.throughput_mb_s,
        mesh.p50_us / direct.p50_us,
        mesh.p99_us / direct.p99_us
    );

    for name in ["bench-a", "bench-b"] {
        let down = lab.cli(&["down", "--name", name])?;
        if !down.success() {
            eprintln!("down {name} failed: {}", down.stderr);
        }
    }
    drop(lab);
    Ok(())
}
