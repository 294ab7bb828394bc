//! The attributes and blocks each part of a silo file accepts, and the checks that reject
//! everything else.

use super::diagnostics::Diagnostics;
use super::section::{ItemValue, Section};

/// Block identifiers that start a silo. `Silo` is the spelling of the original colex files.
pub(super) const SILO_IDENTS: [&str; 2] = ["Silo", "silo"];

/// The names one kind of section accepts.
#[derive(Debug)]
pub(super) struct BodySchema {
    /// The section's name in messages, such as "silo" or "resources".
    pub(super) name: &'static str,
    pub(super) attributes: &'static [&'static str],
    /// Settings accepted both as a block (`binary { ... }`) and as an attribute whose value is
    /// an object (`binary = { ... }`).
    pub(super) sections: &'static [&'static str],
    /// Blocks that take one label, such as `file "name" { ... }`. They are accepted only as
    /// blocks.
    pub(super) labelled_blocks: &'static [&'static str],
    /// Block identifiers accepted but not listed in messages, such as lower-case `silo`.
    pub(super) block_aliases: &'static [&'static str],
}

pub(super) const TOP_LEVEL: BodySchema = BodySchema {
    name: "top level",
    attributes: &[],
    sections: &[],
    labelled_blocks: &["Silo"],
    block_aliases: &["silo"],
};

pub(super) const SILO: BodySchema = BodySchema {
    name: "silo",
    attributes: &["name", "class", "tags", "base", "count", "kill_timeout"],
    sections: &[
        "binary",
        "network",
        "grants",
        "resources",
        "placement",
        "restart",
    ],
    labelled_blocks: &["file", "files", "bind"],
    block_aliases: &[],
};

pub(super) const BINARY: BodySchema = BodySchema {
    name: "binary",
    attributes: &["path", "args", "env"],
    sections: &[],
    labelled_blocks: &[],
    block_aliases: &[],
};

pub(super) const FILE: BodySchema = BodySchema {
    name: "file",
    attributes: &["path", "silo_path"],
    sections: &[],
    labelled_blocks: &[],
    block_aliases: &[],
};

pub(super) const FILES: BodySchema = BodySchema {
    name: "files",
    attributes: &["path", "silo_path"],
    sections: &[],
    labelled_blocks: &[],
    block_aliases: &[],
};

pub(super) const NETWORK: BodySchema = BodySchema {
    name: "network",
    attributes: &["internet_access", "nameservers", "hosts"],
    sections: &[],
    labelled_blocks: &[],
    block_aliases: &[],
};

pub(super) const BIND: BodySchema = BodySchema {
    name: "bind",
    attributes: &["id", "path"],
    sections: &[],
    labelled_blocks: &[],
    block_aliases: &[],
};

pub(super) const GRANTS: BodySchema = BodySchema {
    name: "grants",
    attributes: &["query_silos", "raw_sockets"],
    sections: &[],
    labelled_blocks: &[],
    block_aliases: &[],
};

pub(super) const RESOURCES: BodySchema = BodySchema {
    name: "resources",
    attributes: &["cpu_percent", "max_memory_bytes", "memory"],
    sections: &[],
    labelled_blocks: &[],
    block_aliases: &[],
};

pub(super) const PLACEMENT: BodySchema = BodySchema {
    name: "placement",
    attributes: &["hosts", "labels", "strategy"],
    sections: &[],
    labelled_blocks: &[],
    block_aliases: &[],
};

pub(super) const RESTART: BodySchema = BodySchema {
    name: "restart",
    attributes: &["policy", "attempts", "delay"],
    sections: &[],
    labelled_blocks: &[],
    block_aliases: &[],
};

/// Every schema below the silo, searched to tell where a misplaced name belongs.
const NESTED: [&BodySchema; 9] = [
    &BINARY, &FILE, &FILES, &NETWORK, &BIND, &GRANTS, &RESOURCES, &PLACEMENT, &RESTART,
];

impl BodySchema {
    fn accepts_block(&self, ident: &str) -> bool {
        self.sections.contains(&ident)
            || self.labelled_blocks.contains(&ident)
            || self.block_aliases.contains(&ident)
    }

    /// Returns where the section sits, as used in messages: "in the silo block", "at the top
    /// level".
    fn place(&self) -> String {
        if self.name == TOP_LEVEL.name {
            "at the top level".to_owned()
        } else {
            format!("in the {} block", self.name)
        }
    }

    /// Describes what the section accepts: "which accepts attributes a, b and blocks c".
    fn accepted(&self) -> String {
        let mut parts = Vec::new();
        if !self.attributes.is_empty() {
            parts.push(format!("attributes {}", self.attributes.join(", ")));
        }
        let blocks: Vec<&str> = self
            .sections
            .iter()
            .chain(self.labelled_blocks.iter())
            .copied()
            .collect();
        if !blocks.is_empty() {
            parts.push(format!("blocks {}", blocks.join(", ")));
        }
        format!("which accepts {}", parts.join(" and "))
    }

    /// Reports every attribute and block of `section` that this schema does not accept.
    /// `prefix` starts each message, for example `silo "web": `.
    pub(super) fn check(
        &self,
        section: &Section<'_>,
        prefix: &str,
        diagnostics: &mut Diagnostics<'_>,
    ) {
        for item in &section.items {
            let message = match item.value {
                ItemValue::Block(_) => self.check_block(&item.name),
                ItemValue::Expression(_) => self.check_attribute(&item.name),
            };
            if let Some(message) = message {
                diagnostics.report(item.offset, format!("{prefix}{message}"));
            }
        }
    }

    fn check_attribute(&self, name: &str) -> Option<String> {
        if self.attributes.contains(&name) || self.sections.contains(&name) {
            return None;
        }
        if self.labelled_blocks.contains(&name) || self.block_aliases.contains(&name) {
            return Some(format!(
                "`{name}` is a block, not an attribute; write {name} \"name\" {{ ... }}"
            ));
        }
        Some(self.reject(name, "attribute"))
    }

    fn check_block(&self, ident: &str) -> Option<String> {
        if self.accepts_block(ident) {
            return None;
        }
        if self.attributes.contains(&ident) {
            return Some(format!(
                "`{ident}` is an attribute, not a block; write {ident} = <value>"
            ));
        }
        Some(self.reject(ident, "block"))
    }

    fn reject(&self, name: &str, kind: &str) -> String {
        let mut message = format!(
            "unknown {kind} `{name}` {}, {}",
            self.place(),
            self.accepted()
        );
        let candidates = self
            .attributes
            .iter()
            .chain(self.sections.iter())
            .chain(self.labelled_blocks.iter())
            .copied();
        if let Some(suggestion) = closest_name(name, candidates) {
            message.push_str(&format!("; did you mean `{suggestion}`?"));
        } else if let Some(owner) = only_owner(name, self) {
            message.push_str(&format!("; `{name}` belongs in the {owner} block"));
        }
        message
    }
}

/// Returns the name of the one nested schema, other than `except`, that accepts `name`.
/// Returns `None` when none or several do (`path` belongs to binary, file, files and bind).
fn only_owner(name: &str, except: &BodySchema) -> Option<&'static str> {
    let mut owners = NESTED
        .iter()
        .filter(|schema| schema.name != except.name && schema.attributes.contains(&name));
    let owner = owners.next()?;
    match owners.next() {
        Some(_) => None,
        None => Some(owner.name),
    }
}

/// Returns the candidate closest to a misspelt name, if one is within a typo's distance: one
/// edit for names of up to 3 characters, two edits for longer ones. Case is ignored, and a
/// swap of two neighbouring letters counts as one edit.
pub fn closest_name<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    // The distance is at least the difference in length, so much longer names are skipped
    // before the quadratic distance computation.
    const MAX_DISTANCE: usize = 2;
    let name_chars = name.chars().count();
    let name = name.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let candidate_chars = candidate.chars().count();
        if name_chars.abs_diff(candidate_chars) > MAX_DISTANCE {
            continue;
        }
        let distance = strsim::osa_distance(&name, &candidate.to_lowercase());
        let max_distance = if candidate_chars <= 3 {
            1
        } else {
            MAX_DISTANCE
        };
        let closer = best.is_none_or(|(best_distance, _)| distance < best_distance);
        if distance <= max_distance && closer {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_name_finds_typos() {
        let names = ["name", "class", "tags", "base", "binary", "file", "network"];

        assert_eq!(closest_name("nmae", names), Some("name"));
        assert_eq!(closest_name("netwrk", names), Some("network"));
        assert_eq!(closest_name("Binary", names), Some("binary"));
        assert_eq!(closest_name("clas", names), Some("class"));
    }

    #[test]
    fn closest_name_ignores_distant_names() {
        let names = ["path", "args", "env"];

        assert_eq!(closest_name("command", names), None);
        assert_eq!(closest_name("ev2x", names), None);
        assert_eq!(closest_name(&"x".repeat(10_000), names), None);
    }

    #[test]
    fn closest_name_prefers_smaller_distance() {
        assert_eq!(closest_name("arg", ["args", "env"]), Some("args"));
        assert_eq!(closest_name("pat", ["path", "args"]), Some("path"));
    }

    #[test]
    fn accepted_lists_attributes_and_blocks() {
        assert_eq!(
            SILO.accepted(),
            "which accepts attributes name, class, tags, base, count, kill_timeout and blocks binary, network, grants, resources, placement, restart, file, files, bind"
        );
        assert_eq!(TOP_LEVEL.accepted(), "which accepts blocks Silo");
        assert_eq!(
            BINARY.accepted(),
            "which accepts attributes path, args, env"
        );
    }

    #[test]
    fn misplaced_names_point_to_their_block() {
        assert_eq!(only_owner("memory", &SILO), Some("resources"));
        assert_eq!(only_owner("policy", &SILO), Some("restart"));
        assert_eq!(only_owner("path", &SILO), None);
        assert_eq!(only_owner("cpu_percent", &RESOURCES), None);
    }
}
