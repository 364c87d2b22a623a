//! Metric names and the Prometheus recorder.
//!
//! The library records through the `metrics` facade; whoever embeds it installs a recorder. Every
//! series carries the local node id as the label `node`, so several nodes in one process stay
//! apart under one global recorder.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// Gauge: live members by `status` (`joining`, `ready`, `leaving`), self included.
pub const LIVE_MEMBERS: &str = "wamp_cluster_live_members";
/// Gauge: members that gossip knows but holds dead.
pub const DEAD_MEMBERS: &str = "wamp_cluster_dead_members";
/// Gauge: live members this node reported unreachable.
pub const UNREACHABLE_MEMBERS: &str = "wamp_cluster_unreachable_members";
/// Counter: membership events by `kind` (`joined`, `restarted`, `leaving`, `left`, `down`,
/// `unreachable`, `reachable`).
pub const MEMBERSHIP_EVENTS: &str = "wamp_cluster_membership_events_total";
/// Counter: sightings of another process that uses this node's id (label `other_gossip_addr`).
pub const NODE_ID_CONFLICTS: &str = "wamp_cluster_node_id_conflicts_total";

/// Counter: bad-node reports by `peer` and `reason` (`ack_timeout`, `connect_failed`,
/// `connection_lost`), one per transition to unreachable.
pub const BAD_NODE_REPORTS: &str = "wamp_cluster_bad_node_reports_total";
/// Counter: messages queued to a `peer`.
pub const FORWARDS_SENT: &str = "wamp_cluster_forwards_sent_total";
/// Counter: messages a `peer` acked.
pub const FORWARDS_ACKED: &str = "wamp_cluster_forwards_acked_total";
/// Counter: messages to a `peer` that failed, by `reason` (`timeout`, `connection_lost`,
/// `rejected`, `expired`, `other`).
pub const FORWARDS_FAILED: &str = "wamp_cluster_forwards_failed_total";
/// Histogram: seconds from queueing a message to its ack, by `peer`.
pub const ACK_LATENCY: &str = "wamp_cluster_ack_latency_seconds";
/// Gauge: pending acks of this node.
pub const PENDING_ACKS: &str = "wamp_cluster_pending_acks";
/// Gauge: frames queued to a `peer`.
pub const QUEUE_DEPTH: &str = "wamp_cluster_queue_depth";
/// Counter: bytes written to a `peer`.
pub const BYTES_SENT: &str = "wamp_cluster_bytes_sent_total";
/// Counter: bytes read from a `peer` on its connection to this node.
pub const BYTES_RECEIVED: &str = "wamp_cluster_bytes_received_total";
/// Counter: connections to a `peer` made after the first.
pub const RECONNECTS: &str = "wamp_cluster_reconnects_total";
/// Counter: acks and nacks that arrived after their entry ended, by `peer`.
pub const LATE_ACKS: &str = "wamp_cluster_late_acks_total";
/// Counter: inbound handshakes refused, by `reason`.
pub const HANDSHAKES_REFUSED: &str = "wamp_cluster_handshakes_refused_total";
/// Counter: inbound connections closed to make room for a new one, by `reason` (`unproven`:
/// the oldest still in its handshake; `superseded`: a newer one from the same node took over;
/// `non_member`: the oldest from a node id that is not a member).
pub const INBOUND_EVICTED: &str = "wamp_cluster_inbound_evicted_total";
/// Counter: inbound connections closed on a bad frame or a limit, by `reason` (`too_large`,
/// `malformed`, `io`, `unexpected`, `idle`, `write_stalled`).
pub const FRAMES_REFUSED: &str = "wamp_cluster_frames_refused_total";
/// Counter: pauses of an inbound connection from a `peer` that sent faster than
/// `limits.max_inbound_frames_per_sec_per_peer`.
pub const INBOUND_THROTTLED: &str = "wamp_cluster_inbound_throttled_total";
/// Counter: log lines left out by a limit, by `target` (the node program limits chitchat's).
pub const LOG_LINES_LEFT_OUT: &str = "wamp_cluster_log_lines_left_out_total";
/// Counter: gossip datagrams dropped with a cluster secret, by `reason` (`unsealed`: not
/// sealed with a secret of this node, changed, or not a part of a message; `stale`: sent outside
/// `gossip.replay_window_ms`; `replayed`: opened before).
pub const GOSSIP_DROPPED: &str = "wamp_cluster_gossip_dropped_total";
/// Counter: admin API requests refused for want of the right bearer token.
pub const ADMIN_UNAUTHORIZED: &str = "wamp_cluster_admin_unauthorized_total";
/// Counter: admin API requests refused as a web page could have sent them, by `reason`
/// (`host`, `origin`, `content_type`).
pub const ADMIN_REFUSED: &str = "wamp_cluster_admin_refused_total";

/// How long a series that is no longer updated stays in the output: series of peers that
/// left are dropped after this, counters too, so churn cannot grow the output without bound.
/// The series of a live peer are updated once a second, whether anything happened or not, so
/// they never go; a peer that comes back gets them again.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the recorder's upkeep (idle timeouts, histogram buckets) runs.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The node's own counters (not a peer's) by the label values each can have: touched once a
/// second by [`touch_node_counters`], so that a counter that rarely moves is not dropped by the
/// idle timeout between two increments, and each starts at 0 before its first.
const NODE_COUNTERS: &[(&str, &str, &[&str])] = &[
    (
        MEMBERSHIP_EVENTS,
        "kind",
        &[
            "joined",
            "restarted",
            "leaving",
            "left",
            "down",
            "unreachable",
            "reachable",
        ],
    ),
    (
        HANDSHAKES_REFUSED,
        "reason",
        &[
            "bad_hello",
            "no_common_version",
            "wrong_cluster",
            "wrong_node",
            "overloaded",
            "shutting_down",
            "bad_secret",
            "bad_certificate",
            "timeout",
            "tls",
            "clock_skew",
            "stale_generation",
        ],
    ),
    (
        FRAMES_REFUSED,
        "reason",
        &[
            "too_large",
            "malformed",
            "io",
            "unexpected",
            "idle",
            "write_stalled",
        ],
    ),
    (
        INBOUND_EVICTED,
        "reason",
        &["unproven", "superseded", "non_member"],
    ),
    (GOSSIP_DROPPED, "reason", &["unsealed", "stale", "replayed"]),
    (ADMIN_REFUSED, "reason", &["host", "origin", "content_type"]),
];

/// Keeps the node's own counters in the output (see [`NODE_COUNTERS`]).
pub(crate) fn touch_node_counters(node: &str) {
    for (name, label, values) in NODE_COUNTERS {
        for value in *values {
            metrics::counter!(*name, "node" => node.to_owned(), *label => *value).increment(0);
        }
    }
    metrics::counter!(ADMIN_UNAUTHORIZED, "node" => node.to_owned()).increment(0);
}

/// Registers metric descriptions with the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(LIVE_MEMBERS, "Live members by status, self included.");
    metrics::describe_gauge!(DEAD_MEMBERS, "Members that gossip holds dead.");
    metrics::describe_gauge!(UNREACHABLE_MEMBERS, "Live members reported unreachable.");
    metrics::describe_counter!(MEMBERSHIP_EVENTS, "Membership events by kind.");
    metrics::describe_counter!(FORWARDS_SENT, "Messages queued to a peer.");
    metrics::describe_counter!(FORWARDS_ACKED, "Messages a peer acked.");
    metrics::describe_counter!(
        FORWARDS_FAILED,
        "Messages to a peer that failed, by reason."
    );
    metrics::describe_histogram!(ACK_LATENCY, "Seconds from queueing a message to its ack.");
    metrics::describe_gauge!(PENDING_ACKS, "Pending acks.");
    metrics::describe_gauge!(QUEUE_DEPTH, "Frames queued to a peer.");
    metrics::describe_counter!(BYTES_SENT, "Bytes written to a peer.");
    metrics::describe_counter!(BYTES_RECEIVED, "Bytes read from a peer.");
    metrics::describe_counter!(RECONNECTS, "Connections to a peer after the first.");
    metrics::describe_counter!(BAD_NODE_REPORTS, "Bad-node reports by peer and reason.");
    metrics::describe_counter!(LATE_ACKS, "Acks that arrived after their entry ended.");
    metrics::describe_counter!(HANDSHAKES_REFUSED, "Inbound handshakes refused by reason.");
    metrics::describe_counter!(
        FRAMES_REFUSED,
        "Inbound connections closed on a bad frame or a limit, by reason."
    );
    metrics::describe_counter!(
        INBOUND_EVICTED,
        "Inbound connections closed to make room for a new one, by reason."
    );
    metrics::describe_counter!(
        LOG_LINES_LEFT_OUT,
        "Log lines left out by a limit, by target."
    );
    metrics::describe_counter!(
        INBOUND_THROTTLED,
        "Pauses of an inbound connection whose peer sent faster than its frame rate limit."
    );
    metrics::describe_counter!(
        ADMIN_UNAUTHORIZED,
        "Admin API requests refused for want of the right bearer token."
    );
    metrics::describe_counter!(
        ADMIN_REFUSED,
        "Admin API requests refused as a web page could have sent them, by reason."
    );
    metrics::describe_counter!(
        GOSSIP_DROPPED,
        "Gossip datagrams dropped because they did not open with the cluster secret, by reason."
    );
    metrics::describe_counter!(
        NODE_ID_CONFLICTS,
        "Sightings of another process using this node's id."
    );
}

/// Installs a global Prometheus recorder with the idle timeout and returns its handle, or the
/// handle of a recorder this function installed before (tests start several nodes per process).
/// Call [`PrometheusHandle::run_upkeep`] every [`UPKEEP_INTERVAL`]; the node does it for the
/// handle it is given.
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    install_prometheus_with(IDLE_TIMEOUT)
}

/// [`install_prometheus`] with another idle timeout (tests that watch series go). The first
/// call in a process decides the timeout.
pub fn install_prometheus_with(idle_timeout: Duration) -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<Result<PrometheusHandle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .idle_timeout(MetricKindMask::ALL, Some(idle_timeout))
                .install_recorder()
                .map_err(|err| err.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
}
