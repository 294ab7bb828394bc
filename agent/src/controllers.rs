//! Choosing the controller an agent opens its session with, from `--join HOST:PORT[,...]`.
//!
//! The agent prefers the Raft leader: the leader places silos, and only the hosts whose agents
//! hold a session with it count as live. A follower rejects a new session, because registering
//! the host is a Raft write that only the leader can make.

use std::sync::OnceLock;
use std::time::Duration;

use colex_proto as proto;
use colex_proto::addresses::{root_cause, split_addresses};
use colex_proto::members_client::MembersClient;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Time allowed to open the connection to one controller.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline of the request for the leader's address.
const LEADER_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Interval of HTTP/2 keepalive pings, so a dead controller is noticed while no message flows.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS settings of every connection to a controller: `Some` once the agent has its host
/// certificate, never set with `--insecure`.
static CONTROLLER_TLS: OnceLock<ClientTlsConfig> = OnceLock::new();

/// Makes every later connection to a controller use mutual TLS with `tls`. A second call
/// keeps the first settings.
pub fn use_tls(tls: ClientTlsConfig) {
    let _ = CONTROLLER_TLS.set(tls);
}

/// Errors of choosing a controller.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("--join has no controller address; give HOST:PORT[,HOST:PORT...]")]
    NoAddress,
    #[error("no controller answered: {tried}")]
    NoneAnswered { tried: String },
}

/// Connects to the leader named by the first controller of `addresses` (HOST:PORT, separated
/// by commas) that accepts a connection, or to that controller when the leader is unknown or unreachable.
/// Returns the channel and the address it is connected to.
pub async fn connect(addresses: &str) -> Result<(Channel, String), ConnectError> {
    let list = split_addresses(addresses);
    if list.is_empty() {
        return Err(ConnectError::NoAddress);
    }

    let mut failures = Vec::new();
    for address in &list {
        let channel = match open(address).await {
            Ok(channel) => channel,
            Err(cause) => {
                failures.push(format!("{address} ({cause})"));
                continue;
            }
        };
        // A frozen controller still accepts connections, so only its response counts.
        let leader = match leader_address(channel.clone()).await {
            Ok(leader) => leader,
            Err(cause) => {
                tracing::warn!(%address, %cause, "controller accepted the connection but did not respond; trying the next one");
                failures.push(format!("{address} ({cause})"));
                continue;
            }
        };
        if let Some(leader) = leader.filter(|leader| leader != address) {
            match open(&leader).await {
                Ok(leader_channel) => return Ok((leader_channel, leader)),
                Err(cause) => {
                    tracing::warn!(%address, %leader, %cause, "cannot reach the leader this controller named; using this controller");
                }
            }
        }
        return Ok((channel, address.clone()));
    }
    Err(ConnectError::NoneAnswered {
        tried: failures.join(", "),
    })
}

/// Opens a connection to the controller at `address`; the error is its innermost cause.
async fn open(address: &str) -> Result<Channel, String> {
    let endpoint = match CONTROLLER_TLS.get() {
        Some(tls) => Endpoint::from_shared(format!("https://{address}"))
            .and_then(|endpoint| endpoint.tls_config(tls.clone()))
            .map_err(|error| format!("invalid address: {error}; use HOST:PORT"))?,
        None => Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| format!("invalid address: {error}; use HOST:PORT"))?,
    };
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|error| root_cause(&error))
}

/// Requests the leader's address from the controller on `channel`, from that controller's own
/// view of the membership: `None` when it has no leader. The error says why the controller
/// did not respond: no reply in time, or a failed request.
async fn leader_address(channel: Channel) -> Result<Option<String>, String> {
    let mut request = tonic::Request::new(proto::ListMembersRequest { local: true });
    request.set_timeout(LEADER_QUERY_TIMEOUT);
    let reply = tokio::time::timeout(LEADER_QUERY_TIMEOUT, MembersClient::new(channel).list(request)).await;
    match reply {
        Ok(Ok(response)) => Ok(response
            .into_inner()
            .members
            .into_iter()
            .find(|member| member.leader)
            .map(|member| member.address)),
        Ok(Err(status)) => Err(format!("asking for the leader failed: {status}")),
        Err(_) => Err(format!("no response within {LEADER_QUERY_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreachable_controllers_are_all_named() {
        // Bind then drop two listeners so their ports are very likely closed.
        let mut addresses = Vec::new();
        for _ in 0..2 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            addresses.push(listener.local_addr().expect("local address").to_string());
        }
        let error = connect(&addresses.join(",")).await.expect_err("no controller runs there");
        let message = error.to_string();
        for address in &addresses {
            assert!(message.contains(address.as_str()), "{address} named in {message}");
        }
    }
}
