//! Forwarding against the raw-TCP limit of its own design, measured in one run on one machine.
//! The suites, one module each:
//!
//! - [`raw`]: the baseline: 4-byte length + payload frames over a plain tokio TCP connection on
//!   loopback, pipelined, each answered with an 8-byte ack, writes batched on both sides;
//! - [`throughput`]: `async_forward` with acks between two in-process nodes, a PUBLISH whose
//!   `Arguments` hold one binary value, a window of messages in flight, a handler that accepts
//!   at once (and the ratio to raw); the same through a `Dispatcher` whose handler returns the
//!   verdict; the same while bad input arrives at the receiver's port; against message size,
//!   64 B to 64 KiB, drawn as an SVG chart;
//! - [`latency`]: `forward` round trips, one in flight, against raw ping-pong of the same size,
//!   in this process as placed by the runtime, and again with the whole process pinned to one
//!   CPU (`taskset -c 0`, a child run of this program); raw and ours are measured in alternating
//!   slices, so that both meet the same moments of a shared machine;
//! - [`broadcast`]: to 8 nodes, all live, and with one that never acks, against the timeout;
//! - [`memory`]: bytes per pending ack, resident memory with 100,000 acks pending, and
//!   allocations per message (both nodes, counted by a counting global allocator);
//! - [`protection`]: what the cluster secret and TLS cost;
//! - and the `Down` events either node saw while forwarding saturated the cores.
//!
//! Run: `cargo bench --bench forward` (`-- --quick` for a smoke run under 90 s; `--
//! --throughput-only N [--dispatcher]` for profilers: one throughput figure). Prints a table
//! ([`report`]) and writes `target/bench/forward.json` and `target/bench/forward-sizes.svg`
//! (`--out DIR` for another folder). Figures of repeated runs are medians (3 runs; 1 with
//! `--quick`).

mod broadcast;
mod latency;
mod memory;
mod protection;
mod raw;
mod report;
mod throughput;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wamp_cluster::testkit::cluster::{Cluster, Mode};
use wamp_cluster::testkit::{node_config, tolerant, wait_until};
use wamp_cluster::{Config, Dispatcher, Node, NodeHandle, NodeId};

/// Workers of the Dispatcher figure: one per core.
const DISPATCHER_WORKERS: usize = 2;

/// A change to a node's configuration.
type Tweak<'a> = dyn Fn(&mut Config) + Sync + 'a;

/// `n` nodes joined through the first, whose handlers accept at once and keep nothing;
/// `silent` ones never answer. Node `i` advertises `advertise[i]` as its forward address when
/// given.
async fn cluster(n: usize, silent: &[usize], advertise: &[(usize, SocketAddr)]) -> Vec<NodeHandle> {
    cluster_with(n, silent, advertise, &|_| {}).await
}

/// [`cluster`], with each configuration changed by `tweak`.
async fn cluster_with(
    n: usize,
    silent: &[usize],
    advertise: &[(usize, SocketAddr)],
    tweak: &Tweak<'_>,
) -> Vec<NodeHandle> {
    let c = Cluster::start_with(n, |config| {
        let i: usize = config.node_id["node-".len()..]
            .parse()
            .unwrap_or(usize::MAX);
        config.forward_advertise_addr = advertise.iter().find(|(k, _)| *k == i).map(|(_, a)| *a);
        tweak(config);
    })
    .await;
    for (i, recorder) in c.recorders.iter().enumerate() {
        recorder.set_mode(if silent.contains(&i) {
            Mode::Hang
        } else {
            Mode::Discard
        });
    }
    c.nodes
}

/// A pair whose receiver's verdicts come from a [`Dispatcher`]'s workers: the handler a router
/// puts behind the node when it must do something before it can answer.
async fn dispatched_pair() -> Vec<NodeHandle> {
    let a = Node::builder(node_config("node-0", &[], tolerant()), |_, _| {
        wamp_cluster::Discard
    })
    .start()
    .await
    .unwrap();
    let b_config = node_config("node-1", &[a.membership().gossip_addr()], tolerant());
    let b = Node::builder(b_config, |_, _| {
        Dispatcher::new(DISPATCHER_WORKERS, 65_536, |_| async { Ok(()) })
    })
    .start()
    .await
    .unwrap();
    wait_until(Duration::from_secs(30), "the pair formed", || {
        a.membership().view().is_target("node-1")
    })
    .await;
    vec![a, b]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run(quick: bool) -> Value {
    let runs = if quick { 1 } else { 3 };
    let (count, samples) = if quick {
        (100_000, 5_000)
    } else {
        (500_000, 20_000)
    };
    let window = 4096;
    // Memory first, while the process holds nothing else.
    let pending = 100_000;
    let (per_pending, rss) = memory::per_pending_ack(pending).await;
    let server = raw::server().await;
    let pair = cluster(2, &[], &[]).await;
    let mut downs = Vec::new();
    for node in &pair {
        let mut events = node.membership().subscribe_events();
        downs.push(tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                match events.recv().await {
                    Ok(event) if event.kind() == "down" => n += 1,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return n,
                }
            }
        }));
    }
    // Warm up connections and allocations.
    throughput::forward(&pair[0], 20_000, 128, window).await;
    raw::throughput(server, 200_000, 128, window).await;

    let (mut raw_rates, mut rates) = (Vec::new(), Vec::new());
    let mut lat: [Vec<f64>; 6] = Default::default();
    let mut allocations = Vec::new();
    let (mut attacked, mut attacks) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        raw_rates.push(raw::throughput(server, count * 20, 128, window).await);
        rates.push(throughput::forward(&pair[0], count, 128, window).await);
        let (rate, per_sec) = throughput::under_bad_input(&pair, count, window).await;
        attacked.push(rate);
        attacks.push(per_sec);
        allocations.push(memory::allocations_per_message(&pair[0], count / 5).await);
        let (raw, ours) = latency::alternating(server, &pair[0], samples).await;
        for k in 0..3 {
            lat[k].push(raw[k]);
            lat[3 + k].push(ours[k]);
        }
    }
    // The same pair's receiver, with its verdicts given by a Dispatcher's workers.
    let dispatched = dispatched_pair().await;
    throughput::forward(&dispatched[0], 20_000, 128, window).await;
    let mut through_dispatcher = Vec::new();
    for _ in 0..runs {
        through_dispatcher.push(throughput::forward(&dispatched[0], count, 128, window).await);
    }
    for node in dispatched {
        node.abort().await;
    }
    let protection = protection::measure(runs, count, samples, window).await;

    let mut sizes = Vec::new();
    for size in [64usize, 256, 1024, 4096, 16384, 65536] {
        // About the same bytes per point; at least 2,000 messages.
        let budget: u64 = if quick { 64 << 20 } else { 256 << 20 };
        let n = (budget / size as u64).clamp(2_000, count);
        let raw = raw::throughput(server, (n * 10).max(n), size, window).await;
        let ours = throughput::forward(&pair[0], n, size, window.min(1024)).await;
        sizes.push(json!({ "bytes": size, "raw_msgs_per_sec": raw, "forward_msgs_per_sec": ours }));
    }
    for node in pair {
        node.abort().await;
    }
    let mut false_downs = 0;
    for d in downs {
        false_downs += d.await.unwrap_or(0);
    }

    let timeout = Duration::from_millis(1000);
    let nodes = cluster(9, &[8], &[]).await;
    let live: Vec<NodeId> = (1..8).map(|i| NodeId::from(format!("node-{i}"))).collect();
    let all: Vec<NodeId> = (1..9).map(|i| NodeId::from(format!("node-{i}"))).collect();
    let (mut all_live, mut one_silent) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        all_live.push(broadcast::time(&nodes[0], &live, timeout).await.0);
        let (ms, bad) = broadcast::time(&nodes[0], &all, timeout).await;
        assert_eq!(bad, 1, "one silent node");
        one_silent.push(ms);
    }
    for node in nodes {
        node.abort().await;
    }

    let (raw_rate, rate) = (median(raw_rates), median(rates));
    let l: Vec<f64> = lat.into_iter().map(median).collect();
    json!({
        "quick": quick,
        "runs": runs,
        "throughput": {
            "raw_msgs_per_sec": raw_rate,
            "forward_msgs_per_sec": rate,
            "ratio": rate / raw_rate,
            "window": window,
            "payload_bytes": 128,
        },
        "latency": {
            "placement": "one process, the runtime's two workers",
            "raw_p50_us": l[0], "raw_p99_us": l[1], "raw_p999_us": l[2],
            "forward_p50_us": l[3], "forward_p99_us": l[4], "forward_p999_us": l[5],
            "p50_ratio": l[3] / l[0], "p99_ratio": l[4] / l[1], "p999_ratio": l[5] / l[2],
        },
        "broadcast": {
            "nodes": 8,
            "all_live_ms": median(all_live),
            "one_silent_ms": median(one_silent),
            "timeout_ms": timeout.as_millis() as u64,
        },
        "memory": {
            "bytes_per_pending_ack": per_pending,
            "rss_bytes_100k_pending": rss,
        },
        "bad_input": {
            "forward_msgs_per_sec": median(attacked.clone()),
            "ratio_to_clean": median(attacked) / rate,
            "connections_per_sec": median(attacks),
        },
        "protection": protection,
        "dispatcher": {
            "workers": DISPATCHER_WORKERS,
            "forward_msgs_per_sec": median(through_dispatcher.clone()),
            "ratio_to_direct": median(through_dispatcher) / rate,
        },
        "allocations": { "per_message": median(allocations) },
        "membership": { "false_downs": false_downs },
        "sizes": sizes,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // For profilers: only the 128-byte acked throughput, for this many messages (through the
    // Dispatcher with `--dispatcher`).
    let dispatcher = args.iter().any(|a| a == "--dispatcher");
    if let Some(count) = args
        .iter()
        .position(|a| a == "--throughput-only")
        .and_then(|i| args.get(i + 1)?.parse::<u64>().ok())
    {
        let rate = runtime.block_on(async move {
            tokio::spawn(async move {
                let pair = if dispatcher {
                    dispatched_pair().await
                } else {
                    cluster(2, &[], &[]).await
                };
                let rate = throughput::forward(&pair[0], count, 128, 4096).await;
                let per = memory::allocations_per_message(&pair[0], (count / 10).max(10_000)).await;
                (rate, per)
            })
            .await
            .unwrap()
        });
        println!("{:.0} msg/s, {:.2} allocations per message", rate.0, rate.1);
        return;
    }
    if args.iter().any(|a| a == "--pinned-child") {
        let samples = if quick { 5_000 } else { 20_000 };
        let value =
            runtime.block_on(async { tokio::spawn(latency::pinned_child(samples)).await.unwrap() });
        println!("{value}");
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    let started = Instant::now();
    // The body runs as a task on the runtime's workers, not on the main thread.
    let mut report = runtime.block_on(async { tokio::spawn(run(quick)).await.unwrap() });
    drop(runtime);
    let pinned = latency::run_pinned(quick);
    if let Some(p) = &pinned {
        let lat = &mut report["latency"];
        for (k, q) in ["p50", "p99", "p999"].iter().enumerate() {
            let (raw, ours) = (
                p["raw"][k].as_f64().unwrap_or(0.0),
                p["forward"][k].as_f64().unwrap_or(0.0),
            );
            lat[format!("pinned_raw_{q}_us")] = raw.into();
            lat[format!("pinned_forward_{q}_us")] = ours.into();
            lat[format!("pinned_{q}_ratio")] = (ours / raw).into();
        }
    }
    report["seconds"] = started.elapsed().as_secs_f64().into();

    report::print(&report, pinned.is_some());
    let dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench"));
    report::write(&report, &dir);
}
