//! The host's DNS resolver for silos, on the bridge address, port 53. It answers `NAME.silo`
//! with the addresses of every running instance of silo NAME in the cluster, `INDEX.NAME.silo`
//! with one instance's addresses, and the agent config's `hostnames` entries. Other `.silo`
//! names get NXDOMAIN, and every other name is forwarded to the host's upstream resolvers.

pub mod answer;
pub mod server;
pub mod table;
pub mod upstream;

pub use server::{Resolver, ResolverConfig};
pub use table::{Lookup, NameTable, SharedNameTable};

/// Port the resolver listens on, UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// Zone of the silo names: `NAME.silo` and `INDEX.NAME.silo`.
pub const SILO_ZONE: &str = "silo";

/// Errors of the resolver.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("failed to bind the DNS UDP socket on {address}: {source}")]
    BindUdp {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("failed to bind the DNS TCP socket on {address}: {source}")]
    BindTcp {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}
