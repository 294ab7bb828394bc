//! The host's WireGuard device, which joins this host's silo subnet to every other host's: the
//! host key pair, the device on the kernel or the embedded userspace backend, its peers,
//! address and routes, and the agent's mesh built from them.
//!
//! The controller side (subnets, publishing keys and endpoints) is not part of this module.

pub mod device;
pub mod host_mesh;
pub mod keys;
mod netns;
pub mod peers;

pub use device::{Backend, BackendChoice, DeviceError, MeshDevice};
pub use host_mesh::{HostMesh, HostMeshError, DEFAULT_MESH_PORT};
pub use keys::{HostKey, KeyError, PublicKey};
pub use netns::NetnsError;
pub use peers::{MeshConfig, MeshPeer, PeersError, MESH_MTU_BYTES};
