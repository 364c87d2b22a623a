//! Starts a local cluster of `wamp-cluster` processes with test traffic, shows a live status
//! table, and when it ends (Ctrl-C or `--duration`) makes every node leave, reaps them and
//! checks the delivery invariants on their records.
//!
//! ```text
//! cargo run --release --example launcher -- --nodes 5 --rate 100 --duration 30
//! ```
//!
//! The `wamp-cluster` binary is built (release) if needed, or given with `--binary`. Every
//! process is killed and reaped whenever the launcher exits, even on error. Exit code: 0 when
//! every invariant holds, 1 otherwise.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Run a local wamp-cluster with traffic and check it")]
struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Test messages per second sent by each node.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Where the records and logs go (default: target/launcher/<unix time>).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The wamp-cluster binary (default: build it with cargo, release).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Print the status table as plain lines instead of refreshing it in place.
    #[arg(long)]
    plain: bool,
}

/// Longest wait for the cluster to form, and for nodes to leave.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
const LEAVE_TIMEOUT: Duration = Duration::from_secs(40);
/// Longest wait for one admin request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// A node process, killed and reaped when dropped.
struct NodeProc {
    name: String,
    admin: SocketAddr,
    record: PathBuf,
    child: Child,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for UDP and TCP now, not given out before by this launcher.
fn free_addr(given: &mut Vec<u16>) -> anyhow::Result<SocketAddr> {
    for _ in 0..1000 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() && !given.contains(&port) {
            given.push(port);
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    bail!("no free loopback port")
}

/// The wamp-cluster binary: given, or built with cargo (release) next to this example.
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

async fn get_json(client: &reqwest::Client, admin: SocketAddr, path: &str) -> Option<Value> {
    let response = client
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// One row of the status table.
struct Row {
    name: String,
    status: String,
    generation: String,
    acked: u64,
    failed: u64,
}

async fn row(client: &reqwest::Client, node: &NodeProc) -> Row {
    let members = get_json(client, node.admin, "/cluster/members").await;
    let me = members.as_ref().and_then(|m| {
        m["members"]
            .as_array()?
            .iter()
            .find(|x| x["node_id"] == node.name.as_str())
            .cloned()
    });
    let stats = get_json(client, node.admin, "/stats").await;
    let (mut acked, mut failed) = (0, 0);
    if let Some(peers) = stats.as_ref().and_then(|s| s["peers"].as_object()) {
        for peer in peers.values() {
            acked += peer["acked"].as_u64().unwrap_or(0);
            if let Some(f) = peer["failed"].as_object() {
                failed += f.values().filter_map(Value::as_u64).sum::<u64>();
            }
        }
    }
    let text =
        |v: Option<&Value>, key: &str| v.and_then(|m| m[key].as_str()).unwrap_or("-").to_string();
    let generation = text(me.as_ref(), "generation");
    Row {
        name: node.name.clone(),
        status: if members.is_none() {
            "no answer".into()
        } else {
            text(me.as_ref(), "status")
        },
        generation: generation
            .chars()
            .rev()
            .take(6)
            .collect::<String>()
            .chars()
            .rev()
            .collect(),
        acked,
        failed,
    }
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
    let binary = binary(args.binary)?;
    let dir = args.dir.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/launcher")
            .join(now.to_string())
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!("records in {}", dir.display());

    let mut given = Vec::new();
    let mut nodes: Vec<NodeProc> = Vec::new();
    let mut seed = None;
    for i in 1..=args.nodes {
        let name = format!("node-{i}");
        let (gossip, forward, admin) = (
            free_addr(&mut given)?,
            free_addr(&mut given)?,
            free_addr(&mut given)?,
        );
        let record = dir.join(&name);
        std::fs::create_dir_all(&record)?;
        let log = std::fs::File::create(record.join("node.log"))?;
        let mut command = Command::new(&binary);
        command
            .args(["node", "--node-id", &name, "--cluster-id", "launcher"])
            .args(["--gossip-addr", &gossip.to_string()])
            .args(["--forward-addr", &forward.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--traffic-rate", &args.rate.to_string()])
            .arg("--record-dir")
            .arg(&record)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(seed) = seed {
            command.args(["--seed", &SocketAddr::to_string(&seed)]);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        seed.get_or_insert(gossip);
        nodes.push(NodeProc {
            name,
            admin,
            record,
            child,
        });
    }

    let client = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build()?;
    let formed = Instant::now();
    loop {
        let mut ready = 0;
        for node in &nodes {
            if row(&client, node).await.status == "ready" {
                ready += 1;
            }
        }
        if ready == nodes.len() {
            break;
        }
        if formed.elapsed() > FORM_TIMEOUT {
            bail!("the cluster did not form within {FORM_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let end = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut previous: Vec<u64> = vec![0; nodes.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut first = true;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        if end.is_some_and(|end| Instant::now() >= end) {
            break;
        }
        let mut lines = vec![format!(
            "{:<10} {:<10} {:>8} {:>10} {:>10} {:>8}",
            "node", "status", "gen", "fwd/s", "acked", "failed"
        )];
        for (i, node) in nodes.iter().enumerate() {
            let r = row(&client, node).await;
            let rate = r.acked.saturating_sub(previous[i]);
            previous[i] = r.acked;
            lines.push(format!(
                "{:<10} {:<10} {:>8} {:>10} {:>10} {:>8}",
                r.name, r.status, r.generation, rate, r.acked, r.failed
            ));
        }
        if args.plain {
            for line in &lines {
                println!("{line}");
            }
        } else {
            if !first {
                // Move the cursor up over the previous table to redraw it in place.
                print!("\x1b[{}A", lines.len());
            }
            for line in &lines {
                println!("{line}\x1b[K");
            }
        }
        first = false;
    }

    println!("stopping: every node leaves");
    for node in &nodes {
        let _ = Command::new("kill")
            .args(["-TERM", &node.child.id().to_string()])
            .status();
    }
    let deadline = Instant::now() + LEAVE_TIMEOUT;
    for node in &mut nodes {
        loop {
            match node.child.try_wait()? {
                Some(status) if status.success() => break,
                Some(status) => {
                    println!("{} exited with {status}", node.name);
                    break;
                }
                None if Instant::now() > deadline => {
                    println!("{} did not leave in time: killed", node.name);
                    break;
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    let records: Vec<(String, PathBuf)> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.record.clone()))
        .collect();
    drop(nodes);

    let checked = wamp_cluster::traffic::check(&records)?;
    let verdict = |ok: bool| if ok { "ok" } else { "FAILED" };
    println!();
    println!("{:<58} result", "invariant");
    println!(
        "{:<58} {} ({} started, {} acked, failed {:?})",
        "1. every forward started ended",
        verdict(checked.unended.is_empty()),
        checked.started,
        checked.acked,
        checked.failed
    );
    println!(
        "{:<58} {}",
        "2. every acked message was delivered",
        verdict(checked.acked_not_delivered.is_empty())
    );
    println!(
        "{:<58} {}",
        "3. nothing delivered twice; each sender's messages in order",
        verdict(checked.duplicates.is_empty() && checked.out_of_order.is_empty())
    );
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&checked)?,
    )?;
    println!("report: {}", dir.join("report.json").display());
    Ok(checked.ok())
}
