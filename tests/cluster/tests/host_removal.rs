//! `colex-cli hosts remove` on a three-host lab: the controller rejects a host that is up,
//! removes a stopped one, frees its subnet, and both remaining agents drop its WireGuard peer
//! and route within 5 s. The removed host's agent, started again, joins as a new host.

use std::time::{Duration, Instant};

use colex_cluster_tests::mesh_tools::{host_subnet, mesh_device, mesh_routes, peer_allowed_ips, peer_count, uapi_get};
use colex_cluster_tests::{require_root, Host, Lab};

/// Time within which every remaining agent must drop the removed host from its mesh.
const PEER_REMOVAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns true when `host`'s mesh device has `subnet` neither as a peer's allowed IPs nor as
/// a route.
fn mesh_lacks(host: &Host, device: &str, subnet: &str) -> bool {
    let allowed = peer_allowed_ips(&uapi_get(device));
    let routes = mesh_routes(host, device).unwrap_or_default();
    !allowed.contains(subnet) && !routes.contains(subnet)
}

#[test]
fn removed_host_leaves_every_mesh() {
    if !require_root("removed_host_leaves_every_mesh") {
        return;
    }
    let mut lab = Lab::start(3).expect("lab starts");
    let hosts = lab.hosts.clone();
    let devices: Vec<String> = hosts.iter().map(|host| mesh_device(host).expect("mesh device")).collect();
    let subnets: Vec<String> = hosts
        .iter()
        .map(|host| host_subnet(&lab, host).expect("list runs").expect("host is listed"))
        .collect();
    let removed = &hosts[2];
    let removed_subnet = &subnets[2];

    // Both remaining hosts have host 3 as a peer with a route before the removal.
    lab.wait_until("hosts 1 and 2 route host 3's subnet through the mesh", |_| {
        Ok((0..2).all(|index| {
            let reply = uapi_get(&devices[index]);
            peer_count(&reply) == 2
                && peer_allowed_ips(&reply).contains(removed_subnet)
                && mesh_routes(&hosts[index], &devices[index]).unwrap_or_default().contains(removed_subnet)
        }))
    })
    .expect("mesh of three hosts");

    // A host whose agent is connected is rejected with one line that names the way out.
    let rejected = lab.cli(&["hosts", "remove", &removed.name]).expect("cli runs");
    assert!(!rejected.success(), "removing an up host must fail:\n{}", rejected.stdout);
    let message = rejected.stderr.trim();
    assert_eq!(message.lines().count(), 1, "one-line error: {message}");
    assert!(message.contains(&format!("host {} is up", removed.name)), "{message}");
    assert!(message.contains("drain"), "{message}");
    assert!(message.contains("--force"), "{message}");
    let unknown = lab.cli(&["hosts", "remove", "cx-no-such-host"]).expect("cli runs");
    assert!(!unknown.success(), "removing an unknown host must fail");
    assert!(unknown.stderr.contains("not found"), "{}", unknown.stderr);

    // With its agent stopped, the host is removed and disappears from both meshes within 5 s.
    lab.kill_agent(2).expect("kill agent 3");
    lab.wait_until("host 3 is down", |lab| {
        let listed = lab.cli(&["hosts"])?;
        Ok(listed
            .stdout
            .lines()
            .any(|line| line.contains(&removed.name) && line.contains(" down ")))
    })
    .expect("host 3 is down");
    let removed_at = Instant::now();
    let output = lab.cli(&["hosts", "remove", &removed.name]).expect("cli runs");
    assert!(output.success(), "hosts remove failed: {}\n{}", output.stderr, lab.logs());
    assert!(
        output.stdout.contains(&format!("subnet {removed_subnet} is free")),
        "output names the freed subnet: {}",
        output.stdout
    );
    loop {
        if (0..2).all(|index| mesh_lacks(&hosts[index], &devices[index], removed_subnet)) {
            break;
        }
        assert!(
            removed_at.elapsed() < PEER_REMOVAL_TIMEOUT,
            "host 3 still in a mesh {PEER_REMOVAL_TIMEOUT:?} after its removal:\nhost 1: {}\n{}\nhost 2: {}\n{}",
            uapi_get(&devices[0]),
            mesh_routes(&hosts[0], &devices[0]).unwrap_or_default(),
            uapi_get(&devices[1]),
            mesh_routes(&hosts[1], &devices[1]).unwrap_or_default(),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("host 3 left both meshes {:?} after hosts remove", removed_at.elapsed());
    for index in 0..2 {
        let reply = uapi_get(&devices[index]);
        assert_eq!(peer_count(&reply), 1, "host {} keeps one peer:\n{reply}", index + 1);
        assert!(peer_allowed_ips(&reply).contains(&subnets[1 - index]), "the other remaining host stays a peer:\n{reply}");
    }
    let listed = lab.cli(&["hosts"]).expect("cli runs");
    assert!(!listed.stdout.contains(&removed.name), "host 3 is no longer listed:\n{}", listed.stdout);
    assert_eq!(host_subnet(&lab, removed).expect("list runs"), None, "no record of host 3");

    // Started again, the agent registers as a new host and both other hosts add it back.
    lab.restart_agent(2).expect("start agent 3 again");
    lab.wait_for_hosts_up().expect("host 3 is UP again");
    let new_subnet = host_subnet(&lab, removed).expect("list runs").expect("host 3 is listed again");
    assert!(!subnets[..2].contains(&new_subnet), "host 3 got a free subnet: {new_subnet}");
    lab.wait_until("hosts 1 and 2 have host 3 as a peer again", |_| {
        Ok((0..2).all(|index| {
            let reply = uapi_get(&devices[index]);
            peer_count(&reply) == 2 && peer_allowed_ips(&reply).contains(&new_subnet)
        }))
    })
    .expect("host 3 is back in the mesh");
    let controller_log = std::fs::read_to_string(lab.dir.path().join("controller.log")).unwrap_or_default();
    assert!(controller_log.contains("host removed"), "the controller logs the removal");
}
