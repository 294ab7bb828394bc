//! The attributes and blocks of one part of a silo file, whether it is written as a block
//! (`resources { cpu_percent = 50 }`) or as an attribute whose value is an object
//! (`resources = { cpu_percent = 50 }`). Both forms read the same from here on.

use std::borrow::Cow;

use hcl_edit::expr::{Expression, Object, ObjectKey};
use hcl_edit::structure::{Block, Body, Structure};

use super::diagnostics::{offset_of, Diagnostics};
use super::value::{literal_string, type_name, Field};

/// What an item contains: an attribute's value or a nested block.
#[derive(Debug, Clone, Copy)]
pub(super) enum ItemValue<'a> {
    Expression(&'a Expression),
    Block(&'a Block),
}

/// One attribute or block of a body, or one entry of an object.
#[derive(Debug)]
pub(super) struct Item<'a> {
    /// Attribute key or block identifier.
    pub(super) name: Cow<'a, str>,
    /// Byte offset of the key or identifier.
    pub(super) offset: usize,
    pub(super) value: ItemValue<'a>,
}

/// The items of one block body or object, in the order written.
#[derive(Debug)]
pub(super) struct Section<'a> {
    pub(super) items: Vec<Item<'a>>,
    /// Byte offset of the block identifier or attribute key that opened this section.
    pub(super) header: usize,
}

impl<'a> Section<'a> {
    pub(super) fn from_body(body: &'a Body, header: usize) -> Self {
        let items = body
            .iter()
            .map(|structure| match structure {
                Structure::Attribute(attribute) => Item {
                    name: Cow::Borrowed(attribute.key.as_str()),
                    offset: offset_of(&attribute.key),
                    value: ItemValue::Expression(&attribute.value),
                },
                Structure::Block(block) => Item {
                    name: Cow::Borrowed(block.ident.as_str()),
                    offset: offset_of(&block.ident),
                    value: ItemValue::Block(block),
                },
            })
            .collect();
        Section { items, header }
    }

    /// Reads an object written in place of a block. A key that is neither a name nor a quoted
    /// string is reported and its entry left out.
    pub(super) fn from_object(
        object: &'a Object,
        header: usize,
        description: &str,
        diagnostics: &mut Diagnostics<'_>,
    ) -> Self {
        let mut items = Vec::with_capacity(object.len());
        for (key, value) in object.iter() {
            let offset = offset_of(key);
            let name = match key {
                ObjectKey::Ident(ident) => Cow::Borrowed(ident.as_str()),
                ObjectKey::Expression(expression) => match literal_string(expression) {
                    Some(text) => Cow::Owned(text),
                    None => {
                        diagnostics.report(
                            offset,
                            format!(
                                "{description}invalid key: expected an attribute name, found {}",
                                type_name(expression)
                            ),
                        );
                        continue;
                    }
                },
            };
            items.push(Item {
                name,
                offset,
                value: ItemValue::Expression(value.expr()),
            });
        }
        Section { items, header }
    }

    /// Returns the value and key offset of the attribute `key`, unless it is absent or null.
    pub(super) fn attribute(&self, key: &str) -> Option<(&'a Expression, usize)> {
        self.items.iter().find_map(|item| match item.value {
            ItemValue::Expression(expression) if item.name == key && !expression.is_null() => {
                Some((expression, item.offset))
            }
            _ => None,
        })
    }

    /// Returns the nested section `name`, written as a block or as an object attribute. Only the
    /// first is used: every further one is reported as a duplicate. Labels on the block and a
    /// value that is not an object are reported too. `prefix` starts every message.
    pub(super) fn nested(
        &self,
        name: &str,
        prefix: &str,
        diagnostics: &mut Diagnostics<'_>,
    ) -> Field<Section<'a>> {
        let mut found = self.items.iter().filter(|item| {
            let is_null =
                matches!(item.value, ItemValue::Expression(expression) if expression.is_null());
            item.name == name && !is_null
        });
        let Some(first) = found.next() else {
            return Field::Absent;
        };

        let first_position = diagnostics.position(first.offset);
        for duplicate in found {
            diagnostics.report(
                duplicate.offset,
                format!(
                    "{prefix}duplicate {name} settings, first at {first_position}; merge them into one {name} block"
                ),
            );
        }

        match first.value {
            ItemValue::Block(block) => {
                if let Some(label) = block.labels.first() {
                    diagnostics.report(
                        offset_of(label),
                        format!(
                            "{prefix}the {name} block takes no label; remove {:?}",
                            label.as_str()
                        ),
                    );
                }
                Field::Valid(Section::from_body(&block.body, first.offset))
            }
            ItemValue::Expression(expression) => match expression.as_object() {
                Some(object) => {
                    let description = format!("{prefix}{name}: ");
                    Field::Valid(Section::from_object(
                        object,
                        first.offset,
                        &description,
                        diagnostics,
                    ))
                }
                None => {
                    diagnostics.report(
                        first.offset,
                        format!(
                            "{prefix}invalid type for {name}: expected a block or an object, found {}; write {name} {{ ... }}",
                            type_name(expression)
                        ),
                    );
                    Field::Invalid
                }
            },
        }
    }
}
