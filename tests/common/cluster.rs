//! A cluster of nodes in this process whose handlers record what they are given.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wamp_cluster::{
    BadReason, Deliver, Delivery, ForwardOptions, NackReason, Node, NodeHandle, PeerId, Status,
    Verdict,
};

use super::{node_config, publish, tolerant, wait_until, within};

pub const ACCEPT: u8 = 0;
pub const REFUSE: u8 = 1;
pub const HANG: u8 = 2;

/// A handler that records what it accepts, and can be switched to refuse or to never answer.
#[derive(Default)]
pub struct Recorder {
    pub mode: AtomicU8,
    pub seen: Mutex<Vec<Delivery>>,
    /// Answers withheld in `HANG` mode (kept so they never resolve).
    pub hung: Mutex<Vec<tokio::sync::oneshot::Sender<Result<(), NackReason>>>>,
}

impl Deliver for Recorder {
    fn deliver(&self, delivery: Delivery) -> Verdict {
        match self.mode.load(Ordering::SeqCst) {
            REFUSE => Verdict::Refused(NackReason::Overloaded),
            HANG => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.hung.lock().unwrap().push(tx);
                Verdict::Later(rx)
            }
            _ => {
                self.seen.lock().unwrap().push(delivery);
                Verdict::Accepted
            }
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeHandle>,
    pub recorders: Vec<Arc<Recorder>>,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    /// `n` nodes whose configurations `tweak` changed.
    pub async fn start_with(n: usize, tweak: impl Fn(&mut wamp_cluster::Config)) -> Cluster {
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
            let node = Node::builder(config)
                .deliver(recorder.clone())
                .start()
                .await
                .unwrap();
            nodes.push(node);
            recorders.push(recorder);
        }
        for node in &nodes {
            wait_until(Duration::from_secs(15), "all ready", || {
                node.view()
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

    pub async fn stop(self) {
        for node in self.nodes {
            node.abort().await.unwrap();
        }
    }
}

pub fn from(node: &NodeHandle) -> PeerId {
    PeerId::session("realm1", node.node_id().clone(), 1)
}

pub fn to(node: &str) -> PeerId {
    PeerId::session("realm1", node, 2)
}

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
        .unwrap();
    assert!(c.recorders[1].seen.lock().unwrap().is_empty());
    report.reason
}
