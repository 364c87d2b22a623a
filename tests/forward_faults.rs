//! Forwarding when a peer fails: it never answers, stops, restarts, or its connection dies
//! without closing; every call ends, the node is reported, and forwarding resumes.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::SERIAL;
use tokio::io::AsyncWriteExt;
use wamp_cluster::testkit::cluster::{from, options, to, Cluster, Mode, Recorder};
use wamp_cluster::testkit::protocol::{self, Frame};
use wamp_cluster::testkit::relay::Relay;
use wamp_cluster::testkit::{node_config, publish, tolerant, wait_until, within};
use wamp_cluster::{
    Delivery, Discard, ForwardError, MembershipEvent, NackReason, Node, PeerId, Status,
};

/// A node that takes messages but never answers: each call ends with `Timeout` after its
/// timeout, five failures at once make one bad-node report, the node leaves the broadcast
/// targets, and background probes bring it back once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_acks_times_out_and_is_reported_once() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    c.recorders[1].set_mode(Mode::Hang);
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
    // It left the broadcast targets (background probes may already have brought it back). A
    // subscription made just after the views converged may still get their last `Joined`.
    let event = within(Duration::from_secs(5), "unreachable", async {
        loop {
            match events.recv().await {
                Ok(MembershipEvent::Joined { .. }) => {}
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(event.kind(), "unreachable", "{event:?}");
    assert_eq!(event.node(), "node-1");
    // Once it answers again, background probes make it reachable: no application traffic.
    c.recorders[1].set_mode(Mode::Record);
    wait_until(Duration::from_secs(10), "node-1 reachable again", || {
        a.membership().view().is_target("node-1")
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
    c.recorders[1].set_mode(Mode::Hang);
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
    victim.abort().await;
    let a = &c.nodes[0];
    wait_until(Duration::from_secs(3), "node-2 out of the targets", || {
        !a.membership().view().is_target("node-2")
    })
    .await;
    let delay = start.elapsed();
    println!("node-2 left the broadcast targets {delay:?} after it stopped");
    assert!(
        a.membership().view().member("node-2").unwrap().live,
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
    let a = Node::builder(seed_config, |_, _| Discard)
        .start()
        .await
        .unwrap();
    let b_config = node_config("node-1", &[seed_addr], tolerant());
    let recorder = Arc::new(Recorder::default());
    let b = Node::builder(b_config.clone(), {
        let handler = recorder.clone();
        move |_, _| handler
    })
    .start()
    .await
    .unwrap();
    wait_until(Duration::from_secs(15), "b ready", || {
        a.membership().view().is_target("node-1")
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
        recorder.seen().len() >= 500
    })
    .await;
    b.abort().await;
    let outcomes = within(Duration::from_secs(30), "every call ends", stream)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 20_000, "every call ended");
    let acked = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(acked >= 500, "{acked} acked before the stop");
    assert!(acked < 20_000, "the stop cut the stream");
    // A message read while the peer stops is refused as `ShuttingDown`: not delivered, and
    // the sender is told so instead of waiting for its connection to break.
    for outcome in &outcomes {
        if let Err(err) = outcome {
            assert!(
                matches!(
                    err,
                    ForwardError::ConnectionLost { .. }
                        | ForwardError::Timeout { .. }
                        | ForwardError::UnknownNode { .. }
                        | ForwardError::Rejected {
                            reason: NackReason::ShuttingDown,
                            ..
                        }
                ),
                "{err:?}"
            );
        }
    }

    let b = Node::builder(b_config, |_, _| Discard)
        .start()
        .await
        .unwrap();
    let generation = b.membership().generation();
    wait_until(Duration::from_secs(15), "the new b is ready", || {
        a.membership()
            .view()
            .member("node-1")
            .is_some_and(|m| m.generation == generation && m.status == Status::Ready)
            && a.membership().view().is_target("node-1")
    })
    .await;
    a.forwarder()
        .forward(from(&a), to("node-1"), publish(1), &options(5000))
        .await
        .unwrap();
    a.abort().await;
    b.abort().await;
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
    let a = Node::builder(a_config, |_, _| Discard)
        .start()
        .await
        .unwrap();
    let mut b_config = node_config("node-1", &[a.membership().gossip_addr()], tolerant());
    let relay = Relay::start(b_config.forward_addr).await.unwrap();
    b_config.forward_advertise_addr = Some(relay.addr);
    let b = Node::builder(b_config, {
        let handler = Arc::new(Recorder::default());
        move |_, _| handler
    })
    .start()
    .await
    .unwrap();
    wait_until(Duration::from_secs(15), "node-1 is a target", || {
        a.membership().view().is_target("node-1")
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
    assert_eq!(relay.accepted(), 1);

    relay.cut();
    assert_eq!(
        forward(2, 300).await,
        Err(ForwardError::Timeout {
            node: "node-1".into()
        })
    );
    wait_until(Duration::from_secs(10), "node-1 reachable again", || {
        a.membership().view().is_target("node-1")
    })
    .await;
    assert!(relay.accepted() >= 2, "a new connection");
    assert_eq!(forward(3, 5000).await, Ok(()));
    a.abort().await;
    b.abort().await;
}

/// A peer that dials again has given up on its old connection, whose unread frames may still
/// sit in this node's socket (after a pause, say): once the newer connection is accepted, the
/// older one delivers nothing more and is closed, so the peer's messages stay in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_from_the_same_node_takes_over_from_the_older() {
    use futures_util::{SinkExt, StreamExt};
    use protocol::{Forward, Frame, FrameCodec};

    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    let target = c.nodes[1].forwarder().local_addr();
    let connect = || async move {
        let stream = tokio::net::TcpStream::connect(target).await.unwrap();
        let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::new(1 << 20));
        framed
            .send(&Frame::Hello(protocol::hello(
                "default", "peer-x", "node-1",
            )))
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
            deadline_ms: protocol::wall_clock_ms() + 5000,
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
        .seen()
        .iter()
        .filter(|d| d.from.node == "peer-x")
        .filter_map(|d| d.message.request_id())
        .collect();
    assert_eq!(seen, [1, 3]);
    c.stop().await;
}

/// An ack completes only what was written on its own connection: a peer that acks the id of a
/// message sent to another node ends nothing (the message is still pending, its ack from the
/// right node completes it), and a peer's answer to the keepalive's id ends nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_completes_only_what_was_written_on_its_connection() {
    let _serial = SERIAL.lock().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake = listener.local_addr().unwrap();
    let stolen = Arc::new(AtomicU64::new(0));
    // Listens as node-2: welcomes the dialer, then answers each forward with acks of the
    // stolen id and of id 0.
    let liar = tokio::spawn({
        let stolen = stolen.clone();
        async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            let Some(Frame::Hello(_)) = protocol::read_frame(&mut stream, &mut buf).await else {
                panic!("no hello");
            };
            let welcome = protocol::encode(&Frame::Welcome {
                version: protocol::MAX_VERSION,
                generation: u64::MAX,
            });
            stream.write_all(&welcome).await.unwrap();
            // Bounded: the test sends it two forwards.
            for _ in 0..2 {
                let Some(Frame::Forward(_)) = protocol::read_frame(&mut stream, &mut buf).await
                else {
                    return;
                };
                for id in [stolen.load(Ordering::Relaxed), 0] {
                    let ack = protocol::encode(&Frame::Ack { id });
                    stream.write_all(&ack).await.unwrap();
                }
            }
        }
    });
    let c = Cluster::start_with(3, |config| {
        if config.node_id == "node-2" {
            config.forward_advertise_addr = Some(fake);
        }
    })
    .await;
    c.recorders[1].set_mode(Mode::Hang);
    let f = c.nodes[0].forwarder();
    let id = f
        .async_forward(
            from(&c.nodes[0]),
            to("node-1"),
            publish(1),
            &options(10_000),
        )
        .await
        .unwrap();
    stolen.store(id.0, Ordering::Relaxed);
    for i in 0..2 {
        let _ = f
            .async_forward(
                from(&c.nodes[0]),
                to("node-2"),
                publish(i),
                &options(10_000),
            )
            .await
            .unwrap();
    }
    within(Duration::from_secs(10), "the liar answered", liar)
        .await
        .unwrap();
    assert_eq!(
        f.receive_ack(id, Duration::from_millis(500)).await,
        Err(ForwardError::Timeout {
            node: "node-1".into()
        }),
        "node-2's ack of node-1's message ended it"
    );
    wait_until(Duration::from_secs(5), "node-1 holds it", || {
        c.recorders[1].hung() == 1
    })
    .await;
    c.recorders[1].accept_hung();
    f.receive_ack(id, Duration::from_secs(5)).await.unwrap();
    c.stop().await;
}

/// A runtime of two workers of its own, for a node that a test pauses by blocking them.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a node of `config` on `runtime`, with `handler`.
async fn start_on(
    runtime: &tokio::runtime::Runtime,
    config: wamp_cluster::Config,
    handler: Arc<Recorder>,
) -> wamp_cluster::NodeHandle {
    runtime
        .spawn(async move {
            Node::builder(config, move |_, _| handler)
                .start()
                .await
                .unwrap()
        })
        .await
        .unwrap()
}

/// Blocks both workers of `runtime` for `pause`: nothing of a node on it runs but its gossip
/// thread, as in a process starved or paused.
fn block_workers(
    runtime: &tokio::runtime::Runtime,
    pause: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..2)
        .map(|_| runtime.spawn(async move { std::thread::sleep(pause) }))
        .collect()
}

/// A message whose sender gave up while it waited at the receiver is never delivered: the
/// receiving node's runtime is blocked for 3 s (its process starved or paused) while a forward
/// with a 1 s timeout reaches its socket; the sender gets `Timeout`, and once the receiver runs
/// again it expires the message by its deadline instead of handing it over. The next message
/// is delivered.
#[test]
fn a_message_read_after_its_sender_gave_up_is_never_delivered() {
    let (senders, receivers) = (runtime(), runtime());
    senders.block_on(async {
        let _serial = SERIAL.lock().await;
        let a_config = node_config("node-0", &[], tolerant());
        let b_config = node_config("node-1", &[a_config.gossip_addr], tolerant());
        let a = Node::builder(a_config, |_, _| Discard)
            .start()
            .await
            .unwrap();
        let recorder = Arc::new(Recorder::default());
        let b = start_on(&receivers, b_config, recorder.clone()).await;
        wait_until(Duration::from_secs(15), "b ready", || {
            a.membership().view().is_target("node-1")
        })
        .await;
        let f = a.forwarder();
        f.forward(from(&a), to("node-1"), publish(1), &options(5000))
            .await
            .unwrap();
        let blocked = block_workers(&receivers, Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let late = f
            .forward(from(&a), to("node-1"), publish(2), &options(1000))
            .await;
        assert_eq!(
            late,
            Err(ForwardError::Timeout {
                node: "node-1".into()
            })
        );
        for task in blocked {
            task.await.unwrap();
        }
        f.forward(from(&a), to("node-1"), publish(3), &options(5000))
            .await
            .unwrap();
        let seen: Vec<_> = recorder
            .seen()
            .iter()
            .map(|d| d.message.request_id())
            .collect();
        assert_eq!(seen, [Some(1), Some(3)], "message 2 was delivered late");
        b.abort().await;
        a.abort().await;
    });
}

/// An old generation of a member cannot connect: a hello from `node-0` with a generation older
/// than the one the listener's view holds is refused `StaleGeneration` (a paused old process,
/// resumed, cannot take over the live one's connection); a current one is welcomed with the
/// listener's own generation, which a dialer checks against its view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_generation_of_a_member_is_refused_and_the_welcome_names_the_listeners() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    let target = c.nodes[1].forwarder().local_addr();
    let current = c.nodes[0].membership().generation();
    let say = |generation: u64| async move {
        let mut hello = protocol::hello("default", "node-0", "node-1");
        hello.generation = generation;
        let mut stream = tokio::net::TcpStream::connect(target).await.unwrap();
        stream
            .write_all(&protocol::encode(&Frame::Hello(hello)))
            .await
            .unwrap();
        protocol::read_frame(&mut stream, &mut BytesMut::new()).await
    };
    assert_eq!(
        say(current - 1).await,
        Some(Frame::Refuse {
            reason: protocol::RefuseReason::StaleGeneration { current }
        })
    );
    assert_eq!(
        say(current).await,
        Some(Frame::Welcome {
            version: protocol::MAX_VERSION,
            generation: c.nodes[1].membership().generation()
        })
    );
    c.stop().await;
}

/// A restarted peer gets what is meant for it, never its old process: node-1's old process is
/// paused (its runtime blocked) while a new generation of node-1 starts on other ports; once
/// node-0 sees the restart it drops its connection to the old process and forwards to the new
/// one, and the old one, running again, delivers none of it.
#[test]
fn a_restarted_peers_old_process_gets_nothing_meant_for_the_new_one() {
    let (main, old) = (runtime(), runtime());
    main.block_on(async {
        let _serial = SERIAL.lock().await;
        let a_config = node_config("node-0", &[], tolerant());
        let seed = a_config.gossip_addr;
        let a = Node::builder(a_config, |_, _| Discard)
            .start()
            .await
            .unwrap();
        let (old_seen, new_seen) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let b_config = node_config("node-1", &[seed], tolerant());
        let b_old = start_on(&old, b_config, old_seen.clone()).await;
        wait_until(Duration::from_secs(15), "the old b ready", || {
            a.membership().view().is_target("node-1")
        })
        .await;
        let f = a.forwarder();
        f.forward(from(&a), to("node-1"), publish(1), &options(5000))
            .await
            .unwrap();
        let mut events = a.membership().subscribe_events();
        // The old process stops running (its gossip thread goes on, as a resumed process's
        // would).
        let paused = block_workers(&old, Duration::from_secs(6));
        let handler = new_seen.clone();
        let b_new = Node::builder(node_config("node-1", &[seed], tolerant()), move |_, _| {
            handler
        })
        .start()
        .await
        .unwrap();
        let generation = b_new.membership().generation();
        within(Duration::from_secs(5), "a sees the restart", async {
            loop {
                if let Ok(MembershipEvent::Restarted { node, .. }) = events.recv().await {
                    if node == "node-1" {
                        return;
                    }
                }
            }
        })
        .await;
        wait_until(Duration::from_secs(15), "the new b ready", || {
            let view = a.membership().view();
            view.is_target("node-1")
                && view.member("node-1").map(|m| m.generation) == Some(generation)
        })
        .await;
        for i in 2..5 {
            f.forward(from(&a), to("node-1"), publish(i), &options(3000))
                .await
                .unwrap();
        }
        for task in paused {
            task.await.unwrap();
        }
        // Running again, the old process finds nothing meant for the new one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ids =
            |r: &Recorder| -> Vec<_> { r.seen().iter().map(|d| d.message.request_id()).collect() };
        assert_eq!(ids(&old_seen), [Some(1)]);
        assert_eq!(ids(&new_seen), [Some(2), Some(3), Some(4)]);
        b_new.abort().await;
        b_old.abort().await;
        a.abort().await;
    });
}
