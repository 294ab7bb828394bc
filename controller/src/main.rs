//! colex-controller: stores silo specs with Raft and schedules them onto
//! the hosts whose agents hold a session with it.

mod api;
mod applied;
mod auth;
mod blobs;
mod bootstrap_tls;
mod events;
mod id_hash;
mod liveness;
mod metrics;
mod names;
mod placer;
mod raft;
mod relocation;
mod scheduler;
mod security_service;
mod security_state;
mod sessions;
mod spec_bytes;
mod stall_watch;
mod state;
mod tls;
mod tls_server;
mod usage;
mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use clap::Parser;
use colex_proto as proto;
use tokio::signal::unix::{signal, SignalKind};

use crate::api::agent::AgentService;
use crate::api::agent_files::AgentFilesService;
use crate::api::client::ClientService;
use crate::api::exec::{ExecRouter, ExecService};
use crate::api::logs::LogRouter;
use crate::api::members::MembersService;
use crate::api::watch::WatchService;
use crate::liveness::Liveness;
use crate::metrics::{Metrics, TimedUp};
use crate::raft::{RaftNode, StartMode};
use crate::sessions::Sessions;

/// Interval of HTTP/2 keepalive pings, so half-open connections to agents
/// are noticed even when no message flows.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default of --worker-threads. On 2 cores it gave sequential writes about 10 % lower p50,
/// 64-client writes about 9 % fewer per second (`raft_writes` benchmark) and about 20 % fewer
/// placements per second (`placements` benchmark) than two workers.
/// The runtime stays multi-threaded with one worker, rather than tokio's current-thread
/// runtime, so that `block_in_place` can hand the worker's queue to another thread.
const DEFAULT_WORKER_THREADS: u16 = 1;
/// Permissions of the data folder: owner only.
const DATA_DIR_MODE: u32 = 0o700;

#[derive(Debug, Parser)]
#[command(name = "colex-controller", version, about = "The colex controller: stores silos and schedules them onto hosts")]
struct Args {
    /// Address to serve the client, agent, Raft and membership APIs on (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:7069")]
    listen: SocketAddr,

    /// Folder for the Raft log and state. A folder with a controller's node id
    /// resumes it and ignores --bootstrap and --join.
    #[arg(long, default_value = "/var/lib/colex/controller")]
    data_dir: PathBuf,

    /// Start a new cluster with this controller as its only voter.
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,

    /// Join the cluster of these running controllers (HOST:PORT[,HOST:PORT...]):
    /// one of them adds this controller as a learner and promotes it to voter
    /// once it has caught up.
    #[arg(long, value_name = "ADDRS", value_delimiter = ',')]
    join: Vec<String>,

    /// Address other controllers reach this one at; defaults to --listen.
    #[arg(long)]
    advertise: Option<String>,

    /// Milliseconds without a message from a host's agent after which the leader counts the
    /// host as down and places its silos with restart policy on-failure or always on other
    /// hosts. A new leader waits this long for every host to reconnect first. Agents send a
    /// heartbeat every second.
    #[arg(long, value_name = "MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..))]
    host_ttl_ms: u64,

    /// Silo network of the whole cluster in CIDR notation, split into one subnet per host.
    /// Read only with --bootstrap when the cluster is created; later starts keep the stored one.
    #[arg(long, value_name = "CIDR", default_value = "10.69.0.0/16", env = "COLEX_CLUSTER_CIDR")]
    cluster_cidr: String,

    /// Prefix length of each host's silo subnet inside --cluster-cidr; 24 gives each host 253
    /// silo addresses. Read only with --bootstrap, like --cluster-cidr.
    #[arg(long, value_name = "LEN", default_value_t = state::HOST_PREFIX_LEN, env = "COLEX_HOST_PREFIX")]
    host_prefix: u8,

    /// Address to serve Prometheus metrics on (HOST:PORT), as text at /metrics over HTTP.
    /// Without it no metrics endpoint is served.
    #[arg(long, value_name = "ADDR", env = "COLEX_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// Largest total of the file contents the cluster stores, in bytes. Each distinct content
    /// of the silos' `file` blocks counts once; `up` rejects a request that would exceed it.
    /// Every controller keeps all contents in memory and in its snapshots.
    #[arg(long, value_name = "BYTES", default_value_t = blobs::DEFAULT_MAX_TOTAL_CONTENT_BYTES, env = "COLEX_MAX_FILE_CONTENT_BYTES")]
    max_file_content_bytes: u64,
    /// Serve and connect in plain text, without certificates: anyone who reaches the port
    /// controls the cluster. For benchmarks and trials only.
    #[arg(long, env = "COLEX_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,

    /// Seconds the enrollment key made at --bootstrap, or by `colex-cli enroll --reopen`
    /// without --window, stays valid.
    #[arg(long, value_name = "SECS", default_value_t = 35, value_parser = clap::value_parser!(u64).range(1..))]
    enrollment_window: u64,

    /// Join token (`colex-cli tokens create --role controller`) of a controller that starts
    /// with --join and has no certificate yet.
    #[arg(long, env = "COLEX_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Worker threads of the async runtime that serves every API and runs Raft. One keeps a
    /// write's hand-overs between tasks on one thread, which costs less than waking another
    /// thread. The leader's log syncs, storage transactions and the long builds of `list` and
    /// `hosts` run on other threads anyway. Raise it for more placements per second, or when
    /// the log warns of runtime stalls (metric `colex_runtime_stalls_total`).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WORKER_THREADS, env = "COLEX_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: u16,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    if let Err(error) = runtime.block_on(run(args)) {
        // One line with every cause, such as the missing --bootstrap or --join.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Checked before anything is created, so a typo costs no data folder.
    let network = state::ClusterNetwork::parse(&args.cluster_cidr, args.host_prefix)?;
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(stall_watch::watch(metrics.runtime_stalls()));
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data folder {}", args.data_dir.display()))?;
    // The folder contains the controller's key and, in the Raft state, the authority's key.
    std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(DATA_DIR_MODE))
        .with_context(|| format!("cannot make data folder {} private", args.data_dir.display()))?;
    let advertise = args.advertise.clone().unwrap_or_else(|| args.listen.to_string());

    // Bind before starting Raft so a taken port fails fast with a clear message.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}; pick a free address with --listen", args.listen))?;
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };

    if args.insecure {
        tracing::warn!("--insecure: serving and connecting in plain text without certificates; anyone who reaches {} controls the cluster", args.listen);
    }
    // Credentials before Raft starts, so that a joining controller requests its node id over TLS.
    let mut credentials = if args.insecure {
        None
    } else {
        bootstrap_tls::load_or_join(&args.data_dir, &args.join, args.token.as_deref(), &advertise).await?
    };
    if let Some(credentials) = &credentials {
        tls::use_peer_tls(credentials);
    }

    let start = if args.bootstrap {
        StartMode::Bootstrap
    } else if !args.join.is_empty() {
        StartMode::Join(args.join.clone())
    } else {
        StartMode::Resume
    };
    let node = RaftNode::open(&args.data_dir, &advertise, start)
        .await
        .with_context(|| format!("cannot open the controller state in {}", args.data_dir.display()))?;
    tracing::info!(listen = %args.listen, data_dir = %args.data_dir.display(), node_id = node.id, "controller started");
    if args.bootstrap {
        // Before the server accepts agents, so no host gets a subnet of another network.
        set_cluster_network(&node, network).await?;
    }
    if !args.insecure && credentials.is_none() {
        if !args.bootstrap {
            anyhow::bail!(
                "{} has no controller certificate ({}); start a new cluster with --bootstrap, join one with --join and --token, or run with --insecure",
                args.data_dir.display(),
                tls::CERT_FILE
            );
        }
        let created = bootstrap_tls::create_authority(&node, &args.data_dir).await?;
        tls::use_peer_tls(&created);
        credentials = Some(created);
        let window = Duration::from_secs(args.enrollment_window);
        bootstrap_tls::open_first_enrollment(&node, &args.data_dir, window).await?;
    }

    let sessions = Sessions::with_liveness(Liveness::new(Duration::from_millis(args.host_ttl_ms)));
    if let Some(listener) = metrics_listener {
        tracing::info!(listen = ?args.metrics_listen, path = metrics::METRICS_PATH, "serving metrics");
        tokio::spawn(metrics::serve(listener, Arc::clone(&metrics), node.clone(), sessions.clone()));
    }
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    // One router pairs log requests from clients with the agent sessions that serve them.
    let logs = LogRouter::default();
    let client_service =
        ClientService::new(node.clone(), sessions.clone(), logs.clone()).with_max_file_content_bytes(args.max_file_content_bytes);
    let client = proto::client_server::ClientServer::new(client_service)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
    let client = TimedUp::new(client, metrics);
    let watch = WatchService::server(node.clone(), sessions.clone());
    // Another pairs execs from clients with the agent sessions that run them.
    let execs = ExecRouter::default();
    let exec = proto::exec_server::ExecServer::new(ExecService::new(node.clone(), execs.clone()))
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
    let agent_files = AgentFilesService::server(node.clone(), sessions.clone());
    let agent = proto::agent_server::AgentServer::new(AgentService::new(node.clone(), sessions, logs, stopping_rx.clone()).with_execs(execs))
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);

    let verifier = match &credentials {
        Some(credentials) => Some(tls_server::ChainVerifier::new(&credentials.authority_pem)?),
        None => None,
    };
    let security = security_service::SecurityService::server(
        node.clone(),
        args.data_dir.clone(),
        Duration::from_secs(args.enrollment_window),
    );
    // Connections that open an AppendEntries link are served beside gRPC, on the same port.
    let mut links = raft::link::LinkServer::new(node.raft.clone(), stopping_rx.clone());
    if let Some(verifier) = &verifier {
        links = links.with_authorization(verifier.clone(), node.state.clone());
    }
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(auth::AuthLayer::new(node.state.clone(), verifier))
        .add_service(client)
        .add_service(exec)
        .add_service(agent)
        .add_service(agent_files)
        .add_service(watch)
        .add_service(raft::raft_service(&node, stopping_rx.clone()))
        .add_service(MembersService::server(node.clone()))
        .add_service(security);
    let stopped = async move {
        shutdown_signal().await;
        // Agent sessions are endless streams: end them so the server
        // can finish its graceful shutdown.
        let _ = stopping_tx.send(true);
    };
    match &credentials {
        Some(credentials) => {
            let acceptor = tls_server::acceptor(credentials).context("invalid TLS settings from the certificate files")?;
            router
                .serve_with_incoming_shutdown(tls_server::incoming(listener, acceptor, links), stopped)
                .await
        }
        None => {
            router.serve_with_incoming_shutdown(raft::link::plain_incoming(listener, links), stopped).await
        }
    }
    .context("gRPC server failed")?;

    tracing::info!("controller stopping");
    node.shutdown().await.context("Raft did not shut down cleanly")?;
    tracing::info!("controller stopped");
    Ok(())
}

/// Stores the cluster network of a new cluster. A cluster that already has hosts or a stored
/// network keeps what it has, because running silos hold addresses from it, and a differing
/// request is logged.
async fn set_cluster_network(node: &RaftNode, network: state::ClusterNetwork) -> anyhow::Result<()> {
    let (current, settled) = {
        let state = node.state.read().await;
        (state.cluster_network(), state.network.is_some() || !state.hosts.is_empty())
    };
    if current == network {
        return Ok(());
    }
    if settled {
        tracing::warn!(requested = %network.cidr(), current = %current.cidr(), "the cluster network is set only when the cluster is created; keeping the stored one");
        return Ok(());
    }
    let response = node
        .write(state::Command::SetClusterNetwork { network })
        .await
        .with_context(|| format!("cannot store the cluster network {}", network.cidr()))?;
    if let state::Response::Rejected { reason } = response {
        anyhow::bail!("cannot store the cluster network {}: {reason}", network.cidr());
    }
    tracing::info!(cluster_network = %network.cidr(), host_prefix = network.host_prefix_len, "cluster network set");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM; stop the controller with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
