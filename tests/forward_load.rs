//! Forwarding under load: many messages, all acked, delivered once and in order.

mod common;

use std::time::{Duration, Instant};

use common::SERIAL;
use wamp_cluster::testkit::cluster::{from, options, to, Cluster};
use wamp_cluster::testkit::publish;
use wamp_cluster::wamp::WampMessage;
use wamp_cluster::NodeId;

/// 100 000 `async_forward`s from A to B: all acked, delivered in order, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_forwards_are_all_acked_in_order_once() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    let a = &c.nodes[0];
    let f = a.forwarder();
    const N: u64 = 100_000;
    const WINDOW: usize = 1000;
    let mut ids = std::collections::VecDeque::with_capacity(WINDOW);
    // Each failure names the message and the time, for a failure seen once under load.
    let started = Instant::now();
    for i in 0..N {
        if ids.len() == WINDOW {
            f.receive_ack(ids.pop_front().unwrap(), Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "ack of {} at {:?}: {e}",
                        i - WINDOW as u64,
                        started.elapsed()
                    )
                });
        }
        ids.push_back(
            f.async_forward(from(a), to("node-1"), publish(i), &options(10_000))
                .await
                .unwrap_or_else(|e| panic!("forward {i} at {:?}: {e}", started.elapsed())),
        );
    }
    for id in ids {
        f.receive_ack(id, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("a last ack at {:?}: {e}", started.elapsed()));
    }
    let seen = c.recorders[1].seen();
    assert_eq!(seen.len() as u64, N);
    for (i, delivery) in seen.iter().enumerate() {
        match &delivery.message {
            WampMessage::Publish { request, .. } => assert_eq!(*request, i as u64),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(f.pending_acks(), 0);
    let stats = &f.stats()[&NodeId::from("node-1")];
    assert_eq!((stats.sent, stats.acked, stats.late_acks), (N, N, 0));
    c.stop().await;
}
