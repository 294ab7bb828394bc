//! The cluster's silo names for the agents' DNS resolvers: every running instance with its
//! addresses.

use colex_proto as proto;

use crate::state::{ClusterState, Desired};

/// Returns every instance that is UP and meant to run, with its addresses, ordered by silo name
/// and then index. A stopping instance is left out at once, so clients stop resolving it before
/// it goes away.
pub fn silo_names(state: &ClusterState) -> proto::Names {
    let mut names: Vec<proto::SiloName> = state
        .silos
        .values()
        .filter(|record| record.desired == Desired::Run && !record.is_pending())
        .filter_map(|record| {
            let status = record.status.as_ref()?;
            if status.state != proto::SiloState::Up as i32 {
                return None;
            }
            let addresses: Vec<String> = status
                .interfaces
                .iter()
                .map(|(_, address)| address.clone())
                .filter(|address| !address.is_empty())
                .collect();
            Some(proto::SiloName {
                silo: record.name.clone(),
                index: record.index,
                addresses,
            })
        })
        .filter(|name| !name.addresses.is_empty())
        .collect();
    // The map is ordered by key, and "web/10" sorts before "web/2", so sort by index explicitly
    // to keep the message stable.
    names.sort_by(|left, right| left.silo.cmp(&right.silo).then(left.index.cmp(&right.index)));
    proto::Names { names }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{instance_key, SiloRecord, SiloStatus};

    fn insert(state: &mut ClusterState, name: &str, index: u32, desired: Desired, status: Option<(proto::SiloState, &str)>) {
        let record = SiloRecord {
            name: name.to_owned(),
            index,
            id: format!("{index:08x}"),
            generation: 1,
            spec: Vec::new(),
            host: "h1".to_owned(),
            desired,
            status: status.map(|(state, address)| SiloStatus {
                state: state as i32,
                interfaces: vec![("cx00000001".to_owned(), address.to_owned())],
                exit_code: None,
                message: String::new(),
                restarts: 0,
            }),
            pending_reason: None,
            next_spec: None,
            events: Default::default(),
        };
        state.silos.insert(instance_key(name, index), record);
    }

    #[test]
    fn names_list_running_instances_only() {
        let mut state = ClusterState::default();
        insert(&mut state, "web", 0, Desired::Run, Some((proto::SiloState::Up, "10.69.1.2")));
        insert(&mut state, "web", 1, Desired::Run, Some((proto::SiloState::Up, "10.69.2.2")));
        insert(&mut state, "web", 2, Desired::Run, Some((proto::SiloState::Starting, "10.69.1.3")));
        insert(&mut state, "old", 0, Desired::Stop, Some((proto::SiloState::Up, "10.69.1.4")));
        insert(&mut state, "new", 0, Desired::Run, None);

        let names = silo_names(&state).names;
        let listed: Vec<(&str, u32, &[String])> = names
            .iter()
            .map(|name| (name.silo.as_str(), name.index, name.addresses.as_slice()))
            .collect();
        assert_eq!(listed.len(), 2, "{names:?}");
        assert_eq!(listed[0], ("web", 0, &["10.69.1.2".to_owned()][..]));
        assert_eq!(listed[1], ("web", 1, &["10.69.2.2".to_owned()][..]));
    }

    #[test]
    fn names_sort_by_numeric_index() {
        let mut state = ClusterState::default();
        for index in [10, 2, 0] {
            let address = format!("10.69.1.{}", index + 2);
            insert(&mut state, "web", index, Desired::Run, Some((proto::SiloState::Up, &address)));
        }
        let indexes: Vec<u32> = silo_names(&state).names.iter().map(|name| name.index).collect();
        assert_eq!(indexes, [0, 2, 10]);
    }
}
