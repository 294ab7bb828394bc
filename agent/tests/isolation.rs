//! Root integration tests of what a silo's program cannot do: the seccomp filter blocks
//! namespace changes and mounts even where no capability would, raw sockets need
//! `grants.raw_sockets`, and the silo can list none of the host's processes and write no kernel
//! setting.
//!
//! Each test runs its runtime in a fresh network namespace made by a dedicated thread, so the
//! bridge and veths vanish with the thread's namespace. Without root the tests are skipped,
//! unless CI=true, where they fail.

use std::collections::BTreeMap;

use colex_agent::runtime::Runtime;
use colex_proto::Grants;

mod common;
use common::*;

const SUBNET: &str = "10.69.11.0/24";

/// Each line runs one attempt and prints `NAME=STATUS`, where STATUS is the attempt's exit
/// status; the output of the attempts themselves goes to stderr.
const ATTEMPTS: &str = "\
    unshare -U true; echo unshare_user=$?; \
    unshare -n true; echo unshare_net=$?; \
    mkdir -p /mnt; mount -t tmpfs none /mnt; echo mount=$?; \
    ip link set lo down; echo link_down=$?; \
    ip addr add 10.69.11.250/32 dev eth0; echo add_address=$?; \
    insmod /bin/busybox; echo insmod=$?; \
    echo silo > /proc/sys/kernel/hostname; echo kernel_sysctl=$?; \
    echo 1 > /proc/sys/net/ipv4/ip_forward; echo net_sysctl=$?; \
    ping -c 1 -W 1 127.0.0.1 >&2; echo ping=$?; \
    echo processes=$(ls /proc | grep -c '^[0-9]'); \
    grep -E '^(Seccomp|Seccomp_filters|CapEff):' /proc/self/status | tr -d ' \\t' | tr ':' '='; \
    echo end; exec sleep 1000";

/// Runs the attempts in a silo with `grants` and returns each line's name and value.
fn attempts_in_silo(test: &'static str, grants: Option<Grants>) -> BTreeMap<String, String> {
    let mut results = BTreeMap::new();
    if !has_root(test) {
        return results;
    }
    let (sender, receiver) = std::sync::mpsc::channel();
    in_netns(move || {
        let host = TestHost::new("colex-isolation-test", "cxi", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone()).await.expect("start runtime");
            let silo_id = random_hex();
            let mut spec = shell_spec("walled", "busybox", ATTEMPTS);
            spec.grants = grants;
            runtime.run_silo(&silo_id, 1, &spec).await.expect("run silo");

            let stdout = wait_for_stdout(&host, &silo_id, "end\n");
            let stderr = std::fs::read_to_string(host.silo_dir(&silo_id).join("stderr.log")).unwrap_or_default();
            runtime.remove_silo(&silo_id, KILL_TIMEOUT).await.expect("remove silo");
            runtime.shutdown().await.expect("shutdown");
            let _ = sender.send((stdout, stderr));
        });
    });
    let (stdout, stderr) = receiver.recv().expect("the test thread reports the output");
    eprintln!("{test} stderr of the attempts:\n{stderr}");
    for line in stdout.lines() {
        if let Some((name, value)) = line.split_once('=') {
            results.insert(name.to_owned(), value.to_owned());
        }
    }
    results
}

fn value<'a>(results: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    results.get(name).map(String::as_str).unwrap_or_else(|| panic!("no {name} line in {results:?}"))
}

#[test]
fn default_silo_is_walled_in() {
    let results = attempts_in_silo("default_silo_is_walled_in", None);
    if results.is_empty() {
        return;
    }

    // A user namespace needs no capability, so only the seccomp filter stops this one.
    assert_ne!(value(&results, "unshare_user"), "0", "unshare -U succeeded: {results:?}");
    assert_ne!(value(&results, "unshare_net"), "0", "unshare -n succeeded: {results:?}");
    assert_ne!(value(&results, "mount"), "0", "mount succeeded: {results:?}");
    assert_ne!(value(&results, "link_down"), "0", "ip link set succeeded: {results:?}");
    assert_ne!(value(&results, "add_address"), "0", "ip addr add succeeded: {results:?}");
    assert_ne!(value(&results, "insmod"), "0", "insmod succeeded: {results:?}");
    assert_ne!(value(&results, "kernel_sysctl"), "0", "a kernel sysctl write succeeded: {results:?}");
    assert_ne!(value(&results, "net_sysctl"), "0", "a network sysctl write succeeded: {results:?}");
    assert_ne!(value(&results, "ping"), "0", "ping without raw_sockets succeeded: {results:?}");

    // sh, grep, ls and the subshell: a handful of the silo's own processes, none of the host's.
    let processes: usize = value(&results, "processes").parse().expect("a process count");
    assert!(processes <= 6, "the silo sees {processes} processes");

    assert_eq!(value(&results, "Seccomp"), "2", "filter mode");
    assert_eq!(value(&results, "Seccomp_filters"), "2", "filters installed");
    assert_eq!(value(&results, "CapEff"), "00000000a80405fb", "no CAP_NET_RAW");
}

#[test]
fn raw_sockets_grant_allows_ping() {
    let grants = Grants {
        raw_sockets: true,
        ..Default::default()
    };
    let results = attempts_in_silo("raw_sockets_grant_allows_ping", Some(grants));
    if results.is_empty() {
        return;
    }

    assert_eq!(value(&results, "ping"), "0", "ping with raw_sockets failed: {results:?}");
    assert_eq!(value(&results, "CapEff"), "00000000a80425fb", "CAP_NET_RAW kept");
    assert_ne!(value(&results, "unshare_user"), "0", "the grant leaves the filter in place: {results:?}");
}
