//! Starts a local cluster of `wamp-cluster` processes with test traffic, shows a live status
//! table, optionally injects faults (`--chaos`), and when it ends (Ctrl-C or `--duration`) makes
//! every node leave, reaps them and checks the cluster's invariants on their records.
//!
//! ```text
//! cargo run --release --example launcher -- --nodes 5
//! cargo run --release --example launcher -- --nodes 5 --chaos --seed 42 --duration 60
//! sudo cargo run --release --example launcher -- --nodes 5 --chaos --seed 42 --netns
//! ```
//!
//! The `wamp-cluster` binary is built (release) if needed, or given with `--binary`. Every
//! process is killed and reaped whenever the launcher exits, even on error (and, through the
//! parent-death signal, even when the launcher itself is killed). Exit code: 0 when every
//! invariant holds, 1 when one fails, 2 when the run could not be made.

mod agreement;
mod chaos;
mod faults;
mod netns;
mod processes;
mod report;
mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use chaos::{Fault, Plan, Planned};
use processes::NodeProc;
use status::get_json;

#[derive(Parser)]
#[command(about = "Run a local wamp-cluster with traffic, optionally chaos, and check it")]
struct Args {
    /// Number of nodes at the start.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Test messages per second sent by each node.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Stop after this many seconds (default: at Ctrl-C; with --chaos: 60).
    #[arg(long)]
    duration: Option<u64>,
    /// Inject faults drawn at random: kill -9, pause, restart, leave, join, start again.
    #[arg(long)]
    chaos: bool,
    /// The seed of the fault schedule (default: drawn from the clock, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Mean seconds between two faults.
    #[arg(long, default_value_t = 3.0)]
    fault_every: f64,
    /// Put each node in a network namespace of its own and add partitions, packet loss and
    /// delay to the faults (needs root with CAP_NET_ADMIN, nftables, and the netem module for
    /// delay; what is missing is skipped and reported).
    #[arg(long)]
    netns: bool,
    /// A crash must be seen, and a pause at least this long must be seen, by every other
    /// healthy node (seconds).
    #[arg(long, default_value_t = 4.0)]
    detection_bound: f64,
    /// After the chaos, every running node must agree on the member list within this many
    /// seconds.
    #[arg(long, default_value_t = 15.0)]
    agreement_bound: f64,
    /// Where the records, logs and report go (default: target/launcher/<unix time>).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The wamp-cluster binary (default: build it with cargo, release).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Print the status table as plain lines instead of refreshing it in place.
    #[arg(long)]
    plain: bool,
    /// Give every node this cluster secret (as `WAMP_CLUSTER_SECRET`): sealed gossip and
    /// proved handshakes.
    #[arg(long, value_name = "SECRET")]
    secret: Option<String>,
    /// Print the fault schedule of --chaos with these arguments, and exit.
    #[arg(long, requires = "chaos")]
    plan_only: bool,
    /// Test-only: this node acks test traffic without delivering it (the checker must fail).
    #[arg(long, hide = true, value_name = "NODE")]
    test_ack_without_delivery: Option<String>,
}

/// Longest wait for the cluster to form, and for nodes to leave.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
const LEAVE_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest wait for one admin request.
const HTTP_TIMEOUT: Duration = Duration::from_millis(800);
/// The nodes' forward timeout (the default `forward.ack_timeout_ms`).
const FORWARD_TIMEOUT_MS: u64 = 5000;
/// At most this many nodes join during a chaos run.
const MAX_JOINS: usize = 3;

/// What a node is doing, as the timeline shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Up,
    Paused,
    Down,
    Left,
    Partitioned,
    /// Losing or delaying packets.
    Degraded,
}

/// Checks with the crate's WAMP client that every router serves: on each, a session
/// registers a procedure and another calls it.
async fn check_routers(routers: &[SocketAddr]) -> anyhow::Result<()> {
    use wamp_cluster::client::{Client, ClientOptions};
    use wamp_cluster::wamp::{Dict, Payload, Value};
    for ws in routers {
        let url = format!("ws://{ws}/ws");
        let options = ClientOptions::new("realm1").timeout(Duration::from_secs(5));
        let callee = Client::connect(&url, options.clone())
            .await
            .with_context(|| format!("the router at {url}"))?;
        callee
            .register("launcher.ping", Dict::new(), |_| async {
                Ok(Payload::Args(vec![Value::String("pong".into())]))
            })
            .await
            .with_context(|| format!("registering at {url}"))?;
        let caller = Client::connect(&url, options).await?;
        let answer = caller
            .call("launcher.ping", Payload::Empty)
            .await
            .with_context(|| format!("calling at {url}"))?;
        if answer.payload != Payload::Args(vec![Value::String("pong".into())]) {
            bail!("the router at {url} answered {:?}", answer.payload);
        }
        caller.leave().await?;
        callee.leave().await?;
    }
    Ok(())
}

/// One process start of a node.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub dir: PathBuf,
    #[serde(skip)]
    pub admin: SocketAddr,
    #[serde(skip)]
    pub gossip: SocketAddr,
    /// Where WAMP clients connect (WebSocket).
    #[serde(skip)]
    pub ws: SocketAddr,
    /// Milliseconds after the launcher's start.
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub killed: bool,
    pub paused: bool,
    /// Why it exited when the launcher did not make it.
    pub unexpected_exit: Option<String>,
}

/// A node id and its process starts.
pub struct Slot {
    pub name: String,
    pub number: usize,
    proc: Option<NodeProc>,
    pub runs: Vec<Run>,
    pub state: State,
    /// SIGTERM sent: the process is expected to exit.
    leaving: bool,
    /// When a pause or a network fault ends.
    until: Option<Instant>,
}

impl Slot {
    fn running(&self) -> bool {
        self.proc.is_some()
    }
}

/// A fault as it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub at_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
    /// The generation of each node the fault hit, as it was then.
    pub generations: Vec<Option<u64>>,
    /// Why the fault was not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A per-second sample of the cluster's traffic.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub acked_per_s: u64,
    pub failed_per_s: u64,
}

struct Launcher {
    binary: PathBuf,
    dir: PathBuf,
    rate: f64,
    broken: Option<String>,
    secret: Option<String>,
    /// Fields drop in order: the slots' processes die before their namespaces go.
    slots: Vec<Slot>,
    netns: Option<netns::Netns>,
    start: Instant,
    /// When the chaos started, in milliseconds after the launcher's start.
    chaos_offset_ms: u64,
    /// The launcher's start in Unix milliseconds, to place the nodes' event times.
    start_unix_ms: u64,
    transitions: Vec<(u64, usize, State)>,
    applied: Vec<Applied>,
    samples: Vec<Sample>,
    /// (slot, run index) -> (acked, failed) at the last sample.
    counted: BTreeMap<(usize, usize), (u64, u64)>,
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The wamp-cluster binary: given, or built with cargo (release, with the `testkit` feature for
/// its test traffic) next to this example.
fn binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--features",
            "testkit",
            "--bin",
            "wamp-cluster",
            "--manifest-path",
        ])
        .arg(manifest.join("Cargo.toml"))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"));
    Ok(target.join("release").join("wamp-cluster"))
}

/// The generation a process start announced on the first line of its outcomes record (only
/// that line is read: the record grows all through the run).
pub fn generation_of(run: &Run) -> Option<u64> {
    use std::io::BufRead;
    let file = std::fs::File::open(run.dir.join("outcomes.log")).ok()?;
    let mut first = String::new();
    std::io::BufReader::new(file).read_line(&mut first).ok()?;
    first.strip_suffix('\n')?.strip_prefix("G ")?.parse().ok()
}

/// A token cancelled at SIGINT, SIGTERM or SIGHUP.
fn stop_signal() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        let mut stream = signal(kind).context("installing a signal handler")?;
        let token = token.clone();
        tokio::spawn(async move {
            stream.recv().await;
            token.cancel();
        });
    }
    Ok(token)
}

fn main() -> ExitCode {
    match tokio::runtime::Runtime::new()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(Args::parse())))
    {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("launcher: {err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if args.nodes == 0 || args.nodes > 100 {
        bail!("--nodes must be between 1 and 100");
    }
    if args.chaos && args.nodes < 3 {
        bail!("--chaos needs at least 3 nodes");
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 100_000.0) {
        bail!("--rate must be above 0 and at most 100000");
    }
    for (name, value) in [
        ("--fault-every", args.fault_every),
        ("--detection-bound", args.detection_bound),
        ("--agreement-bound", args.agreement_bound),
    ] {
        if !(value.is_finite() && (0.1..=3600.0).contains(&value)) {
            bail!("{name} must be between 0.1 and 3600 seconds");
        }
    }
    if args.netns && !args.chaos {
        bail!("--netns needs --chaos");
    }
    let duration = args.duration.or(args.chaos.then_some(60));
    let seed = args.seed.unwrap_or_else(unix_ms);
    let schedule = match duration {
        Some(duration) if args.chaos => {
            let schedule = chaos::plan(&Plan {
                seed,
                nodes: args.nodes,
                max_joins: MAX_JOINS,
                duration_ms: duration * 1000,
                every_ms: (args.fault_every * 1000.0) as u64,
                detection_bound_ms: (args.detection_bound * 1000.0) as u64,
                netns: args.netns,
            });
            println!("chaos: seed {seed}, {} faults planned:", schedule.len());
            for planned in &schedule {
                println!(
                    "{:>7.1} s  {}",
                    planned.at_ms as f64 / 1000.0,
                    report::describe(&planned.fault)
                );
            }
            schedule
        }
        _ => Vec::new(),
    };
    if args.plan_only {
        return Ok(true);
    }
    let stop = stop_signal()?;
    let binary = binary(args.binary.clone())?;
    let dir = args.dir.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/launcher")
            .join((unix_ms() / 1000).to_string())
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("records in {}", dir.display());

    let mut netns_note = None;
    let netns = if args.netns {
        match netns::Netns::new() {
            Ok(netns) => {
                if let Some(why) = &netns.netem_missing {
                    println!("tc netem is not available, delay faults are skipped: {why}");
                }
                Some(netns)
            }
            Err(why) => {
                println!(
                    "network namespaces are not available here, their faults are skipped: {why}"
                );
                netns_note = Some(why);
                None
            }
        }
    } else {
        None
    };
    let mut launcher = Launcher {
        binary,
        dir: dir.clone(),
        rate: args.rate,
        broken: args.test_ack_without_delivery.clone(),
        secret: args.secret.clone(),
        netns,
        slots: Vec::new(),
        start: Instant::now(),
        chaos_offset_ms: 0,
        start_unix_ms: unix_ms(),
        transitions: Vec::new(),
        applied: Vec::new(),
        samples: Vec::new(),
        counted: BTreeMap::new(),
    };
    let result = drive(
        &mut launcher,
        &args,
        duration,
        (seed, &schedule),
        stop,
        netns_note,
    )
    .await;
    // Whatever happened, no node outlives the launcher.
    launcher.stop_all().await;
    result
}

async fn drive(
    launcher: &mut Launcher,
    args: &Args,
    duration: Option<u64>,
    (seed, schedule): (u64, &[Planned]),
    stop: CancellationToken,
    netns_note: Option<String>,
) -> anyhow::Result<bool> {
    launcher.ensure_slot(args.nodes)?;
    for i in 0..args.nodes {
        launcher.start_node(i, 0)?;
        if i == 0 {
            // The seed first, so that the others find it.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let client = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;
    let formed = Instant::now();
    loop {
        launcher.reap();
        let admins: Vec<SocketAddr> = launcher
            .slots
            .iter()
            .filter_map(|s| s.runs.last().map(|r| r.admin))
            .collect();
        let views = futures_util::future::join_all(
            admins
                .iter()
                .map(|&a| get_json(&client, a, "/cluster/members")),
        )
        .await;
        let all = views.iter().all(|v| {
            v.as_ref().is_some_and(|v| {
                v["members"].as_array().is_some_and(|m| {
                    m.iter()
                        .filter(|x| x["live"] == true && x["status"] == "ready")
                        .count()
                        == args.nodes
                })
            })
        });
        if all {
            break;
        }
        if formed.elapsed() > FORM_TIMEOUT {
            bail!("the cluster did not form within {FORM_TIMEOUT:?}");
        }
        if launcher.slots.iter().any(|s| !s.running()) {
            bail!("a node exited while the cluster formed: see its node.log");
        }
        tokio::select! {
            _ = stop.cancelled() => bail!("stopped before the cluster formed"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    println!(
        "{} nodes formed a cluster in {:.1} s; WAMP clients connect to (realm1, anonymous):",
        args.nodes,
        formed.elapsed().as_secs_f64()
    );
    for slot in &launcher.slots {
        if let Some(run) = slot.runs.last() {
            println!(
                "  {:<8} ws://{}/ws   admin http://{}",
                slot.name, run.ws, run.admin
            );
        }
    }
    let routers: Vec<SocketAddr> = launcher
        .slots
        .iter()
        .filter_map(|s| s.runs.last().map(|r| r.ws))
        .collect();
    check_routers(&routers).await?;
    println!("every node's router answered a WAMP call (register, call, leave)");

    let duration_ms = duration.map(|d| d * 1000);
    let chaos_start = Instant::now();
    let chaos_offset_ms = launcher.now_ms();
    launcher.chaos_offset_ms = chaos_offset_ms;
    let end = duration_ms.map(|ms| chaos_start + Duration::from_millis(ms));
    let mut next_fault = 0;
    let mut next_status = Instant::now();
    let mut first = true;
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => { interrupted = true; break; }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        launcher.reap();
        launcher.end_faults(false);
        let elapsed = chaos_start.elapsed().as_millis() as u64;
        while next_fault < schedule.len() && schedule[next_fault].at_ms <= elapsed {
            launcher.apply(&schedule[next_fault])?;
            next_fault += 1;
        }
        if Instant::now() >= next_status {
            next_status += Duration::from_secs(1);
            launcher.status(&client, args.plain, first).await;
            first = false;
        }
    }

    // The chaos stops: every pause and network fault ends, leaving nodes finish leaving.
    launcher.end_faults(true);
    let chaos_end_ms = launcher.now_ms();
    let leaving_deadline = Instant::now() + LEAVE_TIMEOUT;
    while launcher.slots.iter().any(|s| s.leaving && s.running())
        && Instant::now() < leaving_deadline
    {
        launcher.reap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agreement_bound = Duration::from_secs_f64(args.agreement_bound);
    println!("waiting for the running nodes to agree on the members");
    let agreement = launcher.agreement(&client, agreement_bound).await;
    if interrupted {
        println!("interrupted: checking what ran");
    }

    println!("stopping: every node leaves");
    launcher.stop_all().await;

    let outcome = report::Inputs {
        launcher,
        seed: args.chaos.then_some(seed),
        chaos_end_ms,
        schedule,
        detection_bound_ms: (args.detection_bound * 1000.0) as u64,
        agreement_bound_ms: agreement_bound.as_millis() as u64,
        agreement_ms: agreement,
        netns_requested: args.netns,
        netns_note,
        forward_timeout_ms: FORWARD_TIMEOUT_MS,
    }
    .write()?;
    Ok(outcome)
}
