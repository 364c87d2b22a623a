//! The forward port against peers that misbehave: bad input, trickling and silent
//! connections, a thousand of them kept open, too many pending acks, too many frames a second.

mod common;

use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::SERIAL;
use wamp_cluster::testkit::cluster::{from, options, to, Cluster};
use wamp_cluster::testkit::protocol;
use wamp_cluster::testkit::{counter, node_config, publish, tolerant, wait_until, within};
use wamp_cluster::{Discard, ForwardError, NackReason, Node, NodeId, PeerId};

/// Garbage on the forward port: random bytes, a hello for another cluster, an oversized frame
/// and a length forged inside a small frame are each refused and counted, and meanwhile every
/// forward between the good nodes succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_the_forward_port_is_refused_and_counted_while_good_peers_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let target = b.forwarder().local_addr();
    // Counters are process-wide and other tests of this binary count too: compared by delta.
    let before = prometheus.render();

    /// Sends `bytes`, then reads until the node closes the connection (bounded).
    async fn send_and_read(target: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
        let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        // The end of what this client says: the node reads to here, answers and closes.
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer));
        assert!(read.await.is_ok(), "the node closes the connection");
        answer
    }

    let mut random = vec![0u8; 4096];
    let mut state: u32 = 12345;
    for byte in random.iter_mut() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *byte = (state >> 16) as u8;
    }
    let hello = protocol::hello_from_intruder;
    let good = tokio::spawn({
        let f = a.forwarder().clone();
        let sender = from(a);
        async move {
            for i in 0..200 {
                f.forward(sender.clone(), to("node-1"), publish(i), &options(5000))
                    .await
                    .unwrap();
            }
        }
    });
    let oversized = (u32::MAX).to_be_bytes();
    let answers = [
        send_and_read(target, &random).await,
        send_and_read(target, &hello("another")).await,
        send_and_read(target, &oversized).await,
    ];
    let mut codec = protocol::FrameCodec::new(1 << 20);
    let mut refusal = bytes::BytesMut::from(&answers[1][..]);
    let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut refusal).unwrap();
    assert!(
        matches!(
            frame,
            Some(protocol::Frame::Refuse {
                reason: protocol::RefuseReason::WrongCluster { .. }
            })
        ),
        "{frame:?}"
    );
    // A valid hello, then an oversized frame; a valid hello, then a frame whose inner length
    // is forged: each connection is closed.
    let mut bytes = hello("default");
    bytes.extend_from_slice(&oversized);
    send_and_read(target, &bytes).await;
    let mut bytes = hello("default");
    // Frame::Nack (variant 5), id 1, NackReason::Refused (variant 5), a string claiming 2^40
    // bytes (varint 253 then a u64).
    let mut body = vec![5u8, 1, 5, 253];
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&body);
    send_and_read(target, &bytes).await;
    // A hello of a protocol version nobody speaks: refused, the reason answered.
    let mut future = hello("default");
    // min_version and max_version, one-byte varints, follow the length prefix, the variant
    // index and the magic's four bytes.
    let at = 4 + 1 + 4;
    let versions = [protocol::MIN_VERSION as u8, protocol::MAX_VERSION as u8];
    assert_eq!(future[at..at + 2], versions);
    future[at] = 99;
    future[at + 1] = 99;
    let answer = send_and_read(target, &future).await;
    let mut answer = bytes::BytesMut::from(&answer[..]);
    let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut answer).unwrap();
    assert!(
        matches!(
            frame,
            Some(protocol::Frame::Refuse {
                reason: protocol::RefuseReason::NoCommonVersion { .. }
            })
        ),
        "{frame:?}"
    );
    // A hello whose clock is an hour away from the node's: refused, both clocks named.
    let mut skewed = protocol::hello("default", "intruder", "node-1");
    skewed.wall_clock_ms -= 3_600_000;
    let answer = send_and_read(target, &protocol::encode(&protocol::Frame::Hello(skewed))).await;
    let mut answer = bytes::BytesMut::from(&answer[..]);
    let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut answer).unwrap();
    assert!(
        matches!(
            frame,
            Some(protocol::Frame::Refuse {
                reason: protocol::RefuseReason::ClockSkew { listener_ms, dialer_ms }
            }) if listener_ms - dialer_ms >= 3_600_000
        ),
        "{frame:?}"
    );
    // Half a hello, then the end of the stream: a bad hello.
    let whole = hello("default");
    let answer = send_and_read(target, &whole[..whole.len() / 2]).await;
    let mut answer = bytes::BytesMut::from(&answer[..]);
    let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut answer).unwrap();
    assert!(
        matches!(
            frame,
            Some(protocol::Frame::Refuse {
                reason: protocol::RefuseReason::BadHello
            })
        ),
        "{frame:?}"
    );
    // After a valid hello, a well-formed message from another node than the one that said
    // hello: nacked, and the connection goes on (a ping after it is answered).
    let mut bytes = hello("default");
    let stranger = PeerId::session("realm1", "someone-else", 1);
    let mut forward = protocol::encode_forward(
        1 << 32,
        &stranger,
        &to("node-1"),
        &publish(1),
        1 << 20,
        <[u8]>::to_vec,
    )
    .unwrap();
    assert!(protocol::set_deadline(
        &mut forward,
        protocol::wall_clock_ms() + 5000
    ));
    bytes.extend_from_slice(&forward);
    bytes.extend_from_slice(&protocol::encode(&protocol::Frame::Ping { id: 5 }));
    let mut answers = bytes::BytesMut::from(&send_and_read(target, &bytes).await[..]);
    let mut frames = Vec::new();
    while let Some(frame) = tokio_util::codec::Decoder::decode(&mut codec, &mut answers).unwrap() {
        frames.push(frame);
    }
    assert!(
        matches!(
            &frames[..],
            [
                protocol::Frame::Welcome { .. },
                protocol::Frame::Nack {
                    reason: NackReason::Refused(_),
                    ..
                },
                protocol::Frame::Pong { id: 5 },
            ]
        ),
        "{frames:?}"
    );

    within(Duration::from_secs(30), "good forwards", good)
        .await
        .unwrap();
    assert!(a.membership().view().is_target("node-1"));
    // The forwarder publishes its counts once a second.
    let acked = "wamp_cluster_forwards_acked_total{node=\"node-0\",peer=\"node-1\"}";
    let mut after = String::new();
    wait_until(Duration::from_secs(5), "the acks published", || {
        after = prometheus.render();
        counter(&after, acked) - counter(&before, acked) >= 200
    })
    .await;
    for (series, delta) in [
        (
            "wamp_cluster_handshakes_refused_total{node=\"node-1\",reason=\"bad_hello\"}",
            3,
        ),
        (
            "wamp_cluster_forwards_acked_total{node=\"node-0\",peer=\"node-1\"}",
            200,
        ),
        (
            "wamp_cluster_handshakes_refused_total{node=\"node-1\",reason=\"wrong_cluster\"}",
            1,
        ),
        (
            "wamp_cluster_handshakes_refused_total{node=\"node-1\",reason=\"no_common_version\"}",
            1,
        ),
        (
            "wamp_cluster_handshakes_refused_total{node=\"node-1\",reason=\"clock_skew\"}",
            1,
        ),
        (
            "wamp_cluster_frames_refused_total{node=\"node-1\",reason=\"malformed\"}",
            1,
        ),
        (
            "wamp_cluster_frames_refused_total{node=\"node-1\",reason=\"too_large\"}",
            1,
        ),
    ] {
        let seen = counter(&after, series) - counter(&before, series);
        assert_eq!(seen, delta, "{series} in\n{after}");
    }
    assert!(
        counter(
            &after,
            "wamp_cluster_bytes_received_total{node=\"node-1\",peer=\"node-0\"}"
        ) > 0
    );
    c.stop().await;
}

/// The `[limits]`: a connection that trickles bytes and never completes its hello is closed at
/// the handshake timeout; one that says hello and then falls silent, at the idle timeout; each
/// is counted. Meanwhile every forward between the good nodes succeeds, and their link, idle
/// for several idle timeouts, is kept open by its keepalive pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_close_trickling_and_silent_connections_while_good_peers_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let c = Cluster::start_with(2, |config| {
        config.limits.handshake_timeout_ms = Duration::from_millis(300);
        // A wide margin: a keepalive late by a loaded machine must not look like silence.
        config.limits.idle_timeout_ms = Duration::from_millis(1200);
        config.limits.keepalive_interval_ms = Duration::from_millis(100);
    })
    .await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let target = b.forwarder().local_addr();
    // Counters are process-wide and other tests of this binary count too: compared by delta.
    let before = prometheus.render();
    // The good link, then idle for several idle timeouts: still the same connection.
    a.forwarder()
        .forward(from(a), to("node-1"), publish(0), &options(5000))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;

    /// Reads until the node closes the connection, within `bound`; how long that took.
    async fn closed_within(stream: &mut tokio::net::TcpStream, bound: Duration) -> Duration {
        let start = Instant::now();
        let mut sink = Vec::new();
        let read = tokio::time::timeout(bound, stream.read_to_end(&mut sink)).await;
        assert!(
            read.is_ok(),
            "the node closes the connection within {bound:?}"
        );
        start.elapsed()
    }

    let good = tokio::spawn({
        let f = a.forwarder().clone();
        let sender = from(a);
        async move {
            for i in 1..=200 {
                f.forward(sender.clone(), to("node-1"), publish(i), &options(5000))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // One byte every 50 ms of a valid hello: never a whole frame within 300 ms.
    let trickle = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
        let hello = protocol::hello_from_intruder("default");
        let start = Instant::now();
        for byte in hello.iter().take(20) {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let waited = start.elapsed() + closed_within(&mut stream, Duration::from_secs(5)).await;
        assert!(waited < Duration::from_secs(3), "{waited:?}");
    });
    // A valid hello, a welcome, then silence: closed at the idle timeout.
    let silent = tokio::spawn(async move {
        let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
        stream
            .write_all(&protocol::hello_from_intruder("default"))
            .await
            .unwrap();
        let waited = closed_within(&mut stream, Duration::from_secs(5)).await;
        assert!(waited >= Duration::from_millis(1000), "{waited:?}");
    });
    within(Duration::from_secs(10), "trickle", trickle)
        .await
        .unwrap();
    within(Duration::from_secs(10), "silent", silent)
        .await
        .unwrap();
    within(Duration::from_secs(30), "good forwards", good)
        .await
        .unwrap();
    assert!(a.membership().view().is_target("node-1"));
    assert_eq!(a.forwarder().stats()[&NodeId::from("node-1")].reconnects, 0);
    let metrics = prometheus.render();
    let count = |series: &str| counter(&metrics, series) - counter(&before, series);
    let refused = "wamp_cluster_handshakes_refused_total{node=\"node-1\",reason=";
    assert!(count(&format!("{refused}\"timeout\"}}")) >= 1, "{metrics}");
    assert!(
        count("wamp_cluster_frames_refused_total{node=\"node-1\",reason=\"idle\"}") >= 1,
        "{metrics}"
    );
    c.stop().await;
}

/// `limits.max_pending_acks_per_peer`: sends beyond it fail at once with `TooManyPending`
/// and send nothing; once outcomes are taken, sending works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_beyond_the_pending_limit_fail_at_once_until_outcomes_are_taken() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start_with(2, |config| {
        config.limits.max_pending_acks_per_peer = NonZeroUsize::new(8).unwrap()
    })
    .await;
    let a = &c.nodes[0];
    let f = a.forwarder();
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(
            f.async_forward(from(a), to("node-1"), publish(i), &options(5000))
                .await
                .unwrap(),
        );
    }
    let refused = f
        .async_forward(from(a), to("node-1"), publish(8), &options(5000))
        .await;
    assert_eq!(
        refused.err(),
        Some(ForwardError::TooManyPending {
            node: "node-1".into(),
            max: 8
        })
    );
    for id in ids {
        f.receive_ack(id, Duration::from_secs(5)).await.unwrap();
    }
    f.forward(from(a), to("node-1"), publish(9), &options(5000))
        .await
        .unwrap();
    // Nothing of the refused message arrived.
    wait_until(Duration::from_secs(5), "nine deliveries", || {
        c.recorders[1].seen().len() == 9
    })
    .await;
    let refused_arrived = c.recorders[1].seen().iter().any(|d| {
        matches!(
            d.message,
            wamp_cluster::wamp::WampMessage::Publish { request: 8, .. }
        )
    });
    assert!(!refused_arrived);
    c.stop().await;
}

/// `limits.max_inbound_frames_per_sec_per_peer`: a peer sending faster is read more slowly
/// (nothing is dropped: every message is acked), and the pauses are counted; another peer's
/// connection keeps its own pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_over_its_frame_rate_is_read_more_slowly_and_others_are_not() {
    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let c = Cluster::start_with(3, |config| {
        config.limits.max_inbound_frames_per_sec_per_peer = NonZeroU64::new(1000).unwrap();
    })
    .await;
    let (a, b) = (&c.nodes[0], &c.nodes[2]);
    let flood = tokio::spawn({
        let f = a.forwarder().clone();
        let sender = from(a);
        async move {
            let start = Instant::now();
            let mut ids = Vec::new();
            for i in 0..2500 {
                let options = options(10_000);
                let call = f.async_forward(sender.clone(), to("node-1"), publish(i), &options);
                ids.push(call.await.unwrap());
            }
            for id in ids {
                f.receive_ack(id, Duration::from_secs(10)).await.unwrap();
            }
            start.elapsed()
        }
    });
    // Node-2's own connection: 100 calls one after the other, done while node-0 still waits.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..100 {
        b.forwarder()
            .forward(from(b), to("node-1"), publish(i), &options(5000))
            .await
            .unwrap();
    }
    assert!(
        !flood.is_finished(),
        "node-2 was served while node-0 was held back"
    );
    let took = within(Duration::from_secs(20), "the flood", flood)
        .await
        .unwrap();
    // 1000 at once, then 1000 a second: the last ones were read about 1.5 s in.
    assert!(took >= Duration::from_millis(1200), "{took:?}");
    // Published once a second.
    let throttled = |peer: &str| {
        let series =
            format!("wamp_cluster_inbound_throttled_total{{node=\"node-1\",peer=\"{peer}\"}}");
        counter(&prometheus.render(), &series)
    };
    wait_until(Duration::from_secs(5), "node-0's pauses published", || {
        throttled("node-0") > 0
    })
    .await;
    assert_eq!(throttled("node-2"), 0);
    c.stop().await;
}

/// Connections that an intruder keeps open: each one the node closes is opened again after
/// 100 ms. One in three says nothing, one trickles a hello a byte every 100 ms, one says hello
/// under an id that is not a member and falls silent. Stopped when dropped, or after 90 s.
struct Intruders {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Intruders {
    fn start(target: std::net::SocketAddr, connections: usize) -> Intruders {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (stop2, open2) = (stop.clone(), open.clone());
        // A runtime of their own: the nodes' workers do not run the intruders' loops.
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let deadline = Instant::now() + Duration::from_secs(90);
                let tasks: Vec<_> = (0..connections)
                    .map(|i| {
                        let (stop, open) = (stop2.clone(), open2.clone());
                        tokio::spawn(Intruders::intruder(i, target, stop, open, deadline))
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
            });
        });
        Intruders {
            stop,
            open,
            thread: Some(thread),
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    async fn intruder(
        i: usize,
        target: std::net::SocketAddr,
        stop: Arc<AtomicBool>,
        open: Arc<AtomicUsize>,
        deadline: Instant,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let connected = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(target),
            );
            if let Ok(Ok(mut stream)) = connected.await {
                open.fetch_add(1, Ordering::Relaxed);
                let hello = protocol::encode(&protocol::Frame::Hello(protocol::hello(
                    "default",
                    &format!("intruder-{i}"),
                    "node-1",
                )));
                let mut sent = 0;
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let wrote = match i % 3 {
                        1 if sent < hello.len() => {
                            sent += 1;
                            stream.write_all(&hello[sent - 1..sent]).await
                        }
                        2 if sent == 0 => {
                            sent = hello.len();
                            stream.write_all(&hello).await
                        }
                        _ => Ok(()),
                    };
                    let read =
                        tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf));
                    if wrote.is_err() || matches!(read.await, Ok(Ok(0) | Err(_))) {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Intruders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A thousand connections from 127.0.0.1, kept open by an intruder, that stay silent, trickle
/// a hello or say hello under ids that are not members (see [`Intruders`]), cannot keep a
/// member out of a node that serves 512: node-0 restarts (a new generation on new ports) and
/// forwards to node-1 again within 5 s of its join. node-1 refuses no connection: it closes the
/// intruders' oldest handshakes and strangers to make room instead (thousands a second), and
/// counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_or_trickling_connections_cannot_keep_a_restarted_member_out() {
    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let tweak = |config: &mut wamp_cluster::Config| {
        config.limits.max_inbound_connections = NonZeroUsize::new(512).unwrap();
    };
    let c = Cluster::start_with(2, tweak).await;
    let target = c.nodes[1].forwarder().local_addr();
    let before = prometheus.render();
    let count = |metrics: &str, series: &str| counter(metrics, series) - counter(&before, series);
    let evicted = |metrics: &str| {
        ["unproven", "non_member", "superseded"]
            .iter()
            .map(|reason| {
                count(
                    metrics,
                    &format!(
                        "wamp_cluster_inbound_evicted_total{{node=\"node-1\",reason=\"{reason}\"}}"
                    ),
                )
            })
            .sum::<u64>()
    };
    let refused = "wamp_cluster_handshakes_refused_total{node=\"node-1\",reason=\"overloaded\"}";
    let intruders = Intruders::start(target, 1000);
    // Full: the intruders hold the slots, and more of them come (made room for, or refused).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = prometheus.render();
        let turned_away = evicted(&metrics) + count(&metrics, refused);
        if intruders.open() >= 500 && turned_away > 1000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the intruders did not fill node-1: {} open, {turned_away} turned away",
            intruders.open(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // node-0 restarts: a new process of the same node id, on new ports.
    c.nodes[0].abort().await;
    let seeds = [c.nodes[1].membership().gossip_addr()];
    let mut config = node_config("node-0", &seeds, tolerant());
    tweak(&mut config);
    let restarted = Node::builder(config, |_, _| Discard).start().await.unwrap();
    let mut reports = restarted.forwarder().subscribe_reports();
    wait_until(Duration::from_secs(30), "node-0 joins again", || {
        restarted.membership().view().is_target("node-1")
    })
    .await;
    let joined = Instant::now();
    let mut sent = None;
    for i in 0.. {
        let forwarded = restarted
            .forwarder()
            .forward(from(&restarted), to("node-1"), publish(i), &options(1000))
            .await;
        if forwarded.is_ok() {
            sent = Some(joined.elapsed());
            break;
        }
        if joined.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still_open = intruders.open();
    drop(intruders);
    let metrics = prometheus.render();
    let sent = sent.unwrap_or_else(|| panic!("node-0 never forwarded to node-1:\n{metrics}"));
    eprintln!(
        "node-0 forwarded {sent:?} after its join; {} intruders' connections open, {} closed to \
         make room",
        still_open,
        evicted(&metrics)
    );
    assert!(
        sent < Duration::from_secs(5),
        "forwarded {sent:?} after its join"
    );
    // The pressure was real: the intruders held most of the 512 slots (the count moves by a
    // few while connections are closed to make room and reopened, more so on a loaded machine).
    assert!(still_open >= 400, "the intruders held only {still_open}");
    assert_eq!(count(&metrics, refused), 0, "{metrics}");
    assert!(evicted(&metrics) > 0, "{metrics}");
    while let Ok(report) = reports.try_recv() {
        assert!(
            !format!("{report:?}").contains("overloaded"),
            "node-0 was refused: {report:?}"
        );
    }
    restarted.abort().await;
    c.stop().await;
}
