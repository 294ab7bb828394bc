//! Cluster DNS across two lab hosts. Silo `web` runs two httpd instances, one per host, and a
//! client silo on host 1 resolves them through its host's resolver on the bridge address:
//! `web.silo` lists both instances' addresses, `1.web.silo` only instance 1's, and
//! `http://web.silo/` returns the page. The client's `/etc/resolv.conf` names the bridge
//! address and the `silo` search domain, and the queries still reach the resolver after host
//! 1's `INPUT` policy becomes DROP.

use colex_cluster_tests::table::parse_table;
use colex_cluster_tests::{require_root, Lab};

/// Text of the page both `web` instances serve.
const PAGE_TEXT: &str = "page of the web silo";
/// Marker lines the client prints around each part of one round of lookups.
const ALL_MARKER: &str = "== all";
const ONE_MARKER: &str = "== one";
const PAGE_MARKER: &str = "== page";
const END_MARKER: &str = "== end";
const IPTABLES: &str = "/usr/sbin/iptables";
/// The agents' default WireGuard mesh port.
const MESH_PORT: &str = "51820";

/// Returns a silo file with silo `web`: two httpd instances spread over the hosts.
fn web_silo() -> String {
    r#"
Silo "web" {
  name  = "web"
  count = 2

  binary {
    path = "/bin/httpd"
    args = ["-f", "-p", "80", "-h", "/www"]
  }

  file "page" {
    path      = "page.html"
    silo_path = "/www/index.html"
  }

  placement {
    strategy = "spread"
  }
}
"#
    .to_owned()
}

/// Returns a silo file with a client silo on `host` that prints its `/etc/resolv.conf` once,
/// then looks up `web.silo` and `1.web.silo`
/// with busybox nslookup and fetches `http://web.silo/` every second, with marker lines around
/// each part. busybox 1.35's wget crashes on a refused connection when given `-q`, so its
/// progress output goes to /dev/null instead.
fn client_silo(host: &str) -> String {
    format!(
        r#"
Silo "client" {{
  name = "dns-client"

  binary {{
    path = "/bin/sh"
    args = ["-c", "cat /etc/resolv.conf; while true; do echo '{ALL_MARKER}'; nslookup web.silo 2>&1; echo '{ONE_MARKER}'; nslookup 1.web.silo 2>&1; echo '{PAGE_MARKER}'; wget -O - http://web.silo/ 2>/dev/null; echo '{END_MARKER}'; sleep 1; done"]
  }}

  placement {{
    hosts = ["{host}"]
  }}
}}
"#
    )
}

/// Returns the addresses of the UP rows of `list` named `web[0]` and `web[1]`, in index order,
/// once both are UP with an address.
fn web_addresses(lab: &Lab) -> anyhow::Result<Option<(String, String)>> {
    let listed = lab.cli(&["list"])?;
    let rows = parse_table(&listed.stdout);
    let address_of = |name: &str| {
        rows.iter()
            .find(|row| row.get("NAME").map(String::as_str) == Some(name))
            .filter(|row| row.get("STATE").map(String::as_str) == Some("UP"))
            .and_then(|row| row.get("ADDRESSES").cloned())
            .filter(|address| address.starts_with("10.69."))
    };
    Ok(address_of("web[0]").zip(address_of("web[1]")))
}

/// One complete round of the client's output: the text of each part.
struct Round {
    all: String,
    one: String,
    page: String,
}

/// Returns the last complete round in the client's output.
fn last_round(output: &str) -> Option<Round> {
    let end = output.rfind(END_MARKER)?;
    let start = output[..end].rfind(ALL_MARKER)?;
    let round = &output[start..end];
    let one_at = round.find(ONE_MARKER)?;
    let page_at = round.find(PAGE_MARKER)?;
    Some(Round {
        all: round[..one_at].to_owned(),
        one: round[one_at..page_at].to_owned(),
        page: round[page_at..].to_owned(),
    })
}

/// Returns the addresses that busybox nslookup lists in `text` as `Address: A` lines after a
/// `Name:` line, leaving out the server's own `Address:` line.
fn looked_up(text: &str) -> Vec<String> {
    let mut addresses = Vec::new();
    let mut after_name = false;
    for line in text.lines() {
        if line.starts_with("Name:") {
            after_name = true;
        } else if let Some(address) = line.strip_prefix("Address:").filter(|_| after_name) {
            addresses.push(address.trim().to_owned());
        }
    }
    addresses.sort();
    addresses
}

#[test]
fn silo_names_resolve_across_hosts() {
    if !require_root("silo_names_resolve_across_hosts") {
        return;
    }
    let lab = Lab::start(2).expect("lab starts");
    let host_1 = lab.hosts[0].clone();

    lab.write_file("page.html", &format!("{PAGE_TEXT}\n")).expect("page");
    let web_file = lab.write_file("web.hcl", &web_silo()).expect("web file");
    let web_file = web_file.to_str().expect("utf-8 path").to_owned();
    let up = lab.cli(&["up", &web_file]).expect("up runs");
    assert!(up.success(), "up web failed: {}\n{}", up.stderr, lab.logs());

    let mut web = (String::new(), String::new());
    lab.wait_until("both web instances are UP with addresses", |lab| {
        Ok(web_addresses(lab)?.map(|found| web = found).is_some())
    })
    .unwrap_or_else(|error| panic!("{error:#}"));
    let (web_0, web_1) = web;
    let prefix_0 = web_0.rsplit_once('.').map(|(network, _)| network).unwrap_or_default();
    assert!(!web_1.starts_with(&format!("{prefix_0}.")), "spread puts the instances on two hosts: {web_0} and {web_1}");

    let client_file = lab.write_file("client.hcl", &client_silo(&host_1.name)).expect("client file");
    let client_file = client_file.to_str().expect("utf-8 path").to_owned();
    let up = lab.cli(&["up", &client_file]).expect("up runs");
    assert!(up.success(), "up client failed: {}\n{}", up.stderr, lab.logs());

    let mut both = vec![web_0.clone(), web_1.clone()];
    both.sort();
    let mut last_output = String::new();
    let resolved = lab.wait_until("the client resolves web.silo and fetches its page", |lab| {
        let output = lab.cli(&["logs", "dns-client"])?;
        last_output = output.stdout;
        let Some(round) = last_round(&last_output) else {
            return Ok(false);
        };
        Ok(looked_up(&round.all) == both && round.page.contains(PAGE_TEXT))
    });
    if let Err(error) = resolved {
        panic!("{error:#}\nclient output:\n{last_output}\n{}", lab.logs());
    }

    let round = last_round(&last_output).expect("a complete round");
    assert_eq!(looked_up(&round.all), both, "web.silo lists both instances:\n{}", round.all);
    assert_eq!(looked_up(&round.one), [web_1], "1.web.silo lists instance 1 only:\n{}", round.one);
    assert!(round.page.contains(PAGE_TEXT), "the page through web.silo:\n{}", round.page);

    let resolv_conf = last_output.split(ALL_MARKER).next().unwrap_or_default();
    assert!(resolv_conf.contains("nameserver 10.69."), "the client's resolv.conf names its bridge:\n{resolv_conf}");
    assert!(resolv_conf.contains("search silo"), "the client's resolv.conf searches silo:\n{resolv_conf}");

    // With a DROP policy on host 1's INPUT chain, only the agent's own accept chain, which
    // INPUT jumps to first, lets the client's queries reach the resolver. Replies on the
    // controller session and the mesh stay accepted by the test's conntrack rule.
    let input = host_1.run(IPTABLES, &["-S", "INPUT"]).expect("iptables runs").stdout;
    assert_eq!(input.lines().nth(1), Some("-A INPUT -j colex-input"), "INPUT jumps to colex-input first:\n{input}");
    let chain = host_1.run(IPTABLES, &["-S", "colex-input"]).expect("iptables runs").stdout;
    assert_eq!(chain.lines().filter(|line| line.contains("--dport 53 ") && line.ends_with("-j ACCEPT")).count(), 2, "UDP and TCP accept rules:\n{chain}");
    for args in [
        &["-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"][..],
        &["-A", "INPUT", "-p", "udp", "--dport", MESH_PORT, "-j", "ACCEPT"][..],
        &["-P", "INPUT", "DROP"][..],
    ] {
        let output = host_1.run(IPTABLES, args).expect("iptables runs");
        assert!(output.success(), "iptables {args:?} on host 1: {}", output.stderr);
    }
    let rounds_before = last_output.matches(END_MARKER).count();
    let resolved = lab.wait_until("the client still resolves web.silo behind a DROP policy", |lab| {
        let output = lab.cli(&["logs", "dns-client"])?;
        last_output = output.stdout;
        let Some(round) = last_round(&last_output) else {
            return Ok(false);
        };
        let rounds = last_output.matches(END_MARKER).count();
        Ok(rounds >= rounds_before + 2 && looked_up(&round.all) == both)
    });
    if let Err(error) = resolved {
        panic!("{error:#}\nclient output:\n{last_output}\n{}", lab.logs());
    }
}
