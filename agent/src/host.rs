//! Facts about this host that the agent reports when it registers.

use anyhow::Context;

use crate::session::AgentConfig;

/// Source of the host's total memory.
const MEMINFO_PATH: &str = "/proc/meminfo";

#[derive(Debug, Clone)]
pub struct HostFacts {
    pub address: String,
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl HostFacts {
    pub async fn gather(config: &AgentConfig) -> anyhow::Result<Self> {
        let address = match &config.address {
            Some(address) => address.clone(),
            // The first of the controller addresses; all are expected on one network.
            None => route_source_address(config.controller.split(',').next().unwrap_or_default().trim()).await?,
        };
        let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
        let meminfo = std::fs::read_to_string(MEMINFO_PATH).with_context(|| format!("cannot read {MEMINFO_PATH}"))?;
        Ok(Self {
            address,
            cpus: u32::try_from(cpus).unwrap_or(u32::MAX),
            memory_bytes: parse_mem_total(&meminfo).with_context(|| format!("no MemTotal line in {MEMINFO_PATH}"))?,
        })
    }
}

/// Returns the local address the kernel would use to reach the controller.
/// Connecting a UDP socket only chooses a route and sends no packet.
async fn route_source_address(controller: &str) -> anyhow::Result<String> {
    let target = tokio::net::lookup_host(controller)
        .await
        .with_context(|| format!("cannot resolve controller address {controller}"))?
        .next()
        .with_context(|| format!("controller address {controller} resolves to nothing"))?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = tokio::net::UdpSocket::bind(bind).await.context("cannot open a UDP socket")?;
    socket
        .connect(target)
        .await
        .with_context(|| format!("no route to controller {target}; pass --address"))?;
    Ok(socket.local_addr().context("cannot read the local address")?.ip().to_string())
}

/// Parses `MemTotal:  16318712 kB` into bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kibibytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kibibytes.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_in_bytes() {
        let meminfo = "MemTotal:       16318712 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(16_318_712 * 1024));
    }

    #[test]
    fn mem_total_missing() {
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }
}
