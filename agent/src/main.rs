//! colex-agent: runs the silos the controller assigns to this host.

mod credentials;

use std::path::PathBuf;

use anyhow::Context;

/// File name of the small helper binary installed next to colex-agent.
const HELPER_BINARY: &str = "colex-silo-helper";
use clap::Parser;
use colex_agent::session::{Agent, AgentConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(name = "colex-agent", version, about = "The colex agent: runs the silos the controller assigns to this host")]
struct Args {
    /// Controller addresses (HOST:PORT[,HOST:PORT...]) to register with. The agent
    /// tries them in turn and opens its session with the leader.
    #[arg(long, value_name = "CONTROLLER_ADDRS")]
    join: String,

    /// Host name, unique in the cluster; defaults to the system host name.
    #[arg(long)]
    name: Option<String>,

    /// Folder for this agent's silo state; defaults to /var/lib/colex/agent/HOST.
    #[arg(long)]
    state_dir: Option<PathBuf>,

    /// Folder for the silos' runtime records and address leases, best on tmpfs; defaults to
    /// /run/colex/agent/HOST, or to STATE_DIR/run when --state-dir is given.
    #[arg(long)]
    run_dir: Option<PathBuf>,

    /// Bridge that connects this host's silos.
    #[arg(long, default_value = "colex0")]
    bridge: String,

    /// Address reported to the controller; defaults to the address this host
    /// uses to reach the controller.
    #[arg(long)]
    address: Option<String>,

    /// Static busybox binary the built-in image is made from.
    #[arg(long, default_value = colex_agent::runtime::DEFAULT_BUSYBOX_PATH)]
    busybox: PathBuf,

    /// Agent configuration file (HCL) declaring the images, bind sources and labels this host
    /// offers; see docs/agent-config.md. Without it the host offers only the busybox image.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Join token (`colex-cli tokens create --role agent`) for a host without a certificate in
    /// its state folder, or whose certificate was revoked. A restart with a valid certificate
    /// needs none.
    #[arg(long, env = "COLEX_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Connect in plain text without a certificate, to a controller started with --insecure.
    #[arg(long, env = "COLEX_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,
}

/// First argument that runs [`teardown`] instead of the agent.
const TEARDOWN_COMMAND: &str = "teardown";
/// Placeholder subnet for a teardown, which creates no address and so needs none.
const TEARDOWN_SUBNET: &str = "10.69.0.0/24";
/// Environment variable naming a failpoint of the silo start path; tests only.
const FAILPOINT_ENV: &str = "COLEX_FAILPOINT";

/// `colex-agent teardown`: removes what an agent of one host left on this machine.
#[derive(Debug, Parser)]
#[command(
    name = "colex-agent teardown",
    about = "Stop and remove every silo of a host and its mesh device, bridge, iptables chain and cgroup dir; run it after the agent has stopped"
)]
struct TeardownArgs {
    /// Host name the agent ran with; defaults to the system host name.
    #[arg(long)]
    name: Option<String>,

    /// The agent's state folder; defaults to /var/lib/colex/agent/HOST.
    #[arg(long)]
    state_dir: Option<PathBuf>,

    /// The agent's run folder; defaults as the agent's does.
    #[arg(long)]
    run_dir: Option<PathBuf>,

    /// Bridge the agent's silos were attached to.
    #[arg(long, default_value = "colex0")]
    bridge: String,
}

/// Removes every silo recorded in the state folder and the host objects, in the calling
/// process's network namespace.
fn teardown(args: TeardownArgs) -> anyhow::Result<()> {
    let host_name = host_name_or_system(args.name)?;
    let (state_dir, run_dir) = agent_dirs(&host_name, args.state_dir, args.run_dir);
    remove_mesh_leftovers(&state_dir)?;
    let helper_exe = helper_exe()?;
    let subnet = TEARDOWN_SUBNET.parse().context("invalid teardown subnet literal")?;
    let mut config = colex_agent::runtime::RuntimeConfig::new(host_name.clone(), state_dir, args.bridge, subnet, helper_exe);
    config.run_dir = run_dir;
    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    runtime
        .block_on(colex_agent::runtime::Runtime::teardown(config))
        .with_context(|| format!("teardown of host {host_name} was incomplete; run it again"))?;
    tracing::info!(host = %host_name, "host torn down");
    Ok(())
}

/// Removes the mesh device a killed agent left: its stale UAPI socket, or its kernel link.
/// Without a state dir there was never a device to remove.
fn remove_mesh_leftovers(state_dir: &std::path::Path) -> anyhow::Result<()> {
    let Ok(state_dir) = state_dir.canonicalize() else {
        return Ok(());
    };
    let name = colex_agent::mesh::host_mesh::interface_name(&state_dir);
    colex_agent::mesh::device::remove_leftover(&name)
        .with_context(|| format!("cannot remove the mesh device {name}; stop the agent before its teardown"))
}

/// Returns the state dir and the run dir of host `host_name`. A given state dir without a run
/// dir keeps both in one place, as tests and one-machine setups want. The defaults follow the
/// file system hierarchy, where /run is a tmpfs.
fn agent_dirs(host_name: &str, state_dir: Option<PathBuf>, run_dir: Option<PathBuf>) -> (PathBuf, PathBuf) {
    match (state_dir, run_dir) {
        (Some(state_dir), Some(run_dir)) => (state_dir, run_dir),
        (Some(state_dir), None) => {
            let run_dir = state_dir.join(colex_agent::runtime::DEFAULT_RUN_DIR_NAME);
            (state_dir, run_dir)
        }
        (None, run_dir) => (
            PathBuf::from("/var/lib/colex/agent").join(host_name),
            run_dir.unwrap_or_else(|| PathBuf::from("/run/colex/agent").join(host_name)),
        ),
    }
}

fn host_name_or_system(name: Option<String>) -> anyhow::Result<String> {
    match name {
        Some(name) => Ok(name),
        None => Ok(nix::unistd::gethostname()
            .context("cannot read the system host name; pass --name")?
            .to_string_lossy()
            .into_owned()),
    }
}

fn main() -> anyhow::Result<()> {
    // The helper must run before any thread exists, so it is checked before
    // argument parsing and before the tokio runtime starts.
    if std::env::args_os().nth(1).is_some_and(|arg| arg == colex_agent::runtime::HELPER_ARG) {
        colex_agent::runtime::helper_main();
    }
    // The same for `colex-cli exec` commands, when this executable replaces the helper.
    if std::env::args_os().nth(1).is_some_and(|arg| arg == colex_agent::runtime::EXEC_HELPER_ARG) {
        colex_agent::runtime::exec_helper_main();
    }

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if std::env::args_os().nth(1).is_some_and(|arg| arg == TEARDOWN_COMMAND) {
        return teardown(TeardownArgs::parse_from(std::env::args_os().skip(1)));
    }
    let args = Args::parse();

    let host_name = match args.name {
        Some(name) => name,
        None => nix::unistd::gethostname()
            .context("cannot read the system host name; pass --name")?
            .to_string_lossy()
            .into_owned(),
    };
    let (state_dir, run_dir) = agent_dirs(&host_name, args.state_dir, args.run_dir);
    let helper_exe = helper_exe()?;
    let settings = match &args.config {
        Some(path) => colex_agent::config::load(path)?,
        None => colex_agent::config::AgentSettings::default(),
    };
    let token = args.token.clone().filter(|token| !token.trim().is_empty());
    let insecure = args.insecure;
    let config = AgentConfig {
        controller: args.join,
        host_name,
        address: args.address,
        state_dir,
        run_dir,
        bridge: args.bridge,
        helper_exe,
        busybox: args.busybox,
        settings,
        failpoint: std::env::var(FAILPOINT_ENV).ok().filter(|name| !name.is_empty()),
    };

    let runtime = tokio::runtime::Runtime::new().context("failed to start the async runtime")?;
    runtime.block_on(async move {
        if insecure {
            tracing::warn!("--insecure: connecting to the controllers in plain text without a certificate");
        } else {
            let credentials = credentials::obtain(&config.state_dir, &config.host_name, &config.controller, token.as_deref()).await?;
            colex_agent::controllers::use_tls(credentials.client_config());
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            let _ = shutdown_tx.send(true);
        });
        tracing::info!(host = %config.host_name, controller = %config.controller, "agent started");
        Agent::new(config, shutdown_rx).run().await
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM; stop the agent with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Returns the program to spawn as each silo's helper: `colex-silo-helper` next to this
/// executable, which starts faster, or else this executable in its `silo-helper` mode.
fn helper_exe() -> anyhow::Result<PathBuf> {
    let own = std::env::current_exe().context("cannot find the agent's own executable")?;
    let sibling = own.with_file_name(HELPER_BINARY);
    if sibling.is_file() {
        return Ok(sibling);
    }
    tracing::info!(missing = %sibling.display(), "using the agent executable as the silo helper");
    Ok(own)
}
