//! NAT for silos with internet access: one MASQUERADE rule per silo in the colex-owned chain
//! `colex-masq` of the `nat` table, which `POSTROUTING` jumps to. Traffic to the cluster
//! network is never masqueraded, so a silo on another host receives packets from the sender
//! silo's own address.
//!
//! The host's DNS resolver for silos listens on the bridge address. So that an INPUT chain with a
//! DROP policy or rule cannot drop the silos' queries, the colex-owned chain `colex-input` of the
//! `filter` table accepts DNS from the bridge to that address, and `INPUT` jumps to it first.
//!
//! The same chain accepts TCP to the metadata service on the bridge address from the bridge and
//! drops it from every other interface. The service identifies callers by their source address,
//! and only packets from the bridge have passed the anti-spoofing filters on the silos' veths
//! (module `antispoof`). The chain ends with the isolation rules: from the bridge it accepts
//! only replies to connections the host opened, and drops everything else, so silos reach no
//! other service of the host.
//!
//! So that a FORWARD chain with a DROP policy cannot cut the silos off, `FORWARD` first jumps
//! to the colex-owned chain `colex-forward` of the `filter` table. That chain accepts what silos
//! send, replies to them, and traffic from the cluster network to them. It accepts only what a
//! FORWARD policy of ACCEPT lets through anyway: whether a silo reaches the internet is still
//! decided by its MASQUERADE rule.
//!
//! The rules live in the agent's network namespace, so agents in separate namespaces never see
//! each other's rules.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::RwLock;

use ipnet::Ipv4Net;
use tokio::process::Command;

use super::names;

/// Chain in the `nat` table that contains the silos' MASQUERADE rules.
pub const MASQUERADE_CHAIN: &str = "colex-masq";
/// Chain in the `filter` table that accepts the silos' DNS queries to the bridge address.
pub const INPUT_CHAIN: &str = "colex-input";
/// Chain in the `filter` table that accepts the silos' forwarded traffic.
pub const FORWARD_CHAIN: &str = "colex-forward";
/// Protocols of the DNS accept rules, which open the `colex-input` chain in this order.
const DNS_PROTOCOLS: [&str; 2] = ["udp", "tcp"];
/// Port of the DNS resolver on the bridge address.
const DNS_PORT: &str = "53";
/// The controller's default cluster network, for agents that have not yet received one in a
/// welcome and for controllers that do not send one.
const DEFAULT_CLUSTER_NETWORK: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 69, 0, 0), 16);
/// File in the agent's state folder that keeps the cluster network of the last welcome, so a
/// restarted agent builds the same MASQUERADE rules for its adopted silos before it reaches the
/// controller.
const CLUSTER_NETWORK_FILE: &str = "cluster-network";
/// The cluster's silo network, which the WireGuard mesh carries between hosts and MASQUERADE
/// rules leave alone. `None` until a welcome or the stored file sets it.
static CLUSTER_NETWORK: RwLock<Option<Ipv4Net>> = RwLock::new(None);
/// sysctl that lets the kernel route packets between the bridge and other interfaces.
const IP_FORWARD_PATH: &str = "/proc/sys/net/ipv4/ip_forward";
/// Places where Debian installs iptables; `PATH` may lack the sbin dirs.
const IPTABLES_PATHS: &[&str] = &["/usr/sbin/iptables", "/sbin/iptables"];

/// Errors of iptables handling.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("failed to run iptables {args}: {source}")]
    Spawn { args: String, source: io::Error },
    #[error("iptables {args} failed with {status}: {stderr}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("failed to enable IPv4 forwarding in {IP_FORWARD_PATH}: {source}")]
    IpForward { source: io::Error },
}

/// Returns the cluster network that MASQUERADE rules exclude.
pub fn cluster_network() -> Ipv4Net {
    // The value stays valid whatever panicked while the lock was held.
    let current = *CLUSTER_NETWORK.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    current.unwrap_or(DEFAULT_CLUSTER_NETWORK)
}

fn set_cluster_network(network: Ipv4Net) {
    *CLUSTER_NETWORK.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(network);
}

/// Sets the cluster network from the file a previous session stored in `state_dir`, if any.
pub async fn restore_cluster_network(state_dir: &Path) {
    let path = state_dir.join(CLUSTER_NETWORK_FILE);
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the stored cluster network; using 10.69.0.0/16 until the welcome");
            return;
        }
    };
    match text.trim().parse::<Ipv4Net>() {
        Ok(network) => set_cluster_network(network),
        Err(error) => tracing::warn!(path = %path.display(), %error, "invalid stored cluster network; using 10.69.0.0/16 until the welcome"),
    }
}

/// Sets the cluster network from a welcome's `cluster_network` field and stores it in
/// `state_dir`. An empty field, from a controller that predates the field, means the default.
pub async fn adopt_cluster_network(state_dir: &Path, cidr: &str) {
    let network = if cidr.is_empty() {
        DEFAULT_CLUSTER_NETWORK
    } else {
        match cidr.parse::<Ipv4Net>() {
            Ok(network) => network.trunc(),
            Err(error) => {
                tracing::error!(cluster_network = %cidr, %error, "the controller sent an invalid cluster network; keeping {}", cluster_network());
                return;
            }
        }
    };
    let previous = cluster_network();
    if previous != network {
        // NOTE: MASQUERADE rules already added with the previous network keep it until their
        // silo stops. This happens only when a host moves to a cluster with another network.
        tracing::info!(%previous, %network, "cluster network from the controller");
    }
    set_cluster_network(network);
    let path = state_dir.join(CLUSTER_NETWORK_FILE);
    if let Err(error) = tokio::fs::write(&path, format!("{network}\n")).await {
        tracing::warn!(path = %path.display(), %error, "cannot store the cluster network; a restarted agent uses 10.69.0.0/16 until the welcome");
    }
}

/// Returns the rule specification of a silo's MASQUERADE rule, without table and command:
/// traffic from the silo address to outside the cluster network that leaves through any
/// interface but the bridge.
// NOTE: a rule that an agent without the cluster exclusion added no longer matches this spec, so
// it stays (and masquerades mesh traffic) until the chain is flushed at a start without adopted
// silos.
pub fn masquerade_rule(address: Ipv4Addr, bridge: &str, silo_id: &str) -> Vec<String> {
    masquerade_rule_in(address, bridge, silo_id, cluster_network())
}

/// Returns the MASQUERADE rule specification of [`masquerade_rule`] for the cluster network
/// `cluster`.
fn masquerade_rule_in(address: Ipv4Addr, bridge: &str, silo_id: &str, cluster: Ipv4Net) -> Vec<String> {
    vec![
        "-s".to_string(),
        format!("{address}/32"),
        "!".to_string(),
        "-d".to_string(),
        cluster.to_string(),
        "!".to_string(),
        "-o".to_string(),
        bridge.to_string(),
        "-j".to_string(),
        "MASQUERADE".to_string(),
        "-m".to_string(),
        "comment".to_string(),
        "--comment".to_string(),
        names::masquerade_comment(silo_id),
    ]
}

/// Creates the `colex-masq` chain if it is missing and makes `POSTROUTING` jump to it once.
pub async fn ensure_chain() -> Result<(), IptablesError> {
    if !succeeds(&["-t", "nat", "-S", MASQUERADE_CHAIN]).await? {
        run(&["-t", "nat", "-N", MASQUERADE_CHAIN]).await?;
    }
    let jump = ["-t", "nat", "-C", "POSTROUTING", "-j", MASQUERADE_CHAIN];
    if !succeeds(&jump).await? {
        run(&["-t", "nat", "-A", "POSTROUTING", "-j", MASQUERADE_CHAIN]).await?;
    }
    Ok(())
}

/// Removes every rule from the `colex-masq` chain, for an agent start when no silo runs.
pub async fn flush_chain() -> Result<(), IptablesError> {
    run(&["-t", "nat", "-F", MASQUERADE_CHAIN]).await
}

/// Returns the rule specifications that accept DNS queries over `protocol` ("udp" or "tcp") from
/// the silos on `bridge` to the resolver on `gateway`.
pub fn dns_accept_rule(gateway: Ipv4Addr, bridge: &str, protocol: &str) -> Vec<String> {
    [
        "-i", bridge, "-d", &format!("{gateway}/32"), "-p", protocol, "--dport", DNS_PORT, "-j", "ACCEPT", "-m",
        "comment", "--comment", "colex dns",
    ]
    .iter()
    .map(|arg| (*arg).to_string())
    .collect()
}

/// Returns the rule specifications that end the `colex-input` chain: replies to connections the
/// host opened are accepted from the silos on `bridge`, and every other packet from them is
/// dropped. So a silo reaches no service of the host (the agent, a controller, sshd) at any of
/// the host's addresses, except the DNS resolver and the metadata service accepted before them.
pub fn isolation_rules(bridge: &str) -> [Vec<String>; 2] {
    let replies = ["-i", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"];
    let rest = ["-i", bridge, "-j", "DROP"];
    let comment = ["-m", "comment", "--comment", "colex silo isolation"];
    [
        replies.iter().chain(&comment).map(|arg| (*arg).to_string()).collect(),
        rest.iter().chain(&comment).map(|arg| (*arg).to_string()).collect(),
    ]
}

/// Returns the rule specifications for the metadata service on `gateway`, TCP port `port`:
/// accept from the silos on `bridge`, then drop from every other interface.
pub fn metadata_rules(gateway: Ipv4Addr, bridge: &str, port: u16) -> [Vec<String>; 2] {
    let destination = format!("{gateway}/32");
    let port = port.to_string();
    let accept = [
        "-i", bridge, "-d", &destination, "-p", "tcp", "--dport", &port, "-j", "ACCEPT", "-m", "comment",
        "--comment", "colex metadata",
    ];
    let drop = [
        "!", "-i", bridge, "-d", &destination, "-p", "tcp", "--dport", &port, "-j", "DROP", "-m", "comment",
        "--comment", "colex metadata",
    ];
    [
        accept.iter().map(|arg| (*arg).to_string()).collect(),
        drop.iter().map(|arg| (*arg).to_string()).collect(),
    ]
}

/// Adds the metadata rules for `gateway`, `bridge` and `port` to the `colex-input` chain unless
/// they are there, in order, right after the DNS rules and so before the isolation rules. The
/// chain must exist, as after [`ensure_dns_accept`].
pub async fn ensure_metadata_accept(gateway: Ipv4Addr, bridge: &str, port: u16) -> Result<(), IptablesError> {
    for (offset, rule) in metadata_rules(gateway, bridge, port).iter().enumerate() {
        let mut check = vec!["-t", "filter", "-C", INPUT_CHAIN];
        check.extend(rule.iter().map(String::as_str));
        if succeeds(&check).await? {
            continue;
        }
        // iptables numbers rules from 1: the DNS rules come first.
        let position = (DNS_PROTOCOLS.len() + offset + 1).to_string();
        let mut insert = vec!["-t", "filter", "-I", INPUT_CHAIN, &position];
        insert.extend(rule.iter().map(String::as_str));
        run(&insert).await?;
    }
    Ok(())
}

/// Creates the `colex-input` chain if it is missing, makes it contain exactly the DNS accept
/// rules for `gateway` on `bridge` followed by the isolation rules, and makes `INPUT` jump to
/// it once, as its first rule. The chain's policy is untouched, and so is every other rule of
/// `INPUT`.
pub async fn ensure_dns_accept(gateway: Ipv4Addr, bridge: &str) -> Result<(), IptablesError> {
    if succeeds(&["-t", "filter", "-S", INPUT_CHAIN]).await? {
        run(&["-t", "filter", "-F", INPUT_CHAIN]).await?;
    } else {
        run(&["-t", "filter", "-N", INPUT_CHAIN]).await?;
    }
    for protocol in DNS_PROTOCOLS {
        let rule = dns_accept_rule(gateway, bridge, protocol);
        let mut args = vec!["-t", "filter", "-A", INPUT_CHAIN];
        args.extend(rule.iter().map(String::as_str));
        run(&args).await?;
    }
    for rule in isolation_rules(bridge) {
        let mut args = vec!["-t", "filter", "-A", INPUT_CHAIN];
        args.extend(rule.iter().map(String::as_str));
        run(&args).await?;
    }
    if !succeeds(&["-t", "filter", "-C", "INPUT", "-j", INPUT_CHAIN]).await? {
        run(&["-t", "filter", "-I", "INPUT", "1", "-j", INPUT_CHAIN]).await?;
    }
    Ok(())
}

/// Returns the rule specifications of the `colex-forward` chain for the silos on `bridge`:
/// everything they send, replies to them, and new connections from `cluster`, the other hosts'
/// silos.
pub fn forward_accept_rules(bridge: &str, cluster: Ipv4Net) -> Vec<Vec<String>> {
    let cluster = cluster.to_string();
    let rules: [&[&str]; 3] = [
        &["-i", bridge, "-j", "ACCEPT"],
        &["-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"],
        &["-o", bridge, "-s", &cluster, "-j", "ACCEPT"],
    ];
    let comment = ["-m", "comment", "--comment", "colex silos"];
    rules
        .iter()
        .map(|rule| rule.iter().chain(comment.iter()).map(|arg| (*arg).to_owned()).collect())
        .collect()
}

/// Creates the `colex-forward` chain if it is missing, makes it contain exactly the rules of
/// [`forward_accept_rules`], and makes `FORWARD` jump to it once, as its first rule. The policy
/// of `FORWARD` and its other rules are untouched.
pub async fn ensure_forward_accept(bridge: &str) -> Result<(), IptablesError> {
    if succeeds(&["-t", "filter", "-S", FORWARD_CHAIN]).await? {
        run(&["-t", "filter", "-F", FORWARD_CHAIN]).await?;
    } else {
        run(&["-t", "filter", "-N", FORWARD_CHAIN]).await?;
    }
    for rule in forward_accept_rules(bridge, cluster_network()) {
        let mut args = vec!["-t", "filter", "-A", FORWARD_CHAIN];
        args.extend(rule.iter().map(String::as_str));
        run(&args).await?;
    }
    if !succeeds(&["-t", "filter", "-C", "FORWARD", "-j", FORWARD_CHAIN]).await? {
        run(&["-t", "filter", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN]).await?;
    }
    Ok(())
}

/// Removes the jump from `FORWARD` and the `colex-forward` chain with its rules, if present.
async fn remove_forward_accept() -> Result<(), IptablesError> {
    let jump = ["-t", "filter", "-C", "FORWARD", "-j", FORWARD_CHAIN];
    while succeeds(&jump).await? {
        run(&["-t", "filter", "-D", "FORWARD", "-j", FORWARD_CHAIN]).await?;
    }
    if succeeds(&["-t", "filter", "-S", FORWARD_CHAIN]).await? {
        run(&["-t", "filter", "-F", FORWARD_CHAIN]).await?;
        run(&["-t", "filter", "-X", FORWARD_CHAIN]).await?;
    }
    Ok(())
}

/// Removes the jump from `INPUT` and the `colex-input` chain with its rules, if present.
async fn remove_dns_accept() -> Result<(), IptablesError> {
    let jump = ["-t", "filter", "-C", "INPUT", "-j", INPUT_CHAIN];
    while succeeds(&jump).await? {
        run(&["-t", "filter", "-D", "INPUT", "-j", INPUT_CHAIN]).await?;
    }
    if succeeds(&["-t", "filter", "-S", INPUT_CHAIN]).await? {
        run(&["-t", "filter", "-F", INPUT_CHAIN]).await?;
        run(&["-t", "filter", "-X", INPUT_CHAIN]).await?;
    }
    Ok(())
}

/// Removes the jump from `POSTROUTING` and the `colex-masq` chain with its rules, and the
/// accept chains `colex-input` (DNS and metadata) and `colex-forward` with their jumps, if
/// present.
pub async fn remove_chain() -> Result<(), IptablesError> {
    remove_dns_accept().await?;
    remove_forward_accept().await?;
    let jump = ["-t", "nat", "-C", "POSTROUTING", "-j", MASQUERADE_CHAIN];
    while succeeds(&jump).await? {
        run(&["-t", "nat", "-D", "POSTROUTING", "-j", MASQUERADE_CHAIN]).await?;
    }
    if succeeds(&["-t", "nat", "-S", MASQUERADE_CHAIN]).await? {
        run(&["-t", "nat", "-F", MASQUERADE_CHAIN]).await?;
        run(&["-t", "nat", "-X", MASQUERADE_CHAIN]).await?;
    }
    Ok(())
}

/// Adds the MASQUERADE rule of a silo unless it is already there.
pub async fn add_masquerade(
    address: Ipv4Addr,
    bridge: &str,
    silo_id: &str,
) -> Result<(), IptablesError> {
    let rule = masquerade_rule(address, bridge, silo_id);
    if succeeds(&rule_command("-C", &rule)).await? {
        return Ok(());
    }
    run(&rule_command("-A", &rule)).await
}

/// Removes the MASQUERADE rule of a silo, every copy of it; a missing rule or chain is fine.
pub async fn remove_masquerade(
    address: Ipv4Addr,
    bridge: &str,
    silo_id: &str,
) -> Result<(), IptablesError> {
    let rule = masquerade_rule(address, bridge, silo_id);
    while succeeds(&rule_command("-C", &rule)).await? {
        run(&rule_command("-D", &rule)).await?;
    }
    Ok(())
}

/// Turns on IPv4 forwarding in the agent's network namespace, and logs when it was off. The
/// setting outlives the agent, so the log names what turned it on.
pub async fn enable_ip_forward() -> Result<(), IptablesError> {
    let current = tokio::fs::read_to_string(IP_FORWARD_PATH).await.unwrap_or_default();
    if current.trim() == "1" {
        return Ok(());
    }
    tokio::fs::write(IP_FORWARD_PATH, "1")
        .await
        .map_err(|source| IptablesError::IpForward { source })?;
    tracing::info!(path = IP_FORWARD_PATH, "turned on IPv4 forwarding for a silo with internet access; it stays on after the agent stops");
    Ok(())
}

fn rule_command<'a>(command: &'a str, rule: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["-t", "nat", command, MASQUERADE_CHAIN];
    args.extend(rule.iter().map(String::as_str));
    args
}

fn iptables_program() -> &'static str {
    IPTABLES_PATHS
        .iter()
        .copied()
        .find(|path| Path::new(path).exists())
        .unwrap_or("iptables")
}

async fn output(args: &[&str]) -> Result<std::process::Output, IptablesError> {
    // -w waits for the xtables lock instead of failing when another iptables runs.
    Command::new(iptables_program())
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|source| IptablesError::Spawn {
            args: args.join(" "),
            source,
        })
}

/// Runs a check command (`-C`, `-S`); a non-zero exit means "not present".
async fn succeeds(args: &[&str]) -> Result<bool, IptablesError> {
    Ok(output(args).await?.status.success())
}

async fn run(args: &[&str]) -> Result<(), IptablesError> {
    let output = output(args).await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(IptablesError::Failed {
            args: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_rule_spec() {
        let rule = masquerade_rule_in(Ipv4Addr::new(10, 69, 1, 2), "colex0", "3938a44e", DEFAULT_CLUSTER_NETWORK);
        assert_eq!(
            rule.join(" "),
            "-s 10.69.1.2/32 ! -d 10.69.0.0/16 ! -o colex0 -j MASQUERADE -m comment --comment colex silo 3938a44e"
        );
        assert_eq!(rule.last().map(String::as_str), Some("colex silo 3938a44e"));
    }

    #[test]
    fn masquerade_rule_excludes_configured_network() {
        let cluster: Ipv4Net = "10.70.0.0/16".parse().expect("valid network");
        let rule = masquerade_rule_in(Ipv4Addr::new(10, 70, 1, 2), "colex0", "3938a44e", cluster);
        assert_eq!(rule[..5].join(" "), "-s 10.70.1.2/32 ! -d 10.70.0.0/16");
    }

    #[test]
    fn forward_accept_rule_specs() {
        let rules: Vec<String> = forward_accept_rules("colex0", DEFAULT_CLUSTER_NETWORK)
            .iter()
            .map(|rule| rule.join(" "))
            .collect();
        assert_eq!(
            rules,
            [
                "-i colex0 -j ACCEPT -m comment --comment colex silos",
                "-o colex0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment colex silos",
                "-o colex0 -s 10.69.0.0/16 -j ACCEPT -m comment --comment colex silos",
            ]
        );
    }

    #[test]
    fn dns_accept_rule_spec() {
        let rule = dns_accept_rule(Ipv4Addr::new(10, 69, 1, 1), "colex0", "udp");
        assert_eq!(
            rule.join(" "),
            "-i colex0 -d 10.69.1.1/32 -p udp --dport 53 -j ACCEPT -m comment --comment colex dns"
        );
    }

    #[test]
    fn metadata_rules_spec() {
        let [accept, drop] = metadata_rules(Ipv4Addr::new(10, 69, 1, 1), "colex0", 17832);
        assert_eq!(
            accept.join(" "),
            "-i colex0 -d 10.69.1.1/32 -p tcp --dport 17832 -j ACCEPT -m comment --comment colex metadata"
        );
        assert_eq!(
            drop.join(" "),
            "! -i colex0 -d 10.69.1.1/32 -p tcp --dport 17832 -j DROP -m comment --comment colex metadata"
        );
    }

    #[test]
    fn isolation_rules_spec() {
        let [replies, rest] = isolation_rules("colex0");
        assert_eq!(
            replies.join(" "),
            "-i colex0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT -m comment --comment colex silo isolation"
        );
        assert_eq!(rest.join(" "), "-i colex0 -j DROP -m comment --comment colex silo isolation");
    }

    #[test]
    fn rule_command_targets_chain() {
        let rule = masquerade_rule(Ipv4Addr::new(10, 69, 1, 2), "colex0", "3938a44e");
        let args = rule_command("-D", &rule);
        assert_eq!(&args[..4], ["-t", "nat", "-D", MASQUERADE_CHAIN]);
    }
}
