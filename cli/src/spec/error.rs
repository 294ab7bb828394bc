//! Errors returned when a silo file cannot be loaded.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// One problem found in a silo file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// What is wrong, naming the offending value and the fix.
    pub message: String,
}

/// Failure to load a silo file. Each variant displays as one line per problem, in the form
/// `FILE:LINE:COLUMN: message` (except `Read`, which has no position).
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Reading the silo file from disk failed.
    // The OS error is part of the message, so it is not also returned by `source()`: a chain
    // printer such as anyhow's `{:#}` would print it twice.
    #[error("failed to read silo file {}: {cause}", path.display())]
    Read { path: PathBuf, cause: io::Error },

    /// The text is not valid HCL. Parsing stops at the first syntax error.
    #[error("{origin}:{}:{}: invalid HCL syntax: {}", problem.line, problem.column, problem.message)]
    Syntax { origin: String, problem: Problem },

    /// The text is valid HCL but breaks one or more silo rules. `problems` contains all of them,
    /// sorted by position.
    #[error("{}", ProblemLines { origin, problems })]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

impl SpecError {
    /// Returns the problems with their positions. A `Read` error has none.
    pub fn problems(&self) -> &[Problem] {
        match self {
            SpecError::Read { .. } => &[],
            SpecError::Syntax { problem, .. } => std::slice::from_ref(problem),
            SpecError::Invalid { problems, .. } => problems,
        }
    }
}

/// Display adapter that writes one `FILE:LINE:COLUMN: message` line per problem.
struct ProblemLines<'a> {
    origin: &'a str,
    problems: &'a [Problem],
}

impl fmt::Display for ProblemLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.origin, problem.line, problem.column, problem.message
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(line: usize, column: usize, message: &str) -> Problem {
        Problem {
            line,
            column,
            message: message.to_owned(),
        }
    }

    #[test]
    fn invalid_displays_one_line_per_problem() {
        let error = SpecError::Invalid {
            origin: "silo.hcl".to_owned(),
            problems: vec![problem(2, 3, "first"), problem(7, 1, "second")],
        };

        assert_eq!(
            error.to_string(),
            "silo.hcl:2:3: first\nsilo.hcl:7:1: second"
        );
        assert_eq!(error.problems().len(), 2);
    }

    #[test]
    fn syntax_displays_position_and_message() {
        let error = SpecError::Syntax {
            origin: "silo.hcl".to_owned(),
            problem: problem(4, 9, "expected `]`"),
        };

        assert_eq!(
            error.to_string(),
            "silo.hcl:4:9: invalid HCL syntax: expected `]`"
        );
    }

    #[test]
    fn read_displays_path_and_os_error() {
        let error = SpecError::Read {
            path: PathBuf::from("/nowhere/silo.hcl"),
            cause: io::Error::from(io::ErrorKind::NotFound),
        };

        assert_eq!(
            error.to_string(),
            "failed to read silo file /nowhere/silo.hcl: entity not found"
        );
        assert!(error.problems().is_empty());
    }
}
