//! Root integration tests of the silo runtime: real namespaces, overlayfs, veths, iptables and
//! cgroups.
//!
//! Each test runs its runtime in a fresh network namespace made by a dedicated thread, so the
//! bridge, veths and iptables rules never touch the machine's own namespace and vanish with the
//! thread's namespace. Names carry a random part, so tests run in parallel like several agents
//! on one machine. The host cgroup dir and the state dir are removed by guards, also when a test
//! fails. Without root the tests are skipped, unless CI=true, where they fail.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colex_agent::runtime::{
    LogQuery, LogStreamKind, Runtime, RuntimeError, SiloExit, MAX_LOG_FILE_BYTES, STDOUT_LOG_FILE,
};
use colex_proto::{FileEntry, FileKind, Network};
use tokio::sync::mpsc;

mod common;
use common::command_spec as spec;
use common::*;

const SUBNET: &str = "10.69.1.0/24";
const EXIT_WAIT: Duration = Duration::from_secs(20);
const HTTP_WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn masquerade_rules() -> Vec<String> {
    run(IPTABLES_SAVE, &["-t", "nat"])
        .lines()
        .filter(|line| line.contains("MASQUERADE"))
        .map(str::to_string)
        .collect()
}

/// Fetches `url` with the host's busybox wget, retrying while the server starts. busybox 1.35's
/// wget crashes with `-T`, so each try is bounded by a tokio timeout instead.
async fn wget(url: &str) -> String {
    const TRY_TIMEOUT: Duration = Duration::from_secs(3);
    let deadline = Instant::now() + HTTP_WAIT;
    loop {
        let fetch = tokio::process::Command::new(BUSYBOX)
            .args(["wget", "-q", "-O", "-", url])
            .kill_on_drop(true)
            .output();
        let failure = match tokio::time::timeout(TRY_TIMEOUT, fetch).await {
            Ok(Ok(output)) if output.status.success() => {
                return String::from_utf8_lossy(&output.stdout).into_owned()
            }
            Ok(Ok(output)) => format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
            Ok(Err(err)) => format!("spawn failed: {err}"),
            Err(_) => format!("no answer within {TRY_TIMEOUT:?}"),
        };
        assert!(
            Instant::now() < deadline,
            "wget {url} kept failing: {failure}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that nothing of the silo is left: veth, NAT rule, cgroup, silo dir, mount, lease.
fn assert_silo_gone(host: &TestHost, silo_id: &str) {
    assert!(
        !link_exists(&format!("cx{silo_id}")),
        "veth of {silo_id} still exists"
    );
    let comment = format!("colex silo {silo_id}");
    let rules: Vec<String> = masquerade_rules()
        .into_iter()
        .filter(|rule| rule.contains(&comment))
        .collect();
    assert!(rules.is_empty(), "NAT rules of {silo_id} left: {rules:?}");
    let cgroup = host.cgroup_dir().join(silo_id);
    assert!(!cgroup.exists(), "cgroup {} still exists", cgroup.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    for base in [&host.cfg.state_dir, &host.cfg.run_dir] {
        let silos_dir = base.join("silos");
        let silo_dir = silos_dir.join(silo_id);
        assert!(
            !silo_dir.exists(),
            "silo dir {} still exists",
            silo_dir.display()
        );
        let silo_dir_text = silo_dir.to_string_lossy().into_owned();
        assert!(
            !mountinfo.contains(&silo_dir_text),
            "a mount below {silo_dir_text} is left"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&silos_dir)
            .expect("list silos dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(leftovers.is_empty(), "{} not empty: {leftovers:?}", silos_dir.display());
    }
    for lease in host.leases() {
        let owner = std::fs::read_to_string(host.leases_dir().join(&lease))
            .unwrap_or_default();
        assert_ne!(owner.trim(), silo_id, "lease {lease} of {silo_id} left");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn httpd_serves_placed_file() {
    if !has_root("httpd_serves_placed_file") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let mut web = spec("web", "/bin/httpd", &["-f", "-p", "80", "-h", "/www"]);
            web.files.push(FileEntry {
                silo_path: "/www/index.html".to_string(),
                content: b"hello from a silo\n".to_vec(),
                mode: 0o644,
                ..Default::default()
            });

            let interfaces = runtime
                .run_silo(&silo_id, 1, &web)
                .await
                .expect("run httpd silo");
            assert_eq!(interfaces.len(), 1);
            assert_eq!(interfaces[0].name, format!("cx{silo_id}"));
            assert_eq!(interfaces[0].address, "10.69.1.2");
            assert!(link_exists(&interfaces[0].name));

            let body = wget(&format!("http://{}/", interfaces[0].address)).await;
            assert_eq!(body, "hello from a silo\n");

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            assert_silo_gone(&host, &silo_id);

            runtime.shutdown().await.expect("shutdown");
            assert!(!link_exists(&host.cfg.bridge), "bridge left after shutdown");
            assert!(
                !host.cgroup_dir().exists(),
                "host cgroup left after shutdown"
            );
            let chains = run(IPTABLES_SAVE, &["-t", "nat"]);
            assert!(
                !chains.contains("colex-masq"),
                "iptables chain left: {chains}"
            );
        });
    });
}

/// Records and leases live in the run dir, here on tmpfs apart from the state dir, as with the
/// agent's defaults. The files of a silo without a record (a reboot emptied the run dir) are
/// removed when the runtime starts.
#[test]
fn run_dir_apart_from_state_dir() {
    if !has_root("run_dir_apart_from_state_dir") {
        return;
    }
    in_netns(|| {
        let mut host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        let run_dir = tempfile::Builder::new()
            .prefix("cx-run-")
            .tempdir_in("/dev/shm")
            .expect("create run dir on tmpfs");
        host.cfg.run_dir = run_dir.path().to_path_buf();
        let orphan_id = random_hex();
        let orphan_layer = host.silo_dir(&orphan_id).join("upper/etc");
        std::fs::create_dir_all(&orphan_layer).expect("create the files of a lost silo");
        std::fs::write(orphan_layer.join("hostname"), b"lost\n").expect("write a file of it");

        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            assert!(host.silo_dirs_gone(&orphan_id), "files of a silo without a record left");

            let silo_id = random_hex();
            runtime
                .run_silo(&silo_id, 1, &spec("apart", "/bin/sleep", &["1000"]))
                .await
                .expect("run silo");
            assert!(host.record_path(&silo_id).starts_with(run_dir.path()));
            assert!(host.record_path(&silo_id).is_file(), "record not in the run dir");
            assert!(!host.silo_dir(&silo_id).join("silo.json").exists(), "record in the state dir");
            assert!(host.silo_dir(&silo_id).join(STDOUT_LOG_FILE).is_file(), "log not in the state dir");
            assert_eq!(host.leases(), ["10.69.1.2"], "lease not in the run dir");

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            assert_silo_gone(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn silo_sees_hostname_proc_and_env() {
    if !has_root("silo_sees_hostname_proc_and_env") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            // A placed script, started through a placed symlink: the entries land with their
            // kinds and modes, and the program can be exec'd.
            let script = "#!/bin/sh\n\
                          echo args=$0 $1\n\
                          echo host=$(hostname)\n\
                          echo pid=$$\n\
                          echo init=$(cat /proc/1/comm)\n\
                          echo maxpid=$(ls /proc | grep '^[0-9]' | sort -n | tail -n 1)\n\
                          echo foo=$FOO\n\
                          echo path=$PATH\n\
                          ip -4 -o addr show eth0\n\
                          ip route\n\
                          cat /etc/hosts /etc/resolv.conf\n\
                          echo data=$(stat -c %a /data)\n\
                          echo err >&2\n";
            let mut silo = spec("inspector", "/usr/local/bin/inspect", &["first"]);
            silo.files.push(FileEntry {
                silo_path: "/opt/inspect.sh".to_string(),
                content: script.as_bytes().to_vec(),
                mode: 0o755,
                ..Default::default()
            });
            silo.files.push(FileEntry {
                silo_path: "/usr/local/bin/inspect".to_string(),
                kind: FileKind::Symlink.into(),
                link_target: "/opt/inspect.sh".to_string(),
                ..Default::default()
            });
            silo.files.push(FileEntry {
                silo_path: "/data".to_string(),
                kind: FileKind::Directory.into(),
                mode: 0o700,
                ..Default::default()
            });
            if let Some(binary) = silo.binary.as_mut() {
                binary.env = vec!["FOO=bar".to_string()];
            }
            silo.network = Some(Network {
                internet_access: false,
                nameservers: vec!["203.0.113.53".to_string()],
                hosts: [("db".to_string(), "10.69.0.5".to_string())]
                    .into_iter()
                    .collect(),
            });

            runtime
                .run_silo(&silo_id, 4, &silo)
                .await
                .expect("run silo");
            let exit = wait_exit(&mut exits, &silo_id, EXIT_WAIT).await;
            assert_eq!(exit.exit_code, 0);
            assert_eq!(exit.generation, 4);

            let dir = runtime.silo_dir(&silo_id);
            let stdout =
                std::fs::read_to_string(dir.join(STDOUT_LOG_FILE)).expect("read stdout.log");
            let stderr = std::fs::read_to_string(dir.join("stderr.log")).expect("read stderr.log");
            assert!(
                stdout.contains("args=/usr/local/bin/inspect first\n"),
                "{stdout}"
            );
            assert!(stdout.contains("data=700\n"), "{stdout}");
            assert!(stdout.contains("host=inspector\n"), "{stdout}");
            // PID 1 is the init, so the program is the first process it forked.
            assert!(stdout.contains("pid=2\n"), "{stdout}");
            assert!(stdout.contains("init=colex-init\n"), "{stdout}");
            // A fresh pid namespace: only the init, the shell and its pipeline are in /proc.
            let max_pid: u32 = stdout
                .lines()
                .find_map(|line| line.strip_prefix("maxpid="))
                .and_then(|pid| pid.parse().ok())
                .unwrap_or_else(|| panic!("no maxpid line in {stdout}"));
            assert!(
                max_pid < 10,
                "pid {max_pid} in a fresh pid namespace: {stdout}"
            );
            assert!(stdout.contains("foo=bar\n"), "{stdout}");
            assert!(
                stdout.contains(
                    "path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
                ),
                "{stdout}"
            );
            assert!(stdout.contains("inet 10.69.1.2/24"), "{stdout}");
            assert!(
                stdout.contains("default via 10.69.1.1 dev eth0"),
                "{stdout}"
            );
            assert!(stdout.contains("10.69.1.2\tinspector\n"), "{stdout}");
            assert!(stdout.contains("10.69.0.5\tdb\n"), "{stdout}");
            assert!(stdout.contains("nameserver 203.0.113.53\n"), "{stdout}");
            assert_eq!(stderr, "err\n");

            // An exited silo is removed like a running one.
            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            assert_silo_gone(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn exit_code_is_reported() {
    if !has_root("exit_code_is_reported") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            runtime
                .run_silo(&silo_id, 9, &spec("exiter", "/bin/sh", &["-c", "exit 3"]))
                .await
                .expect("run silo");
            let exit = wait_exit(&mut exits, &silo_id, EXIT_WAIT).await;
            assert_eq!(
                exit,
                SiloExit {
                    silo_id: silo_id.clone(),
                    generation: 9,
                    exit_code: 3,
                    reason: None,
                }
            );

            let killed_id = random_hex();
            runtime
                .run_silo(
                    &killed_id,
                    1,
                    &spec("killed", "/bin/sh", &["-c", "kill -9 $$"]),
                )
                .await
                .expect("run silo");
            assert_eq!(
                wait_exit(&mut exits, &killed_id, EXIT_WAIT).await.exit_code,
                128 + 9
            );

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            runtime
                .remove_silo(&killed_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            assert_silo_gone(&host, &silo_id);
            assert_silo_gone(&host, &killed_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn missing_binary_fails_cleanly() {
    if !has_root("missing_binary_fails_cleanly") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let mut silo = spec("broken", "/bin/nope", &[]);
            silo.network = Some(Network {
                internet_access: true,
                ..Default::default()
            });
            let err = runtime
                .run_silo(&silo_id, 1, &silo)
                .await
                .expect_err("missing binary must fail");
            let message = err.to_string();
            assert!(
                message.contains("binary /bin/nope not found in silo root"),
                "{message}"
            );
            assert!(matches!(err, RuntimeError::Launch { .. }), "{err:?}");
            assert_silo_gone(&host, &silo_id);
            assert!(host.leases().is_empty(), "leases left: {:?}", host.leases());
            assert!(masquerade_rules().is_empty(), "{:?}", masquerade_rules());
            // A failed start is not an exit of a program.
            assert!(exits.try_recv().is_err());

            // A directory in place of the binary is reported as such.
            let dir_id = random_hex();
            let err = runtime
                .run_silo(&dir_id, 1, &spec("broken", "/etc", &[]))
                .await
                .expect_err("a directory is no binary");
            assert!(
                err.to_string()
                    .contains("binary /etc in silo root is not a regular file"),
                "{err}"
            );
            assert_silo_gone(&host, &dir_id);

            // The failed ids can be used again.
            runtime
                .run_silo(&silo_id, 2, &spec("fixed", "/bin/sleep", &["1000"]))
                .await
                .expect("run after failure");
            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            assert_silo_gone(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn invalid_input_creates_nothing() {
    if !has_root("invalid_input_creates_nothing") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();

            let mut alpine = spec("web", "/bin/sh", &[]);
            alpine.base = "alpine".to_string();
            let err = runtime
                .run_silo(&silo_id, 1, &alpine)
                .await
                .expect_err("unsupported image");
            assert!(
                err.to_string()
                    .contains("image \"alpine\" is not available on this host"),
                "{err}"
            );

            let mut escape = spec("web", "/bin/sh", &[]);
            escape.files.push(FileEntry {
                silo_path: "/www/../../etc/passwd".to_string(),
                content: Vec::new(),
                mode: 0o644,
                ..Default::default()
            });
            let err = runtime
                .run_silo(&silo_id, 1, &escape)
                .await
                .expect_err("path with ..");
            assert!(err.to_string().contains("'..'"), "{err}");

            let err = runtime
                .run_silo("NOT-AN-ID", 1, &spec("web", "/bin/sh", &[]))
                .await
                .expect_err("invalid id");
            assert!(err.to_string().contains("invalid silo id"), "{err}");

            assert_silo_gone(&host, &silo_id);
            assert!(host.leases().is_empty());

            // Removing an unknown silo succeeds, twice.
            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove unknown silo");
            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove unknown silo again");
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn remove_leaves_nothing() {
    if !has_root("remove_leaves_nothing") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let mut sleeper = spec("sleeper", "/bin/sleep", &["1000"]);
            sleeper.network = Some(Network {
                internet_access: true,
                ..Default::default()
            });
            let silo_id = random_hex();
            let interfaces = runtime
                .run_silo(&silo_id, 1, &sleeper)
                .await
                .expect("run silo");

            let rules = masquerade_rules();
            assert_eq!(rules.len(), 1, "{rules:?}");
            assert!(
                rules[0].contains(&format!("-s {}/32", interfaces[0].address)),
                "{rules:?}"
            );
            assert!(
                rules[0].contains(&format!("! -o {}", host.cfg.bridge)),
                "{rules:?}"
            );
            assert!(
                rules[0].contains(&format!("colex silo {silo_id}")),
                "{rules:?}"
            );
            let forward =
                std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read ip_forward");
            assert_eq!(forward.trim(), "1");
            let cgroup = host.cgroup_dir().join(&silo_id);
            assert!(cgroup_populated(&cgroup), "silo cgroup has no process");

            // sleep dies of the forwarded SIGTERM, long before the kill timeout.
            let started = Instant::now();
            runtime
                .remove_silo(&silo_id, Duration::from_secs(30))
                .await
                .expect("remove silo");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "SIGTERM was not forwarded"
            );
            assert_silo_gone(&host, &silo_id);
            assert!(masquerade_rules().is_empty());
            assert!(host.leases().is_empty(), "leases left: {:?}", host.leases());

            // A program that ignores SIGTERM is killed through its cgroup after the timeout.
            let stubborn_id = random_hex();
            let stubborn = spec(
                "stubborn",
                "/bin/sh",
                &[
                    "-c",
                    "trap '' TERM; echo ready; while true; do sleep 1; done",
                ],
            );
            runtime
                .run_silo(&stubborn_id, 1, &stubborn)
                .await
                .expect("run silo");
            // The shell must have set its trap before the SIGTERM comes.
            let stdout_log = runtime.silo_dir(&stubborn_id).join(STDOUT_LOG_FILE);
            let ready = wait_for(Duration::from_secs(10), || {
                std::fs::read_to_string(&stdout_log).is_ok_and(|text| text.contains("ready"))
            });
            assert!(ready, "the stubborn silo never reported ready");
            let started = Instant::now();
            runtime
                .remove_silo(&stubborn_id, Duration::from_millis(500))
                .await
                .expect("remove stubborn silo");
            assert!(started.elapsed() >= Duration::from_millis(500));
            assert_silo_gone(&host, &stubborn_id);

            // Removal is not reported as an exit, and a second removal succeeds.
            assert!(exits.try_recv().is_err());
            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove again");
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

/// Sends one ping from the host to `address` and returns whether a reply came within
/// `timeout_seconds`.
async fn ping_once(address: &str, timeout_seconds: u32) -> bool {
    let timeout = timeout_seconds.to_string();
    let ping = tokio::process::Command::new(BUSYBOX)
        .args(["ping", "-c", "1", "-W", &timeout, address])
        .output()
        .await
        .expect("spawn ping");
    ping.status.success()
}

#[test]
fn addresses_are_distinct_and_taken_in_turn() {
    if !has_root("addresses_are_distinct_and_taken_in_turn") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let sleeper = spec("sleeper", "/bin/sleep", &["1000"]);
            let first = random_hex();
            let second = random_hex();
            let first_address = runtime
                .run_silo(&first, 1, &sleeper)
                .await
                .expect("run first")[0]
                .address
                .clone();
            let second_address = runtime
                .run_silo(&second, 1, &sleeper)
                .await
                .expect("run second")[0]
                .address
                .clone();
            assert_eq!(first_address, "10.69.1.2");
            assert_eq!(second_address, "10.69.1.3");

            // The host reaches the silos through the bridge, and so learns their MAC addresses.
            for address in [&first_address, &second_address] {
                assert!(ping_once(address, 5).await, "host cannot ping {address}");
            }

            let err = runtime
                .run_silo(&first, 2, &sleeper)
                .await
                .expect_err("duplicate id");
            assert!(err.to_string().contains("already exists"), "{err}");

            runtime
                .remove_silo(&first, KILL_TIMEOUT)
                .await
                .expect("remove first");
            let third = random_hex();
            let third_address = runtime
                .run_silo(&third, 1, &sleeper)
                .await
                .expect("run third")[0]
                .address
                .clone();
            assert_eq!(
                third_address, "10.69.1.4",
                "a new silo gets the next address, not the one just released"
            );
            // The host's ARP entry of the first silo's address would still name the first
            // silo's MAC address, so a silo that got that address at once stayed unreachable
            // for up to 45 s. The third silo replies at once.
            assert!(ping_once(&third_address, 2).await, "host cannot ping {third_address}");

            runtime.shutdown().await.expect("shutdown");
            assert_silo_gone(&host, &second);
            assert_silo_gone(&host, &third);
        });
    });
}

#[test]
fn start_adopts_live_silos_and_cleans_the_rest() {
    if !has_root("start_adopts_live_silos_and_cleans_the_rest") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        let silo_id = random_hex();
        let unrecorded_id = random_hex();

        // First agent: start two silos, then "crash": the tokio runtime is dropped without
        // shutdown, which leaves the helpers and the silos running.
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let mut sleeper = spec("sleeper", "/bin/sleep", &["1000"]);
            sleeper.network = Some(Network {
                internet_access: true,
                ..Default::default()
            });
            for id in [&silo_id, &unrecorded_id] {
                runtime.run_silo(id, 1, &sleeper).await.expect("run silo");
            }
        });
        for id in [&silo_id, &unrecorded_id] {
            let cgroup = host.cgroup_dir().join(id);
            assert!(
                cgroup_populated(&cgroup),
                "silo {id} should survive the agent crash"
            );
            assert!(link_exists(&format!("cx{id}")));
        }
        assert_eq!(masquerade_rules().len(), 2);
        let init_pid_before = record_field(&host, &silo_id, "init_pid");
        // A lost record: that silo cannot be adopted, and its objects are still found through
        // names derived from the id.
        std::fs::remove_file(host.record_path(&unrecorded_id))
            .expect("delete record");

        // Second agent: adopts the recorded silo as it runs and removes the other one.
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("restart runtime");
            assert_silo_gone_but_others(&host, &unrecorded_id);
            let adopted = runtime.silos();
            assert_eq!(adopted.len(), 1, "{adopted:?}");
            assert_eq!(adopted[0].silo_id, silo_id);
            assert_eq!(adopted[0].exit_code, None, "the adopted silo runs");
            assert_eq!(adopted[0].interfaces[0].address, "10.69.1.2");
            assert_eq!(record_field(&host, &silo_id, "init_pid"), init_pid_before);
            assert!(cgroup_populated(&host.cgroup_dir().join(&silo_id)));
            assert_eq!(masquerade_rules().len(), 1, "{:?}", masquerade_rules());
            assert!(link_exists(&format!("cx{silo_id}")));

            // The adopted silo is not a child of this process; its exit is still reported.
            let init_pid = i32::try_from(init_pid_before).expect("pid fits i32");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(init_pid),
                nix::sys::signal::Signal::SIGTERM,
            )
            .expect("signal the adopted silo");
            let exit = wait_exit(&mut exits, &silo_id, EXIT_WAIT).await;
            assert_eq!(exit.exit_code, 128 + 15);

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove adopted silo");
            assert_silo_gone(&host, &silo_id);
            assert!(host.leases().is_empty(), "leases left: {:?}", host.leases());
            assert!(masquerade_rules().is_empty(), "{:?}", masquerade_rules());
            assert!(link_exists(&host.cfg.bridge), "bridge must stay");
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

/// Reads a number from the record of silo `silo_id`.
fn record_field(host: &TestHost, silo_id: &str, field: &str) -> i64 {
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(host.record_path(silo_id)).expect("read record"),
    )
    .expect("parse record");
    record[field]
        .as_i64()
        .unwrap_or_else(|| panic!("{field} missing in {record}"))
}

/// Asserts that nothing of silo `silo_id` is left, while other silos may exist.
fn assert_silo_gone_but_others(host: &TestHost, silo_id: &str) {
    assert!(!link_exists(&format!("cx{silo_id}")), "veth of {silo_id} left");
    let comment = format!("colex silo {silo_id}");
    assert!(
        !masquerade_rules().iter().any(|rule| rule.contains(&comment)),
        "NAT rule of {silo_id} left"
    );
    assert!(!host.cgroup_dir().join(silo_id).exists(), "cgroup of {silo_id} left");
    assert!(host.silo_dirs_gone(silo_id), "dir of {silo_id} left");
}

#[test]
fn helper_death_ends_silo() {
    if !has_root("helper_death_ends_silo") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            runtime
                .run_silo(&silo_id, 1, &spec("orphan", "/bin/sleep", &["1000"]))
                .await
                .expect("run silo");

            let record: serde_json::Value = serde_json::from_slice(
                &std::fs::read(host.record_path(&silo_id)).expect("read record"),
            )
            .expect("parse record");
            let helper_pid = record["helper_pid"].as_i64().expect("helper pid recorded");
            assert!(record["init_pid"].as_i64().is_some(), "{record}");
            // The helper is a child of this test process, so its pid cannot have been reused.
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(helper_pid).expect("pid fits i32")),
                nix::sys::signal::Signal::SIGKILL,
            )
            .expect("kill helper");

            // The silo's PID 1 dies with its helper, and the exit is reported as a kill.
            let exit = wait_exit(&mut exits, &silo_id, EXIT_WAIT).await;
            assert_eq!(exit.exit_code, 128 + 9);
            let cgroup = host.cgroup_dir().join(&silo_id);
            assert!(
                wait_for(Duration::from_secs(5), || !cgroup_populated(&cgroup)),
                "silo processes outlived the helper"
            );

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            assert_silo_gone(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn two_agents_do_not_collide() {
    if !has_root("two_agents_do_not_collide") {
        return;
    }
    // Both agents use the same subnet, chain name and silo address, each in its own network
    // namespace, and run at the same time.
    let running = Arc::new(AtomicUsize::new(0));
    let agents: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|label| {
            let running = Arc::clone(&running);
            std::thread::spawn(move || {
                in_netns(move || {
                    let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
                    block_on(async {
                        let (runtime, _exits) = Runtime::start(host.cfg.clone())
                            .await
                            .expect("start runtime");
                        let silo_id = random_hex();
                        let mut web = spec("web", "/bin/httpd", &["-f", "-p", "80", "-h", "/www"]);
                        web.network = Some(Network {
                            internet_access: true,
                            ..Default::default()
                        });
                        web.files.push(FileEntry {
                            silo_path: "/www/index.html".to_string(),
                            content: format!("agent {label}\n").into_bytes(),
                            mode: 0o644,
                            ..Default::default()
                        });
                        let interfaces =
                            runtime.run_silo(&silo_id, 1, &web).await.expect("run silo");
                        assert_eq!(interfaces[0].address, "10.69.1.2");

                        running.fetch_add(1, Ordering::SeqCst);
                        // If the other agent failed, this one goes on alone after the wait.
                        let deadline = Instant::now() + Duration::from_secs(30);
                        while running.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }

                        let body = wget("http://10.69.1.2/").await;
                        assert_eq!(body, format!("agent {label}\n"));
                        assert_eq!(masquerade_rules().len(), 1, "{:?}", masquerade_rules());

                        runtime.shutdown().await.expect("shutdown");
                        assert_silo_gone(&host, &silo_id);
                    });
                });
            })
        })
        .collect();
    for agent in agents {
        if let Err(panic) = agent.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Builds a file entry of the given kind.
fn entry(kind: FileKind, silo_path: &str, content: &str, link_target: &str) -> FileEntry {
    FileEntry {
        silo_path: silo_path.to_owned(),
        content: content.as_bytes().to_vec(),
        mode: if kind == FileKind::Directory { 0o755 } else { 0o644 },
        kind: kind.into(),
        link_target: link_target.to_owned(),
        ..Default::default()
    }
}

#[test]
fn symlink_in_tree_cannot_redirect_writes() {
    if !has_root("symlink_in_tree_cannot_redirect_writes") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");

            // A write through the symlink would create this file on the host.
            let escape_name = format!("cx-escape-{}", random_hex());
            let host_target = Path::new("/etc").join(&escape_name);
            for link_target in ["/etc", "../../../../../../etc"] {
                let silo_id = random_hex();
                let mut silo = spec("evil", "/bin/sleep", &["1000"]);
                silo.files = vec![
                    entry(FileKind::Directory, "/app", "", ""),
                    entry(FileKind::Symlink, "/app/evil", "", link_target),
                    entry(FileKind::Regular, &format!("/app/evil/{escape_name}"), "owned\n", ""),
                ];

                let err = runtime
                    .run_silo(&silo_id, 1, &silo)
                    .await
                    .expect_err("a write through a symlink must fail");
                let message = err.to_string();
                assert!(message.contains("/app/evil"), "error names the path: {message}");
                assert!(
                    !host_target.exists(),
                    "{} was written on the host through a symlink to {link_target}",
                    host_target.display()
                );
                assert_silo_gone(&host, &silo_id);
            }

            // The same tree without the write through the link is fine, and the
            // symlink is placed as a symlink.
            let silo_id = random_hex();
            let mut silo = spec("links", "/bin/sh", &["-c", "readlink /app/evil; sleep 1000"]);
            silo.files = vec![
                entry(FileKind::Directory, "/app", "", ""),
                entry(FileKind::Symlink, "/app/evil", "", "/etc"),
            ];
            runtime.run_silo(&silo_id, 1, &silo).await.expect("tree with a symlink runs");
            let stdout = host.silo_dir(&silo_id).join(STDOUT_LOG_FILE);
            assert!(
                wait_for(Duration::from_secs(5), || std::fs::read_to_string(&stdout)
                    .is_ok_and(|text| text == "/etc\n")),
                "readlink output: {:?}",
                std::fs::read_to_string(&stdout)
            );
            runtime.remove_silo(&silo_id, KILL_TIMEOUT).await.expect("remove silo");
            assert_silo_gone(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

// ---------------------------------------------------------------------------------------------
// Supervisor: PID 1, stop semantics, logs and restarts
// ---------------------------------------------------------------------------------------------

/// Returns the one-letter states (`R`, `S`, `Z`, ...) of the processes in a cgroup.
fn process_states(cgroup: &Path) -> Vec<(u32, char)> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
    procs
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, after_name) = stat.rsplit_once(')')?;
            let state = after_name.trim_start().chars().next()?;
            Some((pid, state))
        })
        .collect()
}

#[test]
fn orphans_are_reaped_and_down_is_fast() {
    if !has_root("orphans_are_reaped_and_down_is_fast") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            // Each `( ... &)` subshell exits at once, so its sleep is orphaned to PID 1, which
            // must reap it when it exits half a second later.
            let orphans = spec(
                "orphans",
                "/bin/sh",
                &[
                    "-c",
                    "for i in $(seq 1 50); do (sleep 0.5 &); done; echo spawned; exec sleep 1000",
                ],
            );
            runtime.run_silo(&silo_id, 1, &orphans).await.expect("run silo");
            let stdout_log = runtime.silo_dir(&silo_id).join(STDOUT_LOG_FILE);
            assert!(
                wait_for(Duration::from_secs(10), || std::fs::read_to_string(&stdout_log)
                    .is_ok_and(|text| text.contains("spawned"))),
                "the silo never spawned its children"
            );
            let cgroup = host.cgroup_dir().join(&silo_id);
            // Once the orphans exited, only PID 1 and `sleep 1000` may be left, and no zombie.
            let settled = wait_for(Duration::from_secs(10), || process_states(&cgroup).len() == 2);
            let states = process_states(&cgroup);
            assert!(settled, "orphans not gone: {states:?}");
            assert!(
                states.iter().all(|(_, state)| *state != 'Z'),
                "zombies left: {states:?}"
            );

            let started = Instant::now();
            let report = runtime
                .remove_silo(&silo_id, Duration::from_secs(30))
                .await
                .expect("remove silo");
            let took = started.elapsed();
            assert!(took < Duration::from_secs(1), "down took {took:?}");
            assert_eq!(report.exit_code, Some(128 + 15));
            assert_eq!(report.message, "stopped by SIGTERM");
            assert_silo_gone(&host, &silo_id);
            assert!(exits.try_recv().is_err(), "a removal is no exit");
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn stubborn_silo_is_reported_killed() {
    if !has_root("stubborn_silo_is_reported_killed") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let stubborn = spec(
                "stubborn",
                "/bin/sh",
                &["-c", "trap '' TERM; echo ready; while true; do sleep 1; done"],
            );
            runtime.run_silo(&silo_id, 1, &stubborn).await.expect("run silo");
            let stdout_log = runtime.silo_dir(&silo_id).join(STDOUT_LOG_FILE);
            assert!(
                wait_for(Duration::from_secs(10), || std::fs::read_to_string(&stdout_log)
                    .is_ok_and(|text| text.contains("ready"))),
                "the silo never set its trap"
            );
            let report = runtime
                .remove_silo(&silo_id, Duration::from_millis(300))
                .await
                .expect("remove silo");
            assert_eq!(report.exit_code, Some(128 + 9));
            assert_eq!(report.message, "killed by SIGKILL after 300ms");
            assert_silo_gone(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn logs_rotate_at_the_cap() {
    if !has_root("logs_rotate_at_the_cap") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            const TOTAL_BYTES: u64 = 20_000_000;
            let writer = spec(
                "writer",
                "/bin/sh",
                &[
                    "-c",
                    "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 20000000; echo; echo last line; echo done >&2",
                ],
            );
            runtime.run_silo(&silo_id, 1, &writer).await.expect("run silo");
            assert_eq!(wait_exit(&mut exits, &silo_id, EXIT_WAIT).await.exit_code, 0);

            let dir = runtime.silo_dir(&silo_id);
            let current = std::fs::metadata(dir.join("stdout.log")).expect("stdout.log").len();
            let rotated = std::fs::metadata(dir.join("stdout.log.1")).expect("stdout.log.1").len();
            assert_eq!(rotated, MAX_LOG_FILE_BYTES, "the rotated file is full");
            assert!(current <= MAX_LOG_FILE_BYTES, "stdout.log has {current} bytes");
            let written = TOTAL_BYTES + "\nlast line\n".len() as u64;
            assert_eq!(
                current + rotated,
                written % MAX_LOG_FILE_BYTES + MAX_LOG_FILE_BYTES,
                "older output was dropped whole files at a time"
            );
            assert!(!dir.join("stdout.log.2").exists());

            let tail = collect_logs(&runtime, &silo_id, LogStreamKind::Stdout, Some(1)).await;
            assert_eq!(tail, b"last line\n");
            let errors = collect_logs(&runtime, &silo_id, LogStreamKind::Stderr, None).await;
            assert_eq!(errors, b"done\n");

            runtime.remove_silo(&silo_id, KILL_TIMEOUT).await.expect("remove");
            assert_silo_gone(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

/// Reads a silo's log through the runtime without following it.
async fn collect_logs(
    runtime: &Runtime,
    silo_id: &str,
    stream: LogStreamKind,
    tail_lines: Option<u32>,
) -> Vec<u8> {
    let (sink, mut chunks) = mpsc::channel(16);
    let query = LogQuery {
        tail_lines,
        follow: false,
    };
    let reader = async move {
        let result = runtime.stream_logs(silo_id, stream, query, &sink).await;
        // Closing the sink ends the collector.
        drop(sink);
        result
    };
    let collector = async {
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.recv().await {
            bytes.extend(chunk);
        }
        bytes
    };
    let (result, bytes) = tokio::join!(reader, collector);
    result.expect("stream logs");
    bytes
}

#[test]
fn restart_in_place_keeps_address_and_logs() {
    if !has_root("restart_in_place_keeps_address_and_logs") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let failing = spec("failing", "/bin/sh", &["-c", "echo run; exit 3"]);
            let first = runtime.run_silo(&silo_id, 4, &failing).await.expect("run silo");
            assert_eq!(wait_exit(&mut exits, &silo_id, EXIT_WAIT).await.exit_code, 3);

            let err = runtime
                .restart_silo(&silo_id, 5, &failing, 1)
                .await
                .expect_err("another generation is not restarted");
            assert!(err.to_string().contains("cannot be restarted"), "{err}");

            let second = runtime
                .restart_silo(&silo_id, 4, &failing, 1)
                .await
                .expect("restart silo");
            assert_eq!(second, first, "same veth and address");
            assert_eq!(wait_exit(&mut exits, &silo_id, EXIT_WAIT).await.exit_code, 3);
            let output = collect_logs(&runtime, &silo_id, LogStreamKind::Stdout, None).await;
            assert_eq!(output, b"run\nrun\n", "the log keeps every run");
            assert_eq!(record_field(&host, &silo_id, "restarts"), 1);
            let silos = runtime.silos();
            assert_eq!(silos[0].restarts, 1);
            assert_eq!(silos[0].exit_code, Some(3));

            runtime.remove_silo(&silo_id, KILL_TIMEOUT).await.expect("remove");
            assert_silo_gone(&host, &silo_id);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn program_runs_with_no_new_privs() {
    if !has_root("program_runs_with_no_new_privs") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-runtime-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let silo = spec("privileges", "/bin/sh", &["-c", "grep NoNewPrivs /proc/self/status"]);
            runtime
                .run_silo(&silo_id, 1, &silo)
                .await
                .expect("run silo");
            let exit = wait_exit(&mut exits, &silo_id, EXIT_WAIT).await;
            let stdout = std::fs::read_to_string(runtime.silo_dir(&silo_id).join(STDOUT_LOG_FILE))
                .expect("read stdout.log");
            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            runtime.shutdown().await.expect("shutdown");

            assert_eq!(exit.exit_code, 0, "grep failed, stdout: {stdout:?}");
            assert_eq!(stdout, "NoNewPrivs:\t1\n");
        });
    });
}
