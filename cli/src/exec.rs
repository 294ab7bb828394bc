//! `colex-cli exec NAME [-i] [-t] -- CMD...`: runs a command inside a running silo through the
//! controller and the silo's agent.
//!
//! `-i` forwards stdin. `-t` runs the command on a pseudo-terminal, puts the local terminal in
//! raw mode until the command ends, and forwards window size changes (SIGWINCH). The CLI exits
//! with the command's exit code, or 128 + N when signal N killed it, as `docker exec` does.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use colex_proto as proto;
use colex_proto::exec_request::Kind as RequestKind;
use colex_proto::exec_response::Kind as ResponseKind;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::{CliError, Controller};
use crate::silo_names::silo_not_found;

/// Requests queued for the controller before stdin is read again.
const REQUEST_QUEUE_LEN: usize = 16;
/// Bytes read from stdin at a time.
const STDIN_READ_BYTES: usize = 16 * 1024;
/// Offset added to a signal number to form the exit code of a killed command, as shells do.
const SIGNAL_EXIT_CODE_BASE: i32 = 128;
/// Exit code when the command could not be run and the agent gave no code of its own.
const EXEC_FAILED_EXIT_CODE: u8 = 2;

/// Options of one `exec`: the silo, the command, and how its input and output travel.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Silo name, or `NAME[INDEX]` for one instance.
    pub name: String,
    pub command: Vec<String>,
    /// Forward stdin to the command.
    pub interactive: bool,
    /// Run the command on a pseudo-terminal.
    pub tty: bool,
}

/// Runs the command and returns `Ok` when it exited 0. Any other exit becomes a [`CliError`]
/// with the command's code and an empty message, which `main` exits with silently.
pub async fn run(address: &str, options: ExecOptions) -> Result<(), CliError> {
    if options.tty && !nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false) {
        return Err(CliError::user(
            "the input device is not a TTY; drop -t (use -i alone to pipe input into the command)",
        ));
    }
    let mut controller = Controller::connect_streaming(address).await?;
    let mut client = proto::exec_client::ExecClient::new(controller.channel.clone())
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);

    let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE_LEN);
    let start = proto::ExecStart {
        name: options.name.clone(),
        argv: options.command.clone(),
        tty: options.tty,
        size: if options.tty { terminal_size() } else { None },
        term: if options.tty { std::env::var("TERM").unwrap_or_default() } else { String::new() },
        stdin: options.interactive,
    };
    // The queue is empty, so this cannot wait.
    let _ = requests
        .send(proto::ExecRequest {
            kind: Some(RequestKind::Start(start)),
        })
        .await;

    let result = async {
        let response = client.exec(ReceiverStream::new(request_rx)).await;
        let mut responses = match response {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(status),
        };
        // The raw mode starts once the controller accepted the call, so its errors print as
        // usual lines. The guard restores the terminal on every return below.
        let _raw = if options.tty { Some(RawMode::enter()?) } else { None };
        if options.tty {
            forward_window_changes(requests.clone());
        }
        if options.interactive {
            forward_stdin(requests.clone());
        }
        drop(requests);
        let mut stdout = std::io::stdout();
        let mut stderr = std::io::stderr();
        while let Some(response) = responses.message().await? {
            match response.kind {
                Some(ResponseKind::Stdout(data)) => write_flushed(&mut stdout, &data),
                Some(ResponseKind::Stderr(data)) => write_flushed(&mut stderr, &data),
                Some(ResponseKind::Exit(exit)) => return Ok(Some(exit)),
                None => {}
            }
        }
        Ok(None)
    }
    .await;

    match result {
        Ok(Some(exit)) => exit_result(&options.name, &exit),
        Ok(None) => Err(CliError::cluster(format!(
            "controller {address}: the exec in silo {} ended without the command's exit status",
            options.name
        ))),
        Err(status) if status.code() == tonic::Code::NotFound => {
            // The controller's message does not name the closest silo, so it is rebuilt here,
            // unless the silo is listed and something else was not found.
            let silos = controller.list().await.map(|listed| listed.silos).unwrap_or_default();
            if silos.iter().any(|silo| silo.name == options.name) {
                return Err(CliError::from_status(address, &status));
            }
            Err(CliError::user(silo_not_found(&options.name, &silos)))
        }
        Err(status) => Err(CliError::from_status(address, &status)),
    }
}

/// Maps the command's end to the CLI's result: exit code N, or 128 + N for signal N.
fn exit_result(name: &str, exit: &proto::ExecExit) -> Result<(), CliError> {
    if !exit.error.is_empty() {
        let code = exit
            .code
            .and_then(|code| u8::try_from(code).ok())
            .unwrap_or(EXEC_FAILED_EXIT_CODE);
        return Err(CliError {
            code,
            message: format!("exec in silo {name} failed: {}", exit.error),
        });
    }
    let code = match (exit.code, exit.signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => SIGNAL_EXIT_CODE_BASE + signal,
        (None, None) => {
            return Err(CliError::cluster(format!(
                "the agent reported no exit status for the exec in silo {name}"
            )))
        }
    };
    match u8::try_from(code) {
        Ok(0) => Ok(()),
        Ok(code) => Err(CliError {
            code,
            message: String::new(),
        }),
        Err(_) => Err(CliError::cluster(format!(
            "the command in silo {name} ended with exit code {code}, outside 0 to 255"
        ))),
    }
}

fn write_flushed(out: &mut impl Write, data: &[u8]) {
    // A closed stdout (e.g. `| head -1`) must not end the exec early: the command's exit code
    // is still the result.
    let _ = out.write_all(data).and_then(|()| out.flush());
}

/// Reads stdin on a thread of its own, because a blocking read cannot be cancelled and must
/// not keep the runtime from shutting down. The thread ends with the process.
fn forward_stdin(requests: mpsc::Sender<proto::ExecRequest>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = vec![0u8; STDIN_READ_BYTES];
        loop {
            let kind = match stdin.read(&mut buffer) {
                Ok(0) | Err(_) => RequestKind::StdinClose(proto::ExecStdinClose {}),
                Ok(count) => RequestKind::Stdin(buffer[..count].to_vec()),
            };
            let last = matches!(kind, RequestKind::StdinClose(_));
            if requests.blocking_send(proto::ExecRequest { kind: Some(kind) }).is_err() || last {
                return;
            }
        }
    });
}

/// Sends the terminal's new size after every SIGWINCH.
fn forward_window_changes(requests: mpsc::Sender<proto::ExecRequest>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut changes) = signal(SignalKind::window_change()) else {
        return;
    };
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            let Some(size) = terminal_size() else {
                continue;
            };
            let request = proto::ExecRequest {
                kind: Some(RequestKind::Resize(size)),
            };
            if requests.send(request).await.is_err() {
                return;
            }
        }
    });
}

/// Returns the size of the terminal on stdin.
fn terminal_size() -> Option<proto::TerminalSize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize`, which `size` is, during the call.
    let result = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut size) };
    (result == 0 && size.ws_row > 0).then(|| proto::TerminalSize {
        rows: u32::from(size.ws_row),
        cols: u32::from(size.ws_col),
    })
}

/// The local terminal in raw mode; dropping it restores the settings it found.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> Result<RawMode, tonic::Status> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())
            .map_err(|errno| tonic::Status::failed_precondition(format!("cannot read the terminal settings: {errno}")))?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|errno| tonic::Status::failed_precondition(format!("cannot put the terminal in raw mode: {errno}")))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // TCSADRAIN: the command's last output reaches the screen with the old settings' line
        // endings already in force for what the CLI prints next.
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<i32>, error: &str) -> proto::ExecExit {
        proto::ExecExit {
            code,
            signal,
            error: error.to_owned(),
        }
    }

    #[test]
    fn exit_codes_follow_docker() {
        assert!(exit_result("web", &exit(Some(0), None, "")).is_ok());
        let seven = exit_result("web", &exit(Some(7), None, "")).expect_err("exit 7");
        assert_eq!(seven.code, 7);
        assert!(seven.message.is_empty(), "{}", seven.message);
        let killed = exit_result("web", &exit(None, Some(9), "")).expect_err("killed");
        assert_eq!(killed.code, 137);
    }

    #[test]
    fn failed_exec_names_the_silo() {
        let missing = exit_result("web", &exit(Some(127), None, "executable nope not found")).expect_err("missing");
        assert_eq!(missing.code, 127);
        assert_eq!(missing.message, "exec in silo web failed: executable nope not found");
        let no_code = exit_result("web", &exit(None, None, "silo 0000abcd is not running")).expect_err("error");
        assert_eq!(no_code.code, EXEC_FAILED_EXIT_CODE);
    }

    #[test]
    fn missing_status_is_a_cluster_error() {
        let error = exit_result("web", &exit(None, None, "")).expect_err("no status");
        assert_eq!(error.code, crate::client::EXIT_CLUSTER_ERROR);
    }
}
