//! A cluster of nodes in this process, on free loopback ports, whose handlers record what they
//! are given and can be switched to refuse or to never answer.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{node_config, publish, tolerant, wait_until, within};
use crate::config::Config;
use crate::delivery::{Deliver, Delivery, NackReason, Verdict};
use crate::forward::{BadReason, ForwardOptions};
use crate::membership::Status;
use crate::node::{Node, NodeHandle};
use crate::peer_id::PeerId;

/// What a [`Recorder`] does with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Accept it and keep it in [`Recorder::seen`].
    Record,
    /// Accept it and keep nothing (for load: nothing grows, nothing is counted).
    Discard,
    /// Refuse it, `Overloaded`.
    Refuse,
    /// Never answer (the answer channel is kept, so it never closes).
    Hang,
    /// Panic (a handler with a bug).
    Panic,
}

/// A handler that records what it accepts, and can be switched to refuse or to never answer.
#[derive(Default)]
pub struct Recorder {
    mode: AtomicU8,
    /// What it accepted in [`Mode::Record`], in order.
    seen: Mutex<Vec<Delivery>>,
    /// Answers withheld in [`Mode::Hang`].
    hung: Mutex<Vec<oneshot::Sender<Result<(), NackReason>>>>,
}

impl Recorder {
    /// Switches what it does with the next deliveries.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Relaxed) {
            1 => Mode::Discard,
            2 => Mode::Refuse,
            3 => Mode::Hang,
            4 => Mode::Panic,
            _ => Mode::Record,
        }
    }

    /// What it accepted in [`Mode::Record`], in order.
    pub fn seen(&self) -> Vec<Delivery> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many answers it withholds.
    pub fn hung(&self) -> usize {
        self.hung
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Gives every withheld answer: accepted.
    pub fn accept_hung(&self) {
        let hung = std::mem::take(&mut *self.hung.lock().unwrap_or_else(PoisonError::into_inner));
        for answer in hung {
            let _ = answer.send(Ok(()));
        }
    }
}

impl Deliver for Recorder {
    fn deliver(&self, delivery: Delivery) -> Verdict {
        match self.mode() {
            Mode::Refuse => return Verdict::Refused(NackReason::Overloaded),
            Mode::Hang => {
                let (verdict, answer) = Verdict::later();
                self.hung
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(answer);
                return verdict;
            }
            Mode::Record => self
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(delivery),
            Mode::Discard => {}
            Mode::Panic => panic!("the recorder panics, as asked"),
        }
        Verdict::Accepted
    }
}

/// Nodes `node-0` … `node-{n-1}` joined through the first, each with a [`Recorder`].
pub struct Cluster {
    /// The nodes, in order.
    pub nodes: Vec<NodeHandle>,
    /// Their handlers.
    pub recorders: Vec<Arc<Recorder>>,
}

impl Cluster {
    /// `n` nodes with tolerant failure detection, once every one sees all ready.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    /// `n` nodes whose configurations `tweak` changed.
    pub async fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> Cluster {
        let mut nodes: Vec<NodeHandle> = Vec::new();
        let mut recorders = Vec::new();
        for i in 0..n {
            let seeds: Vec<_> = nodes
                .first()
                .map(|s| s.membership().gossip_addr())
                .into_iter()
                .collect();
            let recorder = Arc::new(Recorder::default());
            let mut config = node_config(&format!("node-{i}"), &seeds, tolerant());
            tweak(&mut config);
            let handler = recorder.clone();
            let node = Node::builder(config, move |_, _| handler)
                .start()
                .await
                .unwrap_or_else(|err| panic!("node-{i} did not start: {err}"));
            nodes.push(node);
            recorders.push(recorder);
        }
        for node in &nodes {
            wait_until(Duration::from_secs(30), "every node sees all ready", || {
                node.membership()
                    .view()
                    .members()
                    .iter()
                    .filter(|m| m.live && m.status == Status::Ready)
                    .count()
                    == n
            })
            .await;
        }
        Cluster { nodes, recorders }
    }

    /// Stops every node at once.
    pub async fn stop(self) {
        for node in self.nodes {
            node.abort().await;
        }
    }
}

/// The sending peer on `node`: session 1 of `realm1`.
pub fn from(node: &NodeHandle) -> PeerId {
    PeerId::session("realm1", node.node_id().clone(), 1)
}

/// The receiving peer on node `node`: session 2 of `realm1`.
pub fn to(node: &str) -> PeerId {
    PeerId::session("realm1", node, 2)
}

/// Options with this timeout, waiting for room in a full queue.
pub fn options(timeout_ms: u64) -> ForwardOptions {
    ForwardOptions {
        timeout: Some(Duration::from_millis(timeout_ms)),
        fail_if_full: false,
    }
}

/// Forwards `n` messages from `a` to `b`; every one must be acked.
pub async fn forward_all(a: &NodeHandle, b: &str, n: u64) {
    for i in 0..n {
        a.forwarder()
            .forward(from(a), to(b), publish(i), &options(10_000))
            .await
            .unwrap_or_else(|err| panic!("forward {i} to {b}: {err}"));
    }
}

/// Forwards a message from `node-0` to `node-1` that must fail (within `timeout_ms`), and
/// checks that `node-1`'s handler got nothing; the reason of the report `node-0` makes.
pub async fn failed_forward_report(c: &Cluster, timeout_ms: u64) -> BadReason {
    let a = &c.nodes[0];
    let mut reports = a.forwarder().subscribe_reports();
    let sent = a
        .forwarder()
        .forward(from(a), to("node-1"), publish(1), &options(timeout_ms))
        .await;
    assert!(sent.is_err(), "{sent:?}");
    let report = within(Duration::from_secs(5), "a report", reports.recv())
        .await
        .unwrap_or_else(|err| panic!("no report: {err}"));
    assert!(c.recorders[1].seen().is_empty());
    report.reason
}
