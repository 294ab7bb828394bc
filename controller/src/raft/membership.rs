//! Changes to the set of controllers, run on the leader: adding a joining controller as a
//! learner, promoting caught-up learners to voters, removing members without losing the quorum,
//! and listing the members with their progress.
//!
//! One membership change runs at a time on a node (`RaftNode::membership_lock`), because
//! concurrent `change_membership` calls can leave openraft 0.9 in a joint configuration.

use std::collections::BTreeSet;
use std::time::Duration;

use colex_proto as proto;
use colex_proto::members_client::MembersClient;
use openraft::error::ClientWriteError;
use openraft::{ChangeMembers, ServerState};

use super::node::RaftNode;
use super::{Node, NodeId};

/// Time a member has to respond to the leader's probe before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Interval at which every node checks, while it is the leader, for learners to promote.
const PROMOTION_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long a membership change may wait for its joint and final configurations to commit. A
/// change that times out stays in the log and completes once enough voters respond again.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// A learner whose log is at most this many entries behind the leader's is caught up: one
/// AppendEntries batch closes the gap, so making it a voter does not stall commits.
const PROMOTION_MAX_LAG_ENTRIES: u64 = 16;

/// Errors of a membership change or listing.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("this controller lost its raft leadership during the change; retry it")]
    NotLeader,
    #[error("a membership change is still in progress; retry in a few seconds")]
    ChangeInProgress,
    #[error("address {addr} already belongs to controller {id}; if that controller lost its data, remove it with `colex-cli controllers remove {id}` and join again")]
    AddressTaken { addr: String, id: NodeId },
    #[error("controller {id} is not a member; see `colex-cli controllers`")]
    NotMember { id: NodeId },
    #[error("controller {id} is the last voter and removing it would leave no quorum; join another controller with `colex-controller --join` first")]
    LastVoter { id: NodeId },
    #[error("removing controller {id} would leave {live} live voters of {voters}, fewer than the {needed} a quorum needs (not responding: {down}); restart those controllers or join a new one first")]
    QuorumLoss {
        id: NodeId,
        live: usize,
        voters: usize,
        needed: usize,
        down: String,
    },
    #[error("membership change did not commit within {waited:?}; it completes once enough voters respond, see `colex-cli controllers`")]
    ChangeTimedOut { waited: Duration },
    #[error("raft membership change failed")]
    Change(#[source] Box<openraft::error::RaftError<NodeId, ClientWriteError<NodeId, Node>>>),
}

impl MembershipError {
    fn from_write(error: openraft::error::RaftError<NodeId, ClientWriteError<NodeId, Node>>) -> MembershipError {
        match error.api_error() {
            Some(ClientWriteError::ForwardToLeader(_)) => MembershipError::NotLeader,
            Some(ClientWriteError::ChangeMembershipError(
                openraft::error::ChangeMembershipError::InProgress(_),
            )) => MembershipError::ChangeInProgress,
            _ => MembershipError::Change(Box::new(error)),
        }
    }
}

/// A snapshot of this node's view of the membership, read from openraft's metrics.
struct View {
    leader: Option<NodeId>,
    last_applied: Option<u64>,
    voters: BTreeSet<NodeId>,
    nodes: Vec<(NodeId, Node)>,
    joint: bool,
}

impl RaftNode {
    fn membership_view(&self) -> View {
        let metrics = self.raft.metrics();
        let current = metrics.borrow();
        let membership = current.membership_config.membership();
        View {
            leader: current.current_leader,
            last_applied: current.last_applied.map(|log_id| log_id.index),
            voters: membership.voter_ids().collect(),
            nodes: membership.nodes().map(|(id, node)| (*id, node.clone())).collect(),
            joint: membership.get_joint_config().len() > 1,
        }
    }

    /// Adds the controller at `addr` as a learner and returns its new node id. Runs on the leader.
    ///
    /// The learner is added without waiting for it to catch up, because the joining controller
    /// can start Raft, and so receive the log, only once it has its id. The promotion task
    /// ([`RaftNode::spawn_promotion`]) makes it a voter once its log has caught up.
    ///
    /// NOTE: the id is one more than the largest member id, so the id of a removed member with
    /// the largest id is given out again.
    pub async fn add_member(&self, addr: &str) -> Result<NodeId, MembershipError> {
        let _change = self.membership_lock.lock().await;
        let view = self.membership_view();
        if let Some((id, _)) = view.nodes.iter().find(|(_, node)| node.addr == addr) {
            // A new controller with an empty log under an old id makes the leader see that
            // follower's log go backwards, which openraft 0.9.25 forbids (a `debug_assert` in
            // `progress/entry/mod.rs` unless `loosen-follower-log-revert` is on). Only a removal
            // makes room.
            return Err(MembershipError::AddressTaken {
                addr: addr.to_owned(),
                id: *id,
            });
        }
        let id = view.nodes.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
        self.raft
            .add_learner(id, Node { addr: addr.to_owned() }, false)
            .await
            .map_err(MembershipError::from_write)?;
        tracing::info!(member = id, %addr, "controller added as a learner");
        Ok(id)
    }

    /// Removes member `id`. Runs on the leader.
    ///
    /// A voter is removed only when the voters left behind still have a quorum of live members,
    /// where live means the member responded to a probe within [`PROBE_TIMEOUT`]. A learner does not
    /// vote, so its removal is always allowed.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), MembershipError> {
        let _change = self.membership_lock.lock().await;
        let view = self.membership_view();
        if view.joint {
            return Err(MembershipError::ChangeInProgress);
        }
        if !view.nodes.iter().any(|(member, _)| *member == id) {
            return Err(MembershipError::NotMember { id });
        }

        let change: ChangeMembers<NodeId, Node> = if view.voters.contains(&id) {
            let remaining: Vec<(NodeId, Node)> = view
                .nodes
                .iter()
                .filter(|(member, _)| *member != id && view.voters.contains(member))
                .cloned()
                .collect();
            let mut live = 0;
            let mut down = Vec::new();
            for (member, node) in &remaining {
                if *member == self.id || self.probe(*member, &node.addr).await.is_some() {
                    live += 1;
                } else {
                    down.push(member.to_string());
                }
            }
            check_quorum_after_removal(id, remaining.len(), live, &down)?;
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };

        // `retain = false`: a removed voter leaves the membership instead of staying a learner.
        tokio::time::timeout(CHANGE_TIMEOUT, self.raft.change_membership(change, false))
            .await
            .map_err(|_| MembershipError::ChangeTimedOut { waited: CHANGE_TIMEOUT })?
            .map_err(MembershipError::from_write)?;
        tracing::info!(member = id, "controller removed from the membership");
        Ok(())
    }

    /// Lists the members. With `local`, only this node's view is used and the other members'
    /// last applied index stays unset. Otherwise every other member is probed for its last
    /// applied index; only the leader's view of the membership is current.
    pub async fn list_members(&self, local: bool) -> Vec<proto::Member> {
        let view = self.membership_view();
        let mut members = Vec::with_capacity(view.nodes.len());
        for (id, node) in &view.nodes {
            let last_applied = if *id == self.id {
                view.last_applied
            } else if local {
                None
            } else {
                self.probe(*id, &node.addr).await
            };
            let role = if view.voters.contains(id) {
                proto::MemberRole::Voter
            } else {
                proto::MemberRole::Learner
            };
            members.push(proto::Member {
                id: *id,
                address: node.addr.clone(),
                role: role.into(),
                leader: view.leader == Some(*id),
                last_applied,
                reachable: *id == self.id || last_applied.is_some(),
            });
        }
        members
    }

    /// Asks member `id` at `addr` for its own last applied index. Returns `None` when it does not
    /// respond within [`PROBE_TIMEOUT`] or has applied nothing yet.
    async fn probe(&self, id: NodeId, addr: &str) -> Option<u64> {
        let channel = match self.leader.channel(id, addr) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(member = id, %error, "cannot probe controller");
                return None;
            }
        };
        let mut request = tonic::Request::new(proto::ListMembersRequest { local: true });
        request.set_timeout(PROBE_TIMEOUT);
        let reply = tokio::time::timeout(PROBE_TIMEOUT, MembersClient::new(channel).list(request)).await;
        match reply {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                response
                    .members
                    .into_iter()
                    .find(|member| member.id == response.served_by)
                    .and_then(|member| member.last_applied)
            }
            Ok(Err(status)) => {
                tracing::debug!(member = id, %addr, %status, "controller probe failed");
                None
            }
            Err(_) => {
                tracing::debug!(member = id, %addr, timeout = ?PROBE_TIMEOUT, "controller probe timed out");
                None
            }
        }
    }

    /// Starts the task that, while this node is the leader, promotes every learner whose log has
    /// caught up to a voter. It ends when Raft stops. Running it on every node lets a new leader
    /// finish a promotion that its predecessor had not made yet.
    pub(super) fn spawn_promotion(&self) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut metrics = node.raft.metrics();
            // A fixed interval rather than every change of the metrics, which change with each
            // write and would wake this task once per write.
            let mut checks = tokio::time::interval(PROMOTION_CHECK_INTERVAL);
            checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                checks.tick().await;
                if metrics.has_changed().is_err() {
                    break;
                }
                let ready = caught_up_learners(&metrics.borrow_and_update());
                if ready.is_empty() {
                    continue;
                }
                let _change = node.membership_lock.lock().await;
                let promotion = node.raft.change_membership(ChangeMembers::AddVoterIds(ready.clone()), true);
                match tokio::time::timeout(CHANGE_TIMEOUT, promotion).await {
                    Ok(Ok(_)) => tracing::info!(members = ?ready, "learners caught up and promoted to voters"),
                    Ok(Err(error)) => tracing::warn!(members = ?ready, %error, "failed to promote learners; retrying"),
                    Err(_) => tracing::warn!(members = ?ready, timeout = ?CHANGE_TIMEOUT, "promotion did not commit in time; retrying"),
                }
            }
            tracing::debug!(node_id = node.id, "promotion task stopped with raft");
        });
    }
}

/// Returns the learners of a uniform membership whose replicated log is within
/// [`PROMOTION_MAX_LAG_ENTRIES`] of the leader's last log index, or nothing when the metrics
/// are not a leader's.
fn caught_up_learners(metrics: &openraft::RaftMetrics<NodeId, Node>) -> BTreeSet<NodeId> {
    let membership = metrics.membership_config.membership();
    let replication = match (&metrics.state, &metrics.replication) {
        (ServerState::Leader, Some(replication)) => replication,
        _ => return BTreeSet::new(),
    };
    if membership.get_joint_config().len() > 1 {
        return BTreeSet::new();
    }
    let last_log_index = metrics.last_log_index.unwrap_or(0);
    membership
        .learner_ids()
        .filter(|id| {
            let matched = replication.get(id).cloned().flatten().map(|log_id| log_id.index);
            matched.is_some_and(|index| index + PROMOTION_MAX_LAG_ENTRIES >= last_log_index)
        })
        .collect()
}

/// Checks that `live` of the `voters` left after removing `id` form a majority of them.
fn check_quorum_after_removal(id: NodeId, voters: usize, live: usize, down: &[String]) -> Result<(), MembershipError> {
    if voters == 0 {
        return Err(MembershipError::LastVoter { id });
    }
    let needed = voters / 2 + 1;
    if live < needed {
        return Err(MembershipError::QuorumLoss {
            id,
            live,
            voters,
            needed,
            down: down.join(", "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_keeping_a_live_majority_passes() {
        assert!(check_quorum_after_removal(3, 2, 2, &[]).is_ok());
        assert!(check_quorum_after_removal(5, 4, 3, &["4".to_owned()]).is_ok());
    }

    #[test]
    fn removal_of_last_voter_is_rejected() {
        let error = check_quorum_after_removal(1, 0, 0, &[]).expect_err("last voter");
        assert!(matches!(error, MembershipError::LastVoter { id: 1 }));
        assert!(error.to_string().contains("--join"), "{error}");
    }

    #[test]
    fn removal_losing_quorum_is_rejected() {
        let error = check_quorum_after_removal(2, 2, 1, &["3".to_owned()]).expect_err("quorum loss");
        let message = error.to_string();
        assert!(message.contains("1 live voters of 2"), "{message}");
        assert!(message.contains("the 2 a quorum needs"), "{message}");
        assert!(message.contains("not responding: 3"), "{message}");
    }
}
