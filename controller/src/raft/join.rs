//! The joining side of `colex-controller --join`: requests a node id from a running member
//! before this controller starts Raft.

use std::time::Duration;

use colex_proto as proto;
use colex_proto::members_client::MembersClient;
use tokio::time::Instant;

use super::NodeId;

/// How long a joining controller keeps asking the members, for example while the cluster elects
/// a leader.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after every member was tried once without success.
const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Time allowed to connect to one member.
const JOIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one Join request. It covers a follower waiting for a leader and forwarding.
const JOIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Errors of joining a cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("--join has no address; give HOST:PORT[,HOST:PORT...] of running controllers")]
    NoAddress,
    #[error("controller {addr} rejected the join: {message}")]
    Rejected { addr: String, message: String },
    #[error("no controller added this one within {waited:?}; last errors: {tried}")]
    NoMemberAnswered { waited: Duration, tried: String },
}

/// Asks the members at `addresses`, in turn and again until [`JOIN_TIMEOUT`], to add the
/// controller reachable at `advertise_addr`, and returns the node id the leader gave it.
pub async fn request_node_id(addresses: &[String], advertise_addr: &str) -> Result<NodeId, JoinError> {
    if addresses.is_empty() {
        return Err(JoinError::NoAddress);
    }
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        let mut failures = Vec::new();
        for addr in addresses {
            match ask(addr, advertise_addr).await {
                Ok(id) => {
                    tracing::info!(node_id = id, via = %addr, advertise_addr, "joined the cluster as a learner");
                    return Ok(id);
                }
                Err(status) if is_retryable(&status) => {
                    tracing::warn!(%addr, error = %status.message(), "join request failed; trying the next address");
                    failures.push(format!("{addr}: {}", status.message()));
                }
                Err(status) => {
                    return Err(JoinError::Rejected {
                        addr: addr.clone(),
                        message: status.message().to_owned(),
                    })
                }
            }
        }
        if Instant::now() + JOIN_RETRY_INTERVAL >= deadline {
            return Err(JoinError::NoMemberAnswered {
                waited: JOIN_TIMEOUT,
                tried: failures.join("; "),
            });
        }
        tokio::time::sleep(JOIN_RETRY_INTERVAL).await;
    }
}

/// Sends one Join request to `addr`.
async fn ask(addr: &str, advertise_addr: &str) -> Result<NodeId, tonic::Status> {
    let endpoint = crate::tls::peer_endpoint(addr)
        .map_err(|error| tonic::Status::invalid_argument(format!("invalid address {addr:?}: {error}; use HOST:PORT")))?
        .connect_timeout(JOIN_CONNECT_TIMEOUT);
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| tonic::Status::unavailable(format!("cannot connect: {error}")))?;
    let mut request = tonic::Request::new(proto::JoinRequest {
        address: advertise_addr.to_owned(),
    });
    request.set_timeout(JOIN_REQUEST_TIMEOUT);
    let response = MembersClient::new(channel).join(request).await?;
    Ok(response.into_inner().id)
}

/// Returns true for failures that another member, or the same one a little later, may not
/// have: no connection, no leader yet, a membership change in progress, a timeout.
fn is_retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted | tonic::Code::Unknown
    )
}
