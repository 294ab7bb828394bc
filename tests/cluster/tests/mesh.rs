//! The WireGuard mesh between two lab hosts. A silo on host 1 fetches pages from a silo on
//! host 2 through the mesh, and the server logs the client silo's own address (no NAT).
//! Traffic resumes quickly after host 2's agent is killed and restarted, also while the
//! controller is down and with a new mesh port. A stopped agent removes its device, and the lab
//! leaves no mesh device, UAPI socket or namespace behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use colex_cluster_tests::mesh_tools::{requests_from, silo_address, silo_logs, socket_path, uapi_get};
use colex_cluster_tests::{require_root, Daemon, Host, Lab};

/// Prefix of the agents' mesh interface names.
const MESH_IFNAME_PREFIX: &str = "cxm";
/// MTU the agents give their mesh devices on the lab's 1500-byte links.
const MESH_MTU_BYTES: u32 = 1420;
/// Size of the file the client fetches once, 10 MiB: far above the mesh MTU, so a transfer
/// that only works for small packets fails, and long enough to show a sustained transfer.
const BIG_FILE_BYTES: usize = 10 * 1024 * 1024;
/// How long the embedded device of a stopped agent may take to remove its socket, because
/// boringtun checks the socket file once a second.
const SOCKET_REMOVAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Mesh port of host 2's agent after its restart, to check that peers learn a new endpoint.
const RESTART_MESH_PORT: u16 = 51821;
/// Time within which silo traffic must resume after an agent restart. Without a fresh handshake,
/// the other host keeps using its stale session until WireGuard notices 15 s of sending without
/// receiving, so a longer gap means the restarted agent did not start handshakes. About 0.5 s
/// was measured on the 2-core development machine.
const RESUME_TIMEOUT: Duration = Duration::from_secs(10);
/// Time an agent gets to stop after SIGTERM: its device takes about a second.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(15);

/// Returns a silo file with an httpd silo on `host` that logs each client's address to its
/// standard error (`-v`). The big file is made inside the silo: a spec may carry at most
/// 256 KiB of files.
fn server_silo(host: &str) -> String {
    format!(
        r#"
Silo "server" {{
  name = "mesh-server"

  binary {{
    path = "/bin/sh"
    args = ["-c", "head -c {BIG_FILE_BYTES} /dev/zero > /www/big.bin && exec httpd -f -v -p 80 -h /www"]
  }}

  file "page" {{
    path      = "page.html"
    silo_path = "/www/index.html"
  }}

  placement {{
    hosts = ["{host}"]
  }}
}}
"#
    )
}

/// Returns a silo file with a silo on `host` that fetches the page from `server` every second
/// and prints it, and fetches the big file until one fetch succeeds and prints its size. It has internet access,
/// so its host has a MASQUERADE rule for it that must leave cluster traffic alone.
fn client_silo(host: &str, server: &str) -> String {
    format!(
        r#"
Silo "client" {{
  name = "mesh-client"

  binary {{
    path = "/bin/sh"
    args = ["-c", "while true; do wget -q -O /tmp/page http://{server}/ && cat /tmp/page; [ -e /tmp/big-done ] || {{ wget -q -O /tmp/big http://{server}/big.bin && echo \"big $(wc -c < /tmp/big)\" && touch /tmp/big-done; }}; rm -f /tmp/page /tmp/big; sleep 1; done"]
  }}

  network {{
    internet_access = true
  }}

  placement {{
    hosts = ["{host}"]
  }}
}}
"#
    )
}

/// Starts the agent of lab host `index` with a config file that sets `mesh_port`, in place of
/// the lab's own agent, which must be stopped.
fn start_agent_with_port(lab: &Lab, index: usize, mesh_port: u16) -> anyhow::Result<Daemon> {
    let host = &lab.hosts[index];
    let config = lab.write_file(&format!("agent-h{}-mesh.hcl", index + 1), &format!("mesh_port = {mesh_port}\n"))?;
    let state_dir = host.state_dir.display().to_string();
    let config = config.display().to_string();
    let controllers = lab.controller_addresses();
    Daemon::spawn_in_netns(
        &host.netns,
        &lab.bins.join("colex-agent"),
        &[
            "--join", &controllers, "--name", &host.name, "--state-dir", &state_dir, "--bridge", &host.bridge, "--config", &config,
        ],
        &lab.dir.path().join(format!("agent-h{}-mesh.log", index + 1)),
    )
}

/// Pings `address` from `host`'s namespace until it replies and returns how long that took;
/// panics after `RESUME_TIMEOUT`.
fn wait_for_ping(host: &Host, address: &str) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let output = host
            .run("/bin/busybox", &["ping", "-c", "1", "-W", "1", address])
            .expect("ping runs");
        if output.success() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < RESUME_TIMEOUT,
            "no reply from {address} on {} for {RESUME_TIMEOUT:?}: {}{}",
            host.name,
            output.stdout,
            output.stderr
        );
    }
}

/// Returns the bytes a device sent to all its peers, from the `tx_bytes` lines of a UAPI reply.
fn peer_tx_bytes(reply: &str) -> u64 {
    reply
        .lines()
        .filter_map(|line| line.strip_prefix("tx_bytes="))
        .filter_map(|bytes| bytes.parse::<u64>().ok())
        .sum()
}

/// Waits until the server logged two more requests from `client_address` and returns how long
/// that took.
fn wait_for_requests(lab: &Lab, client_address: &str) -> Duration {
    let started = std::time::Instant::now();
    let before = requests_from(&silo_logs(lab, "mesh-server", true).expect("server logs"), client_address);
    lab.wait_until("the client reaches the server after host 2's agent restart", |lab| {
        let log = silo_logs(lab, "mesh-server", true)?;
        Ok(requests_from(&log, client_address) >= before + 2)
    })
    .expect("traffic resumes after the restart");
    started.elapsed()
}

/// Waits until silo `name` is UP and returns its address.
fn wait_for_address(lab: &Lab, name: &str) -> String {
    let mut address = String::new();
    lab.wait_until(&format!("{name} is UP with an address"), |lab| {
        match silo_address(lab, name)? {
            Some(found) => {
                address = found;
                Ok(true)
            }
            None => Ok(false),
        }
    })
    .unwrap_or_else(|err| panic!("{err:#}"));
    address
}

/// Returns the silo subnet of `host` from the heading `list --all-hosts` prints for it:
/// `HOST NAME  address A  state UP  subnet 10.69.1.0/24  silos N`.
fn host_subnet(lab: &Lab, host: &Host) -> String {
    let listed = lab.cli(&["list", "--all-hosts"]).expect("list runs");
    let heading = format!("HOST {} ", host.name);
    let line = listed
        .stdout
        .lines()
        .find(|line| line.starts_with(&heading))
        .unwrap_or_else(|| panic!("no heading for {} in:\n{}", host.name, listed.stdout));
    let mut words = line.split_whitespace().skip_while(|word| *word != "subnet");
    words.nth(1).unwrap_or_else(|| panic!("no subnet in {line:?}")).to_owned()
}

/// Returns the first three bytes of a /24 subnet with a trailing dot, e.g. `10.69.1.`.
fn subnet_prefix(subnet: &str) -> String {
    let (network, _) = subnet.rsplit_once('.').expect("dotted subnet");
    format!("{network}.")
}

/// Returns the mesh interface names in `host`'s namespace.
fn mesh_devices(host: &Host) -> BTreeSet<String> {
    let output = host.run("ip", &["-o", "link", "show"]).expect("ip link runs");
    output
        .stdout
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .filter(|name| name.starts_with(MESH_IFNAME_PREFIX))
        .collect()
}

fn agent_log(lab: &Lab, index: usize) -> String {
    std::fs::read_to_string(lab.dir.path().join(format!("agent-h{}.log", index + 1))).unwrap_or_default()
}

/// Returns the number of lines `needle` appears on in `text`.
fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|line| line.contains(needle)).count()
}

#[test]
fn silos_reach_each_other_across_hosts() {
    if !require_root("silos_reach_each_other_across_hosts") {
        return;
    }
    let mut lab = Lab::start(2).expect("lab starts");
    let (host_1, host_2) = (lab.hosts[0].clone(), lab.hosts[1].clone());

    // Every agent made one mesh device with a socket, and logged its backend.
    let mut devices = Vec::new();
    for (index, host) in lab.hosts.iter().enumerate() {
        let found = mesh_devices(host);
        assert_eq!(found.len(), 1, "one mesh device on {}: {found:?}", host.name);
        let device = found.into_iter().next().expect("one device");
        assert!(device.len() <= 15, "interface name {device} fits IFNAMSIZ");
        let log = agent_log(&lab, index);
        assert!(
            log.contains("backend=userspace") || log.contains("backend=kernel"),
            "agent of {} logs its backend:\n{log}",
            host.name
        );
        devices.push(device);
    }
    assert_ne!(devices[0], devices[1], "mesh device names are unique on the machine");
    let userspace = agent_log(&lab, 0).contains("backend=userspace");
    if userspace {
        for device in &devices {
            assert!(Path::new(&socket_path(device)).exists(), "UAPI socket of {device}");
            let reply = uapi_get(device);
            assert!(reply.contains("listen_port=51820"), "default mesh port of {device}:\n{reply}");
        }
    }

    // Each host routes the other's silo subnet through its mesh device.
    let subnet_1 = host_subnet(&lab, &host_1);
    let subnet_2 = host_subnet(&lab, &host_2);
    lab.wait_until("each host routes the other's subnet through the mesh", |_| {
        let routes_1 = host_1.run("ip", &["route", "show", "dev", &devices[0]])?.stdout;
        let routes_2 = host_2.run("ip", &["route", "show", "dev", &devices[1]])?.stdout;
        Ok(routes_1.contains(&subnet_2) && routes_2.contains(&subnet_1))
    })
    .expect("mesh routes");
    let link = host_1.run("ip", &["link", "show", &devices[0]]).expect("ip link").stdout;
    assert!(link.contains(&format!("mtu {MESH_MTU_BYTES}")), "mesh MTU on host 1: {link}");

    lab.write_file("page.html", "page of mesh-server\n").expect("page");
    let server_file = lab.write_file("server.hcl", &server_silo(&host_2.name)).expect("server file");
    let server_file = server_file.to_str().expect("utf-8 path").to_owned();
    let up = lab.cli(&["up", &server_file]).expect("up runs");
    assert!(up.success(), "up server failed: {}\n{}", up.stderr, lab.logs());
    let server_address = wait_for_address(&lab, "mesh-server");
    assert!(server_address.starts_with(&subnet_prefix(&subnet_2)), "server on host 2 in {subnet_2}: {server_address}");

    let client_file = lab
        .write_file("client.hcl", &client_silo(&host_1.name, &server_address))
        .expect("client file");
    let client_file = client_file.to_str().expect("utf-8 path").to_owned();
    let up = lab.cli(&["up", &client_file]).expect("up runs");
    assert!(up.success(), "up client failed: {}\n{}", up.stderr, lab.logs());
    let client_address = wait_for_address(&lab, "mesh-client");
    assert!(client_address.starts_with(&subnet_prefix(&subnet_1)), "client on host 1 in {subnet_1}: {client_address}");

    lab.wait_until("the client fetched the page and the big file", |lab| {
        let out = silo_logs(lab, "mesh-client", false)?;
        Ok(out.contains("page of mesh-server") && out.contains(&format!("big {BIG_FILE_BYTES}")))
    })
    .expect("client fetches through the mesh");

    // The big file left host 2 encrypted by its WireGuard device.
    if userspace {
        let sent = peer_tx_bytes(&uapi_get(&devices[1]));
        assert!(sent >= BIG_FILE_BYTES as u64, "host 2's device sent {sent} bytes to its peer");
    }

    // httpd -v logs `ADDRESS:PORT: response:200` per request. Only the client silo's own
    // address may appear: a masqueraded request would show host 1's mesh or lab address.
    let server_log = silo_logs(&lab, "mesh-server", true).expect("server logs");
    assert!(requests_from(&server_log, &client_address) > 0, "requests from {client_address} in:\n{server_log}");
    assert_eq!(
        count_lines(&server_log, "response:"),
        requests_from(&server_log, &client_address),
        "every request comes from the client silo's address:\n{server_log}"
    );
    let masquerade = host_1.run("iptables-save", &["-t", "nat"]).expect("iptables-save").stdout;
    assert_eq!(
        count_lines(&masquerade, "MASQUERADE"),
        1,
        "the client's MASQUERADE rule exists:\n{masquerade}"
    );
    assert_eq!(
        count_lines(&masquerade, "! -d 10.69.0.0/16"),
        1,
        "the MASQUERADE rule excludes the cluster network:\n{masquerade}"
    );

    // The host itself reaches a remote silo through the mesh too, with its bridge address.
    assert_eq!(host_1.fetch_page(&server_address), "page of mesh-server\n");
    let host_1_bridge = format!("{}1", subnet_prefix(&subnet_1));
    let server_log = silo_logs(&lab, "mesh-server", true).expect("server logs");
    assert_eq!(requests_from(&server_log, &host_1_bridge), 1, "one request from {host_1_bridge} in:\n{server_log}");

    // A killed agent leaves its silos running. Its restart makes a device of the same name with
    // the same key and endpoint, and the client reaches the server again.
    lab.kill_agent(1).expect("kill agent 2");
    lab.restart_agent(1).expect("restart agent 2");
    lab.wait_for_hosts_up().expect("host 2 is UP again");
    assert_eq!(mesh_devices(&host_2), BTreeSet::from([devices[1].clone()]), "same device name after the restart");
    let resumed_in = wait_for_requests(&lab, &client_address);
    assert!(resumed_in < RESUME_TIMEOUT, "traffic resumed only {resumed_in:?} after the restart with the same endpoint");

    // With the controller stopped, a restarted agent joins the mesh from its stored peer list:
    // host 2 reaches host 1's bridge address through the mesh.
    lab.stop_controller().expect("stop the controller");
    lab.kill_agent(1).expect("kill agent 2");
    lab.restart_agent(1).expect("restart agent 2");
    let replied_in = wait_for_ping(&host_2, &host_1_bridge);
    assert!(replied_in < RESUME_TIMEOUT, "host 2 reached {host_1_bridge} only {replied_in:?} after its agent restarted without a controller");
    lab.start_controller().expect("start the controller again");
    lab.wait_for_hosts_up().expect("hosts are UP with the controller back");

    // A restart with another mesh_port: host 1 learns the new endpoint from the controller.
    lab.kill_agent(1).expect("kill agent 2");
    let mut agent_2 = start_agent_with_port(&lab, 1, RESTART_MESH_PORT).expect("restart agent 2");
    lab.wait_for_hosts_up().expect("host 2 is UP again");
    // The kernel backend has no UAPI socket to read the endpoint from.
    if userspace {
        let new_endpoint = format!("endpoint={}:{RESTART_MESH_PORT}", host_2.address);
        lab.wait_until("host 1 has host 2's new endpoint", |_| Ok(uapi_get(&devices[0]).contains(&new_endpoint)))
            .expect("new endpoint on host 1");
    }
    let resumed_in = wait_for_requests(&lab, &client_address);
    assert!(resumed_in < RESUME_TIMEOUT, "traffic resumed only {resumed_in:?} after the restart with a new endpoint");

    // SIGTERM stops the agent, which removes its device, socket and routes itself.
    agent_2.stop(AGENT_STOP_GRACE).expect("agent 2 stops on SIGTERM");
    assert!(mesh_devices(&host_2).is_empty(), "no mesh device on host 2 after its agent stopped");
    assert!(!Path::new(&socket_path(&devices[1])).exists(), "the stopped agent removed its socket");
    let routes = host_2.run("ip", &["route", "show"]).expect("ip route").stdout;
    assert!(!routes.contains(&subnet_1), "no route to host 1's subnet on host 2:\n{routes}");
    lab.restart_agent(1).expect("start agent 2 with the default port");
    lab.wait_for_hosts_up().expect("host 2 is UP again");

    for file in [&client_file, &server_file] {
        let down = lab.cli(&["down", file]).expect("down runs");
        assert!(down.success(), "down {file} failed: {}\n{}", down.stderr, lab.logs());
    }

    let run_id = lab.run_id.clone();
    drop(lab);

    for device in &devices {
        let socket = socket_path(device);
        let deadline = std::time::Instant::now() + SOCKET_REMOVAL_TIMEOUT;
        while Path::new(&socket).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!Path::new(&socket).exists(), "{socket} is removed");
    }
    let root_links = std::process::Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link runs");
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    for device in &devices {
        assert!(!root_links.contains(device.as_str()), "no {device} in the root namespace:\n{root_links}");
    }
    let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output().expect("ip netns runs");
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(!namespaces.contains(&run_id), "the lab's namespaces are removed:\n{namespaces}");
}
