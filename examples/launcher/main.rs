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

mod chaos;
mod netns;
mod report;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use chaos::{Fault, Plan, Planned};

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

/// A node process, killed and reaped when dropped.
struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl NodeProc {
    fn signal(&self, signal: i32) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the pid of our own child, which is not reaped yet.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

/// One process start of a node.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub dir: PathBuf,
    #[serde(skip)]
    pub admin: SocketAddr,
    #[serde(skip)]
    pub gossip: SocketAddr,
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
    given_ports: Vec<u16>,
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

/// A port free for UDP and TCP on `ip` now, not given out before by this launcher.
fn free_port(ip: IpAddr, given: &mut Vec<u16>) -> anyhow::Result<u16> {
    for _ in 0..1000 {
        let tcp = TcpListener::bind((ip, 0))?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind((ip, port)).is_ok() && !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no free port")
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

/// What one node's admin API says.
#[derive(Default)]
struct Polled {
    /// `/cluster/members`, if it answered.
    members: Option<Value>,
    acked: u64,
    failed: u64,
}

async fn poll(client: &reqwest::Client, admin: SocketAddr) -> Polled {
    let (members, stats) = tokio::join!(
        get_json(client, admin, "/cluster/members"),
        get_json(client, admin, "/stats")
    );
    let (mut acked, mut failed) = (0, 0);
    if let Some(peers) = stats.as_ref().and_then(|s| s["peers"].as_object()) {
        for peer in peers.values() {
            acked += peer["acked"].as_u64().unwrap_or(0);
            if let Some(f) = peer["failed"].as_object() {
                failed += f.values().filter_map(Value::as_u64).sum::<u64>();
            }
        }
    }
    Polled {
        members,
        acked,
        failed,
    }
}

/// The members a node's `/cluster/members` shows live: `(node id, generation)`.
fn live_members(members: &Value) -> Vec<(String, String)> {
    let mut live: Vec<(String, String)> = members["members"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|m| m["live"] == true)
                .map(|m| {
                    (
                        m["node_id"].as_str().unwrap_or("").to_owned(),
                        m["generation"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    live.sort();
    live
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

impl Launcher {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn set_state(&mut self, slot: usize, state: State) {
        if self.slots[slot].state != state {
            self.slots[slot].state = state;
            let now = self.now_ms();
            self.transitions.push((now, slot, state));
        }
    }

    /// Adds slot `number` (from 1) if it does not exist yet.
    fn ensure_slot(&mut self, number: usize) -> anyhow::Result<usize> {
        while self.slots.len() < number {
            let n = self.slots.len() + 1;
            if let Some(netns) = &mut self.netns {
                netns.add(n).map_err(anyhow::Error::msg)?;
            }
            self.slots.push(Slot {
                name: format!("node-{n}"),
                number: n,
                proc: None,
                runs: Vec::new(),
                state: State::Down,
                leaving: false,
                until: None,
            });
        }
        Ok(number - 1)
    }

    /// Starts a new process for `slot`, seeded by a running node.
    fn start_node(&mut self, slot: usize) -> anyhow::Result<()> {
        let number = self.slots[slot].number;
        let ip = match &self.netns {
            Some(netns) => IpAddr::V4(netns.ip(number)),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut port = || free_port(bind, &mut self.given_ports);
        let (gossip, forward, admin) = (
            SocketAddr::new(ip, port()?),
            SocketAddr::new(ip, port()?),
            SocketAddr::new(ip, port()?),
        );
        let seed = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != slot && s.running() && s.state == State::Up && !s.leaving)
            .find_map(|(_, s)| s.runs.last().map(|r| r.gossip));
        let name = self.slots[slot].name.clone();
        let record = self
            .dir
            .join(&name)
            .join(format!("run-{}", self.slots[slot].runs.len() + 1));
        std::fs::create_dir_all(&record)
            .with_context(|| format!("creating {}", record.display()))?;
        let log = std::fs::File::create(record.join("node.log"))?;
        let mut command = match &self.netns {
            Some(netns) => netns.command(number, &self.binary),
            None => Command::new(&self.binary),
        };
        command
            .args(["node", "--node-id", &name, "--cluster-id", "launcher"])
            .args(["--gossip-addr", &gossip.to_string()])
            .args(["--forward-addr", &forward.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--traffic-rate", &self.rate.to_string()])
            .arg("--record-dir")
            .arg(&record)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Ctrl-C in the terminal reaches the launcher only; it stops the nodes itself.
            .process_group(0);
        if let Some(seed) = seed {
            command.args(["--seed", &seed.to_string()]);
        }
        if self.broken.as_deref() == Some(name.as_str()) {
            command.arg("--test-ack-without-delivery");
        }
        if let Some(secret) = &self.secret {
            command.env("WAMP_CLUSTER_SECRET", secret);
        }
        // SAFETY: prctl(2) and getppid(2) only, between fork and exec. The node dies with the
        // launcher's main thread, which starts every node (the runtime runs `run` with
        // `block_on` on it); if the launcher died before the prctl, the node does not start.
        let launcher = std::process::id();
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if u32::try_from(libc::getppid()).ok() != Some(launcher) {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let now = self.now_ms();
        let s = &mut self.slots[slot];
        s.proc = Some(NodeProc(child));
        s.leaving = false;
        s.until = None;
        s.runs.push(Run {
            dir: record,
            admin,
            gossip,
            started_ms: now,
            ended_ms: None,
            killed: false,
            paused: false,
            unexpected_exit: None,
        });
        self.set_state(slot, State::Up);
        Ok(())
    }

    /// `kill -9`.
    fn kill_node(&mut self, slot: usize) {
        let now = self.now_ms();
        let s = &mut self.slots[slot];
        if let Some(proc) = s.proc.take() {
            drop(proc);
            if let Some(run) = s.runs.last_mut() {
                run.killed = true;
                run.ended_ms = Some(now);
            }
        }
        self.heal(slot);
        self.set_state(slot, State::Down);
    }

    /// SIGTERM: the node leaves and exits by itself.
    fn leave_node(&mut self, slot: usize) {
        self.resume(slot);
        self.heal(slot);
        let s = &mut self.slots[slot];
        if let Some(proc) = &s.proc {
            proc.signal(libc::SIGTERM);
            s.leaving = true;
        }
        self.set_state(slot, State::Left);
    }

    fn pause(&mut self, slot: usize, ms: u64) {
        let s = &mut self.slots[slot];
        if let Some(proc) = &s.proc {
            proc.signal(libc::SIGSTOP);
            s.until = Some(Instant::now() + Duration::from_millis(ms));
            if let Some(run) = s.runs.last_mut() {
                run.paused = true;
            }
            self.set_state(slot, State::Paused);
        }
    }

    /// SIGCONT if paused.
    fn resume(&mut self, slot: usize) {
        if self.slots[slot].state == State::Paused {
            if let Some(proc) = &self.slots[slot].proc {
                proc.signal(libc::SIGCONT);
            }
            self.slots[slot].until = None;
            self.set_state(slot, State::Up);
        }
    }

    /// Removes network faults from the node's namespace.
    fn heal(&mut self, slot: usize) {
        let state = self.slots[slot].state;
        if matches!(state, State::Partitioned | State::Degraded) {
            if let Some(netns) = &self.netns {
                netns.heal(self.slots[slot].number);
            }
            self.slots[slot].until = None;
            self.set_state(slot, State::Up);
        }
    }

    /// Reaps processes that exited; an exit the launcher did not ask for is recorded.
    fn reap(&mut self) {
        let now = self.now_ms();
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            let Some(proc) = s.proc.as_mut() else {
                continue;
            };
            let status = match proc.0.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(err) => {
                    eprintln!("launcher: cannot wait for {}: {err}", s.name);
                    continue;
                }
            };
            s.proc = None;
            let leaving = s.leaving;
            if let Some(run) = s.runs.last_mut() {
                run.ended_ms = Some(now);
                if !leaving {
                    run.unexpected_exit = Some(format!("exited by itself: {status}"));
                } else if !status.success() {
                    run.unexpected_exit = Some(format!("left with {status}"));
                }
            }
            if !leaving {
                self.set_state(i, State::Down);
            }
        }
    }

    /// Applies one fault; a fault that cannot be applied is recorded as skipped.
    fn apply(&mut self, planned: &Planned) -> anyhow::Result<()> {
        let at_ms = self.now_ms();
        let fault = planned.fault.clone();
        let mut skipped = None;
        let slots: Vec<usize> = fault.nodes().iter().map(|n| n - 1).collect();
        for &n in &fault.nodes() {
            self.ensure_slot(n)?;
        }
        let generations = slots
            .iter()
            .map(|&i| {
                let s = &self.slots[i];
                s.running()
                    .then(|| s.runs.last().and_then(generation_of))
                    .flatten()
            })
            .collect();
        let needs_running = !matches!(fault, Fault::Start { .. } | Fault::Join { .. });
        let healthy = |s: &Slot| s.running() && s.state == State::Up && !s.leaving;
        if needs_running && !slots.iter().all(|&i| healthy(&self.slots[i])) {
            skipped = Some("the node is not up and healthy".to_owned());
        } else if !needs_running && slots.iter().any(|&i| self.slots[i].running()) {
            skipped = Some("the node is still running".to_owned());
        } else if fault.needs_netns() && self.netns.is_none() {
            skipped = Some("no network namespaces".to_owned());
        } else {
            match &fault {
                Fault::Crash { .. } => self.kill_node(slots[0]),
                Fault::Pause { ms, .. } => self.pause(slots[0], *ms),
                Fault::Restart { .. } => {
                    self.kill_node(slots[0]);
                    self.start_node(slots[0])?;
                }
                Fault::Leave { .. } => self.leave_node(slots[0]),
                Fault::Start { .. } | Fault::Join { .. } => self.start_node(slots[0])?,
                Fault::Partition { side, one_way, ms } => {
                    let others: Vec<usize> = (1..=self.slots.len())
                        .filter(|n| !side.contains(n))
                        .collect();
                    if let Some(netns) = &self.netns {
                        for &n in side {
                            if let Err(err) = netns.cut(n, &others, *one_way) {
                                skipped = Some(err);
                            }
                        }
                    }
                    if skipped.is_none() {
                        for &i in &slots {
                            self.slots[i].until = Some(Instant::now() + Duration::from_millis(*ms));
                            self.set_state(i, State::Partitioned);
                        }
                    } else if let Some(netns) = &self.netns {
                        for &n in side {
                            netns.heal(n);
                        }
                    }
                }
                Fault::Loss {
                    node, percent, ms, ..
                } => {
                    let result = self.netns.as_ref().map(|ns| ns.loss(*node, *percent));
                    skipped = self.degrade(slots[0], *ms, result);
                }
                Fault::Delay {
                    node, delay_ms, ms, ..
                } => {
                    let result = self.netns.as_ref().map(|ns| ns.delay(*node, *delay_ms));
                    skipped = self.degrade(slots[0], *ms, result);
                }
            }
        }
        println!(
            "{:>7.1} s  {}{}",
            at_ms.saturating_sub(self.chaos_offset_ms) as f64 / 1000.0,
            report::describe(&fault),
            skipped
                .as_ref()
                .map(|why| format!("  (skipped: {why})"))
                .unwrap_or_default()
        );
        self.applied.push(Applied {
            at_ms,
            fault,
            generations,
            skipped,
        });
        Ok(())
    }

    fn degrade(
        &mut self,
        slot: usize,
        ms: u64,
        result: Option<Result<(), String>>,
    ) -> Option<String> {
        match result {
            Some(Ok(())) => {
                self.slots[slot].until = Some(Instant::now() + Duration::from_millis(ms));
                self.set_state(slot, State::Degraded);
                None
            }
            Some(Err(err)) => Some(err),
            None => Some("no network namespaces".to_owned()),
        }
    }

    /// Ends the pauses and network faults whose time is up (all of them with `all`).
    fn end_faults(&mut self, all: bool) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if self.slots[i].until.is_some_and(|until| all || until <= now) {
                self.resume(i);
                self.heal(i);
            }
        }
    }

    /// Polls every running node that is not paused; prints the status table and samples the
    /// traffic.
    async fn status(&mut self, client: &reqwest::Client, plain: bool, first: bool) {
        let targets: Vec<(usize, SocketAddr)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running() && s.state != State::Paused)
            .filter_map(|(i, s)| s.runs.last().map(|r| (i, r.admin)))
            .collect();
        let polled = futures_util::future::join_all(
            targets
                .iter()
                .map(|&(i, admin)| async move { (i, poll(client, admin).await) }),
        )
        .await;
        let polled: BTreeMap<usize, Polled> = polled.into_iter().collect();
        let (mut acked_delta, mut failed_delta) = (0, 0);
        let mut lines = vec![format!(
            "{:<9} {:<12} {:>6} {:>7} {:>9} {:>7} {:>7} {:>10}",
            "node", "status", "gen", "fwd/s", "acked", "failed", "reports", "detected"
        )];
        let detected = report::last_detections(self);
        for (i, slot) in self.slots.iter().enumerate() {
            let run_index = slot.runs.len().saturating_sub(1);
            let p = polled.get(&i);
            let (acked, failed) = p.map_or((0, 0), |p| (p.acked, p.failed));
            let before = self.counted.get(&(i, run_index)).copied().unwrap_or((0, 0));
            let rate = acked.saturating_sub(before.0);
            if p.is_some() {
                acked_delta += rate;
                failed_delta += failed.saturating_sub(before.1);
                self.counted.insert((i, run_index), (acked, failed));
            }
            let status = match (slot.state, p) {
                (State::Up, Some(p)) => p
                    .members
                    .as_ref()
                    .and_then(|m| {
                        m["members"]
                            .as_array()?
                            .iter()
                            .find(|x| x["node_id"] == slot.name.as_str())?["status"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "no answer".into()),
                (state, _) => format!("{state:?}").to_lowercase(),
            };
            let run = slot.runs.last();
            let generation = run
                .and_then(generation_of)
                .map(|g| format!("{:06}", g % 1_000_000))
                .unwrap_or_else(|| "-".into());
            let reports = run.map_or(0, report::reports);
            let detected = detected
                .get(&slot.name)
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into());
            lines.push(format!(
                "{:<9} {:<12} {:>6} {:>7} {:>9} {:>7} {:>7} {:>10}",
                slot.name,
                status,
                generation,
                if p.is_some() {
                    rate.to_string()
                } else {
                    "-".into()
                },
                acked,
                failed,
                reports,
                detected
            ));
        }
        self.samples.push(Sample {
            t_s: self.start.elapsed().as_secs_f64(),
            acked_per_s: acked_delta,
            failed_per_s: failed_delta,
        });
        if plain {
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
    }

    /// Waits until every running node shows the same live members as the launcher knows are
    /// running (with their current generations). Returns how long it took, or `None` after
    /// `bound`.
    async fn agreement(&mut self, client: &reqwest::Client, bound: Duration) -> Option<u64> {
        let begin = Instant::now();
        loop {
            self.reap();
            let running: Vec<&Slot> = self.slots.iter().filter(|s| s.running()).collect();
            let mut expected: Vec<(String, String)> = running
                .iter()
                .map(|s| {
                    let generation = s.runs.last().and_then(generation_of);
                    (
                        s.name.clone(),
                        generation.map(|g| g.to_string()).unwrap_or_default(),
                    )
                })
                .collect();
            expected.sort();
            let views = futures_util::future::join_all(running.iter().filter_map(|s| {
                let admin = s.runs.last()?.admin;
                Some(async move { get_json(client, admin, "/cluster/members").await })
            }))
            .await;
            let agreed = !expected.is_empty()
                && views
                    .iter()
                    .all(|v| v.as_ref().is_some_and(|v| live_members(v) == expected));
            if agreed {
                return Some(begin.elapsed().as_millis() as u64);
            }
            if begin.elapsed() > bound {
                for (slot, view) in running.iter().zip(&views) {
                    println!("  {} sees {:?}", slot.name, view.as_ref().map(live_members));
                }
                println!("  expected {expected:?}");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to every running node, then waits for each to exit (killed after
    /// [`LEAVE_TIMEOUT`]).
    async fn stop_all(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].running() && !self.slots[i].leaving {
                self.leave_node(i);
            }
        }
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        while self.slots.iter().any(Slot::running) && Instant::now() < deadline {
            self.reap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = self.now_ms();
        for slot in &mut self.slots {
            if let Some(proc) = slot.proc.take() {
                println!("{} did not leave in time: killed", slot.name);
                drop(proc);
                if let Some(run) = slot.runs.last_mut() {
                    run.ended_ms = Some(now);
                    run.unexpected_exit = Some("did not leave in time".into());
                }
            }
        }
    }
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
        given_ports: Vec::new(),
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
        launcher.start_node(i)?;
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
        "{} nodes formed a cluster in {:.1} s; their admin APIs:",
        args.nodes,
        formed.elapsed().as_secs_f64()
    );
    for slot in &launcher.slots {
        if let Some(run) = slot.runs.last() {
            println!("  {:<8} http://{}", slot.name, run.admin);
        }
    }

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
