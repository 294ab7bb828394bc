//! Placement of new silos onto live hosts, in two steps: a feasibility check keeps the live
//! hosts that have the silo's image and every bind id it names, then the least loaded of those
//! is chosen. When no host is feasible, the error names what each live host lacks.

use std::collections::BTreeSet;

use colex_proto::SiloSpec;

use crate::state::{ClusterState, Desired, HostRecord};

/// Image of a silo whose spec names none.
pub const DEFAULT_IMAGE: &str = "busybox";
/// Scheme a spec's `base` may carry before the image name.
const IMAGE_SCHEME: &str = "img://";

/// Reason a silo cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "no live host to place silo {silo}; start an agent with `colex-agent --join CONTROLLER_ADDR`"
    )]
    NoLiveHost { silo: String },
    #[error("silo {silo}: {reason}")]
    Infeasible { silo: String, reason: String },
}

/// Requirements of a silo on its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// Image name without the `img://` scheme.
    pub image: String,
    pub bind_ids: BTreeSet<String>,
}

impl Requirements {
    /// Reads the requirements of `spec`: its image (`busybox` when `base` is empty) and the
    /// ids of its `bind` blocks.
    pub fn of(spec: &SiloSpec) -> Self {
        let image = spec.base.strip_prefix(IMAGE_SCHEME).unwrap_or(&spec.base);
        let image = if image.is_empty() {
            DEFAULT_IMAGE
        } else {
            image
        };
        Requirements {
            image: image.to_owned(),
            bind_ids: spec.binds.iter().map(|bind| bind.id.clone()).collect(),
        }
    }

    /// Returns what `host` lacks of these requirements.
    fn missing_on(&self, host: &HostRecord) -> Missing {
        let offered = &host.attributes;
        Missing {
            image: !offered.images.contains(&self.image),
            bind_ids: self
                .bind_ids
                .iter()
                .filter(|id| !offered.bind_ids.contains(id))
                .cloned()
                .collect(),
        }
    }
}

/// Requirements one host lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Missing {
    image: bool,
    bind_ids: Vec<String>,
}

impl Missing {
    fn is_nothing(&self) -> bool {
        !self.image && self.bind_ids.is_empty()
    }
}

/// Chooses the host for `spec`: `preferred` when it is live and feasible (a replacement stays
/// where its earlier instance runs), otherwise the feasible live host that runs the fewest
/// silos, ties broken by host name.
pub fn place(
    state: &ClusterState,
    live_hosts: &BTreeSet<String>,
    spec: &SiloSpec,
    preferred: Option<&str>,
) -> Result<String, PlacementError> {
    let live: Vec<&HostRecord> = live_hosts
        .iter()
        .filter_map(|name| state.hosts.get(name))
        .collect();
    if live.is_empty() {
        return Err(PlacementError::NoLiveHost {
            silo: spec.name.clone(),
        });
    }

    let requirements = Requirements::of(spec);
    let feasible: BTreeSet<String> = live
        .iter()
        .filter(|host| requirements.missing_on(host).is_nothing())
        .map(|host| host.name.clone())
        .collect();
    if let Some(preferred) = preferred.filter(|host| feasible.contains(*host)) {
        return Ok(preferred.to_owned());
    }
    least_loaded(state, &feasible).ok_or_else(|| PlacementError::Infeasible {
        silo: spec.name.clone(),
        reason: describe_infeasible(&requirements, &live),
    })
}

/// Picks the host in `candidates` that runs the fewest silos, breaking ties by host name so
/// the choice is stable. Returns `None` when `candidates` is empty.
///
/// NOTE: this counts silos only. CPU and memory reservations, placement constraints and
/// spreading of multiple instances come with the full scheduler.
pub fn least_loaded(state: &ClusterState, candidates: &BTreeSet<String>) -> Option<String> {
    candidates
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

/// Explains why none of `live` can run a silo with `requirements`, naming each host and what
/// it offers, for example "no live host has image alpine: h1 has busybox; h2 has busybox, web".
fn describe_infeasible(requirements: &Requirements, live: &[&HostRecord]) -> String {
    let missing: Vec<(&HostRecord, Missing)> = live
        .iter()
        .map(|host| (*host, requirements.missing_on(host)))
        .collect();
    let every_host_lacks_only_the_image = missing
        .iter()
        .all(|(_, lacks)| lacks.image && lacks.bind_ids.is_empty());
    let every_host_lacks_only_binds = missing.iter().all(|(_, lacks)| !lacks.image);

    if every_host_lacks_only_the_image {
        let hosts: Vec<String> = missing
            .iter()
            .map(|(host, _)| format!("{} has {}", host.name, list(&host.attributes.images)))
            .collect();
        return format!(
            "no live host has image {}: {}",
            requirements.image,
            hosts.join("; ")
        );
    }
    if every_host_lacks_only_binds {
        let hosts: Vec<String> = missing
            .iter()
            .map(|(host, _)| format!("{} offers {}", host.name, list(&host.attributes.bind_ids)))
            .collect();
        return format!(
            "no live host offers {}: {}",
            bind_ids_phrase(&requirements.bind_ids),
            hosts.join("; ")
        );
    }

    let hosts: Vec<String> = missing
        .iter()
        .map(|(host, lacks)| {
            let mut parts = Vec::new();
            if lacks.image {
                parts.push(format!(
                    "image {} (has {})",
                    requirements.image,
                    list(&host.attributes.images)
                ));
            }
            if !lacks.bind_ids.is_empty() {
                parts.push(format!(
                    "{} (offers {})",
                    bind_ids_phrase(&lacks.bind_ids),
                    list(&host.attributes.bind_ids)
                ));
            }
            format!("{} lacks {}", host.name, parts.join(" and "))
        })
        .collect();
    format!(
        "no live host has image {} and {}: {}",
        requirements.image,
        bind_ids_phrase(&requirements.bind_ids),
        hosts.join("; ")
    )
}

/// Formats "bind id a" or "bind ids a, b".
fn bind_ids_phrase<'a>(ids: impl IntoIterator<Item = &'a String>) -> String {
    let ids: Vec<&str> = ids.into_iter().map(String::as_str).collect();
    let noun = if ids.len() == 1 {
        "bind id"
    } else {
        "bind ids"
    };
    format!("{noun} {}", ids.join(", "))
}

/// Formats a list of names for a message, or "none".
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, HostAttributes};

    fn attributes(images: &[&str], bind_ids: &[&str]) -> HostAttributes {
        HostAttributes {
            images: images.iter().map(|image| (*image).to_owned()).collect(),
            bind_ids: bind_ids.iter().map(|id| (*id).to_owned()).collect(),
            labels: Default::default(),
        }
    }

    fn register(state: &mut ClusterState, name: &str, images: &[&str], bind_ids: &[&str]) {
        state.apply(&Command::RegisterHost {
            name: name.to_owned(),
            address: "198.51.100.2".to_owned(),
            cpus: 1,
            memory_bytes: 1 << 30,
            attributes: attributes(images, bind_ids),
        });
    }

    fn state_with_hosts(names: &[&str]) -> ClusterState {
        let mut state = ClusterState::default();
        for name in names {
            register(&mut state, name, &["busybox"], &[]);
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

    fn live(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn spec(base: &str, bind_ids: &[&str]) -> SiloSpec {
        SiloSpec {
            name: "web".to_owned(),
            base: base.to_owned(),
            binds: bind_ids
                .iter()
                .map(|id| colex_proto::Bind {
                    id: (*id).to_owned(),
                    path: format!("/{id}"),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn picks_host_with_fewest_silos() {
        let mut state = state_with_hosts(&["a", "b"]);
        put(&mut state, "one", "a");
        assert_eq!(
            place(&state, &live(&["a", "b"]), &spec("", &[]), None),
            Ok("b".to_owned())
        );
    }

    #[test]
    fn skips_hosts_that_are_not_live() {
        let mut state = state_with_hosts(&["a", "b"]);
        put(&mut state, "one", "a");
        assert_eq!(
            place(&state, &live(&["a"]), &spec("", &[]), None),
            Ok("a".to_owned())
        );
    }

    #[test]
    fn stopping_silos_do_not_count() {
        let mut state = state_with_hosts(&["a", "b"]);
        put(&mut state, "one", "a");
        put(&mut state, "two", "b");
        state.apply(&Command::StopSilo {
            name: "one".to_owned(),
        });
        assert_eq!(
            place(&state, &live(&["a", "b"]), &spec("", &[]), None),
            Ok("a".to_owned())
        );
    }

    #[test]
    fn no_live_host_is_an_error() {
        let state = state_with_hosts(&["a"]);
        let err = place(&state, &BTreeSet::new(), &spec("", &[]), None).expect_err("no host");
        assert_eq!(
            err,
            PlacementError::NoLiveHost {
                silo: "web".to_owned()
            }
        );
    }

    #[test]
    fn picks_only_hosts_with_the_image() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox", "web"], &[]);
        register(&mut state, "h3", &["busybox", "web"], &[]);
        put(&mut state, "other", "h2");
        let all = live(&["h1", "h2", "h3"]);

        // h1 runs nothing but lacks the image; h3 is the least loaded host that has it.
        assert_eq!(
            place(&state, &all, &spec("web", &[]), None),
            Ok("h3".to_owned())
        );
        assert_eq!(
            place(&state, &all, &spec("img://web", &[]), None),
            Ok("h3".to_owned())
        );
        assert_eq!(
            place(&state, &all, &spec("", &[]), None),
            Ok("h1".to_owned())
        );
    }

    #[test]
    fn picks_only_hosts_with_every_bind_id() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &["data"]);
        register(&mut state, "h2", &["busybox"], &["data", "logs"]);
        put(&mut state, "other", "h2");
        let all = live(&["h1", "h2"]);
        assert_eq!(
            place(&state, &all, &spec("", &["data", "logs"]), None),
            Ok("h2".to_owned())
        );
        assert_eq!(
            place(&state, &all, &spec("", &["data"]), None),
            Ok("h1".to_owned())
        );
    }

    #[test]
    fn missing_image_names_every_host() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox", "web"], &[]);
        let err = place(&state, &live(&["h1", "h2"]), &spec("alpine", &[]), None)
            .expect_err("no host has alpine");
        assert_eq!(
            err.to_string(),
            "silo web: no live host has image alpine: h1 has busybox; h2 has busybox, web"
        );
    }

    #[test]
    fn missing_bind_ids_name_every_host() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox"], &["logs"]);
        let err = place(&state, &live(&["h1", "h2"]), &spec("", &["data"]), None)
            .expect_err("no host offers data");
        assert_eq!(
            err.to_string(),
            "silo web: no live host offers bind id data: h1 offers none; h2 offers logs"
        );
        let err = place(
            &state,
            &live(&["h1", "h2"]),
            &spec("", &["data", "logs"]),
            None,
        )
        .expect_err("no host offers both");
        assert_eq!(
            err.to_string(),
            "silo web: no live host offers bind ids data, logs: h1 offers none; h2 offers logs"
        );
    }

    #[test]
    fn mixed_lacks_are_listed_per_host() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &["data"]);
        register(&mut state, "h2", &["busybox", "alpine"], &[]);
        let err = place(
            &state,
            &live(&["h1", "h2"]),
            &spec("alpine", &["data"]),
            None,
        )
        .expect_err("no host has both");
        assert_eq!(
            err.to_string(),
            "silo web: no live host has image alpine and bind id data: h1 lacks image alpine \
             (has busybox); h2 lacks bind id data (offers none)"
        );
    }

    #[test]
    fn down_hosts_are_not_named() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox", "alpine"], &[]);
        let err = place(&state, &live(&["h1"]), &spec("alpine", &[]), None)
            .expect_err("the host with alpine is down");
        assert_eq!(
            err.to_string(),
            "silo web: no live host has image alpine: h1 has busybox"
        );
    }

    #[test]
    fn preferred_host_is_kept_when_feasible() {
        let mut state = ClusterState::default();
        register(&mut state, "h1", &["busybox"], &[]);
        register(&mut state, "h2", &["busybox", "alpine"], &[]);
        put(&mut state, "web", "h2");
        put(&mut state, "other", "h2");
        let all = live(&["h1", "h2"]);
        assert_eq!(
            place(&state, &all, &spec("", &[]), Some("h2")),
            Ok("h2".to_owned())
        );
        // A replacement whose new image its host lacks moves to a host that has it.
        assert_eq!(
            place(&state, &all, &spec("alpine", &[]), Some("h1")),
            Ok("h2".to_owned())
        );
    }
}
