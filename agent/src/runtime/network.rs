//! Links of the silo network: the host bridge, one veth pair per silo, and the silo side's
//! address and default route inside the silo's network namespace.
//!
//! A silo's veth pair is made in one request that creates the silo end directly inside the
//! silo's network namespace. Moving an existing link into another namespace costs far more,
//! because the kernel unlists the device and waits for RCU grace periods (`synchronize_net`)
//! before it registers the device again in the new namespace: see docs/benchmarks.md.
//!
//! A netlink socket stays in the network namespace of the thread that opened it. Host-side work
//! uses one socket opened in the agent's namespace. Work inside a silo runs on a fresh OS thread
//! that `setns()`s into the silo and has its own current-thread tokio runtime, so no tokio worker
//! or blocking-pool thread ever changes namespace.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkMessage,
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};
use tokio::sync::oneshot;
use tracing::debug;

use super::antispoof;
use super::names::SILO_IFNAME;
use super::step_clock::mark;

/// Name of the loopback interface.
const LOOPBACK_IFNAME: &str = "lo";

/// MTU of the bridge and of both ends of every silo veth, in bytes. It equals the WireGuard
/// mesh's MTU (`crate::mesh::MESH_MTU_BYTES`), so a silo's packets to another host fit the
/// tunnel without fragmentation. Path MTU discovery fails wherever ICMP is dropped.
pub const SILO_MTU_BYTES: u32 = 1420;
// The two must agree; checked at compile time.
const _: () = assert!(SILO_MTU_BYTES == crate::mesh::MESH_MTU_BYTES);

/// Errors of network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("failed to open a netlink socket: {source}")]
    Connect { source: io::Error },
    #[error("failed to stop IPv6 address generation on {name}: {source}")]
    NoIpv6Addresses {
        name: String,
        source: rtnetlink::Error,
    },
    #[error("failed to look up link {name}: {source}")]
    GetLink {
        name: String,
        source: rtnetlink::Error,
    },
    #[error("link {name} not found")]
    LinkNotFound { name: String },
    #[error("failed to create bridge {name}: {source}")]
    CreateBridge {
        name: String,
        source: rtnetlink::Error,
    },
    #[error("failed to add address {address}/{prefix_len} to {name}: {source}")]
    AddAddress {
        name: String,
        address: Ipv4Addr,
        prefix_len: u8,
        source: rtnetlink::Error,
    },
    #[error("failed to set link {name} up: {source}")]
    SetUp {
        name: String,
        source: rtnetlink::Error,
    },
    #[error("failed to create veth pair {name}/{peer}: {source}")]
    CreateVeth {
        name: String,
        peer: String,
        source: rtnetlink::Error,
    },
    #[error("failed to attach {name} to bridge {bridge}: {source}")]
    AttachToBridge {
        name: String,
        bridge: String,
        source: rtnetlink::Error,
    },
    #[error("failed to delete link {name}: {source}")]
    DeleteLink {
        name: String,
        source: rtnetlink::Error,
    },
    #[error(
        "failed to create veth pair {name}/{peer} with {peer} in the network namespace of pid \
         {pid}: {source}"
    )]
    CreateSiloVeth {
        name: String,
        peer: String,
        pid: u32,
        source: rtnetlink::Error,
    },
    #[error("failed to set the anti-spoofing filter of {name} for {address}: {source}")]
    Antispoof {
        name: String,
        address: Ipv4Addr,
        source: antispoof::AntispoofError,
    },
    #[error("failed to enter the network namespace of pid {pid}: {source}")]
    EnterNetns { pid: u32, source: io::Error },
    #[error("failed to start the netlink thread for pid {pid}: {source}")]
    NetnsThread { pid: u32, source: io::Error },
    #[error("the netlink thread for pid {pid} ended without a result")]
    NetnsThreadLost { pid: u32 },
    #[error("failed to rename {from} to {to}: {source}")]
    RenameLink {
        from: String,
        to: String,
        source: rtnetlink::Error,
    },
    #[error("failed to add default route via {gateway}: {source}")]
    AddRoute {
        gateway: Ipv4Addr,
        source: rtnetlink::Error,
    },
}

/// Addressing of the silo side of a veth pair inside the silo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloInterface {
    /// Name the veth end gets in the silo namespace: `eth0`, or a name that is then renamed to
    /// `eth0`.
    pub peer: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// A netlink connection in the network namespace of the thread that made it.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    pub fn connect() -> Result<Self, NetworkError> {
        let (connection, handle, _messages) =
            rtnetlink::new_connection().map_err(|source| NetworkError::Connect { source })?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Returns the index of link `name`, or `None` if there is no such link.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetworkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link.map(|link| link.header.index)),
            Err(err) if is_errno(&err, libc::ENODEV) => Ok(None),
            Err(source) => Err(NetworkError::GetLink {
                name: name.to_string(),
                source,
            }),
        }
    }

    async fn require_index(&self, name: &str) -> Result<u32, NetworkError> {
        self.link_index(name)
            .await?
            .ok_or_else(|| NetworkError::LinkNotFound {
                name: name.to_string(),
            })
    }

    /// Creates bridge `name` if it is missing, gives it `address/prefix_len` and sets it up.
    /// Returns the bridge's index.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<u32, NetworkError> {
        if self.link_index(name).await?.is_none() {
            let created = self
                .handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await;
            match created {
                Ok(()) => debug!(bridge = name, "created bridge"),
                // Another agent start in the same namespace made it meanwhile.
                Err(err) if is_errno(&err, libc::EEXIST) => {}
                Err(source) => {
                    return Err(NetworkError::CreateBridge {
                        name: name.to_string(),
                        source,
                    })
                }
            }
        }
        let index = self.require_index(name).await?;

        let added = self
            .handle
            .address()
            .add(index, IpAddr::V4(address), prefix_len)
            .execute()
            .await;
        match added {
            Ok(()) => {}
            Err(err) if is_errno(&err, libc::EEXIST) => {}
            Err(source) => {
                return Err(NetworkError::AddAddress {
                    name: name.to_string(),
                    address,
                    prefix_len,
                    source,
                })
            }
        }

        self.set_bridge_up(index, name, bridge_mac(address)).await?;
        Ok(index)
    }

    /// Sets the bridge up with the silo MTU and the MAC address `mac`. Set once, neither follows
    /// the bridge's ports any more. A bridge whose MAC was never set takes the lowest MAC of
    /// its ports, so removing one silo could change the gateway's MAC under the others' ARP
    /// caches. Their packets to the gateway would then go nowhere until those entries expire.
    // NOTE: a bridge made by an agent without this step gets the new MAC at the next agent
    // start, so adopted silos miss the gateway until their ARP entry is checked again.
    async fn set_bridge_up(&self, index: u32, name: &str, mac: [u8; 6]) -> Result<(), NetworkError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(SILO_MTU_BYTES)
                    .address(mac.to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| NetworkError::SetUp {
                name: name.to_string(),
                source,
            })
    }

    /// Deletes link `name`; a missing link is fine. Deleting one end of a veth pair deletes both.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetworkError> {
        let Some(index) = self.link_index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(err) if is_errno(&err, libc::ENODEV) => Ok(()),
            Err(source) => Err(NetworkError::DeleteLink {
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Creates the veth pair `name`/`peer` in this namespace, attaches `name` to the bridge and
    /// sets it up. A leftover link called `name` is deleted first: it can only be an earlier
    /// copy of this silo's veth, because the name is derived from the silo id.
    ///
    /// Silo starts and restarts use [`Netlink::setup_silo_network`]; tests use this to make a
    /// leftover pair.
    #[cfg(test)]
    pub async fn create_veth(
        &self,
        name: &str,
        peer: &str,
        bridge: &str,
    ) -> Result<(), NetworkError> {
        self.delete_link(name).await?;
        self.delete_link(peer).await?;
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|source| NetworkError::CreateVeth {
                name: name.to_string(),
                peer: peer.to_string(),
                source,
            })?;

        let bridge_index = self.require_index(bridge).await?;
        let index = self.require_index(name).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| NetworkError::AttachToBridge {
                name: name.to_string(),
                bridge: bridge.to_string(),
                source,
            })
    }

    /// Creates the veth pair of a silo in one request: `name` in this namespace, attached to
    /// `bridge`, and `peer` inside the network namespace of process `pid`, both down.
    /// A leftover link called `name` is deleted and the request sent once more: it can only be
    /// an earlier copy of this silo's veth, because the name is derived from the silo id.
    async fn create_silo_veth(
        &self,
        name: &str,
        peer: &str,
        bridge: &str,
        pid: u32,
    ) -> Result<(), NetworkError> {
        let bridge_index = self.require_index(bridge).await?;
        let create_error = |source| NetworkError::CreateSiloVeth {
            name: name.to_string(),
            peer: peer.to_string(),
            pid,
            source,
        };
        let request = || silo_veth_message(name, peer, bridge_index, pid);

        match self.handle.link().add(request()).execute().await {
            Ok(()) => return Ok(()),
            Err(err) if is_errno(&err, libc::EEXIST) => {
                debug!(veth = name, "deleting a leftover veth of the same silo");
                self.delete_link(name).await?;
            }
            Err(source) => return Err(create_error(source)),
        }
        self.handle
            .link()
            .add(request())
            .execute()
            .await
            .map_err(create_error)
    }
}

/// Builds the RTM_NEWLINK message of [`Netlink::create_silo_veth`]. The kernel creates the
/// peer in the namespace its message names (`IFLA_NET_NS_PID`), so it never exists in ours.
/// Both ends start down: see [`Netlink::setup_silo_network`] for why.
fn silo_veth_message(name: &str, peer: &str, bridge_index: u32, pid: u32) -> LinkMessage {
    let mut peer_message = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .mtu(SILO_MTU_BYTES)
        .setns_by_pid(pid)
        .build();
    with_one_queue(&mut peer_message);
    let mut message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .mtu(SILO_MTU_BYTES)
        .controller(bridge_index)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
        .build();
    with_one_queue(&mut message);
    message
}

/// Asks for one transmit and one receive queue. A veth created without these attributes gets a
/// queue per CPU and is then cut down to one, and that cut waits for an RCU grace period for
/// each end (seen as `synchronize_rcu_expedited` under `veth_init_queues` in a profile).
fn with_one_queue(message: &mut LinkMessage) {
    message.attributes.push(LinkAttribute::NumTxQueues(1));
    message.attributes.push(LinkAttribute::NumRxQueues(1));
}

impl Netlink {
    /// Sets up the network of the silo whose PID 1 is process `pid`. Creates the veth pair, with
    /// the host end `host_veth` on `bridge` and the silo end `interface.peer`. Inside the silo's
    /// namespace, sets loopback up, renames the silo end to `eth0`, gives it its address, sets
    /// it up and adds a default route via the bridge.
    ///
    /// The work inside the silo's namespace runs on a thread of its own. It starts first and
    /// brings loopback up while this namespace creates the pair, which saves that time on
    /// every start.
    ///
    /// The host end gets its anti-spoofing filter while it is still down, and goes up before
    /// the silo end does. On a link that is up, adding the ingress qdisc deactivates the link
    /// and waits for an expedited RCU grace period with the RTNL lock held. So does a lookup of
    /// the link while it has an unhandled carrier-off event (`linkwatch_sync_dev`). On a down
    /// link neither waits. The silo end goes up last, so its own `dev_open` finds the carrier on
    /// and activates its queue before the program can send.
    pub async fn setup_silo_network(
        &self,
        host_veth: &str,
        bridge: &str,
        pid: u32,
        interface: SiloInterface,
    ) -> Result<(), NetworkError> {
        let peer = interface.peer.clone();
        let address = interface.address;
        let (veth_created_tx, veth_created_rx) = oneshot::channel();
        let (host_up_tx, host_up_rx) = oneshot::channel();
        let (result_tx, result_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("netns-{pid}"))
            .spawn(move || {
                // This thread ends after this call, so its namespace switch affects no other work.
                let result = configure_on_this_thread(pid, &interface, veth_created_rx, host_up_rx);
                let _ = result_tx.send(result);
            })
            .map_err(|source| NetworkError::NetnsThread { pid, source })?;

        // On failure the senders are dropped, which makes the thread stop early.
        self.create_silo_veth(host_veth, &peer, bridge, pid).await?;
        mark("veth_created");
        let _ = veth_created_tx.send(());

        // The filter goes on while the thread configures the silo's end, and before any link of
        // the pair is up, so no packet of the silo passes unchecked.
        let filtered = async {
            let host_index = self.require_index(host_veth).await?;
            antispoof::install(&self.handle, host_index, address)
                .await
                .map_err(|source| NetworkError::Antispoof {
                    name: host_veth.to_owned(),
                    address,
                    source,
                })?;
            mark("antispoof");
            // Like the silo end, the host end makes no IPv6 addresses. Its duplicate address
            // probes, router solicitations and MLD reports would go through the bridge to
            // every running silo, so each start would make work for all of them.
            self.no_ipv6_addresses(host_index, host_veth).await?;
            self.set_up(host_index, host_veth).await?;
            let _ = host_up_tx.send(());
            Ok::<(), NetworkError>(())
        };
        let configured = async {
            let result = result_rx
                .await
                .map_err(|_| NetworkError::NetnsThreadLost { pid })?;
            mark("silo_end_configured");
            result
        };
        let (filtered, configured) = tokio::join!(filtered, configured);
        filtered?;
        configured
    }

    /// Sets link `index` (`name`) up.
    async fn set_up(&self, index: u32, name: &str) -> Result<(), NetworkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|source| NetworkError::SetUp {
                name: name.to_string(),
                source,
            })
    }
}

/// Enters the network namespace of process `pid` and configures it: the silo end of the veth
/// pair once `veth_created` fires, and sets that end up once `host_up` fires.
fn configure_on_this_thread(
    pid: u32,
    interface: &SiloInterface,
    veth_created: oneshot::Receiver<()>,
    host_up: oneshot::Receiver<()>,
) -> Result<(), NetworkError> {
    let enter_error = |source| NetworkError::EnterNetns { pid, source };
    let netns = File::open(format!("/proc/{pid}/ns/net")).map_err(enter_error)?;
    setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|errno| enter_error(io::Error::from(errno)))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetworkError::NetnsThread { pid, source })?;
    runtime.block_on(async {
        let netlink = Netlink::connect()?;
        netlink.set_loopback_up().await?;
        if veth_created.await.is_err() {
            // The pair was not created, and the caller returns that error, not this result.
            return Ok(());
        }
        netlink.configure_silo_interface(interface, host_up).await
    })
}

impl Netlink {
    /// Sets loopback up. A request without an index selects the link by its name, which saves
    /// a lookup round trip.
    async fn set_loopback_up(&self) -> Result<(), NetworkError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_name(LOOPBACK_IFNAME).up().build())
            .execute()
            .await
            .map_err(|source| NetworkError::SetUp {
                name: LOOPBACK_IFNAME.to_string(),
                source,
            })
    }

    /// Stops IPv6 on link `index` (`name`) from making addresses, before the link goes up.
    /// Silo networks are IPv4 only, and a silo end that makes a link-local address sends
    /// duplicate address probes, router solicitations and MLD reports once it is up. The
    /// bridge floods each of them to every other silo on the host, so each start made work
    /// for every running silo. With no address there is nothing to announce; loopback keeps
    /// `::1`. The `disable_ipv6` sysctl would do it too, but writing it waited for the kernel
    /// and added milliseconds to every start (docs/benchmarks.md).
    async fn no_ipv6_addresses(&self, index: u32, name: &str) -> Result<(), NetworkError> {
        let mut message = LinkUnspec::new_with_index(index).build();
        message.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
            AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
        ])]));
        match self.handle.link().set(message).execute().await {
            Ok(()) => Ok(()),
            // A kernel without IPv6 makes no IPv6 addresses anyway.
            Err(err) if is_errno(&err, libc::EAFNOSUPPORT) => Ok(()),
            Err(source) => Err(NetworkError::NoIpv6Addresses {
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Renames the silo end of the veth pair to `eth0`, gives it its address, sets it up once
    /// `host_up` fires and adds the default route. Returns early without an error when the
    /// caller drops `host_up`, because the caller's own error then explains the failed start.
    async fn configure_silo_interface(
        &self,
        interface: &SiloInterface,
        host_up: oneshot::Receiver<()>,
    ) -> Result<(), NetworkError> {
        let index = self.require_index(&interface.peer).await?;
        self.no_ipv6_addresses(index, &interface.peer).await?;
        // A peer created as `eth0`, as the runtime does, needs no rename, which would wait for
        // an RCU grace period. Another name is changed in a request of its own, because the
        // link goes up only after the host end.
        if interface.peer != SILO_IFNAME {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).name(SILO_IFNAME).build())
                .execute()
                .await
                .map_err(|source| NetworkError::RenameLink {
                    from: interface.peer.clone(),
                    to: SILO_IFNAME.to_string(),
                    source,
                })?;
        }
        // On a down link: the kernel adds the address's routes when the link goes up.
        self.handle
            .address()
            .add(index, IpAddr::V4(interface.address), interface.prefix_len)
            .execute()
            .await
            .map_err(|source| NetworkError::AddAddress {
                name: SILO_IFNAME.to_string(),
                address: interface.address,
                prefix_len: interface.prefix_len,
                source,
            })?;

        if host_up.await.is_err() {
            return Ok(());
        }
        self.set_up(index, SILO_IFNAME).await?;

        // The gateway is reachable only once the link is up with its address.
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(interface.gateway)
            .output_interface(index)
            .build();
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(|source| NetworkError::AddRoute {
                gateway: interface.gateway,
                source,
            })
    }
}

/// Returns the bridge's MAC address for the gateway address `gateway`: locally administered
/// and unicast (first byte 0x02), then the bytes of "cx", then the gateway's last three bytes.
/// Bridges of other hosts never share a link with this one. The subnets of several agents on
/// one machine differ, so the MAC is unique wherever silos see it.
fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [_, second, third, fourth] = gateway.octets();
    [0x02, b'c', b'x', second, third, fourth]
}

fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(message) if message.raw_code() == -errno)
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::mpsc;
    use std::time::Instant;

    use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};

    use super::*;

    /// Returns whether the test can run; panics without root when CI=true.
    fn has_root(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test} needs root, and CI=true does not allow skipping it"
        );
        eprintln!("skipped {test}: needs root");
        false
    }

    fn random_hex() -> String {
        let value = RandomState::new().hash_one((std::process::id(), Instant::now()));
        format!("{:08x}", value as u32)
    }

    /// A thread in a network namespace of its own that stays until the guard is dropped, as a
    /// silo's PID 1 would. The test passes its thread id where the runtime passes PID 1's pid:
    /// the kernel finds the namespace of a thread by its id too.
    struct TargetNetns {
        tid: u32,
        stop: Option<mpsc::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl TargetNetns {
        fn new() -> TargetNetns {
            let (tid_tx, tid_rx) = mpsc::channel();
            let (stop, stop_rx) = mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare network namespace");
                let tid = u32::try_from(nix::unistd::gettid().as_raw()).expect("positive tid");
                tid_tx.send(tid).expect("send tid");
                let _ = stop_rx.recv();
            });
            let tid = tid_rx.recv().expect("target thread started");
            TargetNetns {
                tid,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        /// Reads a file of the namespace's `/proc/<tid>/net`.
        fn proc_net(&self, file: &str) -> String {
            std::fs::read_to_string(format!("/proc/{}/net/{file}", self.tid))
                .unwrap_or_else(|err| panic!("read /proc/{}/net/{file}: {err}", self.tid))
        }
    }

    impl Drop for TargetNetns {
        fn drop(&mut self) {
            drop(self.stop.take());
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// Runs `test` on a thread in a new network namespace, with a current-thread tokio runtime.
    /// The namespace, with everything the test made in it, vanishes when the thread ends.
    fn in_netns<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F + Send + 'static) {
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare network namespace");
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build tokio runtime")
                .block_on(test());
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    async fn link(netlink: &Netlink, name: &str) -> Option<LinkMessage> {
        netlink
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .ok()
            .flatten()
    }

    async fn assert_silo_network(netlink: &Netlink, target: &TargetNetns, names: &TestNames) {
        let host_end = link(netlink, &names.host_veth)
            .await
            .expect("host end exists in the host namespace");
        assert!(
            host_end.header.flags.contains(LinkFlags::Up),
            "host end is up"
        );
        let bridge_index = netlink
            .link_index(&names.bridge)
            .await
            .expect("look up bridge")
            .expect("bridge exists");
        assert!(
            host_end
                .attributes
                .contains(&LinkAttribute::Controller(bridge_index)),
            "host end is attached to the bridge"
        );
        assert!(
            link(netlink, &names.peer).await.is_none(),
            "the silo end never exists in the host namespace"
        );

        let bridge = link(netlink, &names.bridge).await.expect("bridge exists");
        for (end, message) in [("bridge", &bridge), ("host end", &host_end)] {
            assert!(
                message
                    .attributes
                    .contains(&LinkAttribute::Mtu(SILO_MTU_BYTES)),
                "{end} has MTU {SILO_MTU_BYTES}"
            );
        }
        let silo_link = std::process::Command::new("nsenter")
            .args(["-t", &target.tid.to_string(), "-n", "ip", "-o", "link", "show", SILO_IFNAME])
            .output()
            .expect("run nsenter ip link");
        let silo_link = String::from_utf8_lossy(&silo_link.stdout);
        assert!(
            silo_link.contains(&format!(" mtu {SILO_MTU_BYTES} ")),
            "{SILO_IFNAME} has MTU {SILO_MTU_BYTES}: {silo_link}"
        );

        let devices = target.proc_net("dev");
        assert!(devices.contains("eth0:"), "eth0 in the silo: {devices}");
        assert!(
            !devices.contains(&names.peer),
            "the silo end is renamed: {devices}"
        );
        let routes = target.proc_net("route");
        let default_route = routes.lines().find(|line| {
            let fields: Vec<_> = line.split_whitespace().collect();
            fields.first() == Some(&"eth0") && fields.get(1) == Some(&"00000000")
        });
        assert!(default_route.is_some(), "default route via eth0: {routes}");
        // The local table lists an interface's addresses only while the interface is up.
        let local = target.proc_net("fib_trie");
        assert!(local.contains("127.0.0.1"), "loopback is up: {local}");
        assert!(
            local.contains(TEST_ADDRESS),
            "eth0 has its address: {local}"
        );
    }

    const TEST_ADDRESS: &str = "10.69.250.2";
    const TEST_GATEWAY: &str = "10.69.250.1";
    const TEST_PREFIX_LEN: u8 = 24;

    struct TestNames {
        bridge: String,
        host_veth: String,
        peer: String,
    }

    impl TestNames {
        fn new() -> TestNames {
            let unique = random_hex();
            TestNames {
                bridge: format!("cxb{unique}"),
                host_veth: format!("cx{unique}"),
                peer: format!("cx{unique}p"),
            }
        }

        fn interface(&self) -> SiloInterface {
            SiloInterface {
                peer: self.peer.clone(),
                address: TEST_ADDRESS.parse().expect("valid address literal"),
                prefix_len: TEST_PREFIX_LEN,
                gateway: TEST_GATEWAY.parse().expect("valid gateway literal"),
            }
        }
    }

    #[test]
    fn bridge_mac_is_local_unicast_from_gateway() {
        let mac = bridge_mac(Ipv4Addr::new(10, 69, 3, 1));
        assert_eq!(mac, [0x02, 0x63, 0x78, 69, 3, 1]);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    }

    #[test]
    fn silo_network_is_created_in_place() {
        if !has_root("silo_network_is_created_in_place") {
            return;
        }
        in_netns(|| async {
            let names = TestNames::new();
            let netlink = Netlink::connect().expect("connect");
            let gateway = TEST_GATEWAY.parse().expect("valid gateway literal");
            netlink
                .ensure_bridge(&names.bridge, gateway, TEST_PREFIX_LEN)
                .await
                .expect("create bridge");
            let target = TargetNetns::new();

            netlink
                .setup_silo_network(
                    &names.host_veth,
                    &names.bridge,
                    target.tid,
                    names.interface(),
                )
                .await
                .expect("set up the silo network");
            assert_silo_network(&netlink, &target, &names).await;

            // IPv6 is off on the silo end: no address, not even a link-local one, which the
            // kernel would have added when the link went up.
            let ipv6_addresses = target.proc_net("if_inet6");
            assert!(
                !ipv6_addresses
                    .lines()
                    .any(|line| line.split_whitespace().last() == Some(SILO_IFNAME)),
                "{SILO_IFNAME} has IPv6 addresses:\n{ipv6_addresses}"
            );
        });
    }

    #[test]
    fn silo_network_replaces_leftover_veth() {
        if !has_root("silo_network_replaces_leftover_veth") {
            return;
        }
        in_netns(|| async {
            let names = TestNames::new();
            let netlink = Netlink::connect().expect("connect");
            let gateway = TEST_GATEWAY.parse().expect("valid gateway literal");
            netlink
                .ensure_bridge(&names.bridge, gateway, TEST_PREFIX_LEN)
                .await
                .expect("create bridge");
            // What an earlier start of the same silo can leave: the pair in the host namespace.
            netlink
                .create_veth(&names.host_veth, &names.peer, &names.bridge)
                .await
                .expect("create leftover pair");
            let target = TargetNetns::new();

            netlink
                .setup_silo_network(
                    &names.host_veth,
                    &names.bridge,
                    target.tid,
                    names.interface(),
                )
                .await
                .expect("set up the silo network");
            assert_silo_network(&netlink, &target, &names).await;
        });
    }

    #[test]
    fn silo_network_fails_for_missing_bridge() {
        if !has_root("silo_network_fails_for_missing_bridge") {
            return;
        }
        in_netns(|| async {
            let names = TestNames::new();
            let netlink = Netlink::connect().expect("connect");
            let target = TargetNetns::new();

            let err = netlink
                .setup_silo_network(
                    &names.host_veth,
                    &names.bridge,
                    target.tid,
                    names.interface(),
                )
                .await
                .expect_err("no bridge");
            assert!(
                matches!(&err, NetworkError::LinkNotFound { name } if *name == names.bridge),
                "{err}"
            );
            assert!(
                link(&netlink, &names.host_veth).await.is_none(),
                "no veth is left"
            );
            let devices = target.proc_net("dev");
            assert!(!devices.contains("eth0"), "nothing in the silo: {devices}");
        });
    }
}
