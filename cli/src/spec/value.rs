//! Literal values read from HCL expressions, and the type names used in type errors.

use hcl_edit::expr::Expression;
use hcl_edit::template::Template;

/// A value with the byte offset in the silo file of the attribute or element that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Located<T> {
    pub(super) value: T,
    pub(super) offset: usize,
}

/// An attribute or block as written: absent (or null), present but rejected with a reported
/// problem, or valid. Rules such as "missing binary.path" apply only to `Absent`, so a value of
/// the wrong type is not also reported as missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Field<T> {
    #[default]
    Absent,
    Invalid,
    Valid(T),
}

impl<T> Field<T> {
    pub(super) fn valid(&self) -> Option<&T> {
        match self {
            Field::Valid(value) => Some(value),
            Field::Absent | Field::Invalid => None,
        }
    }

    pub(super) fn into_valid(self) -> Option<T> {
        match self {
            Field::Valid(value) => Some(value),
            Field::Absent | Field::Invalid => None,
        }
    }

    pub(super) fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }
}

/// Returns the text of a string expression without interpolation or directives: a quoted
/// string or a heredoc. Silo files are not evaluated, so `${...}` has no meaning in them.
pub(super) fn literal_string(expression: &Expression) -> Option<String> {
    match expression {
        Expression::String(string) => Some(string.value().clone()),
        Expression::StringTemplate(template) => literal_template(template),
        // The parser has already stripped the indentation of `<<-` heredocs.
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
pub(super) fn type_name(expression: &Expression) -> &'static str {
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
        Expression::FuncCall(_) => "a function call",
        Expression::Traversal(_) => "a reference",
        Expression::Parenthesis(_)
        | Expression::Conditional(_)
        | Expression::UnaryOp(_)
        | Expression::BinaryOp(_)
        | Expression::ForExpr(_) => "an expression",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcl_edit::parser::parse_body;

    /// Parses `text` as the value of an attribute, the way silo files contain expressions.
    fn parse(text: &str) -> Expression {
        let body = match parse_body(&format!("x = {text}\n")) {
            Ok(body) => body,
            Err(error) => panic!("test expression {text:?} does not parse: {error}"),
        };
        match body.get_attribute("x") {
            Some(attribute) => attribute.value.clone(),
            None => panic!("test expression {text:?} parsed without an attribute"),
        }
    }

    #[test]
    fn literal_string_reads_quoted_and_heredoc() {
        assert_eq!(literal_string(&parse(r#""a\tb""#)), Some("a\tb".to_owned()));
        assert_eq!(
            literal_string(&parse("<<EOT\nline\nEOT")),
            Some("line\n".to_owned())
        );
        assert_eq!(
            literal_string(&parse("<<-EOT\n    line\n  EOT")),
            Some("line\n".to_owned())
        );
    }

    #[test]
    fn literal_string_rejects_interpolation() {
        assert_eq!(literal_string(&parse(r#""a${b}""#)), None);
        assert_eq!(literal_string(&parse("5")), None);
    }

    #[test]
    fn type_name_per_expression() {
        let cases = [
            ("null", "null"),
            ("true", "a bool"),
            ("1.5", "a number"),
            (r#""x""#, "a string"),
            (r#""x${y}""#, "a string template with interpolation"),
            ("[1]", "a list"),
            ("{ a = 1 }", "an object"),
            ("foo", "a variable reference"),
            ("file(\"x\")", "a function call"),
            ("var.x", "a reference"),
            ("1 + 2", "an expression"),
        ];
        for (text, expected) in cases {
            assert_eq!(type_name(&parse(text)), expected, "type of {text}");
        }
    }
}
