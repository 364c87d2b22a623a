//! Tools for testing and measuring a cluster, behind the `testkit` feature: the tests, the
//! benchmarks and the launcher use these, and no node needs them.
//!
//! - [`cluster`]: nodes in one process on free loopback ports, with a handler that records what
//!   it gets and can refuse or never answer.
//! - [`relay`]: a TCP relay in front of a node that can cut the connections it carries without
//!   closing them.
//! - [`traffic`]: the node program's test traffic, and the record of it that survives
//!   `kill -9`.
//! - [`records`]: the invariants checked on those records.
//! - [`chart`]: line charts as SVG, for benchmark and launcher reports.
//! - [`certs`]: TLS certificates made at run time.
//! - [`protocol`]: the wire format and the handshake's proofs, for tests that speak to a node
//!   byte by byte.
//!
//! Here too, every wait has a deadline: a helper that waits panics with what it waited for
//! when its time runs out.

pub mod certs;
pub mod chart;
pub mod cluster;
pub mod protocol;
pub mod records;
pub mod relay;
pub mod traffic;

use std::collections::HashSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::{Config, GossipConfig};
use crate::wamp::{Dict, Payload, Value, WampMessage};

/// A port on `ip` that is free for both UDP and TCP right now and was not handed out before in
/// this process; `None` if none is found in a thousand tries.
pub fn free_port_on(ip: IpAddr) -> Option<u16> {
    for _ in 0..1000 {
        let Ok(tcp) = TcpListener::bind((ip, 0)) else {
            continue;
        };
        let Ok(port) = tcp.local_addr().map(|a| a.port()) else {
            continue;
        };
        drop(tcp);
        if take(ip, port) {
            return Some(port);
        }
    }
    None
}

/// Takes `port` on `ip` if it is free for UDP and TCP and was not given out before.
fn take(ip: IpAddr, port: u16) -> bool {
    static GIVEN: Mutex<Option<HashSet<(IpAddr, u16)>>> = Mutex::new(None);
    if TcpListener::bind((ip, port)).is_err() || UdpSocket::bind((ip, port)).is_err() {
        return false;
    }
    GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get_or_insert_with(HashSet::new)
        .insert((ip, port))
}

/// A loopback port free for UDP and TCP whose next port is free too, both given out here (a
/// program that takes a port and the one after it). Panics if there is none.
pub fn free_port_pair() -> u16 {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for _ in 0..100 {
        let port = free_port();
        if port < u16::MAX && take(ip, port + 1) {
            return port;
        }
    }
    panic!("no two free loopback ports in a row");
}

/// A loopback port free for UDP and TCP (see [`free_port_on`]). Panics if there is none.
pub fn free_port() -> u16 {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("no free loopback port found")
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
    config.admin_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.seeds = seeds.iter().map(ToString::to_string).collect();
    config.gossip = gossip;
    config
}

/// Gossip timings for tests of failure detection: the LAN defaults, with a short join timeout.
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

/// A PUBLISH whose `Arguments` hold one binary value of `size` bytes, as tests and benchmarks
/// send.
pub fn publish_of(request: u64, size: usize) -> WampMessage {
    WampMessage::Publish {
        request,
        options: Dict::new(),
        topic: "com.example.topic".into(),
        payload: Payload::Args(vec![Value::Bytes(vec![0x5a; size])]),
    }
}

/// A PUBLISH with a 128-byte binary argument.
pub fn publish(request: u64) -> WampMessage {
    publish_of(request, 128)
}

/// A child process killed and reaped when dropped, even when a test fails.
pub struct Reaped(pub std::process::Child);

impl Reaped {
    /// Sends `signal` (as `kill` takes it: `-TERM`, `-STOP`, …); whether it was sent.
    #[must_use = "a signal that was not sent leaves the process as it was"]
    pub fn signal(&self, signal: &str) -> bool {
        std::process::Command::new("kill")
            .args([signal, &self.0.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits at most `timeout` for the process to exit; past it, kills and reaps it and
    /// returns `None`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_exit(&mut self.0, timeout)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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

/// The value of counter `series` (name and labels, as Prometheus renders them) in `metrics`;
/// 0 when absent.
pub fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<u64>().ok())
        .unwrap_or(0)
}
