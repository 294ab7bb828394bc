//! Root tests of the silo DNS resolver, each in a fresh network namespace of its own. Names
//! outside `.silo` are forwarded to an upstream resolver that the test runs in that namespace.
//! A silent upstream gives SERVFAIL after the timeout, and silo names are answered over UDP and
//! TCP without a query upstream.
//!
//! The namespace's loopback link gets documentation-range addresses: the resolver on
//! 198.51.100.1, an answering upstream on 198.51.100.53 and a silent one on 198.51.100.54. It
//! disappears with the test thread. Without root the tests are skipped, unless CI=true.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use colex_agent::dns::{NameTable, Resolver, ResolverConfig};
use colex_proto as proto;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

mod common;
use common::*;

const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const SILENT_UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 54);
/// Address the fake upstream returns for every name.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const DNS_PORT: u16 = 53;
/// Time the resolver gives each upstream in these tests.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(500);
/// Time the test client waits for the resolver's reply; far above `UPSTREAM_TIMEOUT` times the
/// number of upstreams.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Adds the test's addresses to the loopback link of the current network namespace, which
/// needs no kernel module, unlike a dummy link.
fn add_addresses() {
    for address in [RESOLVER, UPSTREAM, SILENT_UPSTREAM] {
        run(BUSYBOX, &["ip", "addr", "add", &format!("{address}/32"), "dev", "lo"]);
    }
}

/// Runs a fake upstream on `UPSTREAM:53` that replies to every query with `UPSTREAM_ANSWER`.
/// Returns a counter of the queries it received.
async fn start_upstream() -> Arc<std::sync::atomic::AtomicUsize> {
    let socket = UdpSocket::bind((UPSTREAM, DNS_PORT)).await.expect("bind the fake upstream");
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    tokio::spawn(async move {
        let mut buffer = vec![0; 4096];
        loop {
            let Ok((length, client)) = socket.recv_from(&mut buffer).await else {
                continue;
            };
            let Ok(request) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut reply = Message::response(request.metadata.id, OpCode::Query);
            reply.metadata.recursion_available = true;
            reply.add_queries(request.queries.iter().cloned());
            if let Some(query) = request.queries.first() {
                reply.add_answer(Record::from_rdata(query.name.clone(), 60, RData::A(A(UPSTREAM_ANSWER))));
            }
            let bytes = reply.to_vec().expect("the fake reply encodes");
            let _ = socket.send_to(&bytes, client).await;
        }
    });
    received
}

/// Binds `SILENT_UPSTREAM:53` and never replies; the socket lives as long as the return value.
async fn start_silent_upstream() -> UdpSocket {
    UdpSocket::bind((SILENT_UPSTREAM, DNS_PORT)).await.expect("bind the silent upstream")
}

/// Starts the resolver on `RESOLVER:53` with two silo instances of `web` and one `hostnames`
/// entry.
async fn start_resolver(upstreams: &[Ipv4Addr]) -> Resolver {
    let hostnames = BTreeMap::from([("db.internal".to_owned(), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))]);
    let mut table = NameTable::new(&hostnames);
    table.set_names(&proto::Names {
        names: vec![
            proto::SiloName {
                silo: "web".to_owned(),
                index: 0,
                addresses: vec!["10.69.1.2".to_owned()],
                ..Default::default()
            },
            proto::SiloName {
                silo: "web".to_owned(),
                index: 1,
                addresses: vec!["10.69.2.2".to_owned()],
                ..Default::default()
            },
        ],
    });
    let config = ResolverConfig {
        listen: SocketAddr::new(IpAddr::V4(RESOLVER), DNS_PORT),
        upstreams: upstreams.iter().map(|address| SocketAddr::new(IpAddr::V4(*address), DNS_PORT)).collect(),
        upstream_timeout: UPSTREAM_TIMEOUT,
    };
    Resolver::start(config, Arc::new(RwLock::new(table)))
        .await
        .expect("start the resolver")
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut request = Message::new(id, MessageType::Query, OpCode::Query);
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(Name::from_str(name).expect("valid name"), RecordType::A));
    request.to_vec().expect("the query encodes")
}

/// Sends a UDP query for `name` to the resolver and returns its reply.
async fn ask_udp(name: &str, id: u16) -> Message {
    let socket = UdpSocket::bind((RESOLVER, 0)).await.expect("bind the client");
    socket.connect((RESOLVER, DNS_PORT)).await.expect("connect the client");
    socket.send(&query(name, id)).await.expect("send the query");
    let mut buffer = vec![0; 4096];
    let length = tokio::time::timeout(CLIENT_TIMEOUT, socket.recv(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("no reply for {name} within {CLIENT_TIMEOUT:?}"))
        .expect("receive the reply");
    let reply = Message::from_vec(&buffer[..length]).expect("the reply decodes");
    assert_eq!(reply.metadata.id, id, "reply id for {name}");
    reply
}

/// Sends a TCP query for `name` to the resolver and returns its reply.
async fn ask_tcp(name: &str, id: u16) -> Message {
    let mut stream = TcpStream::connect((RESOLVER, DNS_PORT)).await.expect("connect over TCP");
    let request = query(name, id);
    stream
        .write_u16(u16::try_from(request.len()).expect("a short query"))
        .await
        .expect("send the length");
    stream.write_all(&request).await.expect("send the query");
    let reply = tokio::time::timeout(CLIENT_TIMEOUT, async {
        let length = stream.read_u16().await?;
        let mut reply = vec![0; usize::from(length)];
        stream.read_exact(&mut reply).await?;
        std::io::Result::Ok(reply)
    })
    .await
    .unwrap_or_else(|_| panic!("no TCP reply for {name} within {CLIENT_TIMEOUT:?}"))
    .expect("read the TCP reply");
    Message::from_vec(&reply).expect("the TCP reply decodes")
}

fn addresses(reply: &Message) -> Vec<String> {
    reply
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// Runs `test` as root in a fresh network namespace that has the test addresses, on a tokio
/// runtime. Skips with a printed reason when not root.
fn in_resolver_netns<F>(name: &str, test: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    if !has_root(name) {
        return;
    }
    in_netns(|| {
        add_addresses();
        block_on(test());
    });
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn other_names_are_forwarded_upstream() {
    in_resolver_netns("other_names_are_forwarded_upstream", || async {
        let received = start_upstream().await;
        let _resolver = start_resolver(&[UPSTREAM]).await;

        let reply = ask_udp("example.test.", 0x0101).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&reply), [UPSTREAM_ANSWER.to_string()]);
        assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);

        let reply = ask_tcp("example.test.", 0x0102).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&reply), [UPSTREAM_ANSWER.to_string()]);
    });
}

#[test]
fn silo_names_are_answered_locally() {
    in_resolver_netns("silo_names_are_answered_locally", || async {
        let received = start_upstream().await;
        let _resolver = start_resolver(&[UPSTREAM]).await;

        let reply = ask_udp("web.silo.", 0x0201).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&reply), ["10.69.1.2", "10.69.2.2"]);

        let reply = ask_tcp("1.WEB.silo.", 0x0202).await;
        assert_eq!(addresses(&reply), ["10.69.2.2"]);

        let reply = ask_udp("db.internal.", 0x0203).await;
        assert_eq!(addresses(&reply), ["10.1.2.3"]);

        let reply = ask_udp("missing.silo.", 0x0204).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

        assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 0, "a local name went upstream");
    });
}

#[test]
fn silent_upstream_gives_servfail() {
    in_resolver_netns("silent_upstream_gives_servfail", || async {
        let _silent = start_silent_upstream().await;
        let _resolver = start_resolver(&[SILENT_UPSTREAM]).await;

        let started = Instant::now();
        let reply = ask_udp("example.test.", 0x0301).await;
        let waited = started.elapsed();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(addresses(&reply).is_empty());
        assert!(waited >= UPSTREAM_TIMEOUT, "SERVFAIL after {waited:?}, before the upstream timeout");
    });
}

#[test]
fn silent_upstream_is_skipped() {
    in_resolver_netns("silent_upstream_is_skipped", || async {
        let _silent = start_silent_upstream().await;
        let received = start_upstream().await;
        let _resolver = start_resolver(&[SILENT_UPSTREAM, UPSTREAM]).await;

        let reply = ask_udp("example.test.", 0x0401).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&reply), [UPSTREAM_ANSWER.to_string()]);
        assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);
    });
}
