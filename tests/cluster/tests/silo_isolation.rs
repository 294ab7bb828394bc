//! A silo cannot reach the services of the host it runs on. A TCP server in the agent host's
//! namespace, standing in for the agent's or a controller's port, answers a client in the lab's
//! controller host, but a silo on the agent host gets no connection to it, neither at the host's
//! lab address nor at its bridge address. The silo's DNS queries to the bridge address still get
//! replies.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use colex_cluster_tests::{require_root, Lab};

/// Port of the stand-in server in the agent host's namespace.
const SERVICE_PORT: &str = "7070";
/// Word the stand-in server sends to every client.
const GREETING: &str = "reached";
/// Time the silo gets to write its report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns a silo file whose program tries the stand-in server at the host's lab address and at
/// its gateway, prints each reply between brackets, resolves its own name, and sleeps.
fn prober_silo(host_address: &str) -> String {
    format!(
        r#"
Silo "prober" {{
  name = "prober"

  binary {{
    path = "/bin/sh"
    args = ["-c", "sleep 1; gw=$(ip route | awk '/default/ {{print $3}}'); for target in {host_address} $gw; do echo \"$target: [$(nc -w 2 $target {SERVICE_PORT} </dev/null 2>/dev/null)]\"; done; nslookup prober.silo >/dev/null 2>&1 && echo dns=ok; echo done; exec sleep 1000"]
  }}
}}
"#
    )
}

/// The stand-in server, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn silo_cannot_reach_host_services() {
    if !require_root("silo_cannot_reach_host_services") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let host = &lab.hosts[0];
    let host_address = host.address.to_string();

    // `-ll` keeps listening after each client, and `-e` sends each one the greeting.
    let server = Command::new("ip")
        .args(["netns", "exec", &host.netns, "busybox", "nc", "-ll", "-p", SERVICE_PORT, "-e", "echo", GREETING])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the stand-in server starts");
    let _server = Server(server);

    // The server replies to a client outside the silos, so a silo that gets nothing was blocked.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = lab
            .controller_host
            .run("busybox", &["nc", "-w", "2", &host_address, SERVICE_PORT])
            .expect("nc runs");
        if reply.stdout.contains(GREETING) {
            break;
        }
        assert!(Instant::now() < deadline, "the stand-in server never answered: {reply:?}");
        thread::sleep(Duration::from_millis(100));
    }

    let file = lab.write_file("prober.hcl", &prober_silo(&host_address)).expect("silo file");
    let up = lab.cli(&["up", file.to_str().expect("utf-8 path")]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());

    let deadline = Instant::now() + REPORT_TIMEOUT;
    let report = loop {
        let logs = lab.cli(&["logs", "prober"]).expect("logs runs");
        if logs.stdout.contains("done") {
            break logs.stdout;
        }
        assert!(Instant::now() < deadline, "no report from the silo: {logs:?}\n{}", lab.logs());
        thread::sleep(Duration::from_millis(200));
    };
    eprintln!("silo report:\n{report}");

    let lines: Vec<&str> = report.lines().filter(|line| line.contains(": [")).collect();
    assert_eq!(lines.len(), 2, "one line per target in:\n{report}");
    assert!(lines[0].starts_with(&format!("{host_address}: ")), "the lab address first: {report}");
    for line in lines {
        assert!(line.ends_with(": []"), "a silo reached a host service: {line}");
    }
    assert!(report.contains("dns=ok"), "DNS on the bridge address still answers: {report}");

    let down = lab.cli(&["down", "--name", "prober"]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
}
