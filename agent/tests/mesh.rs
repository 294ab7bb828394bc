//! Root tests of the WireGuard mesh device: two hosts, each a network namespace made by the
//! test and joined by a veth pair, with a mesh device in each.
//!
//! Traffic stays inside those namespaces. Every namespace, device, UAPI socket and device thread
//! is removed by a guard, also when a test fails.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use colex_agent::mesh::device::uapi_socket_path;
use colex_agent::mesh::keys::PRIVATE_KEY_FILE_NAME;
use colex_agent::mesh::{
    Backend, BackendChoice, DeviceError, HostKey, KeyError, MeshConfig, MeshDevice, MeshPeer,
    MESH_MTU_BYTES,
};
use common::{has_root, random_hex, run, wait_for, BUSYBOX};
use nix::sched::{setns, CloneFlags};

/// WireGuard UDP port of both devices; each is in a namespace of its own.
const LISTEN_PORT: u16 = 51820;
/// Keepalive interval of the peers, which also starts a handshake right after configuration.
const KEEPALIVE_SECS: u16 = 1;
/// How long a device may take to finish a handshake after configuration.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the embedded device takes at most to stop: boringtun checks its socket once a
/// second.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// One side of the lab: its underlay address on the veth pair and its mesh addressing.
struct Side {
    underlay_cidr: &'static str,
    underlay_address: &'static str,
    mesh_address: &'static str,
    silo_subnet: &'static str,
}

const SIDE_A: Side = Side {
    underlay_cidr: "198.51.100.1/24",
    underlay_address: "198.51.100.1",
    mesh_address: "10.69.201.1/24",
    silo_subnet: "10.69.201.0/24",
};

const SIDE_B: Side = Side {
    underlay_cidr: "198.51.100.2/24",
    underlay_address: "198.51.100.2",
    mesh_address: "10.69.202.1/24",
    silo_subnet: "10.69.202.0/24",
};

/// A named network namespace made with `ip netns add`; dropping it deletes it.
struct NamedNetns {
    name: String,
}

impl NamedNetns {
    fn new(name: String) -> NamedNetns {
        run("ip", &["netns", "add", &name]);
        let netns = NamedNetns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// Runs `ip -n NAME ARGS` and returns its stdout.
    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces `cx<unique>a` and `cx<unique>b` joined by a veth pair on 198.51.100.0/24.
struct Lab {
    unique: String,
    a: NamedNetns,
    b: NamedNetns,
}

impl Lab {
    fn new() -> Lab {
        let unique = random_hex();
        let a = NamedNetns::new(format!("cx{unique}a"));
        let b = NamedNetns::new(format!("cx{unique}b"));
        let veth_a = format!("cx{unique}va");
        let veth_b = format!("cx{unique}vb");
        a.ip(&[
            "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b, "netns", &b.name,
        ]);
        for (netns, veth, side) in [(&a, &veth_a, &SIDE_A), (&b, &veth_b, &SIDE_B)] {
            netns.ip(&["address", "add", side.underlay_cidr, "dev", veth]);
            netns.ip(&["link", "set", veth, "up"]);
        }
        Lab { unique, a, b }
    }

    fn device_name(&self, side: char) -> String {
        format!("cx{}w{side}", self.unique)
    }
}

/// Creates mesh device `name` on a thread that entered `netns`, as the agent's own thread would
/// be in its host's namespace.
fn create_device(
    netns: &NamedNetns,
    name: &str,
    key: &HostKey,
    choice: BackendChoice,
) -> Result<MeshDevice, DeviceError> {
    let path = netns.path();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = File::open(&path).expect("open netns file");
                setns(&file, CloneFlags::CLONE_NEWNET).expect("enter netns");
                MeshDevice::create(name, LISTEN_PORT, key, choice)
            })
            .join()
            .expect("device thread")
    })
}

fn config_with_peer(own: &Side, other: &Side, other_key: &HostKey) -> MeshConfig {
    let peer = MeshPeer {
        public_key: other_key.public_key(),
        endpoint: format!("{}:{LISTEN_PORT}", other.underlay_address)
            .parse()
            .expect("valid endpoint"),
        allowed_ips: vec![other.silo_subnet.parse().expect("valid subnet literal")],
        persistent_keepalive_secs: Some(KEEPALIVE_SECS),
    };
    MeshConfig {
        address: own.mesh_address.parse().expect("valid address literal"),
        mtu_bytes: MESH_MTU_BYTES,
        peers: vec![peer],
    }
}

/// Two configured mesh devices. Declared after the lab, so they are dropped before it.
struct Mesh {
    a: MeshDevice,
    b: MeshDevice,
    key_b: HostKey,
}

impl Mesh {
    fn new(lab: &Lab) -> Mesh {
        let key_a = HostKey::generate();
        let key_b = HostKey::generate();
        let a = create_device(&lab.a, &lab.device_name('a'), &key_a, BackendChoice::Userspace)
            .expect("create device a");
        let b = create_device(&lab.b, &lab.device_name('b'), &key_b, BackendChoice::Userspace)
            .expect("create device b");
        a.replace_peers(&config_with_peer(&SIDE_A, &SIDE_B, &key_b))
            .expect("configure device a");
        b.replace_peers(&config_with_peer(&SIDE_B, &SIDE_A, &key_a))
            .expect("configure device b");
        Mesh { a, b, key_b }
    }
}

/// Runs `ping -c 1 -W 2 ADDRESS` in `netns` (busybox's ping, which the deploy script
/// installs) and returns whether it got a reply, with its output.
fn ping(netns: &NamedNetns, address: &str) -> (bool, String) {
    let output = Command::new("ip")
        .args([
            "netns",
            "exec",
            &netns.name,
            BUSYBOX,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
        ])
        .arg(address)
        .output()
        .expect("spawn ping");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Peers of a device as its UAPI `get=1` reply lists them.
#[derive(Debug)]
struct UapiPeers {
    peers: usize,
    /// Peers with a completed handshake. boringtun 0.7.1 writes `last_handshake_time_sec` as the
    /// time since the handshake, not as a Unix time, and only once there was one.
    handshakes: usize,
}

fn uapi_peers(device: &str) -> UapiPeers {
    let mut socket = UnixStream::connect(uapi_socket_path(device)).expect("connect UAPI socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set read timeout");
    socket.write_all(b"get=1\n\n").expect("send get=1");
    let mut reply = String::new();
    socket.read_to_string(&mut reply).expect("read get=1 reply");
    assert!(reply.contains("errno=0"), "get=1 failed: {reply}");
    let count = |prefix: &str| {
        reply
            .lines()
            .filter(|line| line.starts_with(prefix))
            .count()
    };
    UapiPeers {
        peers: count("public_key="),
        handshakes: count("last_handshake_time_sec="),
    }
}

fn has_handshake(device: &str) -> bool {
    uapi_peers(device).handshakes > 0
}

/// Returns the names of this process's threads whose name starts with `prefix`.
/// How long threads of a dropped device may stay listed in `/proc/self/task`.
const THREAD_EXIT_WAIT: Duration = Duration::from_secs(2);

fn threads_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("list threads")
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with(prefix))
        .collect()
}

#[test]
fn ping_crosses_mesh() {
    if !has_root("ping_crosses_mesh") {
        return;
    }
    let lab = Lab::new();
    let mesh = Mesh::new(&lab);
    let name_a = lab.device_name('a');

    let (replied, output) = ping(&lab.a, "10.69.202.1");
    assert!(replied, "ping from a to b's mesh address: {output}");
    assert!(
        wait_for(HANDSHAKE_TIMEOUT, || has_handshake(&name_a)),
        "handshake on {name_a}: {:?}",
        uapi_peers(&name_a)
    );
    assert!(
        wait_for(HANDSHAKE_TIMEOUT, || has_handshake(mesh.b.name())),
        "handshake on {}",
        mesh.b.name()
    );

    let routes = lab.a.ip(&["route", "show", "dev", &name_a]);
    assert!(routes.contains(SIDE_B.silo_subnet), "route to b: {routes}");
    let link = lab.a.ip(&["link", "show", &name_a]);
    assert!(link.contains(&format!("mtu {MESH_MTU_BYTES}")), "{link}");
    assert!(link.contains(",UP"), "link is up: {link}");
    let addresses = lab.a.ip(&["-4", "address", "show", "dev", &name_a]);
    assert!(addresses.contains(SIDE_A.mesh_address), "{addresses}");
    // The checks above read the userspace device's UAPI socket, so the lab requests that
    // backend even where the kernel module exists.
    assert_eq!(mesh.a.backend(), Backend::Userspace, "backend of a");
}

#[test]
fn empty_peer_list_stops_traffic() {
    if !has_root("empty_peer_list_stops_traffic") {
        return;
    }
    let lab = Lab::new();
    let mesh = Mesh::new(&lab);
    let name_a = lab.device_name('a');
    let (replied, output) = ping(&lab.a, "10.69.202.1");
    assert!(replied, "ping before the peer is removed: {output}");

    let mut empty = config_with_peer(&SIDE_A, &SIDE_B, &mesh.key_b);
    empty.peers.clear();
    mesh.a.replace_peers(&empty).expect("remove all peers");

    let (replied, output) = ping(&lab.a, "10.69.202.1");
    assert!(!replied, "ping after the peer is removed: {output}");
    let routes = lab.a.ip(&["route", "show", "dev", &name_a]);
    assert!(
        !routes.contains(SIDE_B.silo_subnet),
        "route to b is removed: {routes}"
    );
    assert_eq!(uapi_peers(&name_a).peers, 0, "peers of device a");

    // Adding the peer back is the same call with the longer list.
    mesh.a
        .replace_peers(&config_with_peer(&SIDE_A, &SIDE_B, &mesh.key_b))
        .expect("add the peer back");
    let (replied, output) = ping(&lab.a, "10.69.202.1");
    assert!(replied, "ping after the peer is added back: {output}");
}

#[test]
fn key_survives_device_restart() {
    if !has_root("key_survives_device_restart") {
        return;
    }
    let state = tempfile::Builder::new()
        .prefix("colex-mesh")
        .tempdir()
        .expect("create state dir");
    let lab = Lab::new();
    let mut mesh = Mesh::new(&lab);
    let key_a = HostKey::load_or_generate(state.path()).expect("generate key a");
    let key_file = state.path().join(PRIVATE_KEY_FILE_NAME);
    let mode = std::fs::metadata(&key_file)
        .expect("stat key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "key file mode");

    // Device a restarts with the key from the state dir; b keeps a's public key throughout.
    let name_a = lab.device_name('a');
    drop(mesh.a);
    mesh.a = create_device(&lab.a, &name_a, &key_a, BackendChoice::Userspace).expect("create a");
    mesh.a
        .replace_peers(&config_with_peer(&SIDE_A, &SIDE_B, &mesh.key_b))
        .expect("configure a");
    mesh.b
        .replace_peers(&config_with_peer(&SIDE_B, &SIDE_A, &key_a))
        .expect("configure b");
    let (replied, output) = ping(&lab.a, "10.69.202.1");
    assert!(replied, "ping before the restart: {output}");

    drop(mesh.a);
    let reloaded = HostKey::load_or_generate(state.path()).expect("reload key a");
    assert_eq!(reloaded.public_key(), key_a.public_key(), "same public key");
    mesh.a = create_device(&lab.a, &name_a, &reloaded, BackendChoice::Userspace).expect("recreate a");
    mesh.a
        .replace_peers(&config_with_peer(&SIDE_A, &SIDE_B, &mesh.key_b))
        .expect("configure a again");
    let (replied, output) = ping(&lab.a, "10.69.202.1");
    assert!(replied, "ping after the restart: {output}");
    assert!(
        wait_for(HANDSHAKE_TIMEOUT, || has_handshake(mesh.b.name())),
        "b accepts the restarted a"
    );
}

#[test]
fn corrupted_key_file_is_reported() {
    let state = tempfile::Builder::new()
        .prefix("colex-mesh")
        .tempdir()
        .expect("create state dir");
    let key_file = state.path().join(PRIVATE_KEY_FILE_NAME);
    HostKey::load_or_generate(state.path()).expect("generate key");
    std::fs::write(&key_file, "half a key\n").expect("corrupt key file");

    let err = HostKey::load_or_generate(state.path()).expect_err("corrupted key file");
    let message = err.to_string();
    assert!(matches!(err, KeyError::Invalid { .. }), "{message}");
    assert!(
        message.contains(&key_file.display().to_string()),
        "names the file: {message}"
    );
    assert!(
        message.contains("delete the file"),
        "gives the fix: {message}"
    );
    assert_eq!(message.lines().count(), 1, "one line: {message}");
}

#[test]
fn dropped_mesh_leaves_nothing() {
    if !has_root("dropped_mesh_leaves_nothing") {
        return;
    }
    let lab = Lab::new();
    let prefix = format!("cx{}", lab.unique);
    let names = [lab.device_name('a'), lab.device_name('b')];
    let mesh = Mesh::new(&lab);
    for name in &names {
        assert!(uapi_socket_path(name).exists(), "socket of {name}");
    }
    assert!(!threads_named(&prefix).is_empty(), "device threads run");

    drop(mesh);
    for name in &names {
        assert!(
            !uapi_socket_path(name).exists(),
            "socket of {name} is removed"
        );
    }
    // A joined thread can still be listed for a moment: join returns when the thread clears
    // its tid in exit, before the kernel releases the task.
    let deadline = Instant::now() + THREAD_EXIT_WAIT;
    while !threads_named(&prefix).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        threads_named(&prefix).is_empty(),
        "device threads are gone: {:?}",
        threads_named(&prefix)
    );
    let links = lab.a.ip(&["link", "show"]);
    assert!(!links.contains(&names[0]), "link a is removed: {links}");
    let links = lab.b.ip(&["link", "show"]);
    assert!(!links.contains(&names[1]), "link b is removed: {links}");

    let netns_paths = [lab.a.path(), lab.b.path()];
    drop(lab);
    for path in netns_paths {
        assert!(!Path::new(&path).exists(), "{path} is removed");
    }
}

#[test]
fn failed_test_leaves_nothing() {
    if !has_root("failed_test_leaves_nothing") {
        return;
    }
    let unique = std::sync::Mutex::new(String::new());
    let failed = std::panic::catch_unwind(|| {
        let lab = Lab::new();
        *unique.lock().expect("lock") = lab.unique.clone();
        let _mesh = Mesh::new(&lab);
        panic!("a failing check in the middle of a mesh test");
    });
    assert!(failed.is_err(), "the inner test failed");

    let unique = unique.into_inner().expect("lock");
    let prefix = format!("cx{unique}");
    for side in ['a', 'b'] {
        let device = format!("{prefix}w{side}");
        assert!(!uapi_socket_path(&device).exists(), "socket of {device}");
        let netns = format!("/var/run/netns/{prefix}{side}");
        assert!(!Path::new(&netns).exists(), "{netns} is removed");
    }
    assert!(
        wait_for(STOP_TIMEOUT, || threads_named(&prefix).is_empty()),
        "device threads are gone: {:?}",
        threads_named(&prefix)
    );
}

#[test]
fn name_in_use_is_rejected() {
    if !has_root("name_in_use_is_rejected") {
        return;
    }
    let lab = Lab::new();
    let mesh = Mesh::new(&lab);
    let name_a = lab.device_name('a');

    // The UAPI socket path is machine-wide, so the name is taken in b's namespace too.
    let err = create_device(
        &lab.b,
        &name_a,
        &HostKey::generate(),
        BackendChoice::Userspace,
    )
    .expect_err("name of a is in use");
    assert!(matches!(err, DeviceError::NameInUse { .. }), "{err}");
    assert!(uapi_socket_path(&name_a).exists(), "a's socket is kept");
    let (replied, output) = ping(&lab.a, "10.69.202.1");
    assert!(replied, "a still works: {output}");
    drop(mesh);
}

#[test]
fn kernel_choice_without_module_fails() {
    if !has_root("kernel_choice_without_module_fails") {
        return;
    }
    if Path::new("/sys/module/wireguard").exists() {
        eprintln!("skipped kernel_choice_without_module_fails: the wireguard module is loaded");
        return;
    }
    let lab = Lab::new();
    let name = lab.device_name('k');

    let err = create_device(&lab.a, &name, &HostKey::generate(), BackendChoice::Kernel)
        .expect_err("no kernel module");
    assert!(matches!(err, DeviceError::NoKernelModule { .. }), "{err}");
    assert!(err.to_string().contains("userspace backend"), "{err}");
    let links = lab.a.ip(&["link", "show"]);
    assert!(!links.contains(&name), "no link is left: {links}");

    let device = create_device(&lab.a, &name, &HostKey::generate(), BackendChoice::Auto)
        .expect("auto falls back");
    assert_eq!(device.backend(), Backend::Userspace);
}
