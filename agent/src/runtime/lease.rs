//! IPv4 address leases of silos, persisted as one file per address in the run dir.
//!
//! A lease file is named after the address and contains the silo id. Creating it with
//! `O_EXCL` makes the allocation atomic, and the file outlives an agent crash, so an address is
//! never handed out twice while a veth may still use it. Lease files are not synced: the veths
//! they guard do not survive the host crash that could lose the file.
//!
//! Addresses are handed out in turn: each lease takes the next free address after the last one
//! this process leased, and wraps around at the end of the subnet. The host and the other
//! silos on the bridge keep a removed silo's address mapped to its old MAC address for 15 to
//! 45 s, and a new silo that got that address at once was unreachable from them meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::Ipv4Net;

/// Errors of lease allocation and release.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("no free address left in subnet {subnet}")]
    Exhausted { subnet: Ipv4Net },
    #[error("failed to read lease dir {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("failed to write lease file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to remove lease file {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// Returns the addresses silos may get, lowest first: from the second host address (the first
/// belongs to the bridge) up to the last address below the broadcast address.
pub fn silo_addresses(subnet: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let network = u32::from(subnet.trunc().network());
    let broadcast = u32::from(subnet.trunc().broadcast());
    let first = network.saturating_add(2);
    (first..broadcast).map(Ipv4Addr::from)
}

/// Returns the first silo address of `subnet` after `last` that `leased` does not contain,
/// wrapping around to the lowest. Without `last`, or with a `last` outside the subnet, returns
/// the lowest free address.
pub fn next_free(subnet: Ipv4Net, leased: &BTreeSet<Ipv4Addr>, last: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
    let addresses: Vec<Ipv4Addr> = silo_addresses(subnet).collect();
    let start = last
        .and_then(|last| addresses.iter().position(|addr| *addr == last))
        .map_or(0, |position| position + 1);
    let (before, after) = addresses.split_at(start.min(addresses.len()));
    after.iter().chain(before).copied().find(|addr| !leased.contains(addr))
}

/// The lease directory of one agent. Its methods block, but only for a few small local file
/// operations.
#[derive(Debug)]
pub struct Leases {
    dir: PathBuf,
    subnet: Ipv4Net,
    /// The address this process leased last. The lock also serializes allocations of this
    /// process: `O_EXCL` alone would be safe, but the lock avoids needless retries when many
    /// silos start at once.
    // NOTE: kept in memory only, so a restarted agent starts again from the lowest free
    // address, which may be one that a silo left shortly before the restart.
    last_leased: Mutex<Option<Ipv4Addr>>,
}

impl Leases {
    /// Uses `dir` (created by the caller) for the leases of `subnet`.
    pub fn new(dir: PathBuf, subnet: Ipv4Net) -> Self {
        Leases {
            dir,
            subnet,
            last_leased: Mutex::new(None),
        }
    }

    /// Returns every lease on disk: address to silo id. Files that are not named after an
    /// address are ignored.
    pub fn list(&self) -> Result<BTreeMap<Ipv4Addr, String>, LeaseError> {
        let read_dir_error = |source| LeaseError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut leases = BTreeMap::new();
        for entry in fs::read_dir(&self.dir).map_err(read_dir_error)? {
            let entry = entry.map_err(read_dir_error)?;
            let Some(addr) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            // A lease whose file cannot be read still blocks its address.
            let owner = fs::read_to_string(entry.path()).unwrap_or_default();
            leases.insert(addr, owner.trim().to_string());
        }
        Ok(leases)
    }

    /// Returns the addresses that have a lease file, without reading the files.
    fn taken(&self) -> Result<BTreeSet<Ipv4Addr>, LeaseError> {
        let read_dir_error = |source| LeaseError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let mut taken = BTreeSet::new();
        for entry in fs::read_dir(&self.dir).map_err(read_dir_error)? {
            let entry = entry.map_err(read_dir_error)?;
            if let Some(addr) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Ipv4Addr>().ok())
            {
                taken.insert(addr);
            }
        }
        Ok(taken)
    }

    /// Leases to `silo_id` the next free address after the last one leased, and persists the
    /// lease before returning.
    pub fn acquire(&self, silo_id: &str) -> Result<Ipv4Addr, LeaseError> {
        let mut last_leased = self
            .last_leased
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        loop {
            // File names only: finding a free address does not need the owners, so no lease
            // file is opened.
            let taken = self.taken()?;
            let addr = next_free(self.subnet, &taken, *last_leased).ok_or(LeaseError::Exhausted {
                subnet: self.subnet,
            })?;
            let path = self.path(addr);
            match write_new(&path, silo_id) {
                Ok(()) => {
                    *last_leased = Some(addr);
                    return Ok(addr);
                }
                // Another process took the address between the listing and the create.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(LeaseError::Write { path, source }),
            }
        }
    }

    /// Releases the lease of `addr` if `silo_id` holds it; a missing lease is not an error.
    pub fn release(&self, addr: Ipv4Addr, silo_id: &str) -> Result<(), LeaseError> {
        let path = self.path(addr);
        match fs::read_to_string(&path) {
            Ok(owner) if owner.trim() != silo_id => return Ok(()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            // An unreadable lease of this address is removed all the same.
            Err(_) => {}
        }
        remove_file(&path)
    }

    fn path(&self, addr: Ipv4Addr) -> PathBuf {
        self.dir.join(addr.to_string())
    }
}

fn write_new(path: &Path, silo_id: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(silo_id.as_bytes())
}

fn remove_file(path: &Path) -> Result<(), LeaseError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LeaseError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(text: &str) -> Ipv4Net {
        text.parse().expect("valid subnet literal")
    }

    #[test]
    fn addresses_skip_network_bridge_and_broadcast() {
        let all: Vec<Ipv4Addr> = silo_addresses(subnet("10.69.1.0/29")).collect();
        let expected: Vec<Ipv4Addr> = (2..=6).map(|host| Ipv4Addr::new(10, 69, 1, host)).collect();
        assert_eq!(all, expected);
        assert_eq!(silo_addresses(subnet("10.69.1.0/30")).count(), 1);
    }

    #[test]
    fn next_free_starts_lowest_without_last() {
        let net = subnet("10.69.1.0/24");
        let mut leased = BTreeSet::new();
        assert_eq!(next_free(net, &leased, None), Some(Ipv4Addr::new(10, 69, 1, 2)));
        leased.insert(Ipv4Addr::new(10, 69, 1, 2));
        leased.insert(Ipv4Addr::new(10, 69, 1, 4));
        assert_eq!(next_free(net, &leased, None), Some(Ipv4Addr::new(10, 69, 1, 3)));
    }

    #[test]
    fn next_free_skips_past_last() {
        let net = subnet("10.69.1.0/24");
        let leased = BTreeSet::from([Ipv4Addr::new(10, 69, 1, 6)]);
        // Free addresses below the last one wait for the wrap.
        let last = Some(Ipv4Addr::new(10, 69, 1, 5));
        assert_eq!(next_free(net, &leased, last), Some(Ipv4Addr::new(10, 69, 1, 7)));
    }

    #[test]
    fn next_free_wraps_at_the_end() {
        let net = subnet("10.69.1.0/29");
        let leased = BTreeSet::from([Ipv4Addr::new(10, 69, 1, 2)]);
        let last = Some(Ipv4Addr::new(10, 69, 1, 6));
        assert_eq!(next_free(net, &leased, last), Some(Ipv4Addr::new(10, 69, 1, 3)));
    }

    #[test]
    fn next_free_ignores_last_outside_subnet() {
        let net = subnet("10.69.1.0/29");
        let last = Some(Ipv4Addr::new(10, 69, 2, 3));
        assert_eq!(next_free(net, &BTreeSet::new(), last), Some(Ipv4Addr::new(10, 69, 1, 2)));
    }

    #[test]
    fn next_free_none_when_full() {
        let net = subnet("10.69.1.0/30");
        let leased = BTreeSet::from([Ipv4Addr::new(10, 69, 1, 2)]);
        assert_eq!(next_free(net, &leased, None), None);
        assert_eq!(next_free(net, &leased, Some(Ipv4Addr::new(10, 69, 1, 2))), None);
    }

    #[test]
    fn acquire_release_round_trip() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let leases = Leases::new(dir.path().to_path_buf(), subnet("10.69.1.0/29"));

        let first = leases.acquire("00000001").expect("first lease");
        let second = leases.acquire("00000002").expect("second lease");
        assert_eq!(first, Ipv4Addr::new(10, 69, 1, 2));
        assert_eq!(second, Ipv4Addr::new(10, 69, 1, 3));

        // Releasing with the wrong owner keeps the lease.
        leases
            .release(first, "00000002")
            .expect("release by other silo");
        assert_eq!(leases.list().expect("list").len(), 2);

        // A released address waits until the other addresses of the subnet have had their turn.
        leases.release(first, "00000001").expect("release");
        assert_eq!(leases.acquire("00000003").expect("third lease"), Ipv4Addr::new(10, 69, 1, 4));
        assert_eq!(leases.acquire("00000004").expect("fourth lease"), Ipv4Addr::new(10, 69, 1, 5));
        assert_eq!(leases.acquire("00000005").expect("fifth lease"), Ipv4Addr::new(10, 69, 1, 6));
        assert_eq!(leases.acquire("00000006").expect("wrapped lease"), first);

        // A second release of a gone lease succeeds.
        leases.release(second, "00000002").expect("release");
        leases.release(second, "00000002").expect("release again");
        assert_eq!(leases.list().expect("list").len(), 4);
    }

    #[test]
    fn acquire_reports_exhaustion() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let leases = Leases::new(dir.path().to_path_buf(), subnet("10.69.1.0/30"));
        leases.acquire("00000001").expect("only lease");
        assert!(matches!(
            leases.acquire("00000002"),
            Err(LeaseError::Exhausted { .. })
        ));
    }
}
