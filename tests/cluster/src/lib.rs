//! A lab of colex hosts on one machine, for multi-host tests.
//!
//! Each host is a network namespace with one veth (`eth0`) whose other end
//! sits on a bridge inside a lab namespace of its own, so nothing touches
//! the root namespace's links, routes or firewall. The real
//! `colex-controller`, `colex-agent` and `colex-cli` binaries run inside
//! those namespaces through `nsenter --net`, which (unlike `ip netns exec`)
//! leaves `/sys/fs/cgroup` in place for the agents.
//!
//! Everything is named with the prefix `cx` plus a run id, and [`Lab`]'s
//! `Drop` removes processes, cgroups, mounts, namespaces and files, also
//! when a test panics.

pub mod ledger;
pub mod mesh_tools;
pub mod page_silo;
pub mod process;
pub mod table;
pub mod tls_lab;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::Rng;

pub use process::{CommandOutput, Daemon};

/// Lab network; the first controller host gets .2 and agent hosts .3
/// upwards. A documentation range, so it cannot clash with a real network
/// the machine is on.
const LAB_NETWORK: [u8; 3] = [198, 51, 100];
/// Last address byte of the second controller host; further controllers
/// follow. Far above the agent hosts' addresses.
const EXTRA_CONTROLLER_FIRST_ADDRESS: u8 = 201;
const LAB_PREFIX_LEN: u8 = 24;
/// Port the lab controller listens on inside its namespace.
pub const CONTROLLER_PORT: u16 = 7069;
/// Environment variable that keeps a lab (processes, namespaces, files)
/// after the test, for debugging by hand.
pub const KEEP_LAB_VAR: &str = "COLEX_KEEP_LAB";
/// How long a test waits for a cluster to reach an expected state.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns true when the tests can run. Without root they are skipped with
/// a printed reason, except under CI (`CI=true`), where that is a failure.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root (network namespaces, cgroups, mounts), and CI=true forbids skipping"
    );
    eprintln!("skipping {test}: needs root for network namespaces, cgroups and mounts");
    false
}

/// Folder holding the colex binaries: `COLEX_BIN_DIR`, or the cargo target
/// folder this test binary was built into.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("COLEX_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    // target/debug/deps/TEST -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target folder")?
        .to_path_buf();
    for binary in ["colex-controller", "colex-agent", "colex-silo-helper", "colex-cli"] {
        if !dir.join(binary).exists() {
            bail!(
                "{} not found in {}; run `cargo build --workspace` first or set COLEX_BIN_DIR",
                binary,
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// One lab host: a network namespace with an address on the lab bridge.
#[derive(Debug, Clone)]
pub struct Host {
    /// Host name the agent registers, e.g. `cx1a2b3c-h1`.
    pub name: String,
    /// Network namespace name under /run/netns.
    pub netns: String,
    pub address: Ipv4Addr,
    /// The agent's silo bridge inside this namespace.
    pub bridge: String,
    /// The agent's state folder.
    pub state_dir: PathBuf,
}

/// Time a silo's server gets to bind its port after its program started: UP means the program
/// was executed, not that it listens yet.
pub const SERVER_START_GRACE: Duration = Duration::from_secs(5);

impl Host {
    /// Returns the agent's run folder with the silos' records and leases: the agent's default
    /// for a given `--state-dir`.
    pub fn run_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }

    /// Runs a command inside this host's network namespace.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<CommandOutput> {
        process::run_in_netns(&self.netns, program, args, process::COMMAND_TIMEOUT)
    }

    /// Fetches `http://ADDRESS/` from inside this host's namespace, retrying for
    /// [`SERVER_START_GRACE`]; panics when it never succeeds.
    pub fn fetch_page(&self, address: &str) -> String {
        let url = format!("http://{address}/");
        let deadline = Instant::now() + SERVER_START_GRACE;
        loop {
            // curl, not busybox wget: the wget of Debian 12's busybox-static 1.35 crashes now
            // and then when writing the body to a pipe.
            let output = self
                .run("curl", &["--silent", "--show-error", "--max-time", "2", &url])
                .expect("curl runs");
            if output.success() {
                return output.stdout;
            }
            assert!(
                Instant::now() < deadline,
                "curl {url} from {} failed for {SERVER_START_GRACE:?}: {}",
                self.name,
                output.stderr
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A lab: controller hosts, agent hosts, their processes and files.
pub struct Lab {
    pub run_id: String,
    lab_netns: String,
    pub bins: PathBuf,
    pub dir: tempfile::TempDir,
    /// The first controller's host, where `cli` runs.
    pub controller_host: Host,
    /// Every controller's host, the first one included, by controller index.
    pub controller_hosts: Vec<Host>,
    pub hosts: Vec<Host>,
    controllers: Vec<Option<Daemon>>,
    agents: Vec<Option<Daemon>>,
    namespaces: Vec<String>,
}

impl Lab {
    /// Builds a lab with one controller host and `agent_count` agent hosts,
    /// and starts the controller and agents.
    pub fn start(agent_count: usize) -> anyhow::Result<Lab> {
        Lab::start_with_controllers(1, agent_count)
    }

    /// Builds a lab with `controller_count` controller hosts and
    /// `agent_count` agent hosts. The first controller bootstraps the
    /// cluster and the others join it one after another; every controller
    /// is a voter before the agents start.
    pub fn start_with_controllers(controller_count: usize, agent_count: usize) -> anyhow::Result<Lab> {
        if controller_count == 0 {
            bail!("a lab needs at least one controller");
        }
        let bins = bin_dir()?;
        let run_id = format!("{:06x}", rand::rng().random::<u32>() & 0x00ff_ffff);
        let dir = tempfile::Builder::new()
            .prefix(&format!("colex-lab-{run_id}-"))
            .tempdir()
            .context("cannot create the lab folder")?;

        let lab_netns = format!("cx{run_id}lab");
        let mut controller_hosts = vec![Host {
            name: format!("cx{run_id}-ctl"),
            netns: format!("cx{run_id}ctl"),
            address: host_address(2),
            bridge: String::new(),
            state_dir: dir.path().join("controller"),
        }];
        for index in 1..controller_count {
            let offset = u8::try_from(index - 1).context("too many lab controllers")?;
            controller_hosts.push(Host {
                name: format!("cx{run_id}-c{index}"),
                netns: format!("cx{run_id}c{index}"),
                address: host_address(EXTRA_CONTROLLER_FIRST_ADDRESS.checked_add(offset).context("too many lab controllers")?),
                bridge: String::new(),
                state_dir: dir.path().join(format!("controller{index}")),
            });
        }
        let mut lab = Lab {
            run_id: run_id.clone(),
            lab_netns: lab_netns.clone(),
            bins,
            controller_host: controller_hosts[0].clone(),
            controller_hosts,
            hosts: Vec::new(),
            dir,
            controllers: (0..controller_count).map(|_| None).collect(),
            agents: Vec::new(),
            namespaces: Vec::new(),
        };

        lab.add_netns(&lab_netns)?;
        ip(&["-n", &lab_netns, "link", "add", "cxlab", "type", "bridge"])?;
        ip(&["-n", &lab_netns, "link", "set", "cxlab", "up"])?;

        for (index, controller_host) in lab.controller_hosts.clone().iter().enumerate() {
            // The first controller keeps the port name agent hosts never use.
            let port = if index == 0 { "cxport0".to_owned() } else { format!("cxportc{index}") };
            lab.add_host_netns(controller_host, &port)?;
        }
        for index in 1..=agent_count {
            let host = Host {
                name: format!("cx{run_id}-h{index}"),
                netns: format!("cx{run_id}h{index}"),
                address: host_address(2 + u8::try_from(index).context("too many lab hosts")?),
                bridge: format!("cxb{run_id}"),
                state_dir: lab.dir.path().join(format!("h{index}")),
            };
            lab.add_host_netns(&host, &format!("cxport{index}"))?;
            lab.hosts.push(host);
        }

        lab.start_controller()?;
        for index in 1..controller_count {
            lab.start_controller_at(index)?;
            lab.wait_until(&format!("{} controllers are voters", index + 1), |lab| {
                let output = lab.cli(&["controllers"])?;
                let voters = table::parse_table(&output.stdout)
                    .iter()
                    .filter(|row| row.get("ROLE").map(String::as_str) == Some("voter"))
                    .count();
                Ok(voters == index + 1)
            })?;
        }
        for index in 0..lab.hosts.len() {
            let agent = lab.spawn_agent(index)?;
            lab.agents.push(Some(agent));
        }
        lab.wait_for_hosts_up()?;
        Ok(lab)
    }

    /// Address of the first controller.
    pub fn controller_address(&self) -> String {
        self.controller_address_at(0)
    }

    /// Address of controller `index`.
    pub fn controller_address_at(&self, index: usize) -> String {
        format!("{}:{CONTROLLER_PORT}", self.controller_hosts[index].address)
    }

    /// Returns every controller's address, separated by commas, as the
    /// CLI's `--serv` and the agents' `--join` take them.
    pub fn controller_addresses(&self) -> String {
        (0..self.controller_hosts.len())
            .map(|index| self.controller_address_at(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn add_netns(&mut self, name: &str) -> anyhow::Result<()> {
        ip(&["netns", "add", name])?;
        self.namespaces.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// Creates the host's namespace and plugs its `eth0` into the lab bridge
    /// through the port `lab_side`.
    fn add_host_netns(&mut self, host: &Host, lab_side: &str) -> anyhow::Result<()> {
        self.add_netns(&host.netns)?;
        ip(&[
            "-n", &self.lab_netns, "link", "add", lab_side, "type", "veth", "peer", "name", "eth0", "netns", &host.netns,
        ])?;
        ip(&["-n", &self.lab_netns, "link", "set", lab_side, "master", "cxlab", "up"])?;
        let cidr = format!("{}/{LAB_PREFIX_LEN}", host.address);
        ip(&["-n", &host.netns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &host.netns, "link", "set", "eth0", "up"])
    }

    /// Starts the first controller on its lab host, keeping its data folder.
    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        self.start_controller_at(0)
    }

    /// Starts controller `index` on its lab host, keeping its data folder,
    /// and waits until it responds. The first controller bootstraps the
    /// cluster and the others join the first. A controller whose data folder
    /// already contains its node id ignores both flags and resumes.
    pub fn start_controller_at(&mut self, index: usize) -> anyhow::Result<()> {
        let host = self.controller_hosts[index].clone();
        let listen = self.controller_address_at(index);
        let data_dir = host.state_dir.display().to_string();
        let first = self.controller_address();
        let mut args = vec!["--listen", listen.as_str(), "--data-dir", data_dir.as_str()];
        if index == 0 {
            args.push("--bootstrap");
        } else {
            args.extend(["--join", first.as_str()]);
        }
        let tls_args = self.controller_tls_args(index)?;
        args.extend(tls_args.iter().map(String::as_str));
        let log_name = if index == 0 { "controller.log".to_owned() } else { format!("controller{index}.log") };
        let daemon = Daemon::spawn_in_netns(&host.netns, &self.bins.join("colex-controller"), &args, &self.dir.path().join(log_name))?;
        self.controllers[index] = Some(daemon);
        if index == 0 {
            self.enroll_lab_cli()?;
        }
        self.wait_for_controller(index)
    }

    /// Stops the first controller with SIGTERM and waits for it to exit.
    pub fn stop_controller(&mut self) -> anyhow::Result<()> {
        self.stop_controller_at(0)
    }

    /// Stops controller `index` with SIGTERM and waits for it to exit.
    pub fn stop_controller_at(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut controller) = self.controllers[index].take() {
            controller.stop(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Returns the pid of controller `index`, if it runs.
    pub fn controller_pid(&self, index: usize) -> Option<u32> {
        self.controllers[index].as_ref().map(Daemon::pid)
    }

    /// Kills controller `index` with SIGKILL, as a crash would.
    pub fn kill_controller(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut controller) = self.controllers[index].take() {
            controller.kill()?;
        }
        Ok(())
    }

    /// Kills the agent of host `index` with SIGKILL, as a crash would.
    /// Returns the pid of host `index`'s agent while it runs.
    pub fn agent_pid(&self, index: usize) -> Option<u32> {
        self.agents.get(index)?.as_ref().map(Daemon::pid)
    }

    pub fn kill_agent(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut agent) = self.agents[index].take() {
            agent.kill()?;
        }
        Ok(())
    }

    /// Starts the agent of host `index` again, after `kill_agent`.
    pub fn restart_agent(&mut self, index: usize) -> anyhow::Result<()> {
        let agent = self.spawn_agent(index)?;
        self.agents[index] = Some(agent);
        Ok(())
    }

    /// Adds one more agent host to the running lab and starts its agent, as a machine joining
    /// the cluster later would. Returns the new host's index in `hosts`.
    pub fn add_agent_host(&mut self) -> anyhow::Result<usize> {
        let number = self.hosts.len() + 1;
        let host = Host {
            name: format!("cx{}-h{number}", self.run_id),
            netns: format!("cx{}h{number}", self.run_id),
            address: host_address(2 + u8::try_from(number).context("too many lab hosts")?),
            bridge: format!("cxb{}", self.run_id),
            state_dir: self.dir.path().join(format!("h{number}")),
        };
        self.add_host_netns(&host, &format!("cxport{number}"))?;
        self.hosts.push(host);
        let index = self.hosts.len() - 1;
        let agent = self.spawn_agent(index)?;
        self.agents.push(Some(agent));
        Ok(index)
    }

    fn spawn_agent(&self, index: usize) -> anyhow::Result<Daemon> {
        let host = &self.hosts[index];
        let controller = self.controller_addresses();
        let state_dir = host.state_dir.display().to_string();
        let log = self.dir.path().join(format!("agent-h{}.log", index + 1));
        let mut args = vec![
            "--join", &controller, "--name", &host.name, "--state-dir", &state_dir, "--bridge", &host.bridge,
        ];
        let tls_args = self.agent_tls_args()?;
        args.extend(tls_args.iter().map(String::as_str));
        Daemon::spawn_in_netns(&host.netns, &self.bins.join("colex-agent"), &args, &log)
    }

    /// Waits until controller `index` serves a read from its own state.
    fn wait_for_controller(&self, index: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let output = self.cli_at(index, &["list", "--stale"])?;
            if output.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("controller {index} did not respond within {SETTLE_TIMEOUT:?}: {}\n{}", output.stderr, self.logs());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every agent host is listed as UP and its agent has
    /// prepared the runtime (its bridge exists), so a ledger taken next
    /// records the host as the agent leaves it between silos.
    pub fn wait_for_hosts_up(&self) -> anyhow::Result<()> {
        self.wait_until("every host is UP with its bridge", |lab| {
            let output = lab.cli(&["list", "--all-hosts"])?;
            for host in &lab.hosts {
                let heading = format!("HOST {} ", host.name);
                let listed_up = output
                    .stdout
                    .lines()
                    .any(|line| line.starts_with(&heading) && line.contains("state UP"));
                if !listed_up || !host.run("ip", &["link", "show", &host.bridge])?.success() {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// Polls `check` every 200 ms until it returns true or SETTLE_TIMEOUT passes.
    pub fn wait_until(&self, what: &str, mut check: impl FnMut(&Lab) -> anyhow::Result<bool>) -> anyhow::Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if check(self)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {SETTLE_TIMEOUT:?} waiting until {what}\n{}", self.logs());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs colex-cli in the first controller's namespace with `--serv` set
    /// to every controller, so it reaches the first that accepts a connection.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<CommandOutput> {
        self.cli_with_serv(&self.controller_addresses(), args)
    }

    /// Runs colex-cli in the first controller's namespace with `--serv` set
    /// to controller `index` only.
    pub fn cli_at(&self, index: usize, args: &[&str]) -> anyhow::Result<CommandOutput> {
        self.cli_with_serv(&self.controller_address_at(index), args)
    }

    /// Runs colex-cli with `--serv serv` in the controller host's namespace.
    pub fn cli_with_serv(&self, serv: &str, args: &[&str]) -> anyhow::Result<CommandOutput> {
        let mut full = vec!["--serv", serv];
        let tls_args = self.cli_tls_args();
        full.extend(tls_args.iter().map(String::as_str));
        full.extend_from_slice(args);
        let cli = self.bins.join("colex-cli");
        process::run_in_netns(&self.controller_host.netns, &cli.display().to_string(), &full, process::CLI_TIMEOUT)
    }

    /// Writes a file into the lab folder and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        fs::write(&path, contents).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// Returns the text of every process log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = fs::read_dir(self.dir.path()) {
            let mut paths: Vec<PathBuf> = entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect();
            paths.sort();
            for path in paths.into_iter().filter(|path| path.extension().is_some_and(|ext| ext == "log")) {
                let body = fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = body.lines().rev().take(40).collect();
                text.push_str(&format!("--- {} (last lines)\n", path.display()));
                for line in tail.into_iter().rev() {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }

    /// Runs `colex-agent teardown` for `host` in its namespace: removes the silos its agent
    /// left running, its bridge, iptables chain and cgroup folder.
    pub fn teardown_host(&self, host: &Host) -> anyhow::Result<()> {
        let agent = self.bins.join("colex-agent").display().to_string();
        let state_dir = host.state_dir.display().to_string();
        let output = host.run(
            &agent,
            &["teardown", "--name", &host.name, "--state-dir", &state_dir, "--bridge", &host.bridge],
        )?;
        if !output.success() {
            bail!("colex-agent teardown failed: {}", output.stderr.trim());
        }
        Ok(())
    }

    /// Starts colex-cli in the controller's namespace with its stdout piped, for commands
    /// that keep running such as `logs -f`. The caller ends it by its PID.
    pub fn spawn_cli(&self, args: &[&str]) -> anyhow::Result<std::process::Child> {
        let serv = self.controller_addresses();
        let cli = self.bins.join("colex-cli");
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.controller_host.netns))
            .arg("--")
            .arg(&cli)
            .args(["--serv", serv.as_str()])
            .args(self.cli_tls_args())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", cli.display()))
    }

    /// Cuts host `index` off the lab network by setting its port on the lab bridge down. Its
    /// agent and silos keep running but reach nothing outside the host.
    pub fn cut_host(&self, index: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.lab_netns, "link", "set", &format!("cxport{}", index + 1), "down"])
    }

    /// Plugs host `index` back into the lab network after [`Lab::cut_host`].
    pub fn reconnect_host(&self, index: usize) -> anyhow::Result<()> {
        ip(&["-n", &self.lab_netns, "link", "set", &format!("cxport{}", index + 1), "up"])
    }

    /// Returns the name of the lab namespace that contains the lab bridge `cxlab`.
    pub fn lab_netns(&self) -> &str {
        &self.lab_netns
    }

    /// Records a namespace the test made, so the lab's `Drop` removes it with its own.
    pub fn adopt_netns(&mut self, name: &str) {
        self.namespaces.push(name.to_owned());
    }

    /// Returns the v2 cgroup folder the agent of `host` keeps its silos in.
    pub fn agent_cgroup(&self, host: &Host) -> Option<PathBuf> {
        ledger::cgroup2_root().map(|root| root.join(format!("colex-{}", host.name)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_LAB_VAR).is_some() {
            eprintln!(
                "{KEEP_LAB_VAR} is set: lab {} is kept (namespaces {:?}, folder {}); remove it by hand",
                self.run_id,
                self.namespaces,
                self.dir.path().display()
            );
            let dir = tempfile::Builder::new().tempdir().map(|fresh| std::mem::replace(&mut self.dir, fresh));
            if let Ok(dir) = dir {
                let _ = dir.keep();
            }
            for agent in self.agents.iter_mut().filter_map(Option::take) {
                std::mem::forget(agent);
            }
            for controller in self.controllers.iter_mut().filter_map(Option::take) {
                std::mem::forget(controller);
            }
            return;
        }
        // Agents first, with SIGTERM. A stopped agent leaves its silos running, so
        // `colex-agent teardown` removes them and the host objects next.
        for agent in self.agents.iter_mut().filter_map(Option::take) {
            let mut agent = agent;
            if let Err(error) = agent.stop(Duration::from_secs(15)) {
                eprintln!("lab {}: agent did not stop cleanly: {error:#}", self.run_id);
            }
        }
        for host in self.hosts.clone() {
            if let Err(error) = self.teardown_host(&host) {
                eprintln!("lab {}: teardown of {} failed: {error:#}", self.run_id, host.name);
            }
        }
        for mut controller in self.controllers.iter_mut().filter_map(Option::take) {
            if let Err(error) = controller.stop(Duration::from_secs(10)) {
                eprintln!("lab {}: controller did not stop cleanly: {error:#}", self.run_id);
            }
        }
        // Every process has written its last line now. A test that failed already is not
        // failed twice.
        let leaked = if tls_lab::insecure() || std::thread::panicking() {
            Vec::new()
        } else {
            self.leaked_secrets()
        };

        // Whatever the agents left: silo processes, cgroups and mounts.
        for host in self.hosts.clone() {
            if let Some(cgroup) = self.agent_cgroup(&host) {
                ledger::kill_and_remove_cgroup(&cgroup);
            }
        }
        ledger::unmount_below(self.dir.path());

        for netns in self.namespaces.iter().rev() {
            if let Err(error) = ip(&["netns", "del", netns]) {
                eprintln!("lab {}: {error:#}", self.run_id);
            }
        }
        // After the clean-up, so the failed check leaves nothing behind.
        assert!(leaked.is_empty(), "lab {} wrote secrets into its logs: {}", self.run_id, leaked.join("; "));
    }
}

fn host_address(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(LAB_NETWORK[0], LAB_NETWORK[1], LAB_NETWORK[2], last)
}

/// Runs `ip` with the given arguments in the root namespace.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip").args(args).output().context("cannot run ip")?;
    if !output.status.success() {
        bail!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
