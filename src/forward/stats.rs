//! Forwarding counters per peer: what this node sent to it ([`PeerStats`], kept as atomics for
//! `/stats` and exported as metrics through handles registered once per peer, so that counting
//! costs an atomic add on the hot path), and what its connections delivered here
//! ([`Received`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use metrics::{Counter, Gauge, Histogram};
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
    sent_metric: Counter,
    acked_metric: Counter,
    failed_metric: [Counter; 5],
    late_metric: Counter,
    reconnects_metric: Counter,
    bytes_metric: Counter,
    latency: Histogram,
    pub(crate) queue_depth: Gauge,
}

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

/// What the connections from one peer delivered here, counted as their answers are written out.
#[derive(Debug, Default)]
pub(crate) struct Received {
    delivered: AtomicU64,
    refused: AtomicU64,
    expired: AtomicU64,
    handler_failed: AtomicU64,
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
        let failed_metric = FAILURE_REASONS.map(|reason| {
            metrics::counter!(
                m::FORWARDS_FAILED,
                "node" => node.to_string(),
                "peer" => peer.to_string(),
                "reason" => reason
            )
        });
        PeerStats {
            sent: Default::default(),
            acked: Default::default(),
            failed: Default::default(),
            late_acks: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            sent_metric: metrics::counter!(m::FORWARDS_SENT, &labels),
            acked_metric: metrics::counter!(m::FORWARDS_ACKED, &labels),
            failed_metric,
            late_metric: metrics::counter!(m::LATE_ACKS, &labels),
            reconnects_metric: metrics::counter!(m::RECONNECTS, &labels),
            bytes_metric: metrics::counter!(m::BYTES_SENT, &labels),
            latency: metrics::histogram!(m::ACK_LATENCY, &labels),
            queue_depth: metrics::gauge!(m::QUEUE_DEPTH, &labels),
        }
    }

    pub(crate) fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.sent_metric.increment(1);
    }

    pub(crate) fn acked(&self, latency: Duration) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        self.acked_metric.increment(1);
        self.latency.record(latency.as_secs_f64());
    }

    pub(crate) fn failed(&self, error: &ForwardError, count: u64) {
        let i = reason_index(error);
        self.failed[i].fetch_add(count, Ordering::Relaxed);
        self.failed_metric[i].increment(count);
    }

    pub(crate) fn late_ack(&self) {
        self.late_acks.fetch_add(1, Ordering::Relaxed);
        self.late_metric.increment(1);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.reconnects_metric.increment(1);
    }

    pub(crate) fn bytes_sent(&self, bytes: usize) {
        self.bytes_metric.increment(bytes as u64);
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
