//! A broadcast to 8 nodes, all live, and with one that never acks, against the ack timeout.

use std::time::{Duration, Instant};

use wamp_cluster::testkit::publish_of;
use wamp_cluster::{NodeHandle, NodeId};

use wamp_cluster::testkit::cluster::{from, options};

/// Milliseconds for a broadcast to `targets` with the given timeout, and how many were bad.
pub async fn time(a: &NodeHandle, targets: &[NodeId], timeout: Duration) -> (f64, usize) {
    let options = options(timeout.as_millis() as u64);
    let start = Instant::now();
    let result = a
        .forwarder()
        .broadcast(&from(a), targets, &publish_of(0, 128), &options)
        .await;
    (start.elapsed().as_secs_f64() * 1000.0, result.bad.len())
}
