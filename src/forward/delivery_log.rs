//! A [`Deliver`] handler that accepts every message and counts, per sending node, what was
//! delivered, what came twice and what came out of order. The node program uses it; `/stats`
//! shows its counters.
//!
//! Order is judged by the message's request id, per sending node and session: senders that
//! number their messages upward (as the traffic of the node program does) are checked; a
//! request id equal to the last one is a duplicate, a lower one is out of order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::delivery::{Deliver, Delivery, Verdict};
use crate::NodeId;

/// Senders (node and session) whose last request id is remembered; past this the memory is
/// cleared and order checking starts again.
const MAX_TRACKED_SENDERS: usize = 65536;

/// What one sending node delivered to this node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeliveryCounters {
    /// Messages delivered.
    pub delivered: u64,
    /// Messages whose request id was the previous one again.
    pub duplicates: u64,
    /// Messages whose request id was lower than the previous one.
    pub out_of_order: u64,
}

#[derive(Default)]
struct Log {
    by_node: BTreeMap<NodeId, DeliveryCounters>,
    last_request: HashMap<(NodeId, Option<u64>), u64>,
}

/// Accepts and counts every delivery.
#[derive(Default)]
pub struct DeliveryLog {
    log: Mutex<Log>,
}

impl DeliveryLog {
    /// The counters per sending node.
    pub fn counters(&self) -> BTreeMap<NodeId, DeliveryCounters> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_node
            .clone()
    }
}

impl Deliver for DeliveryLog {
    fn deliver(&self, delivery: Delivery) -> Verdict {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let log = &mut *log;
        let counters = log.by_node.entry(delivery.from.node.clone()).or_default();
        counters.delivered += 1;
        if let Some(request) = delivery.message.request_id() {
            if log.last_request.len() >= MAX_TRACKED_SENDERS {
                log.last_request.clear();
            }
            let key = (delivery.from.node, delivery.from.session);
            match log.last_request.get(&key) {
                Some(&last) if request == last => counters.duplicates += 1,
                Some(&last) if request < last => counters.out_of_order += 1,
                _ => {
                    log.last_request.insert(key, request);
                }
            }
        }
        Verdict::Accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_id::PeerId;
    use crate::wamp::{Dict, WampMessage};

    fn delivery(node: &str, request: u64) -> Delivery {
        Delivery {
            from: PeerId::session("r", node, 1),
            to: PeerId::node("r", "me"),
            message: WampMessage::Interrupt {
                request,
                options: Dict::new(),
            },
        }
    }

    #[test]
    fn duplicates_and_reordering_are_counted_per_sender() {
        let log = DeliveryLog::default();
        for (node, request) in [("a", 1), ("a", 2), ("a", 2), ("a", 1), ("a", 3), ("b", 1)] {
            assert!(matches!(
                log.deliver(delivery(node, request)),
                Verdict::Accepted
            ));
        }
        let counters = log.counters();
        assert_eq!(
            counters[&NodeId::from("a")],
            DeliveryCounters {
                delivered: 5,
                duplicates: 1,
                out_of_order: 1
            }
        );
        assert_eq!(counters[&NodeId::from("b")].delivered, 1);
    }
}
