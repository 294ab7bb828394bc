//! End-to-end tests: real controller and agents in lab namespaces, driven
//! through colex-cli.


use colex_cluster_tests::ledger::Ledger;
use colex_cluster_tests::table::{parse_all_hosts, parse_table};
use colex_cluster_tests::{require_root, Host, Lab};

/// Two busybox httpd silos, each serving its own page.
const TWO_SILOS: &str = r#"
Silo "a" {
  name  = "web-a"
  class = "web"
  tags  = ["demo"]

  binary {
    path = "/bin/httpd"
    args = ["-f", "-p", "80", "-h", "/www"]
  }

  file "page" {
    path      = "index-a.html"
    silo_path = "/www/index.html"
  }

  network {
    internet_access = true
  }
}

Silo "b" {
  name = "web-b"

  binary {
    path = "/bin/httpd"
    args = ["-f", "-p", "80", "-h", "/www"]
  }

  file "page" {
    path      = "index-b.html"
    silo_path = "/www/index.html"
  }
}
"#;

fn host_by_name<'a>(lab: &'a Lab, name: &str) -> &'a Host {
    lab.hosts
        .iter()
        .find(|host| host.name == name)
        .unwrap_or_else(|| panic!("no lab host named {name:?}"))
}


#[test]
fn two_silos_on_two_hosts() {
    if !require_root("two_silos_on_two_hosts") {
        return;
    }
    let lab = Lab::start(2).expect("lab starts");
    lab.write_file("index-a.html", "page of web-a\n").expect("page a");
    lab.write_file("index-b.html", "page of web-b\n").expect("page b");
    let silo_file = lab.write_file("web.hcl", TWO_SILOS).expect("silo file");
    let silo_file = silo_file.to_str().expect("utf-8 path");

    let before: Vec<Ledger> = lab.hosts.iter().map(|host| Ledger::take(host).expect("ledger")).collect();

    let up = lab.cli(&["up", silo_file]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    assert!(up.stdout.contains("web-a"), "up output lacks web-a:\n{}", up.stdout);
    assert!(up.stdout.contains("web-b"), "up output lacks web-b:\n{}", up.stdout);
    assert_eq!(up.stdout.matches("| UP ").count(), 2, "both silos UP:\n{}", up.stdout);

    let listed = lab.cli(&["list", "--all-hosts"]).expect("list runs");
    assert!(listed.success(), "list failed: {}", listed.stderr);
    for host in &lab.hosts {
        assert!(
            listed.stdout.contains(&format!("HOST {} ", host.name)),
            "host {} missing from:\n{}",
            host.name,
            listed.stdout
        );
    }
    let rows = parse_all_hosts(&listed.stdout);
    assert_eq!(rows.len(), 2, "two silo rows in:\n{}", listed.stdout);
    let hosts_used: std::collections::BTreeSet<&str> = rows.iter().map(|row| row["HOST"].as_str()).collect();
    assert_eq!(hosts_used.len(), 2, "least-loaded placement spreads the two silos:\n{}", listed.stdout);

    for row in &rows {
        let name = &row["NAME"];
        let address = &row["ADDRESSES"];
        assert!(address.starts_with("10.69."), "silo {name} has address {address:?}");
        assert_eq!(row["STATE"], "UP");
        let host = host_by_name(&lab, &row["HOST"]);
        assert_eq!(host.fetch_page(address), format!("page of {name}\n"));
    }

    let web_a_host = host_by_name(&lab, &rows.iter().find(|row| row["NAME"] == "web-a").expect("web-a row")["HOST"]);
    let masquerade = web_a_host.run("iptables-save", &["-t", "nat"]).expect("iptables-save");
    assert_eq!(
        masquerade.stdout.lines().filter(|line| line.contains("MASQUERADE")).count(),
        1,
        "one MASQUERADE rule for web-a:\n{}",
        masquerade.stdout
    );

    let list_plain = lab.cli(&["list"]).expect("list runs");
    let plain_rows = parse_table(&list_plain.stdout);
    assert_eq!(plain_rows.len(), 2, "two rows in:\n{}", list_plain.stdout);
    let header: Vec<&str> = plain_rows[0].keys().map(String::as_str).collect();
    assert_eq!(
        header,
        ["ADDRESSES", "CLASS", "CPU", "HOST", "ID", "MEMORY", "NAME", "NET I/O", "PIDS", "RESTARTS", "STATE", "TAGS", "UPTIME"]
    );
    let web_a = plain_rows.iter().find(|row| row["NAME"] == "web-a").expect("web-a listed");
    assert_eq!(web_a["STATE"], "UP");
    assert_eq!(web_a["CLASS"], "web");
    assert_eq!(web_a["TAGS"], "demo");
    assert_eq!(web_a["HOST"], web_a_host.name);
    assert!(web_a["ADDRESSES"].starts_with("10.69."), "address of web-a: {:?}", web_a["ADDRESSES"]);

    let down = lab.cli(&["down", silo_file]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
    assert_eq!(down.stdout.matches("REMOVED").count(), 2, "down output:\n{}", down.stdout);

    let listed = lab.cli(&["list", "--all-hosts"]).expect("list runs");
    assert!(parse_all_hosts(&listed.stdout).is_empty(), "silos left:\n{}", listed.stdout);
    for (host, before) in lab.hosts.iter().zip(&before) {
        let after = Ledger::take(host).expect("ledger");
        assert_eq!(&after, before, "host {} differs after down", host.name);
    }
}

#[test]
fn controller_restart_keeps_silos() {
    if !require_root("controller_restart_keeps_silos") {
        return;
    }
    let mut lab = Lab::start(1).expect("lab starts");
    lab.write_file("index-a.html", "page of web-a\n").expect("page");
    let silo_file = lab
        .write_file("one.hcl", &TWO_SILOS[..TWO_SILOS.find("Silo \"b\"").expect("second silo")])
        .expect("silo file");
    let silo_file = silo_file.to_str().expect("utf-8 path");

    let up = lab.cli(&["up", silo_file]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    let before = parse_all_hosts(&lab.cli(&["list", "--all-hosts"]).expect("list").stdout);
    assert_eq!(before.len(), 1);

    lab.stop_controller().expect("controller stops");
    let host = lab.hosts[0].clone();
    assert_eq!(host.fetch_page(&before[0]["ADDRESSES"]), "page of web-a\n", "silo serves while the controller is down");
    lab.start_controller().expect("controller restarts");

    lab.wait_until("the silo is listed UP again", |lab| {
        let rows = parse_all_hosts(&lab.cli(&["list", "--all-hosts"])?.stdout);
        Ok(rows.len() == 1 && rows[0]["STATE"] == "UP")
    })
    .expect("silo listed after restart");
    let after = parse_all_hosts(&lab.cli(&["list", "--all-hosts"]).expect("list").stdout);
    assert_eq!(after[0]["NAME"], "web-a");
    assert_eq!(after[0]["ID"], before[0]["ID"], "same silo instance after the restart");
    assert_eq!(after[0]["ADDRESSES"], before[0]["ADDRESSES"]);
    assert_eq!(host.fetch_page(&after[0]["ADDRESSES"]), "page of web-a\n");

    let down = lab.cli(&["down", "--name", "web-a"]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
}

#[test]
fn bad_input_is_one_line_and_creates_nothing() {
    if !require_root("bad_input_is_one_line_and_creates_nothing") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let before = Ledger::take_settled(&lab.hosts[0]).expect("ledger");

    let missing = lab.dir.path().join("missing.hcl");
    let syntax = lab.write_file("syntax.hcl", "Silo \"s\" {\n  name = \"x\"\n  binary {\n    path = \n  }\n}\n").expect("file");
    let no_path = lab
        .write_file("nopath.hcl", "Silo \"s\" {\n  name = \"x\"\n  binary {\n    args = [\"a\"]\n  }\n}\n")
        .expect("file");
    let good = lab.write_file("good.hcl", "Silo \"s\" {\n  name = \"x\"\n  binary {\n    path = \"/bin/sleep\"\n    args = [\"100\"]\n  }\n}\n").expect("file");

    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["up".into(), missing.display().to_string()],
            missing.display().to_string(),
        ),
        (vec!["up".into(), syntax.display().to_string()], format!("{}:4:", syntax.display())),
        (vec!["up".into(), no_path.display().to_string()], "binary.path".to_owned()),
    ];
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = lab.cli(&args).expect("cli runs");
        assert_ne!(output.code, Some(0), "{args:?} must fail");
        assert_eq!(output.stderr.trim().lines().count(), 1, "{args:?}: one line expected:\n{}", output.stderr);
        assert!(output.stderr.contains(expected.as_str()), "{args:?}: {expected:?} not in {:?}", output.stderr);
    }

    let unreachable = colex_cluster_tests::process::run_in_netns(
        &lab.controller_host.netns,
        &lab.bins.join("colex-cli").display().to_string(),
        &["--serv", "127.0.0.1:1", "up", good.to_str().expect("utf-8 path")],
        colex_cluster_tests::process::COMMAND_TIMEOUT,
    )
    .expect("cli runs");
    assert_ne!(unreachable.code, Some(0));
    assert_eq!(unreachable.stderr.trim().lines().count(), 1, "one line:\n{}", unreachable.stderr);
    assert!(unreachable.stderr.contains("127.0.0.1:1"), "address named: {}", unreachable.stderr);

    let listed = lab.cli(&["list"]).expect("list runs");
    assert!(!listed.stdout.contains("| x "), "no silo was created:\n{}", listed.stdout);
    assert_eq!(Ledger::take(&lab.hosts[0]).expect("ledger"), before, "nothing created on the host");
}

#[test]
fn up_again_replaces_changed_silo() {
    if !require_root("up_again_replaces_changed_silo") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let host = lab.hosts[0].clone();
    let before = Ledger::take_settled(&host).expect("ledger");
    lab.write_file("index-a.html", "first page\n").expect("page");
    let first = TWO_SILOS[..TWO_SILOS.find("Silo \"b\"").expect("second silo")].to_owned();
    let silo_file = lab.write_file("one.hcl", &first).expect("silo file");
    let silo_file = silo_file.to_str().expect("utf-8 path");

    let up = lab.cli(&["up", silo_file]).expect("up runs");
    assert!(up.success(), "first up failed: {}\n{}", up.stderr, lab.logs());
    let first_rows = parse_table(&up.stdout);
    assert_eq!(first_rows.len(), 1);

    let unchanged = lab.cli(&["up", silo_file]).expect("up runs");
    assert!(unchanged.success(), "second up failed: {}", unchanged.stderr);
    assert_eq!(parse_table(&unchanged.stdout)[0]["ID"], first_rows[0]["ID"], "unchanged spec keeps the instance");

    lab.write_file("one.hcl", &first.replace("\"demo\"", "\"demo\", \"v2\"")).expect("changed file");
    lab.write_file("index-a.html", "second page\n").expect("page");
    let changed = lab.cli(&["up", silo_file]).expect("up runs");
    assert!(changed.success(), "third up failed: {}\n{}", changed.stderr, lab.logs());
    let changed_rows = parse_table(&changed.stdout);
    assert_ne!(changed_rows[0]["ID"], first_rows[0]["ID"], "changed spec makes a new instance");

    lab.wait_until("only the new instance is left", |lab| {
        let rows = parse_all_hosts(&lab.cli(&["list", "--all-hosts"])?.stdout);
        Ok(rows.len() == 1 && rows[0]["ID"] == changed_rows[0]["ID"] && rows[0]["TAGS"] == "demo, v2")
    })
    .expect("replacement finished");
    let listed = parse_all_hosts(&lab.cli(&["list", "--all-hosts"]).expect("list").stdout);
    assert_eq!(host.fetch_page(&listed[0]["ADDRESSES"]), "second page\n");
    let old_veth = format!("cx{}", first_rows[0]["ID"]);
    assert!(
        !Ledger::take(&host).expect("ledger").links.contains(&old_veth),
        "veth {old_veth} of the replaced instance is gone"
    );

    let down = lab.cli(&["down", silo_file]).expect("down runs");
    assert!(down.success(), "down failed: {}", down.stderr);
    assert_eq!(Ledger::take(&host).expect("ledger"), before, "host is as before");
}

#[test]
fn agent_crash_keeps_silo_serving() {
    if !require_root("agent_crash_keeps_silo_serving") {
        return;
    }
    let mut lab = Lab::start(1).expect("lab starts");
    let host = lab.hosts[0].clone();
    let before = Ledger::take_settled(&host).expect("ledger");
    lab.write_file("index-a.html", "page of web-a\n").expect("page");
    let silo_file = lab
        .write_file("one.hcl", &TWO_SILOS[..TWO_SILOS.find("Silo \"b\"").expect("second silo")])
        .expect("silo file");
    let silo_file = silo_file.to_str().expect("utf-8 path");

    let up = lab.cli(&["up", silo_file]).expect("up runs");
    assert!(up.success(), "up failed: {}\n{}", up.stderr, lab.logs());
    let before_crash = parse_all_hosts(&lab.cli(&["list", "--all-hosts"]).expect("list").stdout);
    assert_eq!(before_crash.len(), 1);

    lab.kill_agent(0).expect("agent killed");
    lab.wait_until("the host is DOWN", |lab| {
        let output = lab.cli(&["list", "--all-hosts"])?;
        Ok(output.stdout.contains("state DOWN"))
    })
    .expect("host marked down");
    assert_eq!(
        host.fetch_page(&before_crash[0]["ADDRESSES"]),
        "page of web-a\n",
        "the silo serves while its agent is dead"
    );

    lab.restart_agent(0).expect("agent restarts");
    lab.wait_until("the host is UP with the silo UP", |lab| {
        let output = lab.cli(&["list", "--all-hosts"])?;
        let rows = parse_all_hosts(&output.stdout);
        Ok(output.stdout.contains("state UP") && rows.len() == 1 && rows[0]["STATE"] == "UP")
    })
    .expect("silo listed UP after the restart");
    let rows = parse_all_hosts(&lab.cli(&["list", "--all-hosts"]).expect("list").stdout);
    assert_eq!(rows[0]["ID"], before_crash[0]["ID"], "the agent adopted the silo, no new instance");
    assert_eq!(rows[0]["ADDRESSES"], before_crash[0]["ADDRESSES"]);
    assert_eq!(host.fetch_page(&rows[0]["ADDRESSES"]), "page of web-a\n");
    let masquerade = host.run("iptables-save", &["-t", "nat"]).expect("iptables-save");
    assert_eq!(
        masquerade.stdout.lines().filter(|line| line.contains("MASQUERADE")).count(),
        1,
        "exactly one MASQUERADE rule after the adoption:\n{}",
        masquerade.stdout
    );

    let down = lab.cli(&["down", silo_file]).expect("down runs");
    assert!(down.success(), "down failed: {}\n{}", down.stderr, lab.logs());
    assert_eq!(Ledger::take(&host).expect("ledger"), before, "nothing left after the crash and down");
}

#[test]
fn logs_of_failed_silo_name_the_failure() {
    if !require_root("logs_of_failed_silo_name_the_failure") {
        return;
    }
    let lab = Lab::start(1).expect("lab starts");
    let silo_file = lab
        .write_file(
            "broken.hcl",
            "Silo \"b\" {\n  name = \"broken\"\n  binary {\n    path = \"/bin/no-such-program\"\n  }\n}\n",
        )
        .expect("silo file");
    let silo_file = silo_file.to_str().expect("utf-8 path");

    let up = lab.cli(&["up", silo_file]).expect("up runs");
    assert!(!up.success(), "up of a missing binary succeeded:\n{}", up.stdout);
    let listed = lab.cli(&["list"]).expect("list runs");
    let rows = parse_table(&listed.stdout);
    assert_eq!(rows.len(), 1, "{}", listed.stdout);
    assert_eq!(rows[0]["STATE"], "FAILED", "{}", listed.stdout);

    let logs = lab.cli(&["logs", "broken"]).expect("logs runs");
    assert!(!logs.success(), "logs of a failed silo succeeded: {}", logs.stdout);
    assert!(logs.stderr.contains("FAILED on host"), "{}", logs.stderr);
    assert!(logs.stderr.contains("/bin/no-such-program"), "{}", logs.stderr);
    assert_eq!(logs.stderr.lines().count(), 1, "{}", logs.stderr);

    let down = lab.cli(&["down", "--name", "broken"]).expect("down runs");
    assert!(down.success(), "down failed: {}", down.stderr);
}
