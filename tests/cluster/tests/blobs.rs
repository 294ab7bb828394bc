//! File contents stored once per SHA-256: 20 silos on 2 hosts share a 100 KiB file and each has
//! a small file of its own. The silos see the right bytes, and the controller and each host's
//! cache store each content once. A restarted agent keeps starting silos, and a file above the
//! limit is rejected with one line. After `down`, the controller and the caches are empty.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use colex_cluster_tests::table::parse_table;
use colex_cluster_tests::{require_root, Host, Lab};
use rand::RngCore;

/// Address the lab controller serves metrics on, inside its network namespace.
const METRICS_LISTEN: &str = "127.0.0.1:9470";
const METRICS_URL: &str = "http://127.0.0.1:9470/metrics";
/// Silos that share the large file.
const SILO_COUNT: usize = 20;
/// Size of the shared file.
const SHARED_FILE_BYTES: usize = 100 * 1024;
/// Size of a file above the controller's per-file limit of 256 KiB.
const TOO_BIG_FILE_BYTES: usize = 300 * 1024;
/// Folder of the file content cache in an agent's state dir.
const CACHE_DIR_NAME: &str = "file-contents";

/// Returns the text of silo `index`: it sleeps, and has the shared file and a file of its own.
fn silo_block(index: usize) -> String {
    format!(
        r#"
Silo "s{index}" {{
  name = "share-{index:02}"

  binary {{
    path = "/bin/sleep"
    args = ["1000000"]
  }}

  file "shared" {{
    path      = "shared.bin"
    silo_path = "/data/shared.bin"
  }}

  file "unique" {{
    path      = "unique-{index:02}.txt"
    silo_path = "/data/unique.txt"
  }}
}}
"#
    )
}

/// A silo whose one file is above the controller's per-file limit.
const TOO_BIG: &str = r#"
Silo "s" {
  name = "too-big"

  binary {
    path = "/bin/sleep"
    args = ["1000000"]
  }

  file "data" {
    path      = "big.bin"
    silo_path = "/big.bin"
  }
}
"#;

/// Returns the text of the unique file of silo `index`.
fn unique_text(index: usize) -> String {
    format!("silo {index:02} has its own file\n")
}

/// Returns the SHA-256 of `path` in hex, from coreutils' `sha256sum`.
fn sha256_of(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().expect("sha256sum runs");
    assert!(output.status.success(), "sha256sum {}: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum prints a hash")
        .to_owned()
}

/// Fetches the controller's metrics and returns the value of each sample by its series.
fn scrape(host: &Host) -> BTreeMap<String, f64> {
    let output = host
        .run("curl", &["--silent", "--show-error", "--max-time", "5", METRICS_URL])
        .expect("curl runs");
    assert!(output.success(), "scrape failed: {}", output.stderr);
    output
        .stdout
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Returns (number, bytes) of the file contents the controller reports.
fn stored_contents(lab: &Lab) -> (f64, f64) {
    let samples = scrape(&lab.controller_host);
    let count = *samples.get("colex_file_contents").expect("colex_file_contents is exported");
    let bytes = *samples.get("colex_file_content_bytes").expect("colex_file_content_bytes is exported");
    (count, bytes)
}

/// Returns the names of the files in host `host`'s content cache; none when it does not exist.
fn cached(host: &Host) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(host.state_dir.join(CACHE_DIR_NAME)) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Returns the host of every listed silo instance by name.
fn hosts_by_silo(lab: &Lab) -> BTreeMap<String, String> {
    let output = lab.cli(&["list"]).expect("list runs");
    assert!(output.success(), "list failed: {}", output.stderr);
    parse_table(&output.stdout)
        .into_iter()
        .filter(|row| row["STATE"] == "UP")
        .map(|row| (row["NAME"].clone(), row["HOST"].clone()))
        .collect()
}

#[test]
fn shared_file_stored_once() {
    if !require_root("shared_file_stored_once") {
        return;
    }
    // The lab starts the controller with the environment of this test; this file has one test,
    // so nothing else reads the environment meanwhile.
    std::env::set_var("COLEX_METRICS_LISTEN", METRICS_LISTEN);
    let mut lab = Lab::start(2).expect("lab starts");

    let mut shared = vec![0u8; SHARED_FILE_BYTES];
    rand::rng().fill_bytes(&mut shared);
    let shared_path = lab.dir.path().join("shared.bin");
    std::fs::write(&shared_path, &shared).expect("write the shared file");
    let shared_sha256 = sha256_of(&shared_path);
    let mut unique_sha256 = Vec::new();
    let mut silos = String::new();
    for index in 0..SILO_COUNT {
        let path = lab.write_file(&format!("unique-{index:02}.txt"), &unique_text(index)).expect("write");
        unique_sha256.push(sha256_of(&path));
        silos.push_str(&silo_block(index));
    }
    let silo_file = lab.write_file("shared.hcl", &silos).expect("write the silo file");
    let silo_file = silo_file.display().to_string();

    let up = lab.cli(&["up", &silo_file]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    let placed = hosts_by_silo(&lab);
    assert_eq!(placed.len(), SILO_COUNT, "every silo is UP: {placed:?}\n{}", up.stdout);

    // The silos see the shared bytes and their own file.
    for (index, unique) in unique_sha256.iter().enumerate() {
        let name = format!("share-{index:02}");
        let sums = lab
            .cli(&["exec", &name, "--", "sha256sum", "/data/shared.bin", "/data/unique.txt"])
            .expect("exec runs");
        assert!(sums.success(), "exec in {name} failed: {}", sums.stderr);
        let hashes: Vec<&str> = sums.stdout.lines().filter_map(|line| line.split_whitespace().next()).collect();
        assert_eq!(hashes, vec![shared_sha256.as_str(), unique.as_str()], "{name}: {}", sums.stdout);
    }

    // The controller stores the shared content once, beside the 20 small ones.
    let unique_bytes: usize = (0..SILO_COUNT).map(|index| unique_text(index).len()).sum();
    let (count, bytes) = stored_contents(&lab);
    assert_eq!(count, (SILO_COUNT + 1) as f64, "distinct contents on the controller");
    assert_eq!(bytes, (SHARED_FILE_BYTES + unique_bytes) as f64, "bytes of the distinct contents");

    // Each host caches the shared content once and the unique contents of its own silos.
    for host in &lab.hosts {
        let mut expected: BTreeSet<String> = placed
            .iter()
            .filter(|(_, placed_on)| **placed_on == host.name)
            .map(|(name, _)| {
                let index: usize = name.trim_start_matches("share-").parse().expect("silo number");
                unique_sha256[index].clone()
            })
            .collect();
        if !expected.is_empty() {
            expected.insert(shared_sha256.clone());
        }
        assert_eq!(cached(host), expected, "cache of {}", host.name);
    }

    // A file above the per-file limit is rejected with one line that names the size and limit.
    let big = vec![7u8; TOO_BIG_FILE_BYTES];
    std::fs::write(lab.dir.path().join("big.bin"), &big).expect("write the big file");
    let too_big = lab.write_file("too-big.hcl", TOO_BIG).expect("write");
    let rejected = lab.cli(&["up", &too_big.display().to_string()]).expect("up runs");
    assert!(!rejected.success(), "a file above the limit must be rejected: {}", rejected.stdout);
    let message = rejected.stderr.trim();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains("silo too-big: file /big.bin is 307200 bytes, above the controller's limit of 262144 bytes per file"),
        "{message}"
    );
    assert_eq!(stored_contents(&lab).0, (SILO_COUNT + 1) as f64, "the rejected content is not stored");

    // A restarted agent keeps its cache, and starts a new silo that uses the shared content and
    // a content it must fetch through its new session.
    let late_path = lab.write_file("late.txt", "fetched after the agent restart\n").expect("write");
    let late_sha256 = sha256_of(&late_path);
    lab.kill_agent(0).expect("kill the first agent");
    lab.restart_agent(0).expect("restart the first agent");
    lab.wait_for_hosts_up().expect("the host is back");
    let first_host = lab.hosts[0].name.clone();
    let late = format!(
        r#"
Silo "late" {{
  name = "share-late"

  binary {{
    path = "/bin/sleep"
    args = ["1000000"]
  }}

  file "shared" {{
    path      = "shared.bin"
    silo_path = "/data/shared.bin"
  }}

  file "late" {{
    path      = "late.txt"
    silo_path = "/data/late.txt"
  }}

  placement {{
    hosts = ["{first_host}"]
  }}
}}
"#
    );
    let late_file = lab.write_file("late.hcl", &late).expect("write");
    let up_late = lab.cli(&["up", &late_file.display().to_string()]).expect("up runs");
    assert!(up_late.success(), "up after the agent restart failed: {}\n{}", up_late.stderr, lab.logs());
    let sums = lab
        .cli(&["exec", "share-late", "--", "sha256sum", "/data/shared.bin", "/data/late.txt"])
        .expect("exec runs");
    let hashes: Vec<&str> = sums.stdout.lines().filter_map(|line| line.split_whitespace().next()).collect();
    assert_eq!(hashes, vec![shared_sha256.as_str(), late_sha256.as_str()], "share-late: {}", sums.stderr);
    assert_eq!(hosts_by_silo(&lab).len(), SILO_COUNT + 1, "the silos of the restarted agent stay UP");
    let cache = cached(&lab.hosts[0]);
    assert!(cache.contains(&shared_sha256), "the restarted agent keeps the shared content: {cache:?}");
    assert!(cache.contains(&late_sha256), "the restarted agent caches the fetched content: {cache:?}");

    // After `down` of every silo, the controller and the caches hold no content.
    for file in [&silo_file, &late_file.display().to_string()] {
        let down = lab.cli(&["down", file]).expect("down runs");
        assert!(down.success(), "down failed: {}", down.stderr);
    }
    lab.wait_until("every silo is removed", |lab| {
        let output = lab.cli(&["list"])?;
        Ok(output.success() && parse_table(&output.stdout).is_empty())
    })
    .expect("silos removed");
    lab.wait_until("the controller stores no file content", |lab| Ok(stored_contents(lab) == (0.0, 0.0)))
        .expect("contents removed");
    lab.wait_until("the hosts cache no file content", |lab| Ok(lab.hosts.iter().all(|host| cached(host).is_empty())))
        .unwrap_or_else(|error| {
            let mut caches = String::new();
            for host in &lab.hosts {
                let _ = writeln!(caches, "{}: {:?}", host.name, cached(host));
            }
            panic!("{error}\n{caches}");
        });
}
