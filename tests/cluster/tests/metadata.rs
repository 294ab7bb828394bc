//! The metadata service across two lab hosts. Silos `reader` (no grant) and `admin`
//! (`grants.query_silos = true`) run on host 1, silo `target` on host 2.
//!
//! - `reader` reads its own metadata through `$METADATA_ENDPOINT` with busybox wget.
//! - From inside the silos' network namespaces the test sends further requests with curl. The
//!   service identifies callers by source address, so these count as the silos' own requests.
//!   `reader` gets 403 for `target` and for `admin`, while `admin` gets both, with network
//!   counters read by the agent for the silo on its own host and relayed by the controller for
//!   the silo on host 2.
//! - `reader` with `admin`'s address added to its interface gets no reply when it sends from
//!   that address, because the anti-spoofing filter on its veth drops the packets, and its ARP
//!   packets claiming that address are dropped too.
//! - Two restarts of host 1's agent, which adopts its silos, leave each silo's veth with its
//!   one filter.
//! - Stopping `admin` removes its veth with its filter and leaves `reader`'s access working,
//!   and after `down` the hosts are as before.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use colex_cluster_tests::ledger::Ledger;
use colex_cluster_tests::process::run_with_timeout;
use colex_cluster_tests::{require_root, Host, Lab, SETTLE_TIMEOUT};
use serde_json::Value;

/// The agents' default metadata port.
const METADATA_PORT: u16 = 17832;
/// Marker lines the reader prints around each reply to its own request.
const SELF_MARKER: &str = "== self";
const END_MARKER: &str = "== end";
/// Time curl waits for a reply. A forged request must still have none after it.
const CURL_MAX_SECONDS: &str = "3";
const IPTABLES: &str = "/usr/sbin/iptables";
/// Prefix of the host-side veth names, followed by the silo id.
const HOST_VETH_PREFIX: &str = "cx";
/// Name of the anti-spoofing program in `tc filter show`.
const ANTISPOOF_PROGRAM: &str = "colex_antispoof";
/// The busybox binary the agents make their image from, used here for its `arping`.
const BUSYBOX: &str = "/bin/busybox";

/// Returns the silo file: `reader` and `admin` on `host_1`, `target` on `host_2`. `reader`
/// prints its environment's endpoint once, then fetches `$METADATA_ENDPOINT/self` every
/// second. busybox 1.35's wget crashes on a refused connection when given `-T`, so it gets no
/// timeout, and the service always replies or closes the connection.
fn silo_file(host_1: &str, host_2: &str) -> String {
    format!(
        r#"
Silo "reader" {{
  name  = "reader"
  class = "tools"
  tags  = ["blue", "green"]

  binary {{
    path = "/bin/sh"
    args = ["-c", "echo endpoint=$METADATA_ENDPOINT; while true; do echo '{SELF_MARKER}'; wget -O - $METADATA_ENDPOINT/self 2>&1; echo '{END_MARKER}'; sleep 1; done"]
  }}

  placement {{
    hosts = ["{host_1}"]
  }}
}}

Silo "admin" {{
  name   = "admin"
  grants = {{ query_silos = true }}

  binary {{
    path = "/bin/sleep"
    args = ["100000"]
  }}

  placement {{
    hosts = ["{host_1}"]
  }}
}}

Silo "target" {{
  name = "target"

  binary {{
    path = "/bin/httpd"
    args = ["-f", "-p", "80", "-h", "/"]
  }}

  placement {{
    hosts = ["{host_2}"]
  }}
}}
"#
    )
}

/// A running silo as its agent's state folder records it.
#[derive(Debug, Clone)]
struct SiloOnHost {
    silo_id: String,
    address: String,
    init_pid: u32,
}

/// Returns the started silos that `host`'s agent records, from the `silo.json` files in its
/// run folder.
fn recorded_silos(host: &Host) -> Vec<SiloOnHost> {
    let Ok(entries) = std::fs::read_dir(host.run_dir().join("silos")) else {
        return Vec::new();
    };
    let mut silos = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Ok(text) = std::fs::read_to_string(entry.path().join("silo.json")) else {
            continue;
        };
        let Ok(record) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let fields = (
            record["silo_id"].as_str(),
            record["address"].as_str(),
            record["init_pid"].as_u64().and_then(|pid| u32::try_from(pid).ok()),
            record["started"].as_bool(),
        );
        if let (Some(silo_id), Some(address), Some(init_pid), Some(true)) = fields {
            silos.push(SiloOnHost {
                silo_id: silo_id.to_owned(),
                address: address.to_owned(),
                init_pid,
            });
        }
    }
    silos
}

/// Returns the address of the UP row of `list` named `name`, once it has one.
fn listed_address(lab: &Lab, name: &str) -> anyhow::Result<Option<String>> {
    let listed = lab.cli(&["list"])?;
    let rows = colex_cluster_tests::table::parse_table(&listed.stdout);
    Ok(rows
        .iter()
        .find(|row| row.get("NAME").map(String::as_str) == Some(name))
        .filter(|row| row.get("STATE").map(String::as_str) == Some("UP"))
        .and_then(|row| row.get("ADDRESSES").cloned())
        .filter(|address| address.starts_with("10.69.")))
}

/// Reply to one request: HTTP status (0 when there was none), body and curl's error output.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    stderr: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("body is not JSON ({error}): {:?}", self.body))
    }
}

/// Sends `GET url` with curl from inside the network namespace of process `pid`, from source
/// address `source` when given.
fn curl_in_silo(pid: u32, url: &str, source: Option<&str>) -> Reply {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("--")
        .arg("curl")
        .args(["--silent", "--show-error", "--max-time", CURL_MAX_SECONDS, "--write-out", "\n%{http_code}"]);
    if let Some(source) = source {
        command.args(["--interface", source]);
    }
    command.arg(url).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let output = run_with_timeout(command, Duration::from_secs(20)).expect("curl runs");
    let (body, status) = output.stdout.rsplit_once('\n').unwrap_or(("", output.stdout.as_str()));
    Reply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        stderr: output.stderr,
    }
}

/// Sends `GET url` from process `pid`'s namespace until the status is `status` and `accept`
/// returns true, for at most [`SETTLE_TIMEOUT`], and returns that reply.
fn curl_until(pid: u32, url: &str, status: u16, mut accept: impl FnMut(&Reply) -> bool) -> Reply {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let reply = curl_in_silo(pid, url, None);
        if reply.status == status && accept(&reply) {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "GET {url} never returned {status} as expected; last reply {reply:?}\n{}",
            network_state(pid)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Returns the addresses, neighbours and routes of process `pid`'s network namespace, for
/// failure messages.
fn network_state(pid: u32) -> String {
    let mut text = String::new();
    for (what, args) in [
        ("silo addresses", &["-br", "addr"][..]),
        ("silo neighbours", &["neigh"][..]),
        ("silo routes", &["route"][..]),
    ] {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .arg("--")
            .arg("ip")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = run_with_timeout(command, Duration::from_secs(20)).map(|output| output.stdout + &output.stderr);
        text.push_str(&format!("--- {what}\n{}\n", output.unwrap_or_else(|error| format!("{error:#}"))));
    }
    text
}

/// Runs `ip` in process `pid`'s network namespace and panics when it fails.
fn ip_in_silo(pid: u32, args: &[&str]) {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg("--")
        .arg("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = run_with_timeout(command, Duration::from_secs(20)).expect("ip runs");
    assert!(output.success(), "ip {args:?} in the namespace of {pid}: {}", output.stderr);
}

/// Returns the anti-spoofing filters on the ingress of the host-side veth of `silo_id`.
fn antispoof_filters(host: &Host, silo_id: &str) -> usize {
    let veth = format!("{HOST_VETH_PREFIX}{silo_id}");
    let Ok(listing) = host.run("tc", &["filter", "show", "dev", &veth, "ingress"]) else {
        return 0;
    };
    listing.stdout.lines().filter(|line| line.contains(ANTISPOOF_PROGRAM)).count()
}

/// Returns the packets dropped at the ingress of the host-side veth of `silo_id`.
fn dropped_packets(host: &Host, silo_id: &str) -> u64 {
    let veth = format!("{HOST_VETH_PREFIX}{silo_id}");
    let listing = host.run("tc", &["-s", "qdisc", "show", "dev", &veth, "ingress"]).expect("tc runs");
    listing
        .stdout
        .split("(dropped ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ']).next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no drop count for {veth} in:\n{}", listing.stdout))
}

/// Returns the rules of `host`'s `colex-input` chain for the metadata port.
fn metadata_input_rules(host: &Host) -> usize {
    let chain = host.run(IPTABLES, &["-S", "colex-input"]).expect("iptables runs");
    chain
        .stdout
        .lines()
        .filter(|line| line.contains(&format!("--dport {METADATA_PORT} ")))
        .count()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn metadata_grants_and_spoofing() {
    if !require_root("metadata_grants_and_spoofing") {
        return;
    }
    let mut lab = Lab::start(2).expect("lab starts");
    let (host_1, host_2) = (lab.hosts[0].clone(), lab.hosts[1].clone());
    let ledgers_before: Vec<Ledger> = lab.hosts.iter().map(|host| Ledger::take(host).expect("ledger")).collect();

    let file = lab.write_file("metadata.hcl", &silo_file(&host_1.name, &host_2.name)).expect("silo file");
    let up = lab.cli(&["up", path_str(&file)]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    let mut addresses = Vec::new();
    lab.wait_until("every silo is UP with an address", |lab| {
        addresses.clear();
        for name in ["reader", "admin", "target"] {
            match listed_address(lab, name)? {
                Some(address) => addresses.push(address),
                None => return Ok(false),
            }
        }
        Ok(true)
    })
    .unwrap_or_else(|error| panic!("{error:#}"));
    let (reader_address, admin_address, target_address) = (addresses[0].clone(), addresses[1].clone(), addresses[2].clone());
    let on_host_1 = recorded_silos(&host_1);
    let reader = on_host_1.iter().find(|silo| silo.address == reader_address).expect("reader recorded").clone();
    let admin = on_host_1.iter().find(|silo| silo.address == admin_address).expect("admin recorded").clone();
    let gateway_1 = format!("{}.1", reader_address.rsplit_once('.').expect("IPv4 address").0);
    let endpoint_1 = format!("http://{gateway_1}:{METADATA_PORT}");

    // The reader's own request through $METADATA_ENDPOINT with busybox wget.
    let mut own_line = String::new();
    let mut last_output = String::new();
    let read = lab.wait_until("the reader prints its own metadata", |lab| {
        last_output = lab.cli(&["logs", "reader"])?.stdout;
        let Some(end) = last_output.rfind(END_MARKER) else {
            return Ok(false);
        };
        let Some(start) = last_output[..end].rfind(SELF_MARKER) else {
            return Ok(false);
        };
        match last_output[start..end].lines().find(|line| line.starts_with('{')) {
            Some(line) => {
                own_line = line.to_owned();
                Ok(true)
            }
            None => Ok(false),
        }
    });
    if let Err(error) = read {
        panic!("{error:#}\nreader output:\n{last_output}\n{}", lab.logs());
    }
    assert!(last_output.contains(&format!("endpoint={endpoint_1}\n")), "METADATA_ENDPOINT in the reader:\n{last_output}");
    let own: Value = serde_json::from_str(&own_line).expect("own metadata is JSON");
    eprintln!("reader's own metadata: {own}");
    assert_eq!(own["name"], "reader", "{own}");
    assert_eq!(own["index"], 0, "{own}");
    assert_eq!(own["id"], reader.silo_id.as_str(), "{own}");
    assert_eq!(own["class"], "tools", "{own}");
    assert_eq!(own["tags"], serde_json::json!(["blue", "green"]), "{own}");
    assert_eq!(own["host"], host_1.name.as_str(), "{own}");
    assert_eq!(own["addresses"], serde_json::json!([reader_address]), "{own}");
    assert!(own["started_at_unix"].as_u64().is_some_and(|seconds| seconds > 1_600_000_000), "{own}");
    assert!(own["started_at"].as_str().is_some_and(|text| text.ends_with('Z')), "{own}");
    assert!(own.get("network").is_none(), "own metadata has no counters: {own}");

    // The list needs no grant.
    let list = curl_until(reader.init_pid, &format!("{endpoint_1}/list"), 200, |reply| reply.body.contains("\"target\""));
    let listed = list.json();
    let names: Vec<&str> = listed["silos"].as_array().expect("silos array").iter().filter_map(|silo| silo["name"].as_str()).collect();
    assert_eq!(names, ["admin", "reader", "target"], "{listed}");

    // Without the grant: 403 naming it, for a silo on another host and on this one.
    for path in ["/silos/target/0", "/silos/target", "/silos/admin/0"] {
        let reply = curl_in_silo(reader.init_pid, &format!("{endpoint_1}{path}"), None);
        assert_eq!(reply.status, 403, "reader GET {path}: {reply:?}");
        assert!(reply.json()["error"].as_str().is_some_and(|error| error.contains("grants.query_silos")), "{reply:?}");
    }
    let unknown = curl_in_silo(reader.init_pid, &format!("{endpoint_1}/nope"), None);
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // With the grant: the silo on host 2, with the controller's counters once host 2 reported.
    let remote = curl_until(admin.init_pid, &format!("{endpoint_1}/silos/target/0"), 200, |reply| {
        reply.json()["network"]["rx_bytes"].is_u64()
    });
    let remote = remote.json();
    eprintln!("target on host 2, as admin sees it: {remote}");
    assert_eq!(remote["name"], "target", "{remote}");
    assert_eq!(remote["host"], host_2.name.as_str(), "{remote}");
    assert_eq!(remote["addresses"], serde_json::json!([target_address]), "{remote}");
    assert_eq!(remote["network"]["source"], "controller", "{remote}");
    assert!(remote["network"]["sampled_at_unix"].is_u64(), "{remote}");
    // The same host's silo, with counters the agent reads at the request.
    let local = curl_in_silo(admin.init_pid, &format!("{endpoint_1}/silos/reader/0"), None);
    assert_eq!(local.status, 200, "{local:?}");
    let local = local.json();
    eprintln!("reader on host 1, as admin sees it: {local}");
    assert_eq!(local["id"], reader.silo_id.as_str(), "{local}");
    assert_eq!(local["network"]["source"], "agent", "{local}");
    assert!(local["network"]["tx_packets"].as_u64().is_some_and(|packets| packets > 0), "{local}");
    let all = curl_in_silo(admin.init_pid, &format!("{endpoint_1}/silos/target"), None);
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(all.json()["silos"].as_array().map(Vec::len), Some(1), "{all:?}");
    let missing = curl_in_silo(admin.init_pid, &format!("{endpoint_1}/silos/nope"), None);
    assert_eq!(missing.status, 404, "{missing:?}");
    let missing_index = curl_in_silo(admin.init_pid, &format!("{endpoint_1}/silos/target/7"), None);
    assert_eq!(missing_index.status, 404, "{missing_index:?}");

    // A silo on host 2 without the grant gets 403 from its own host's service too.
    let target = recorded_silos(&host_2).into_iter().find(|silo| silo.address == target_address).expect("target recorded");
    let gateway_2 = format!("{}.1", target_address.rsplit_once('.').expect("IPv4 address").0);
    let endpoint_2 = format!("http://{gateway_2}:{METADATA_PORT}");
    let denied = curl_until(target.init_pid, &format!("{endpoint_2}/silos/admin/0"), 403, |_| true);
    assert!(denied.body.contains("grants.query_silos"), "{denied:?}");
    let target_own = curl_until(target.init_pid, &format!("{endpoint_2}/self"), 200, |_| true);
    assert_eq!(target_own.json()["host"], host_2.name.as_str(), "{target_own:?}");

    // Forgery: the reader sends from admin's address. Its veth's filter drops the packets, so
    // there is no reply at all, and the veth's drop counter grows.
    assert_eq!(antispoof_filters(&host_1, &reader.silo_id), 1, "one filter for the reader");
    let dropped_before = dropped_packets(&host_1, &reader.silo_id);
    let forged_source = format!("{admin_address}/32");
    ip_in_silo(reader.init_pid, &["addr", "add", &forged_source, "dev", "eth0"]);
    let forged = curl_in_silo(reader.init_pid, &format!("{endpoint_1}/silos/target/0"), Some(&admin_address));
    let arp_dropped_before = dropped_packets(&host_1, &reader.silo_id);
    let mut arping = Command::new("nsenter");
    arping
        .arg(format!("--net=/proc/{}/ns/net", reader.init_pid))
        .args(["--", BUSYBOX, "arping", "-c", "2", "-w", "2", "-I", "eth0", "-s", &admin_address, &gateway_1])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let arping = run_with_timeout(arping, Duration::from_secs(20)).expect("arping runs");
    ip_in_silo(reader.init_pid, &["addr", "del", &forged_source, "dev", "eth0"]);
    assert!(!arping.success(), "the gateway never replies to an ARP request from a forged sender: {arping:?}");
    let arp_dropped = dropped_packets(&host_1, &reader.silo_id);
    assert!(arp_dropped >= arp_dropped_before + 2, "the reader's filter dropped the forged ARP requests: {arp_dropped_before} then {arp_dropped}");
    eprintln!("forged request: {forged:?}");
    assert_eq!(forged.status, 0, "a forged request gets no reply: {forged:?}");
    assert!(forged.body.is_empty(), "{forged:?}");
    assert!(forged.stderr.contains("timed out"), "curl waits in vain: {:?}", forged.stderr);
    assert!(dropped_packets(&host_1, &reader.silo_id) > dropped_before, "the reader's filter dropped the forged packets");

    // Agent restarts adopt the silos, whose veths keep their one filter.
    for restart in 1..=2 {
        lab.kill_agent(0).expect("kill agent");
        lab.restart_agent(0).expect("restart agent");
        let own = curl_until(reader.init_pid, &format!("{endpoint_1}/self"), 200, |_| true);
        assert_eq!(own.json()["id"], reader.silo_id.as_str(), "after restart {restart}: {own:?}");
        for silo in [&reader, &admin] {
            assert_eq!(antispoof_filters(&host_1, &silo.silo_id), 1, "after restart {restart}: filter of {}", silo.silo_id);
        }
        assert_eq!(metadata_input_rules(&host_1), 2, "after restart {restart}: colex-input rules for the metadata port");
    }

    // Stopping admin removes its veth and filter only, and the reader's access keeps working.
    assert_eq!(antispoof_filters(&host_1, &admin.silo_id), 1, "one filter for admin");
    let down = lab.cli(&["down", "--name", "admin"]).expect("down runs");
    assert!(down.success(), "down admin failed: {}\n{}", down.stderr, lab.logs());
    assert_eq!(antispoof_filters(&host_1, &admin.silo_id), 0, "admin's filter is gone with its veth");
    assert_eq!(antispoof_filters(&host_1, &reader.silo_id), 1, "the reader's filter stays");
    let own_again = curl_in_silo(reader.init_pid, &format!("{endpoint_1}/self"), None);
    if own_again.status != 200 {
        let mut state = String::new();
        for args in [&["neigh"][..], &["-br", "link"][..]] {
            state.push_str(&host_1.run("ip", args).map(|output| output.stdout).unwrap_or_default());
        }
        state.push_str(&host_1.run(IPTABLES, &["-L", "-v", "-n"]).map(|output| output.stdout).unwrap_or_default());
        state.push_str(&host_1.run("ss", &["-tanp"]).map(|output| output.stdout).unwrap_or_default());
        panic!("{own_again:?}\n{}\n{state}\n{}", network_state(reader.init_pid), lab.logs());
    }
    assert_eq!(own_again.json()["id"], reader.silo_id.as_str(), "{own_again:?}");
    let after_admin = curl_until(reader.init_pid, &format!("{endpoint_1}/list"), 200, |reply| !reply.body.contains("\"admin\""));
    assert!(after_admin.body.contains("\"reader\""), "{after_admin:?}");

    // After `down` every host is as before the silos.
    let down = lab.cli(&["down", path_str(&file)]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
    for (host, before) in lab.hosts.iter().zip(&ledgers_before) {
        let after = Ledger::take(host).expect("ledger");
        assert_eq!(&after, before, "host {} after down", host.name);
    }
}
