//! Membership timing: how long until a new node is seen by every other node, and from a crash
//! until every other node sees it down; compared in the same run with chitchat alone under the
//! same settings and with a cluster secret (sealed gossip), plus the resident memory of an idle
//! `wamp-cluster` process.
//!
//! Run: `cargo bench --bench membership` (add `-- --quick` for a short run). Prints a table and
//! writes `target/bench/membership.json`.
//!
//! Every node runs in this process on loopback UDP with the default gossip settings (200 ms,
//! phi 8, initial interval = gossip interval). A crash is a node whose gossip stops at once
//! (its socket is closed), which is what peers see of `kill -9`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chitchat::transport::UdpTransport;
use chitchat::{spawn_chitchat, ChitchatHandle};
use serde_json::json;
use tokio::task::JoinSet;
use wamp_cluster::Secret;
use wamp_cluster::{GossipConfig, Node, NodeHandle, Status};

/// Longest any single measurement may take before the bench gives up on it.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(60);

/// The two systems under comparison, behind one face.
trait Cluster: Sized {
    async fn start(name: &str, seed: Option<SocketAddr>) -> Self;
    fn gossip_addr(&self) -> SocketAddr;
    /// Resolves when this node sees `peer` live (and ready, for wamp-cluster).
    fn sees_live(&self, peer: &str) -> impl std::future::Future<Output = ()> + Send + 'static;
    /// Resolves when this node sees `peer` not live.
    fn sees_dead(&self, peer: &str) -> impl std::future::Future<Output = ()> + Send + 'static;
    /// Stops at once without a word.
    async fn crash(self);
}

/// A wamp-cluster node, with a cluster secret if given.
async fn start_node(name: &str, seed: Option<SocketAddr>, secret: Option<&str>) -> NodeHandle {
    let seeds: Vec<SocketAddr> = seed.into_iter().collect();
    let mut config = wamp_cluster::testkit::node_config(name, &seeds, GossipConfig::lan());
    config.cluster_secret = secret.map(Secret::new);
    Node::builder(config, |_, _| wamp_cluster::Discard)
        .start()
        .await
        .expect("node starts")
}

impl Cluster for NodeHandle {
    async fn start(name: &str, seed: Option<SocketAddr>) -> Self {
        start_node(name, seed, None).await
    }
    fn gossip_addr(&self) -> SocketAddr {
        self.membership().gossip_addr()
    }
    fn sees_live(&self, peer: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut views = self.membership().watch_view();
        let peer = peer.to_owned();
        async move {
            let _ = views
                .wait_for(|v| {
                    v.member(&peer)
                        .is_some_and(|m| m.live && m.status == Status::Ready)
                })
                .await;
        }
    }
    fn sees_dead(&self, peer: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut views = self.membership().watch_view();
        let peer = peer.to_owned();
        async move {
            let _ = views
                .wait_for(|v| v.member(&peer).is_some_and(|m| !m.live))
                .await;
        }
    }
    async fn crash(self) {
        let _ = self.abort().await;
    }
}

/// wamp-cluster with a cluster secret: its gossip sealed.
struct Sealed(NodeHandle);

impl Cluster for Sealed {
    async fn start(name: &str, seed: Option<SocketAddr>) -> Self {
        Sealed(start_node(name, seed, Some("a-secret-for-the-bench-0123")).await)
    }
    fn gossip_addr(&self) -> SocketAddr {
        Cluster::gossip_addr(&self.0)
    }
    fn sees_live(&self, peer: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.0.sees_live(peer)
    }
    fn sees_dead(&self, peer: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.0.sees_dead(peer)
    }
    async fn crash(self) {
        self.0.crash().await
    }
}

/// chitchat alone, configured as wamp-cluster configures it.
struct Bare {
    handle: ChitchatHandle,
    addr: SocketAddr,
}

impl Cluster for Bare {
    async fn start(name: &str, seed: Option<SocketAddr>) -> Self {
        let seeds: Vec<SocketAddr> = seed.into_iter().collect();
        let node = wamp_cluster::testkit::node_config(name, &seeds, GossipConfig::lan());
        let addr = node.gossip_addr;
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        // The very configuration a wamp-cluster node gives chitchat.
        let config = wamp_cluster::testkit::protocol::chitchat_config(&node, generation);
        let keys = vec![("status".to_string(), "ready".to_string())];
        let handle = spawn_chitchat(config, keys, &UdpTransport)
            .await
            .expect("chitchat starts");
        Bare { handle, addr }
    }
    fn gossip_addr(&self) -> SocketAddr {
        self.addr
    }
    fn sees_live(&self, peer: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.wait_live(peer, true)
    }
    fn sees_dead(&self, peer: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.wait_live(peer, false)
    }
    async fn crash(self) {
        let _ = self.handle.shutdown().await;
    }
}

impl Bare {
    fn wait_live(
        &self,
        peer: &str,
        live: bool,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let chitchat = self.handle.chitchat();
        let peer: Arc<str> = peer.into();
        async move {
            let mut watcher = chitchat.lock().await.live_nodes_watcher();
            let _ = watcher
                .wait_for(|nodes| nodes.keys().any(|id| id.node_id == peer) == live)
                .await;
        }
    }
}

/// Waits until every future in `waits` resolved; returns the time from `start` until the last.
async fn until_all(
    start: Instant,
    waits: Vec<impl std::future::Future<Output = ()> + Send + 'static>,
) -> Duration {
    let mut set = JoinSet::new();
    for wait in waits {
        set.spawn(wait);
    }
    let all = async { while set.join_next().await.is_some() {} };
    tokio::time::timeout(MEASURE_TIMEOUT, all)
        .await
        .expect("measurement finished in time");
    start.elapsed()
}

struct Timings {
    join: Vec<Duration>,
    crash: Vec<Duration>,
}

/// Builds a cluster of `size` nodes; `rounds` times, starts a new node and times until all
/// others see it, then crashes it and times until all others see it dead.
async fn measure<C: Cluster + Send + 'static>(prefix: &str, size: usize, rounds: usize) -> Timings {
    let mut nodes: Vec<C> = Vec::new();
    let mut names = Vec::new();
    for i in 0..size - 1 {
        let name = format!("{prefix}-{i}");
        let seed = nodes.first().map(C::gossip_addr);
        nodes.push(C::start(&name, seed).await);
        names.push(name);
    }
    // Let the cluster settle: everyone sees everyone.
    for node in &nodes {
        let waits: Vec<_> = names.iter().map(|n| node.sees_live(n)).collect();
        until_all(Instant::now(), waits).await;
    }
    let mut timings = Timings {
        join: Vec::new(),
        crash: Vec::new(),
    };
    for round in 0..rounds {
        let name = format!("{prefix}-new-{round}");
        let waits: Vec<_> = nodes.iter().map(|n| n.sees_live(&name)).collect();
        let start = Instant::now();
        let newcomer = C::start(&name, Some(nodes[round % nodes.len()].gossip_addr())).await;
        timings.join.push(until_all(start, waits).await);
        // Let it accumulate heartbeats as a member would, then crash it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let waits: Vec<_> = nodes.iter().map(|n| n.sees_dead(&name)).collect();
        let start = Instant::now();
        newcomer.crash().await;
        timings.crash.push(until_all(start, waits).await);
    }
    for node in nodes {
        node.crash().await;
    }
    timings
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (median, max) in milliseconds.
fn summary(samples: &[Duration]) -> (f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    (ms(sorted[sorted.len() / 2]), ms(*sorted.last().unwrap()))
}

/// Resident memory of an idle `wamp-cluster` process after `settle`, in bytes.
fn idle_rss(settle: Duration) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let (gossip, admin, forward) = (
        wamp_cluster::testkit::free_addr(),
        wamp_cluster::testkit::free_addr(),
        wamp_cluster::testkit::free_addr(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_wamp-cluster"))
        .args(["node", "--node-id", "idle"])
        .args(["--gossip-addr", &gossip.to_string()])
        .args(["--admin-addr", &admin.to_string()])
        .args(["--forward-addr", &forward.to_string()])
        .args(["--router-ws-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wamp-cluster starts");
    std::thread::sleep(settle);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 10 };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "membership timing, {rounds} rounds per figure; load average before: {}",
        load.trim()
    );
    println!();
    println!(
        "{:<14} {:>5} {:>14} {:>14} {:>15} {:>15}",
        "system", "nodes", "join p50 ms", "join max ms", "crash p50 ms", "crash max ms"
    );
    let mut results = serde_json::Map::new();
    for size in [3usize, 10] {
        for system in ["chitchat", "wamp-cluster", "sealed"] {
            let timings = runtime.block_on(async {
                let task = match system {
                    "chitchat" => tokio::spawn(measure::<Bare>("bare", size, rounds)),
                    "sealed" => tokio::spawn(measure::<Sealed>("sealed", size, rounds)),
                    _ => tokio::spawn(measure::<NodeHandle>("node", size, rounds)),
                };
                task.await.unwrap()
            });
            let (join_p50, join_max) = summary(&timings.join);
            let (crash_p50, crash_max) = summary(&timings.crash);
            println!(
                "{system:<14} {size:>5} {join_p50:>14.0} {join_max:>14.0} {crash_p50:>15.0} {crash_max:>15.0}"
            );
            results.insert(
                format!("{system}_{size}_nodes"),
                json!({
                    "join_p50_ms": join_p50, "join_max_ms": join_max,
                    "crash_to_down_p50_ms": crash_p50, "crash_to_down_max_ms": crash_max,
                    "rounds": rounds,
                }),
            );
        }
    }
    let rss = idle_rss(Duration::from_secs(if quick { 2 } else { 5 }));
    println!();
    println!(
        "idle wamp-cluster process: {:.1} MiB resident",
        rss as f64 / 1048576.0
    );
    results.insert("idle_rss_bytes".into(), json!(rss));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("membership.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap()).unwrap();
    println!("written to {}", path.display());
}
