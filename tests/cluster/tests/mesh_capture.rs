//! Traffic on the lab bridge while a silo on host 1 fetches a page from a silo on host 3 by
//! `NAME.silo`. A capture of the packets between the two host addresses contains WireGuard UDP
//! in both directions and no plain HTTP: no TCP port 80, no page text and no request line. The
//! server logs the client silo's own address.

use std::time::Duration;

use colex_cluster_tests::mesh_tools::{requests_from, response_count, silo_logs, up, wait_for_silo_address, Capture};
use colex_cluster_tests::{require_root, Lab};

/// Text of the served page, unlikely to occur in any other packet.
const PAGE_TEXT: &str = "cx capture page 7d1f";
/// Request line of the client's fetch, which plain HTTP would carry as is.
const REQUEST_LINE: &str = "GET /index.html HTTP";
/// The agents' default WireGuard port.
const MESH_PORT: u16 = 51820;
/// Fetches the client must complete while the capture runs.
const CAPTURED_FETCHES: usize = 3;

fn server_silo(host: &str) -> String {
    format!(
        r#"
Silo "server" {{
  name = "cap-server"

  binary {{
    path = "/bin/httpd"
    args = ["-f", "-v", "-p", "80", "-h", "/www"]
  }}

  file "page" {{
    path      = "cap-page.html"
    silo_path = "/www/index.html"
  }}

  placement {{
    hosts = ["{host}"]
  }}
}}
"#
    )
}

/// Returns a silo file with a client on `host` that fetches the page by the server's silo name
/// every second and prints it. Not `internet_access`, so nothing is masqueraded on its way. The Debian 12 busybox wget
/// crashed here with `-q` or with `-O FILE` for a `.silo` name, so it writes to standard output
/// and its progress output goes to /dev/null.
fn client_silo(host: &str) -> String {
    format!(
        r#"
Silo "client" {{
  name = "cap-client"

  binary {{
    path = "/bin/sh"
    args = ["-c", "while true; do wget -O - http://cap-server.silo/index.html 2>/dev/null; sleep 1; done"]
  }}

  placement {{
    hosts = ["{host}"]
  }}
}}
"#
    )
}

fn page_count(lab: &Lab) -> usize {
    silo_logs(lab, "cap-client", false)
        .map(|out| out.lines().filter(|line| line.contains(PAGE_TEXT)).count())
        .unwrap_or(0)
}

/// Returns true when `haystack` contains `needle` as consecutive bytes.
fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[test]
fn mesh_carries_no_plain_http() {
    if !require_root("mesh_carries_no_plain_http") {
        return;
    }
    let lab = Lab::start(3).expect("lab starts");
    let (host_1, host_3) = (lab.hosts[0].clone(), lab.hosts[2].clone());

    lab.write_file("cap-page.html", &format!("{PAGE_TEXT}\n")).expect("page");
    up(&lab, "server.hcl", &server_silo(&host_3.name)).expect("up server");
    wait_for_silo_address(&lab, "cap-server").expect("server is UP");
    up(&lab, "client.hcl", &client_silo(&host_1.name)).expect("up client");
    let client_address = wait_for_silo_address(&lab, "cap-client").expect("client is UP");
    let fetched = lab.wait_until("the client fetched the page by name", |lab| Ok(page_count(lab) > 0));
    if let Err(error) = fetched {
        let client_errors = silo_logs(&lab, "cap-client", true).unwrap_or_default();
        panic!("fetch by NAME.silo across hosts: {error:#}\nclient's standard error:\n{client_errors}");
    }

    // Only packets between the two hosts: the controller's gRPC traffic, which carries silo
    // logs with the page text, uses the controller's address and stays out of the capture.
    let filter = format!("host {} and host {}", host_1.address, host_3.address);
    let mut capture = Capture::start(&lab, lab.lab_netns(), "cxlab", &filter, "mesh").expect("tcpdump starts");
    let before = page_count(&lab);
    lab.wait_until("the client fetched the page during the capture", |lab| {
        Ok(page_count(lab) >= before + CAPTURED_FETCHES)
    })
    .expect("fetches during the capture");
    // A fetch counted above may still be finishing its last packets.
    std::thread::sleep(Duration::from_millis(500));
    let (packets, pcap) = capture.stop().expect("tcpdump stops");

    assert!(!packets.is_empty(), "the capture saw no packets at all");
    let forward = format!("{}.{MESH_PORT} > {}.{MESH_PORT}: UDP", host_1.address, host_3.address);
    let backward = format!("{}.{MESH_PORT} > {}.{MESH_PORT}: UDP", host_3.address, host_1.address);
    let forward_count = packets.iter().filter(|line| line.contains(&forward)).count();
    let backward_count = packets.iter().filter(|line| line.contains(&backward)).count();
    eprintln!(
        "captured {} packets: {forward_count} WireGuard host 1 to 3, {backward_count} WireGuard host 3 to 1",
        packets.len()
    );
    assert!(forward_count > 0, "WireGuard UDP from host 1 to host 3 in:\n{}", packets.join("\n"));
    assert!(backward_count > 0, "WireGuard UDP from host 3 to host 1 in:\n{}", packets.join("\n"));
    let other: Vec<&String> = packets
        .iter()
        .filter(|line| !line.contains(&forward) && !line.contains(&backward) && !line.contains(" ARP, "))
        .collect();
    assert!(other.is_empty(), "only WireGuard and ARP between the hosts, but also:\n{other:?}");
    let http: Vec<&String> = packets.iter().filter(|line| line.contains(".80 ") || line.contains(".80:")).collect();
    assert!(http.is_empty(), "no TCP port 80 on the bridge:\n{http:?}");
    assert!(!contains_bytes(&pcap, PAGE_TEXT.as_bytes()), "the page text crossed the bridge in plain");
    assert!(!contains_bytes(&pcap, REQUEST_LINE.as_bytes()), "the request line crossed the bridge in plain");

    // The server saw the client silo's own address on every request.
    let server_log = silo_logs(&lab, "cap-server", true).expect("server logs");
    let from_client = requests_from(&server_log, &client_address);
    assert!(from_client >= CAPTURED_FETCHES, "requests from {client_address} in:\n{server_log}");
    assert_eq!(from_client, response_count(&server_log), "every request comes from {client_address}:\n{server_log}");
}
