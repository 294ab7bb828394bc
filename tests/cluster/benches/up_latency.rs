//! End to end: `colex-cli up` of a one-silo file until it reports the silo running, on a lab
//! of three controllers and three agent hosts, beside `podman run --rm --network bridge` of the
//! same busybox root filesystem, in the same run.
//!
//! Each colex run starts `colex-cli up` in the first controller's namespace and times the
//! process from spawn to exit. `up` exits once the controller's watch stream shows the silo UP.
//! The silo is removed after each run, outside the timing. Each podman run times
//! `podman run --rm` of `/bin/true` from spawn to exit. Runs alternate between the two.
//!
//! Podman's `bridge` network lives in the root namespace: the container runs `/bin/true` and
//! sends no traffic. netavark leaves its iptables chains behind after the last container, and
//! podman its `libpod_parent` cgroups. The benchmark deletes those it finds that were absent
//! before, sets IPv4 forwarding back to its value before (netavark turns it on), and removes
//! the image it imported. Needs root, podman and runc.
//!
//! ```sh
//! CARGO_TARGET_DIR=... cargo build --workspace --bins
//! COLEX_BENCH_RUNS=20 cargo bench -p colex-cluster-tests --bench up_latency
//! ```

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colex_cluster_tests::Lab;

/// Default number of timed runs per side.
const DEFAULT_RUNS: usize = 20;
/// Untimed runs per side before the timed ones.
const WARMUP_RUNS: usize = 3;
/// The speed target: colex's p50 at most this share of podman's.
const TARGET_RATIO: f64 = 0.1;
/// Options podman 4.3.1 needs on this machine. Its default nofile and nproc limits fail here,
/// and crun 1.8 rejects the machine's hybrid cgroup layout, so runc runs the container.
const PODMAN_RUN_OPTIONS: [&str; 9] = [
    "run",
    "--rm",
    "--network",
    "bridge",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
    "--runtime=runc",
];

/// iptables rules netavark 1.4 adds on its first container and leaves after the last one:
/// table, then the arguments of `-A` that `-D` takes back.
const NETAVARK_JUMPS: [(&str, &str); 4] = [
    ("filter", "FORWARD -m comment --comment netavark_firewall_plugin_rules -j NETAVARK_FORWARD"),
    ("nat", "PREROUTING -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT"),
    ("nat", "OUTPUT -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT"),
    ("nat", "POSTROUTING -j NETAVARK-HOSTPORT-MASQ"),
];
/// The root namespace's IPv4 forwarding switch, which netavark turns on.
const IP_FORWARD_PATH: &str = "/proc/sys/net/ipv4/ip_forward";
/// Chains netavark 1.4 creates: table and name.
const NETAVARK_CHAINS: [(&str, &str); 4] = [
    ("filter", "NETAVARK_FORWARD"),
    ("nat", "NETAVARK-HOSTPORT-DNAT"),
    ("nat", "NETAVARK-HOSTPORT-MASQ"),
    ("nat", "NETAVARK-HOSTPORT-SETMARK"),
];

fn silo_file(name: &str) -> String {
    format!(
        r#"
Silo "s" {{
  name = "{name}"

  binary {{
    path = "/bin/sleep"
    args = ["1000000"]
  }}
}}
"#
    )
}

/// One timed `colex-cli up`: wall time of the process, and the time the CLI printed on its
/// `running` line (from the `Up` request to the watch message that showed the silo UP).
struct ColexRun {
    wall: Duration,
    reported: Option<Duration>,
}

fn main() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping up_latency: needs root for network namespaces, cgroups and mounts");
        return Ok(());
    }
    let runs = common::runs(DEFAULT_RUNS);
    let lab = Lab::start_with_controllers(3, 3).context("lab starts")?;

    // Untimed runs first, so one-time costs such as the first load of the CLI binary stay out
    // of the timings.
    let mut serial = 0;
    for _ in 0..WARMUP_RUNS {
        serial += 1;
        colex_up(&lab, serial)?;
    }
    let image = format!("cx{}-busybox", lab.run_id);
    let podman = match import_image(&lab, &image) {
        Ok(()) => true,
        Err(error) => {
            eprintln!("podman side skipped: {error:#}");
            false
        }
    };
    let iptables_before = iptables_save()?;
    let cgroups_before = podman_cgroups();
    // netavark turns IPv4 forwarding on in the root namespace for its bridge, and leaves it on.
    let forwarding_before = std::fs::read_to_string(IP_FORWARD_PATH).with_context(|| format!("failed to read {IP_FORWARD_PATH}"))?;
    let result = measure(&lab, runs, podman.then_some(image.as_str()), &mut serial);

    if podman {
        let removed = Command::new("podman").args(["rmi", "--force", &image]).output();
        if !removed.is_ok_and(|output| output.status.success()) {
            eprintln!("podman rmi {image} failed; remove it by hand");
        }
        remove_netavark_rules(&iptables_before);
        remove_podman_cgroups(&cgroups_before);
        if let Err(error) = std::fs::write(IP_FORWARD_PATH, forwarding_before.trim()) {
            eprintln!("restoring {IP_FORWARD_PATH} to {} failed: {error}; set it by hand", forwarding_before.trim());
        }
    }
    result
}

/// Returns the cgroup folders podman's cgroupfs manager uses as the parent of its containers
/// and conmon, `libpod_parent` in each hierarchy, children first.
fn podman_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    for hierarchy in hierarchies.flatten() {
        let parent = hierarchy.path().join("libpod_parent");
        if !parent.is_dir() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(&parent) {
            found.extend(
                children
                    .flatten()
                    .filter(|child| child.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|child| child.path()),
            );
        }
        found.push(parent);
    }
    found
}

/// Removes the podman cgroup folders that did not exist before the benchmark. `rmdir` removes
/// only cgroups without processes, so a cgroup still in use stays and is reported.
fn remove_podman_cgroups(before: &[PathBuf]) {
    for cgroup in podman_cgroups() {
        if before.contains(&cgroup) {
            continue;
        }
        if let Err(error) = std::fs::remove_dir(&cgroup) {
            eprintln!("cannot remove podman's cgroup {}: {error}", cgroup.display());
        }
    }
}

/// Runs the warmups and the timed runs and prints the figures.
fn measure(lab: &Lab, runs: usize, image: Option<&str>, serial: &mut usize) -> anyhow::Result<()> {
    if let Some(image) = image {
        for _ in 0..WARMUP_RUNS {
            podman_run(image)?;
        }
    }
    let mut colex = Vec::with_capacity(runs);
    let mut podman = Vec::with_capacity(runs);
    for run in 1..=runs {
        *serial += 1;
        let timed = colex_up(lab, *serial)?;
        let podman_wall = match image {
            Some(image) => Some(podman_run(image)?),
            None => None,
        };
        println!(
            "run {run}/{runs}: colex-cli up {:.1} ms (its running line: {}), podman run {}",
            common::millis(timed.wall),
            timed
                .reported
                .map_or_else(|| "-".to_owned(), |reported| format!("{} ms", reported.as_millis())),
            podman_wall.map_or_else(|| "-".to_owned(), |wall| format!("{:.1} ms", common::millis(wall)))
        );
        colex.push(timed);
        podman.extend(podman_wall);
    }

    let walls: Vec<Duration> = colex.iter().map(|run| run.wall).collect();
    let reported: Vec<Duration> = colex.iter().filter_map(|run| run.reported).collect();
    println!();
    println!("end to end, {runs} runs each, 3 controllers, 3 hosts:");
    print_line("colex-cli up, process wall time", &walls);
    print_line("colex-cli up, Up request to running", &reported);
    if !podman.is_empty() {
        print_line("podman run --rm --network bridge true", &podman);
        let ratio = common::millis(common::percentile(&walls, 50.0)) / common::millis(common::percentile(&podman, 50.0));
        println!(
            "  ratio of p50s colex/podman: {ratio:.3} (target at most {TARGET_RATIO}: {})",
            if ratio <= TARGET_RATIO { "met" } else { "not met" }
        );
    }
    Ok(())
}

fn print_line(label: &str, samples: &[Duration]) {
    println!(
        "  {label}: p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms",
        common::millis(common::percentile(samples, 50.0)),
        common::millis(common::percentile(samples, 99.0)),
        common::millis(samples.iter().min().copied().unwrap_or_default()),
        common::millis(samples.iter().max().copied().unwrap_or_default()),
    );
}

/// Times one `colex-cli up` of a new one-silo file, then removes the silo untimed.
fn colex_up(lab: &Lab, serial: usize) -> anyhow::Result<ColexRun> {
    let name = format!("e2e-{serial}");
    let file = lab.write_file(&format!("{name}.hcl"), &silo_file(&name))?;
    let cli = lab.bins.join("colex-cli");
    let serv = lab.controller_addresses();

    let started = Instant::now();
    let output = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.controller_host.netns))
        .arg("--")
        .arg(&cli)
        .args(["--serv", &serv, "up"])
        .arg(&file)
        .envs(lab.cli_env())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", cli.display()))?;
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("up {name} failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    }

    let down = lab.cli(&["down", "--name", &name])?;
    if !down.success() {
        bail!("down {name} failed: {}", down.stderr);
    }
    Ok(ColexRun {
        wall,
        reported: reported_running_time(&stdout, &name),
    })
}

/// Returns the time on the CLI's `NAME: running on HOST at ADDRESS (N ms)` line.
fn reported_running_time(stdout: &str, name: &str) -> Option<Duration> {
    let line = stdout.lines().find(|line| line.starts_with(&format!("{name}: running on ")))?;
    let inside = line.rsplit_once('(')?.1.strip_suffix(" ms)")?;
    inside.parse().ok().map(Duration::from_millis)
}

/// Times one `podman run --rm` of `/bin/true` in `image`.
fn podman_run(image: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new("podman")
        .args(PODMAN_RUN_OPTIONS)
        .args([image, "/bin/true"])
        .stdin(Stdio::null())
        .output()
        .context("cannot start podman; install it with `apt-get install podman runc`")?;
    let wall = started.elapsed();
    if !output.status.success() {
        bail!("podman run failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(wall)
}

/// Imports the busybox image dir the first lab agent built as podman image `image`.
fn import_image(lab: &Lab, image: &str) -> anyhow::Result<()> {
    let tree = find_busybox_tree(&lab.hosts[0].state_dir)
        .with_context(|| format!("no busybox image dir under {}", lab.hosts[0].state_dir.display()))?;
    let tarball = lab.dir.path().join("busybox.tar");
    // The tree of a user-namespace image belongs to the namespace's root, which is a high host
    // uid. In the tarball it belongs to root, as in a plain image.
    let tar = Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner"])
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .context("cannot run tar")?;
    if !tar.status.success() {
        bail!("tar of {} failed: {}", tree.display(), String::from_utf8_lossy(&tar.stderr).trim());
    }
    let import = Command::new("podman")
        .args(["import", "--quiet"])
        .arg(&tarball)
        .arg(image)
        .output()
        .context("cannot start podman; install it with `apt-get install podman runc`")?;
    if !import.status.success() {
        bail!("podman import failed: {}", String::from_utf8_lossy(&import.stderr).trim());
    }
    Ok(())
}

/// Returns the agent's built-in busybox image dir: a folder named `busybox`, or `busybox+BASE`
/// for silos in a user namespace, whose `bin` contains the busybox binary.
fn find_busybox_tree(state_dir: &Path) -> Option<PathBuf> {
    let mut pending = vec![(state_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                continue;
            }
            let named_busybox = entry.file_name().to_string_lossy().starts_with("busybox");
            if named_busybox && path.join("bin/busybox").is_file() {
                return Some(path);
            }
            if depth < 3 {
                pending.push((path, depth + 1));
            }
        }
    }
    None
}

fn iptables_save() -> anyhow::Result<String> {
    let output = Command::new("iptables-save").output().context("cannot run iptables-save")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Deletes the netavark jumps and chains that exist now but did not before the benchmark.
fn remove_netavark_rules(before: &str) {
    for (table, rule) in NETAVARK_JUMPS {
        let args: Vec<String> = rule
            .split(' ')
            .map(|word| word.replace("netavark_firewall_plugin_rules", "netavark firewall plugin rules"))
            .collect();
        let chain = args.last().cloned().unwrap_or_default();
        if before.contains(&format!(":{chain} ")) {
            continue;
        }
        let _ = Command::new("iptables").args(["-t", table, "-D"]).args(&args).output();
    }
    for (table, chain) in NETAVARK_CHAINS {
        if before.contains(&format!(":{chain} ")) {
            continue;
        }
        let _ = Command::new("iptables").args(["-t", table, "-F", chain]).output();
        let _ = Command::new("iptables").args(["-t", table, "-X", chain]).output();
    }
}
