//! Forwarding between in-process nodes over real loopback TCP, through the public API.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use common::{counter, hello_bytes, node_config, publish, tolerant, wait_until, within, SERIAL};
use wamp_cluster::wamp::{Dict, Payload, Value, WampMessage};
use wamp_cluster::{
    Delivery, ForwardError, ForwardOptions, NackReason, Node, NodeId, PeerId, Status,
};

use common::cluster::{from, options, to, Cluster, Recorder, ACCEPT, HANG, REFUSE};

/// `forward` to a live node returns `Ok` once the handler took exactly that message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_to_a_live_node_is_acked_after_the_handler_saw_exactly_that_message() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    let a = &c.nodes[0];
    // Lent, as a caller that keeps them does; then owned.
    let (sender, receiver, message) = (from(a), to("node-1"), publish(42));
    a.forwarder()
        .forward(&sender, &receiver, &message, &options(5000))
        .await
        .unwrap();
    a.forwarder()
        .forward(from(a), to("node-1"), publish(43), &options(5000))
        .await
        .unwrap();
    let seen = c.recorders[1].seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            Delivery {
                from: sender,
                to: receiver,
                message
            },
            Delivery {
                from: from(a),
                to: to("node-1"),
                message: publish(43)
            }
        ]
    );
    c.stop().await;
}

/// `async_forward` then `receive_ack`; a second `receive_ack` of the same id is `UnknownAck`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_ack_takes_an_outcome_once() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    let f = c.nodes[0].forwarder();
    let id = f
        .async_forward(from(&c.nodes[0]), to("node-1"), publish(1), &options(5000))
        .await
        .unwrap();
    f.receive_ack(id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        f.receive_ack(id, Duration::from_secs(5)).await,
        Err(ForwardError::UnknownAck { id: id.0 })
    );
    c.stop().await;
}

/// Requests that cannot be sent fail at once and send nothing: a node not in the view, this
/// node, a message type that is not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_at_once_and_send_nothing() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    let a = &c.nodes[0];
    let f = a.forwarder();
    let start = Instant::now();
    assert_eq!(
        f.forward(from(a), to("nobody"), publish(1), &options(5000))
            .await,
        Err(ForwardError::UnknownNode {
            node: NodeId::from("nobody")
        })
    );
    assert_eq!(
        f.forward(from(a), to("node-0"), publish(1), &options(5000))
            .await,
        Err(ForwardError::LocalDestination)
    );
    // Every message type but the five forwarded ones, in its JSON form.
    let not_forwarded: Vec<WampMessage> = [
        r#"[1,"realm1",{}]"#,
        r#"[2,1,{}]"#,
        r#"[3,{},"wamp.error.x"]"#,
        r#"[4,"wampcra",{}]"#,
        r#"[5,"sig",{}]"#,
        r#"[6,{},"wamp.close.normal"]"#,
        r#"[17,1,2]"#,
        r#"[32,1,{},"t"]"#,
        r#"[33,1,2]"#,
        r#"[34,1,2]"#,
        r#"[35,1]"#,
        r#"[36,1,2,{}]"#,
        r#"[48,1,{},"p"]"#,
        r#"[49,1,{}]"#,
        r#"[64,1,{},"p"]"#,
        r#"[65,1,2]"#,
        r#"[66,1,2]"#,
        r#"[67,1]"#,
        r#"[70,1,{}]"#,
    ]
    .iter()
    .map(|text| wamp_cluster::wamp::json::decode(text).unwrap())
    .collect();
    assert_eq!(not_forwarded.len(), 19);
    for message in not_forwarded {
        let name = message.name();
        assert_eq!(
            f.forward(from(a), to("node-1"), message, &options(5000))
                .await,
            Err(ForwardError::NotForwardable { message_type: name })
        );
    }
    // A value nested deeper than any node decodes: refused here, not by the receiver (which
    // would end the connection and every message in flight on it).
    let mut deep = Value::Null;
    for _ in 0..=wamp_cluster::wamp::MAX_DEPTH {
        deep = Value::List(vec![deep]);
    }
    let too_deep = WampMessage::Publish {
        request: 1,
        options: Dict::new(),
        topic: "t".into(),
        payload: Payload::Args(vec![deep]),
    };
    assert_eq!(
        f.forward(from(a), to("node-1"), too_deep, &options(5000))
            .await,
        Err(ForwardError::TooDeep {
            max: wamp_cluster::wamp::MAX_DEPTH
        })
    );
    assert!(start.elapsed() < Duration::from_secs(1), "failed at once");
    assert!(c.recorders[1].seen.lock().unwrap().is_empty());
    assert_eq!(f.pending_acks(), 0);
    c.stop().await;
}

/// A handler that refuses gives `Rejected` with its reason, and the node stays reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_handler_gives_rejected_with_its_reason() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    c.recorders[1].mode.store(REFUSE, Ordering::SeqCst);
    let a = &c.nodes[0];
    let result = a
        .forwarder()
        .forward(from(a), to("node-1"), publish(1), &options(5000))
        .await;
    assert_eq!(
        result,
        Err(ForwardError::Rejected {
            node: "node-1".into(),
            reason: NackReason::Overloaded
        })
    );
    assert!(a.view().is_target("node-1"), "a nack is not a bad node");
    // Counters are updated by the connection's reader right after it hands over the outcome.
    wait_until(Duration::from_secs(5), "the nack counted", || {
        let stats = &a.forwarder().stats()[&NodeId::from("node-1")];
        (stats.sent, stats.acked, stats.failed["rejected"]) == (1, 0, 1)
    })
    .await;
    c.stop().await;
}

/// A node that takes messages but never answers: each call ends with `Timeout` after its
/// timeout, five failures at once make one bad-node report, the node leaves the broadcast
/// targets, and background probes bring it back once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_acks_times_out_and_is_reported_once() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    c.recorders[1].mode.store(HANG, Ordering::SeqCst);
    let a = &c.nodes[0];
    let mut reports = a.forwarder().subscribe_reports();
    let mut events = a.membership().subscribe_events();
    let start = Instant::now();
    let opts = options(500);
    let calls = (0..5).map(|i| {
        a.forwarder()
            .forward(from(a), to("node-1"), publish(i), &opts)
    });
    let results = futures_util::future::join_all(calls).await;
    let elapsed = start.elapsed();
    // The first message holds the connection until its time to live runs out, unanswered: a
    // timeout. The others may come back `Expired` (they waited that long behind it and were
    // not delivered) or time out first.
    assert_eq!(
        results[0],
        Err(ForwardError::Timeout {
            node: "node-1".into()
        })
    );
    for result in &results {
        assert!(
            matches!(
                result,
                Err(ForwardError::Timeout { .. } | ForwardError::Expired { .. })
            ),
            "{result:?}"
        );
    }
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(1500),
        "timeout plus a margin: {elapsed:?}"
    );
    let report = within(Duration::from_secs(5), "a report", reports.recv())
        .await
        .unwrap();
    assert_eq!(report.node, "node-1");
    assert_eq!(report.reason, wamp_cluster::BadReason::AckTimeout);
    assert!(reports.try_recv().is_err(), "one report per transition");
    // It left the broadcast targets (background probes may already have brought it back).
    let event = within(Duration::from_secs(5), "unreachable", events.recv())
        .await
        .unwrap();
    assert_eq!(event.kind(), "unreachable", "{event:?}");
    assert_eq!(event.node(), "node-1");
    // Once it answers again, background probes make it reachable: no application traffic.
    c.recorders[1].mode.store(ACCEPT, Ordering::SeqCst);
    wait_until(Duration::from_secs(10), "node-1 reachable again", || {
        a.view().is_target("node-1")
    })
    .await;
    c.stop().await;
}

/// Nobody waits for the ack: the forwarder's own sweep finds the timeout, at its deadline
/// (the sweep sleeps while nothing is due, and is woken for an entry due before it would
/// wake), reports the node and keeps the outcome for a later `receive_ack`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_nobody_waits_for_times_out_at_its_deadline() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    c.recorders[1].mode.store(HANG, Ordering::SeqCst);
    let a = &c.nodes[0];
    let mut reports = a.forwarder().subscribe_reports();
    // The sweep has been idle: nothing was pending.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let id = a
        .forwarder()
        .async_forward(from(a), to("node-1"), publish(1), &options(200))
        .await
        .unwrap();
    let report = within(Duration::from_secs(5), "a report", reports.recv())
        .await
        .unwrap();
    let elapsed = start.elapsed();
    assert_eq!(report.reason, wamp_cluster::BadReason::AckTimeout);
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    // Found within a few ticks of the deadline, not at the sweep's longest pause (1 s).
    assert!(elapsed < Duration::from_millis(700), "{elapsed:?}");
    assert_eq!(
        a.forwarder().receive_ack(id, Duration::from_secs(1)).await,
        Err(ForwardError::Timeout {
            node: "node-1".into()
        })
    );
    c.stop().await;
}

/// A node that stops (its sockets close, as with `kill -9`) leaves the broadcast targets of a
/// node connected to it at once, long before gossip could declare it down (these nodes use
/// detection settings that take about 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_the_targets_long_before_gossip_notices() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start(3).await;
    let a = &c.nodes[0];
    a.forwarder()
        .forward(from(a), to("node-2"), publish(1), &options(5000))
        .await
        .unwrap();
    let victim = c.nodes.pop().unwrap();
    let start = Instant::now();
    victim.abort().await.unwrap();
    let a = &c.nodes[0];
    wait_until(Duration::from_secs(3), "node-2 out of the targets", || {
        !a.view().is_target("node-2")
    })
    .await;
    let delay = start.elapsed();
    println!("node-2 left the broadcast targets {delay:?} after it stopped");
    assert!(
        a.view().member("node-2").unwrap().live,
        "gossip has not noticed yet"
    );
    c.stop().await;
}

/// A peer stopped in the middle of a stream: every pending call ends with a result, none
/// hangs; once the peer is back (a new generation on the same addresses), forwarding to it
/// works again without restarting the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stopped_mid_stream_ends_every_call_and_forwarding_resumes_after_its_restart() {
    let _serial = SERIAL.lock().await;
    let seed_config = node_config("node-0", &[], tolerant());
    let seed_addr = seed_config.gossip_addr;
    let a = Node::builder(seed_config).start().await.unwrap();
    let b_config = node_config("node-1", &[seed_addr], tolerant());
    let recorder = Arc::new(Recorder::default());
    let b = Node::builder(b_config.clone())
        .deliver(recorder.clone())
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(15), "b ready", || {
        a.view().is_target("node-1")
    })
    .await;
    let f = a.forwarder().clone();
    let sender = from(&a);
    // A steady stream, each call waited for in order, 200 in flight.
    let stream = tokio::spawn(async move {
        let mut in_flight = std::collections::VecDeque::new();
        let mut outcomes = Vec::new();
        for i in 0..20_000 {
            if in_flight.len() == 200 {
                let id = in_flight.pop_front().unwrap();
                outcomes.push(f.receive_ack(id, Duration::from_secs(5)).await);
            }
            match f
                .async_forward(sender.clone(), to("node-1"), publish(i), &options(2000))
                .await
            {
                Ok(id) => in_flight.push_back(id),
                Err(err) => outcomes.push(Err(err)),
            }
        }
        for id in in_flight {
            outcomes.push(f.receive_ack(id, Duration::from_secs(5)).await);
        }
        outcomes
    });
    wait_until(Duration::from_secs(10), "the stream flows", || {
        recorder.seen.lock().unwrap().len() >= 500
    })
    .await;
    b.abort().await.unwrap();
    let outcomes = within(Duration::from_secs(30), "every call ends", stream)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 20_000, "every call ended");
    let acked = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(acked >= 500, "{acked} acked before the stop");
    assert!(acked < 20_000, "the stop cut the stream");
    for outcome in &outcomes {
        if let Err(err) = outcome {
            assert!(
                matches!(
                    err,
                    ForwardError::ConnectionLost { .. }
                        | ForwardError::Timeout { .. }
                        | ForwardError::UnknownNode { .. }
                ),
                "{err:?}"
            );
        }
    }

    let b = Node::builder(b_config).start().await.unwrap();
    let generation = b.membership().generation();
    wait_until(Duration::from_secs(15), "the new b is ready", || {
        a.view()
            .member("node-1")
            .is_some_and(|m| m.generation == generation && m.status == Status::Ready)
            && a.view().is_target("node-1")
    })
    .await;
    a.forwarder()
        .forward(from(&a), to("node-1"), publish(1), &options(5000))
        .await
        .unwrap();
    a.abort().await.unwrap();
    b.abort().await.unwrap();
}

/// A broadcast to 5 nodes of which 2 never ack: good holds the 3 others in the given order, bad
/// the 2 with `Timeout`, and it ends after about one timeout (the sends share one deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_shares_one_deadline_and_keeps_the_given_order() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(6).await;
    c.recorders[2].mode.store(HANG, Ordering::SeqCst);
    c.recorders[4].mode.store(HANG, Ordering::SeqCst);
    let a = &c.nodes[0];
    let nodes: Vec<NodeId> = ["node-5", "node-4", "node-3", "node-2", "node-1"]
        .into_iter()
        .map(NodeId::from)
        .collect();
    let start = Instant::now();
    let result = a
        .forwarder()
        .broadcast(&from(a), &nodes, &publish(9), &options(1000))
        .await;
    let elapsed = start.elapsed();
    assert_eq!(result.good, ["node-5", "node-3", "node-1"]);
    let bad: Vec<(&str, &str)> = result
        .bad
        .iter()
        .map(|(n, e)| (n.as_str(), e.name()))
        .collect();
    assert_eq!(bad, [("node-4", "timeout"), ("node-2", "timeout")]);
    assert!(
        elapsed < Duration::from_millis(1900),
        "one shared deadline: {elapsed:?}"
    );
    c.stop().await;
}

/// `broadcast_live` sends to the live view's targets, sorted, and skips a node reported
/// unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_live_targets_the_ready_reachable_members_in_node_order() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(4).await;
    let a = &c.nodes[0];
    let all = a
        .forwarder()
        .broadcast_live(&from(a), &publish(1), &options(5000))
        .await;
    assert_eq!(all.good, ["node-1", "node-2", "node-3"]);
    assert!(all.bad.is_empty());
    // Right after a report (background probes would bring it back a little later).
    assert!(a.membership().report_unreachable("node-2", "test"));
    let some = a
        .forwarder()
        .broadcast_live(&from(a), &publish(2), &options(5000))
        .await;
    assert_eq!(some.good, ["node-1", "node-3"]);
    c.stop().await;
}

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
    let seen = std::mem::take(&mut *c.recorders[1].seen.lock().unwrap());
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
    let target = b.view().self_member().unwrap().forward_addr.unwrap();
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
    let hello = hello_bytes;
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
    let mut codec = wamp_cluster::wire::FrameCodec::new(1 << 20);
    let mut refusal = bytes::BytesMut::from(&answers[1][..]);
    let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut refusal).unwrap();
    assert!(
        matches!(
            frame,
            Some(wamp_cluster::wire::Frame::Refuse {
                reason: wamp_cluster::wire::RefuseReason::WrongCluster { .. }
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
    assert_eq!(future[at..at + 2], [1, 1]);
    future[at] = 99;
    future[at + 1] = 99;
    let answer = send_and_read(target, &future).await;
    let mut answer = bytes::BytesMut::from(&answer[..]);
    let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut answer).unwrap();
    assert!(
        matches!(
            frame,
            Some(wamp_cluster::wire::Frame::Refuse {
                reason: wamp_cluster::wire::RefuseReason::NoCommonVersion { .. }
            })
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
            Some(wamp_cluster::wire::Frame::Refuse {
                reason: wamp_cluster::wire::RefuseReason::BadHello
            })
        ),
        "{frame:?}"
    );
    // After a valid hello, a well-formed message from another node than the one that said
    // hello: nacked, and the connection goes on (a ping after it is answered).
    let mut bytes = hello("default");
    let stranger = PeerId::session("realm1", "someone-else", 1);
    let mut forward = wamp_cluster::wire::encode_forward(
        1 << 32,
        &stranger,
        &to("node-1"),
        &publish(1),
        1 << 20,
        <[u8]>::to_vec,
    )
    .unwrap();
    assert!(wamp_cluster::wire::set_ttl(&mut forward, 5000));
    bytes.extend_from_slice(&forward);
    let mut ping = bytes::BytesMut::new();
    tokio_util::codec::Encoder::encode(
        &mut wamp_cluster::wire::FrameCodec::new(1 << 20),
        &wamp_cluster::wire::Frame::Ping { id: 5 },
        &mut ping,
    )
    .unwrap();
    bytes.extend_from_slice(&ping);
    let mut answers = bytes::BytesMut::from(&send_and_read(target, &bytes).await[..]);
    let mut frames = Vec::new();
    while let Some(frame) = tokio_util::codec::Decoder::decode(&mut codec, &mut answers).unwrap() {
        frames.push(frame);
    }
    assert!(
        matches!(
            &frames[..],
            [
                wamp_cluster::wire::Frame::Welcome { .. },
                wamp_cluster::wire::Frame::Nack {
                    reason: NackReason::Refused(_),
                    ..
                },
                wamp_cluster::wire::Frame::Pong { id: 5 },
            ]
        ),
        "{frames:?}"
    );

    within(Duration::from_secs(30), "good forwards", good)
        .await
        .unwrap();
    assert!(a.view().is_target("node-1"));
    let after = prometheus.render();
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

/// A message larger than `forward.max_frame_bytes` is refused with `TooLarge` before anything is
/// sent; with `fail_if_full`, a full send queue answers `QueueFull` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_and_queue_full_fail_at_once() {
    let _serial = SERIAL.lock().await;
    let seed = node_config("node-0", &[], tolerant());
    let seed_addr = seed.gossip_addr;
    let mut small = seed.clone();
    small.forward.max_frame_bytes = 4096;
    small.forward.queue_capacity = NonZeroUsize::new(4).unwrap();
    let a = Node::builder(small).start().await.unwrap();
    let silent = Arc::new(Recorder::default());
    silent.mode.store(HANG, Ordering::SeqCst);
    let b = Node::builder(node_config("node-1", &[seed_addr], tolerant()))
        .deliver(silent.clone())
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(15), "b ready", || {
        a.view().is_target("node-1")
    })
    .await;
    let f = a.forwarder();
    let big = WampMessage::Publish {
        request: 1,
        options: Dict::new(),
        topic: "t".into(),
        payload: Payload::Args(vec![Value::Bytes(vec![0; 10_000])]),
    };
    match f.forward(from(&a), to("node-1"), big, &options(5000)).await {
        Err(ForwardError::TooLarge { len, max: 4096 }) => assert!(len > 10_000),
        other => panic!("{other:?}"),
    }
    assert!(silent.hung.lock().unwrap().is_empty(), "nothing was sent");

    // Fill the queue of 4 faster than the writer can drain it; one must find it full.
    let full = ForwardOptions {
        timeout: Some(Duration::from_secs(2)),
        fail_if_full: true,
    };
    let mut results = Vec::new();
    for i in 0..10_000 {
        let result = f
            .async_forward(from(&a), to("node-1"), publish(i), &full)
            .await;
        let is_full = matches!(result, Err(ForwardError::QueueFull { .. }));
        results.push(result);
        if is_full {
            break;
        }
    }
    assert!(
        matches!(results.last(), Some(Err(ForwardError::QueueFull { .. }))),
        "the queue never filled: {} sends",
        results.len()
    );
    a.abort().await.unwrap();
    b.abort().await.unwrap();
}

/// A TCP relay in front of a node's forward port that can cut the connections it carries
/// without closing them: what they carry is read and dropped, as on a path that died while
/// both ends stay up. Connections made after the cut are relayed normally.
struct Relay {
    addr: std::net::SocketAddr,
    /// Connections numbered below this are cut.
    cut: Arc<AtomicU64>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
}

/// Copies `from` to `to` until `from` closes, dropping everything once connection `number` is
/// cut.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    number: u64,
    cut: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) if number >= cut.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
        }
    }
    let _ = to.shutdown().await;
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (c, a) = (cut.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let number = a.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, number, c.clone()));
                tokio::spawn(pump(server_read, client_write, number, c.clone()));
            }
        });
        Relay {
            addr,
            cut,
            accepted,
        }
    }
}

/// A connection that dies without closing (a partition, a forgotten path): calls on it time
/// out, the node is reported unreachable, and the background probe that gets no pong drops
/// the connection and dials a new one, so forwarding resumes although the old connection never
/// answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_dies_silently_is_replaced_after_an_unanswered_probe() {
    let _serial = SERIAL.lock().await;
    let mut a_config = node_config("node-0", &[], tolerant());
    a_config.forward.connect_timeout_ms = Duration::from_millis(300);
    let a = Node::builder(a_config).start().await.unwrap();
    let mut b_config = node_config("node-1", &[a.membership().gossip_addr()], tolerant());
    let relay = Relay::start(b_config.forward_addr).await;
    b_config.forward_advertise_addr = Some(relay.addr);
    let b = Node::builder(b_config)
        .deliver(Arc::new(Recorder::default()))
        .start()
        .await
        .unwrap();
    wait_until(Duration::from_secs(15), "node-1 is a target", || {
        a.view().is_target("node-1")
    })
    .await;
    let forward = |i: u64, timeout_ms: u64| {
        let a = &a;
        async move {
            a.forwarder()
                .forward(from(a), to("node-1"), publish(i), &options(timeout_ms))
                .await
        }
    };
    assert_eq!(forward(1, 5000).await, Ok(()));
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 1);

    relay.cut.store(1, Ordering::SeqCst);
    assert_eq!(
        forward(2, 300).await,
        Err(ForwardError::Timeout {
            node: "node-1".into()
        })
    );
    wait_until(Duration::from_secs(10), "node-1 reachable again", || {
        a.view().is_target("node-1")
    })
    .await;
    assert!(
        relay.accepted.load(Ordering::SeqCst) >= 2,
        "a new connection"
    );
    assert_eq!(forward(3, 5000).await, Ok(()));
    a.abort().await.unwrap();
    b.abort().await.unwrap();
}

/// A peer that dials again has given up on its old connection, whose unread frames may still
/// sit in this node's socket (after a pause, say): once the newer connection is accepted, the
/// older one delivers nothing more and is closed, so the peer's messages stay in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_from_the_same_node_takes_over_from_the_older() {
    use futures_util::{SinkExt, StreamExt};
    use wamp_cluster::wire::{Forward, Frame, FrameCodec, Hello, MAGIC};

    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    let target = c.nodes[1]
        .view()
        .self_member()
        .unwrap()
        .forward_addr
        .unwrap();
    let connect = || async move {
        let stream = tokio::net::TcpStream::connect(target).await.unwrap();
        let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::new(1 << 20));
        framed
            .send(&Frame::Hello(Hello {
                magic: MAGIC,
                min_version: 1,
                max_version: 1,
                cluster_id: "default".into(),
                node_id: "peer-x".into(),
                generation: 1,
                to_node: "node-1".into(),
            }))
            .await
            .unwrap();
        let welcome = within(Duration::from_secs(5), "welcome", framed.next()).await;
        assert!(
            matches!(welcome, Some(Ok(Frame::Welcome { .. }))),
            "{welcome:?}"
        );
        framed
    };
    let forward = |id: u64| {
        Frame::Forward(Box::new(Forward {
            ttl_ms: 5000,
            id,
            delivery: Delivery {
                from: PeerId::session("realm1", "peer-x", 1),
                to: to("node-1"),
                message: publish(id),
            },
        }))
    };
    let mut old = connect().await;
    old.send(&forward(1)).await.unwrap();
    let answer = within(Duration::from_secs(5), "ack 1", old.next()).await;
    assert!(
        matches!(answer, Some(Ok(Frame::Ack { id: 1 }))),
        "{answer:?}"
    );

    let mut new = connect().await;
    old.send(&forward(2)).await.unwrap();
    let answer = within(Duration::from_secs(5), "old closed", old.next()).await;
    assert!(
        answer.is_none(),
        "the old connection closes unanswered: {answer:?}"
    );
    new.send(&forward(3)).await.unwrap();
    let answer = within(Duration::from_secs(5), "ack 3", new.next()).await;
    assert!(
        matches!(answer, Some(Ok(Frame::Ack { id: 3 }))),
        "{answer:?}"
    );

    let seen: Vec<u64> = c.recorders[1]
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|d| d.from.node == "peer-x")
        .filter_map(|d| d.message.request_id())
        .collect();
    assert_eq!(seen, [1, 3]);
    c.stop().await;
}

/// The `[limits]`: a connection that trickles bytes and never completes its hello is closed at
/// the handshake timeout; one that says hello and then falls silent, at the idle timeout;
/// connections beyond `max_inbound_connections` are closed at once; each is counted. Meanwhile
/// every forward between the good nodes succeeds, and their link, idle for several idle
/// timeouts, is kept open by its keepalive pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_close_trickling_silent_and_surplus_connections_while_good_peers_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let c = Cluster::start_with(2, |config| {
        config.limits.max_inbound_connections = NonZeroUsize::new(4).unwrap();
        config.limits.handshake_timeout_ms = Duration::from_millis(300);
        // A wide margin: a keepalive late by a loaded machine must not look like silence.
        config.limits.idle_timeout_ms = Duration::from_millis(1200);
        config.limits.keepalive_interval_ms = Duration::from_millis(100);
    })
    .await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let target = b.view().self_member().unwrap().forward_addr.unwrap();
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
        let hello = hello_bytes("default");
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
        stream.write_all(&hello_bytes("default")).await.unwrap();
        let waited = closed_within(&mut stream, Duration::from_secs(5)).await;
        assert!(waited >= Duration::from_millis(1000), "{waited:?}");
    });
    // Connections beyond the limit (node-0's link holds one of the four) are closed at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut extra = Vec::new();
    for _ in 0..6 {
        extra.push(tokio::net::TcpStream::connect(target).await.unwrap());
    }
    for stream in extra.iter_mut().skip(2) {
        closed_within(stream, Duration::from_secs(1)).await;
    }
    within(Duration::from_secs(10), "trickle", trickle)
        .await
        .unwrap();
    within(Duration::from_secs(10), "silent", silent)
        .await
        .unwrap();
    within(Duration::from_secs(30), "good forwards", good)
        .await
        .unwrap();
    assert!(a.view().is_target("node-1"));
    assert_eq!(a.forwarder().stats()[&NodeId::from("node-1")].reconnects, 0);
    let metrics = prometheus.render();
    let count = |series: &str| counter(&metrics, series) - counter(&before, series);
    let refused = "wamp_cluster_handshakes_refused_total{node=\"node-1\",reason=";
    // The trickle and the surplus connection that got the last slot and said nothing.
    assert!(count(&format!("{refused}\"timeout\"}}")) >= 2, "{metrics}");
    assert!(
        count(&format!("{refused}\"overloaded\"}}")) >= 4,
        "{metrics}"
    );
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
        c.recorders[1].seen.lock().unwrap().len() == 9
    })
    .await;
    let refused_arrived = c.recorders[1].seen.lock().unwrap().iter().any(|d| {
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
    let metrics = prometheus.render();
    assert!(
        metrics.contains("wamp_cluster_inbound_throttled_total{node=\"node-1\",peer=\"node-0\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("wamp_cluster_inbound_throttled_total{node=\"node-1\",peer=\"node-2\"}"),
        "{metrics}"
    );
    c.stop().await;
}
