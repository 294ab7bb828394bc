//! Root tests of the runtime's cgroups on this machine's real hierarchies: CPU and memory
//! limits, OOM reports, statistics, and cleanup in every hierarchy.
//!
//! Each test runs its runtime on a thread in a fresh network namespace, as the runtime tests
//! do, with a random host name, so its cgroups are `colex-cxt<random>` in each hierarchy. A
//! guard kills and removes them when a test fails. Without root the tests are skipped, unless
//! CI=true, where they fail.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use colex_agent::runtime::Runtime;
use colex_proto::{Resources, SiloSpec};

mod common;
use common::*;

const SUBNET: &str = "10.69.7.0/24";
const GATEWAY: &str = "10.69.7.1";
const EXIT_WAIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn spec(name: &str, script: &str, resources: Option<Resources>) -> SiloSpec {
    SiloSpec {
        resources,
        ..shell_spec(name, "busybox", script)
    }
}

/// Returns the number of online CPUs, the base of `cpu_percent`.
fn online_cpus() -> u64 {
    // SAFETY: sysconf reads a system value and touches no memory of the caller.
    let count = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(count).expect("a positive CPU count")
}

/// Returns the content of cgroup file `file` in the first of `dirs` that has it.
fn read_cgroup_file(dirs: &[PathBuf], file: &str) -> Option<String> {
    dirs.iter()
        .find_map(|dir| std::fs::read_to_string(dir.join(file)).ok())
        .map(|text| text.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn memory_hog_is_reported_oom_killed() {
    if !has_root("memory_hog_is_reported_oom_killed") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-cgroup-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            // The shell doubles a variable until the kernel kills it at the limit.
            let hog = "x=0123456789abcdef; while true; do x=\"$x$x\"; done";
            let resources = Resources {
                cpu_percent: 0,
                memory_bytes: 32 * MIB,
            };
            runtime
                .run_silo(&silo_id, 4, &spec("hog", hog, Some(resources)))
                .await
                .expect("run silo");

            let exit = wait_exit(&mut exits, &silo_id, EXIT_WAIT).await;
            assert_eq!(exit.generation, 4);
            assert_eq!(exit.exit_code, 128 + 9, "the program was not SIGKILLed");
            assert_eq!(
                exit.reason.as_deref(),
                Some("OOM killed (memory limit 32 MiB)")
            );

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            assert!(host.silo_dirs(&silo_id).is_empty());
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn normal_exit_has_no_reason() {
    if !has_root("normal_exit_has_no_reason") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-cgroup-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let resources = Resources {
                cpu_percent: 0,
                memory_bytes: 32 * MIB,
            };
            runtime
                .run_silo(&silo_id, 1, &spec("quiet", "exit 3", Some(resources)))
                .await
                .expect("run silo");
            let exit = wait_exit(&mut exits, &silo_id, EXIT_WAIT).await;
            assert_eq!(exit.exit_code, 3);
            assert_eq!(exit.reason, None);
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn busy_loop_is_capped_at_cpu_percent() {
    if !has_root("busy_loop_is_capped_at_cpu_percent") {
        return;
    }
    const CPU_PERCENT: u32 = 25;
    const TOLERANCE: f64 = 0.05;
    const MEASURE_TIME: Duration = Duration::from_secs(3);
    in_netns(|| {
        let host = TestHost::new("colex-cgroup-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let resources = Resources {
                cpu_percent: CPU_PERCENT,
                memory_bytes: 0,
            };
            // Two loops, so that the cap binds even on a host whose share is above one core.
            let busy = "while :; do :; done & while :; do :; done";
            runtime
                .run_silo(&silo_id, 1, &spec("busy", busy, Some(resources)))
                .await
                .expect("run silo");

            // The kernel file contains the quota of the cap: 25% of all CPUs per 100 ms period.
            let dirs = host.silo_dirs(&silo_id);
            let expected_quota = u64::from(CPU_PERCENT) * online_cpus() * 100_000 / 100;
            match read_cgroup_file(&dirs, "cpu.max") {
                Some(cpu_max) => assert_eq!(cpu_max, format!("{expected_quota} 100000")),
                None => {
                    assert_eq!(
                        read_cgroup_file(&dirs, "cpu.cfs_quota_us"),
                        Some(expected_quota.to_string())
                    );
                    assert_eq!(
                        read_cgroup_file(&dirs, "cpu.cfs_period_us").as_deref(),
                        Some("100000")
                    );
                }
            }

            // Let the loops start before measuring.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = runtime.stats(&silo_id).await.expect("stats");
            let started = Instant::now();
            tokio::time::sleep(MEASURE_TIME).await;
            let after = runtime.stats(&silo_id).await.expect("stats");
            let wall = started.elapsed();

            let cpu_before = before.cpu_usec.expect("cpu time before");
            let cpu_after = after.cpu_usec.expect("cpu time after");
            let used_usec = cpu_after.saturating_sub(cpu_before) as f64;
            let share = used_usec / (wall.as_micros() as f64 * online_cpus() as f64);
            eprintln!(
                "busy silo used {used_usec} us of CPU in {wall:?} on {} CPUs: {:.1}% of the host",
                online_cpus(),
                share * 100.0
            );
            let target = f64::from(CPU_PERCENT) / 100.0;
            assert!(
                (share - target).abs() <= TOLERANCE,
                "share {share:.3} of the host is not {target} ± {TOLERANCE}"
            );

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn kernel_files_hold_limits_and_stats() {
    if !has_root("kernel_files_hold_limits_and_stats") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-cgroup-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let silo_id = random_hex();
            let resources = Resources {
                cpu_percent: 50,
                memory_bytes: 64 * MIB,
            };
            // A connection attempt to a closed port on the bridge sends and receives packets.
            // (busybox 1.35's `wget` crashes with `-T`, so `nc` makes the attempt.)
            let script = format!("nc -w 1 {GATEWAY} 9 </dev/null ; sleep 1000");
            runtime
                .run_silo(&silo_id, 1, &spec("limited", &script, Some(resources)))
                .await
                .expect("run silo");

            let dirs = host.silo_dirs(&silo_id);
            let memory_limit = read_cgroup_file(&dirs, "memory.max")
                .or_else(|| read_cgroup_file(&dirs, "memory.limit_in_bytes"));
            assert_eq!(memory_limit, Some((64 * MIB).to_string()));
            assert_eq!(
                read_cgroup_file(&dirs, "pids.max"),
                Some(colex_agent::runtime::DEFAULT_PIDS_LIMIT.to_string())
            );
            let swap_limit = read_cgroup_file(&dirs, "memory.swap.max")
                .or_else(|| read_cgroup_file(&dirs, "memory.memsw.limit_in_bytes"));
            if let Some(swap_limit) = swap_limit {
                // v2 takes swap alone (0). V1 takes memory plus swap (the memory limit).
                assert!(
                    swap_limit == "0" || swap_limit == (64 * MIB).to_string(),
                    "swap is not capped: {swap_limit}"
                );
            }

            let mut stats = runtime.stats(&silo_id).await.expect("stats");
            let deadline = Instant::now() + Duration::from_secs(5);
            while stats.processes < 2 || stats.tx_bytes.unwrap_or(0) == 0 {
                assert!(Instant::now() < deadline, "silo never got busy: {stats:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                stats = runtime.stats(&silo_id).await.expect("stats");
            }
            eprintln!("stats of a sleeping silo: {stats:?}");
            // PID 1 and sleep. Wget has exited or is about to.
            assert!((2..=3).contains(&stats.processes), "{stats:?}");
            assert!(stats.cpu_usec.is_some_and(|usec| usec > 0), "{stats:?}");
            assert!(
                stats
                    .memory_bytes
                    .is_some_and(|bytes| bytes > 0 && bytes < 64 * MIB),
                "{stats:?}"
            );
            assert!(stats.rx_bytes.is_some_and(|bytes| bytes > 0), "{stats:?}");

            runtime
                .remove_silo(&silo_id, KILL_TIMEOUT)
                .await
                .expect("remove silo");
            let err = runtime
                .stats(&silo_id)
                .await
                .expect_err("no stats of a removed silo");
            assert_eq!(
                err.to_string(),
                format!("silo {silo_id} not found on this host")
            );
            runtime.shutdown().await.expect("shutdown");
        });
    });
}

#[test]
fn removal_leaves_no_cgroup_dir() {
    if !has_root("removal_leaves_no_cgroup_dir") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-cgroup-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, mut exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let host_dirs = host.cgroup_dirs();
            assert_eq!(
                host_dirs.len(),
                runtime.host_cgroup_dirs().len(),
                "host dirs {host_dirs:?} are not the runtime's {:?}",
                runtime.host_cgroup_dirs()
            );
            assert!(host_dirs.contains(&runtime.host_cgroup_dir()));

            let resources = Some(Resources {
                cpu_percent: 50,
                memory_bytes: 64 * MIB,
            });
            let running = random_hex();
            let exited = random_hex();
            let stubborn = random_hex();
            let forker = random_hex();
            runtime
                .run_silo(&running, 1, &spec("running", "sleep 1000", resources))
                .await
                .expect("run silo");
            runtime
                .run_silo(&exited, 1, &spec("exited", "exit 0", resources))
                .await
                .expect("run silo");
            // Ignores SIGTERM, so only the cgroup kill ends it.
            runtime
                .run_silo(
                    &stubborn,
                    1,
                    &spec("stubborn", "trap '' TERM; sleep 1000 & wait", resources),
                )
                .await
                .expect("run silo");
            // Orphans children that keep forking.
            let forks = "for i in 1 2 3 4 5; do (while :; do sleep 1; done) & done; sleep 1000";
            runtime
                .run_silo(&forker, 1, &spec("forker", forks, resources))
                .await
                .expect("run silo");
            wait_exit(&mut exits, &exited, EXIT_WAIT).await;
            for silo_id in [&running, &exited, &stubborn, &forker] {
                assert_eq!(
                    host.silo_dirs(silo_id).len(),
                    host_dirs.len(),
                    "silo {silo_id} lacks a dir in some hierarchy"
                );
            }

            for silo_id in [&running, &exited, &stubborn, &forker] {
                runtime
                    .remove_silo(silo_id, Duration::from_millis(500))
                    .await
                    .expect("remove silo");
                let left = host.silo_dirs(silo_id);
                assert!(left.is_empty(), "cgroup dirs of {silo_id} left: {left:?}");
            }

            runtime.shutdown().await.expect("shutdown");
            let left = host.cgroup_dirs();
            assert!(left.is_empty(), "host cgroup dirs left: {left:?}");
        });
    });
}

/// Age of the spare PID 1 that `start_time_is_the_programs` gives its second silo.
const SPARE_AGE: Duration = Duration::from_secs(2);

/// A silo started from a spare reports when its program started, not when the spare's PID 1
/// was cloned: the first start refills the spares, and the second silo gets one 2 s old.
#[test]
fn start_time_is_the_programs() {
    if !has_root("start_time_is_the_programs") {
        return;
    }
    in_netns(|| {
        let host = TestHost::new("colex-cgroup-test", "cxt", SUBNET);
        block_on(async {
            let (runtime, _exits) = Runtime::start(host.cfg.clone())
                .await
                .expect("start runtime");
            let first = random_hex();
            runtime
                .run_silo(&first, 1, &spec("first", "sleep 1000", None))
                .await
                .expect("run the first silo");

            tokio::time::sleep(SPARE_AGE).await;
            let second = random_hex();
            let run_at = SystemTime::now();
            runtime
                .run_silo(&second, 1, &spec("second", "sleep 1000", None))
                .await
                .expect("run the second silo");
            let stats = runtime.stats(&second).await.expect("stats");
            let started_at = stats.started_at.expect("a running silo has a start time");
            assert!(started_at >= run_at, "started at {started_at:?}, run at {run_at:?}");

            for silo_id in [&first, &second] {
                runtime
                    .remove_silo(silo_id, KILL_TIMEOUT)
                    .await
                    .expect("remove silo");
            }
            runtime.shutdown().await.expect("shutdown");
        });
    });
}
