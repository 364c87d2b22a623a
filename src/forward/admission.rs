//! Who holds the inbound connection slots. A node serves at most
//! `limits.max_inbound_connections` inbound connections, of which at most
//! `limits.max_unproven_connections` may still be in their handshake. A new connection is not
//! refused while a less deserving one holds a slot:
//!
//! - finding the handshake budget spent, it closes the oldest connection still in its
//!   handshake (a member's handshake takes milliseconds; one that lasts is stalled or hostile);
//! - finding every slot taken, it closes, in this order, a connection that a newer one from the
//!   same node superseded, the oldest connection from a node id the view does not know (a
//!   stranger), then the oldest connection still in its handshake.
//!
//! Only when every slot serves the newest connection of a member is a new connection refused
//! (`overloaded`). So connections that stay silent, trickle bytes or say hello as strangers,
//! however many and from whatever address, cannot keep a member out: a member's connection is
//! closed to make room only if as many new connections as the handshake budget arrive during
//! its own handshake.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

use crate::NodeId;

/// Why a connection was closed to make room for a new one; its name labels
/// `wamp_cluster_inbound_evicted_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// The oldest connection still in its handshake.
    Unproven,
    /// A connection a newer one from the same node took over.
    Superseded,
    /// The oldest connection from a node id the view does not know.
    NonMember,
}

impl Eviction {
    /// The name metrics label it with.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Eviction::Unproven => "unproven",
            Eviction::Superseded => "superseded",
            Eviction::NonMember => "non_member",
        }
    }
}

/// The connections holding slots, by number (numbers grow in the order of accepts).
#[derive(Default)]
struct Slots {
    /// Still in their handshake.
    unproven: BTreeMap<u64, CancellationToken>,
    /// Past it, with the node their hello named.
    proven: BTreeMap<u64, (NodeId, CancellationToken)>,
}

impl Slots {
    fn len(&self) -> usize {
        self.unproven.len() + self.proven.len()
    }

    /// The connection past its handshake to close first for room: the oldest superseded one,
    /// else the oldest stranger's; never the newest connection of a member.
    fn evictable(&self, is_member: impl Fn(&NodeId) -> bool) -> Option<(u64, Eviction)> {
        // In ascending order: the last number seen for a node is its newest.
        let newest: HashMap<&NodeId, u64> = self
            .proven
            .iter()
            .map(|(number, (node, _))| (node, *number))
            .collect();
        let mut stranger = None;
        for (number, (node, _)) in &self.proven {
            if newest.get(node) != Some(number) {
                return Some((*number, Eviction::Superseded));
            }
            if stranger.is_none() && !is_member(node) {
                stranger = Some((*number, Eviction::NonMember));
            }
        }
        stranger
    }

    /// Closes and forgets the oldest connection still in its handshake.
    fn evict_oldest_unproven(&mut self) -> Option<Eviction> {
        let (_, stop) = self.unproven.pop_first()?;
        stop.cancel();
        Some(Eviction::Unproven)
    }
}

/// The inbound slots of one listener.
pub(crate) struct Admission {
    slots: Mutex<Slots>,
    max_connections: usize,
    max_unproven: usize,
}

/// A connection's hold on its slot, given up when dropped.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    number: u64,
    /// Cancelled when the connection is closed to make room, or the forwarder stops.
    pub stop: CancellationToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = self.admission.lock();
        slots.unproven.remove(&self.number);
        slots.proven.remove(&self.number);
    }
}

impl Admission {
    /// At most `max_connections` connections, of which at most `max_unproven` (or
    /// `max_connections`, if fewer) in their handshake.
    pub(crate) fn new(max_connections: usize, max_unproven: usize) -> Arc<Admission> {
        Arc::new(Admission {
            slots: Mutex::default(),
            max_connections,
            max_unproven: max_unproven.min(max_connections),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives accepted connection `number` a slot, in its handshake, closing others to make room
    /// (`is_member` tells the node ids the view knows); `None` when every slot serves the
    /// newest connection of a member. The slot's `stop` is a child of `shutdown`. Returns the
    /// connections closed, by why.
    pub(crate) fn admit(
        self: &Arc<Self>,
        number: u64,
        shutdown: &CancellationToken,
        is_member: impl Fn(&NodeId) -> bool,
    ) -> (Option<Slot>, Vec<Eviction>) {
        let mut evicted = Vec::new();
        let mut slots = self.lock();
        if slots.unproven.len() >= self.max_unproven {
            evicted.extend(slots.evict_oldest_unproven());
        }
        if slots.len() >= self.max_connections {
            let room = match slots.evictable(is_member) {
                Some((victim, why)) => {
                    if let Some((_, stop)) = slots.proven.remove(&victim) {
                        stop.cancel();
                    }
                    Some(why)
                }
                None => slots.evict_oldest_unproven(),
            };
            match room {
                Some(why) => evicted.push(why),
                None => return (None, evicted),
            }
        }
        let stop = shutdown.child_token();
        slots.unproven.insert(number, stop.clone());
        drop(slots);
        let slot = Slot {
            admission: self.clone(),
            number,
            stop,
        };
        (Some(slot), evicted)
    }

    /// Moves `slot` past its handshake, from `node`; `false` if it was closed to make room
    /// meanwhile.
    pub(crate) fn prove(&self, slot: &Slot, node: &NodeId) -> bool {
        let mut slots = self.lock();
        let Some(stop) = slots.unproven.remove(&slot.number) else {
            return false;
        };
        slots.proven.insert(slot.number, (node.clone(), stop));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admit(
        admission: &Arc<Admission>,
        number: u64,
        members: &[&str],
    ) -> (Option<Slot>, Vec<Eviction>) {
        let shutdown = CancellationToken::new();
        admission.admit(number, &shutdown, |node| members.contains(&node.as_str()))
    }

    #[test]
    fn a_connection_beyond_the_handshake_budget_closes_the_oldest_still_in_its_handshake() {
        let admission = Admission::new(10, 2);
        let (first, _) = admit(&admission, 1, &[]);
        let (second, _) = admit(&admission, 2, &[]);
        let (third, evicted) = admit(&admission, 3, &[]);
        assert_eq!(evicted, [Eviction::Unproven]);
        let (first, second, third) = (first.unwrap(), second.unwrap(), third.unwrap());
        assert!(first.stop.is_cancelled());
        assert!(!second.stop.is_cancelled() && !third.stop.is_cancelled());
        // One past its handshake leaves room in the budget.
        assert!(admission.prove(&second, &NodeId::from("a")));
        let (_fourth, evicted) = admit(&admission, 4, &[]);
        assert!(evicted.is_empty());
        // A closed connection can no longer be proved.
        assert!(!admission.prove(&first, &NodeId::from("b")));
    }

    #[test]
    fn a_full_node_closes_superseded_then_strangers_then_handshakes_and_never_a_members_newest() {
        let admission = Admission::new(4, 4);
        let members = ["m1", "m2"];
        let mut held = Vec::new();
        for (number, node) in [(1, "m1"), (2, "stranger"), (3, "m1"), (4, "m2")] {
            let (slot, evicted) = admit(&admission, number, &members);
            assert!(evicted.is_empty());
            let slot = slot.unwrap();
            assert!(admission.prove(&slot, &NodeId::from(node)));
            held.push(slot);
        }
        // m1's older connection first, then the stranger.
        let (fifth, evicted) = admit(&admission, 5, &members);
        assert_eq!(evicted, [Eviction::Superseded]);
        assert!(held[0].stop.is_cancelled());
        let (sixth, evicted) = admit(&admission, 6, &members);
        assert_eq!(evicted, [Eviction::NonMember]);
        assert!(held[1].stop.is_cancelled());
        // Then the oldest handshake (connection 5): 3 and 4 are the members' newest.
        let (seventh, evicted) = admit(&admission, 7, &members);
        assert_eq!(evicted, [Eviction::Unproven]);
        assert!(fifth.unwrap().stop.is_cancelled());
        assert!(!held[2].stop.is_cancelled() && !held[3].stop.is_cancelled());
        // Once 6 and 7 are m1's and m2's, 3 and 4 are superseded, the older first.
        assert!(admission.prove(sixth.as_ref().unwrap(), &NodeId::from("m1")));
        assert!(admission.prove(seventh.as_ref().unwrap(), &NodeId::from("m2")));
        let (_eighth, evicted) = admit(&admission, 8, &members);
        assert_eq!(evicted, [Eviction::Superseded]);
        assert!(held[2].stop.is_cancelled() && !held[3].stop.is_cancelled());
    }

    #[test]
    fn a_node_whose_every_slot_is_a_members_newest_connection_refuses() {
        let admission = Admission::new(2, 2);
        let mut held = Vec::new();
        for (number, node) in [(1, "m1"), (2, "m2")] {
            let slot = admit(&admission, number, &["m1", "m2"]).0.unwrap();
            assert!(admission.prove(&slot, &NodeId::from(node)));
            held.push(slot);
        }
        let (slot, evicted) = admit(&admission, 3, &["m1", "m2"]);
        assert!(slot.is_none() && evicted.is_empty());
        // A slot given up is free again.
        held.pop();
        assert!(admit(&admission, 4, &["m1", "m2"]).0.is_some());
    }
}
