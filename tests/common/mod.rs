//! Helpers shared by the integration tests: free loopback ports, node configs, bounded waits.

#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use wamp_cluster::{Config, GossipConfig};

pub mod certs;
pub mod cluster;

/// A loopback port that is free for both UDP and TCP right now and was not handed out before
/// in this process.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..1000 {
        let Ok(tcp) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = tcp.local_addr().map(|a| a.port()) else {
            continue;
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut given = GIVEN.lock().unwrap();
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// A loopback address with a free port.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A node config on free loopback ports (admin on port 0), joining through `seeds`.
pub fn node_config(node_id: &str, seeds: &[SocketAddr], gossip: GossipConfig) -> Config {
    let mut config = Config::new(node_id);
    config.gossip_addr = free_addr();
    config.forward_addr = free_addr();
    config.admin_addr = "127.0.0.1:0".parse().unwrap();
    config.seeds = seeds.iter().map(ToString::to_string).collect();
    config.gossip = gossip;
    config
}

/// Gossip timings for tests that test failure detection: the LAN defaults, with a short join
/// timeout.
pub fn detecting() -> GossipConfig {
    GossipConfig {
        join_timeout_ms: Duration::from_millis(500),
        ..GossipConfig::lan()
    }
}

/// Gossip timings for tests that do not test failure detection: a loaded machine cannot make a
/// node look dead.
pub fn tolerant() -> GossipConfig {
    GossipConfig {
        join_timeout_ms: Duration::from_millis(500),
        ..GossipConfig::tolerant()
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; panics with `what` then.
pub async fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `future` for at most `timeout`; panics with `what` then.
pub async fn within<T>(timeout: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}

/// Tests that start gossiping nodes take this lock, so that they do not compete for the two
/// cores and make each other's nodes miss heartbeats.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An HTTP client whose every request ends within 5 s, so a stuck server fails a test rather
/// than hanging it.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client")
}

/// Waits at most `timeout` for `child` to exit; past it, kills and reaps it and returns `None`.
pub fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A PUBLISH with a 128-byte binary argument, as test traffic and benchmarks send.
pub fn publish(request: u64) -> wamp_cluster::wamp::WampMessage {
    use wamp_cluster::wamp::{Dict, Payload, Value, WampMessage};
    WampMessage::Publish {
        request,
        options: Dict::new(),
        topic: "com.example.topic".into(),
        payload: Payload::Args(vec![Value::Bytes(vec![0x5a; 128])]),
    }
}

/// A child process killed and reaped when dropped, even when the test fails.
pub struct Reaped(pub std::process::Child);

impl Reaped {
    /// Sends `signal` (as `kill` takes it: `-TERM`, `-INT`, ...).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A hello frame from `intruder` to `node-1` of `cluster`, as a node sends it.
pub fn hello_bytes(cluster: &str) -> Vec<u8> {
    let frame = wamp_cluster::wire::Frame::Hello(wamp_cluster::wire::Hello {
        magic: wamp_cluster::wire::MAGIC,
        min_version: 1,
        max_version: 1,
        cluster_id: cluster.into(),
        node_id: "intruder".into(),
        generation: 1,
        to_node: "node-1".into(),
    });
    let mut buf = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut wamp_cluster::wire::FrameCodec::new(1 << 20),
        &frame,
        &mut buf,
    )
    .unwrap();
    buf.to_vec()
}

/// The value of counter `series` (name and labels, as Prometheus renders them) in `metrics`;
/// 0 when absent.
pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<u64>().ok())
        .unwrap_or(0)
}
