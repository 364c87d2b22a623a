//! Forwarding between in-process nodes over real loopback TCP, through the public API: what
//! `forward`, `async_forward`, `receive_ack`, `broadcast` and `broadcast_live` return, and the
//! requests refused before anything is sent.

mod common;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::SERIAL;
use wamp_cluster::testkit::cluster::{from, options, to, Cluster, Mode, Recorder};
use wamp_cluster::testkit::{node_config, publish, publish_of, tolerant, wait_until};
use wamp_cluster::wamp::{Dict, Payload, Value, WampMessage};
use wamp_cluster::{Delivery, Discard, ForwardError, ForwardOptions, NackReason, Node, NodeId};

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
    let seen = c.recorders[1].seen();
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

/// A `receive_ack` that gives up before the forward's own deadline leaves the outcome for a
/// later one, as Bondy's did (the ack stays in the mailbox): the ack that comes after it is
/// not late, and the next `receive_ack` gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_receive_ack_leaves_the_outcome_for_the_next() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
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
    assert_eq!(
        f.receive_ack(id, Duration::from_millis(200)).await,
        Err(ForwardError::Timeout {
            node: "node-1".into()
        })
    );
    wait_until(Duration::from_secs(5), "the message is held", || {
        c.recorders[1].hung() == 1
    })
    .await;
    c.recorders[1].accept_hung();
    f.receive_ack(id, Duration::from_secs(5)).await.unwrap();
    // Counted by the connection's reader right after it hands over the outcome.
    wait_until(Duration::from_secs(5), "the ack counted, not late", || {
        let stats = &f.stats()[&NodeId::from("node-1")];
        (stats.acked, stats.late_acks) == (1, 0)
    })
    .await;
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
    assert!(c.recorders[1].seen().is_empty());
    assert_eq!(f.pending_acks(), 0);
    c.stop().await;
}

/// A handler that refuses gives `Rejected` with its reason, and the node stays reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_handler_gives_rejected_with_its_reason() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    c.recorders[1].set_mode(Mode::Refuse);
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
    assert!(
        a.membership().view().is_target("node-1"),
        "a nack is not a bad node"
    );
    // Counters are updated by the connection's reader right after it hands over the outcome.
    wait_until(Duration::from_secs(5), "the nack counted", || {
        let stats = &a.forwarder().stats()[&NodeId::from("node-1")];
        (stats.sent, stats.acked, stats.failed["rejected"]) == (1, 0, 1)
    })
    .await;
    c.stop().await;
}

/// A handler that panics costs that one message: the sender gets `Rejected` with
/// `HandlerFailed`, the receiver counts it, and the same connection delivers the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_refuses_that_message_and_the_connection_goes_on() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(2).await;
    let a = &c.nodes[0];
    a.forwarder()
        .forward(from(a), to("node-1"), publish(1), &options(5000))
        .await
        .unwrap();
    c.recorders[1].set_mode(Mode::Panic);
    let result = a
        .forwarder()
        .forward(from(a), to("node-1"), publish(2), &options(5000))
        .await;
    assert_eq!(
        result,
        Err(ForwardError::Rejected {
            node: "node-1".into(),
            reason: NackReason::HandlerFailed
        })
    );
    c.recorders[1].set_mode(Mode::Record);
    a.forwarder()
        .forward(from(a), to("node-1"), publish(3), &options(5000))
        .await
        .unwrap();
    assert_eq!(c.recorders[1].seen().len(), 2);
    let reconnects = a.forwarder().stats()[&NodeId::from("node-1")].reconnects;
    assert_eq!(reconnects, 0, "the connection was kept");
    wait_until(Duration::from_secs(5), "the failure counted", || {
        let here = &c.nodes[1].forwarder().stats()[&NodeId::from("node-0")];
        (here.delivered, here.handler_failed) == (2, 1)
    })
    .await;
    c.stop().await;
}

/// A broadcast to 5 nodes of which 2 never ack: good holds the 3 others in the given order, bad
/// the 2 with `Timeout`, and it ends after about one timeout (the sends share one deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_shares_one_deadline_and_keeps_the_given_order() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start(6).await;
    c.recorders[2].set_mode(Mode::Hang);
    c.recorders[4].set_mode(Mode::Hang);
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
    let a = Node::builder(small, |_, _| Discard).start().await.unwrap();
    let silent = Arc::new(Recorder::default());
    silent.set_mode(Mode::Hang);
    let b = Node::builder(node_config("node-1", &[seed_addr], tolerant()), {
        let handler = silent.clone();
        move |_, _| handler
    })
    .start()
    .await
    .unwrap();
    wait_until(Duration::from_secs(15), "b ready", || {
        a.membership().view().is_target("node-1")
    })
    .await;
    let f = a.forwarder();
    let big = publish_of(1, 10_000);
    match f.forward(from(&a), to("node-1"), big, &options(5000)).await {
        Err(ForwardError::TooLarge { len, max: 4096 }) => assert!(len > 10_000),
        other => panic!("{other:?}"),
    }
    assert!(silent.hung() == 0, "nothing was sent");

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
    a.abort().await;
    b.abort().await;
}
