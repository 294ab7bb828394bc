//! The `enroll`, `tokens` and `users` commands.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use colex_proto as proto;
use colex_proto::pki::{self, EnrollmentKey};
use colex_proto::security_client::SecurityClient;
use tabled::Tabled;

use crate::client::{split_addresses, CliError, Controller};
use crate::{credentials, table};

/// `enroll`: reads the enrollment key, verifies the controller with the fingerprint in it,
/// and stores the certificate the controller signs in `config_dir`.
pub async fn enroll(serv: &str, config_dir: &Path, role: Option<&str>, name: Option<&str>, key_file: Option<&Path>) -> Result<(), CliError> {
    let key = read_key(key_file)?;
    let key = EnrollmentKey::parse(&key).map_err(|error| CliError::user(error.to_string()))?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => default_user_name()?,
    };
    let mut failures = Vec::new();
    for address in split_addresses(serv) {
        crate::client::check_address(&address)?;
        match pki::enroll(&address, &key, role.unwrap_or_default(), &name).await {
            Ok(joined) => {
                credentials::save(config_dir, &joined.authority_pem, &joined.cert_pem, &joined.key_pem)?;
                println!(
                    "enrolled {} as {}; certificate stored in {}",
                    joined.identity,
                    joined.role,
                    config_dir.display()
                );
                return Ok(());
            }
            Err(pki::JoinError::Rejected { message, code, .. }) => {
                let text = format!("controller {address} rejected the enrollment: {message}");
                return Err(match code {
                    tonic::Code::Unavailable | tonic::Code::Internal => CliError::cluster(text),
                    _ => CliError::user(text),
                });
            }
            Err(error) => failures.push(error.to_string()),
        }
    }
    Err(CliError::cluster(format!("cannot enroll: {}", failures.join("; "))))
}

/// `enroll --reopen`: opens a new enrollment window and prints its key.
pub async fn reopen(serv: &str, role: Option<&str>, window_secs: u32) -> Result<(), CliError> {
    let controller = Controller::connect(serv).await?;
    let request = proto::OpenEnrollmentRequest {
        window_secs,
        role: role.unwrap_or_default().to_owned(),
    };
    let response = SecurityClient::new(controller.channel.clone())
        .open_enrollment(request)
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?
        .into_inner();
    println!("{}", response.key);
    eprintln!("valid until {}; the user runs `colex-cli --serv {serv} enroll` and pastes it", show_time(response.expires_unix));
    Ok(())
}

/// Reads the key from `key_file`, else from the terminal with a prompt, else from stdin.
fn read_key(key_file: Option<&Path>) -> Result<String, CliError> {
    if let Some(path) = key_file {
        return std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|error| CliError::user(format!("cannot read the enrollment key from {}: {error}", path.display())));
    }
    let stdin = std::io::stdin();
    // The key is a secret: a terminal does not echo it, as with a password prompt.
    let echo_off = if stdin.is_terminal() {
        eprint!("enrollment key: ");
        let _ = std::io::stderr().flush();
        EchoOff::new()
    } else {
        None
    };
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|error| CliError::user(format!("cannot read the enrollment key from stdin: {error}")))?;
    if echo_off.is_some() {
        eprintln!();
    }
    drop(echo_off);
    let key = line.trim().to_owned();
    if key.is_empty() {
        return Err(CliError::user(
            "no enrollment key given; paste it, pipe it to stdin or pass --key-file (the controller writes it to enrollment.key in its data folder)",
        ));
    }
    Ok(key)
}

/// Turns the terminal's echo off until dropped.
struct EchoOff {
    saved: nix::sys::termios::Termios,
}

impl EchoOff {
    /// Returns `None` when the terminal settings cannot be changed; the key is then echoed.
    fn new() -> Option<EchoOff> {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        use std::os::fd::AsFd;

        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &quiet).ok()?;
        Some(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        use std::os::fd::AsFd;

        let _ = nix::sys::termios::tcsetattr(std::io::stdin().as_fd(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}

/// Returns the login name for a user who gave no `--name`.
fn default_user_name() -> Result<String, CliError> {
    std::env::var("USER")
        .ok()
        .filter(|name| !name.is_empty())
        .ok_or_else(|| CliError::user("USER is not set; pass the user name with --name"))
}

/// Row of `tokens list`.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
struct TokenRow {
    id: String,
    role: String,
    expires: String,
    state: String,
}

/// `tokens create`: prints the new token alone on stdout.
pub async fn create_token(serv: &str, role: &str, ttl_secs: u64) -> Result<(), CliError> {
    let controller = Controller::connect(serv).await?;
    let response = SecurityClient::new(controller.channel.clone())
        .create_token(proto::CreateTokenRequest {
            role: role.to_owned(),
            ttl_secs,
        })
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?
        .into_inner();
    println!("{}", response.token);
    eprintln!("token {} for role {role} is valid until {}", response.id, show_time(response.expires_unix));
    Ok(())
}

/// `tokens list`: ids, roles, expiry and state, never the secrets.
pub async fn list_tokens(serv: &str) -> Result<(), CliError> {
    let controller = Controller::connect(serv).await?;
    let response = SecurityClient::new(controller.channel.clone())
        .list_tokens(proto::ListTokensRequest {})
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?
        .into_inner();
    let rows: Vec<TokenRow> = response
        .tokens
        .into_iter()
        .map(|token| TokenRow {
            id: token.id,
            role: token.role,
            expires: show_time(token.expires_unix),
            state: token.state,
        })
        .collect();
    println!("{}", table::render(&rows));
    Ok(())
}

/// `tokens revoke ID`.
pub async fn revoke_token(serv: &str, id: &str) -> Result<(), CliError> {
    let controller = Controller::connect(serv).await?;
    SecurityClient::new(controller.channel.clone())
        .revoke_token(proto::RevokeTokenRequest { id: id.to_owned() })
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?;
    println!("token {id} revoked");
    Ok(())
}

/// Row of `users list`.
#[derive(Debug, Tabled)]
#[tabled(rename_all = "UPPERCASE")]
struct UserRow {
    name: String,
    role: String,
    serial: String,
    expires: String,
    state: String,
}

/// `users list`.
pub async fn list_users(serv: &str) -> Result<(), CliError> {
    let controller = Controller::connect(serv).await?;
    let response = SecurityClient::new(controller.channel.clone())
        .list_users(proto::ListUsersRequest {})
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?
        .into_inner();
    let rows: Vec<UserRow> = response
        .users
        .into_iter()
        .map(|user| UserRow {
            name: user.name,
            role: user.role,
            serial: user.serial,
            expires: show_time(user.not_after_unix),
            state: if user.revoked { "revoked" } else { "valid" }.to_owned(),
        })
        .collect();
    println!("{}", table::render(&rows));
    Ok(())
}

/// `users remove NAME`: revokes the user's certificates.
pub async fn remove_user(serv: &str, name: &str) -> Result<(), CliError> {
    let controller = Controller::connect(serv).await?;
    SecurityClient::new(controller.channel.clone())
        .remove_user(proto::RemoveUserRequest { name: name.to_owned() })
        .await
        .map_err(|status| CliError::from_status(&controller.address, &status))?;
    println!("user {name} removed; its certificate is revoked");
    Ok(())
}

/// Formats seconds since the Unix epoch as UTC.
fn show_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix.to_string())
}
