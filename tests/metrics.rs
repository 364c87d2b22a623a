//! Metric series over time, in a test binary of its own so that its recorder has a short idle
//! timeout: strangers cannot make series, the series of a member that left go after the idle
//! timeout and come back with it, and a live peer's series outlast any quiet spell.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::BytesMut;
use common::SERIAL;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wamp_cluster::testkit::cluster::{from, options, to, Cluster};
use wamp_cluster::testkit::protocol::{self, Frame, RefuseReason};
use wamp_cluster::testkit::{counter, node_config, publish, tolerant, wait_until};
use wamp_cluster::{Discard, Node};

/// The idle timeout of this binary's recorder.
const IDLE: Duration = Duration::from_secs(3);

fn recorder() -> PrometheusHandle {
    wamp_cluster::metrics::install_prometheus_with(IDLE).unwrap()
}

/// The output after the recorder's upkeep (which drops idle series).
fn render(prometheus: &PrometheusHandle) -> String {
    prometheus.run_upkeep();
    prometheus.render()
}

/// The `peer` label values of `node`'s series.
fn peers_of(text: &str, node: &str) -> BTreeSet<String> {
    let prefix = format!("node=\"{node}\",peer=\"");
    text.lines()
        .filter_map(|line| {
            let at = line.find(&prefix)? + prefix.len();
            Some(line[at..].split('"').next()?.to_string())
        })
        .collect()
}

/// Says hello to `addr` as `node_id` and returns the answer.
async fn hello(addr: std::net::SocketAddr, node_id: &str) -> Option<Frame> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let hello = protocol::hello("default", node_id, "node-1");
    stream
        .write_all(&protocol::encode(&Frame::Hello(hello)))
        .await
        .ok()?;
    protocol::read_frame(&mut stream, &mut BytesMut::new()).await
}

/// A thousand handshakes under distinct valid ids of non-members and a thousand under invalid
/// ids add no series: the strangers' bytes are counted under `peer="non_member"`, and the
/// invalid ids are refused as a bad hello.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_grow_the_metrics() {
    let _serial = SERIAL.lock().await;
    let prometheus = recorder();
    let c = Cluster::start(2).await;
    let a = &c.nodes[0];
    a.forwarder()
        .forward(from(a), to("node-1"), publish(1), &options(5000))
        .await
        .unwrap();
    let target = c.nodes[1].forwarder().local_addr();
    // One stranger that sends a frame after its welcome: what it sends is counted.
    let mut first = TcpStream::connect(target).await.unwrap();
    let mut buf = BytesMut::new();
    let hello_first = protocol::hello("default", "stranger-first", "node-1");
    first
        .write_all(&protocol::encode(&Frame::Hello(hello_first)))
        .await
        .unwrap();
    let welcome = protocol::read_frame(&mut first, &mut buf).await;
    assert!(
        matches!(welcome, Some(Frame::Welcome { .. })),
        "{welcome:?}"
    );
    first
        .write_all(&protocol::encode(&Frame::Ping { id: 7 }))
        .await
        .unwrap();
    let pong = protocol::read_frame(&mut first, &mut buf).await;
    assert_eq!(pong, Some(Frame::Pong { id: 7 }));
    drop(first);
    let bad_hello = r#"wamp_cluster_handshakes_refused_total{node="node-1",reason="bad_hello"}"#;
    let mut before = String::new();
    wait_until(Duration::from_secs(10), "the stranger counted", || {
        before = render(&prometheus);
        peers_of(&before, "node-1").contains("non_member")
    })
    .await;
    let long = "x".repeat(100);
    for batch in 0..40 {
        let hellos = (0..50).map(|i| {
            let n = batch * 50 + i;
            let id = match n % 2 {
                0 => format!("stranger-{n}-{long}"),
                _ => match n % 6 {
                    1 => format!("bad id {n}"),
                    3 => format!("caf\u{e9}-{n}"),
                    _ => format!("{n}-{}", "y".repeat(200)),
                },
            };
            async move { (n % 2 == 0, hello(target, &id).await) }
        });
        for (valid, answer) in futures_util::future::join_all(hellos).await {
            match valid {
                true => assert!(matches!(answer, Some(Frame::Welcome { .. })), "{answer:?}"),
                false => assert_eq!(
                    answer,
                    Some(Frame::Refuse {
                        reason: RefuseReason::BadHello
                    })
                ),
            }
        }
    }
    // Two publications later.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = render(&prometheus);
    assert!(
        !after.contains("stranger"),
        "a stranger's id in the metrics"
    );
    // No new peer: the strangers made no series (the shared one may have gone idle since).
    let (peers_after, peers_before) = (peers_of(&after, "node-1"), peers_of(&before, "node-1"));
    assert!(
        peers_after.is_subset(&peers_before),
        "{peers_after:?} after, {peers_before:?} before"
    );
    assert!(peers_after.contains("node-0"));
    assert!(
        after.lines().count() <= before.lines().count(),
        "{} lines, {} before",
        after.lines().count(),
        before.lines().count()
    );
    assert_eq!(
        counter(&after, bad_hello) - counter(&before, bad_hello),
        1000
    );
    c.stop().await;
}

/// The series of a member that left the view go after the idle timeout, counters included, and
/// come back when it returns; a live peer's series stay through a quiet spell longer than the
/// idle timeout, and its ack latencies are recorded after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_members_series_go_after_the_idle_timeout_and_come_back_with_it() {
    let _serial = SERIAL.lock().await;
    let prometheus = recorder();
    let mut gossip = tolerant();
    gossip.dead_node_grace_period_secs = Duration::from_secs(1);
    let a_config = node_config("node-0", &[], gossip.clone());
    let b_config = node_config("node-1", &[a_config.gossip_addr], gossip);
    let a = Node::builder(a_config, |_, _| Discard)
        .start()
        .await
        .unwrap();
    let start_b = || async {
        let b = Node::builder(b_config.clone(), |_, _| Discard)
            .start()
            .await
            .unwrap();
        wait_until(Duration::from_secs(15), "b is a target", || {
            a.membership().view().is_target("node-1")
        })
        .await;
        b
    };
    let forward = || async {
        a.forwarder()
            .forward(from(&a), to("node-1"), publish(1), &options(5000))
            .await
            .unwrap()
    };
    let latencies = r#"wamp_cluster_ack_latency_seconds_count{node="node-0",peer="node-1"}"#;
    let b = start_b().await;
    forward().await;
    wait_until(Duration::from_secs(10), "the series are there", || {
        let text = render(&prometheus);
        peers_of(&text, "node-0").contains("node-1") && counter(&text, latencies) == 1
    })
    .await;

    b.leave().await;
    wait_until(Duration::from_secs(20), "b leaves a's view", || {
        a.membership().view().member("node-1").is_none()
    })
    .await;
    wait_until(IDLE * 4, "b's series go", || {
        !peers_of(&render(&prometheus), "node-0").contains("node-1")
    })
    .await;

    let b = start_b().await;
    forward().await;
    wait_until(Duration::from_secs(10), "b's series come back", || {
        counter(&render(&prometheus), latencies) == 1
    })
    .await;
    // Quiet for longer than the idle timeout: the counters stay (published every second); the
    // latencies, recorded only by acks, start again, and the next ack is recorded.
    tokio::time::sleep(IDLE * 2).await;
    let quiet = render(&prometheus);
    let sent = r#"wamp_cluster_forwards_sent_total{node="node-0",peer="node-1"}"#;
    assert_eq!(counter(&quiet, sent), 1, "{quiet}");
    assert_eq!(counter(&quiet, latencies), 0, "{quiet}");
    // An ack recorded before the next publication fetches the histogram again can be lost;
    // the acks after it are not.
    for _ in 0..3 {
        forward().await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    wait_until(
        Duration::from_secs(10),
        "the acks after the quiet spell",
        || counter(&render(&prometheus), latencies) >= 2,
    )
    .await;
    b.abort().await;
    a.abort().await;
}
