//! The lab's TLS set-up: the first controller bootstraps the cluster authority, the lab's
//! CLI enrolls as admin from the enrollment key file, and agents and joining controllers get
//! join tokens that the CLI creates. Everything lives in the lab folder:
//!
//! - `cli-config/`: the CLI's certificate files (`COLEX_CONFIG_DIR` of every lab CLI call);
//! - `agent.token` and `controller.token`: one token of each role, made on first use.
//!
//! With [`INSECURE_LAB_VAR`] set, the lab runs every binary with `--insecure` instead.
//! NOTE: colex-cli then prints a warning line on standard error at every call. The tests that
//! expect an empty standard error fail in such a lab, which is meant for benchmarks.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::{process, Lab, SETTLE_TIMEOUT};

/// Environment variable that makes labs run without TLS (`--insecure` everywhere), for
/// benchmarks that measure the cluster without the cost of TLS.
pub const INSECURE_LAB_VAR: &str = "COLEX_LAB_INSECURE";
/// Folder of the lab CLI's certificate files, inside the lab folder.
const CLI_CONFIG_DIR: &str = "cli-config";
/// User name the lab CLI enrolls as.
pub const LAB_USER: &str = "lab-admin";
/// Validity of the lab's join tokens: longer than any test.
const LAB_TOKEN_TTL: &str = "24h";
/// File name the controller writes the enrollment key to, in its data folder.
pub const ENROLLMENT_KEY_FILE: &str = "enrollment.key";

/// Returns whether labs run with `--insecure`.
pub fn insecure() -> bool {
    std::env::var_os(INSECURE_LAB_VAR).is_some_and(|value| !value.is_empty() && value != "0")
}

impl Lab {
    /// Returns the folder of the lab CLI's certificate files, for tests that run colex-cli
    /// themselves: pass it as `COLEX_CONFIG_DIR`.
    pub fn cli_config_dir(&self) -> PathBuf {
        self.dir.path().join(CLI_CONFIG_DIR)
    }

    /// Returns the environment a colex-cli call of the lab needs: its certificate folder, or
    /// `COLEX_INSECURE=1` in an insecure lab. For tests that run colex-cli themselves.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        if insecure() {
            return vec![("COLEX_INSECURE".to_owned(), "1".to_owned())];
        }
        vec![("COLEX_CONFIG_DIR".to_owned(), self.cli_config_dir().display().to_string())]
    }

    /// Returns the arguments every lab colex-cli call starts with, after `--serv`: its
    /// certificate folder, or `--insecure`.
    pub fn cli_tls_args(&self) -> Vec<String> {
        if insecure() {
            return vec!["--insecure".to_owned()];
        }
        vec!["--config-dir".to_owned(), self.cli_config_dir().display().to_string()]
    }

    /// Returns the extra arguments of controller `index`: `--insecure`, or for a joining
    /// controller without a certificate yet, `--token`.
    pub fn controller_tls_args(&self, index: usize) -> anyhow::Result<Vec<String>> {
        if insecure() {
            return Ok(vec!["--insecure".to_owned()]);
        }
        if index == 0 || self.controller_hosts[index].state_dir.join("controller.crt").exists() {
            return Ok(Vec::new());
        }
        Ok(vec!["--token".to_owned(), self.join_token("controller")?])
    }

    /// Returns the extra arguments of an agent: `--insecure`, or `--token` with the lab's agent
    /// token, which the agent uses only when it has no valid certificate.
    pub fn agent_tls_args(&self) -> anyhow::Result<Vec<String>> {
        if insecure() {
            return Ok(vec!["--insecure".to_owned()]);
        }
        Ok(vec!["--token".to_owned(), self.join_token("agent")?])
    }

    /// Enrolls the lab CLI as admin with the first controller's enrollment key, unless it
    /// is enrolled already. Retries until the controller serves, within [`SETTLE_TIMEOUT`].
    pub fn enroll_lab_cli(&self) -> anyhow::Result<()> {
        if insecure() || self.cli_config_dir().join("user.crt").exists() {
            return Ok(());
        }
        let key_file = self.controller_hosts[0].state_dir.join(ENROLLMENT_KEY_FILE);
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let output = if key_file.exists() {
                let key_path = key_file.display().to_string();
                Some(self.cli_at(0, &["enroll", "--name", LAB_USER, "--key-file", &key_path])?)
            } else {
                None
            };
            if output.as_ref().is_some_and(process::CommandOutput::success) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let reason = output.map_or_else(|| format!("{} was never written", key_file.display()), |output| output.stderr);
                bail!("the lab CLI could not enroll within {SETTLE_TIMEOUT:?}: {reason}\n{}", self.logs());
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Returns the lab's join token for `role` (agent or controller), creating it on first use.
    pub fn join_token(&self, role: &str) -> anyhow::Result<String> {
        let path = self.dir.path().join(format!("{role}.token"));
        if let Ok(token) = fs::read_to_string(&path) {
            return Ok(token.trim().to_owned());
        }
        let output = self.cli(&["tokens", "create", "--role", role, "--ttl", LAB_TOKEN_TTL])?;
        if !output.success() {
            bail!("cannot create a {role} join token: {}", output.stderr.trim());
        }
        let token = output.stdout.trim().to_owned();
        write_private(&path, &token)?;
        Ok(token)
    }
}

impl Lab {
    /// Returns a description of each secret of this lab that one of its log files contains.
    /// The secrets are those of its join tokens and enrollment key, and the bodies of its
    /// private key files. Every lab runs this check when it is dropped, so the logs of the
    /// whole cluster test suite are searched.
    pub fn leaked_secrets(&self) -> Vec<String> {
        let mut secrets: Vec<(String, String)> = Vec::new();
        let mut key_files = vec![self.cli_config_dir().join("user.key")];
        for role in ["agent", "controller"] {
            let path = self.dir.path().join(format!("{role}.token"));
            if let Ok(token) = fs::read_to_string(&path) {
                if let Some(secret) = token.trim().rsplit('.').next() {
                    secrets.push((format!("{role} token secret"), secret.to_owned()));
                }
            }
        }
        for host in &self.controller_hosts {
            if let Ok(key) = fs::read_to_string(host.state_dir.join(ENROLLMENT_KEY_FILE)) {
                if let Some(secret) = key.trim().rsplit('.').next() {
                    secrets.push(("enrollment key secret".to_owned(), secret.to_owned()));
                }
            }
            key_files.push(host.state_dir.join("controller.key"));
        }
        for host in &self.hosts {
            key_files.push(host.state_dir.join("agent.key"));
        }
        for path in key_files {
            if let Ok(pem) = fs::read_to_string(&path) {
                // The base64 body; the BEGIN and END lines are no secret.
                let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
                secrets.push((format!("private key {}", path.display()), body));
            }
        }
        // A secret this short would match by chance; none of the real ones is.
        secrets.retain(|(_, secret)| secret.len() >= MIN_SECRET_CHARS);

        let mut leaked = Vec::new();
        let Ok(entries) = fs::read_dir(self.dir.path()) else {
            return leaked;
        };
        for path in entries.flatten().map(|entry| entry.path()) {
            if path.extension().is_none_or(|extension| extension != "log") {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap_or_default();
            for (what, secret) in &secrets {
                if text.contains(secret.as_str()) {
                    leaked.push(format!("{} contains the {what}", path.display()));
                }
            }
        }
        leaked
    }
}

/// Shortest secret [`Lab::leaked_secrets`] searches for, in characters.
const MIN_SECRET_CHARS: usize = 16;

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::io::Write;

    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
