//! The router's metric names (prefix `wamp_cluster_router_`); every series carries the node
//! (`node`) and the realm (`realm`).

/// Sessions joined (gauge).
pub const SESSIONS: &str = "wamp_cluster_router_sessions";
/// Messages received from clients, by type (`type="CALL"`).
pub const MESSAGES_IN: &str = "wamp_cluster_router_messages_in_total";
/// Messages sent to clients, by type.
pub const MESSAGES_OUT: &str = "wamp_cluster_router_messages_out_total";
/// Calls in flight (gauge).
pub const CALLS_IN_FLIGHT: &str = "wamp_cluster_router_calls_in_flight";
/// From CALL to the RESULT or ERROR that ends it, in seconds (histogram).
pub const CALL_LATENCY: &str = "wamp_cluster_router_call_latency_seconds";
/// ERRORs sent to clients, by URI: `wamp.error.*` by name, all others as `application`.
pub const ERRORS: &str = "wamp_cluster_router_errors_total";
/// Sessions closed because they did not read what the router sent them.
pub const SLOW_CONSUMERS: &str = "wamp_cluster_router_slow_consumer_disconnects_total";
/// Connections closed before or instead of a session, by reason (`protocol_violation`,
/// `hello_timeout`, `idle_timeout`, `handshake`, `too_large`, `no_such_realm`,
/// `authentication_failed`).
pub const CONNECTIONS_REFUSED: &str = "wamp_cluster_router_connections_refused_total";

/// Registers the router's metric descriptions with the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(SESSIONS, "Sessions joined, per realm.");
    metrics::describe_counter!(MESSAGES_IN, "Messages received from clients, by type.");
    metrics::describe_counter!(MESSAGES_OUT, "Messages sent to clients, by type.");
    metrics::describe_gauge!(CALLS_IN_FLIGHT, "Calls in flight, per realm.");
    metrics::describe_histogram!(
        CALL_LATENCY,
        "Seconds from a CALL to the RESULT or ERROR that ends it."
    );
    metrics::describe_counter!(
        ERRORS,
        "ERRORs sent to clients, by URI (wamp.error.* by name, others as application)."
    );
    metrics::describe_counter!(
        SLOW_CONSUMERS,
        "Sessions closed because their client did not read what it was sent."
    );
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections closed before or instead of a session, by reason."
    );
}

/// The `uri` label of an error: `wamp.error.*` URIs by name, all others `application`.
pub fn error_label(uri: &str) -> String {
    if uri.starts_with("wamp.error.") {
        uri.to_owned()
    } else {
        "application".to_owned()
    }
}

use std::collections::HashMap;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::wamp::name_of;

/// The series of one realm on one node, registered once.
#[derive(Debug)]
pub struct RealmMetrics {
    node: String,
    realm: String,
    messages_in: HashMap<u64, Counter>,
    messages_out: HashMap<u64, Counter>,
    /// Sessions joined.
    pub sessions: Gauge,
    /// Calls in flight.
    pub calls_in_flight: Gauge,
    /// Call latency.
    pub call_latency: Histogram,
    /// Slow-consumer disconnects.
    pub slow_consumers: Counter,
}

impl RealmMetrics {
    /// The series of `realm` on `node`.
    pub fn new(node: &str, realm: &str) -> RealmMetrics {
        let labels = |name: &'static str| {
            [
                ("node", node.to_owned()),
                ("realm", realm.to_owned()),
                ("type", name.to_owned()),
            ]
        };
        let by_type = |metric: &'static str| {
            (0..=70)
                .filter_map(|code| Some((code, name_of(code)?)))
                .map(|(code, name)| (code, counter!(metric, &labels(name))))
                .collect()
        };
        let base = [("node", node.to_owned()), ("realm", realm.to_owned())];
        RealmMetrics {
            node: node.to_owned(),
            realm: realm.to_owned(),
            messages_in: by_type(MESSAGES_IN),
            messages_out: by_type(MESSAGES_OUT),
            sessions: gauge!(SESSIONS, &base),
            calls_in_flight: gauge!(CALLS_IN_FLIGHT, &base),
            call_latency: histogram!(CALL_LATENCY, &base),
            slow_consumers: counter!(SLOW_CONSUMERS, &base),
        }
    }

    /// Counts a message received.
    pub fn message_in(&self, code: u64) {
        if let Some(c) = self.messages_in.get(&code) {
            c.increment(1);
        }
    }

    /// Counts a message sent.
    pub fn message_out(&self, code: u64) {
        if let Some(c) = self.messages_out.get(&code) {
            c.increment(1);
        }
    }

    /// Counts an ERROR sent.
    pub fn error(&self, uri: &str) {
        counter!(ERRORS, "node" => self.node.clone(), "realm" => self.realm.clone(), "uri" => error_label(uri))
            .increment(1);
    }

    /// The realm's name.
    pub fn realm(&self) -> &str {
        &self.realm
    }
}
