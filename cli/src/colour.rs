//! Colour of state words in tables and `list --all-hosts` headings. With the default
//! `--color auto`, colour is used only when standard output is a terminal and `NO_COLOR` is
//! unset or empty (<https://no-color.org>), so pipes and files get plain text. JSON output is
//! never coloured, because it does not pass through the tables.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use tabled::settings::Color;

/// When to colour state words, as `--color` sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when standard output is a terminal and `NO_COLOR` is unset or empty.
    #[default]
    Auto,
    /// Colour even into a pipe or file, and despite `NO_COLOR`.
    Always,
    /// Never colour.
    Never,
}

/// Environment variable that turns colour off when set to a non-empty value.
const NO_COLOR_VAR: &str = "NO_COLOR";

/// Set once by `main` before anything is printed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Decides for the whole run whether state words are coloured.
pub fn init(choice: ColorChoice) {
    let no_color = std::env::var_os(NO_COLOR_VAR).is_some_and(|value| !value.is_empty());
    let enabled = resolve(choice, std::io::stdout().is_terminal(), no_color);
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Returns whether state words are coloured in this run.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Returns whether `choice` colours, given whether stdout is a terminal and whether
/// `NO_COLOR` is set to a non-empty value.
pub fn resolve(choice: ColorChoice, stdout_is_terminal: bool, no_color: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stdout_is_terminal && !no_color,
    }
}

/// Returns the colour of a state cell by its first word. Case is ignored because silo states
/// are upper-case and host states lower-case. UP is green, FAILED and DOWN are red, and
/// PENDING, STALE and DRAINING are yellow. Other states, such as `EXITED (3)`, stay uncoloured.
pub fn state_color(state: &str) -> Option<Color> {
    let word = state.split_whitespace().next()?.to_ascii_uppercase();
    match word.as_str() {
        "UP" => Some(Color::FG_GREEN),
        "FAILED" | "DOWN" => Some(Color::FG_RED),
        "PENDING" | "STALE" | "DRAINING" => Some(Color::FG_YELLOW),
        _ => None,
    }
}

/// Returns `text` in the colour of state word `state` when `coloured` is true.
pub fn paint(text: &str, state: &str, coloured: bool) -> String {
    match state_color(state) {
        Some(color) if coloured => color.colorize(text),
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_colours_only_a_terminal_without_no_color() {
        assert!(resolve(ColorChoice::Auto, true, false));
        assert!(!resolve(ColorChoice::Auto, false, false), "a pipe");
        assert!(!resolve(ColorChoice::Auto, true, true), "NO_COLOR set");
        assert!(resolve(ColorChoice::Always, false, true));
        assert!(!resolve(ColorChoice::Never, true, false));
    }

    #[test]
    fn state_words_get_their_colours() {
        let cases = [
            ("UP", Some(Color::FG_GREEN)),
            ("up", Some(Color::FG_GREEN)),
            ("FAILED", Some(Color::FG_RED)),
            ("DOWN", Some(Color::FG_RED)),
            ("down", Some(Color::FG_RED)),
            ("PENDING", Some(Color::FG_YELLOW)),
            ("stale", Some(Color::FG_YELLOW)),
            ("draining", Some(Color::FG_YELLOW)),
            ("EXITED (3)", None),
            ("STARTING", None),
            ("", None),
        ];
        for (state, expected) in cases {
            assert_eq!(state_color(state), expected, "{state:?}");
        }
    }

    #[test]
    fn paint_wraps_only_when_coloured() {
        assert_eq!(paint("UP", "UP", true), "\u{1b}[32mUP\u{1b}[39m");
        assert_eq!(paint("UP", "UP", false), "UP");
        assert_eq!(paint("EXITED (1)", "EXITED (1)", true), "EXITED (1)");
    }
}
