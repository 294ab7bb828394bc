//! The host's upstream resolvers and forwarding over UDP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::DNS_PORT;

/// The host's resolver configuration, read at agent start.
pub const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// Largest UDP reply accepted from an upstream resolver, in bytes: the EDNS payload size most
/// resolvers offer.
pub const MAX_UPSTREAM_REPLY_BYTES: usize = 4096;

/// Returns the `nameserver` addresses of the resolver configuration `text`, with port 53, in
/// file order. Loopback addresses such as systemd-resolved's 127.0.0.53 are kept, because the
/// agent forwards from the host's own network namespace. A zone index (`fe80::1%eth0`) or an
/// invalid address is skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|address| address.parse::<IpAddr>().ok())
        .map(|address| SocketAddr::new(address, DNS_PORT))
        .collect()
}

/// Reads the upstream resolvers from `path`; a missing or unreadable file gives none, which is
/// logged, so every forwarded query then gets SERVFAIL.
pub fn read_resolv_conf(path: &Path) -> Vec<SocketAddr> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let upstreams = parse_resolv_conf(&text);
            if upstreams.is_empty() {
                tracing::warn!(path = %path.display(), "no nameserver in the host's resolver configuration, so names outside .silo fail to resolve");
            }
            upstreams
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read the host's resolver configuration, so names outside .silo fail to resolve");
            Vec::new()
        }
    }
}

/// Sends `request` to each upstream in turn and returns the first reply whose id matches,
/// waiting at most `timeout` for each. Returns `None` when no upstream replied.
pub async fn forward(request: &[u8], upstreams: &[SocketAddr], timeout: Duration) -> Option<Vec<u8>> {
    let id = request.get(..2)?;
    for upstream in upstreams {
        match tokio::time::timeout(timeout, exchange(request, *upstream)).await {
            Ok(Ok(reply)) if reply.get(..2) == Some(id) => return Some(reply),
            Ok(Ok(_)) => tracing::debug!(%upstream, "upstream reply with another id ignored"),
            Ok(Err(error)) => tracing::debug!(%upstream, %error, "upstream resolver failed"),
            Err(_) => tracing::debug!(%upstream, timeout_ms = timeout.as_millis() as u64, "upstream resolver timed out"),
        }
    }
    None
}

/// Sends `request` to `upstream` from a fresh socket, so the kernel's random source port makes
/// forged replies harder, and returns the first datagram it sends back.
async fn exchange(request: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    // connect() makes the kernel drop datagrams from any other address.
    socket.connect(upstream).await?;
    socket.send(request).await?;
    let mut reply = vec![0; MAX_UPSTREAM_REPLY_BYTES];
    let length = socket.recv(&mut reply).await?;
    reply.truncate(length);
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_keeps_loopback_and_order() {
        let text = "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver  192.0.2.1 \noptions edns0\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\nnameserver\n";
        let upstreams: Vec<String> = parse_resolv_conf(text).iter().map(ToString::to_string).collect();
        assert_eq!(upstreams, ["127.0.0.53:53", "192.0.2.1:53", "[2001:db8::53]:53"]);
    }
}
