//! Forwarding counters per peer: what this node sent to it ([`PeerStats`]), and what its
//! connections delivered here ([`Received`]). Both count in atomics, for `/stats` and so that
//! counting costs an atomic add on the hot path; the forwarder publishes them to the metrics
//! once a second, looking the series up each time, so that the series of a peer that left go
//! after the exporter's idle timeout and come back with the peer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use metrics::Histogram;
use serde::Serialize;

use crate::error::ForwardError;
use crate::metrics as m;
use crate::NodeId;

/// The failure reasons counted, as `ForwardError::name` gives them.
pub const FAILURE_REASONS: [&str; 5] =
    ["timeout", "connection_lost", "rejected", "expired", "other"];

fn reason_index(error: &ForwardError) -> usize {
    match error {
        ForwardError::Timeout { .. } => 0,
        ForwardError::ConnectionLost { .. } => 1,
        ForwardError::Rejected { .. } => 2,
        ForwardError::Expired { .. } => 3,
        _ => 4,
    }
}

/// The counters of one peer.
pub(crate) struct PeerStats {
    // The callers count `sent` and the link's task `acked`, on different CPUs: apart, so that
    // neither invalidates the other's cache line on every message.
    sent: CachePadded<AtomicU64>,
    acked: CachePadded<AtomicU64>,
    failed: [AtomicU64; 5],
    late_acks: AtomicU64,
    reconnects: AtomicU64,
    bytes_sent: AtomicU64,
    /// Ack latencies go here; the handle is fetched again at each publication, so that one
    /// whose series the exporter dropped while no ack came is replaced by a live one.
    latency: ArcSwap<Histogram>,
    /// The counts the metrics were last given, and the labels they carry.
    published: Mutex<Published>,
}

/// What [`PeerStats::publish`] gave the metrics so far.
struct Published {
    labels: [(&'static str, String); 2],
    counts: [u64; PUBLISHED],
}

/// The counters published: sent, acked, late acks, reconnects, bytes, then the failures.
const PUBLISHED: usize = 5 + FAILURE_REASONS.len();

/// What `/stats` shows of one peer: what this node sent it, and what it sent this node.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PeerCounters {
    /// Messages queued to the peer.
    pub sent: u64,
    /// Messages it acked.
    pub acked: u64,
    /// Messages that failed, by reason.
    pub failed: std::collections::BTreeMap<&'static str, u64>,
    /// Acks that came after their entry ended.
    pub late_acks: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Messages from the peer that this node's handler accepted (acked).
    pub delivered: u64,
    /// Messages from the peer that were refused (nacked), expired ones and handler failures
    /// aside.
    pub refused: u64,
    /// Messages from the peer whose time to live ran out before they could be delivered.
    pub expired: u64,
    /// Messages from the peer on which the handler failed (nacked `HandlerFailed`).
    pub handler_failed: u64,
}

/// What the connections from one peer delivered here, counted as their answers are written out,
/// and what they read.
#[derive(Debug, Default)]
pub(crate) struct Received {
    delivered: AtomicU64,
    refused: AtomicU64,
    expired: AtomicU64,
    handler_failed: AtomicU64,
    /// Bytes read from the peer's connections.
    pub(crate) bytes: AtomicU64,
    /// Pauses of its connections for sending too fast.
    pub(crate) throttled: AtomicU64,
    /// Bytes and pauses already published.
    published: Mutex<Inbound>,
}

/// The label of the inbound series of node ids that are not members: strangers cannot make
/// series of their own.
pub(crate) const NON_MEMBER: &str = "non_member";

/// Bytes read and pauses of inbound connections, to be published.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Inbound {
    bytes: u64,
    throttled: u64,
}

impl Inbound {
    pub(crate) fn add(&mut self, other: Inbound) {
        self.bytes += other.bytes;
        self.throttled += other.throttled;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes == 0 && self.throttled == 0
    }

    /// Adds these to the series of `node` for `peer`.
    pub(crate) fn publish(&self, node: &NodeId, peer: &str) {
        let labels = [("node", node.to_string()), ("peer", peer.to_string())];
        metrics::counter!(m::BYTES_RECEIVED, &labels).increment(self.bytes);
        metrics::counter!(m::INBOUND_THROTTLED, &labels).increment(self.throttled);
    }
}

/// Answers counted by one connection since it last added them to its peer's [`Received`].
#[derive(Debug, Default)]
pub(crate) struct Counts {
    delivered: u64,
    refused: u64,
    expired: u64,
    handler_failed: u64,
}

impl Counts {
    /// Counts the answer to a forwarded message (a pong is none).
    pub(crate) fn count(&mut self, answer: &crate::wire::Frame) {
        use crate::delivery::NackReason;
        use crate::wire::Frame;
        match answer {
            Frame::Ack { .. } => self.delivered += 1,
            Frame::Nack {
                reason: NackReason::Expired,
                ..
            } => self.expired += 1,
            Frame::Nack {
                reason: NackReason::HandlerFailed,
                ..
            } => self.handler_failed += 1,
            Frame::Nack { .. } => self.refused += 1,
            _ => {}
        }
    }
}

impl Received {
    /// What was read and throttled since the last call.
    pub(crate) fn unpublished(&self) -> Inbound {
        let now = Inbound {
            bytes: self.bytes.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
        };
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let new = Inbound {
            bytes: now.bytes - published.bytes,
            throttled: now.throttled - published.throttled,
        };
        *published = now;
        new
    }

    /// Adds a connection's counts.
    pub(crate) fn add(&self, counts: Counts) {
        for (counter, n) in [
            (&self.delivered, counts.delivered),
            (&self.refused, counts.refused),
            (&self.expired, counts.expired),
            (&self.handler_failed, counts.handler_failed),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Adds these counts to `counters`.
    pub(crate) fn add_to(&self, counters: &mut PeerCounters) {
        counters.delivered += self.delivered.load(Ordering::Relaxed);
        counters.refused += self.refused.load(Ordering::Relaxed);
        counters.handler_failed += self.handler_failed.load(Ordering::Relaxed);
        counters.expired += self.expired.load(Ordering::Relaxed);
    }
}

impl PeerStats {
    pub(crate) fn new(node: &NodeId, peer: &NodeId) -> PeerStats {
        let labels = [("node", node.to_string()), ("peer", peer.to_string())];
        PeerStats {
            sent: Default::default(),
            acked: Default::default(),
            failed: Default::default(),
            late_acks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            latency: ArcSwap::from_pointee(metrics::histogram!(m::ACK_LATENCY, &labels)),
            published: Mutex::new(Published {
                labels,
                counts: [0; PUBLISHED],
            }),
        }
    }

    /// Adds to the metrics what was counted since the last time, sets the queue depth to
    /// `queued`, and fetches the latency histogram again. The series are looked up each time
    /// (not kept): while a peer's stats live its series are updated at every publication and
    /// never idle; once they are dropped (the peer left the view), the exporter drops its
    /// series after its idle timeout, and a peer that comes back gets them anew.
    pub(crate) fn publish(&self, queued: Option<usize>) {
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Published { labels, counts } = &mut *published;
        let mut now = [0; PUBLISHED];
        now[..5].copy_from_slice(&[
            self.sent.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.late_acks.load(Ordering::Relaxed),
            self.reconnects.load(Ordering::Relaxed),
            self.bytes_sent.load(Ordering::Relaxed),
        ]);
        for (n, failed) in now[5..].iter_mut().zip(&self.failed) {
            *n = failed.load(Ordering::Relaxed);
        }
        let names = [
            m::FORWARDS_SENT,
            m::FORWARDS_ACKED,
            m::LATE_ACKS,
            m::RECONNECTS,
            m::BYTES_SENT,
        ];
        for (i, name) in names.into_iter().enumerate() {
            metrics::counter!(name, &*labels).increment(now[i] - counts[i]);
        }
        for (i, reason) in FAILURE_REASONS.into_iter().enumerate() {
            let [(_, node), (_, peer)] = &*labels;
            metrics::counter!(
                m::FORWARDS_FAILED,
                "node" => node.clone(),
                "peer" => peer.clone(),
                "reason" => reason
            )
            .increment(now[5 + i] - counts[5 + i]);
        }
        *counts = now;
        if let Some(queued) = queued {
            metrics::gauge!(m::QUEUE_DEPTH, &*labels).set(queued as f64);
        }
        self.latency
            .store(Arc::new(metrics::histogram!(m::ACK_LATENCY, &*labels)));
    }

    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn acked(&self, latency: Duration) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.latency.load().record(latency.as_secs_f64());
    }

    pub(crate) fn failed(&self, error: &ForwardError, count: u64) {
        self.failed[reason_index(error)].fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn late_ack(&self) {
        self.late_acks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn bytes_sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn counters(&self) -> PeerCounters {
        PeerCounters {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            failed: FAILURE_REASONS
                .iter()
                .zip(&self.failed)
                .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
                .collect(),
            late_acks: self.late_acks.load(Ordering::Relaxed),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            ..PeerCounters::default()
        }
    }
}
