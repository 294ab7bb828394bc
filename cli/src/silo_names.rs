//! Silo and instance names as commands take them (`NAME` or `NAME[INDEX]`), and the message
//! for a name that is not found, with the closest existing name when it is a likely typo.

use std::collections::BTreeSet;

use colex_proto as proto;

/// Separators after which a longer silo name may continue a name typed in full, such as
/// `sleeper` for `sleeper-a`.
const NAME_SEPARATORS: [char; 2] = ['-', '_'];

/// Splits `NAME[INDEX]` into the silo name and the instance index, or returns `None` for a
/// plain name or an index that is not a number.
pub fn split_instance_name(name: &str) -> Option<(&str, u32)> {
    let (silo, index) = name.strip_suffix(']')?.split_once('[')?;
    let index = index.parse().ok()?;
    Some((silo, index))
}

/// Returns the candidate that `name` is most likely a typo of, or `None` when none is close.
///
/// A candidate is close when its edit distance (case ignored, a swap of two neighbouring
/// characters counting as one edit) is at most one per five characters of the longer name,
/// and at least one. It must also share at least half of the longer name's characters. So
/// `web-c` suggests `web-a`, while `trialweb` does not suggest `trialm3b`: silo names often
/// share a prefix and differ in a short suffix, and two edits there make another name.
/// When no candidate is close, a single candidate that continues `name` after `-` or `_`
/// is suggested, such as `sleeper-a` for `sleeper`.
pub fn closest_silo_name<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let candidates: BTreeSet<&'a str> = candidates.into_iter().collect();

    let mut best: Option<(usize, &'a str)> = None;
    for candidate in &candidates {
        let candidate_lower = candidate.to_lowercase();
        let longer_chars = lower.chars().count().max(candidate_lower.chars().count());
        let max_distance = (longer_chars / 5).max(1);
        // The distance is at least the difference in length, so much longer names are
        // skipped before the quadratic distance computation.
        if lower.chars().count().abs_diff(candidate_lower.chars().count()) > max_distance {
            continue;
        }
        if shared_chars(&lower, &candidate_lower) * 2 < longer_chars {
            continue;
        }
        let distance = strsim::osa_distance(&lower, &candidate_lower);
        let closer = best.is_none_or(|(best_distance, _)| distance < best_distance);
        if distance <= max_distance && closer {
            best = Some((distance, candidate));
        }
    }
    if let Some((_, candidate)) = best {
        return Some(candidate);
    }

    let mut continuations = candidates.iter().filter(|candidate| {
        candidate
            .to_lowercase()
            .strip_prefix(&lower)
            .is_some_and(|rest| rest.starts_with(NAME_SEPARATORS))
    });
    match (continuations.next(), continuations.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// Counts the characters two names have in common, each occurrence matched at most once.
fn shared_chars(first: &str, second: &str) -> usize {
    let mut unmatched: Vec<char> = second.chars().collect();
    let mut shared = 0;
    for char in first.chars() {
        if let Some(position) = unmatched.iter().position(|other| *other == char) {
            unmatched.swap_remove(position);
            shared += 1;
        }
    }
    shared
}

/// Builds the message that silo or instance `name` does not exist. For `NAME[INDEX]` of an
/// existing silo, the message lists the silo's instances. Otherwise it names the closest of
/// `silos` when one is a likely typo of `name`.
pub fn silo_not_found(name: &str, silos: &[proto::SiloInfo]) -> String {
    if let Some((silo, index)) = split_instance_name(name) {
        let mut indexes: Vec<u32> = silos
            .iter()
            .filter(|info| info.name == silo)
            .map(|info| info.index)
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        if !indexes.is_empty() {
            let instances: Vec<String> = indexes.iter().map(|index| format!("{silo}[{index}]")).collect();
            let noun = if instances.len() == 1 { "instance" } else { "instances" };
            return format!(
                "silo {name} not found; silo {silo} has {} {noun}: {}",
                instances.len(),
                instances.join(", ")
            );
        }
        let closest = closest_silo_name(silo, silos.iter().map(|info| info.name.as_str()));
        return match closest {
            Some(closest) if silos.iter().any(|info| info.name == closest && info.index == index) => {
                format!("silo {name} not found; did you mean {closest}[{index}]? see `colex-cli list` for the names")
            }
            Some(closest) => format!("silo {name} not found; did you mean {closest}? see `colex-cli list` for the names"),
            None => format!("silo {name} not found; see `colex-cli list` for the names"),
        };
    }

    let closest = closest_silo_name(name, silos.iter().map(|info| info.name.as_str()));
    match closest {
        Some(closest) => format!("silo {name} not found; did you mean {closest}? see `colex-cli list` for the names"),
        None => format!("silo {name} not found; see `colex-cli list` for the names"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silos(names: &[&str]) -> Vec<proto::SiloInfo> {
        names
            .iter()
            .map(|name| proto::SiloInfo {
                name: (*name).to_owned(),
                ..Default::default()
            })
            .collect()
    }

    fn instances(name: &str, count: u32) -> Vec<proto::SiloInfo> {
        (0..count)
            .map(|index| proto::SiloInfo {
                name: name.to_owned(),
                index,
                count,
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn instance_names_split() {
        assert_eq!(split_instance_name("web[2]"), Some(("web", 2)));
        assert_eq!(split_instance_name("web[0]"), Some(("web", 0)));
        assert_eq!(split_instance_name("web"), None);
        assert_eq!(split_instance_name("web[x]"), None);
        assert_eq!(split_instance_name("web[-1]"), None);
    }

    #[test]
    fn missing_silo_names_closest() {
        let message = silo_not_found("web-c", &silos(&["web-a", "db"]));
        assert_eq!(message, "silo web-c not found; did you mean web-a? see `colex-cli list` for the names");
    }

    #[test]
    fn missing_silo_without_close_name() {
        let message = silo_not_found("frontend", &silos(&["web-a", "db"]));
        assert_eq!(message, "silo frontend not found; see `colex-cli list` for the names");
    }

    #[test]
    fn two_edits_in_short_names_are_not_typos() {
        assert_eq!(closest_silo_name("trialweb", ["trialm3b"]), None);
        assert_eq!(closest_silo_name("web", ["db"]), None);
        assert_eq!(closest_silo_name("a", ["b"]), None);
    }

    #[test]
    fn one_edit_or_swap_is_a_typo() {
        assert_eq!(closest_silo_name("crashr", ["crasher", "steady"]), Some("crasher"));
        assert_eq!(closest_silo_name("stedy", ["crasher", "steady"]), Some("steady"));
        assert_eq!(closest_silo_name("sleeper-b", ["sleeper-a"]), Some("sleeper-a"));
        assert_eq!(closest_silo_name("wbe", ["web"]), Some("web"));
        assert_eq!(closest_silo_name("WEB", ["web"]), Some("web"));
    }

    #[test]
    fn long_names_allow_two_edits() {
        assert_eq!(closest_silo_name("frontend-cahce", ["frontend-cache"]), Some("frontend-cache"));
        assert_eq!(closest_silo_name("frontend-queue", ["frontend-cache"]), None);
    }

    #[test]
    fn unique_continuation_is_suggested() {
        assert_eq!(closest_silo_name("sleeper", ["sleeper-a", "other"]), Some("sleeper-a"));
        assert_eq!(closest_silo_name("sleeper", ["sleeper-a", "sleeper-b"]), None);
        assert_eq!(closest_silo_name("trial", ["trialweb"]), None);
    }

    #[test]
    fn index_out_of_range_lists_instances() {
        let message = silo_not_found("web[5]", &instances("web", 2));
        assert_eq!(message, "silo web[5] not found; silo web has 2 instances: web[0], web[1]");
        let message = silo_not_found("db[1]", &instances("db", 1));
        assert_eq!(message, "silo db[1] not found; silo db has 1 instance: db[0]");
    }

    #[test]
    fn misspelt_instance_names_closest_instance() {
        let message = silo_not_found("wbe[1]", &instances("web", 2));
        assert_eq!(message, "silo wbe[1] not found; did you mean web[1]? see `colex-cli list` for the names");
        let message = silo_not_found("wbe[7]", &instances("web", 2));
        assert_eq!(message, "silo wbe[7] not found; did you mean web? see `colex-cli list` for the names");
    }
}
