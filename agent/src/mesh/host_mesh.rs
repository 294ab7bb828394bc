//! The agent's mesh: its device name, key pair and device, and the peer list from the
//! controller turned into the device's peers and routes.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};

use colex_proto as proto;
use ipnet::Ipv4Net;
use prost::Message;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::device::{
    remove_leftover, Backend, BackendChoice, DeviceError, MeshDevice, MAX_IFNAME_BYTES,
};
use super::keys::{HostKey, KeyError, PublicKey};
use super::peers::{MeshConfig, MeshPeer, PeersError, MESH_MTU_BYTES};

/// UDP port of the mesh device when the agent config sets no `mesh_port`. It is WireGuard's
/// usual port.
pub const DEFAULT_MESH_PORT: u16 = 51820;

/// Prefix of the agent's mesh interface name, which a hash of the state dir follows.
const IFNAME_PREFIX: &str = "cxm";

/// Interval of keepalive packets to every peer in seconds, which keep NAT and stateful firewall
/// entries on the path open while no silo sends.
const PERSISTENT_KEEPALIVE_SECS: u16 = 25;

/// UDP port of the packets that start handshakes: the discard port, which no colex component
/// listens on.
const NUDGE_PORT: u16 = 9;

/// File in the state dir with the last peer list that was applied, protobuf-encoded, so a
/// restarted agent joins the mesh again before it reaches the controller.
const PEERS_FILE_NAME: &str = "mesh-peers";

/// sysctl that lets the kernel forward packets between the silo bridge and the mesh device.
const IP_FORWARD_PATH: &str = "/proc/sys/net/ipv4/ip_forward";

/// Errors of starting or configuring the agent's mesh.
#[derive(Debug, thiserror::Error)]
pub enum HostMeshError {
    #[error("failed to create the state dir {path}: {source}")]
    CreateStateDir { path: PathBuf, source: io::Error },
    #[error("failed to resolve the state dir {path}: {source}")]
    ResolveStateDir { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Peers(#[from] PeersError),
    #[error("failed to enable IPv4 forwarding in {IP_FORWARD_PATH}: {source}")]
    IpForward { source: io::Error },
    #[error("the blocking task of the mesh device {name} failed: {source}")]
    Task {
        name: String,
        source: tokio::task::JoinError,
    },
}

/// The agent's WireGuard device with the host's key pair. Dropping it removes the device.
#[derive(Debug)]
pub struct HostMesh {
    device: MeshDevice,
    public_key: PublicKey,
    /// The agent's state dir, which contains the key and the last peer list.
    state_dir: PathBuf,
}

/// Returns the mesh interface name of the agent whose state dir is `state_dir`: `cxm` and the
/// first 12 hex digits of the SHA-256 of the path. Two agents on one machine never share a state
/// dir, so the name is unique on the machine, and it stays the same across agent restarts.
pub fn interface_name(state_dir: &Path) -> String {
    let digest = Sha256::digest(state_dir.as_os_str().as_encoded_bytes());
    let hex_digits = MAX_IFNAME_BYTES - IFNAME_PREFIX.len();
    let mut name = String::from(IFNAME_PREFIX);
    for byte in digest.iter().take(hex_digits.div_ceil(2)) {
        name.push_str(&format!("{byte:02x}"));
    }
    name.truncate(MAX_IFNAME_BYTES);
    name
}

/// Returns the state dir as an absolute path without symlinks, which [`interface_name`] hashes,
/// after creating it if it is missing.
fn resolve_state_dir(state_dir: &Path) -> Result<PathBuf, HostMeshError> {
    std::fs::create_dir_all(state_dir).map_err(|source| HostMeshError::CreateStateDir {
        path: state_dir.to_path_buf(),
        source,
    })?;
    state_dir
        .canonicalize()
        .map_err(|source| HostMeshError::ResolveStateDir {
            path: state_dir.to_path_buf(),
            source,
        })
}

impl HostMesh {
    /// Loads or generates the key pair in `state_dir` and creates the mesh device in the
    /// agent's network namespace, listening on UDP port `listen_port`. The kernel backend is
    /// tried first.
    pub async fn start(state_dir: &Path, listen_port: u16) -> Result<HostMesh, HostMeshError> {
        let state_dir = resolve_state_dir(state_dir)?;
        let name = interface_name(&state_dir);
        let task_name = name.clone();
        let task_state_dir = state_dir.clone();
        let started = tokio::task::spawn_blocking(move || {
            let state_dir = task_state_dir;
            let key = HostKey::load_or_generate(&state_dir)?;
            let device = match MeshDevice::create(&name, listen_port, &key, BackendChoice::Auto) {
                // The name comes from this agent's state dir, so the link is this agent's own,
                // left by a run that was killed.
                Err(DeviceError::LinkExists { .. }) => {
                    warn!(device = %name, "removing the mesh link an earlier run left");
                    remove_leftover(&name)?;
                    MeshDevice::create(&name, listen_port, &key, BackendChoice::Auto)?
                }
                created => created?,
            };
            Ok::<_, HostMeshError>(HostMesh {
                device,
                public_key: key.public_key(),
                state_dir,
            })
        })
        .await
        .map_err(|source| HostMeshError::Task {
            name: task_name,
            source,
        })??;
        info!(
            device = started.device.name(),
            backend = %started.backend(),
            listen_port,
            "mesh ready"
        );
        Ok(started)
    }

    pub fn name(&self) -> &str {
        self.device.name()
    }

    pub fn backend(&self) -> Backend {
        self.device.backend()
    }

    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    pub fn listen_port(&self) -> u16 {
        self.device.listen_port()
    }

    /// Sets the device's peers and routes to the controller's peer list. The device gets
    /// `gateway`, the silo bridge's address, as a /32, so packets the host itself sends into
    /// the mesh carry an address that the other hosts accept from this peer and route back.
    /// Returns the number of peers set; invalid entries are logged and left out. Blocks like
    /// [`MeshDevice::replace_peers`], so async code calls it through `spawn_blocking`.
    pub fn apply(&self, gateway: Ipv4Addr, peers: &proto::Peers) -> Result<usize, HostMeshError> {
        // Silo packets to other hosts are forwarded from the bridge to the mesh device.
        let current = std::fs::read_to_string(IP_FORWARD_PATH).unwrap_or_default();
        if current.trim() != "1" {
            std::fs::write(IP_FORWARD_PATH, "1")
                .map_err(|source| HostMeshError::IpForward { source })?;
            info!(path = IP_FORWARD_PATH, "turned on IPv4 forwarding for the mesh; it stays on after the agent stops");
        }
        let config = mesh_config(gateway, self.public_key, peers);
        let count = config.peers.len();
        self.device.replace_peers(&config)?;
        nudge_handshakes(&config.peers);
        self.store_peers(peers);
        Ok(count)
    }

    /// Returns the peer list stored by the last successful [`HostMesh::apply`], if any. A file
    /// that cannot be read or decoded is logged and ignored, because the controller sends the
    /// list again.
    pub fn stored_peers(&self) -> Option<proto::Peers> {
        let path = self.state_dir.join(PEERS_FILE_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                warn!(path = %path.display(), %error, "failed to read the stored mesh peers; waiting for the controller's list");
                return None;
            }
        };
        match proto::Peers::decode(bytes.as_slice()) {
            Ok(peers) => Some(peers),
            Err(error) => {
                warn!(path = %path.display(), %error, "invalid stored mesh peers; waiting for the controller's list");
                None
            }
        }
    }

    /// Writes `peers` to the state dir through a temp file and a rename, so a crash leaves the
    /// old list or the new one. A failure is logged: it only delays the mesh after a restart
    /// until the controller is reached.
    fn store_peers(&self, peers: &proto::Peers) {
        let path = self.state_dir.join(PEERS_FILE_NAME);
        let temp = self.state_dir.join(format!("{PEERS_FILE_NAME}.tmp"));
        let written = std::fs::write(&temp, peers.encode_to_vec()).and_then(|()| std::fs::rename(&temp, &path));
        if let Err(error) = written {
            warn!(path = %path.display(), %error, "failed to store the mesh peers; a restarted agent waits for the controller's list");
        }
    }
}

/// Applies peer lists from async code on the blocking thread pool.
pub async fn apply_in_background(
    mesh: std::sync::Arc<HostMesh>,
    gateway: Ipv4Addr,
    peers: proto::Peers,
) -> Result<usize, HostMeshError> {
    let name = mesh.name().to_string();
    tokio::task::spawn_blocking(move || mesh.apply(gateway, &peers))
        .await
        .map_err(|source| HostMeshError::Task { name, source })?
}

/// Sends one empty UDP datagram through the mesh to the first address of every peer subnet, so
/// the device starts a handshake with each peer that it has no session with.
///
/// A restarted agent's device has no sessions, but its peers keep sending with the session they
/// had with the earlier device. boringtun 0.7.1 starts a new handshake only after 15 s of
/// sending without receiving (`KEEPALIVE_TIMEOUT` plus `REKEY_TIMEOUT` in `noise/timers.rs`),
/// or at the first persistent keepalive after 25 s. The handshake this packet starts replaces
/// the stale session at once, which took cross-host traffic from 20 s to under 1 s after an
/// agent restart in the mesh cluster test. A peer with a session just receives one small
/// packet.
fn nudge_handshakes(peers: &[MeshPeer]) {
    let socket = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
        Ok(socket) => socket,
        Err(error) => {
            warn!(%error, "failed to open a UDP socket to start mesh handshakes; they start with the next traffic");
            return;
        }
    };
    for subnet in peers.iter().flat_map(|peer| &peer.allowed_ips) {
        let Some(target) = subnet.hosts().next() else {
            continue;
        };
        if let Err(error) = socket.send_to(&[], (target, NUDGE_PORT)) {
            warn!(%target, %error, "failed to start a mesh handshake; it starts with the next traffic");
        }
    }
}

/// Builds the device configuration from the controller's peer list. Entries with an invalid key,
/// endpoint or subnet, this host's own key, or a key or subnet already listed are logged and
/// left out, because one bad entry must not cut this host off from all the others.
fn mesh_config(gateway: Ipv4Addr, own_key: PublicKey, peers: &proto::Peers) -> MeshConfig {
    let mut keys = BTreeSet::from([*own_key.as_bytes()]);
    let mut subnets = BTreeSet::new();
    let mut mesh_peers = Vec::with_capacity(peers.peers.len());
    for peer in &peers.peers {
        let parsed = parse_peer(peer);
        let mesh_peer = match parsed {
            Ok(mesh_peer) => mesh_peer,
            Err(reason) => {
                warn!(host = %peer.host, %reason, "mesh peer left out");
                continue;
            }
        };
        if !keys.insert(*mesh_peer.public_key.as_bytes()) {
            warn!(host = %peer.host, public_key = %mesh_peer.public_key, "mesh peer left out because its key is this host's or another peer's");
            continue;
        }
        if !mesh_peer.allowed_ips.iter().all(|subnet| subnets.insert(*subnet)) {
            warn!(host = %peer.host, subnet = %peer.subnet, "mesh peer left out because another peer has its subnet");
            continue;
        }
        mesh_peers.push(mesh_peer);
    }
    MeshConfig {
        address: Ipv4Net::from(gateway),
        mtu_bytes: MESH_MTU_BYTES,
        peers: mesh_peers,
    }
}

fn parse_peer(peer: &proto::Peer) -> Result<MeshPeer, String> {
    let public_key = peer.public_key.parse().map_err(|err| format!("{err}"))?;
    let endpoint: SocketAddr = peer
        .endpoint
        .parse()
        .map_err(|_| format!("invalid endpoint {:?}: expected ADDRESS:PORT", peer.endpoint))?;
    let subnet: Ipv4Net = peer
        .subnet
        .parse()
        .map_err(|_| format!("invalid subnet {:?}: expected an IPv4 CIDR", peer.subnet))?;
    if subnet.trunc() != subnet {
        return Err(format!("invalid subnet {subnet}: host bits are set"));
    }
    Ok(MeshPeer {
        public_key,
        endpoint,
        allowed_ips: vec![subnet],
        persistent_keepalive_secs: Some(PERSISTENT_KEEPALIVE_SECS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 69, 1, 1);

    fn peer(host: &str, key: PublicKey, subnet: &str) -> proto::Peer {
        proto::Peer {
            host: host.to_string(),
            public_key: key.to_string(),
            endpoint: "198.51.100.4:51820".to_string(),
            subnet: subnet.to_string(),
        }
    }

    #[test]
    fn interface_name_is_stable_and_fits() {
        let name = interface_name(Path::new("/var/lib/colex/agent/h1"));
        assert_eq!(name.len(), MAX_IFNAME_BYTES, "{name}");
        assert!(name.starts_with(IFNAME_PREFIX), "{name}");
        assert_eq!(name, interface_name(Path::new("/var/lib/colex/agent/h1")));
        assert_ne!(name, interface_name(Path::new("/var/lib/colex/agent/h2")));
    }

    #[test]
    fn config_has_gateway_and_peers() {
        let own = HostKey::generate().public_key();
        let other = HostKey::generate().public_key();
        let peers = proto::Peers {
            peers: vec![peer("b", other, "10.69.2.0/24")],
        };
        let config = mesh_config(GATEWAY, own, &peers);
        assert_eq!(config.address, "10.69.1.1/32".parse::<Ipv4Net>().expect("literal"));
        assert_eq!(config.mtu_bytes, MESH_MTU_BYTES);
        assert_eq!(config.peers.len(), 1);
        assert_eq!(config.peers[0].public_key, other);
        assert_eq!(config.peers[0].allowed_ips, ["10.69.2.0/24".parse::<Ipv4Net>().expect("literal")]);
        assert_eq!(config.peers[0].endpoint, "198.51.100.4:51820".parse::<SocketAddr>().expect("literal"));
    }

    #[test]
    fn invalid_and_duplicate_peers_are_left_out() {
        let own = HostKey::generate().public_key();
        let good = HostKey::generate().public_key();
        let mut bad_endpoint = peer("e", HostKey::generate().public_key(), "10.69.5.0/24");
        bad_endpoint.endpoint = "198.51.100.5".to_string();
        let mut bad_key = peer("k", good, "10.69.6.0/24");
        bad_key.public_key = "AQID".to_string();
        let peers = proto::Peers {
            peers: vec![
                peer("good", good, "10.69.2.0/24"),
                peer("self", own, "10.69.3.0/24"),
                peer("same-key", good, "10.69.4.0/24"),
                peer("same-subnet", HostKey::generate().public_key(), "10.69.2.0/24"),
                peer("host-bits", HostKey::generate().public_key(), "10.69.7.1/24"),
                bad_endpoint,
                bad_key,
            ],
        };
        let config = mesh_config(GATEWAY, own, &peers);
        assert_eq!(config.peers.len(), 1, "{:?}", config.peers);
        assert_eq!(config.peers[0].public_key, good);
    }
}
