//! Links of the silo network: the host bridge, one veth pair per silo, and the silo side's
//! address and default route inside the silo's network namespace.
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
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::sync::oneshot;
use tracing::debug;

use super::names::SILO_IFNAME;

/// Name of the loopback interface.
const LOOPBACK_IFNAME: &str = "lo";

/// Errors of network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("failed to open a netlink socket: {source}")]
    Connect { source: io::Error },
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
    #[error("failed to move {name} into the network namespace of pid {pid}: {source}")]
    MoveToNetns {
        name: String,
        pid: u32,
        source: rtnetlink::Error,
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
    /// Name of the veth end in the silo namespace before it is renamed to `eth0`.
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

        self.set_up(index, name).await?;
        Ok(index)
    }

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

    /// Creates the veth pair `name`/`peer`, attaches `name` to the bridge and sets it up.
    /// A leftover link called `name` is deleted first: it can only be an earlier copy of this
    /// silo's veth, because the name is derived from the silo id.
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

    /// Moves link `name` into the network namespace of process `pid`.
    pub async fn move_to_netns(&self, name: &str, pid: u32) -> Result<(), NetworkError> {
        let index = self.require_index(name).await?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).setns_by_pid(pid).build())
            .execute()
            .await
            .map_err(|source| NetworkError::MoveToNetns {
                name: name.to_string(),
                pid,
                source,
            })
    }
}

/// Configures the network namespace of process `pid`: loopback up, the veth end renamed to
/// `eth0` with its address and up, and a default route via the bridge.
pub async fn configure_silo_netns(pid: u32, interface: SiloInterface) -> Result<(), NetworkError> {
    let (result_tx, result_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("netns-{pid}"))
        .spawn(move || {
            // This thread ends after this call, so its namespace switch affects no other work.
            let result = configure_on_this_thread(pid, &interface);
            let _ = result_tx.send(result);
        })
        .map_err(|source| NetworkError::NetnsThread { pid, source })?;
    result_rx
        .await
        .map_err(|_| NetworkError::NetnsThreadLost { pid })?
}

fn configure_on_this_thread(pid: u32, interface: &SiloInterface) -> Result<(), NetworkError> {
    let enter_error = |source| NetworkError::EnterNetns { pid, source };
    let netns = File::open(format!("/proc/{pid}/ns/net")).map_err(enter_error)?;
    setns(&netns, CloneFlags::CLONE_NEWNET).map_err(|errno| enter_error(io::Error::from(errno)))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetworkError::NetnsThread { pid, source })?;
    runtime.block_on(async {
        let netlink = Netlink::connect()?;
        netlink.configure_silo_side(interface).await
    })
}

impl Netlink {
    async fn configure_silo_side(&self, interface: &SiloInterface) -> Result<(), NetworkError> {
        let loopback = self.require_index(LOOPBACK_IFNAME).await?;
        self.set_up(loopback, LOOPBACK_IFNAME).await?;

        let index = self.require_index(&interface.peer).await?;
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

fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(message) if message.raw_code() == -errno)
}
