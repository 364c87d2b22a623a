//! The `wamp-cluster` program: `wamp-cluster node --config config/node.toml`.
//!
//! Reads the configuration (file, then `WAMP_CLUSTER_*` variables, then flags), sets up logs and
//! metrics, starts the node and waits. SIGINT, SIGTERM and `POST /cluster/leave` mean a graceful
//! leave, then exit 0; a second signal during the leave stops at once (exit 1). Exit codes: 0 after a leave, 1 when the node failed (such as another
//! process using its node id), 2 for a bad configuration or command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use tokio_util::sync::CancellationToken;
use wamp_cluster::config::{Key, Layers, Origin};
use wamp_cluster::traffic::{record_events, run_traffic, RecordingDeliver};
use wamp_cluster::{Config, ConfigError, Node, NodeError};

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
    /// Send test traffic to the other live nodes at this many messages per second (see the
    /// `traffic` module).
    #[arg(long, value_name = "PER_SECOND")]
    traffic_rate: Option<f64>,
    /// Record deliveries (before acking) and traffic outcomes in this directory.
    #[arg(long, value_name = "DIR")]
    record_dir: Option<PathBuf>,
    /// Test-only: ack test traffic without recording it, a broken node for the checker to
    /// catch.
    #[arg(long, hide = true, requires = "record_dir")]
    test_ack_without_delivery: bool,
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

/// The configuration: defaults, file, environment, flags; validated.
fn config(args: &NodeArgs, matches: &clap::ArgMatches) -> Result<Config, ConfigError> {
    let mut layers = Layers::new();
    if let Some(path) = &args.config {
        layers = layers.file(path)?;
    }
    layers = layers.env(std::env::vars())?;
    let keys = layers.keys().to_vec();
    for key in keys {
        if let Some(values) = matches.get_many::<String>(&key.name) {
            let raw = values.map(String::as_str).collect::<Vec<_>>().join(",");
            layers.set(&key.name, &raw, Origin::Flag(key.flag()))?;
        }
    }
    layers.config()
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
    let keys = Layers::new().keys().to_vec();
    let matches = Cli::command()
        .mut_subcommand("node", |node| key_flags(node, &keys))
        .get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let Command::Node(args) = cli.command;
    let Some(node_matches) = matches.subcommand_matches("node") else {
        return ExitCode::from(2);
    };
    init_logging(args.log_format);
    let config = match config(&args, node_matches) {
        Ok(config) => config,
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
    if let Some(rate) = args.traffic_rate {
        if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
            eprintln!("wamp-cluster: --traffic-rate must be between 0 and 1000000");
            return ExitCode::from(2);
        }
    }
    let traffic = Traffic {
        rate: args.traffic_rate,
        record_dir: args.record_dir.clone(),
        ack_without_delivery: args.test_ack_without_delivery,
    };
    match runtime.block_on(run(config, traffic)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            eprintln!("wamp-cluster: {err:#}");
            // A file the configuration names, read as the node starts, is a configuration
            // error too.
            match err.downcast_ref::<NodeError>() {
                Some(NodeError::Config(_)) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// What the node does besides serving: test traffic and its record.
struct Traffic {
    rate: Option<f64>,
    record_dir: Option<PathBuf>,
    ack_without_delivery: bool,
}

/// How long stopping waits for the test traffic's calls to end (each ends by its timeout).
const TRAFFIC_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

async fn run(config: Config, traffic: Traffic) -> anyhow::Result<()> {
    let prometheus = wamp_cluster::metrics::install_prometheus().map_err(anyhow::Error::msg)?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut builder = Node::builder(config).prometheus(prometheus);
    if let Some(dir) = &traffic.record_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the record directory {}", dir.display()))?;
        let mut recording = RecordingDeliver::open(dir).context("opening the delivery log")?;
        if traffic.ack_without_delivery {
            warn!("test switch: acking test traffic without delivering it");
            recording = recording.ack_without_delivery();
        }
        let recording = Arc::new(recording);
        builder = builder
            .delivery_counters(recording.log.clone())
            .deliver(recording);
    }
    let node = builder.start().await?;
    let stop_traffic = CancellationToken::new();
    let events = traffic.record_dir.clone().map(|dir| {
        let membership = node.membership().clone();
        let stop = stop_traffic.clone();
        tokio::spawn(async move { record_events(membership, &dir, stop).await })
    });
    let sender = traffic.rate.map(|rate| {
        let forwarder = node.forwarder().clone();
        let membership = node.membership().clone();
        let stop = stop_traffic.clone();
        let dir = traffic.record_dir.clone();
        tokio::spawn(
            async move { run_traffic(forwarder, membership, rate, dir.as_deref(), stop).await },
        )
    });
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: leaving"),
        _ = sigint.recv() => info!("SIGINT: leaving"),
        _ = node.leave_requested() => info!("leave requested through the admin API"),
        err = node.failed() => {
            let _ = node.abort().await;
            return Err(err.into());
        }
    }
    stop_traffic.cancel();
    if let Some(sender) = sender {
        match tokio::time::timeout(TRAFFIC_STOP_TIMEOUT, sender).await {
            Ok(Ok(Err(err))) => error!("test traffic failed: {err}"),
            Ok(_) => {}
            Err(_) => error!("test traffic did not stop in time"),
        }
    }
    if let Some(events) = events {
        if let Ok(Err(err)) = events.await {
            error!("recording membership events failed: {err}");
        }
    }
    // A second signal during the leave means: stop now.
    tokio::select! {
        result = node.leave() => result?,
        _ = sigterm.recv() => anyhow::bail!("SIGTERM during the leave: stopped at once"),
        _ = sigint.recv() => anyhow::bail!("SIGINT during the leave: stopped at once"),
    }
    info!("left the cluster");
    Ok(())
}
