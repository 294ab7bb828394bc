//! The `Members` service: joining, listing and removing controllers. A follower forwards every
//! request to the leader, except a local list.

use colex_proto as proto;
use colex_proto::members_client::MembersClient;
use colex_proto::members_server::{Members, MembersServer};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::raft::{MembershipError, RaftNode};

/// The `Members` gRPC service of one controller.
pub struct MembersService {
    node: RaftNode,
}

impl MembersService {
    /// Returns the gRPC server for `node`'s membership.
    pub fn server(node: RaftNode) -> MembersServer<MembersService> {
        MembersServer::new(MembersService { node })
    }
}

#[tonic::async_trait]
impl Members for MembersService {
    async fn join(&self, request: Request<proto::JoinRequest>) -> Result<Response<proto::JoinResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { MembersClient::new(channel).join(forwarded).await })
            .await?
        {
            return Ok(response);
        }

        let address = request.into_inner().address;
        check_address(&address)?;
        let id = self.node.add_member(&address).await.map_err(|error| status(&error))?;
        Ok(Response::new(proto::JoinResponse { id }))
    }

    async fn list(
        &self,
        request: Request<proto::ListMembersRequest>,
    ) -> Result<Response<proto::ListMembersResponse>, Status> {
        let local = request.get_ref().local;
        if !local {
            if let Some(response) = self.node.leader.forward(&request, list_on_leader).await? {
                return Ok(response);
            }
        }
        let members = self.node.list_members(local).await;
        Ok(Response::new(proto::ListMembersResponse {
            members,
            served_by: self.node.id,
        }))
    }

    async fn remove(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::RemoveMemberResponse>, Status> {
        if let Some(response) = self
            .node
            .leader
            .forward(&request, |channel, forwarded| async move { MembersClient::new(channel).remove(forwarded).await })
            .await?
        {
            return Ok(response);
        }

        let id = request.into_inner().id;
        self.node.remove_member(id).await.map_err(|error| status(&error))?;
        let members = self.node.list_members(false).await;
        Ok(Response::new(proto::RemoveMemberResponse { members }))
    }
}

async fn list_on_leader(
    channel: Channel,
    request: Request<proto::ListMembersRequest>,
) -> Result<Response<proto::ListMembersResponse>, Status> {
    MembersClient::new(channel).list(request).await
}

/// Rejects a join address that no peer could connect to: one without a port, or a wildcard
/// such as `0.0.0.0` from `--listen 0.0.0.0:PORT`.
fn check_address(address: &str) -> Result<(), Status> {
    let invalid = |reason: &str| {
        Status::invalid_argument(format!(
            "invalid controller address {address:?}: {reason}; start the joining controller with --advertise HOST:PORT"
        ))
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid("the port is missing"));
    };
    if !matches!(port.parse::<u16>(), Ok(port) if port != 0) {
        return Err(invalid("the port is not a number from 1 to 65535"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(invalid("other controllers cannot connect to a wildcard address"));
    }
    Ok(())
}

/// Maps a membership failure to the status returned to the caller.
fn status(error: &MembershipError) -> Status {
    let message = error.to_string();
    match error {
        MembershipError::NotLeader => Status::unavailable(message),
        MembershipError::ChangeInProgress => Status::aborted(message),
        MembershipError::ChangeTimedOut { .. } => Status::deadline_exceeded(message),
        MembershipError::AddressTaken { .. } => Status::already_exists(message),
        MembershipError::NotMember { .. } => Status::not_found(message),
        MembershipError::LastVoter { .. } | MembershipError::QuorumLoss { .. } => Status::failed_precondition(message),
        MembershipError::Change(source) => Status::internal(format!("{message}: {source}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_addresses_are_checked() {
        assert!(check_address("198.51.100.2:7069").is_ok());
        assert!(check_address("[2001:db8::1]:7069").is_ok());
        assert!(check_address("controller-2:7069").is_ok());
        for bad in ["0.0.0.0:7069", "[::]:7069", "198.51.100.2", "198.51.100.2:0", "host:http"] {
            let status = check_address(bad).expect_err(bad);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(status.message().contains("--advertise"), "{bad}: {}", status.message());
        }
    }
}
