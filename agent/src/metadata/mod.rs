//! The host's metadata service for silos: HTTP/1.1 with JSON replies on the bridge address,
//! TCP port 17832 unless the agent config sets `metadata_port`.
//!
//! The service identifies callers by their source address, which must be the address of a
//! running silo of this host. The anti-spoofing filter on each silo's veth (module
//! `runtime::antispoof`) drops packets whose source is another address, so a
//! silo cannot pose as another one. `GET /` or `/self` returns the caller's own metadata,
//! `/list` every running silo of the cluster, and `/silos/NAME` or `/silos/NAME/INDEX` another
//! silo's metadata with its network counters, only for callers whose spec has
//! `grants.query_silos = true`.

pub mod clock;
pub mod counters;
pub mod directory;
pub mod reply;
pub mod routes;
pub mod server;

pub use directory::{Directory, SharedDirectory};
pub use server::{MetadataConfig, MetadataServer};

/// Errors of the metadata service.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("failed to bind the metadata service's TCP socket on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}
