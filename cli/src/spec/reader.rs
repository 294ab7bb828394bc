//! Typed access to the attributes of one section. Every type error is reported with the
//! attribute's position, and the value is then left out, so later rules never see it.

use hcl_edit::expr::{Expression, ObjectKey};

use super::diagnostics::{offset_of, Diagnostics};
use super::section::Section;
use super::units::{
    parse_duration_ms, parse_size_bytes, UnitError, UnitSyntax, DURATION_SYNTAX, SIZE_SYNTAX,
};
use super::value::{literal_string, type_name, Field, Located};

/// Reads the attributes of one section. A null attribute counts as absent.
pub(super) struct AttributeReader<'r, 'a, 'd, 's> {
    section: &'r Section<'a>,
    prefix: &'r str,
    /// Written before attribute names in messages, such as `binary.`.
    qualifier: &'r str,
    diagnostics: &'d mut Diagnostics<'s>,
}

impl<'r, 'a, 'd, 's> AttributeReader<'r, 'a, 'd, 's> {
    pub(super) fn new(
        section: &'r Section<'a>,
        prefix: &'r str,
        qualifier: &'r str,
        diagnostics: &'d mut Diagnostics<'s>,
    ) -> Self {
        AttributeReader {
            section,
            prefix,
            qualifier,
            diagnostics,
        }
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

    pub(super) fn string(&mut self, key: &str) -> Field<Located<String>> {
        let Some((expression, offset)) = self.section.attribute(key) else {
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

    pub(super) fn bool(&mut self, key: &str) -> Option<bool> {
        let (expression, offset) = self.section.attribute(key)?;
        match expression.as_bool() {
            Some(value) => Some(value),
            None => {
                self.report_type(offset, key, "a bool", expression);
                None
            }
        }
    }

    /// Reads a whole number. The value is wide enough for every integer HCL can write, so range
    /// rules can name the value as written. A whole number written with a fraction or exponent
    /// (`5.0`, `1e3`) counts as whole; one too large for 128 bits saturates.
    pub(super) fn integer(&mut self, key: &str) -> Field<Located<i128>> {
        let Some((expression, offset)) = self.section.attribute(key) else {
            return Field::Absent;
        };
        let Some(number) = expression.as_number() else {
            self.report_type(offset, key, "a whole number", expression);
            return Field::Invalid;
        };

        let value = if let Some(value) = number.as_i64() {
            i128::from(value)
        } else if let Some(value) = number.as_u64() {
            i128::from(value)
        } else {
            let float = number.as_f64().unwrap_or(f64::NAN);
            if float.fract() != 0.0 || !float.is_finite() {
                self.diagnostics.report(
                    offset,
                    format!(
                        "{}invalid type for {}{key}: expected a whole number, found {float}",
                        self.prefix, self.qualifier
                    ),
                );
                return Field::Invalid;
            }
            // `as` saturates at the i128 bounds, which every range rule rejects.
            float as i128
        };
        Field::Valid(Located { value, offset })
    }

    /// Reads a duration string such as "5s" or "1h30m", in milliseconds.
    pub(super) fn duration_ms(&mut self, key: &str) -> Field<Located<u64>> {
        let Some((expression, offset)) = self.section.attribute(key) else {
            return Field::Absent;
        };
        let Some(text) = literal_string(expression) else {
            self.report_type(offset, key, "a duration string such as \"5s\"", expression);
            return Field::Invalid;
        };
        match parse_duration_ms(&text) {
            Ok(value) => Field::Valid(Located { value, offset }),
            Err(error) => {
                self.report_unit_error(offset, key, &text, &error, &DURATION_SYNTAX);
                Field::Invalid
            }
        }
    }

    /// Reads a size in bytes, written as a number of bytes or as a string such as "64MiB".
    pub(super) fn size_bytes(&mut self, key: &str) -> Field<Located<u64>> {
        let Some((expression, offset)) = self.section.attribute(key) else {
            return Field::Absent;
        };
        if let Some(number) = expression.as_number() {
            return match number.as_u64() {
                Some(value) => Field::Valid(Located { value, offset }),
                None => {
                    self.diagnostics.report(
                        offset,
                        format!(
                            "{}invalid size {number} for {}{key}; write a whole number of bytes or a string such as \"64MiB\"",
                            self.prefix, self.qualifier
                        ),
                    );
                    Field::Invalid
                }
            };
        }
        let Some(text) = literal_string(expression) else {
            self.report_type(offset, key, "a size such as \"64MiB\"", expression);
            return Field::Invalid;
        };
        match parse_size_bytes(&text) {
            Ok(value) => Field::Valid(Located { value, offset }),
            Err(error) => {
                self.report_unit_error(offset, key, &text, &error, &SIZE_SYNTAX);
                Field::Invalid
            }
        }
    }

    fn report_unit_error(
        &mut self,
        offset: usize,
        key: &str,
        text: &str,
        error: &UnitError,
        syntax: &UnitSyntax,
    ) {
        self.diagnostics.report(
            offset,
            format!(
                "{}invalid {} {text:?} for {}{key}: {error}; {}",
                self.prefix, syntax.kind, self.qualifier, syntax.hint
            ),
        );
    }

    /// Returns the string elements of a list. Each element of another type is reported with
    /// its index and left out.
    pub(super) fn string_list(&mut self, key: &str) -> Vec<Located<String>> {
        let Some((expression, offset)) = self.section.attribute(key) else {
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
    pub(super) fn string_map(&mut self, key: &str) -> Vec<(Located<String>, Located<String>)> {
        let Some((expression, offset)) = self.section.attribute(key) else {
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
