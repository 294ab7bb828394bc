//! colex-cli: starts, stops and lists silos on a colex cluster, and checks silo files.

mod args_error;
mod client;
mod colour;
mod commands;
mod completions;
mod controllers;
mod credentials;
mod exec;
mod merged_logs;
mod hosts;
mod list_filter;
mod output;
mod partial;
mod security;
mod silo_names;
mod status;
mod table;
mod up_progress;
mod validate;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::client::CliError;
use crate::colour::ColorChoice;
use crate::list_filter::ListFilter;
use crate::output::OutputFormat;

/// Program name, which completion scripts register.
const BIN_NAME: &str = "colex-cli";

/// Controller address used when neither --serv nor COLEX_SERV is given.
const DEFAULT_CONTROLLER: &str = "127.0.0.1:7069";

#[derive(Debug, Parser)]
#[command(name = BIN_NAME, version, about = "Start, stop and list silos on a colex cluster")]
struct Cli {
    /// Controller addresses (HOST:PORT[,HOST:PORT...]), tried in turn until one responds within 2 s.
    #[arg(long, global = true, env = "COLEX_SERV", default_value = DEFAULT_CONTROLLER)]
    serv: String,

    /// When to colour the state words of tables.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t)]
    color: ColorChoice,

    /// Connect in plain text without a certificate, to a controller started with --insecure.
    #[arg(long, global = true, env = "COLEX_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,

    /// Folder of this user's certificate files; defaults to ~/.config/colex.
    #[arg(long, global = true, value_name = "DIR", env = "COLEX_CONFIG_DIR")]
    config_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start or replace the silos of a silo file and wait until they run.
    Up {
        /// Silo file (HCL).
        file: PathBuf,
        /// Seconds to wait for every silo to run.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        /// Return once the controller has stored the silos, without waiting for them to run.
        #[arg(long, conflicts_with = "wait")]
        detach: bool,
    },
    /// Stop and remove the silos of a silo file, or the named silos.
    Down {
        /// Silo file (HCL) whose silos to remove.
        file: Option<PathBuf>,
        /// Names of silos to remove, as `--name A B` or `--name A --name B`.
        #[arg(long = "name", value_name = "NAME", num_args = 1..)]
        names: Vec<String>,
        /// Seconds to wait for the silos to be removed.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// List silos.
    List {
        /// Print one table per host, hosts without silos included.
        #[arg(long)]
        all_hosts: bool,
        /// Show only the silos placed on this host (and with --all-hosts only its table).
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// Show only the silos of this class.
        #[arg(long, value_name = "CLASS")]
        class: Option<String>,
        /// Show only the silos that have this tag; repeat it to require every given tag.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Read from the controller reached instead of the leader; may miss the latest changes.
        #[arg(long)]
        stale: bool,
        /// Print tables (table) or one JSON document (json).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
        /// Exit with code 3 after printing when a host is DOWN, because its silos then show
        /// what its agent last reported.
        #[arg(long)]
        strict: bool,
    },
    /// List the controllers (id, address, role, leader, last applied log index), or remove one.
    Controllers {
        #[command(subcommand)]
        action: Option<ControllersAction>,
        /// Print a table (table) or one JSON document (json) of the controllers.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// List the agent hosts (state, subnet, reserved and total CPU and memory, silos, labels),
    /// or drain or undrain one.
    Hosts {
        #[command(subcommand)]
        action: Option<HostsAction>,
        /// Print a table (table) or one JSON document (json) of the hosts.
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Check silo files without a controller: print one summary line per silo, or every
    /// problem as FILE:LINE:COLUMN: message. Exits with 1 if any file has a problem.
    Validate {
        /// Silo files (HCL) to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print summary lines (table) or one JSON document with every file's silos and
        /// problems (json).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Show one silo: its spec, each instance's host, state, addresses, restarts and exit code,
    /// and the instances' recent events with their local time and age.
    Status {
        /// Silo name.
        name: String,
        /// Print text and tables (table) or one JSON document (json).
        #[arg(long, short = 'o', value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Print the output of a silo's program, fetched from the host that runs it.
    Logs {
        /// Silo name.
        name: String,
        /// Keep printing new output as it is written, until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Print only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
        /// Print standard error in place of standard output.
        #[arg(long)]
        stderr: bool,
    },
    /// Run a command inside a running silo, e.g. `colex-cli exec web -- cat /etc/hostname`.
    /// Exits with the command's exit code (128 + N when signal N killed it).
    Exec {
        /// Silo name, or NAME[INDEX] for one instance.
        name: String,
        /// Forward stdin to the command.
        #[arg(short = 'i', long)]
        interactive: bool,
        /// Run the command on a pseudo-terminal; stdin must be a terminal.
        #[arg(short = 't', long)]
        tty: bool,
        /// Command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Get this user's certificate with an enrollment key, or (--reopen, admins) open a new
    /// enrollment window and print its key.
    Enroll {
        /// Role to enroll with, admin or reader; defaults to the role the window was opened for.
        /// With --reopen: the role the new window grants (default reader).
        #[arg(long, value_name = "ROLE")]
        role: Option<String>,
        /// User name the certificate carries; defaults to $USER.
        #[arg(long, value_name = "USER")]
        name: Option<String>,
        /// File with the enrollment key; without it the key is read from the terminal or stdin.
        #[arg(long, value_name = "FILE", conflicts_with = "reopen")]
        key_file: Option<PathBuf>,
        /// Open a new enrollment window (admins only) and print its key.
        #[arg(long)]
        reopen: bool,
        /// With --reopen: seconds the window stays open; 0 for the controller's
        /// --enrollment-window.
        #[arg(long, value_name = "SECS", default_value_t = 0, requires = "reopen")]
        window: u32,
    },
    /// Create, list or revoke join tokens of agents and controllers (admins only).
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
    /// List enrolled users or remove one (admins only).
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Print a shell completion script, e.g. `colex-cli completions bash > /etc/bash_completion.d/colex-cli`.
    Completions {
        /// Shell to complete in.
        shell: Shell,
    },
}

#[derive(Debug, Subcommand)]
enum TokensAction {
    /// Create a join token and print it; it is shown only this once.
    Create {
        /// agent or controller.
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// Validity, such as 90s, 30m, 1h or 7d.
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
    },
    /// List the tokens: id, role, expiry and state, never the secret.
    List,
    /// Revoke a token, so no new host or controller can join with it.
    Revoke {
        /// Token id, as `tokens list` shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum UsersAction {
    /// List the enrolled users and the state of their certificates.
    List,
    /// Revoke a user's certificate; the user must enroll again.
    Remove {
        /// User name, as `users list` shows it.
        name: String,
    },
}

/// Parses a token validity (`90s`, `30m`, `1h`, `7d`, or plain seconds) into seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit_secs) = match text.char_indices().last() {
        Some((index, 's')) => (&text[..index], 1),
        Some((index, 'm')) => (&text[..index], 60),
        Some((index, 'h')) => (&text[..index], 3600),
        Some((index, 'd')) => (&text[..index], 86_400),
        _ => (text, 1),
    };
    let count: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}; use a number with s, m, h or d, such as 1h"))?;
    if count == 0 {
        return Err(format!("invalid duration {text:?}; it must be more than 0"));
    }
    count
        .checked_mul(unit_secs)
        .ok_or_else(|| format!("invalid duration {text:?}; it is too long"))
}

#[derive(Debug, Subcommand)]
enum ControllersAction {
    /// Remove a controller from the cluster. Rejected when the voters left would have no quorum.
    Remove {
        /// Id of the controller, as listed by `colex-cli controllers`.
        id: u64,
    },
}

#[derive(Debug, Subcommand)]
enum HostsAction {
    /// Move the host's silos to other hosts one at a time and place no new silo on it.
    Drain {
        /// Host name, as listed by `colex-cli hosts`.
        host: String,
    },
    /// Let the scheduler place silos on the host again. Silos moved away stay where they are.
    Undrain {
        /// Host name, as listed by `colex-cli hosts`.
        host: String,
    },
    /// Remove a host whose agent is stopped: free its silo subnet, drop it from every other
    /// host's mesh, and place its silos elsewhere. Its agent, started again, joins as a new host.
    Remove {
        /// Host name, as listed by `colex-cli hosts`.
        host: String,
        /// Remove the host even while its agent is connected.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let args = reorder_legacy_args(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => return report_args_error(&error, &args),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::from(client::EXIT_CLUSTER_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // An exec'd command's own exit code, which has nothing to print.
        Err(error) if error.message.is_empty() => ExitCode::from(error.code),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.code)
        }
    }
}

/// Prints help or version output as clap renders it, and any other rejection of the command
/// line as one `error:` line. A rejected command line is a user error.
fn report_args_error(error: &clap::Error, args: &[OsString]) -> ExitCode {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            // Nothing to do when stdout is closed, e.g. `colex-cli --help | head -1`.
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(client::EXIT_USER_ERROR)
        }
        _ => {
            eprintln!("error: {}", args_error::one_line(error, &Cli::command(), args));
            ExitCode::from(client::EXIT_USER_ERROR)
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    colour::init(cli.color);
    let config_dir = credentials::config_dir(cli.config_dir.as_deref())?;
    if cli.insecure {
        eprintln!("warning: --insecure: connecting in plain text without a certificate");
    } else if needs_controller(&cli.command) {
        client::use_transport(credentials::load_transport(&config_dir)?);
    }
    match cli.command {
        Command::Up { file, wait, detach } => commands::up(&cli.serv, &file, Duration::from_secs(wait), detach).await,
        Command::Down { file, names, wait } => {
            let (file, names) = commands::down_targets(file, names);
            commands::down(&cli.serv, file.as_deref(), names, Duration::from_secs(wait)).await
        }
        Command::List {
            all_hosts,
            host,
            class,
            tags,
            stale,
            output,
            strict,
        } => {
            if stale {
                client::use_stale_reads();
            }
            let filter = ListFilter { host, class, tags };
            let listed = commands::list(&cli.serv, all_hosts, &filter, output).await?;
            if strict {
                partial::require_live_hosts(&listed)?;
            }
            Ok(())
        }
        Command::Controllers { action: None, output } => controllers::list(&cli.serv, output).await,
        Command::Controllers {
            action: Some(ControllersAction::Remove { id }),
            ..
        } => controllers::remove(&cli.serv, id).await,
        Command::Hosts { action: None, output } => hosts::list(&cli.serv, output).await,
        Command::Hosts {
            action: Some(HostsAction::Drain { host }),
            ..
        } => hosts::set_draining(&cli.serv, &host, true).await,
        Command::Hosts {
            action: Some(HostsAction::Undrain { host }),
            ..
        } => hosts::set_draining(&cli.serv, &host, false).await,
        Command::Hosts {
            action: Some(HostsAction::Remove { host, force }),
            ..
        } => hosts::remove(&cli.serv, &host, force).await,
        Command::Enroll { reopen: true, role, window, .. } => security::reopen(&cli.serv, role.as_deref(), window).await,
        Command::Enroll {
            role, name, key_file, ..
        } => security::enroll(&cli.serv, &config_dir, role.as_deref(), name.as_deref(), key_file.as_deref()).await,
        Command::Tokens {
            action: TokensAction::Create { role, ttl },
        } => security::create_token(&cli.serv, &role, ttl).await,
        Command::Tokens { action: TokensAction::List } => security::list_tokens(&cli.serv).await,
        Command::Tokens {
            action: TokensAction::Revoke { id },
        } => security::revoke_token(&cli.serv, &id).await,
        Command::Users { action: UsersAction::List } => security::list_users(&cli.serv).await,
        Command::Users {
            action: UsersAction::Remove { name },
        } => security::remove_user(&cli.serv, &name).await,
        Command::Validate { files, output } => validate::run(&files, output),
        Command::Completions { shell } => completions::print(shell, Cli::command(), BIN_NAME),
        Command::Status { name, output } => status::run(&cli.serv, &name, output).await,
        Command::Logs { name, follow, tail, stderr } => commands::logs(&cli.serv, &name, follow, tail, stderr).await,
        Command::Exec {
            name,
            interactive,
            tty,
            command,
        } => {
            let options = exec::ExecOptions {
                name,
                command,
                interactive,
                tty,
            };
            exec::run(&cli.serv, options).await
        }
    }
}

/// Returns whether `command` connects with the user's certificate: every command but the
/// local ones and enrollment, which verifies the controller by the key's fingerprint.
fn needs_controller(command: &Command) -> bool {
    match command {
        Command::Validate { .. } | Command::Completions { .. } => false,
        Command::Enroll { reopen, .. } => *reopen,
        _ => true,
    }
}

/// Accepts the original tool's order, `colex-cli --serv ADDR FILE up`, by
/// moving a trailing `up` or `down` in front of the file.
fn reorder_legacy_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let count = args.len();
    if count >= 3 {
        let last = args[count - 1].to_string_lossy().into_owned();
        let before = args[count - 2].to_string_lossy().into_owned();
        let verb = last == "up" || last == "down";
        let before_is_file = !before.starts_with('-') && before != "up" && before != "down" && before != "list";
        if verb && before_is_file {
            args.swap(count - 1, count - 2);
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn strings(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn legacy_order_is_reordered() {
        let args = reorder_legacy_args(strings(&["colex-cli", "--serv", "h:1", "silo.hcl", "up"]));
        assert_eq!(args, strings(&["colex-cli", "--serv", "h:1", "up", "silo.hcl"]));
    }

    #[test]
    fn modern_order_is_kept() {
        let args = strings(&["colex-cli", "--serv", "h:1", "up", "silo.hcl"]);
        assert_eq!(reorder_legacy_args(args.clone()), args);
    }

    #[test]
    fn validate_takes_several_files() {
        let cli = Cli::try_parse_from(strings(&["colex-cli", "validate", "a.hcl", "b.hcl"]));
        let files = match cli.map(|cli| cli.command) {
            Ok(Command::Validate { files, .. }) => files,
            other => panic!("expected the validate command, got {other:?}"),
        };
        assert_eq!(files, [PathBuf::from("a.hcl"), PathBuf::from("b.hcl")]);
    }

    #[test]
    fn validate_requires_a_file() {
        assert!(Cli::try_parse_from(strings(&["colex-cli", "validate"])).is_err());
    }

    #[test]
    fn controllers_remove_parses() {
        let cli = Cli::try_parse_from(strings(&["colex-cli", "--serv", "a:1,b:2", "controllers", "remove", "3"]));
        assert!(
            matches!(cli.map(|cli| cli.command), Ok(Command::Controllers { action: Some(ControllersAction::Remove { id: 3 }), .. })),
        );
    }

    #[test]
    fn hosts_drain_parses() {
        let cli = Cli::try_parse_from(strings(&["colex-cli", "hosts", "drain", "h1"]));
        assert!(matches!(
            cli.map(|cli| cli.command),
            Ok(Command::Hosts { action: Some(HostsAction::Drain { host }), .. }) if host == "h1"
        ));
        let cli = Cli::try_parse_from(strings(&["colex-cli", "hosts", "-o", "json"]));
        assert!(matches!(
            cli.map(|cli| cli.command),
            Ok(Command::Hosts { action: None, output: OutputFormat::Json })
        ));
    }

    #[test]
    fn bash_completes_every_subcommand() {
        let script = completions::script(Shell::Bash, Cli::command(), BIN_NAME);
        let offered = completions::complete_in_bash(&script, &[BIN_NAME, ""]);
        for subcommand in Cli::command().get_subcommands() {
            let name = subcommand.get_name().to_owned();
            assert!(offered.contains(&name), "{name} offered in {offered:?}");
        }
    }

    #[test]
    fn bash_completes_list_options() {
        let script = completions::script(Shell::Bash, Cli::command(), BIN_NAME);
        let offered = completions::complete_in_bash(&script, &[BIN_NAME, "list", "--"]);
        assert!(offered.contains(&"--all-hosts".to_owned()), "{offered:?}");
        let offered = completions::complete_in_bash(&script, &[BIN_NAME, "--serv", "h:1", "hosts", "dr"]);
        assert_eq!(offered, ["drain"]);
    }

    #[test]
    fn down_takes_several_names_after_one_flag() {
        let cli = Cli::try_parse_from(strings(&["colex-cli", "down", "--name", "a", "b"]));
        assert!(matches!(
            cli.map(|cli| cli.command),
            Ok(Command::Down { file: None, names, .. }) if names == ["a", "b"]
        ));
        let cli = Cli::try_parse_from(strings(&["colex-cli", "down", "--name", "a", "--name", "b"]));
        assert!(matches!(
            cli.map(|cli| cli.command),
            Ok(Command::Down { file: None, names, .. }) if names == ["a", "b"]
        ));
    }

    #[test]
    fn down_file_after_names_is_the_file() {
        let parsed = Cli::try_parse_from(strings(&["colex-cli", "down", "--name", "a", "web.hcl"]));
        let Ok(Command::Down { file, names, .. }) = parsed.map(|cli| cli.command) else {
            panic!("expected the down command");
        };
        let (file, names) = commands::down_targets(file, names);
        assert_eq!(file, Some(PathBuf::from("web.hcl")));
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn output_format_parses() {
        let cli = Cli::try_parse_from(strings(&["colex-cli", "list", "-o", "json", "--strict"]));
        assert!(matches!(
            cli.map(|cli| cli.command),
            Ok(Command::List { output: OutputFormat::Json, strict: true, .. })
        ));
    }

    #[test]
    fn list_filters_parse() {
        let args = ["colex-cli", "list", "--host", "h1", "--class", "batch", "--tag", "a", "--tag", "b"];
        let parsed = Cli::try_parse_from(strings(&args)).map(|cli| cli.command);
        let Ok(Command::List { host, class, tags, .. }) = parsed else {
            panic!("expected the list command");
        };
        assert_eq!(host.as_deref(), Some("h1"));
        assert_eq!(class.as_deref(), Some("batch"));
        assert_eq!(tags, ["a", "b"]);
    }

    #[test]
    fn color_flag_parses_after_the_command() {
        let cli = Cli::try_parse_from(strings(&["colex-cli", "list", "--color", "never"]));
        assert!(matches!(cli.map(|cli| cli.color), Ok(ColorChoice::Never)));
        let cli = Cli::try_parse_from(strings(&["colex-cli", "list"]));
        assert!(matches!(cli.map(|cli| cli.color), Ok(ColorChoice::Auto)));
    }

    #[test]
    fn token_ttl_parses_units() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert_eq!(parse_ttl("120"), Ok(120));
        assert!(parse_ttl("0h").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("1w").is_err());
    }

    #[test]
    fn enroll_and_tokens_parse() {
        let cli = Cli::try_parse_from(strings(&["colex-cli", "enroll", "--role", "reader", "--name", "rita"]));
        assert!(matches!(
            cli.map(|cli| cli.command),
            Ok(Command::Enroll { reopen: false, role: Some(role), .. }) if role == "reader"
        ));
        let cli = Cli::try_parse_from(strings(&["colex-cli", "tokens", "create", "--role", "agent", "--ttl", "2h"]));
        assert!(matches!(
            cli.map(|cli| cli.command),
            Ok(Command::Tokens { action: TokensAction::Create { ttl: 7200, .. } })
        ));
    }

    #[test]
    fn legacy_down_parses() {
        let cli = Cli::try_parse_from(reorder_legacy_args(strings(&["colex-cli", "--serv", "h:1", "s.hcl", "down"])));
        assert!(matches!(cli.map(|cli| cli.command), Ok(Command::Down { file: Some(_), .. })));
    }
}
