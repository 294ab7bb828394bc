//! Placement of new silos onto live hosts.

use std::collections::BTreeSet;

use crate::state::{ClusterState, Desired};

/// Picks the live host that runs the fewest silos, breaking ties by host
/// name so the choice is stable. Returns `None` when no host is live.
///
/// NOTE: this counts silos only. CPU and memory reservations, placement
/// constraints and spreading of multiple instances come with the full
/// scheduler.
pub fn least_loaded(state: &ClusterState, live_hosts: &BTreeSet<String>) -> Option<String> {
    live_hosts
        .iter()
        .filter(|host| state.hosts.contains_key(*host))
        .min_by_key(|host| {
            let load = state
                .silos_on(host)
                .filter(|silo| silo.desired == Desired::Run)
                .count();
            (load, (*host).clone())
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn state_with_hosts(names: &[&str]) -> ClusterState {
        let mut state = ClusterState::default();
        for name in names {
            state.apply(&Command::RegisterHost {
                name: (*name).to_owned(),
                address: "198.51.100.2".to_owned(),
                cpus: 1,
                memory_bytes: 1 << 30,
            });
        }
        state
    }

    fn put(state: &mut ClusterState, name: &str, host: &str) {
        state.apply(&Command::PutSilo {
            name: name.to_owned(),
            id: format!("{:0>8}", name),
            spec: Vec::new(),
            host: host.to_owned(),
        });
    }

    #[test]
    fn picks_host_with_fewest_silos() {
        let mut state = state_with_hosts(&["a", "b"]);
        put(&mut state, "one", "a");
        let live = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        assert_eq!(least_loaded(&state, &live).as_deref(), Some("b"));
    }

    #[test]
    fn skips_hosts_that_are_not_live() {
        let mut state = state_with_hosts(&["a", "b"]);
        put(&mut state, "one", "a");
        let live = BTreeSet::from(["a".to_owned()]);
        assert_eq!(least_loaded(&state, &live).as_deref(), Some("a"));
    }

    #[test]
    fn stopping_silos_do_not_count() {
        let mut state = state_with_hosts(&["a", "b"]);
        put(&mut state, "one", "a");
        put(&mut state, "two", "b");
        state.apply(&Command::StopSilo { name: "one".to_owned() });
        let live = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
        assert_eq!(least_loaded(&state, &live).as_deref(), Some("a"));
    }

    #[test]
    fn no_live_host_gives_none() {
        let state = state_with_hosts(&["a"]);
        assert_eq!(least_loaded(&state, &BTreeSet::new()), None);
    }
}
