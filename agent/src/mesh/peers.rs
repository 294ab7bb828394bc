//! The mesh device's peers, address, MTU and routes, set in one call from the full desired
//! state. Adding or removing a host is the same call with the new peer list.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tracing::info;
use wireguard_control::{DeviceUpdate, PeerConfigBuilder};

use super::device::{is_errno, MeshDevice};
use super::keys::PublicKey;
use super::netns::NetnsError;

/// MTU of the mesh device on a 1500-byte underlay. WireGuard adds 80 bytes per packet in the
/// worst case: a 40-byte outer IPv6 header, 8 bytes of UDP, a 16-byte WireGuard data header and
/// a 16-byte authentication tag. A larger MTU makes the outer packets exceed the underlay's and
/// fragment or get dropped, so large transfers stall.
pub const MESH_MTU_BYTES: u32 = 1420;

/// Errors of configuring the mesh device.
#[derive(Debug, thiserror::Error)]
pub enum PeersError {
    #[error(
        "allowed IPs {network} of peer {public_key} have host bits set; use {} instead",
        network.trunc()
    )]
    HostBitsSet {
        public_key: PublicKey,
        network: Ipv4Net,
    },
    #[error("allowed IPs {network} are given for more than one peer")]
    DuplicateAllowedIps { network: Ipv4Net },
    #[error("peer {public_key} is listed more than once")]
    DuplicatePeer { public_key: PublicKey },
    #[error("failed to set the peers of {name}: {source}")]
    SetPeers {
        name: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("failed to open a netlink socket: {source}")]
    Connect { source: std::io::Error },
    #[error("failed to look up link {name}: {source}")]
    GetLink {
        name: String,
        source: rtnetlink::Error,
    },
    #[error("link {name} not found in the device's network namespace")]
    LinkNotFound { name: String },
    #[error("failed to set the MTU of {name} to {mtu_bytes} and set it up: {source}")]
    SetUp {
        name: String,
        mtu_bytes: u32,
        source: rtnetlink::Error,
    },
    #[error("failed to list the addresses of {name}: {source}")]
    ListAddresses {
        name: String,
        source: rtnetlink::Error,
    },
    #[error("failed to add address {address} to {name}: {source}")]
    AddAddress {
        name: String,
        address: Ipv4Net,
        source: rtnetlink::Error,
    },
    #[error("failed to delete address {address} from {name}: {source}")]
    DeleteAddress {
        name: String,
        address: IpAddr,
        source: rtnetlink::Error,
    },
    #[error("failed to list the routes of {name}: {source}")]
    ListRoutes {
        name: String,
        source: rtnetlink::Error,
    },
    #[error("failed to add route {destination} via {name}: {source}")]
    AddRoute {
        name: String,
        destination: Ipv4Net,
        source: rtnetlink::Error,
    },
    #[error("failed to delete route {destination} via {name}: {source}")]
    DeleteRoute {
        name: String,
        destination: Ipv4Net,
        source: rtnetlink::Error,
    },
}

/// Another host of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeer {
    pub public_key: PublicKey,
    /// The host's WireGuard UDP address on the underlay.
    pub endpoint: SocketAddr,
    /// Silo subnets of that host; traffic to them goes to this peer, and only packets from
    /// them are accepted from it.
    pub allowed_ips: Vec<Ipv4Net>,
    /// Interval of keepalive packets in seconds, which keep NAT and firewall state open; `None`
    /// sends none.
    pub persistent_keepalive_secs: Option<u16>,
}

/// The whole desired state of a mesh device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// The device's only IPv4 address; other IPv4 addresses on it are removed.
    pub address: Ipv4Net,
    pub mtu_bytes: u32,
    pub peers: Vec<MeshPeer>,
}

impl MeshDevice {
    /// Sets the device's state to `config`: replaces the whole peer list in one WireGuard
    /// update, gives the device its address and MTU, sets it up, and makes its main-table
    /// routes exactly one per allowed-IPs network. Routes of peers that are gone are removed.
    /// Blocks like [`MeshDevice::create`].
    pub fn replace_peers(&self, config: &MeshConfig) -> Result<(), PeersError> {
        let destinations = route_destinations(&config.peers)?;

        let peers: Vec<PeerConfigBuilder> = config.peers.iter().map(peer_config).collect();
        let update = DeviceUpdate::new().replace_peers().add_peers(&peers);
        self.apply_update(update)
            .map_err(|source| PeersError::SetPeers {
                name: self.name().to_string(),
                source,
            })?;

        let name = self.name().to_string();
        let address = config.address;
        let mtu_bytes = config.mtu_bytes;
        let desired = destinations.clone();
        self.netns()
            .block_on(&format!("{name}-routes"), move || async move {
                let (connection, handle, _messages) =
                    rtnetlink::new_connection().map_err(|source| PeersError::Connect { source })?;
                tokio::spawn(connection);
                let link = LinkState { handle, name };
                let index = link.index().await?;
                link.set_up(index, mtu_bytes).await?;
                link.set_address(index, address).await?;
                link.sync_routes(index, &desired).await
            })??;

        info!(
            device = self.name(),
            peers = config.peers.len(),
            routes = destinations.len(),
            address = %config.address,
            "configured the mesh peers"
        );
        Ok(())
    }
}

/// Returns the route destinations of `peers`, after checking that no peer and no network is
/// given twice and no network has host bits set.
fn route_destinations(peers: &[MeshPeer]) -> Result<BTreeSet<Ipv4Net>, PeersError> {
    let mut destinations = BTreeSet::new();
    let mut public_keys = BTreeSet::new();
    for peer in peers {
        // boringtun 0.7.1 panics on a worker thread when one update adds the same peer twice.
        if !public_keys.insert(*peer.public_key.as_bytes()) {
            return Err(PeersError::DuplicatePeer {
                public_key: peer.public_key,
            });
        }
        for network in &peer.allowed_ips {
            if network.trunc() != *network {
                return Err(PeersError::HostBitsSet {
                    public_key: peer.public_key,
                    network: *network,
                });
            }
            // WireGuard would silently move a network given twice to the last peer.
            if !destinations.insert(*network) {
                return Err(PeersError::DuplicateAllowedIps { network: *network });
            }
        }
    }
    Ok(destinations)
}

fn peer_config(peer: &MeshPeer) -> PeerConfigBuilder {
    let mut builder = PeerConfigBuilder::new(&peer.public_key.to_wireguard())
        .set_endpoint(peer.endpoint)
        .replace_allowed_ips();
    for network in &peer.allowed_ips {
        builder = builder.add_allowed_ip(IpAddr::V4(network.network()), network.prefix_len());
    }
    if let Some(interval) = peer.persistent_keepalive_secs {
        builder = builder.set_persistent_keepalive_interval(interval);
    }
    builder
}

/// Netlink requests about the mesh link, from inside its network namespace.
struct LinkState {
    handle: Handle,
    name: String,
}

impl LinkState {
    async fn index(&self) -> Result<u32, PeersError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(self.name.clone())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(self.not_found()),
            Err(err) if is_errno(&err, libc::ENODEV) => Err(self.not_found()),
            Err(source) => Err(PeersError::GetLink {
                name: self.name.clone(),
                source,
            }),
        }
    }

    fn not_found(&self) -> PeersError {
        PeersError::LinkNotFound {
            name: self.name.clone(),
        }
    }

    async fn set_up(&self, index: u32, mtu_bytes: u32) -> Result<(), PeersError> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(mtu_bytes)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|source| PeersError::SetUp {
                name: self.name.clone(),
                mtu_bytes,
                source,
            })
    }

    /// Makes `address` the link's only IPv4 address.
    async fn set_address(&self, index: u32, address: Ipv4Net) -> Result<(), PeersError> {
        let current: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| PeersError::ListAddresses {
                name: self.name.clone(),
                source,
            })?;

        let mut present = false;
        for message in current {
            if message.header.family != AddressFamily::Inet {
                continue;
            }
            let Some(existing) = address_of(&message) else {
                continue;
            };
            if existing == IpAddr::V4(address.addr())
                && message.header.prefix_len == address.prefix_len()
            {
                present = true;
                continue;
            }
            self.handle
                .address()
                .del(message)
                .execute()
                .await
                .map_err(|source| PeersError::DeleteAddress {
                    name: self.name.clone(),
                    address: existing,
                    source,
                })?;
        }
        if present {
            return Ok(());
        }

        self.handle
            .address()
            .add(index, IpAddr::V4(address.addr()), address.prefix_len())
            .execute()
            .await
            .map_err(|source| PeersError::AddAddress {
                name: self.name.clone(),
                address,
                source,
            })
    }

    /// Makes the link's routes in the main table exactly `desired`. Routes the kernel made for
    /// the link's own address are left alone.
    async fn sync_routes(&self, index: u32, desired: &BTreeSet<Ipv4Net>) -> Result<(), PeersError> {
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|source| PeersError::ListRoutes {
                name: self.name.clone(),
                source,
            })?;

        let mut present = BTreeSet::new();
        for route in routes {
            let on_link = route.attributes.contains(&RouteAttribute::Oif(index));
            if !on_link
                || route.header.table != RouteHeader::RT_TABLE_MAIN
                || route.header.protocol == RouteProtocol::Kernel
            {
                continue;
            }
            let Some(destination) = destination_of(&route) else {
                continue;
            };
            if desired.contains(&destination) {
                present.insert(destination);
                continue;
            }
            self.handle
                .route()
                .del(route)
                .execute()
                .await
                .map_err(|source| PeersError::DeleteRoute {
                    name: self.name.clone(),
                    destination,
                    source,
                })?;
            info!(device = %self.name, %destination, "removed a mesh route");
        }

        for destination in desired.difference(&present) {
            let route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(destination.network(), destination.prefix_len())
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            self.handle
                .route()
                .add(route)
                .execute()
                .await
                .map_err(|source| PeersError::AddRoute {
                    name: self.name.clone(),
                    destination: *destination,
                    source,
                })?;
        }
        Ok(())
    }
}

fn address_of(message: &AddressMessage) -> Option<IpAddr> {
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            AddressAttribute::Local(address) => Some(*address),
            _ => None,
        })
}

/// Returns the destination network of an IPv4 route; the default route has none.
fn destination_of(route: &RouteMessage) -> Option<Ipv4Net> {
    let address = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(address)) => Some(*address),
            _ => None,
        })?;
    Ipv4Net::new(address, route.header.destination_prefix_length).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::keys::HostKey;

    fn peer(allowed_ips: &[&str]) -> MeshPeer {
        MeshPeer {
            public_key: HostKey::generate().public_key(),
            endpoint: "198.51.100.2:51820"
                .parse()
                .expect("valid endpoint literal"),
            allowed_ips: allowed_ips
                .iter()
                .map(|network| network.parse().expect("valid network literal"))
                .collect(),
            persistent_keepalive_secs: Some(25),
        }
    }

    #[test]
    fn destinations_are_all_allowed_ips() {
        let peers = [
            peer(&["10.69.1.0/24", "10.69.9.0/24"]),
            peer(&["10.69.2.0/24"]),
        ];
        let destinations = route_destinations(&peers).expect("valid peers");
        let expected: BTreeSet<Ipv4Net> = ["10.69.1.0/24", "10.69.2.0/24", "10.69.9.0/24"]
            .iter()
            .map(|network| network.parse().expect("valid network literal"))
            .collect();
        assert_eq!(destinations, expected);
    }

    #[test]
    fn host_bits_are_rejected() {
        let err = route_destinations(&[peer(&["10.69.1.1/24"])]).expect_err("host bits");
        assert!(matches!(err, PeersError::HostBitsSet { .. }), "{err}");
        assert!(err.to_string().contains("use 10.69.1.0/24"), "{err}");
    }

    #[test]
    fn duplicate_peers_are_rejected() {
        let first = peer(&["10.69.1.0/24"]);
        let mut second = peer(&["10.69.2.0/24"]);
        second.public_key = first.public_key;
        let err = route_destinations(&[first, second]).expect_err("duplicate peer");
        assert!(matches!(err, PeersError::DuplicatePeer { .. }), "{err}");
    }

    #[test]
    fn duplicate_allowed_ips_are_rejected() {
        let peers = [peer(&["10.69.1.0/24"]), peer(&["10.69.1.0/24"])];
        let err = route_destinations(&peers).expect_err("duplicate");
        assert!(
            matches!(err, PeersError::DuplicateAllowedIps { .. }),
            "{err}"
        );
    }
}
