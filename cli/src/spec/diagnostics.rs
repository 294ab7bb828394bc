//! Collection of the problems found while checking one silo file, with the mapping from byte
//! offsets to the line and column shown to the user.

use hcl_edit::Span;

use super::error::Problem;

/// Distance in bytes between two checkpoints of the character count, so that finding a column
/// never scans more than this many bytes, however long the line is.
const CHECKPOINT_BYTES: usize = 256;

/// Maximum number of characters of a user-chosen name (silo name, block label) repeated in the
/// prefix of every message about it. Longer names are cut, so the output of a file with a huge
/// label and many problems stays proportional to the file's size.
const MAX_NAME_IN_MESSAGE_CHARS: usize = 64;

/// Problems found so far in one silo file.
#[derive(Debug)]
pub(super) struct Diagnostics<'a> {
    origin: &'a str,
    text: &'a str,
    /// Byte offset at which each line starts, beginning with 0.
    line_starts: Vec<usize>,
    /// Number of characters that start before byte `i * CHECKPOINT_BYTES`, for each `i`.
    chars_before_checkpoint: Vec<usize>,
    /// Problems as (byte offset, message), in the order they were found.
    found: Vec<(usize, String)>,
}

impl<'a> Diagnostics<'a> {
    pub(super) fn new(origin: &'a str, text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(offset, _)| offset + 1));

        let mut chars_before_checkpoint = Vec::with_capacity(text.len() / CHECKPOINT_BYTES + 1);
        let mut chars = 0;
        for chunk in text.as_bytes().chunks(CHECKPOINT_BYTES) {
            chars_before_checkpoint.push(chars);
            chars += count_char_starts(chunk);
        }
        chars_before_checkpoint.push(chars);

        Diagnostics {
            origin,
            text,
            line_starts,
            chars_before_checkpoint,
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
    /// the same way hcl-edit counts them in syntax errors. An offset inside a multi-byte
    /// character counts that character as before it.
    pub(super) fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_index = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let line_start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let column = self.chars_before(offset) - self.chars_before(line_start) + 1;
        (line_index + 1, column)
    }

    /// Counts the characters that start before a byte offset, scanning at most
    /// `CHECKPOINT_BYTES` bytes.
    fn chars_before(&self, offset: usize) -> usize {
        let checkpoint = offset / CHECKPOINT_BYTES;
        let counted = self
            .chars_before_checkpoint
            .get(checkpoint)
            .copied()
            .unwrap_or(0);
        let rest = self
            .text
            .as_bytes()
            .get(checkpoint * CHECKPOINT_BYTES..offset)
            .unwrap_or_default();
        counted + count_char_starts(rest)
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

/// Counts the bytes that start a UTF-8 character, that is every byte but continuation bytes.
fn count_char_starts(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .filter(|&&byte| byte & 0b1100_0000 != 0b1000_0000)
        .count()
}

/// Quotes a user-chosen name for a message prefix, cut to `MAX_NAME_IN_MESSAGE_CHARS`
/// characters with `...` after the cut.
pub(super) fn quoted_name(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_IN_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{:?}...", &name[..cut]),
        None => format!("{name:?}"),
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
    fn line_column_on_long_multibyte_line() {
        // Past several checkpoints, on a line that starts in the middle of a checkpoint span.
        let text = format!("x\n{}z", "é".repeat(1000));
        let diagnostics = Diagnostics::new("f", &text);

        assert_eq!(diagnostics.line_column(2 + 2 * 1000), (2, 1001));
        assert_eq!(diagnostics.line_column(2 + 2 * 300), (2, 301));
    }

    #[test]
    fn quoted_name_cuts_long_names() {
        assert_eq!(quoted_name("web"), "\"web\"");
        let long = "a".repeat(100);
        assert_eq!(quoted_name(&long), format!("\"{}\"...", "a".repeat(64)));
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
