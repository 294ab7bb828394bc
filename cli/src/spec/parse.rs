//! Reading of a parsed HCL body into `DeclaredSilo`s: every block is checked against its schema
//! and every attribute against its type, and all problems are reported, not only the first.

use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Block, Body};

use super::declared::{
    file_prefix, silo_prefix, DeclaredBinary, DeclaredFile, DeclaredNetwork, DeclaredSilo,
};
use super::diagnostics::{offset_of, Diagnostics};
use super::schema::{self, SILO_IDENTS};
use super::value::{literal_string, type_name, Field, Located};

/// Reads every `Silo` block of a silo file's top-level body.
pub(super) fn read_silos(body: &Body, diagnostics: &mut Diagnostics<'_>) -> Vec<DeclaredSilo> {
    schema::TOP_LEVEL.check(body, "", diagnostics);

    let mut silos = Vec::new();
    for block in body.blocks() {
        if SILO_IDENTS.contains(&block.ident.as_str()) {
            silos.push(read_silo(block, diagnostics));
        }
    }

    if silos.is_empty() {
        diagnostics.report(0, "no Silo block found; add Silo \"name\" { ... }");
    }
    silos
}

fn read_silo(block: &Block, diagnostics: &mut Diagnostics<'_>) -> DeclaredSilo {
    let header = offset_of(&block.ident);
    let label = block.labels.first().map(|label| label.as_str().to_owned());
    let body = &block.body;

    // Messages name the silo by the name it will run under, so the `name` attribute is read
    // before its type is checked. A name of the wrong type falls back to the label.
    let display_name = body
        .get_attribute("name")
        .and_then(|attribute| literal_string(&attribute.value))
        .or_else(|| label.clone())
        .unwrap_or_default();
    let prefix = silo_prefix(&display_name);

    if let Some(extra) = block.labels.get(1) {
        diagnostics.report(
            offset_of(extra),
            format!(
                "{prefix}a Silo block takes one label, found {}; write Silo \"name\" {{ ... }}",
                block.labels.len()
            ),
        );
    }

    schema::SILO.check(body, &prefix, diagnostics);

    let mut reader = AttributeReader {
        body,
        prefix: &prefix,
        qualifier: "",
        diagnostics,
    };
    let name = reader.string("name");
    let class = reader.string("class").into_valid().map(|class| class.value);
    let tags = reader
        .string_list("tags")
        .into_iter()
        .map(|tag| tag.value)
        .collect();
    let base = reader.string("base").into_valid();

    if label.is_none() && name.is_absent() {
        diagnostics.report(
            header,
            "Silo block has no name; write Silo \"name\" { ... } or add name = \"...\"",
        );
    }

    let binary = match read_single_block(body, "binary", &prefix, diagnostics, read_binary) {
        Some(binary) => Field::Valid(binary),
        // The schema check reported `binary = ...`, so it does not also count as missing.
        None if body.has_attribute("binary") => Field::Invalid,
        None => Field::Absent,
    };
    let network = read_single_block(body, "network", &prefix, diagnostics, read_network);
    let files = body
        .get_blocks("file")
        .map(|file| read_file(file, &prefix, diagnostics))
        .collect();

    DeclaredSilo {
        header,
        prefix,
        label,
        name,
        class,
        tags,
        base,
        binary,
        files,
        network,
    }
}

/// Reads the first block named `ident` and reports every further one as a duplicate.
fn read_single_block<T>(
    body: &Body,
    ident: &str,
    prefix: &str,
    diagnostics: &mut Diagnostics<'_>,
    read: fn(&Block, &str, &mut Diagnostics<'_>) -> T,
) -> Option<T> {
    let mut blocks = body.get_blocks(ident);
    let first = blocks.next()?;
    let first_position = diagnostics.position(offset_of(&first.ident));
    for duplicate in blocks {
        diagnostics.report(
            offset_of(&duplicate.ident),
            format!(
                "{prefix}duplicate {ident} block, first at {first_position}; merge them into one"
            ),
        );
    }
    Some(read(first, prefix, diagnostics))
}

/// Reports the labels of a block that takes none.
fn reject_labels(block: &Block, prefix: &str, diagnostics: &mut Diagnostics<'_>) {
    if let Some(label) = block.labels.first() {
        diagnostics.report(
            offset_of(label),
            format!(
                "{prefix}the {} block takes no label; remove {:?}",
                block.ident.as_str(),
                label.as_str()
            ),
        );
    }
}

fn read_binary(block: &Block, prefix: &str, diagnostics: &mut Diagnostics<'_>) -> DeclaredBinary {
    reject_labels(block, prefix, diagnostics);
    schema::BINARY.check(&block.body, prefix, diagnostics);

    let mut reader = AttributeReader {
        body: &block.body,
        prefix,
        qualifier: "binary.",
        diagnostics,
    };
    DeclaredBinary {
        header: offset_of(&block.ident),
        path: reader.string("path"),
        args: reader.string_list("args"),
        env: reader.string_list("env"),
    }
}

fn read_network(block: &Block, prefix: &str, diagnostics: &mut Diagnostics<'_>) -> DeclaredNetwork {
    reject_labels(block, prefix, diagnostics);
    schema::NETWORK.check(&block.body, prefix, diagnostics);

    let mut reader = AttributeReader {
        body: &block.body,
        prefix,
        qualifier: "network.",
        diagnostics,
    };
    DeclaredNetwork {
        internet_access: reader.bool("internet_access").unwrap_or(false),
        nameservers: reader.string_list("nameservers"),
        hosts: reader.string_map("hosts"),
    }
}

fn read_file(block: &Block, silo_prefix: &str, diagnostics: &mut Diagnostics<'_>) -> DeclaredFile {
    let header = offset_of(&block.ident);
    let label = block
        .labels
        .first()
        .map(|label| label.as_str().to_owned())
        .unwrap_or_default();
    let prefix = file_prefix(silo_prefix, &label);

    if block.labels.len() != 1 {
        diagnostics.report(
            header,
            format!(
                "{silo_prefix}a file block takes one label, found {}; write file \"name\" {{ ... }}",
                block.labels.len()
            ),
        );
    }
    schema::FILE.check(&block.body, &prefix, diagnostics);

    let mut reader = AttributeReader {
        body: &block.body,
        prefix: &prefix,
        qualifier: "",
        diagnostics,
    };
    DeclaredFile {
        header,
        label,
        path: reader.string("path"),
        silo_path: reader.string("silo_path"),
    }
}

/// Typed access to the attributes of one body. A null attribute counts as absent. After a type
/// error has been reported, `string` returns `Field::Invalid`, `bool` returns `None` and the
/// list readers leave the element out.
struct AttributeReader<'b, 'd, 's> {
    body: &'b Body,
    prefix: &'b str,
    /// Written before attribute names in messages, such as `binary.`.
    qualifier: &'b str,
    diagnostics: &'d mut Diagnostics<'s>,
}

impl<'b> AttributeReader<'b, '_, '_> {
    /// Returns the attribute's value and the offset of its key, unless it is absent or null.
    fn value(&self, key: &str) -> Option<(&'b Expression, usize)> {
        let body: &'b Body = self.body;
        let attribute = body.get_attribute(key)?;
        if attribute.value.is_null() {
            return None;
        }
        Some((&attribute.value, offset_of(&attribute.key)))
    }

    fn report_type(
        &mut self,
        offset: usize,
        attribute_name: &str,
        expected: &str,
        found: &Expression,
    ) {
        let message = format!(
            "{}invalid type for {}{attribute_name}: expected {expected}, found {}",
            self.prefix,
            self.qualifier,
            type_name(found)
        );
        self.diagnostics.report(offset, message);
    }

    fn string(&mut self, key: &str) -> Field<Located<String>> {
        let Some((expression, offset)) = self.value(key) else {
            return Field::Absent;
        };
        match literal_string(expression) {
            Some(value) => Field::Valid(Located { value, offset }),
            None => {
                self.report_type(offset, key, "a string", expression);
                Field::Invalid
            }
        }
    }

    fn bool(&mut self, key: &str) -> Option<bool> {
        let (expression, offset) = self.value(key)?;
        match expression.as_bool() {
            Some(value) => Some(value),
            None => {
                self.report_type(offset, key, "a bool", expression);
                None
            }
        }
    }

    /// Returns the string elements of a list. Each element of another type is reported with
    /// its index and left out.
    fn string_list(&mut self, key: &str) -> Vec<Located<String>> {
        let Some((expression, offset)) = self.value(key) else {
            return Vec::new();
        };
        let Some(array) = expression.as_array() else {
            self.report_type(offset, key, "a list of strings", expression);
            return Vec::new();
        };

        let mut strings = Vec::with_capacity(array.len());
        for (index, element) in array.iter().enumerate() {
            let element_offset = offset_of(element);
            match literal_string(element) {
                Some(value) => strings.push(Located {
                    value,
                    offset: element_offset,
                }),
                None => {
                    let attribute_name = format!("{key}[{index}]");
                    self.report_type(element_offset, &attribute_name, "a string", element);
                }
            }
        }
        strings
    }

    /// Returns the entries of an object whose keys and values are strings. A key written as an
    /// identifier (`db = ...`) counts as a string. Entries of other types are reported and left
    /// out.
    fn string_map(&mut self, key: &str) -> Vec<(Located<String>, Located<String>)> {
        let Some((expression, offset)) = self.value(key) else {
            return Vec::new();
        };
        let Some(object) = expression.as_object() else {
            self.report_type(offset, key, "an object with string values", expression);
            return Vec::new();
        };

        let mut entries = Vec::with_capacity(object.len());
        for (entry_key, entry_value) in object.iter() {
            let key_offset = offset_of(entry_key);
            let key_text = match entry_key {
                ObjectKey::Ident(ident) => Some(ident.as_str().to_owned()),
                ObjectKey::Expression(key_expression) => {
                    let text = literal_string(key_expression);
                    if text.is_none() {
                        let attribute_name = format!("{key} key");
                        self.report_type(key_offset, &attribute_name, "a string", key_expression);
                    }
                    text
                }
            };
            let Some(key_text) = key_text else {
                continue;
            };

            let value = entry_value.expr();
            let value_offset = offset_of(value);
            let Some(value_text) = literal_string(value) else {
                let attribute_name = format!("{key}[{key_text:?}]");
                self.report_type(value_offset, &attribute_name, "a string", value);
                continue;
            };

            entries.push((
                Located {
                    value: key_text,
                    offset: key_offset,
                },
                Located {
                    value: value_text,
                    offset: value_offset,
                },
            ));
        }
        entries
    }
}
