//! A cluster bootstrapped with `--cluster-cidr 10.70.0.0/16`: hosts get subnets in it, a silo
//! gets an address in it that another host reaches through the mesh, and the MASQUERADE rule
//! of an `internet_access` silo excludes that network. Invalid values are rejected with one line
//! that names the value and the fix.
//!
//! The lab passes the network through `COLEX_CLUSTER_CIDR`, which this binary's only test sets
//! before it starts the controller.

use std::process::Command;

use colex_cluster_tests::mesh_tools::{host_subnet, up, wait_for_silo_address};
use colex_cluster_tests::{require_root, Lab};

/// Cluster network the lab bootstraps with, other than the default 10.69.0.0/16.
const CLUSTER_CIDR: &str = "10.70.0.0/16";
/// First two bytes of every address in [`CLUSTER_CIDR`], with the trailing dot.
const CLUSTER_PREFIX: &str = "10.70.";
/// Environment variable `colex-controller` reads `--cluster-cidr` from.
const CLUSTER_CIDR_VAR: &str = "COLEX_CLUSTER_CIDR";

fn web_silo(host: &str) -> String {
    format!(
        r#"
Silo "web" {{
  name = "cidr-web"

  binary {{
    path = "/bin/sh"
    args = ["-c", "echo 'page of cidr-web' > /tmp/index.html && exec httpd -f -p 80 -h /tmp"]
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

/// Runs `colex-controller --bootstrap` with `args` and returns its exit code and standard error.
fn controller_rejects(lab: &Lab, args: &[&str]) -> (Option<i32>, String) {
    let data_dir = lab.dir.path().join("rejected-controller");
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let output = Command::new(lab.bins.join("colex-controller"))
        .args(["--bootstrap", "--listen", "127.0.0.1:0", "--data-dir", data_dir])
        .args(args)
        .env_remove(CLUSTER_CIDR_VAR)
        .output()
        .expect("colex-controller runs");
    assert!(
        !lab.dir.path().join("rejected-controller").exists(),
        "a rejected value creates no data folder"
    );
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn configured_cluster_cidr_is_used() {
    if !require_root("configured_cluster_cidr_is_used") {
        return;
    }
    // This binary runs one test, so no other thread reads the environment while it changes.
    std::env::set_var(CLUSTER_CIDR_VAR, CLUSTER_CIDR);
    let lab = Lab::start(2).expect("lab starts");
    let (host_1, host_2) = (lab.hosts[0].clone(), lab.hosts[1].clone());

    for host in [&host_1, &host_2] {
        let subnet = host_subnet(&lab, host).expect("list runs").expect("host is listed");
        assert!(subnet.starts_with(CLUSTER_PREFIX), "subnet of {} in {CLUSTER_CIDR}: {subnet}", host.name);
        assert!(subnet.ends_with(".0/24"), "subnet of {} is a /24: {subnet}", host.name);
        let stored = std::fs::read_to_string(host.state_dir.join("cluster-network")).expect("agent stores the cluster network");
        assert_eq!(stored.trim(), CLUSTER_CIDR, "cluster network the agent of {} received", host.name);
    }

    up(&lab, "web.hcl", &web_silo(&host_1.name)).expect("up web");
    let address = wait_for_silo_address(&lab, "cidr-web").expect("web is UP");
    assert!(address.starts_with(CLUSTER_PREFIX), "silo address in {CLUSTER_CIDR}: {address}");

    // Host 2 reaches the silo on host 1 through the mesh, which routes the configured network.
    assert_eq!(host_2.fetch_page(&address), "page of cidr-web\n");

    let nat = host_1.run("iptables-save", &["-t", "nat"]).expect("iptables-save").stdout;
    let rule = nat
        .lines()
        .find(|line| line.contains("MASQUERADE") && line.contains(&address))
        .unwrap_or_else(|| panic!("MASQUERADE rule of {address}:\n{nat}"));
    assert!(rule.contains(&format!("! -d {CLUSTER_CIDR}")), "the rule excludes {CLUSTER_CIDR}: {rule}");
    assert!(!nat.contains("10.69.0.0/16"), "no rule uses the default network:\n{nat}");

    // Invalid values fail at once with one line naming the value and the fix.
    let cases = [
        (vec!["--cluster-cidr", "10.70.1.0/16"], "invalid --cluster-cidr 10.70.1.0/16: host bits are set; use 10.70.0.0/16"),
        (vec!["--cluster-cidr", "10.70.0.0"], "expected an IPv4 network such as 10.70.0.0/16"),
        (vec!["--cluster-cidr", "10.70.0.0/16", "--host-prefix", "12"], "invalid --host-prefix 12"),
    ];
    for (args, expected) in cases {
        let (code, stderr) = controller_rejects(&lab, &args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }

    let down = lab.cli(&["down", "--name", "cidr-web"]).expect("down runs");
    assert!(down.success(), "down failed: {}", down.stderr);
}
