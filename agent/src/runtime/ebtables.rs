//! ARP anti-spoofing in the colex-owned chain `colex-antispoof` of the bridge family's `nat`
//! table, which `PREROUTING` jumps to first. For each silo the chain contains one rule that
//! drops ARP packets entering the bridge from the silo's host-side veth with a sender address
//! other than the silo's own. Without it a silo could claim another silo's address in the
//! gateway's ARP cache and receive that silo's replies. IPv4 packets are checked by the iptables rule of the same
//! name (see [`super::iptables`]).
//!
//! ebtables has no check command, so a rule is added by deleting every copy first. ebtables
//! 1.8.9 on nf_tables takes no lock. It failed with exit status 4 ("RULE_DELETE failed") when
//! other nf_tables changes, such as the iptables commands of silos starting at the same time,
//! were committed while it ran. So every change from this process locks [`EBTABLES_LOCK`] first,
//! and a command that fails with status 4 is run again. Agents in other network namespaces have
//! tables of their own.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use tokio::process::Command;

/// Chain in the bridge `nat` table that drops ARP packets with a forged sender address.
pub const ARP_ANTISPOOF_CHAIN: &str = "colex-antispoof";
/// Places where Debian installs ebtables. `PATH` may lack the sbin dirs.
const EBTABLES_PATHS: &[&str] = &["/usr/sbin/ebtables", "/sbin/ebtables"];
/// Lock that serializes this process's ebtables changes, as the module documentation explains.
static EBTABLES_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Exit status of ebtables for a resource problem, such as a transaction that lost a race with
/// another nf_tables change. The command changed nothing, so it can run again.
const RESOURCE_PROBLEM_STATUS: i32 = 4;
/// Runs of one command before its status-4 failure is returned.
const MAX_ATTEMPTS: u32 = 5;
/// Pause after the first failed run; each further pause is one step longer.
const RETRY_STEP: std::time::Duration = std::time::Duration::from_millis(20);
/// Upper bound on the copies of one rule a removal deletes, so a command that keeps
/// succeeding cannot loop forever.
const MAX_RULE_COPIES: usize = 64;

/// Errors of ebtables handling.
#[derive(Debug, thiserror::Error)]
pub enum EbtablesError {
    #[error("failed to run ebtables {args}: {source}")]
    Spawn { args: String, source: io::Error },
    #[error("ebtables {args} failed with {status}: {stderr}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Returns the rule specification that drops ARP packets from `host_veth` whose sender address
/// is not `address`.
pub fn arp_antispoof_rule(address: Ipv4Addr, host_veth: &str) -> Vec<String> {
    ["-i", host_veth, "-p", "ARP", "--arp-ip-src", "!", &address.to_string(), "-j", "DROP"]
        .iter()
        .map(|arg| (*arg).to_string())
        .collect()
}

/// Creates the chain if it is missing and makes `PREROUTING` jump to it once, first.
pub async fn ensure_arp_antispoof_chain() -> Result<(), EbtablesError> {
    let _lock = EBTABLES_LOCK.lock().await;
    if !succeeds(&["-t", "nat", "-L", ARP_ANTISPOOF_CHAIN]).await? {
        run(&["-t", "nat", "-N", ARP_ANTISPOOF_CHAIN]).await?;
    }
    let prerouting = output(&["-t", "nat", "-L", "PREROUTING"]).await?;
    let jump = format!("-j {ARP_ANTISPOOF_CHAIN}");
    let jumps = String::from_utf8_lossy(&prerouting.stdout)
        .lines()
        .filter(|line| line.trim() == jump)
        .count();
    if jumps == 0 {
        run(&["-t", "nat", "-I", "PREROUTING", "1", "-j", ARP_ANTISPOOF_CHAIN]).await?;
    }
    Ok(())
}

/// Removes every rule from the chain, for an agent start when no silo runs.
pub async fn flush_arp_antispoof_chain() -> Result<(), EbtablesError> {
    let _lock = EBTABLES_LOCK.lock().await;
    run(&["-t", "nat", "-F", ARP_ANTISPOOF_CHAIN]).await
}

/// Removes the jump from `PREROUTING` and the chain with its rules, if present.
pub async fn remove_arp_antispoof_chain() -> Result<(), EbtablesError> {
    let _lock = EBTABLES_LOCK.lock().await;
    for _ in 0..MAX_RULE_COPIES {
        if !succeeds(&["-t", "nat", "-D", "PREROUTING", "-j", ARP_ANTISPOOF_CHAIN]).await? {
            break;
        }
    }
    if succeeds(&["-t", "nat", "-L", ARP_ANTISPOOF_CHAIN]).await? {
        run(&["-t", "nat", "-F", ARP_ANTISPOOF_CHAIN]).await?;
        run(&["-t", "nat", "-X", ARP_ANTISPOOF_CHAIN]).await?;
    }
    Ok(())
}

/// Makes the chain contain exactly one copy of the ARP rule of a silo.
pub async fn add_arp_antispoof(address: Ipv4Addr, host_veth: &str) -> Result<(), EbtablesError> {
    let _lock = EBTABLES_LOCK.lock().await;
    delete_copies(address, host_veth).await?;
    let rule = arp_antispoof_rule(address, host_veth);
    run(&rule_command("-A", &rule)).await
}

/// Removes every copy of the ARP rule of a silo. A missing rule or chain is fine.
pub async fn remove_arp_antispoof(address: Ipv4Addr, host_veth: &str) -> Result<(), EbtablesError> {
    let _lock = EBTABLES_LOCK.lock().await;
    delete_copies(address, host_veth).await
}

/// Deletes every copy of the ARP rule of a silo. The caller must have locked [`EBTABLES_LOCK`].
async fn delete_copies(address: Ipv4Addr, host_veth: &str) -> Result<(), EbtablesError> {
    let rule = arp_antispoof_rule(address, host_veth);
    let args = rule_command("-D", &rule);
    for _ in 0..MAX_RULE_COPIES {
        let output = output(&args).await?;
        if output.status.success() {
            continue;
        }
        // Any other failure means that no copy is left, or that the chain is missing.
        if output.status.code() == Some(RESOURCE_PROBLEM_STATUS) {
            return Err(failed(&args, &output));
        }
        break;
    }
    Ok(())
}

fn rule_command<'a>(command: &'a str, rule: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["-t", "nat", command, ARP_ANTISPOOF_CHAIN];
    args.extend(rule.iter().map(String::as_str));
    args
}

fn ebtables_program() -> &'static str {
    EBTABLES_PATHS
        .iter()
        .copied()
        .find(|path| Path::new(path).exists())
        .unwrap_or("ebtables")
}

/// Runs ebtables with `args`, again after a pause while it fails with status 4, at most
/// `MAX_ATTEMPTS` times, and returns the last run's output.
async fn output(args: &[&str]) -> Result<std::process::Output, EbtablesError> {
    let mut attempt = 1;
    loop {
        let output = Command::new(ebtables_program())
            .args(args)
            .output()
            .await
            .map_err(|source| EbtablesError::Spawn {
                args: args.join(" "),
                source,
            })?;
        if output.status.code() != Some(RESOURCE_PROBLEM_STATUS) || attempt == MAX_ATTEMPTS {
            return Ok(output);
        }
        tracing::debug!(args = %args.join(" "), attempt, stderr = %String::from_utf8_lossy(&output.stderr).trim(), "ebtables lost a race with another nf_tables change; running it again");
        tokio::time::sleep(RETRY_STEP * attempt).await;
        attempt += 1;
    }
}

async fn succeeds(args: &[&str]) -> Result<bool, EbtablesError> {
    Ok(output(args).await?.status.success())
}

async fn run(args: &[&str]) -> Result<(), EbtablesError> {
    let output = output(args).await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(failed(args, &output))
    }
}

fn failed(args: &[&str], output: &std::process::Output) -> EbtablesError {
    EbtablesError::Failed {
        args: args.join(" "),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_rule_spec() {
        let rule = arp_antispoof_rule(Ipv4Addr::new(10, 69, 1, 2), "cx3938a44e");
        assert_eq!(rule.join(" "), "-i cx3938a44e -p ARP --arp-ip-src ! 10.69.1.2 -j DROP");
        let args = rule_command("-D", &rule);
        assert_eq!(&args[..4], ["-t", "nat", "-D", ARP_ANTISPOOF_CHAIN]);
    }
}
