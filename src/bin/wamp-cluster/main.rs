//! The `wamp-cluster` program: `wamp-cluster node --config config/node.toml`.
//!
//! Reads the configuration (file, then `WAMP_CLUSTER_*` variables, then flags), sets up logs and
//! metrics, starts the node and its WAMP router (`[router]`), and waits. SIGINT, SIGTERM and `POST /cluster/leave` mean a graceful
//! leave, then exit 0; a second signal during the leave stops at once (exit 1). Exit codes: 0 after a leave, 1 when the node failed (such as another
//! process using its node id), 2 for a bad configuration or command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
#[cfg(feature = "testkit")]
mod traffic;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use wamp_cluster::config::{Key, Layers, Origin};
use wamp_cluster::router::config::RouterConfig;
use wamp_cluster::router::{Router, RouterError};
use wamp_cluster::{Config, ConfigError, Node, NodeError, Stopped};

#[derive(Parser)]
#[command(
    name = "wamp-cluster",
    version,
    about = "Cluster node for WAMP routers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node until SIGINT, SIGTERM or `POST /cluster/leave`.
    Node(NodeArgs),
}

/// The flags of `wamp-cluster node` besides one per configuration key (those are added from
/// the key table, see [`key_flags`]).
#[derive(clap::Args)]
struct NodeArgs {
    /// TOML configuration file (keys: see the README). Without it, defaults apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Test traffic and its record (with the `testkit` feature).
    #[cfg(feature = "testkit")]
    #[command(flatten)]
    traffic: traffic::TrafficArgs,
    /// Log format on standard error. `RUST_LOG` filters (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// One flag per configuration key, from the key table: `--gossip-interval-ms` sets
/// `gossip.interval_ms`. A list key's flag may be repeated, under its name or its singular
/// (`--seed A --seed B`), and replaces the list.
fn key_flags(command: clap::Command, keys: &[Key]) -> clap::Command {
    keys.iter().fold(command, |command, key| {
        let flag = key.flag();
        let mut arg = clap::Arg::new(key.name.clone())
            .long(flag.clone())
            .value_name("VALUE")
            .help(format!("Sets `{}`", key.name))
            .allow_hyphen_values(true)
            .help_heading("Configuration keys");
        if key.list {
            arg = arg.action(clap::ArgAction::Append);
            if let Some(singular) = flag.strip_suffix('s') {
                arg = arg.visible_alias(singular.to_string());
            }
        }
        command.arg(arg)
    })
}

/// The configuration's layers: defaults (`layers`), file, environment, flags.
fn layers(
    mut layers: Layers,
    args: &NodeArgs,
    matches: &clap::ArgMatches,
) -> Result<Layers, ConfigError> {
    if let Some(path) = &args.config {
        layers = layers.file(path)?;
    }
    layers = layers.env(std::env::vars_os())?;
    let keys = layers.keys().to_vec();
    for key in keys {
        if let Some(values) = matches.get_many::<String>(&key.name) {
            let raw = values.map(String::as_str).collect::<Vec<_>>().join(",");
            layers.set(&key.name, &raw, Origin::Flag(key.flag()))?;
        }
    }
    Ok(layers)
}

/// Lines a second of chitchat's own logs: it warns for every datagram it cannot read, so a
/// flood of garbage at the gossip port would otherwise be a flood of lines.
const GOSSIP_LOG_LINES_PER_SEC: u32 = 10;

fn init_logging(format: LogFormat) {
    use tracing_subscriber::prelude::*;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let limiter = wamp_cluster::log_limit::Limiter::new(GOSSIP_LOG_LINES_PER_SEC);
    // Asked for every event (a plain `filter_fn` is asked once per call site).
    let gossip_limit = tracing_subscriber::filter::dynamic_filter_fn(move |meta, _| {
        if !meta.is_event() || !meta.target().starts_with("chitchat") {
            return true;
        }
        match limiter.check(std::time::Instant::now()) {
            Some(left_out) => {
                if left_out > 0 {
                    metrics::counter!(wamp_cluster::metrics::LOG_LINES_LEFT_OUT, "target" => "chitchat")
                        .increment(left_out);
                }
                true
            }
            None => false,
        }
    });
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(layer.with_filter(gossip_limit)).init(),
        LogFormat::Json => registry.with(layer.json().with_filter(gossip_limit)).init(),
    }
}

fn main() -> ExitCode {
    let defaults = Layers::new().section::<RouterConfig>();
    let matches = Cli::command()
        .mut_subcommand("node", |node| key_flags(node, defaults.keys()))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let Command::Node(args) = cli.command;
    // The subcommand is required: clap has exited without it.
    let node_matches = matches.subcommand_matches("node").unwrap_or(&matches);
    init_logging(args.log_format);
    let read = layers(defaults, &args, node_matches)
        .and_then(|l| Ok(((l.config()?, l.get::<RouterConfig>()?), l)));
    let ((config, router), layers) = match read {
        Ok(read) => read,
        Err(err) => {
            eprintln!("wamp-cluster: {err:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wamp-cluster: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(feature = "testkit")]
    if let Err(err) = args.traffic.check() {
        eprintln!("wamp-cluster: {err}");
        return ExitCode::from(2);
    }
    match runtime.block_on(run(config, router, &layers, args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            eprintln!("wamp-cluster: {err:#}");
            // A file the configuration names, read as the node starts, is a configuration
            // error too.
            let config_error =
                matches!(err.downcast_ref::<NodeError>(), Some(NodeError::Config(_)))
                    || matches!(
                        err.downcast_ref::<RouterError>(),
                        Some(RouterError::Config(_))
                    );
            if config_error {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(
    config: Config,
    router: RouterConfig,
    layers: &Layers,
    args: NodeArgs,
) -> anyhow::Result<()> {
    let prometheus = wamp_cluster::metrics::install_prometheus().map_err(anyhow::Error::msg)?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Without a router, messages forwarded to this node are acked and dropped; with a record
    // directory, test traffic is recorded before it is acked.
    #[cfg(feature = "testkit")]
    let handler = args.traffic.handler()?;
    #[cfg(not(feature = "testkit"))]
    let handler: std::sync::Arc<dyn wamp_cluster::Deliver> = {
        let _ = &args;
        std::sync::Arc::new(wamp_cluster::Discard)
    };
    // The router first: its admin routes are the node's too. A bad `[router]` is found before
    // the node joins anything.
    let router = Router::start(router, &config.node_id, &config.tls)
        .await
        .map_err(|err| match err {
            RouterError::Config(err) => RouterError::Config(layers.locate(err)),
            other => other,
        })?;
    let builder = Node::builder(config, move |_, _| handler)
        .prometheus(prometheus)
        .admin_routes(router.admin_routes());
    #[cfg(feature = "testkit")]
    let builder = match args.traffic.generation() {
        Some(generation) => builder.generation(generation),
        None => builder,
    };
    let node = builder
        .start()
        .await
        // A file that a key names is read as the node starts: say where the key was set.
        .map_err(|err| match err {
            NodeError::Config(err) => NodeError::Config(layers.locate(err)),
            other => other,
        })?;
    // The one line a person or a script looks for: where WAMP clients connect.
    info!(url = %router.ws_url(), rawsocket = ?router.rawsocket_addr(), "WAMP router ready");
    #[cfg(feature = "testkit")]
    let traffic = args.traffic.start(&node);
    let stopped = tokio::select! {
        _ = sigterm.recv() => { info!("SIGTERM: leaving"); None }
        _ = sigint.recv() => { info!("SIGINT: leaving"); None }
        // A leave through the admin API, or a failure: the node stopped by itself.
        stopped = node.stopped() => Some(stopped),
    };
    // The traffic ends before the node leaves, so that its calls in flight end normally; the
    // router says GOODBYE to its clients before the node leaves.
    #[cfg(feature = "testkit")]
    traffic.stop().await;
    router.shutdown().await;
    let stopped = match stopped {
        Some(stopped) => stopped,
        // A second signal during the leave means: stop now.
        None => tokio::select! {
            stopped = node.leave() => stopped,
            _ = sigterm.recv() => anyhow::bail!("SIGTERM during the leave: stopped at once"),
            _ = sigint.recv() => anyhow::bail!("SIGINT during the leave: stopped at once"),
        },
    };
    match stopped {
        Stopped::Failed(err) => Err(err.into()),
        stopped => {
            info!(?stopped, "left the cluster");
            Ok(())
        }
    }
}
