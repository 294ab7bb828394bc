//! Mutual TLS, roles, join tokens and revocation against a lab cluster, which runs with TLS by
//! default: each way a client, agent or controller can be turned away must be rejected with a
//! message that names the cause, and no log may contain a key, token or enrollment key.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use colex_cluster_tests::process::{run_in_netns, CommandOutput, CLI_TIMEOUT};
use colex_cluster_tests::tls_lab::{insecure, ENROLLMENT_KEY_FILE};
use colex_cluster_tests::{require_root, Lab};

/// Stays up, so `up --detach` has something to store.
const SLEEPER: &str = r#"
Silo "s" {
  name = "sleeper"

  binary {
    path = "/bin/sh"
    args = ["-c", "exec sleep 3600"]
  }
}
"#;

/// Returns a lab with one controller and no agents, or `None` when the test must be skipped.
fn controller_lab(test: &str) -> Option<Lab> {
    if !require_root(test) {
        return None;
    }
    if insecure() {
        eprintln!("skipping {test}: the labs run with --insecure");
        return None;
    }
    Some(Lab::start(0).expect("lab starts"))
}

/// Runs colex-cli in the controller's namespace with the certificate folder `config_dir`.
fn cli_as(lab: &Lab, config_dir: &Path, args: &[&str]) -> CommandOutput {
    let serv = lab.controller_address();
    let dir = config_dir.display().to_string();
    let mut full = vec!["--serv", serv.as_str(), "--config-dir", dir.as_str()];
    full.extend_from_slice(args);
    let cli = lab.bins.join("colex-cli").display().to_string();
    run_in_netns(&lab.controller_host.netns, &cli, &full, CLI_TIMEOUT).expect("colex-cli runs")
}

/// Opens an enrollment window for `role` with the lab's admin CLI and enrolls `name` into a
/// new certificate folder, which it returns.
fn enroll_user(lab: &Lab, name: &str, role: &str) -> PathBuf {
    let reopened = lab.cli(&["enroll", "--reopen", "--role", role]).expect("colex-cli runs");
    assert!(reopened.success(), "enroll --reopen failed: {}", reopened.stderr);
    let key_file = lab.write_file(&format!("{name}.key-input"), reopened.stdout.trim()).expect("write key");
    let dir = lab.dir.path().join(format!("config-{name}"));
    let key_path = key_file.display().to_string();
    let enrolled = cli_as(lab, &dir, &["enroll", "--name", name, "--key-file", &key_path]);
    assert!(enrolled.success(), "enroll {name} failed: {}", enrolled.stderr);
    assert!(enrolled.stdout.contains(&format!("enrolled {name} as {role}")), "{}", enrolled.stdout);
    dir
}

/// Runs `colex-agent` once in the controller's namespace with `token` and a fresh state
/// folder; the join fails before the agent touches the host.
fn join_agent(lab: &Lab, name: &str, token: &str) -> CommandOutput {
    let state_dir = lab.dir.path().join(format!("state-{name}")).display().to_string();
    let agent = lab.bins.join("colex-agent").display().to_string();
    let serv = lab.controller_address();
    let args = ["--join", &serv, "--name", name, "--state-dir", &state_dir, "--token", token];
    run_in_netns(&lab.controller_host.netns, &agent, &args, Duration::from_secs(90)).expect("colex-agent runs")
}

#[test]
fn reader_up_is_rejected_and_admin_up_accepted() {
    let Some(lab) = controller_lab("reader_up_is_rejected_and_admin_up_accepted") else {
        return;
    };
    let file = lab.write_file("sleeper.hcl", SLEEPER).expect("write silo file");
    let file = file.display().to_string();
    let reader = enroll_user(&lab, "rita", "reader");

    let listed = cli_as(&lab, &reader, &["list"]);
    assert!(listed.success(), "a reader's list failed: {}", listed.stderr);

    let rejected = cli_as(&lab, &reader, &["up", "--detach", &file]);
    assert_eq!(rejected.code, Some(1), "a reader's up: {}", rejected.stderr);
    assert!(rejected.stderr.contains("reader rita has role reader"), "{}", rejected.stderr);
    assert!(rejected.stderr.contains("needs role admin"), "{}", rejected.stderr);

    let accepted = lab.cli(&["up", "--detach", &file]).expect("colex-cli runs");
    assert!(accepted.success(), "an admin's up failed: {}", accepted.stderr);
}

#[test]
fn connection_without_certificate_is_rejected() {
    let Some(lab) = controller_lab("connection_without_certificate_is_rejected") else {
        return;
    };
    // The authority alone: the CLI verifies the controller and shows no certificate.
    let dir = lab.dir.path().join("config-anonymous");
    fs::create_dir_all(&dir).expect("create folder");
    fs::copy(lab.cli_config_dir().join("authority.crt"), dir.join("authority.crt")).expect("copy authority");

    let output = cli_as(&lab, &dir, &["list"]);
    assert_eq!(output.code, Some(1), "{}", output.stderr);
    assert!(output.stderr.contains("needs a client certificate"), "{}", output.stderr);
    assert!(output.stderr.contains("the connection has none"), "{}", output.stderr);

    // Without even the authority, the CLI reports that the user must enroll.
    let empty = lab.dir.path().join("config-empty");
    let output = cli_as(&lab, &empty, &["list"]);
    assert_eq!(output.code, Some(1), "{}", output.stderr);
    assert!(output.stderr.contains("is not enrolled"), "{}", output.stderr);
}

#[test]
fn certificate_of_another_authority_is_rejected() {
    let Some(lab) = controller_lab("certificate_of_another_authority_is_rejected") else {
        return;
    };
    let stranger = colex_proto::pki::CertificateAuthority::create("stranger").expect("authority");
    let issued = stranger
        .issue(
            colex_proto::pki::Role::Admin,
            "mallory",
            colex_proto::pki::Validity::from_now(Duration::from_secs(3600)),
        )
        .expect("issue");
    let dir = certificate_folder(&lab, "mallory", &issued.cert_pem, issued.key_pem().unwrap_or_default());

    let output = cli_as(&lab, &dir, &["list"]);
    assert_eq!(output.code, Some(1), "{}", output.stderr);
    assert!(output.stderr.contains("not issued by this cluster's authority"), "{}", output.stderr);
}

#[test]
fn expired_certificate_is_rejected() {
    let Some(mut lab) = controller_lab("expired_certificate_is_rejected") else {
        return;
    };
    let authority = lab_authority(&mut lab);
    let now = time::OffsetDateTime::now_utc();
    let expired =
        colex_proto::pki::Validity::between(now - time::Duration::days(2), now - time::Duration::days(1)).expect("validity");
    let issued = authority.issue(colex_proto::pki::Role::Admin, "old", expired).expect("issue");
    let dir = certificate_folder(&lab, "old", &issued.cert_pem, issued.key_pem().unwrap_or_default());

    let output = cli_as(&lab, &dir, &["list"]);
    assert_eq!(output.code, Some(1), "{}", output.stderr);
    assert!(output.stderr.contains("the client certificate has expired"), "{}", output.stderr);
    assert!(output.stderr.contains("enroll again"), "{}", output.stderr);
}

/// Reads the cluster authority, key included, from the first controller's Raft state. The
/// controller is stopped for the read, because the database allows one process at a time,
/// and started again.
fn lab_authority(lab: &mut Lab) -> colex_proto::pki::CertificateAuthority {
    use redb::{ReadableDatabase, ReadableTable};

    const META_TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
    lab.stop_controller().expect("stop the controller");
    let path = lab.controller_hosts[0].state_dir.join("state.redb");
    let security: serde_json::Value = {
        let database = redb::Database::open(&path).expect("open the state database");
        let transaction = database.begin_read().expect("read transaction");
        let table = transaction.open_table(META_TABLE).expect("meta table");
        let value = table.get("security").expect("read the security row").expect("a security row");
        serde_json::from_slice(value.value()).expect("security row is JSON")
    };
    lab.start_controller().expect("start the controller again");
    let cert = security["authority"]["cert_pem"].as_str().expect("authority certificate");
    let key = security["authority"]["key_pem"].as_str().expect("authority key");
    colex_proto::pki::CertificateAuthority::load(cert, key).expect("load the authority")
}

#[test]
fn removed_user_certificate_is_rejected() {
    let Some(lab) = controller_lab("removed_user_certificate_is_rejected") else {
        return;
    };
    let reader = enroll_user(&lab, "rob", "reader");
    assert!(cli_as(&lab, &reader, &["list"]).success(), "rob lists before removal");

    let removed = lab.cli(&["users", "remove", "rob"]).expect("colex-cli runs");
    assert!(removed.success(), "users remove failed: {}", removed.stderr);
    let users = lab.cli(&["users", "list"]).expect("colex-cli runs");
    assert!(users.stdout.lines().any(|line| line.contains("rob") && line.contains("revoked")), "{}", users.stdout);

    let output = cli_as(&lab, &reader, &["list"]);
    assert_eq!(output.code, Some(1), "{}", output.stderr);
    assert!(output.stderr.contains("of reader rob"), "{}", output.stderr);
    assert!(output.stderr.contains("was revoked"), "{}", output.stderr);
}

#[test]
fn expired_join_token_is_rejected() {
    let Some(lab) = controller_lab("expired_join_token_is_rejected") else {
        return;
    };
    let created = lab.cli(&["tokens", "create", "--role", "agent", "--ttl", "1s"]).expect("colex-cli runs");
    assert!(created.success(), "tokens create failed: {}", created.stderr);
    let token = created.stdout.trim().to_owned();
    thread::sleep(Duration::from_secs(2));

    let listed = lab.cli(&["tokens", "list"]).expect("colex-cli runs");
    assert!(listed.stdout.contains("expired"), "{}", listed.stdout);
    let output = join_agent(&lab, &format!("cx{}-late", lab.run_id), &token);
    assert_eq!(output.code, Some(1), "{}", output.stderr);
    assert!(output.stderr.contains("expired at"), "{}", output.stderr);
    assert!(output.stderr.contains("colex-cli tokens create"), "{}", output.stderr);
}

#[test]
fn revoked_join_token_is_rejected() {
    let Some(lab) = controller_lab("revoked_join_token_is_rejected") else {
        return;
    };
    let created = lab.cli(&["tokens", "create", "--role", "agent"]).expect("colex-cli runs");
    assert!(created.success(), "tokens create failed: {}", created.stderr);
    let token = created.stdout.trim().to_owned();
    let id = token.split('.').nth(2).expect("token id").to_owned();

    let revoked = lab.cli(&["tokens", "revoke", &id]).expect("colex-cli runs");
    assert!(revoked.success(), "tokens revoke failed: {}", revoked.stderr);
    let listed = lab.cli(&["tokens", "list"]).expect("colex-cli runs");
    assert!(listed.stdout.lines().any(|line| line.contains(&id) && line.contains("revoked")), "{}", listed.stdout);
    assert!(!listed.stdout.contains(&token), "tokens list shows the secret");

    let output = join_agent(&lab, &format!("cx{}-gone", lab.run_id), &token);
    assert_eq!(output.code, Some(1), "{}", output.stderr);
    assert!(output.stderr.contains(&format!("join token {id} was revoked")), "{}", output.stderr);
}

#[test]
fn taken_host_name_needs_hosts_remove() {
    if !require_root("taken_host_name_needs_hosts_remove") || insecure() {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let token = lab.join_token("agent").expect("agent token");
    // Another machine, that is another key, under the name host 1 holds.
    let output = join_agent(&lab, &lab.hosts[0].name, &token);
    assert_eq!(output.code, Some(1), "{}", output.stderr);
    assert!(output.stderr.contains("is taken by another key"), "{}", output.stderr);
    assert!(
        output.stderr.contains(&format!("colex-cli hosts remove {}", lab.hosts[0].name)),
        "{}",
        output.stderr
    );
}

#[test]
fn logs_contain_no_secrets() {
    if !require_root("logs_contain_no_secrets") || insecure() {
        return;
    }
    let mut lab = Lab::start_with_controllers(2, 1).expect("lab starts");
    let file = lab.write_file("sleeper.hcl", SLEEPER).expect("write silo file");
    let file = file.display().to_string();

    // Exercise the paths that handle secrets: enrollment, tokens, an agent restart.
    let mut outputs = Vec::new();
    let reader = enroll_user(&lab, "sam", "reader");
    outputs.push(cli_as(&lab, &reader, &["list"]));
    outputs.push(lab.cli(&["up", &file]).expect("colex-cli runs"));
    outputs.push(lab.cli(&["tokens", "list"]).expect("colex-cli runs"));
    outputs.push(lab.cli(&["users", "list"]).expect("colex-cli runs"));
    lab.kill_agent(0).expect("kill the agent");
    lab.restart_agent(0).expect("restart the agent");
    lab.wait_for_hosts_up().expect("the agent is back");
    outputs.push(lab.cli(&["list", "--all-hosts"]).expect("colex-cli runs"));

    // Stopping and starting the first controller to read the authority also puts a restart
    // in its log.
    let authority_key = lab_authority(&mut lab).key_pem().to_owned();
    let mut secrets = lab_secrets(&lab);
    let body: String = authority_key.lines().filter(|line| !line.starts_with("-----")).collect();
    secrets.push(("authority's private key".to_owned(), body));
    assert!(secrets.len() >= 7, "found too few secrets to search for: {}", secrets.len());
    let mut texts: Vec<(String, String)> = Vec::new();
    for entry in fs::read_dir(lab.dir.path()).expect("read lab folder").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "log") {
            texts.push((path.display().to_string(), fs::read_to_string(&path).unwrap_or_default()));
        }
    }
    assert!(texts.len() >= 3, "expected controller and agent logs, found {}", texts.len());
    for (index, output) in outputs.iter().enumerate() {
        texts.push((format!("cli output {index}"), format!("{}\n{}", output.stdout, output.stderr)));
    }
    for (source, text) in &texts {
        for (what, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{source} contains the {what}");
        }
    }
}

/// Returns every secret the lab used, each with a description: the secrets of its join tokens
/// and enrollment keys, and the body of every private key file.
fn lab_secrets(lab: &Lab) -> Vec<(String, String)> {
    let mut secrets = Vec::new();
    for role in ["agent", "controller"] {
        let token = lab.join_token(role).expect("lab token");
        let secret = token.rsplit('.').next().expect("token secret").to_owned();
        secrets.push((format!("{role} token secret"), secret));
    }
    let key = fs::read_to_string(lab.controller_hosts[0].state_dir.join(ENROLLMENT_KEY_FILE)).expect("enrollment key");
    let secret = key.trim().rsplit('.').next().expect("enrollment secret").to_owned();
    secrets.push(("enrollment key secret".to_owned(), secret));

    let mut key_files = vec![lab.cli_config_dir().join("user.key")];
    for host in lab.controller_hosts.iter() {
        key_files.push(host.state_dir.join("controller.key"));
    }
    for host in &lab.hosts {
        key_files.push(host.state_dir.join("agent.key"));
    }
    for path in key_files {
        let pem = fs::read_to_string(&path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()));
        // The base64 body; the BEGIN and END lines are no secret.
        let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        secrets.push((format!("private key {}", path.display()), body));
    }
    secrets
}

/// Writes a certificate folder with the lab's authority and the given certificate and key.
fn certificate_folder(lab: &Lab, name: &str, cert_pem: &str, key_pem: &str) -> PathBuf {
    let dir = lab.dir.path().join(format!("config-{name}"));
    fs::create_dir_all(&dir).expect("create folder");
    fs::copy(lab.cli_config_dir().join("authority.crt"), dir.join("authority.crt")).expect("copy authority");
    fs::write(dir.join("user.crt"), cert_pem).expect("write certificate");
    fs::write(dir.join("user.key"), key_pem).expect("write key");
    dir
}
