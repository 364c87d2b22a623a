//! Forwarding against the raw-TCP limit of its own design, measured in one run on one machine.
//!
//! - raw baseline: 4-byte length + payload frames over a plain tokio TCP connection on
//!   loopback, pipelined, each answered with an 8-byte ack, writes batched on both sides;
//! - wamp-cluster: `async_forward` with acks between two in-process nodes, a PUBLISH whose
//!   `Arguments` hold one binary value, a window of messages in flight, a handler that accepts
//!   at once; and the ratio;
//! - `forward` latency, one in flight, against raw ping-pong round trips of the same size, in
//!   this process as placed by the runtime, and again with the whole process pinned to one CPU
//!   (`taskset -c 0`, a child run of this program); raw and ours are measured in alternating
//!   slices, so that both meet the same moments of a shared machine;
//! - broadcast to 8 nodes, all live, and with one that never acks, against the ack timeout;
//! - memory: bytes per pending ack, and resident memory with 100,000 acks pending;
//! - allocations per message (both nodes, counted by a counting global allocator);
//! - throughput against message size, 64 B to 64 KiB, raw and ours, drawn as an SVG chart;
//! - the `Down` events either node saw while forwarding saturated the cores.
//!
//! Run: `cargo bench --bench forward` (`-- --quick` for a smoke run under 90 s). Prints a table
//! and writes `target/bench/forward.json` and `target/bench/forward-sizes.svg` (`--out DIR` for
//! another folder). Figures of repeated runs are medians (3 runs; 1 with `--quick`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use wamp_cluster::security::Secret;
use wamp_cluster::wamp::{Dict, Payload, Value as WampValue, WampMessage};
use wamp_cluster::{
    Deliver, Delivery, Discard, ForwardOptions, NackReason, Node, NodeHandle, NodeId, PeerId,
    Verdict,
};

/// Counts every allocation of the process while [`COUNTING`] is set. Off, it costs a read of a
/// flag that never changes meanwhile; on, a shared counter that both cores bump (a few per
/// cent of the run), so throughput is measured with it off and allocations in a run of their
/// own.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count_allocation() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations per message (both nodes and the caller) while forwarding `count` 128-byte
/// messages.
async fn allocations_per_message(a: &NodeHandle, count: u64) -> f64 {
    COUNTING.store(true, Ordering::Relaxed);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    forward_throughput(a, count, 128, 4096).await;
    let counted = ALLOCATIONS.load(Ordering::Relaxed) - before;
    COUNTING.store(false, Ordering::Relaxed);
    counted as f64 / count as f64
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

/// Starts `n` nodes joined through the first; `silent` ones never answer. Node `i` advertises
/// `advertise[i]` as its forward address when given.
async fn cluster(n: usize, silent: &[usize], advertise: &[(usize, SocketAddr)]) -> Vec<NodeHandle> {
    cluster_with(n, silent, advertise, &|_| {}).await
}

/// A change to a node's configuration.
type Tweak<'a> = dyn Fn(&mut wamp_cluster::Config) + Sync + 'a;

/// [`cluster`], with each configuration changed by `tweak`.
async fn cluster_with(
    n: usize,
    silent: &[usize],
    advertise: &[(usize, SocketAddr)],
    tweak: &Tweak<'_>,
) -> Vec<NodeHandle> {
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
        let mut config = common::node_config(&format!("node-{i}"), &seeds, common::tolerant());
        config.forward_advertise_addr = advertise.iter().find(|(k, _)| *k == i).map(|(_, a)| *a);
        tweak(&mut config);
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

/// A PUBLISH whose `Arguments` hold one binary value of `size` bytes.
fn publish(request: u64, size: usize) -> WampMessage {
    WampMessage::Publish {
        request,
        options: Dict::new(),
        topic: "com.example.topic".into(),
        payload: Payload::Args(vec![WampValue::Bytes(vec![0x5a; size])]),
    }
}

/// Messages per second acked, `count` messages of `size` bytes with `window` in flight.
async fn forward_throughput(a: &NodeHandle, count: u64, size: usize, window: usize) -> f64 {
    let f = a.forwarder();
    let options = ForwardOptions::default();
    let message = publish(0, size);
    let (from, to) = (from(), to());
    let mut in_flight = VecDeque::with_capacity(window);
    let start = Instant::now();
    for _ in 0..count {
        if in_flight.len() == window {
            let id = in_flight.pop_front().unwrap();
            f.receive_ack(id, Duration::from_secs(10)).await.unwrap();
        }
        // The caller keeps its ids and message and lends them.
        in_flight.push_back(
            f.async_forward(&from, &to, &message, &options)
                .await
                .unwrap(),
        );
    }
    for id in in_flight {
        f.receive_ack(id, Duration::from_secs(10)).await.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// A raw server: reads length-prefixed frames and answers each with an 8-byte ack (its
/// number), writing the acks of everything one read brought in one write.
async fn raw_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut read, mut write) = stream.into_split();
                let mut buf = BytesMut::with_capacity(256 * 1024);
                let mut out = Vec::with_capacity(64 * 1024);
                let mut seq: u64 = 0;
                loop {
                    match read.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    while buf.len() >= 4 {
                        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        if buf.len() < 4 + len {
                            buf.reserve(4 + len);
                            break;
                        }
                        buf.advance(4 + len);
                        seq += 1;
                        out.extend_from_slice(&seq.to_be_bytes());
                    }
                    if !out.is_empty() {
                        if write.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
            });
        }
    });
    addr
}

/// Raw acked frames per second: `count` frames of `size` bytes, at most `window` unacked,
/// written in batches.
async fn raw_throughput(server: SocketAddr, count: u64, size: usize, window: usize) -> f64 {
    let stream = TcpStream::connect(server).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut read, mut write) = stream.into_split();
    let room = Arc::new(Semaphore::new(window));
    let start = Instant::now();
    let reader = {
        let room = room.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let (mut acked, mut partial) = (0u64, 0usize);
            while acked < count {
                let n = read.read(&mut buf).await.unwrap();
                assert!(n > 0, "the raw server closed");
                partial += n;
                let whole = (partial / 8) as u64;
                partial %= 8;
                acked += whole;
                room.add_permits(whole as usize);
            }
        })
    };
    let mut frame = (size as u32).to_be_bytes().to_vec();
    frame.resize(4 + size, 0x5a);
    let batch_frames = (64 * 1024 / (4 + size)).max(1);
    let mut out = Vec::with_capacity(batch_frames * frame.len());
    let mut sent = 0u64;
    while sent < count {
        let n = (batch_frames as u64).min(count - sent) as u32;
        room.acquire_many(n).await.unwrap().forget();
        for _ in 0..n {
            out.extend_from_slice(&frame);
        }
        write.write_all(&out).await.unwrap();
        out.clear();
        sent += u64::from(n);
    }
    reader.await.unwrap();
    count as f64 / start.elapsed().as_secs_f64()
}

/// Percentiles p50, p99, p99.9 of `samples` (microseconds).
fn percentiles(mut samples: Vec<f64>) -> [f64; 3] {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    [at(0.5), at(0.99), at(0.999)]
}

/// `forward` round trips of 128-byte messages, one in flight, in microseconds.
async fn forward_latency(a: &NodeHandle, count: usize) -> Vec<f64> {
    let f = a.forwarder();
    let options = ForwardOptions::default();
    let mut samples = Vec::with_capacity(count);
    // Built before, as the raw side's frame is: the clock times the call alone.
    let (from, to, message) = (from(), to(), publish(0, 128));
    for _ in 0..count {
        let start = Instant::now();
        f.forward(&from, &to, &message, &options).await.unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples
}

/// Raw ping-pong round trips: a 4 + 128-byte frame out, an 8-byte ack back, one in flight.
async fn raw_latency(stream: &mut TcpStream, count: usize) -> Vec<f64> {
    let mut frame = 128u32.to_be_bytes().to_vec();
    frame.resize(4 + 128, 0x5a);
    let mut ack = [0u8; 8];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        stream.write_all(&frame).await.unwrap();
        stream.read_exact(&mut ack).await.unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples
}

/// Percentiles of `samples` round trips, raw and ours, measured in alternating slices of a
/// tenth each, so that both meet the same moments of a shared machine.
async fn latencies(server: SocketAddr, a: &NodeHandle, samples: usize) -> ([f64; 3], [f64; 3]) {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        raw.extend(raw_latency(&mut stream, samples / 10).await);
        ours.extend(forward_latency(a, samples / 10).await);
    }
    (percentiles(raw), percentiles(ours))
}

/// Milliseconds for a broadcast to `targets` with the given timeout, and how many were bad.
async fn broadcast(a: &NodeHandle, targets: &[NodeId], timeout: Duration) -> (f64, usize) {
    let options = ForwardOptions {
        timeout: Some(timeout),
        fail_if_full: false,
    };
    let start = Instant::now();
    let result = a
        .forwarder()
        .broadcast(&from(), targets, &publish(0, 128), &options)
        .await;
    (start.elapsed().as_secs_f64() * 1000.0, result.bad.len())
}

/// Bad input at `target` (a forward port) until `stop` is set (at most two minutes): one
/// connection a millisecond, in turn random bytes, a length over the limit, a wrong cluster
/// id, and a hello trickled a byte every 100 ms on up to 16 connections held open. Returns the
/// connections made.
async fn bad_input(target: SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let mut garbage = vec![0u8; 1024];
    let mut state: u32 = 7;
    for byte in garbage.iter_mut() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *byte = (state >> 16) as u8;
    }
    let wrong_cluster = common::hello_bytes("another");
    let hello = common::hello_bytes("default");
    let mut trickling: VecDeque<(TcpStream, usize)> = VecDeque::new();
    let end = Instant::now() + Duration::from_secs(120);
    let mut made = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The trickles: one more byte each every 100 ms.
        if made % 100 == 0 {
            for _ in 0..trickling.len() {
                let Some((mut stream, at)) = trickling.pop_front() else {
                    break;
                };
                if at < hello.len() && stream.write_all(&hello[at..=at]).await.is_ok() {
                    trickling.push_back((stream, at + 1));
                }
            }
        }
        let Ok(mut stream) = TcpStream::connect(target).await else {
            continue;
        };
        made += 1;
        let _ = match made % 4 {
            0 => stream.write_all(&garbage).await,
            1 => stream.write_all(&u32::MAX.to_be_bytes()).await,
            2 => stream.write_all(&wrong_cluster).await,
            _ if trickling.len() < 16 => {
                trickling.push_back((stream, 0));
                Ok(())
            }
            _ => Ok(()),
        };
    }
    made
}

/// Forward throughput while bad input arrives at the receiver's forward port, and the bad
/// connections made a second.
async fn throughput_under_bad_input(pair: &[NodeHandle], count: u64, window: usize) -> (f64, f64) {
    let target = pair[1].view().self_member().unwrap().forward_addr.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = tokio::spawn(bad_input(target, stop.clone()));
    // Let the trickles start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let rate = forward_throughput(&pair[0], count, 128, window).await;
    let elapsed = start.elapsed().as_secs_f64() + 0.2;
    stop.store(true, Ordering::Relaxed);
    let made = attacker.await.unwrap_or(0);
    (rate, made as f64 / elapsed)
}

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A listener that does the handshake of a forwarding connection and then reads everything
/// and answers nothing: a peer that never acks and holds nothing per message.
async fn black_hole() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use wamp_cluster::wire::{Frame, FrameCodec};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::new(1 << 20));
                if let Some(Ok(Frame::Hello(_))) = framed.next().await {
                    let _ = framed.send(&Frame::Welcome { version: 1 }).await;
                }
                let mut stream = framed.into_inner();
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Bytes per pending ack, and the process's resident memory with `pending` acks pending.
async fn memory(pending: u64) -> (f64, u64) {
    let hole = black_hole().await;
    let nodes = cluster(2, &[], &[(1, hole)]).await;
    let f = nodes[0].forwarder();
    let options = ForwardOptions {
        timeout: Some(Duration::from_secs(3600)),
        fail_if_full: false,
    };
    let message = publish(0, 128);
    // Warm up: the link, its buffers, the table's first growth.
    let mut ids = Vec::with_capacity(pending as usize + 10_000);
    for _ in 0..10_000 {
        ids.push(
            f.async_forward(from(), to(), message.clone(), &options)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes();
    for _ in 0..pending {
        ids.push(
            f.async_forward(from(), to(), message.clone(), &options)
                .await
                .unwrap(),
        );
    }
    // Let the link write everything out, so that what stays is the pending table.
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.stats().values().map(|s| s.sent).sum::<u64>() < pending + 10_000
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    for node in nodes {
        node.abort().await.unwrap();
    }
    drop(ids);
    (after.saturating_sub(before) as f64 / pending as f64, after)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// What the child run pinned to one CPU measures: latencies, raw and ours.
async fn pinned_latencies(samples: usize) -> Value {
    let server = raw_server().await;
    let pair = cluster(2, &[], &[]).await;
    forward_latency(&pair[0], 1000).await;
    let (raw, ours) = latencies(server, &pair[0], samples).await;
    for node in pair {
        node.abort().await.unwrap();
    }
    json!({ "raw": raw, "forward": ours })
}

/// Runs this program again pinned to CPU 0 and returns what it measured, if `taskset` works.
fn run_pinned(quick: bool) -> Option<Value> {
    let me = std::env::current_exe().ok()?;
    let mut command = std::process::Command::new("taskset");
    command.args(["-c", "0"]).arg(me).arg("--pinned-child");
    if quick {
        command.arg("--quick");
    }
    let out = command.output().ok()?;
    if !out.status.success() {
        eprintln!(
            "pinned run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    serde_json::from_str(text.lines().last()?).ok()
}

/// Draws throughput against message size, raw and ours, on log scales.
fn chart(sizes: &[Value], path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let points = |key: &str| -> Vec<(f64, f64)> {
        sizes
            .iter()
            .map(|s| {
                (
                    s["bytes"].as_f64().unwrap_or(1.0),
                    s[key].as_f64().unwrap_or(1.0),
                )
            })
            .collect()
    };
    let (raw, ours) = (points("raw_msgs_per_sec"), points("forward_msgs_per_sec"));
    let top = raw.iter().chain(&ours).map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let bottom = raw
        .iter()
        .chain(&ours)
        .map(|p| p.1)
        .fold(f64::MAX, f64::min)
        / 2.0;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "acked messages per second against message size",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((32f64..131072f64).log_scale(), (bottom..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("payload bytes")
        .y_desc("messages per second")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    for (name, series, color) in [("raw TCP", raw, BLUE), ("wamp-cluster", ours, RED)] {
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
        chart.draw_series(
            series
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
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
    let (per_pending, rss) = memory(pending).await;
    let server = raw_server().await;
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
    forward_throughput(&pair[0], 20_000, 128, window).await;
    raw_throughput(server, 200_000, 128, window).await;

    let (mut raw_rates, mut rates) = (Vec::new(), Vec::new());
    let mut lat: [Vec<f64>; 6] = Default::default();
    let mut allocations = Vec::new();
    let (mut attacked, mut attacks) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        raw_rates.push(raw_throughput(server, count * 20, 128, window).await);
        rates.push(forward_throughput(&pair[0], count, 128, window).await);
        let (rate, per_sec) = throughput_under_bad_input(&pair, count, window).await;
        attacked.push(rate);
        attacks.push(per_sec);
        allocations.push(allocations_per_message(&pair[0], count / 5).await);
        let (raw, ours) = latencies(server, &pair[0], samples).await;
        for k in 0..3 {
            lat[k].push(raw[k]);
            lat[3 + k].push(ours[k]);
        }
    }
    // What the cluster secret and TLS cost: a pair of each kind, measured in turns.
    let ca = common::certs::Authority::new();
    let secret = |config: &mut wamp_cluster::Config| {
        config.cluster_secret = Some(Secret::new("a-secret-for-the-bench-0123"));
    };
    let tls = |config: &mut wamp_cluster::Config| {
        secret(config);
        let name = config.node_id.clone();
        ca.configure(config, &name);
    };
    let kinds: [(&str, &Tweak<'_>); 3] = [
        ("plain", &|_| {}),
        ("secret", &secret),
        ("secret_and_tls", &tls),
    ];
    let mut protected = Vec::new();
    for (name, tweak) in kinds {
        let nodes = cluster_with(2, &[], &[], tweak).await;
        forward_throughput(&nodes[0], 20_000, 128, window).await;
        protected.push((name, nodes, Vec::new(), Vec::new(), Vec::new()));
    }
    for _ in 0..runs {
        for (_, nodes, rates, p50, p99) in &mut protected {
            rates.push(forward_throughput(&nodes[0], count, 128, window).await);
            let [a, b, _] = percentiles(forward_latency(&nodes[0], samples).await);
            p50.push(a);
            p99.push(b);
        }
    }
    let mut protection = serde_json::Map::new();
    for (name, nodes, rates, p50, p99) in protected {
        for node in nodes {
            node.abort().await.unwrap();
        }
        protection.insert(
            name.into(),
            json!({
                "forward_msgs_per_sec": median(rates),
                "p50_us": median(p50),
                "p99_us": median(p99),
            }),
        );
    }

    let mut sizes = Vec::new();
    for size in [64usize, 256, 1024, 4096, 16384, 65536] {
        // About the same bytes per point; at least 2,000 messages.
        let budget: u64 = if quick { 64 << 20 } else { 256 << 20 };
        let n = (budget / size as u64).clamp(2_000, count);
        let raw = raw_throughput(server, (n * 10).max(n), size, window).await;
        let ours = forward_throughput(&pair[0], n, size, window.min(1024)).await;
        sizes.push(json!({ "bytes": size, "raw_msgs_per_sec": raw, "forward_msgs_per_sec": ours }));
    }
    for node in pair {
        node.abort().await.unwrap();
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
        all_live.push(broadcast(&nodes[0], &live, timeout).await.0);
        let (ms, bad) = broadcast(&nodes[0], &all, timeout).await;
        assert_eq!(bad, 1, "one silent node");
        one_silent.push(ms);
    }
    for node in nodes {
        node.abort().await.unwrap();
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
    // For profilers: only the 128-byte acked throughput, for this many messages.
    if let Some(count) = args
        .iter()
        .position(|a| a == "--throughput-only")
        .and_then(|i| args.get(i + 1)?.parse::<u64>().ok())
    {
        let rate = runtime.block_on(async move {
            tokio::spawn(async move {
                let pair = cluster(2, &[], &[]).await;
                let rate = forward_throughput(&pair[0], count, 128, 4096).await;
                let per = allocations_per_message(&pair[0], (count / 10).max(10_000)).await;
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
            runtime.block_on(async { tokio::spawn(pinned_latencies(samples)).await.unwrap() });
        println!("{value}");
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    let started = Instant::now();
    // The body runs as a task on the runtime's workers, not on the main thread.
    let mut report = runtime.block_on(async { tokio::spawn(run(quick)).await.unwrap() });
    drop(runtime);
    let pinned = run_pinned(quick);
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

    let t = &report["throughput"];
    let l = &report["latency"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "forwarding against raw TCP on loopback ({} run(s), medians)",
        report["runs"]
    );
    println!(
        "{:<52} {:>14} {:>14} {:>8}",
        "figure", "raw", "wamp-cluster", "ratio"
    );
    println!(
        "{:<52} {:>14.0} {:>14.0} {:>8.4}",
        "acked msg/s, 128 B, window 4096",
        f(&t["raw_msgs_per_sec"]),
        f(&t["forward_msgs_per_sec"]),
        f(&t["ratio"])
    );
    let bad = &report["bad_input"];
    println!(
        "{:<52} {:>14} {:>14.0} {:>8.4}",
        format!(
            "  the same, bad input at the port ({:.0} conn/s)",
            f(&bad["connections_per_sec"])
        ),
        "",
        f(&bad["forward_msgs_per_sec"]),
        f(&bad["ratio_to_clean"])
    );
    for q in ["p50", "p99", "p999"] {
        println!(
            "{:<52} {:>14.1} {:>14.1} {:>8.2}",
            format!("round trip {q}, µs (runtime's placement)"),
            f(&l[format!("raw_{q}_us")]),
            f(&l[format!("forward_{q}_us")]),
            f(&l[format!("{q}_ratio")])
        );
    }
    if pinned.is_some() {
        for q in ["p50", "p99", "p999"] {
            println!(
                "{:<52} {:>14.1} {:>14.1} {:>8.2}",
                format!("round trip {q}, µs (pinned to one CPU)"),
                f(&l[format!("pinned_raw_{q}_us")]),
                f(&l[format!("pinned_forward_{q}_us")]),
                f(&l[format!("pinned_{q}_ratio")])
            );
        }
    }
    for size in report["sizes"].as_array().cloned().unwrap_or_default() {
        let (raw, ours) = (
            f(&size["raw_msgs_per_sec"]),
            f(&size["forward_msgs_per_sec"]),
        );
        println!(
            "{:<52} {raw:>14.0} {ours:>14.0} {:>8.4}",
            format!("acked msg/s, {} B", size["bytes"]),
            ours / raw
        );
    }
    let p = &report["protection"];
    for kind in ["plain", "secret", "secret_and_tls"] {
        println!(
            "{:<52} {:>10.0} msg/s ({:.3}×)  p50 {:>6.1} µs  p99 {:>6.1} µs",
            format!("protection: {kind}, 128 B"),
            f(&p[kind]["forward_msgs_per_sec"]),
            f(&p[kind]["forward_msgs_per_sec"]) / f(&p["plain"]["forward_msgs_per_sec"]),
            f(&p[kind]["p50_us"]),
            f(&p[kind]["p99_us"]),
        );
    }
    let b = &report["broadcast"];
    println!(
        "broadcast to 8, all live: {:.1} ms; one silent: {:.1} ms against a {} ms timeout ({:.3}×)",
        f(&b["all_live_ms"]),
        f(&b["one_silent_ms"]),
        b["timeout_ms"],
        f(&b["one_silent_ms"]) / f(&b["timeout_ms"])
    );
    let m = &report["memory"];
    println!(
        "memory: {:.0} bytes per pending ack; {:.1} MiB resident with 100,000 pending",
        f(&m["bytes_per_pending_ack"]),
        f(&m["rss_bytes_100k_pending"]) / 1048576.0
    );
    println!(
        "allocations per message (both nodes): {:.2}; false downs under load: {}; {:.0} s in all",
        f(&report["allocations"]["per_message"]),
        report["membership"]["false_downs"],
        f(&report["seconds"])
    );

    let dir = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("forward.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    if let Err(err) = chart(
        report["sizes"].as_array().map_or(&[][..], |v| v),
        &dir.join("forward-sizes.svg"),
    ) {
        eprintln!("the size chart could not be drawn: {err}");
    }
    println!(
        "wrote {} and forward-sizes.svg",
        dir.join("forward.json").display()
    );
}
