//! The names the resolver answers itself: silo instances from the controller's `Names`
//! messages and the agent config's `hostnames` entries.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use colex_proto as proto;

use super::SILO_ZONE;

/// A name table shared between the session, which replaces the silo names, and the resolver's
/// tasks, which read it.
pub type SharedNameTable = Arc<RwLock<NameTable>>;

/// Result of looking up one name in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name is in the table with these addresses.
    Found(Vec<IpAddr>),
    /// The name is in the `.silo` zone but names no running instance.
    NotFound,
    /// The name is outside the table and the `.silo` zone, so upstream resolvers resolve it.
    Forward,
}

/// Silo instances and fixed host names, with keys in lower case because DNS names compare
/// without regard to ASCII case.
#[derive(Debug, Clone, Default)]
pub struct NameTable {
    /// Addresses of each running instance by silo name, then instance index.
    silos: HashMap<String, BTreeMap<u32, Vec<IpAddr>>>,
    /// The agent config's `hostnames` entries, keys without a trailing dot.
    hostnames: HashMap<String, IpAddr>,
}

impl NameTable {
    /// Creates a table with the agent config's `hostnames` entries and no silos.
    pub fn new(hostnames: &BTreeMap<String, IpAddr>) -> Self {
        let hostnames = hostnames
            .iter()
            .map(|(name, address)| (normalize(name), *address))
            .collect();
        Self {
            silos: HashMap::new(),
            hostnames,
        }
    }

    /// Replaces the silo instances with the controller's list. Addresses that are not IP
    /// addresses are skipped and counted in the return value.
    pub fn set_names(&mut self, names: &proto::Names) -> usize {
        let mut invalid = 0;
        let mut silos: HashMap<String, BTreeMap<u32, Vec<IpAddr>>> = HashMap::new();
        for name in &names.names {
            let mut addresses = Vec::with_capacity(name.addresses.len());
            for address in &name.addresses {
                match address.parse::<IpAddr>() {
                    Ok(address) => addresses.push(address),
                    Err(_) => invalid += 1,
                }
            }
            silos
                .entry(normalize(&name.silo))
                .or_default()
                .insert(name.index, addresses);
        }
        self.silos = silos;
        invalid
    }

    /// Returns the number of silos with at least one running instance.
    pub fn silo_count(&self) -> usize {
        self.silos.len()
    }

    /// Looks up `name`, with or without its trailing dot, in any ASCII case. A `hostnames`
    /// entry wins over a silo name.
    pub fn lookup(&self, name: &str) -> Lookup {
        let name = normalize(name);
        if let Some(address) = self.hostnames.get(&name) {
            return Lookup::Found(vec![*address]);
        }

        let Some(relative) = name.strip_suffix(SILO_ZONE) else {
            return Lookup::Forward;
        };
        let relative = match relative {
            "" => return Lookup::NotFound,
            _ => match relative.strip_suffix('.') {
                Some(relative) => relative,
                // A name such as `mysilo` that merely ends in the zone's letters.
                None => return Lookup::Forward,
            },
        };

        let labels: Vec<&str> = relative.split('.').collect();
        let addresses = match labels.as_slice() {
            [silo] => self
                .silos
                .get(*silo)
                .map(|instances| instances.values().flatten().copied().collect::<Vec<_>>()),
            [index, silo] => index
                .parse::<u32>()
                .ok()
                .and_then(|index| self.silos.get(*silo)?.get(&index).cloned()),
            _ => None,
        };
        match addresses {
            Some(addresses) if !addresses.is_empty() => Lookup::Found(addresses),
            _ => Lookup::NotFound,
        }
    }
}

/// Returns `name` in lower case without a trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn address(text: &str) -> IpAddr {
        text.parse().expect("valid test address")
    }

    fn name(silo: &str, index: u32, addresses: &[&str]) -> proto::SiloName {
        proto::SiloName {
            silo: silo.to_owned(),
            index,
            addresses: addresses.iter().map(|address| (*address).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn table() -> NameTable {
        let hostnames = BTreeMap::from([("db.internal".to_owned(), address("10.1.2.3"))]);
        let mut table = NameTable::new(&hostnames);
        let invalid = table.set_names(&proto::Names {
            names: vec![
                name("web", 0, &["10.69.1.2"]),
                name("web", 1, &["10.69.2.2"]),
                name("api", 0, &["10.69.1.3", "not an address"]),
            ],
        });
        assert_eq!(invalid, 1);
        table
    }

    #[test]
    fn silo_name_lists_every_instance() {
        let found = table().lookup("web.silo.");
        assert_eq!(found, Lookup::Found(vec![address("10.69.1.2"), address("10.69.2.2")]));
    }

    #[test]
    fn index_name_lists_one_instance() {
        let table = table();
        assert_eq!(table.lookup("1.web.silo"), Lookup::Found(vec![address("10.69.2.2")]));
        assert_eq!(table.lookup("0.web.silo"), Lookup::Found(vec![address("10.69.1.2")]));
        assert_eq!(table.lookup("2.web.silo"), Lookup::NotFound);
        assert_eq!(table.lookup("x.web.silo"), Lookup::NotFound);
    }

    #[test]
    fn invalid_address_is_skipped() {
        assert_eq!(table().lookup("api.silo"), Lookup::Found(vec![address("10.69.1.3")]));
    }

    #[test]
    fn hostnames_entry_is_found() {
        let table = table();
        let expected = Lookup::Found(vec![IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))]);
        assert_eq!(table.lookup("db.internal."), expected);
        assert_eq!(table.lookup("db.internal"), expected);
    }

    #[test]
    fn unknown_silo_names_are_nxdomain() {
        let table = table();
        assert_eq!(table.lookup("missing.silo."), Lookup::NotFound);
        assert_eq!(table.lookup("silo."), Lookup::NotFound);
        assert_eq!(table.lookup("a.b.web.silo."), Lookup::NotFound);
    }

    #[test]
    fn other_names_are_forwarded() {
        let table = table();
        assert_eq!(table.lookup("example.com."), Lookup::Forward);
        assert_eq!(table.lookup("mysilo."), Lookup::Forward);
        assert_eq!(table.lookup("web.silo.example.com."), Lookup::Forward);
    }

    #[test]
    fn lookup_ignores_ascii_case() {
        let table = table();
        assert_eq!(table.lookup("WEB.Silo."), table.lookup("web.silo."));
        assert_eq!(table.lookup("1.Web.SILO"), Lookup::Found(vec![address("10.69.2.2")]));
        assert_eq!(table.lookup("DB.Internal."), Lookup::Found(vec![address("10.1.2.3")]));
    }

    #[test]
    fn new_names_replace_old_ones() {
        let mut table = table();
        table.set_names(&proto::Names {
            names: vec![name("web", 1, &["10.69.2.2"])],
        });
        assert_eq!(table.lookup("web.silo"), Lookup::Found(vec![address("10.69.2.2")]));
        assert_eq!(table.lookup("api.silo"), Lookup::NotFound);
        assert_eq!(table.silo_count(), 1);
    }
}
