//! Helpers for tests of the WireGuard mesh between lab hosts: the agents' mesh devices, their
//! userspace API sockets, host subnets from `list --all-hosts`, silo addresses, and packet
//! captures on the lab bridge.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::table::parse_table;
use crate::{Host, Lab};

/// Folder of the userspace WireGuard UAPI sockets, the same for every network namespace.
pub const UAPI_SOCKET_DIR: &str = "/var/run/wireguard";
/// Prefix of the agents' mesh interface names.
pub const MESH_IFNAME_PREFIX: &str = "cxm";

/// Returns the UAPI socket path of the userspace mesh device `device`.
pub fn socket_path(device: &str) -> String {
    format!("{UAPI_SOCKET_DIR}/{device}.sock")
}

/// Returns the reply of the userspace device `device` to a UAPI `get=1`: its listen port and
/// each peer's public key (hex), endpoint, allowed IPs and handshake. Returns an empty string
/// when the socket does not accept the request.
pub fn uapi_get(device: &str) -> String {
    let Ok(mut socket) = UnixStream::connect(socket_path(device)) else {
        return String::new();
    };
    let mut reply = String::new();
    let sent = socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .and_then(|()| socket.write_all(b"get=1\n\n"))
        .and_then(|()| socket.read_to_string(&mut reply));
    if sent.is_err() {
        return String::new();
    }
    reply
}

/// Returns the allowed-IPs networks of every peer in a UAPI `get=1` reply.
pub fn peer_allowed_ips(reply: &str) -> BTreeSet<String> {
    reply
        .lines()
        .filter_map(|line| line.strip_prefix("allowed_ip="))
        .map(str::to_owned)
        .collect()
}

/// Returns the number of peers in a UAPI `get=1` reply.
pub fn peer_count(reply: &str) -> usize {
    reply.lines().filter(|line| line.starts_with("public_key=")).count()
}

/// Returns the mesh interface names in `host`'s namespace.
pub fn mesh_devices(host: &Host) -> anyhow::Result<BTreeSet<String>> {
    let output = host.run("ip", &["-o", "link", "show"])?;
    Ok(output
        .stdout
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.starts_with(MESH_IFNAME_PREFIX))
        .collect())
}

/// Returns the one mesh device of `host`; fails when it has none or several.
pub fn mesh_device(host: &Host) -> anyhow::Result<String> {
    let devices = mesh_devices(host)?;
    if devices.len() != 1 {
        bail!("expected one mesh device on {}, found {devices:?}", host.name);
    }
    devices.into_iter().next().context("one mesh device")
}

/// Returns the routes through `device` in `host`'s namespace, one `ip route` line each.
pub fn mesh_routes(host: &Host, device: &str) -> anyhow::Result<String> {
    Ok(host.run("ip", &["route", "show", "dev", device])?.stdout)
}

/// Returns the silo subnet of `host` from the heading `list --all-hosts` prints for it
/// (`HOST NAME  address A  state UP  subnet 10.69.1.0/24  silos N`), or `None` when the host
/// is not listed.
pub fn host_subnet(lab: &Lab, host: &Host) -> anyhow::Result<Option<String>> {
    let listed = lab.cli(&["list", "--all-hosts"])?;
    let heading = format!("HOST {} ", host.name);
    let Some(line) = listed.stdout.lines().find(|line| line.starts_with(&heading)) else {
        return Ok(None);
    };
    let mut words = line.split_whitespace().skip_while(|word| *word != "subnet");
    Ok(words.nth(1).map(str::to_owned))
}

/// Returns the address of silo `name` from `list` once it is UP, or `None` before.
pub fn silo_address(lab: &Lab, name: &str) -> anyhow::Result<Option<String>> {
    let listed = lab.cli(&["list"])?;
    let row = parse_table(&listed.stdout)
        .into_iter()
        .find(|row| row.get("NAME").map(String::as_str) == Some(name));
    Ok(row
        .filter(|row| row.get("STATE").map(String::as_str) == Some("UP"))
        .and_then(|row| row.get("ADDRESSES").cloned())
        .filter(|address| !address.is_empty() && address != "-"))
}

/// Waits until silo `name` is UP with an address and returns the address.
pub fn wait_for_silo_address(lab: &Lab, name: &str) -> anyhow::Result<String> {
    let mut address = String::new();
    lab.wait_until(&format!("{name} is UP with an address"), |lab| match silo_address(lab, name)? {
        Some(found) => {
            address = found;
            Ok(true)
        }
        None => Ok(false),
    })?;
    Ok(address)
}

/// Returns the output silo `name` wrote to its standard error (`stderr`) or standard output.
pub fn silo_logs(lab: &Lab, name: &str, stderr: bool) -> anyhow::Result<String> {
    let mut args = vec!["logs", name];
    if stderr {
        args.push("--stderr");
    }
    let output = lab.cli(&args)?;
    if !output.success() {
        bail!("logs {name} failed: {}", output.stderr);
    }
    Ok(output.stdout)
}

/// Returns the number of requests from `address` in busybox httpd's `-v` log, whose lines start
/// with the client's address and port, an IPv4 client as `[::ffff:10.69.1.2]:PORT`.
pub fn requests_from(log: &str, address: &str) -> usize {
    let mapped = format!("[::ffff:{address}]:");
    let plain = format!("{address}:");
    log.lines()
        .filter(|line| line.starts_with(&mapped) || line.starts_with(&plain))
        .count()
}

/// Returns the number of responses in busybox httpd's `-v` log, whatever the client.
pub fn response_count(log: &str) -> usize {
    log.lines().filter(|line| line.contains(": response:")).count()
}

/// Runs `colex-cli up FILE` for a silo file written into the lab folder as `file_name`.
pub fn up(lab: &Lab, file_name: &str, contents: &str) -> anyhow::Result<String> {
    let path = lab.write_file(file_name, contents)?;
    let path = path.to_str().context("lab path is not UTF-8")?.to_owned();
    let output = lab.cli(&["up", &path])?;
    if !output.success() {
        bail!("up {path} failed: {}\n{}", output.stderr, lab.logs());
    }
    Ok(path)
}

/// Places where Debian installs tcpdump.
const TCPDUMP_PATHS: &[&str] = &["/usr/bin/tcpdump", "/usr/sbin/tcpdump"];
/// Time a stopped tcpdump gets to write its last packets and exit.
const CAPTURE_STOP_GRACE: Duration = Duration::from_secs(5);
/// Time tcpdump gets to open the interface before the traffic to capture starts. It prints
/// "listening on" once it does, which [`Capture::start`] waits for up to this long.
const CAPTURE_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns the path of tcpdump, or an error that names the package to install.
pub fn tcpdump_path() -> anyhow::Result<std::path::PathBuf> {
    TCPDUMP_PATHS
        .iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.exists())
        .context("tcpdump not found in /usr/bin or /usr/sbin; install it with `apt-get install tcpdump` (deploy/install-deps.sh does)")
}

/// A tcpdump writing the packets of one interface in a lab namespace to a pcap file.
pub struct Capture {
    daemon: Option<crate::Daemon>,
    /// The pcap file.
    pub path: std::path::PathBuf,
}

impl Capture {
    /// Starts tcpdump on `interface` in namespace `netns` with the capture filter `filter`,
    /// writing to `name`.pcap in the lab folder, and waits until it listens.
    pub fn start(lab: &Lab, netns: &str, interface: &str, filter: &str, name: &str) -> anyhow::Result<Capture> {
        let tcpdump = tcpdump_path()?;
        let path = lab.dir.path().join(format!("{name}.pcap"));
        let log = lab.dir.path().join(format!("{name}.tcpdump.log"));
        let path_text = path.to_str().context("lab path is not UTF-8")?.to_owned();
        // -U writes each packet at once; -Z root keeps tcpdump from switching to a user that
        // cannot write into the lab folder.
        let mut args = vec!["-i", interface, "-n", "-U", "-Z", "root", "-w", path_text.as_str()];
        args.extend(filter.split_whitespace());
        let daemon = crate::Daemon::spawn_in_netns(netns, &tcpdump, &args, &log)?;
        let started = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") {
                break;
            }
            if started.elapsed() > CAPTURE_START_TIMEOUT {
                bail!("tcpdump did not start listening on {interface} within {CAPTURE_START_TIMEOUT:?}: {text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Capture {
            daemon: Some(daemon),
            path,
        })
    }

    /// Stops tcpdump by its PID and returns the packets it wrote, one `tcpdump -r -n` line each,
    /// and the raw pcap bytes.
    pub fn stop(&mut self) -> anyhow::Result<(Vec<String>, Vec<u8>)> {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop(CAPTURE_STOP_GRACE)?;
        }
        let tcpdump = tcpdump_path()?;
        let output = std::process::Command::new(&tcpdump)
            .args(["-r"])
            .arg(&self.path)
            .args(["-n", "-tt"])
            .output()
            .with_context(|| format!("cannot run {}", tcpdump.display()))?;
        if !output.status.success() {
            bail!("tcpdump -r {} failed: {}", self.path.display(), String::from_utf8_lossy(&output.stderr));
        }
        let lines = String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect();
        let bytes = std::fs::read(&self.path).with_context(|| format!("cannot read {}", self.path.display()))?;
        Ok((lines, bytes))
    }
}

/// Address of the upstream web server, a documentation range outside the cluster and lab.
pub const UPSTREAM_ADDRESS: &str = "203.0.113.10";
/// Network the lab hosts route to the upstream namespace.
pub const UPSTREAM_NETWORK: &str = "203.0.113.0/24";
/// Address of the upstream namespace on the lab bridge, the hosts' gateway to
/// [`UPSTREAM_NETWORK`].
pub const UPSTREAM_LAB_ADDRESS: &str = "198.51.100.250";
/// Text of the page the upstream server returns.
pub const UPSTREAM_PAGE: &str = "page of the upstream server";

/// A namespace on the lab bridge that stands for the internet: it owns [`UPSTREAM_ADDRESS`]
/// and runs busybox httpd there, logging each client's address.
pub struct Upstream {
    pub netns: String,
    server: Option<crate::Daemon>,
    /// The server's log: one `ADDRESS:PORT: ...` line per request.
    pub log: std::path::PathBuf,
}

impl Upstream {
    /// Makes the upstream namespace, plugs it into the lab bridge, starts its web server, and
    /// routes [`UPSTREAM_NETWORK`] through it from every agent host. The lab's `Drop` removes
    /// the namespace.
    pub fn start(lab: &mut Lab) -> anyhow::Result<Upstream> {
        let netns = format!("cx{}up", lab.run_id);
        crate::ip(&["netns", "add", &netns])?;
        lab.adopt_netns(&netns);
        let lab_netns = lab.lab_netns().to_owned();
        crate::ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        crate::ip(&["-n", &lab_netns, "link", "add", "cxportup", "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        crate::ip(&["-n", &lab_netns, "link", "set", "cxportup", "master", "cxlab", "up"])?;
        crate::ip(&["-n", &netns, "addr", "add", &format!("{UPSTREAM_LAB_ADDRESS}/24"), "dev", "eth0"])?;
        crate::ip(&["-n", &netns, "addr", "add", &format!("{UPSTREAM_ADDRESS}/32"), "dev", "lo"])?;
        crate::ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        for host in &lab.hosts {
            crate::ip(&["-n", &host.netns, "route", "add", UPSTREAM_NETWORK, "via", UPSTREAM_LAB_ADDRESS])?;
        }

        let www = lab.dir.path().join("upstream-www");
        std::fs::create_dir_all(&www).context("cannot create the upstream page folder")?;
        std::fs::write(www.join("index.html"), format!("{UPSTREAM_PAGE}\n")).context("cannot write the upstream page")?;
        let www = www.to_str().context("lab path is not UTF-8")?.to_owned();
        let log = lab.dir.path().join("upstream-httpd.txt");
        let listen = format!("{UPSTREAM_ADDRESS}:80");
        let server = crate::Daemon::spawn_in_netns(
            &netns,
            Path::new("/bin/busybox"),
            &["httpd", "-f", "-v", "-p", &listen, "-h", &www],
            &log,
        )?;
        Ok(Upstream {
            netns,
            server: Some(server),
            log,
        })
    }

    /// Returns the server's `-v` log, for [`requests_from`] and [`response_count`].
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.stop(CAPTURE_STOP_GRACE);
        }
    }
}
