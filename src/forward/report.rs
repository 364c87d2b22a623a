//! Bad-node reports: a node that fails to ack, refuses connections or drops its connection is
//! reported unreachable to membership (it leaves the broadcast targets), to subscribers and to
//! the log and metrics, once per transition; a node that answers again is reported reachable.

use std::fmt;
use std::time::SystemTime;

use tokio::sync::broadcast;
use tracing::warn;

use crate::membership::{Membership, Status};
use crate::metrics as m;
use crate::NodeId;

/// Bad-node reports a subscriber may fall behind by before it loses the oldest.
pub const REPORT_CHANNEL_CAPACITY: usize = 1024;

/// Why a node was reported bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadReason {
    /// No ack within the timeout.
    AckTimeout,
    /// Connecting or the handshake failed.
    ConnectFailed(String),
    /// An established connection broke.
    ConnectionLost(String),
}

impl BadReason {
    /// The reason's name in snake case, as metrics label it.
    pub fn name(&self) -> &'static str {
        match self {
            BadReason::AckTimeout => "ack_timeout",
            BadReason::ConnectFailed(_) => "connect_failed",
            BadReason::ConnectionLost(_) => "connection_lost",
        }
    }
}

impl fmt::Display for BadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadReason::AckTimeout => f.write_str("ack timeout"),
            BadReason::ConnectFailed(why) => write!(f, "connect failed: {why}"),
            BadReason::ConnectionLost(why) => write!(f, "connection lost: {why}"),
        }
    }
}

/// A node became unreachable from this one (one report per transition, not per failure).
#[derive(Debug, Clone, PartialEq)]
pub struct BadNodeReport {
    /// The node.
    pub node: NodeId,
    /// Why.
    pub reason: BadReason,
    /// When.
    pub at: SystemTime,
}

/// Makes the reports of one forwarder.
pub(crate) struct Reporter {
    membership: Membership,
    reports: broadcast::Sender<BadNodeReport>,
}

impl Reporter {
    pub(crate) fn new(membership: Membership) -> Reporter {
        let (reports, _) = broadcast::channel(REPORT_CHANNEL_CAPACITY);
        Reporter {
            membership,
            reports,
        }
    }

    /// Reports from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<BadNodeReport> {
        self.reports.subscribe()
    }

    /// Reports `node` unreachable: to membership, and on the transition to subscribers, the
    /// log and metrics. A node that announced its leave closes its connections on purpose: it
    /// is not reported; nor, again, is one already unreachable (a stall fails many forwards).
    pub(crate) fn bad(&self, node: &NodeId, reason: BadReason) {
        if self
            .membership
            .peek_view()
            .member(node.as_str())
            .is_some_and(|m| m.status == Status::Leaving || !m.reachable)
        {
            return;
        }
        if !self
            .membership
            .report_unreachable(node.as_str(), reason.to_string())
        {
            return;
        }
        let me = self.membership.node_id();
        warn!(node = %me, peer = %node, %reason, "node reported bad");
        metrics::counter!(
            m::BAD_NODE_REPORTS,
            "node" => me.to_string(),
            "peer" => node.to_string(),
            "reason" => reason.name()
        )
        .increment(1);
        // Nobody subscribed is fine.
        let _ = self.reports.send(BadNodeReport {
            node: node.clone(),
            reason,
            at: SystemTime::now(),
        });
    }

    /// The node answered: reachable again if it was reported.
    pub(crate) fn good(&self, node: &NodeId) {
        if !self
            .membership
            .peek_view()
            .member(node.as_str())
            .is_none_or(|m| m.reachable)
        {
            self.membership.report_reachable(node.as_str());
        }
    }
}
