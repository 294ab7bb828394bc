//! Reading an agent configuration file from hcl-edit's syntax tree, so that every problem has
//! the position of the text that caused it.

use std::collections::BTreeMap;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Attribute, Block, Body, Structure};
use hcl_edit::template::Template;
use hcl_edit::Span;

use super::position::Positions;
use super::{AgentSettings, ConfigFileError, Problem, MIN_PIDS_LIMIT};
use crate::runtime::{is_bind_id, is_image_name, BindSource, BUSYBOX_IMAGE};

/// Attributes accepted at the top level.
const TOP_ATTRIBUTES: &[&str] =
    &["labels", "pids_limit", "disable_user_namespaces", "mesh_port", "metadata_port", "hostnames"];
/// Labelled blocks accepted at the top level.
const TOP_BLOCKS: &[&str] = &["image", "bind"];
/// Attributes of an `image` block.
const IMAGE_ATTRIBUTES: &[&str] = &["path"];
/// Attributes of a `bind` block.
const BIND_ATTRIBUTES: &[&str] = &["path", "writable"];
/// Maximum edit distance of a "did you mean" suggestion: one edit for names of up to 3
/// characters, two for longer ones.
const MAX_SUGGESTION_DISTANCE: usize = 2;

/// Whether paths are checked on disk as well as for their form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PathCheck {
    FormOnly,
    Host,
}

/// Parses and checks `text`, collecting every problem.
pub(super) fn parse(
    text: &str,
    origin: &str,
    path_check: PathCheck,
) -> Result<AgentSettings, ConfigFileError> {
    let body = hcl_edit::parser::parse_body(text).map_err(|error| ConfigFileError::Syntax {
        origin: origin.to_string(),
        problem: Problem {
            line: error.location().line(),
            column: error.location().column(),
            message: error.message().to_string(),
        },
    })?;

    let mut reader = Reader {
        origin,
        positions: Positions::new(text),
        path_check,
        found: Vec::new(),
    };
    let settings = reader.top_level(&body);
    if reader.found.is_empty() {
        return Ok(settings);
    }

    reader.found.sort_by_key(|(offset, _)| *offset);
    let problems = reader
        .found
        .iter()
        .map(|(offset, message)| {
            let (line, column) = reader.positions.line_column(*offset);
            Problem {
                line,
                column,
                message: message.clone(),
            }
        })
        .collect();
    Err(ConfigFileError::Invalid {
        origin: origin.to_string(),
        problems,
    })
}

/// The walk over one file, with the problems found so far as (byte offset, message).
struct Reader<'a> {
    origin: &'a str,
    positions: Positions<'a>,
    path_check: PathCheck,
    found: Vec<(usize, String)>,
}

impl Reader<'_> {
    fn report(&mut self, offset: usize, message: impl Into<String>) {
        self.found.push((offset, message.into()));
    }

    /// Formats an offset as `FILE:LINE:COLUMN`, for messages that point to a second place.
    fn position(&self, offset: usize) -> String {
        let (line, column) = self.positions.line_column(offset);
        format!("{}:{line}:{column}", self.origin)
    }

    fn top_level(&mut self, body: &Body) -> AgentSettings {
        let mut settings = AgentSettings::default();
        // hcl-edit rejects an attribute key that repeats in one body as a syntax error, so
        // only blocks can be duplicates here.
        let mut first_image: BTreeMap<String, usize> = BTreeMap::new();
        let mut first_bind: BTreeMap<String, usize> = BTreeMap::new();

        for structure in body.iter() {
            match structure {
                Structure::Attribute(attribute) => {
                    let key = attribute.key.as_str();
                    let offset = offset_of(&attribute.key);
                    if TOP_BLOCKS.contains(&key) {
                        self.report(
                            offset,
                            format!("`{key}` is a block, not an attribute; write {key} \"NAME\" {{ ... }}"),
                        );
                        continue;
                    }
                    if !TOP_ATTRIBUTES.contains(&key) {
                        let message = unknown_name(
                            "attribute",
                            key,
                            "at the top level",
                            TOP_ATTRIBUTES,
                            TOP_BLOCKS,
                        );
                        self.report(offset, message);
                        continue;
                    }
                    self.top_attribute(attribute, &mut settings);
                }
                Structure::Block(block) => {
                    let ident = block.ident.as_str();
                    let offset = offset_of(&block.ident);
                    match ident {
                        "image" => self.image_block(block, &mut settings, &mut first_image),
                        "bind" => self.bind_block(block, &mut settings, &mut first_bind),
                        _ if TOP_ATTRIBUTES.contains(&ident) => self.report(
                            offset,
                            format!(
                                "`{ident}` is an attribute, not a block; write {ident} = <value>"
                            ),
                        ),
                        _ => {
                            let message = unknown_name(
                                "block",
                                ident,
                                "at the top level",
                                TOP_ATTRIBUTES,
                                TOP_BLOCKS,
                            );
                            self.report(offset, message);
                        }
                    }
                }
            }
        }
        settings
    }

    fn top_attribute(&mut self, attribute: &Attribute, settings: &mut AgentSettings) {
        let value = &attribute.value;
        match attribute.key.as_str() {
            "labels" => settings.labels = self.labels(value),
            "pids_limit" => settings.pids_limit = self.pids_limit(value),
            "mesh_port" => settings.mesh_port = self.port(value, "mesh_port", "UDP"),
            "metadata_port" => settings.metadata_port = self.port(value, "metadata_port", "TCP"),
            "hostnames" => settings.hostnames = self.hostnames(value),
            "disable_user_namespaces" => match value.as_bool() {
                Some(disable) => settings.disable_user_namespaces = disable,
                None => self.report_type(value, "disable_user_namespaces", "a bool"),
            },
            // `top_level` passes only names from TOP_ATTRIBUTES.
            _ => {}
        }
    }

    fn labels(&mut self, value: &Expression) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let Some(object) = value.as_object() else {
            self.report_type(value, "labels", "an object such as { zone = \"a\" }");
            return labels;
        };
        let mut first_key: BTreeMap<String, usize> = BTreeMap::new();
        for (key, entry) in object.iter() {
            let offset = offset_of(key);
            let name = match key {
                ObjectKey::Ident(ident) => ident.as_str().to_string(),
                ObjectKey::Expression(expression) => match literal_string(expression) {
                    Some(name) => name,
                    None => {
                        self.report(
                            offset,
                            format!(
                                "invalid label key: expected a name or a string, found {}",
                                type_name(expression)
                            ),
                        );
                        continue;
                    }
                },
            };
            if name.is_empty() {
                self.report(
                    offset,
                    "empty label key in labels; write a label name or remove the entry",
                );
                continue;
            }
            if let Some(first) = first_key.get(&name) {
                let first = self.position(*first);
                self.report(
                    offset,
                    format!("duplicate label `{name}`, first set at {first}; remove one"),
                );
                continue;
            }
            first_key.insert(name.clone(), offset);
            match literal_string(entry.expr()) {
                Some(text) => {
                    labels.insert(name, text);
                }
                None => self.report_type(entry.expr(), &format!("labels.{name}"), "a string"),
            }
        }
        labels
    }

    fn hostnames(&mut self, value: &Expression) -> BTreeMap<String, IpAddr> {
        let mut hostnames = BTreeMap::new();
        let Some(object) = value.as_object() else {
            self.report_type(value, "hostnames", "an object such as { \"db.internal\" = \"10.1.2.3\" }");
            return hostnames;
        };
        let mut first_key: BTreeMap<String, usize> = BTreeMap::new();
        for (key, entry) in object.iter() {
            let offset = offset_of(key);
            let name = match key {
                ObjectKey::Ident(ident) => ident.as_str().to_string(),
                ObjectKey::Expression(expression) => literal_string(expression).unwrap_or_default(),
            };
            if !is_host_name(&name) {
                self.report(
                    offset,
                    format!("invalid host name {name:?} in hostnames: use labels of letters, digits and '-' separated by dots, such as \"db.internal\""),
                );
                continue;
            }
            // DNS names compare without regard to ASCII case.
            let name = name.to_ascii_lowercase();
            if let Some(first) = first_key.get(&name) {
                let first = self.position(*first);
                self.report(
                    offset,
                    format!("duplicate host name `{name}` in hostnames, first set at {first}; remove one"),
                );
                continue;
            }
            first_key.insert(name.clone(), offset);
            let Some(text) = literal_string(entry.expr()) else {
                self.report_type(entry.expr(), &format!("hostnames.{name}"), "an IP address string such as \"10.1.2.3\"");
                continue;
            };
            match text.parse::<IpAddr>() {
                Ok(address) => {
                    hostnames.insert(name, address);
                }
                Err(_) => self.report(
                    offset_of(entry.expr()),
                    format!("invalid address {text:?} for hostnames.{name}: expected an IP address such as \"10.1.2.3\""),
                ),
            }
        }
        hostnames
    }

    fn pids_limit(&mut self, value: &Expression) -> Option<u64> {
        let Some(number) = value.as_number() else {
            self.report_type(value, "pids_limit", "a whole number");
            return None;
        };
        match number.as_u64() {
            Some(limit) if limit == 0 || limit >= MIN_PIDS_LIMIT => Some(limit),
            _ => {
                self.report(
                    offset_of(value),
                    format!(
                        "invalid pids_limit {number}: use a whole number of at least {MIN_PIDS_LIMIT} (the silo's PID 1 and its program), or 0 for no limit"
                    ),
                );
                None
            }
        }
    }

    /// Reads the port attribute `name`, 1 to 65535, of the transport `protocol` ("UDP", "TCP").
    fn port(&mut self, value: &Expression, name: &str, protocol: &str) -> Option<u16> {
        let Some(number) = value.as_number() else {
            self.report_type(value, name, "a whole number");
            return None;
        };
        // Port 0 would make the kernel pick a port, which the other hosts and silos could not
        // learn.
        match number.as_u64().and_then(|port| u16::try_from(port).ok()) {
            Some(port) if port > 0 => Some(port),
            _ => {
                self.report(
                    offset_of(value),
                    format!("invalid {name} {number}: use a {protocol} port from 1 to 65535"),
                );
                None
            }
        }
    }

    fn image_block(
        &mut self,
        block: &Block,
        settings: &mut AgentSettings,
        first_image: &mut BTreeMap<String, usize>,
    ) {
        let Some((name, name_offset)) = self.block_label(
            block,
            "image",
            "image \"NAME\" { path = \"/path/to/image.tar\" }",
        ) else {
            return;
        };
        let prefix = format!("image {name:?}: ");
        let mut name_ok = true;
        if name == BUSYBOX_IMAGE {
            self.report(
                name_offset,
                format!("image name {BUSYBOX_IMAGE:?} is built in; choose another name for this tarball"),
            );
            name_ok = false;
        } else if !is_image_name(&name) {
            self.report(
                name_offset,
                format!(
                    "invalid image name {name:?}: use 1-{} lower-case letters, digits, '-', '_' and '.', starting with a letter or digit",
                    crate::runtime::MAX_IMAGE_NAME_BYTES
                ),
            );
            name_ok = false;
        }
        if let Some(first) = first_image.get(&name) {
            let first = self.position(*first);
            self.report(
                name_offset,
                format!("duplicate image {name:?}, first declared at {first}; remove one"),
            );
            return;
        }
        first_image.insert(name.clone(), name_offset);

        let attributes =
            self.block_attributes(block, &prefix, "in the image block", IMAGE_ATTRIBUTES);
        let path = self.required_path(&attributes, block, &prefix, "/path/to/image.tar");
        let path = path.filter(|(path, offset)| {
            self.check_on_host(path, *offset, &prefix, HostPathKind::File)
        });
        if let (true, Some((path, _))) = (name_ok, path) {
            settings.images.insert(name, path);
        }
    }

    fn bind_block(
        &mut self,
        block: &Block,
        settings: &mut AgentSettings,
        first_bind: &mut BTreeMap<String, usize>,
    ) {
        let Some((id, id_offset)) =
            self.block_label(block, "bind", "bind \"ID\" { path = \"/host/path\" }")
        else {
            return;
        };
        let prefix = format!("bind {id:?}: ");
        let id_ok = is_bind_id(&id);
        if !id_ok {
            self.report(
                id_offset,
                format!(
                    "invalid bind id {id:?}: use 1-{} letters, digits, '-', '_' and '.', starting with a letter or digit",
                    crate::runtime::MAX_BIND_ID_BYTES
                ),
            );
        }
        if let Some(first) = first_bind.get(&id) {
            let first = self.position(*first);
            self.report(
                id_offset,
                format!("duplicate bind {id:?}, first declared at {first}; remove one"),
            );
            return;
        }
        first_bind.insert(id.clone(), id_offset);

        let attributes =
            self.block_attributes(block, &prefix, "in the bind block", BIND_ATTRIBUTES);
        let writable = match attributes.get("writable") {
            None => Some(false),
            Some(value) => match value.as_bool() {
                Some(writable) => Some(writable),
                None => {
                    self.report_type_prefixed(value, &prefix, "writable", "a bool");
                    None
                }
            },
        };
        let path = self.required_path(&attributes, block, &prefix, "/host/path");
        let path = path
            .filter(|(path, offset)| self.check_on_host(path, *offset, &prefix, HostPathKind::Any));
        if let (true, Some((path, _)), Some(writable)) = (id_ok, path, writable) {
            settings.binds.insert(id, BindSource { path, writable });
        }
    }

    /// Returns the one label of a labelled block and its offset; reports a block with none or
    /// several.
    fn block_label(
        &mut self,
        block: &Block,
        ident: &str,
        example: &str,
    ) -> Option<(String, usize)> {
        match block.labels.as_slice() {
            [label] => Some((label.as_str().to_string(), offset_of(label))),
            [] => {
                self.report(
                    offset_of(&block.ident),
                    format!("the {ident} block needs a label; write {example}"),
                );
                None
            }
            [_, extra, ..] => {
                self.report(
                    offset_of(extra),
                    format!("the {ident} block takes one label; write {example}"),
                );
                None
            }
        }
    }

    /// Returns the attributes of a block body by name, reporting nested blocks and unknown
    /// names.
    fn block_attributes<'b>(
        &mut self,
        block: &'b Block,
        prefix: &str,
        place: &str,
        accepted: &[&str],
    ) -> BTreeMap<String, &'b Expression> {
        let mut attributes = BTreeMap::new();
        for structure in block.body.iter() {
            match structure {
                Structure::Block(nested) => {
                    let ident = nested.ident.as_str();
                    let message = unknown_name("block", ident, place, accepted, &[]);
                    self.report(offset_of(&nested.ident), format!("{prefix}{message}"));
                }
                Structure::Attribute(attribute) => {
                    let key = attribute.key.as_str();
                    let offset = offset_of(&attribute.key);
                    if !accepted.contains(&key) {
                        let message = unknown_name("attribute", key, place, accepted, &[]);
                        self.report(offset, format!("{prefix}{message}"));
                        continue;
                    }
                    attributes.insert(key.to_string(), &attribute.value);
                }
            }
        }
        attributes
    }

    /// Returns the block's `path` and the offset of its value, which must be an absolute path.
    fn required_path(
        &mut self,
        attributes: &BTreeMap<String, &Expression>,
        block: &Block,
        prefix: &str,
        example: &str,
    ) -> Option<(PathBuf, usize)> {
        let Some(value) = attributes.get("path") else {
            self.report(
                offset_of(&block.ident),
                format!("{prefix}missing path; add path = \"{example}\""),
            );
            return None;
        };
        let Some(text) = literal_string(value) else {
            self.report_type_prefixed(value, prefix, "path", "a string");
            return None;
        };
        let offset = offset_of(*value);
        let path = PathBuf::from(&text);
        if !path.is_absolute() {
            self.report(offset, format!("{prefix}path {text:?} is not absolute; write the full path, such as \"{example}\""));
            return None;
        }
        Some((path, offset))
    }

    /// Checks on disk, when asked to, that `path` exists and, for `File`, is a regular file.
    fn check_on_host(
        &mut self,
        path: &Path,
        offset: usize,
        prefix: &str,
        kind: HostPathKind,
    ) -> bool {
        if self.path_check == PathCheck::FormOnly {
            return true;
        }
        match (fs::metadata(path), kind) {
            (Ok(metadata), HostPathKind::File) if !metadata.is_file() => {
                self.report(
                    offset,
                    format!("{prefix}{} is not a regular file", path.display()),
                );
                false
            }
            (Ok(_), _) => true,
            (Err(err), _) => {
                self.report(
                    offset,
                    format!("{prefix}cannot use {}: {err}", path.display()),
                );
                false
            }
        }
    }

    fn report_type(&mut self, value: &Expression, name: &str, expected: &str) {
        self.report_type_prefixed(value, "", name, expected);
    }

    fn report_type_prefixed(
        &mut self,
        value: &Expression,
        prefix: &str,
        name: &str,
        expected: &str,
    ) {
        let found = type_name(value);
        self.report(
            offset_of(value),
            format!("{prefix}invalid type for {name}: expected {expected}, found {found}"),
        );
    }
}

/// Kind of file a host path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostPathKind {
    /// A regular file (after following symlinks), such as an image tarball.
    File,
    /// Anything that exists: a bind source may be a directory, a file or a device.
    Any,
}

/// Describes an unknown attribute or block, what the place accepts, and the closest accepted
/// name when one is within a typo's distance.
fn unknown_name(
    kind: &str,
    name: &str,
    place: &str,
    attributes: &[&str],
    blocks: &[&str],
) -> String {
    let mut accepted = Vec::new();
    if !attributes.is_empty() {
        accepted.push(format!("attributes {}", attributes.join(", ")));
    }
    if !blocks.is_empty() {
        accepted.push(format!("blocks {}", blocks.join(", ")));
    }
    let mut message = format!(
        "unknown {kind} `{name}` {place}, which accepts {}",
        accepted.join(" and ")
    );
    let candidates = attributes.iter().chain(blocks.iter()).copied();
    if let Some(suggestion) = closest_name(name, candidates) {
        message.push_str(&format!("; did you mean `{suggestion}`?"));
    }
    message
}

/// Returns the candidate closest to a misspelt name, ignoring case, if one is within
/// [`MAX_SUGGESTION_DISTANCE`] edits (one edit for candidates of up to 3 characters). A swap of
/// two neighbouring letters counts as one edit.
fn closest_name<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name_chars = name.chars().count();
    let name = name.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let candidate_chars = candidate.chars().count();
        // The distance is at least the difference in length, so this skip also bounds the work
        // for very long names.
        if name_chars.abs_diff(candidate_chars) > MAX_SUGGESTION_DISTANCE {
            continue;
        }
        let distance = strsim::osa_distance(&name, &candidate.to_lowercase());
        let max_distance = if candidate_chars <= 3 {
            1
        } else {
            MAX_SUGGESTION_DISTANCE
        };
        let closer = best.is_none_or(|(best_distance, _)| distance < best_distance);
        if distance <= max_distance && closer {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// Returns the text of a string without interpolation or directives. The file is not
/// evaluated, so `${...}` has no meaning in it.
/// Returns true for a DNS host name: 1 to 253 characters in dot-separated labels of 1 to 63
/// ASCII letters, digits and hyphens, with no hyphen at either end of a label.
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

fn literal_string(expression: &Expression) -> Option<String> {
    match expression {
        Expression::String(string) => Some(string.value().clone()),
        Expression::StringTemplate(template) => literal_template(template),
        Expression::HeredocTemplate(heredoc) => literal_template(&heredoc.template),
        _ => None,
    }
}

fn literal_template(template: &Template) -> Option<String> {
    let mut text = String::new();
    for element in template.iter() {
        text.push_str(element.as_literal()?.value());
    }
    Some(text)
}

/// Names the type of an expression for "expected X, found Y" messages.
fn type_name(expression: &Expression) -> &'static str {
    match expression {
        Expression::Null(_) => "null",
        Expression::Bool(_) => "a bool",
        Expression::Number(_) => "a number",
        Expression::String(_) => "a string",
        Expression::StringTemplate(_) | Expression::HeredocTemplate(_) => {
            if literal_string(expression).is_some() {
                "a string"
            } else {
                "a string template with interpolation"
            }
        }
        Expression::Array(_) => "a list",
        Expression::Object(_) => "an object",
        Expression::Variable(_) => "a variable reference",
        _ => "an expression",
    }
}

/// Returns the byte offset at which a parsed node starts. Every node hcl-edit's parser returns
/// has a span, so the fallback to 0 applies only to nodes built in code.
fn offset_of(node: &impl Span) -> usize {
    node.span().map_or(0, |range| range.start)
}
