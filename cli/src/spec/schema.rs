//! The attributes and blocks each part of a silo file accepts, and the checks that reject
//! everything else.

use hcl_edit::structure::{Body, Structure};

use super::diagnostics::{offset_of, Diagnostics};

/// Block identifiers that start a silo. `Silo` is the spelling of the original colex files.
pub(super) const SILO_IDENTS: [&str; 2] = ["Silo", "silo"];

/// Settings of the original colex (or planned ones) that the runtime does not implement yet.
/// They are rejected wherever they appear inside a silo, so a setting is never silently ignored.
pub(super) const UNSUPPORTED_NAMES: [&str; 9] = [
    "files",
    "bind",
    "grants",
    "resources",
    "count",
    "placement",
    "restart",
    "kill_timeout",
    "memory",
];

/// The names one kind of body accepts.
#[derive(Debug)]
pub(super) struct BodySchema {
    /// Where the body sits, as used in messages: "in the silo block", "at the top level".
    pub(super) place: &'static str,
    pub(super) attributes: &'static [&'static str],
    pub(super) blocks: &'static [&'static str],
    /// Block identifiers accepted but not listed in messages, such as lower-case `silo`.
    pub(super) block_aliases: &'static [&'static str],
    /// Whether `UNSUPPORTED_NAMES` get the "not supported yet" message here.
    pub(super) inside_silo: bool,
}

pub(super) const TOP_LEVEL: BodySchema = BodySchema {
    place: "at the top level",
    attributes: &[],
    blocks: &["Silo"],
    block_aliases: &["silo"],
    inside_silo: false,
};

pub(super) const SILO: BodySchema = BodySchema {
    place: "in the silo block",
    attributes: &["name", "class", "tags", "base"],
    blocks: &["binary", "file", "network"],
    block_aliases: &[],
    inside_silo: true,
};

pub(super) const BINARY: BodySchema = BodySchema {
    place: "in the binary block",
    attributes: &["path", "args", "env"],
    blocks: &[],
    block_aliases: &[],
    inside_silo: true,
};

pub(super) const FILE: BodySchema = BodySchema {
    place: "in the file block",
    attributes: &["path", "silo_path"],
    blocks: &[],
    block_aliases: &[],
    inside_silo: true,
};

pub(super) const NETWORK: BodySchema = BodySchema {
    place: "in the network block",
    attributes: &["internet_access", "nameservers", "hosts"],
    blocks: &[],
    block_aliases: &[],
    inside_silo: true,
};

impl BodySchema {
    fn accepts_block(&self, ident: &str) -> bool {
        self.blocks.contains(&ident) || self.block_aliases.contains(&ident)
    }

    /// Describes what the body accepts: "which accepts attributes a, b and blocks c".
    fn accepted(&self) -> String {
        let mut parts = Vec::new();
        if !self.attributes.is_empty() {
            parts.push(format!("attributes {}", self.attributes.join(", ")));
        }
        if !self.blocks.is_empty() {
            parts.push(format!("blocks {}", self.blocks.join(", ")));
        }
        format!("which accepts {}", parts.join(" and "))
    }

    /// Reports every attribute and block of `body` that this schema does not accept. `prefix`
    /// starts each message, for example `silo "web": `.
    pub(super) fn check(&self, body: &Body, prefix: &str, diagnostics: &mut Diagnostics<'_>) {
        for structure in body.iter() {
            let offset = offset_of(structure);
            let (name, is_block) = match structure {
                Structure::Attribute(attribute) => (attribute.key.as_str(), false),
                Structure::Block(block) => (block.ident.as_str(), true),
            };

            let message = if is_block {
                self.check_block(name)
            } else {
                self.check_attribute(name)
            };
            if let Some(message) = message {
                diagnostics.report(offset, format!("{prefix}{message}"));
            }
        }
    }

    fn check_attribute(&self, name: &str) -> Option<String> {
        if self.attributes.contains(&name) {
            return None;
        }
        if self.accepts_block(name) {
            // `file` and `Silo` blocks take a label, but `binary` and `network` take none.
            let example = if name == "file" || SILO_IDENTS.contains(&name) {
                format!("{name} \"name\" {{ ... }}")
            } else {
                format!("{name} {{ ... }}")
            };
            return Some(format!(
                "`{name}` is a block, not an attribute; write {example}"
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
        if self.inside_silo && UNSUPPORTED_NAMES.contains(&name) {
            return format!("`{name}` is not supported yet; remove it");
        }

        let mut message = format!(
            "unknown {kind} `{name}` {}, {}",
            self.place,
            self.accepted()
        );
        let candidates = self.attributes.iter().chain(self.blocks.iter()).copied();
        if let Some(suggestion) = closest_name(name, candidates) {
            message.push_str(&format!("; did you mean `{suggestion}`?"));
        }
        message
    }
}

/// Returns the candidate closest to a misspelt name, if one is within a typo's distance: one
/// edit for names of up to 3 characters, two edits for longer ones. Case is ignored, and a
/// swap of two neighbouring letters counts as one edit.
pub(super) fn closest_name<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let name = name.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let distance = strsim::osa_distance(&name, &candidate.to_lowercase());
        let max_distance = if candidate.chars().count() <= 3 { 1 } else { 2 };
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
            "which accepts attributes name, class, tags, base and blocks binary, file, network"
        );
        assert_eq!(TOP_LEVEL.accepted(), "which accepts blocks Silo");
        assert_eq!(
            BINARY.accepted(),
            "which accepts attributes path, args, env"
        );
    }
}
