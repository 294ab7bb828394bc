//! `exec` against a real cluster: a command in a running silo's namespaces and cgroup, with its
//! output, exit code and stdin. An interactive shell runs on a pseudo-terminal the test drives.
//! Unknown and stopped silos get one-line errors, and a killed CLI leaves no command behind.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use colex_cluster_tests::table::parse_table;
use colex_cluster_tests::{require_root, CommandOutput, Lab};
use nix::pty::{openpty, Winsize};
use nix::sys::termios::{self, LocalFlags};

/// A silo that only sleeps, to exec into.
const SHELL: &str = r#"
Silo "s" {
  name = "shell"

  binary {
    path = "/bin/sleep"
    args = ["3600"]
    env  = ["COLEX_EXEC_TEST=from-spec"]
  }
}
"#;

/// A silo whose program exits at once and is not restarted.
const BRIEF: &str = r#"
Silo "b" {
  name = "brief"

  binary {
    path = "/bin/sh"
    args = ["-c", "exit 0"]
  }
}
"#;

/// How long the test waits for terminal output or for a process to go away.
const WAIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs colex-cli in the controller's namespace with `input` on its stdin.
fn cli_with_stdin(lab: &Lab, args: &[&str], input: &[u8]) -> CommandOutput {
    run_with_stdin(cli_command(lab, args), input)
}

fn run_with_stdin(mut command: Command, input: &[u8]) -> CommandOutput {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("colex-cli starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    let output = child.wait_with_output().expect("colex-cli ends");
    CommandOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn cli_command(lab: &Lab, args: &[&str]) -> Command {
    cli_command_with_serv(lab, &lab.controller_addresses(), args)
}

fn cli_command_with_serv(lab: &Lab, serv: &str, args: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", lab.controller_host.netns))
        .arg("--")
        .arg(lab.bins.join("colex-cli"))
        .args(["--serv", serv])
        .args(args)
        .envs(lab.cli_env());
    command
}

/// Returns the pids of host processes whose argument vector is `argv`.
fn processes_with_argv(argv: &[&str]) -> Vec<u32> {
    let expected: Vec<u8> = argv.iter().flat_map(|arg| arg.bytes().chain([0])).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline == expected))
        .collect()
}

fn wait_for(condition: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {WAIT_TIMEOUT:?} waiting for {condition}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads the terminal's master end on a thread, because the read blocks.
fn read_terminal(master: OwnedFd) -> mpsc::Receiver<Vec<u8>> {
    let (chunks_tx, chunks_rx) = mpsc::channel();
    let mut master = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        // EIO once the CLI and every copy of the slave end are closed.
        while let Ok(count @ 1..) = master.read(&mut buffer) {
            if chunks_tx.send(buffer[..count].to_vec()).is_err() {
                return;
            }
        }
    });
    chunks_rx
}

/// Collects terminal output until it contains `expected`; returns everything read.
fn read_until(chunks: &mpsc::Receiver<Vec<u8>>, seen: &mut String, expected: &str) {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while !seen.contains(expected) {
        let left = deadline.saturating_duration_since(Instant::now());
        match chunks.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => panic!("terminal never showed {expected:?}; it showed:\n{seen}"),
        }
    }
}

fn assert_one_line(output: &CommandOutput, case: &str) {
    assert_eq!(output.stderr.trim_end().lines().count(), 1, "{case}: one line:\n{}", output.stderr);
}

#[test]
fn exec_runs_commands_in_silo() {
    if !require_root("exec_runs_commands_in_silo") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    lab.wait_for_hosts_up().expect("hosts up");
    let file = lab.write_file("shell.hcl", SHELL).expect("silo file");
    let up = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    // Output, hostname and environment come from the silo.
    let hostname = lab.cli(&["exec", "shell", "--", "cat", "/etc/hostname"]).expect("exec runs");
    assert!(hostname.success(), "exec cat failed: {}\n{}", hostname.stderr, lab.logs());
    assert_eq!(hostname.stdout.trim(), "shell");
    let uts = lab.cli(&["exec", "shell", "--", "hostname"]).expect("exec runs");
    assert_eq!(uts.stdout.trim(), "shell", "UTS namespace: {}", uts.stderr);
    let env = lab.cli(&["exec", "shell", "--", "sh", "-c", "echo $COLEX_EXEC_TEST"]).expect("exec runs");
    assert_eq!(env.stdout.trim(), "from-spec", "spec env: {}", env.stderr);

    // Exit codes and separate streams.
    let seven = lab.cli(&["exec", "shell", "--", "sh", "-c", "exit 7"]).expect("exec runs");
    assert_eq!(seven.code, Some(7), "exit 7: {}", seven.stderr);
    assert!(seven.stderr.is_empty(), "no message for the command's own code: {}", seven.stderr);
    let streams = lab.cli(&["exec", "shell", "--", "sh", "-c", "echo out; echo err >&2"]).expect("exec runs");
    assert_eq!(streams.stdout, "out\n");
    assert_eq!(streams.stderr, "err\n");
    let killed = lab.cli(&["exec", "shell", "--", "sh", "-c", "kill -9 $$"]).expect("exec runs");
    assert_eq!(killed.code, Some(137), "128 + SIGKILL: {}", killed.stderr);

    // Stdin with -i.
    let echoed = cli_with_stdin(&lab, &["exec", "-i", "shell", "--", "cat"], b"hi\n");
    assert!(echoed.success(), "exec -i cat failed: {}", echoed.stderr);
    assert_eq!(echoed.stdout, "hi\n");
    let no_stdin = cli_with_stdin(&lab, &["exec", "shell", "--", "cat"], b"dropped\n");
    assert!(no_stdin.success(), "cat without -i reads EOF: {}", no_stdin.stderr);
    assert_eq!(no_stdin.stdout, "", "stdin is forwarded only with -i");

    // Namespaces: the pid namespace shows the silo's processes only, and the command's cgroup
    // is the one of the silo's PID 1.
    let procs = lab.cli(&["exec", "shell", "--", "ls", "/proc"]).expect("exec runs");
    let pids: Vec<u32> = procs.stdout.split_whitespace().filter_map(|entry| entry.parse().ok()).collect();
    assert!(pids.contains(&1), "PID 1 of the silo is listed: {pids:?}");
    assert!(pids.len() <= 4, "only the silo's init, program and the exec'd ls: {pids:?}");
    let own_cgroup = lab.cli(&["exec", "shell", "--", "cat", "/proc/self/cgroup"]).expect("exec runs");
    let init_cgroup = lab.cli(&["exec", "shell", "--", "cat", "/proc/1/cgroup"]).expect("exec runs");
    assert!(own_cgroup.success(), "{}", own_cgroup.stderr);
    assert!(!own_cgroup.stdout.is_empty(), "the command's cgroups are listed");
    assert_eq!(own_cgroup.stdout, init_cgroup.stdout, "the exec'd command shares the silo's cgroups");
    let network = lab.cli(&["exec", "shell", "--", "cat", "/proc/net/dev"]).expect("exec runs");
    assert!(network.stdout.contains("eth0"), "the silo's network namespace:\n{}", network.stdout);
    let capabilities = lab.cli(&["exec", "shell", "--", "grep", "CapBnd", "/proc/self/status"]).expect("exec runs");
    assert!(capabilities.stdout.contains("00000000a80405fb"), "the silo's capability set: {}", capabilities.stdout);
    let seccomp = lab.cli(&["exec", "shell", "--", "grep", "Seccomp_filters", "/proc/self/status"]).expect("exec runs");
    assert!(seccomp.stdout.contains('2'), "the silo's seccomp filters: {}", seccomp.stdout);
    let nested = lab.cli(&["exec", "shell", "--", "unshare", "-U", "true"]).expect("exec runs");
    assert!(!nested.success(), "a user namespace created from an exec: {}", nested.stdout);

    // A missing executable: the shell's 127 and one line.
    let missing = lab.cli(&["exec", "shell", "--", "colex-no-such-command"]).expect("exec runs");
    assert_eq!(missing.code, Some(127), "{}", missing.stderr);
    assert_one_line(&missing, "missing executable");
    assert!(missing.stderr.contains("colex-no-such-command"), "{}", missing.stderr);

    // An unknown silo: one line that names it and the closest name, exit 1.
    let unknown = lab.cli(&["exec", "shel", "--", "true"]).expect("exec runs");
    assert_eq!(unknown.code, Some(1), "{}", unknown.stderr);
    assert_one_line(&unknown, "unknown silo");
    assert!(unknown.stderr.contains("silo shel not found"), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("did you mean shell"), "{}", unknown.stderr);

    // -t without a terminal on stdin.
    let no_terminal = cli_with_stdin(&lab, &["exec", "-t", "shell", "--", "sh"], b"");
    assert_eq!(no_terminal.code, Some(1), "{}", no_terminal.stderr);
    assert_one_line(&no_terminal, "-t without a terminal");
    assert!(no_terminal.stderr.contains("drop -t"), "{}", no_terminal.stderr);

    // A silo whose program exited: one line, non-zero.
    let brief = lab.write_file("brief.hcl", BRIEF).expect("silo file");
    let _ = lab.cli(&["up", brief.to_str().expect("utf-8 path")]).expect("up runs");
    lab.wait_until("brief EXITED", |lab| {
        let listed = lab.cli(&["list"])?;
        Ok(parse_table(&listed.stdout)
            .iter()
            .any(|row| row["NAME"] == "brief" && row["STATE"].starts_with("EXITED")))
    })
    .expect("brief exits");
    let stopped = lab.cli(&["exec", "brief", "--", "true"]).expect("exec runs");
    assert!(!stopped.success(), "exec in an exited silo fails");
    assert_one_line(&stopped, "exited silo");
    assert!(stopped.stderr.contains("not running"), "{}", stopped.stderr);
    assert!(stopped.stderr.contains("brief"), "{}", stopped.stderr);

    // Killing the CLI mid-command removes the command from the silo.
    let seconds = format!("{}", 90_000 + std::process::id() % 10_000);
    let mut sleeper = cli_command(&lab, &["exec", "shell", "--", "sleep", &seconds])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("colex-cli starts");
    wait_for("the exec'd sleep to start", || !processes_with_argv(&["sleep", &seconds]).is_empty());
    let cli_pid = nix::unistd::Pid::from_raw(i32::try_from(sleeper.id()).expect("pid fits"));
    nix::sys::signal::kill(cli_pid, nix::sys::signal::Signal::SIGKILL).expect("kill colex-cli");
    let _ = sleeper.wait();
    wait_for("the exec'd sleep to be killed", || processes_with_argv(&["sleep", &seconds]).is_empty());
}

#[test]
fn exec_tty_runs_interactive_shell() {
    if !require_root("exec_tty_runs_interactive_shell") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    lab.wait_for_hosts_up().expect("hosts up");
    let file = lab.write_file("shell.hcl", SHELL).expect("silo file");
    let up = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    let size = Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).expect("openpty");
    let before = termios::tcgetattr(pty.slave.as_fd()).expect("terminal settings");
    assert!(before.local_flags.contains(LocalFlags::ICANON), "a new terminal starts in canonical mode");
    let slave = |pty: &OwnedFd| Stdio::from(pty.try_clone().expect("dup slave"));
    let mut cli = cli_command(&lab, &["exec", "-it", "shell", "--", "sh"])
        .env("TERM", "xterm")
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .expect("colex-cli starts");
    let chunks = read_terminal(pty.master.try_clone().expect("dup master"));
    let mut master = std::fs::File::from(pty.master);
    let mut seen = String::new();

    master.write_all(b"echo $((6*7))\r").expect("type");
    read_until(&chunks, &mut seen, "42\r\n");
    let during = termios::tcgetattr(pty.slave.as_fd()).expect("terminal settings");
    assert!(!during.local_flags.contains(LocalFlags::ICANON), "raw mode while the shell runs");
    master.write_all(b"echo $TERM\r").expect("type");
    read_until(&chunks, &mut seen, "xterm\r\n");
    master.write_all(b"stty size\r").expect("type");
    read_until(&chunks, &mut seen, "33 101\r\n");

    // A window size change: the terminal is not the CLI's controlling terminal, so the test
    // sends the SIGWINCH that a terminal emulator's resize would make the kernel send.
    let slave_path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).expect("slave path");
    let resized = Command::new("stty")
        .arg("-F")
        .arg(&slave_path)
        .args(["rows", "40", "cols", "120"])
        .status()
        .expect("stty runs");
    assert!(resized.success(), "stty -F {} rows 40 cols 120", slave_path.display());
    let cli_pid = nix::unistd::Pid::from_raw(i32::try_from(cli.id()).expect("pid fits"));
    nix::sys::signal::kill(cli_pid, nix::sys::signal::Signal::SIGWINCH).expect("signal colex-cli");
    let resize_deadline = Instant::now() + WAIT_TIMEOUT;
    for attempt in 1.. {
        // The marker is computed by the shell, so the echo of the typed line does not match it.
        let start = seen.len();
        let typed = format!("stty size; echo size-done-$((1000+{attempt}))\r");
        master.write_all(typed.as_bytes()).expect("type");
        read_until(&chunks, &mut seen, &format!("size-done-{}\r\n", 1000 + attempt));
        if seen[start..].contains("40 120\r\n") {
            break;
        }
        assert!(Instant::now() < resize_deadline, "the silo's terminal never got 40 rows and 120 columns:\n{seen}");
        std::thread::sleep(Duration::from_millis(200));
    }

    master.write_all(b"exit 3\r").expect("type");
    let deadline = Instant::now() + WAIT_TIMEOUT;
    let status = loop {
        if let Some(status) = cli.try_wait().expect("wait for colex-cli") {
            break status;
        }
        assert!(Instant::now() < deadline, "colex-cli did not end after `exit 3`:\n{seen}\n{}", lab.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3), "the shell's exit code:\n{seen}");

    let after = termios::tcgetattr(pty.slave.as_fd()).expect("terminal settings");
    assert_eq!(after.local_flags, before.local_flags, "local flags restored");
    assert_eq!(after.input_flags, before.input_flags, "input flags restored");
    assert_eq!(after.output_flags, before.output_flags, "output flags restored");
    assert_eq!(after.control_flags, before.control_flags, "control flags restored");
}

#[test]
fn exec_through_follower_controller() {
    if !require_root("exec_through_follower_controller") {
        return;
    }
    let lab = Lab::start_with_controllers(2, 1).expect("lab starts");
    lab.wait_for_hosts_up().expect("hosts up");
    let file = lab.write_file("shell.hcl", SHELL).expect("silo file");
    let up = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    // Each controller either runs the exec or relays it, stdin included, to the leader.
    for index in 0..2 {
        let serv = lab.controller_address_at(index);
        let args = ["exec", "-i", "shell", "--", "sh", "-c", "cat; exit 5"];
        let output = run_with_stdin(cli_command_with_serv(&lab, &serv, &args), b"relayed\n");
        assert_eq!(output.code, Some(5), "through controller {index}: {}\n{}", output.stderr, lab.logs());
        assert_eq!(output.stdout, "relayed\n", "through controller {index}");
    }

    // Killing the CLI while a follower relays the exec removes the command too.
    for index in 0..2 {
        let seconds = format!("{}", 80_000 + 10 * (std::process::id() % 1000) + index);
        let serv = lab.controller_address_at(usize::try_from(index).expect("index fits"));
        let mut sleeper = cli_command_with_serv(&lab, &serv, &["exec", "shell", "--", "sleep", &seconds])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("colex-cli starts");
        wait_for("the exec'd sleep to start", || !processes_with_argv(&["sleep", &seconds]).is_empty());
        let cli_pid = nix::unistd::Pid::from_raw(i32::try_from(sleeper.id()).expect("pid fits"));
        nix::sys::signal::kill(cli_pid, nix::sys::signal::Signal::SIGKILL).expect("kill colex-cli");
        let _ = sleeper.wait();
        wait_for("the exec'd sleep to be killed", || processes_with_argv(&["sleep", &seconds]).is_empty());
    }
}

#[test]
fn exec_ends_with_its_agent() {
    if !require_root("exec_ends_with_its_agent") {
        return;
    }
    let mut lab = Lab::start(1).expect("lab starts");
    lab.wait_for_hosts_up().expect("hosts up");
    let file = lab.write_file("shell.hcl", SHELL).expect("silo file");
    let up = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    let seconds = format!("{}", 70_000 + std::process::id() % 10_000);
    let mut sleeper = cli_command(&lab, &["exec", "shell", "--", "sleep", &seconds])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("colex-cli starts");
    wait_for("the exec'd sleep to start", || !processes_with_argv(&["sleep", &seconds]).is_empty());

    // The silo keeps running without its agent, but the exec'd command does not.
    lab.kill_agent(0).expect("kill the agent");
    wait_for("the exec'd sleep to be killed", || processes_with_argv(&["sleep", &seconds]).is_empty());
    let status = sleeper.wait().expect("colex-cli ends");
    assert_eq!(status.code(), Some(2), "a cluster error once the agent's session ended");
    let mut stderr = String::new();
    sleeper
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(stderr.contains("agent"), "the error names the agent's session: {stderr}");

    lab.restart_agent(0).expect("restart the agent");
    // The restarted agent adopts the silo, and its new session serves execs.
    let mut after = lab.cli(&["exec", "shell", "--", "true"]).expect("exec runs");
    let deadline = Instant::now() + WAIT_TIMEOUT;
    while !after.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = lab.cli(&["exec", "shell", "--", "true"]).expect("exec runs");
    }
    assert!(after.success(), "exec works again once the agent is back: {}", after.stderr);
}
