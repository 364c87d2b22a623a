//! What the integration tests share beyond `wamp_cluster::testkit`: one lock for the tests that
//! start gossiping nodes, and an HTTP client with a deadline.

#![allow(dead_code)]

use std::time::Duration;

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

/// Waits until something accepts TCP connections on `addr` (a process that started), at most
/// `timeout`.
pub fn wait_listening(addr: std::net::SocketAddr, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
