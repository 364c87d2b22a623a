//! Forwarding figures between in-process nodes on loopback: `async_forward` throughput with acks
//! (128-byte payload, a window of messages in flight), `forward` latency (one in flight), and
//! broadcast completion to 8 nodes, all live and with one that never acks.
//!
//! Run: `cargo bench --bench forward` (add `-- --quick` for a short run). Prints a table; every
//! figure is the median of 3 runs, with min and max.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use wamp_cluster::{
    Deliver, Delivery, Discard, ForwardOptions, NackReason, Node, NodeHandle, NodeId, PeerId,
    Verdict,
};

/// A handler that never answers (it keeps the answer channels so they stay open).
#[derive(Default)]
struct Silent(Mutex<Vec<oneshot::Sender<Result<(), NackReason>>>>);

impl Deliver for Silent {
    fn deliver(&self, _: Delivery) -> Verdict {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut held) = self.0.lock() {
            held.push(tx);
        }
        Verdict::Later(rx)
    }
}

/// Starts `n` nodes joined through the first; `silent` ones never answer.
async fn cluster(n: usize, silent: &[usize]) -> Vec<NodeHandle> {
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 0..n {
        let seeds: Vec<_> = nodes
            .first()
            .map(|s| s.membership().gossip_addr())
            .into_iter()
            .collect();
        let deliver: Arc<dyn Deliver> = if silent.contains(&i) {
            Arc::new(Silent::default())
        } else {
            Arc::new(Discard)
        };
        let config = common::node_config(&format!("node-{i}"), &seeds, common::tolerant());
        nodes.push(
            Node::builder(config)
                .deliver(deliver)
                .start()
                .await
                .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes[0].view().broadcast_targets().len() + 1 < n {
        assert!(Instant::now() < deadline, "cluster did not form");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes
}

fn from() -> PeerId {
    PeerId::session("realm1", "node-0", 1)
}

fn to() -> PeerId {
    PeerId::session("realm1", "node-1", 2)
}

/// Messages per second acked, with `window` in flight.
async fn throughput(a: &NodeHandle, count: u64, window: usize) -> f64 {
    let f = a.forwarder();
    let options = ForwardOptions::default();
    let mut in_flight = std::collections::VecDeque::with_capacity(window);
    let start = Instant::now();
    for i in 0..count {
        if in_flight.len() == window {
            let id = in_flight.pop_front().unwrap();
            f.receive_ack(id, Duration::from_secs(10)).await.unwrap();
        }
        in_flight.push_back(
            f.async_forward(from(), to(), common::publish(i), &options)
                .await
                .unwrap(),
        );
    }
    for id in in_flight {
        f.receive_ack(id, Duration::from_secs(10)).await.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// `forward` round trips, one in flight: (p50, p99, p99.9) in microseconds.
async fn latency(a: &NodeHandle, count: usize) -> (f64, f64, f64) {
    let f = a.forwarder();
    let options = ForwardOptions::default();
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let start = Instant::now();
        f.forward(from(), to(), common::publish(i as u64), &options)
            .await
            .unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.5), at(0.99), at(0.999))
}

/// Milliseconds for a broadcast to `targets` with the given timeout.
async fn broadcast(a: &NodeHandle, targets: &[NodeId], timeout: Duration) -> (f64, usize) {
    let options = ForwardOptions {
        timeout: Some(timeout),
        fail_if_full: false,
    };
    let start = Instant::now();
    let result = a
        .forwarder()
        .broadcast(&from(), targets, &common::publish(0), &options)
        .await;
    (start.elapsed().as_secs_f64() * 1000.0, result.bad.len())
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

async fn run(quick: bool) {
    let (count, samples) = if quick {
        (50_000, 2_000)
    } else {
        (300_000, 20_000)
    };
    let pair = cluster(2, &[]).await;
    throughput(&pair[0], 10_000, 1024).await; // warm up connections and allocations
    let mut rates = Vec::new();
    let mut lat = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        rates.push(throughput(&pair[0], count, 4096).await);
        let (p50, p99, p999) = latency(&pair[0], samples).await;
        lat.0.push(p50);
        lat.1.push(p99);
        lat.2.push(p999);
    }
    for node in pair {
        node.abort().await.unwrap();
    }

    let timeout = Duration::from_millis(1000);
    let nodes = cluster(9, &[8]).await;
    let live: Vec<NodeId> = (1..8).map(|i| NodeId::from(format!("node-{i}"))).collect();
    let all: Vec<NodeId> = (1..9).map(|i| NodeId::from(format!("node-{i}"))).collect();
    let mut all_live = Vec::new();
    let mut one_silent = Vec::new();
    for _ in 0..3 {
        all_live.push(broadcast(&nodes[0], &live, timeout).await.0);
        let (ms, bad) = broadcast(&nodes[0], &all, timeout).await;
        assert_eq!(bad, 1, "one silent node");
        one_silent.push(ms);
    }
    for node in nodes {
        node.abort().await.unwrap();
    }

    let (r, rmin, rmax) = median(rates);
    let show = |name: &str, (m, lo, hi): (f64, f64, f64), unit: &str| {
        println!("{name:<44} {m:>12.1} {unit:<6} (min {lo:.1}, max {hi:.1})");
    };
    println!("forwarding, in-process nodes on loopback, medians of 3 runs");
    show(
        "async_forward throughput, 128 B, window 4096",
        (r, rmin, rmax),
        "msg/s",
    );
    show("forward latency p50", median(lat.0), "us");
    show("forward latency p99", median(lat.1), "us");
    show("forward latency p99.9", median(lat.2), "us");
    show("broadcast to 7 live nodes", median(all_live), "ms");
    show(
        "broadcast to 8, one silent, timeout 1000 ms",
        median(one_silent),
        "ms",
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The body runs as a task on the runtime's workers, not on the main thread.
    runtime.block_on(async { tokio::spawn(run(quick)).await.unwrap() });
}
