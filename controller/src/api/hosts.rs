//! The host views, the drain mark and host removal behind the `Hosts`, `SetDraining` and
//! `RemoveHost` calls, and the `list` view of instances on lost hosts.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use colex_proto as proto;
use tonic::Status;

use crate::api::unavailable;
use crate::raft::RaftNode;
use crate::scheduler;
use crate::sessions::Sessions;
use crate::state::{ClusterState, Command, Response};
use crate::view;

/// Builds the client view of every host with its drain mark and the CPU and memory its placed
/// silo instances reserve, in name order.
pub fn host_infos(state: &ClusterState, live: &BTreeSet<String>) -> Vec<proto::HostInfo> {
    let reserved = scheduler::reserved_by_host(state, &BTreeSet::new());
    // One pass over the instances for all hosts: a count per host would scan them all once
    // per host, about a second for 1,000 hosts and 50,000 instances.
    let mut silo_counts: HashMap<&str, usize> = HashMap::with_capacity(state.hosts.len());
    for silo in state.silos.values() {
        *silo_counts.entry(silo.host.as_str()).or_default() += 1;
    }
    state
        .hosts
        .values()
        .map(|host| {
            let silo_count = silo_counts.get(host.name.as_str()).copied().unwrap_or_default();
            let mut info = view::host_info(host, live, silo_count);
            let on_host = reserved.get(&host.name).copied().unwrap_or_default();
            info.cpu_percent_reserved = on_host.cpu_percent;
            info.memory_bytes_reserved = on_host.memory_bytes;
            info
        })
        .collect()
}

/// Sets the message of every instance on a lost host to say so, because its state is only
/// what the agent last reported. Instances with restart policy `never` stay there until the
/// host is back; the others are placed again elsewhere.
pub fn mark_lost_hosts(silos: &mut [proto::SiloInfo], sessions: &Sessions) {
    let now = Instant::now();
    for silo in silos.iter_mut() {
        if !silo.host.is_empty() && sessions.liveness().is_down(&silo.host, now) {
            silo.message = format!("host {} lost", silo.host);
        }
    }
}

/// Stores the drain mark of host `name` and returns the host's view. Fails with NOT_FOUND for
/// a host that never registered.
pub async fn set_draining(
    node: &RaftNode,
    sessions: &Sessions,
    name: &str,
    draining: bool,
) -> Result<proto::HostInfo, Status> {
    let known = node.state.read().await.hosts.contains_key(name);
    if !known {
        return Err(unknown_host(node, name).await);
    }
    node.write(Command::SetDraining {
        name: name.to_owned(),
        draining,
    })
    .await
    .map_err(|error| unavailable(&error))?;
    if draining {
        tracing::info!(host = %name, "host draining: its silos move elsewhere one at a time");
    } else {
        tracing::info!(host = %name, "host no longer draining");
        // Pending instances may fit on the host again.
        sessions.wake_placement();
    }

    let state = node.state.read().await;
    host_infos(&state, &sessions.live_hosts())
        .into_iter()
        .find(|info| info.name == name)
        .ok_or_else(|| Status::aborted(format!("host {name} was removed while its drain mark was stored")))
}

/// Removes host `name` from the cluster and returns its freed subnet and the number of its
/// instances that became pending. Fails with NOT_FOUND for an unknown host and with
/// FAILED_PRECONDITION for a host whose agent is connected, unless `force` is set.
pub async fn remove_host(
    node: &RaftNode,
    sessions: &Sessions,
    name: &str,
    force: bool,
) -> Result<proto::RemoveHostResponse, Status> {
    let subnet = node.state.read().await.hosts.get(name).map(|host| host.subnet_cidr());
    let Some(subnet) = subnet else {
        return Err(unknown_host(node, name).await);
    };
    if !force && sessions.live_hosts().contains(name) {
        return Err(Status::failed_precondition(format!(
            "host {name} is up: drain it (`colex-cli hosts drain {name}`) and stop its agent first, or pass --force"
        )));
    }
    let response = node
        .write(Command::RemoveHost { name: name.to_owned() })
        .await
        .map_err(|error| unavailable(&error))?;
    let pending = match response {
        Response::HostRemoved { pending } => pending,
        // Another request removed it between the read above and this write.
        _ => return Err(unknown_host(node, name).await),
    };
    // NOTE: with `force`, the agent's open session is not ended: the agent keeps its old
    // peers and subnet until it reconnects, and then registers as a new host.
    tracing::info!(host = %name, %subnet, pending, force, "host removed");
    // Instances of the removed host wait for a new place.
    sessions.wake_placement();
    Ok(proto::RemoveHostResponse { subnet, pending })
}

async fn unknown_host(node: &RaftNode, name: &str) -> Status {
    let state = node.state.read().await;
    let names: Vec<&str> = state.hosts.keys().map(String::as_str).collect();
    let known = if names.is_empty() {
        "no host has registered yet".to_owned()
    } else {
        format!("known hosts: {}", names.join(", "))
    };
    Status::not_found(format!("host {name} not found ({known}); see `colex-cli hosts`"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::liveness::Liveness;

    fn silo(name: &str, host: &str) -> proto::SiloInfo {
        proto::SiloInfo {
            name: name.to_owned(),
            host: host.to_owned(),
            message: "agent message".to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn silos_on_lost_hosts_say_so() {
        let sessions = Sessions::with_liveness(Liveness::new(Duration::from_secs(1)));
        let now = Instant::now();
        let elected = now.checked_sub(Duration::from_secs(2)).expect("the clock is past 2 s");
        sessions.liveness().set_leading(true, elected);
        sessions.liveness().seen("b", now);

        let mut silos = [silo("on-a", "a"), silo("on-b", "b"), silo("pending", "")];
        mark_lost_hosts(&mut silos, &sessions);
        assert_eq!(silos[0].message, "host a lost");
        assert_eq!(silos[1].message, "agent message");
        assert_eq!(silos[2].message, "agent message");
    }

    #[test]
    fn host_infos_sum_reservations() {
        use prost::Message;

        let mut state = ClusterState::default();
        state.apply(&Command::RegisterHost {
            name: "a".to_owned(),
            address: "198.51.100.3".to_owned(),
            cpus: 2,
            memory_bytes: 1 << 30,
            attributes: Default::default(),
        });
        let spec = proto::SiloSpec {
            name: "web".to_owned(),
            resources: Some(proto::Resources {
                cpu_percent: 20,
                memory_bytes: 64 << 20,
            }),
            ..Default::default()
        };
        state.apply(&Command::PutInstances {
            name: "web".to_owned(),
            spec: spec.encode_to_vec(),
            count: 2,
            instances: (0..2)
                .map(|index| crate::state::InstanceUpdate {
                    index,
                    id: format!("0000000{index}"),
                    placement: crate::state::InstancePlacement::Host("a".to_owned()),
                })
                .collect(),
            rolling: Vec::new(),
        });
        state.apply(&Command::SetDraining {
            name: "a".to_owned(),
            draining: true,
        });
        state.apply(&Command::RegisterHost {
            name: "b".to_owned(),
            address: "198.51.100.4".to_owned(),
            cpus: 2,
            memory_bytes: 1 << 30,
            attributes: Default::default(),
        });

        let infos = host_infos(&state, &BTreeSet::from(["a".to_owned()]));
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[1].name, "b");
        assert_eq!(infos[1].silo_count, 0);
        assert_eq!(infos[1].cpu_percent_reserved, 0);
        assert_eq!(infos[1].state(), proto::HostState::Down);
        assert_eq!(infos[0].cpu_percent_reserved, 40);
        assert_eq!(infos[0].memory_bytes_reserved, 128 << 20);
        assert_eq!(infos[0].silo_count, 2);
        assert!(infos[0].draining);
        assert_eq!(infos[0].state(), proto::HostState::Up);
    }
}
