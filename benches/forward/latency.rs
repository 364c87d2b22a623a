//! Round trips, one message in flight: `forward` against raw ping-pong of the same size,
//! measured in alternating slices so that both meet the same moments of a shared machine; in
//! this process as the runtime places it, and in a child run pinned to one CPU.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::net::TcpStream;
use wamp_cluster::testkit::publish_of;
use wamp_cluster::{ForwardOptions, NodeHandle};

use crate::{cluster, raw};
use wamp_cluster::testkit::cluster::{from, to};

/// Percentiles p50, p99, p99.9 of `samples` (microseconds).
pub fn percentiles(mut samples: Vec<f64>) -> [f64; 3] {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    [at(0.5), at(0.99), at(0.999)]
}

/// `forward` round trips of 128-byte messages, one in flight, in microseconds.
pub async fn forward(a: &NodeHandle, count: usize) -> Vec<f64> {
    let f = a.forwarder();
    let options = ForwardOptions::default();
    let mut samples = Vec::with_capacity(count);
    // Built before, as the raw side's frame is: the clock times the call alone.
    let (from, to, message) = (from(a), to("node-1"), publish_of(0, 128));
    for _ in 0..count {
        let start = Instant::now();
        f.forward(&from, &to, &message, &options).await.unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples
}

/// Percentiles of `samples` round trips, raw and ours, measured in alternating slices of a
/// tenth each, so that both meet the same moments of a shared machine.
pub async fn alternating(
    server: SocketAddr,
    a: &NodeHandle,
    samples: usize,
) -> ([f64; 3], [f64; 3]) {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        raw.extend(raw::latency(&mut stream, samples / 10).await);
        ours.extend(forward(a, samples / 10).await);
    }
    (percentiles(raw), percentiles(ours))
}

/// What the child run pinned to one CPU measures: latencies, raw and ours.
pub async fn pinned_child(samples: usize) -> Value {
    let server = raw::server().await;
    let pair = cluster(2, &[], &[]).await;
    forward(&pair[0], 1000).await;
    let (raw, ours) = alternating(server, &pair[0], samples).await;
    for node in pair {
        node.abort().await;
    }
    json!({ "raw": raw, "forward": ours })
}

/// Runs this program again pinned to CPU 0 and returns what it measured, if `taskset` works.
pub fn run_pinned(quick: bool) -> Option<Value> {
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
