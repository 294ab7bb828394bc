//! Collection of the problems found while checking one silo file, with the mapping from byte
//! offsets to the line and column shown to the user.

use hcl_edit::Span;

use super::error::Problem;

/// Problems found so far in one silo file.
#[derive(Debug)]
pub(super) struct Diagnostics<'a> {
    origin: &'a str,
    text: &'a str,
    /// Byte offset at which each line starts, beginning with 0.
    line_starts: Vec<usize>,
    /// Problems as (byte offset, message), in the order they were found.
    found: Vec<(usize, String)>,
}

impl<'a> Diagnostics<'a> {
    pub(super) fn new(origin: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(offset, _)| offset + 1));
        Diagnostics {
            origin,
            text,
            line_starts,
            found: Vec::new(),
        }
    }

    /// Records a problem at a byte offset of the silo file.
    pub(super) fn report(&mut self, offset: usize, message: impl Into<String>) {
        self.found.push((offset, message.into()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// Returns the 1-based line and column of a byte offset. Columns count characters, not bytes,
    /// the same way hcl-edit counts them in syntax errors.
    pub(super) fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_index = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let line_start = self.line_starts[line_index];
        let column = match self.text.get(line_start..offset) {
            Some(before) => before.chars().count() + 1,
            // An offset inside a multi-byte character: fall back to counting bytes.
            None => offset - line_start + 1,
        };
        (line_index + 1, column)
    }

    /// Formats a byte offset as `FILE:LINE:COLUMN`, for messages that refer to a second place.
    pub(super) fn position(&self, offset: usize) -> String {
        let (line, column) = self.line_column(offset);
        format!("{}:{line}:{column}", self.origin)
    }

    /// Returns the problems sorted by position. Problems at the same position keep the order in
    /// which they were found.
    pub(super) fn into_problems(mut self) -> Vec<Problem> {
        let mut found = std::mem::take(&mut self.found);
        found.sort_by_key(|(offset, _)| *offset);

        let mut problems = Vec::with_capacity(found.len());
        for (offset, message) in found {
            let (line, column) = self.line_column(offset);
            problems.push(Problem {
                line,
                column,
                message,
            });
        }
        problems
    }
}

/// Returns the byte offset at which a parsed node starts. Every node that hcl-edit's parser
/// returns carries a span, so the fallback to 0 only applies to nodes built in code.
pub(super) fn offset_of(node: &impl Span) -> usize {
    node.span().map_or(0, |range| range.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let diagnostics = Diagnostics::new("f", "ab\ncd\n\nef");

        assert_eq!(diagnostics.line_column(0), (1, 1));
        assert_eq!(diagnostics.line_column(1), (1, 2));
        assert_eq!(diagnostics.line_column(3), (2, 1));
        assert_eq!(diagnostics.line_column(6), (3, 1));
        assert_eq!(diagnostics.line_column(7), (4, 1));
    }

    #[test]
    fn line_column_counts_characters() {
        // "é" is two bytes, so byte offset 3 is the third character.
        let diagnostics = Diagnostics::new("f", "é x");

        assert_eq!(diagnostics.line_column(3), (1, 3));
    }

    #[test]
    fn line_column_clamps_past_end() {
        let diagnostics = Diagnostics::new("f", "ab");

        assert_eq!(diagnostics.line_column(99), (1, 3));
    }

    #[test]
    fn problems_sorted_by_position() {
        let mut diagnostics = Diagnostics::new("f", "a\nb\nc");
        diagnostics.report(4, "third");
        diagnostics.report(0, "first");
        diagnostics.report(2, "second");

        let messages: Vec<String> = diagnostics
            .into_problems()
            .into_iter()
            .map(|problem| format!("{}:{} {}", problem.line, problem.column, problem.message))
            .collect();
        assert_eq!(messages, ["1:1 first", "2:1 second", "3:1 third"]);
    }
}
