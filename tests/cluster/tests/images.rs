//! Image- and bind-aware placement in a real cluster. An agent started with `--config` offers a
//! tarball image and a bind source and reports them. `up` places silos only where what they
//! need is, and otherwise fails naming what each live host has.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use colex_cluster_tests::{require_root, Daemon, Lab};

/// Applets linked in the test image.
const APPLETS: &[&str] = &["sh", "cat", "sleep"];
/// How long the silo gets to write its first output line.
const OUTPUT_WAIT: Duration = Duration::from_secs(10);

/// A silo on the tarball image that prints a file of its read-only bind and keeps running.
const TINY_SILO: &str = r#"
Silo "t" {
  name = "tiny-reader"
  base = "img://tiny"

  binary {
    path = "/bin/sh"
    args = ["-c", "cat /data/hello.txt; exec sleep 1000"]
  }

  bind "host data" {
    id   = "data"
    path = "/data"
  }
}
"#;

const ALPINE_SILO: &str = r#"
Silo "a" {
  name = "needs-alpine"
  base = "img://alpine"

  binary {
    path = "/bin/sh"
  }
}
"#;

const UNOFFERED_BIND_SILO: &str = r#"
Silo "b" {
  name = "needs-secrets"

  binary {
    path = "/bin/sh"
  }

  bind "secrets" {
    id   = "secrets"
    path = "/secrets"
  }
}
"#;

/// Builds a minimal root file system around the host's static busybox and packs it with GNU tar
/// and gzip, as `docker export | gzip` would.
fn write_tarball(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("tiny-root");
    for sub in ["bin", "dev", "etc", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).with_context(|| format!("cannot create {sub}"))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("cannot copy busybox")?;
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet)).context("cannot link applet")?;
    }
    let tarball = dir.join("tiny.tar.gz");
    let output = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&root)
        .arg(".")
        .output()
        .context("cannot run tar")?;
    if !output.status.success() {
        bail!("tar failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(tarball)
}

/// Returns the cell of `column` in the row of silo `name` of a `list` table.
fn list_cell(listing: &str, name: &str, column: &str) -> Option<String> {
    let mut headers: Vec<String> = Vec::new();
    for line in listing
        .lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("|-"))
    {
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|cell| cell.trim().to_owned())
            .collect();
        if headers.is_empty() {
            headers = cells;
            continue;
        }
        let row: Vec<(String, String)> = headers.iter().cloned().zip(cells).collect();
        if row
            .iter()
            .any(|(header, cell)| header == "NAME" && cell == name)
        {
            return row
                .into_iter()
                .find(|(header, _)| header == column)
                .map(|(_, cell)| cell);
        }
    }
    None
}

#[test]
fn placement_follows_images_and_binds() {
    if !require_root("placement_follows_images_and_binds") {
        return;
    }
    let mut lab = Lab::start(2).expect("lab starts");
    let tarball = write_tarball(lab.dir.path()).expect("tarball");
    let data = lab.dir.path().join("data");
    std::fs::create_dir(&data).expect("create bind source");
    std::fs::write(data.join("hello.txt"), "hello from the host\n").expect("write bind file");
    let config = lab
        .write_file(
            "agent-h1.hcl",
            &format!(
                "labels = {{ zone = \"a\" }}\n\nimage \"tiny\" {{\n  path = {tarball:?}\n}}\n\nbind \"data\" {{\n  path = {data:?}\n}}\n"
            ),
        )
        .expect("agent config");

    // Host 1's agent is replaced by one that reads the configuration file.
    lab.kill_agent(0).expect("kill agent 1");
    let host1 = lab.hosts[0].clone();
    let host2 = lab.hosts[1].clone();
    let controller = lab.controller_address();
    let state_dir = host1.state_dir.display().to_string();
    let config_text = config.display().to_string();
    let _configured_agent = Daemon::spawn_in_netns(
        &host1.netns,
        &lab.bins.join("colex-agent"),
        &[
            "--join",
            &controller,
            "--name",
            &host1.name,
            "--state-dir",
            &state_dir,
            "--bridge",
            &host1.bridge,
            "--config",
            &config_text,
        ],
        &lab.dir.path().join("agent-h1-configured.log"),
    )
    .expect("start the configured agent");

    // `up` fails until the configured agent has registered with its image; nothing else may fail.
    let tiny_file = lab.write_file("tiny.hcl", TINY_SILO).expect("silo file");
    let tiny_file = tiny_file.to_str().expect("utf-8 path").to_owned();
    lab.wait_until("the configured agent offers image tiny", |lab| {
        let up = lab.cli(&["up", &tiny_file])?;
        if up.success() {
            return Ok(true);
        }
        if up.stderr.contains("no live host") {
            return Ok(false);
        }
        bail!("up failed: {}", up.stderr)
    })
    .expect("tiny-reader placed");

    let listed = lab.cli(&["list"]).expect("list runs");
    assert_eq!(
        list_cell(&listed.stdout, "tiny-reader", "HOST").as_deref(),
        Some(host1.name.as_str()),
        "only host 1 has the image and the bind:\n{}",
        listed.stdout
    );
    let silo_id = list_cell(&listed.stdout, "tiny-reader", "ID").expect("tiny-reader has an id");
    let stdout_log = host1
        .state_dir
        .join("silos")
        .join(&silo_id)
        .join("stdout.log");
    let deadline = Instant::now() + OUTPUT_WAIT;
    let mut output = String::new();
    while Instant::now() < deadline {
        output = std::fs::read_to_string(&stdout_log).unwrap_or_default();
        if !output.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        output,
        "hello from the host\n",
        "the silo reads its bind\n{}",
        lab.logs()
    );

    let alpine_file = lab
        .write_file("alpine.hcl", ALPINE_SILO)
        .expect("silo file");
    let up = lab
        .cli(&["up", alpine_file.to_str().expect("utf-8 path")])
        .expect("up runs");
    assert!(
        !up.success(),
        "a silo on a missing image was placed:\n{}",
        up.stdout
    );
    let expected = format!(
        "silo needs-alpine is PENDING and starts once a host fits: no live host has image alpine: {} has busybox, tiny; {} has busybox",
        host1.name, host2.name
    );
    assert!(
        up.stderr.contains(&expected),
        "expected {expected:?} in:\n{}",
        up.stderr
    );

    let secrets_file = lab
        .write_file("secrets.hcl", UNOFFERED_BIND_SILO)
        .expect("silo file");
    let up = lab
        .cli(&["up", secrets_file.to_str().expect("utf-8 path")])
        .expect("up runs");
    assert!(
        !up.success(),
        "a silo with an unoffered bind id was placed:\n{}",
        up.stdout
    );
    let expected = format!(
        "silo needs-secrets is PENDING and starts once a host fits: no live host offers bind id secrets: {} offers data; {} offers none",
        host1.name, host2.name
    );
    assert!(
        up.stderr.contains(&expected),
        "expected {expected:?} in:\n{}",
        up.stderr
    );

    // A silo that fits nowhere is kept, pending, until a host that fits joins.
    let listed = lab.cli(&["list"]).expect("list runs");
    for name in ["needs-alpine", "needs-secrets"] {
        assert_eq!(
            list_cell(&listed.stdout, name, "STATE").as_deref(),
            Some("PENDING"),
            "{}",
            listed.stdout
        );
    }

    let down = lab.cli(&["down", &tiny_file]).expect("down runs");
    assert!(
        down.success(),
        "down failed: {}\n{}",
        down.stderr,
        lab.logs()
    );
    assert!(
        down.stdout.contains("REMOVED"),
        "down output:\n{}",
        down.stdout
    );
}
