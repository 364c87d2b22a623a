//! The node as an embedding router meets it: the handler made from the node's forwarder (so
//! that it can answer across the cluster), verdicts given later and pipelined, a `Dispatcher`
//! drained when the node stops, one way to learn that a node stopped and why, and a node
//! without an admin API.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::SERIAL;
use wamp_cluster::testkit::cluster::{from, options, to, Mode, Recorder};
use wamp_cluster::testkit::{node_config, publish, tolerant, wait_until, within};
use wamp_cluster::wamp::{Dict, Payload, Value, WampMessage};
use wamp_cluster::{
    Delivery, Discard, Dispatcher, ForwardError, ForwardOptions, NackReason, Node, NodeHandle,
    PeerId, Stopped, Verdict,
};

const BOUND: Duration = Duration::from_secs(30);

/// A node `node-0` that records what it gets, and a second node, `node-1`, whose handler `make`
/// builds from its forwarder; once each sees the other.
async fn pair<H: wamp_cluster::Deliver>(
    make: impl FnOnce(&wamp_cluster::Forwarder) -> H + Send + 'static,
) -> (NodeHandle, Arc<Recorder>, NodeHandle) {
    let recorder = Arc::new(Recorder::default());
    let handler = recorder.clone();
    let a = Node::builder(node_config("node-0", &[], tolerant()), move |_, _| handler)
        .start()
        .await
        .unwrap();
    let b_config = node_config("node-1", &[a.membership().gossip_addr()], tolerant());
    let b = Node::builder(b_config, move |forwarder, _| make(forwarder))
        .start()
        .await
        .unwrap();
    wait_until(BOUND, "the nodes see each other", || {
        a.membership().view().is_target("node-1") && b.membership().view().is_target("node-0")
    })
    .await;
    (a, recorder, b)
}

fn invocation(request: u64) -> WampMessage {
    WampMessage::Invocation {
        request,
        registration: 7,
        details: Dict::new(),
        payload: Payload::Args(vec![Value::Integer(request as i64)]),
    }
}

/// The handler gets the node's forwarder: an INVOCATION forwarded to node-1 is answered by its
/// Dispatcher's worker with a RESULT forwarded back to the caller on node-0, as a router does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_made_from_the_forwarder_answers_across_the_cluster() {
    let _serial = SERIAL.lock().await;
    let (a, recorder, b) = pair(|forwarder| {
        let forwarder = forwarder.clone();
        Dispatcher::new(2, 100, move |delivery: Delivery| {
            let forwarder = forwarder.clone();
            async move {
                let WampMessage::Invocation {
                    request, payload, ..
                } = delivery.message
                else {
                    return Err(NackReason::NotForwardable);
                };
                let result = WampMessage::Result {
                    request,
                    details: Dict::new(),
                    payload,
                };
                let options = ForwardOptions::default();
                // The caller's node acks the result; a failure refuses the invocation.
                forwarder
                    .forward(&delivery.to, &delivery.from, &result, &options)
                    .await
                    .map_err(|err| NackReason::Refused(err.to_string()))
            }
        })
    })
    .await;
    for request in 1..=3 {
        a.forwarder()
            .forward(from(&a), to("node-1"), invocation(request), &options(5000))
            .await
            .unwrap();
    }
    let results: Vec<(PeerId, WampMessage)> = recorder
        .seen()
        .into_iter()
        .map(|d| (d.to, d.message))
        .collect();
    let expected: Vec<(PeerId, WampMessage)> = (1..=3)
        .map(|request| {
            let result = WampMessage::Result {
                request,
                details: Dict::new(),
                payload: Payload::Args(vec![Value::Integer(request as i64)]),
            };
            (from(&a), result)
        })
        .collect();
    assert_eq!(results, expected);
    within(BOUND, "abort", a.abort()).await;
    within(BOUND, "abort", b.abort()).await;
}

/// The sender of a verdict given later.
type Answer = tokio::sync::oneshot::Sender<Result<(), NackReason>>;

/// A handler that decides later: it keeps every answer until told to give them.
#[derive(Default)]
struct Undecided(Mutex<Vec<(Delivery, Answer)>>);

impl wamp_cluster::Deliver for Undecided {
    fn deliver(&self, delivery: Delivery) -> Verdict {
        let (verdict, answer) = Verdict::later();
        self.0.lock().unwrap().push((delivery, answer));
        verdict
    }
}

/// Verdicts given later do not hold the connection: while the handler has decided nothing,
/// every message sent is handed to it; once it decides, the senders get their answers, a
/// refusal with its reason, in the order the messages were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_given_later_are_pipelined_and_answer_each_sender() {
    let _serial = SERIAL.lock().await;
    let handler = Arc::new(Undecided::default());
    let undecided = handler.clone();
    let (a, _, b) = pair(move |_| handler).await;
    let f = a.forwarder();
    let mut ids = Vec::new();
    for request in 0..4 {
        ids.push(
            f.async_forward(from(&a), to("node-1"), publish(request), &options(10_000))
                .await
                .unwrap(),
        );
    }
    // Every message is in the handler's hands although no verdict was given (a connection
    // that waited for each verdict would have handed over one).
    wait_until(BOUND, "every message handed to the handler", || {
        undecided.0.lock().unwrap().len() == 4
    })
    .await;
    // Decided last to first: the answers still come back in the order sent.
    let mut answers: Vec<_> = std::mem::take(&mut *undecided.0.lock().unwrap());
    while let Some((delivery, answer)) = answers.pop() {
        let verdict = match delivery.message.request_id() {
            Some(2) => Err(NackReason::NoSuchSession),
            _ => Ok(()),
        };
        answer.send(verdict).unwrap();
    }
    let mut outcomes = Vec::new();
    for id in ids {
        outcomes.push(within(BOUND, "an answer", f.receive_ack(id, BOUND)).await);
    }
    let refused = ForwardError::Rejected {
        node: "node-1".into(),
        reason: NackReason::NoSuchSession,
    };
    assert_eq!(outcomes, [Ok(()), Ok(()), Err(refused), Ok(())]);
    within(BOUND, "abort", a.abort()).await;
    within(BOUND, "abort", b.abort()).await;
}

/// A leave lets the Dispatcher finish what it accepted: deliveries queued behind a slow handler
/// (2 s of work, the leave's gossip rounds take 1 s) are all handled before the node stops,
/// and the node says it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_drains_the_dispatcher_before_the_node_stops() {
    let _serial = SERIAL.lock().await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let record = handled.clone();
    let (a, _, b) = pair(move |_| {
        Dispatcher::new(1, 100, move |delivery: Delivery| {
            let record = record.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                record.lock().unwrap().push(delivery.message.request_id());
                Ok(())
            }
        })
    })
    .await;
    let f = a.forwarder();
    let mut ids = Vec::new();
    for request in 0..10 {
        ids.push(
            f.async_forward(from(&a), to("node-1"), publish(request), &options(10_000))
                .await
                .unwrap(),
        );
    }
    wait_until(BOUND, "the first one handled", || {
        !handled.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(within(BOUND, "the leave", b.leave()).await, Stopped::Left);
    assert_eq!(
        handled.lock().unwrap().len(),
        10,
        "every accepted delivery was handled"
    );
    // The connections wrote the verdicts of the drained work before they closed: every
    // sender got its ack.
    for id in ids {
        assert_eq!(f.receive_ack(id, BOUND).await, Ok(()));
    }
    within(BOUND, "abort", a.abort()).await;
}

/// A leave lets what the leaving node sent finish: forwards whose receiver answers after the
/// leave's gossip rounds (the receiver's handler holds them 2 s, the rounds take 1 s) end with
/// their acks, not `ShuttingDown`; a forward asked for during the leave is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_lets_the_forwards_in_flight_finish() {
    let _serial = SERIAL.lock().await;
    let (a, held, b) = pair(|_| Discard).await;
    held.set_mode(Mode::Hang);
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let (f, sender) = (b.forwarder().clone(), from(&b));
            tokio::spawn(async move {
                f.forward(sender, to("node-0"), publish(i), &options(10_000))
                    .await
            })
        })
        .collect();
    wait_until(BOUND, "node-0 holds the three", || held.hung() == 3).await;
    let leaving = tokio::spawn(async move { (b.leave().await, b) });
    tokio::time::sleep(Duration::from_secs(2)).await;
    held.accept_hung();
    for call in calls {
        assert_eq!(within(BOUND, "a call", call).await.unwrap(), Ok(()));
    }
    let (stopped, b) = within(BOUND, "the leave", leaving).await.unwrap();
    assert_eq!(stopped, Stopped::Left);
    assert_eq!(
        b.forwarder()
            .forward(from(&b), to("node-0"), publish(9), &options(1000))
            .await,
        Err(ForwardError::ShuttingDown)
    );
    within(BOUND, "abort", a.abort()).await;
}

/// A node stops once, whoever asks first, and every door then tells the same: an abort after a
/// leave says `Left`, a leave after an abort says `Aborted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_once_and_every_way_of_asking_says_how() {
    let _serial = SERIAL.lock().await;
    let left = Node::builder(node_config("left", &[], tolerant()), |_, _| Discard)
        .start()
        .await
        .unwrap();
    assert_eq!(within(BOUND, "leave", left.leave()).await, Stopped::Left);
    assert_eq!(within(BOUND, "abort", left.abort()).await, Stopped::Left);
    assert_eq!(
        within(BOUND, "stopped", left.stopped()).await,
        Stopped::Left
    );
    let aborted = Node::builder(node_config("aborted", &[], tolerant()), |_, _| Discard)
        .start()
        .await
        .unwrap();
    assert!(futures_util::FutureExt::now_or_never(aborted.stopped()).is_none());
    assert_eq!(
        within(BOUND, "abort", aborted.abort()).await,
        Stopped::Aborted
    );
    assert_eq!(
        within(BOUND, "leave", aborted.leave()).await,
        Stopped::Aborted
    );
    // Stopped nodes refuse to forward.
    let f = aborted.forwarder();
    let sent = f
        .forward(
            PeerId::node("r", "aborted"),
            PeerId::node("r", "left"),
            publish(1),
            &options(100),
        )
        .await;
    assert_eq!(sent, Err(ForwardError::ShuttingDown));
}

/// An abort cuts a leave short: with a leave of 20 s under way, the abort ends the node at
/// once, and both the leave and the abort say it was aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_cuts_a_leave_short() {
    let _serial = SERIAL.lock().await;
    let mut gossip = tolerant();
    gossip.leave_rounds = std::num::NonZeroU32::new(100).unwrap();
    assert!(gossip.leave_duration() >= Duration::from_secs(20));
    let node = Arc::new(
        Node::builder(node_config("leaving", &[], gossip), |_, _| Discard)
            .start()
            .await
            .unwrap(),
    );
    let leaving = tokio::spawn({
        let node = node.clone();
        async move { node.leave().await }
    });
    wait_until(BOUND, "the leave announced", || {
        node.membership()
            .view()
            .member("leaving")
            .is_some_and(|m| m.status == wamp_cluster::Status::Leaving)
    })
    .await;
    assert_eq!(
        within(Duration::from_secs(10), "the abort", node.abort()).await,
        Stopped::Aborted
    );
    assert_eq!(
        within(Duration::from_secs(10), "the leave", leaving)
            .await
            .unwrap(),
        Stopped::Aborted
    );
}

/// A node built without the admin API binds no admin port and gossips no admin address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_admin_api_binds_no_admin_port() {
    let _serial = SERIAL.lock().await;
    let mut config = node_config("quiet", &[], tolerant());
    // A port that must stay free.
    let admin = wamp_cluster::testkit::free_addr();
    config.admin_addr = admin;
    let node = Node::builder(config, |_, _| Discard)
        .without_admin()
        .start()
        .await
        .unwrap();
    assert_eq!(node.admin_addr(), None);
    assert!(
        std::net::TcpListener::bind(admin).is_ok(),
        "the admin port is free"
    );
    wait_until(BOUND, "ready", || {
        node.membership()
            .view()
            .self_member()
            .is_some_and(|m| m.admin_addr.is_none() && m.status == wamp_cluster::Status::Ready)
    })
    .await;
    assert_eq!(within(BOUND, "leave", node.leave()).await, Stopped::Left);
}
