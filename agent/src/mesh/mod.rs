//! The host's WireGuard device, which joins this host's silo subnet to every other host's: the
//! host key pair, the device on the kernel or the embedded userspace backend, and its peers,
//! address and routes.
//!
//! The controller side (subnets, publishing keys and endpoints) is not part of this module.

pub mod device;
pub mod keys;
mod netns;
pub mod peers;

pub use device::{Backend, BackendChoice, DeviceError, MeshDevice};
pub use keys::{HostKey, KeyError, PublicKey};
pub use netns::NetnsError;
pub use peers::{MeshConfig, MeshPeer, PeersError, MESH_MTU_BYTES};
