//! What the parts of a forwarder share: its identity, settings and protection, the pending-ack
//! table, the memory budget of long inbound frames, the reporter of bad nodes, and one shutdown
//! signal with the tracker of its tasks. The links and the listener are handed this, and
//! nothing of the forwarder itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::pending::Pending;
use super::report::Reporter;
use super::stats::Received;
use crate::config::{ForwardConfig, LimitsConfig};
use crate::log_limit::Limiter;
use crate::membership::Membership;
use crate::security::ClusterKeys;
use crate::tls::Tls;
use crate::wire::ReadBudget;
use crate::NodeId;

/// The longest timeout a call may have; longer ones are cut to it (a day: an "infinite"
/// timeout must not overflow the clock). A receiver cuts a frame's time to live to it too.
pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Lines a second logged about refused connections and bad frames, per forwarder.
const BAD_INPUT_LINES_PER_SEC: u32 = 10;

/// What protects a forwarder's connections: with keys, each handshake proves that both sides
/// know the cluster secret; with TLS, connections are encrypted and certificates checked
/// against node ids. Neither by default.
#[derive(Debug, Clone, Default)]
pub(crate) struct Protection {
    /// The keys of the cluster secret.
    pub keys: Option<ClusterKeys>,
    /// TLS settings.
    pub tls: Option<Tls>,
}

/// The shared state of one forwarder.
pub(crate) struct Context {
    /// This node.
    pub node: NodeId,
    /// This node's generation.
    pub generation: u64,
    /// The cluster's id, checked in every handshake.
    pub cluster_id: String,
    /// `[forward]`.
    pub config: ForwardConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// The secret's keys and TLS.
    pub protection: Protection,
    /// The live view, for the addresses links dial.
    pub membership: Membership,
    /// Pending acks of every link.
    pub pending: Pending,
    /// The memory of long frames being read, shared by every connection
    /// (`limits.max_inbound_buffered_bytes`).
    pub read_budget: ReadBudget,
    /// Bad-node reports.
    pub reporter: Reporter,
    /// What each peer's connections delivered here; dropped when the peer leaves the view.
    pub received: Mutex<HashMap<NodeId, Arc<Received>>>,
    /// Limits the log lines about what peers send.
    pub bad_input_log: Limiter,
    /// Whether messages that arrive are still handed to the handler: cleared when the node
    /// stops, so that the handler can finish what it accepted while its answers still go out.
    pub delivering: AtomicBool,
    /// Cancelled when the forwarder stops.
    pub shutdown: CancellationToken,
    /// Every task of the forwarder.
    pub tasks: TaskTracker,
}

impl Context {
    pub(crate) fn new(
        config: ForwardConfig,
        limits: LimitsConfig,
        protection: Protection,
        cluster_id: String,
        membership: Membership,
    ) -> Context {
        let read_budget = ReadBudget::new(limits.max_inbound_buffered_bytes);
        Context {
            node: membership.node_id().clone(),
            generation: membership.generation(),
            cluster_id,
            config,
            limits,
            protection,
            reporter: Reporter::new(membership.clone()),
            membership,
            pending: Pending::default(),
            read_budget,
            received: Mutex::default(),
            bad_input_log: Limiter::new(BAD_INPUT_LINES_PER_SEC),
            delivering: AtomicBool::new(true),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Whether arriving messages are still handed to the handler.
    pub(crate) fn is_delivering(&self) -> bool {
        self.delivering.load(Ordering::Acquire)
    }

    /// The counters of what `peer`'s connections deliver here.
    pub(crate) fn received_from(&self, peer: &NodeId) -> Arc<Received> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(peer.clone())
            .or_default()
            .clone()
    }

    /// Whether a log line about bad input may be written now: `Some` with the lines left out
    /// since the last one that was.
    pub(crate) fn may_log_bad_input(&self) -> Option<u64> {
        self.bad_input_log.check(std::time::Instant::now())
    }
}
