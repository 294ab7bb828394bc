//! Network counters of the silos on this host, read from their host-side veths.

use crate::runtime::{net_dev_counters, NET_DEV_RECEIVE_COUNTERS};

/// The agent's view of its network namespace's interfaces. `/proc/self/net` shows the
/// namespace of the reading process, whereas `/sys/class/net` shows the one `/sys` was mounted
/// in, which differs when the agent runs in a network namespace of its own.
const NET_DEV_PATH: &str = "/proc/self/net/dev";

/// Traffic of one silo, from the silo's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiloTraffic {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

/// Reads the traffic of the silo whose host-side veth is `host_veth`, or `None` when the veth
/// is missing. What the veth sends the silo receives and the other way round, so the counters
/// are swapped. Packets the anti-spoofing filter drops count as sent by the silo.
pub async fn read_silo_traffic(host_veth: &str) -> Option<SiloTraffic> {
    let text = tokio::fs::read_to_string(NET_DEV_PATH).await.ok()?;
    let veth = parse_net_dev(&text, host_veth)?;
    Some(SiloTraffic {
        rx_bytes: veth.tx_bytes,
        rx_packets: veth.tx_packets,
        tx_bytes: veth.rx_bytes,
        tx_packets: veth.rx_packets,
    })
}

/// Returns the byte and packet counters of `interface` in a `/proc/net/dev` text, as the
/// interface itself counts them.
fn parse_net_dev(text: &str, interface: &str) -> Option<SiloTraffic> {
    let counters = net_dev_counters(text, interface)?;
    Some(SiloTraffic {
        rx_bytes: *counters.first()?,
        rx_packets: *counters.get(1)?,
        tx_bytes: *counters.get(NET_DEV_RECEIVE_COUNTERS)?,
        tx_packets: *counters.get(NET_DEV_RECEIVE_COUNTERS + 1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
cx3938a44e:    5306      48    0    0    0     0          0         0     1882      21    0    0    0     0       0          0
";

    #[test]
    fn parses_veth_counters() {
        let veth = parse_net_dev(NET_DEV, "cx3938a44e").expect("veth listed");
        assert_eq!(
            veth,
            SiloTraffic {
                rx_bytes: 5306,
                rx_packets: 48,
                tx_bytes: 1882,
                tx_packets: 21,
            }
        );
        assert_eq!(parse_net_dev(NET_DEV, "cx00000000"), None);
    }
}
