//! Line and column of a byte offset in a configuration file.

/// Maps byte offsets of one text to 1-based lines and columns.
#[derive(Debug)]
pub(super) struct Positions<'a> {
    text: &'a str,
    /// Byte offset at which each line starts, beginning with 0.
    line_starts: Vec<usize>,
}

impl<'a> Positions<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(offset, _)| offset + 1));
        Positions { text, line_starts }
    }

    /// Returns the 1-based line and column of `offset`. Columns count characters, as hcl-edit
    /// counts them in its syntax errors. An offset past the end counts as the end.
    pub(super) fn line_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line_index = self
            .line_starts
            .partition_point(|&start| start <= offset)
            .saturating_sub(1);
        let line_start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let column = self.text[line_start..offset].chars().count() + 1;
        (line_index + 1, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_count_from_one() {
        let positions = Positions::new("ab\ncd\n\nef");
        assert_eq!(positions.line_column(0), (1, 1));
        assert_eq!(positions.line_column(1), (1, 2));
        assert_eq!(positions.line_column(3), (2, 1));
        assert_eq!(positions.line_column(7), (4, 1));
        assert_eq!(positions.line_column(99), (4, 3));
    }

    #[test]
    fn columns_count_characters() {
        // "é" is two bytes, so byte offset 3 is the third character.
        let positions = Positions::new("é x");
        assert_eq!(positions.line_column(3), (1, 3));
        assert_eq!(positions.line_column(1), (1, 1));
    }
}
