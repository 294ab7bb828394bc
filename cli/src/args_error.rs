//! One-line messages for command lines that the argument parser (clap) rejects. clap's own
//! rendering spans several lines (error, tip, usage); the CLI prints every error as one line.

use clap::error::{ContextKind, ContextValue, ErrorKind};

use std::ffi::OsString;

/// Builds the one-line message for a rejected command line: what is wrong with which value,
/// clap's suggestion or the accepted values when it has them, and the help command to run.
/// `args` is the whole command line, program name first, and selects the subcommand whose help
/// is named.
pub fn one_line(error: &clap::Error, command: &clap::Command, args: &[OsString]) -> String {
    let mut message = describe(error);
    if let Some(suggestion) = suggestion(error) {
        message.push_str(&format!(" (did you mean {suggestion}?)"));
    }
    if let Some(ContextValue::Strings(values)) = error.get(ContextKind::ValidValue) {
        if !values.is_empty() {
            message.push_str(&format!("; possible values: {}", values.join(", ")));
        }
    }
    message.push_str(&format!("; run `{} --help` for usage", command_path(command, args)));
    message
}

/// Names what is wrong. clap's first line is kept where it is already one complete line.
fn describe(error: &clap::Error) -> String {
    let invalid_arg = error.get(ContextKind::InvalidArg);
    match (error.kind(), error.get(ContextKind::InvalidSubcommand), invalid_arg) {
        (ErrorKind::InvalidSubcommand, Some(ContextValue::String(command)), _) => {
            format!("unknown command '{command}'")
        }
        (ErrorKind::UnknownArgument, _, Some(ContextValue::String(arg))) if arg.starts_with('-') => {
            format!("unknown flag '{arg}'")
        }
        (ErrorKind::UnknownArgument, _, Some(ContextValue::String(arg))) => {
            format!("unexpected argument '{arg}'")
        }
        (ErrorKind::MissingRequiredArgument, _, Some(ContextValue::Strings(args))) => {
            format!("missing required argument {}", args.join(", "))
        }
        _ => first_line(error),
    }
}

/// Returns clap's first line without its `error: ` prefix.
fn first_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).trim().to_owned()
}

/// Returns clap's suggested command, flag or value, quoted, such as `'list'`.
fn suggestion(error: &clap::Error) -> Option<String> {
    let kinds = [
        ContextKind::SuggestedSubcommand,
        ContextKind::SuggestedArg,
        ContextKind::SuggestedValue,
    ];
    for kind in kinds {
        let quoted: Vec<String> = match error.get(kind) {
            Some(ContextValue::String(value)) => vec![format!("'{value}'")],
            Some(ContextValue::Strings(values)) => values.iter().map(|value| format!("'{value}'")).collect(),
            _ => Vec::new(),
        };
        if !quoted.is_empty() {
            return Some(quoted.join(" or "));
        }
    }
    None
}

/// Returns the names of the command and the subcommands that `args` selects, such as
/// `colex-cli controllers remove`. clap's usage line would name them too, but clap leaves it
/// out of some errors, such as an invalid value.
fn command_path(command: &clap::Command, args: &[OsString]) -> String {
    let mut path = vec![command.get_name().to_owned()];
    let mut current = command;
    for arg in args.iter().skip(1) {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if let Some(subcommand) = current.find_subcommand(arg.as_ref()) {
            path.push(subcommand.get_name().to_owned());
            current = subcommand;
        }
    }
    path.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

    #[derive(Debug, Parser)]
    #[command(name = "colex-cli")]
    struct Args {
        #[command(subcommand)]
        command: Verb,
    }

    #[derive(Debug, Subcommand)]
    enum Verb {
        List {
            #[arg(long)]
            all_hosts: bool,
            #[arg(long, value_enum, default_value_t = Format::Table)]
            output: Format,
        },
        Logs {
            name: String,
        },
    }

    #[derive(Debug, Clone, Copy, ValueEnum)]
    enum Format {
        Table,
        Json,
    }

    fn message(args: &[&str]) -> String {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let error = Args::try_parse_from(&args).expect_err("rejected");
        one_line(&error, &Args::command(), &args)
    }

    #[test]
    fn unknown_command_with_suggestion() {
        assert_eq!(
            message(&["colex-cli", "lst"]),
            "unknown command 'lst' (did you mean 'list'?); run `colex-cli --help` for usage"
        );
    }

    #[test]
    fn unknown_flag_names_subcommand_help() {
        assert_eq!(
            message(&["colex-cli", "list", "--all-host"]),
            "unknown flag '--all-host' (did you mean '--all-hosts'?); run `colex-cli list --help` for usage"
        );
    }

    #[test]
    fn missing_argument() {
        assert_eq!(
            message(&["colex-cli", "logs"]),
            "missing required argument <NAME>; run `colex-cli logs --help` for usage"
        );
    }

    #[test]
    fn invalid_value_lists_possible_values() {
        let text = message(&["colex-cli", "list", "--output", "yaml"]);
        assert!(
            text.starts_with("invalid value 'yaml' for '--output <OUTPUT>'"),
            "{text}"
        );
        assert!(text.contains("possible values: table, json"), "{text}");
        assert!(text.ends_with("run `colex-cli list --help` for usage"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}
