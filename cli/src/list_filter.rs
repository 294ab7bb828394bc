//! The filters of `list`: `--host`, `--class` and `--tag`. They run in the CLI on the leader's
//! whole listing, so tables, JSON and `--strict` all see the same filtered listing.

use colex_proto as proto;

use crate::client::CliError;
use crate::silo_names::closest_silo_name;

/// Conditions that a listed silo must all pass. An empty filter keeps every silo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Host name the silo is placed on. Pending silos have no host, so they never match.
    pub host: Option<String>,
    /// Class the silo's spec sets, compared exactly.
    pub class: Option<String>,
    /// Tags the silo must all have, among any others.
    pub tags: Vec<String>,
}

impl ListFilter {
    /// Returns true when the filter keeps only some silos of each host, by class or tags.
    pub fn filters_silos_of_a_host(&self) -> bool {
        self.class.is_some() || !self.tags.is_empty()
    }

    /// Returns whether `silo` passes every condition.
    pub fn matches(&self, silo: &proto::SiloInfo) -> bool {
        let host_matches = self.host.as_ref().is_none_or(|host| silo.host == *host);
        let class_matches = self.class.as_ref().is_none_or(|class| silo.class == *class);
        let tags_match = self.tags.iter().all(|tag| silo.tags.contains(tag));
        host_matches && class_matches && tags_match
    }

    /// Returns the listing with only the matching silos, and with `--host` only that host.
    /// A `--host` that is not a known host is a user error naming the closest host.
    pub fn apply(&self, listed: proto::ListResponse) -> Result<proto::ListResponse, CliError> {
        let proto::ListResponse { silos, hosts } = listed;
        if let Some(host) = &self.host {
            if !hosts.iter().any(|known| known.name == *host) {
                return Err(CliError::user(host_not_found(host, &hosts)));
            }
        }
        let hosts = hosts
            .into_iter()
            .filter(|known| self.host.as_ref().is_none_or(|host| known.name == *host))
            .collect();
        let silos = silos
            .into_iter()
            .filter(|silo| self.matches(silo))
            .collect();
        Ok(proto::ListResponse { silos, hosts })
    }
}

/// Builds the message that no host is named `host`, with the closest host name when one is a
/// likely typo, and otherwise the known hosts.
fn host_not_found(host: &str, hosts: &[proto::HostInfo]) -> String {
    let names: Vec<&str> = hosts.iter().map(|known| known.name.as_str()).collect();
    if names.is_empty() {
        return format!("host {host} not found: no host has joined the cluster yet");
    }
    match closest_silo_name(host, names.iter().copied()) {
        Some(closest) => format!(
            "host {host} not found; did you mean {closest}? see `colex-cli hosts` for the names"
        ),
        None => format!("host {host} not found; the hosts are {}", names.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silo(name: &str, host: &str, class: &str, tags: &[&str]) -> proto::SiloInfo {
        proto::SiloInfo {
            name: name.to_owned(),
            host: host.to_owned(),
            class: class.to_owned(),
            tags: tags.iter().map(|tag| (*tag).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn host(name: &str) -> proto::HostInfo {
        proto::HostInfo {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    fn listing() -> proto::ListResponse {
        proto::ListResponse {
            silos: vec![
                silo("a", "node1", "batch", &["demo", "web"]),
                silo("b", "node2", "batch", &["demo"]),
                silo("c", "node1", "", &[]),
                silo("pending", "", "batch", &["demo", "web"]),
            ],
            hosts: vec![host("node1"), host("node2")],
        }
    }

    fn names(listed: &proto::ListResponse) -> Vec<&str> {
        listed.silos.iter().map(|silo| silo.name.as_str()).collect()
    }

    #[test]
    fn empty_filter_keeps_everything() {
        let filter = ListFilter::default();
        let listed = filter.apply(listing()).expect("no host to check");
        assert_eq!(names(&listed), ["a", "b", "c", "pending"]);
        assert_eq!(listed.hosts.len(), 2);
    }

    #[test]
    fn host_filter_keeps_that_host_only() {
        let filter = ListFilter {
            host: Some("node1".to_owned()),
            ..Default::default()
        };
        let listed = filter.apply(listing()).expect("node1 is known");
        assert_eq!(names(&listed), ["a", "c"], "pending silos have no host");
        assert_eq!(listed.hosts.len(), 1);
        assert_eq!(listed.hosts[0].name, "node1");
    }

    #[test]
    fn class_and_tags_must_all_match() {
        let filter = ListFilter {
            class: Some("batch".to_owned()),
            tags: vec!["demo".to_owned(), "web".to_owned()],
            ..Default::default()
        };
        let listed = filter.apply(listing()).expect("no host to check");
        assert_eq!(names(&listed), ["a", "pending"]);
        assert_eq!(listed.hosts.len(), 2, "hosts stay without --host");

        let one_tag = ListFilter {
            tags: vec!["demo".to_owned()],
            ..Default::default()
        };
        assert_eq!(
            names(&one_tag.apply(listing()).expect("no host")),
            ["a", "b", "pending"]
        );

        let no_class = ListFilter {
            class: Some("nope".to_owned()),
            ..Default::default()
        };
        assert!(no_class.apply(listing()).expect("no host").silos.is_empty());
    }

    #[test]
    fn unknown_host_names_the_closest() {
        let filter = ListFilter {
            host: Some("node3".to_owned()),
            ..Default::default()
        };
        let error = filter.apply(listing()).expect_err("node3 is unknown");
        assert_eq!(error.code, crate::client::EXIT_USER_ERROR);
        assert_eq!(
            error.message,
            "host node3 not found; did you mean node1? see `colex-cli hosts` for the names"
        );
    }

    #[test]
    fn unknown_host_without_close_name_lists_hosts() {
        assert_eq!(
            host_not_found("storage", &[host("node1"), host("node2")]),
            "host storage not found; the hosts are node1, node2"
        );
        assert_eq!(
            host_not_found("node1", &[]),
            "host node1 not found: no host has joined the cluster yet"
        );
    }
}
