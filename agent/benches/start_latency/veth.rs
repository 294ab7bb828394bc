//! The two ways to give a new network namespace one end of a veth pair, timed alone. The
//! first creates the pair in this namespace and moves the peer (`RTM_NEWLINK`, then
//! `RTM_SETLINK` with `IFLA_NET_NS_FD`). The second creates the peer directly in the target
//! namespace: one `RTM_NEWLINK` whose peer message carries `IFLA_NET_NS_FD`. The silo runtime
//! does the second.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};

/// Timed runs of each way.
pub const VETH_RUNS: usize = 50;

/// Times of both ways, one sample per run.
#[derive(Debug, Default)]
pub struct VethSamples {
    pub create_and_move: Vec<Duration>,
    pub create_in_place: Vec<Duration>,
}

/// Measures both ways `runs` times each, alternating, in the calling thread's network
/// namespace. Each run gets a fresh target namespace, and its pair is deleted after it.
pub async fn measure(unique: &str, runs: usize) -> anyhow::Result<VethSamples> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("failed to open a netlink socket")?;
    let connection = tokio::spawn(connection);
    let name = format!("cxv{unique}");
    let peer = format!("cxv{unique}p");
    let mut samples = VethSamples::default();
    let mut result = Ok(());
    for _ in 0..runs {
        result = run_both(&handle, &name, &peer, &mut samples).await;
        if result.is_err() {
            break;
        }
    }
    // A failed run can leave the pair, and deleting one end deletes both.
    let _ = delete_link(&handle, &name).await;
    connection.abort();
    result.map(|()| samples)
}

async fn run_both(
    handle: &Handle,
    name: &str,
    peer: &str,
    samples: &mut VethSamples,
) -> anyhow::Result<()> {
    let target = new_netns()?;
    let started = Instant::now();
    handle
        .link()
        .add(LinkVeth::new(name, peer).build())
        .execute()
        .await
        .with_context(|| format!("failed to create veth pair {name}/{peer}"))?;
    let index = link_index(handle, peer).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .setns_by_fd(target.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .with_context(|| format!("failed to move {peer} into a new network namespace"))?;
    samples.create_and_move.push(started.elapsed());
    delete_link(handle, name).await?;

    let target = new_netns()?;
    let started = Instant::now();
    let peer_message = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .setns_by_fd(target.as_raw_fd())
        .build();
    let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
        .build();
    handle
        .link()
        .add(message)
        .execute()
        .await
        .with_context(|| format!("failed to create veth pair {name}/{peer} across namespaces"))?;
    samples.create_in_place.push(started.elapsed());
    delete_link(handle, name).await
}

/// Returns a handle on a new, empty network namespace, which lives while the handle is open.
fn new_netns() -> anyhow::Result<File> {
    std::thread::spawn(|| -> anyhow::Result<File> {
        // This thread ends right after, so its namespace switch affects no other work.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("failed to create a network namespace")?;
        File::open("/proc/thread-self/ns/net").context("failed to open the new network namespace")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

async fn link_index(handle: &Handle, name: &str) -> anyhow::Result<u32> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .with_context(|| format!("failed to look up {name}"))?
        .with_context(|| format!("link {name} not found"))?;
    Ok(link.header.index)
}

async fn delete_link(handle: &Handle, name: &str) -> anyhow::Result<()> {
    let index = link_index(handle, name).await?;
    handle
        .link()
        .del(index)
        .execute()
        .await
        .with_context(|| format!("failed to delete {name}"))
}
