//! The live view: an immutable snapshot of the members, derived from gossip by pure functions.
//!
//! [`derive_view`] turns what chitchat knows (one entry per node id and generation) and this
//! node's reachability reports into a [`LiveView`]; [`diff_events`] compares two views and says
//! what happened between them. Neither touches a socket, so both are unit-tested here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use super::keys::{NodeKeys, Status};
use super::ring::Ring;
use crate::NodeId;

/// What gossip says about one generation of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipNode {
    /// The node's id.
    pub node_id: NodeId,
    /// Its generation (start time in nanoseconds since the Unix epoch).
    pub generation: u64,
    /// The gossip address it advertises.
    pub gossip_addr: SocketAddr,
    /// Whether chitchat's failure detector holds it alive.
    pub alive: bool,
    /// Its heartbeat, as far as this node heard: it grows while the process runs.
    pub heartbeat: u64,
    /// Its published keys.
    pub keys: NodeKeys,
}

/// This node's local opinion that a node cannot be reached (from a bad-node report).
#[derive(Debug, Clone, PartialEq)]
pub struct Unreachable {
    /// The generation the report was about; a newer generation is reachable again.
    pub generation: u64,
    /// Why, as the reporter said.
    pub reason: String,
}

/// One member of the cluster, in its highest known generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Node id.
    pub node_id: NodeId,
    /// Generation: the node's start time in nanoseconds. A restart is a new generation.
    pub generation: u64,
    /// The gossip address it advertises.
    pub gossip_addr: SocketAddr,
    /// The forward address it advertises, once published.
    pub forward_addr: Option<SocketAddr>,
    /// Its admin API address, once published.
    pub admin_addr: Option<SocketAddr>,
    /// Its status.
    pub status: Status,
    /// The wamp-cluster version it runs.
    pub version: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Gossip holds it alive and it has published a forward address.
    pub live: bool,
    /// This node has no report that it cannot reach it.
    pub reachable: bool,
    /// Why it is unreachable, when it is.
    pub unreachable_reason: Option<String>,
}

impl Member {
    /// Live and ready: on the ring.
    pub fn is_ring_member(&self) -> bool {
        self.live && self.status == Status::Ready
    }

    /// Live, ready and reachable: a broadcast target (when it is not this node).
    pub fn is_target(&self) -> bool {
        self.is_ring_member() && self.reachable
    }
}

/// An immutable snapshot of the members as this node sees them. Cheap to share (`Arc`), read
/// without a lock; a new one is published on every change.
#[derive(Debug, Clone)]
pub struct LiveView {
    self_id: NodeId,
    /// Sorted by node id.
    members: Vec<Member>,
    /// Sorted by node id.
    targets: Vec<NodeId>,
    ring: Arc<Ring>,
    epoch: u64,
}

impl LiveView {
    /// A view that knows only this node, before gossip has said anything.
    pub fn empty(self_id: NodeId) -> LiveView {
        LiveView {
            self_id,
            members: Vec::new(),
            targets: Vec::new(),
            ring: Arc::new(Ring::new([])),
            epoch: 0,
        }
    }

    /// This node's id.
    pub fn self_id(&self) -> &NodeId {
        &self.self_id
    }

    /// Every member gossip knows, self included, sorted by node id; dead ones with `live: false`.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with this id.
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members
            .binary_search_by(|m| m.node_id.as_str().cmp(node_id))
            .ok()
            .map(|i| &self.members[i])
    }

    /// This node's own entry.
    pub fn self_member(&self) -> Option<&Member> {
        self.member(self.self_id.as_str())
    }

    /// The ready, live, reachable members other than this node, sorted by node id.
    pub fn broadcast_targets(&self) -> &[NodeId] {
        &self.targets
    }

    /// Whether `node_id` is a broadcast target.
    pub fn is_target(&self, node_id: &str) -> bool {
        self.targets
            .binary_search_by(|n| n.as_str().cmp(node_id))
            .is_ok()
    }

    /// The consistent-hash ring over the live, ready members, self included.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Counts up by one with every published view.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// What happened to a member between two views.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MembershipEvent {
    /// A node became live: seen for the first time, or back after it was down with the same
    /// generation (a pause, a healed partition).
    Joined {
        /// The node.
        node: NodeId,
        /// Its generation.
        generation: u64,
    },
    /// A node came back with a newer generation; the old generation is gone for good.
    Restarted {
        /// The node.
        node: NodeId,
        /// The generation it replaced.
        old_generation: u64,
        /// Its new generation.
        generation: u64,
    },
    /// A node announced that it is leaving; it is no longer a broadcast target.
    Leaving {
        /// The node.
        node: NodeId,
        /// Its generation.
        generation: u64,
    },
    /// A node that announced its leave stopped gossiping.
    Left {
        /// The node.
        node: NodeId,
        /// Its generation.
        generation: u64,
    },
    /// A node stopped gossiping without announcing it: crashed, paused or cut off.
    Down {
        /// The node.
        node: NodeId,
        /// Its generation.
        generation: u64,
    },
    /// This node reported that it cannot reach the node.
    Unreachable {
        /// The node.
        node: NodeId,
        /// Its generation.
        generation: u64,
        /// The reporter's reason.
        reason: String,
    },
    /// A node reported unreachable answers again.
    Reachable {
        /// The node.
        node: NodeId,
        /// Its generation.
        generation: u64,
    },
}

impl MembershipEvent {
    /// The event's kind in snake case (`joined`, `down`, …), as metrics and logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            MembershipEvent::Joined { .. } => "joined",
            MembershipEvent::Restarted { .. } => "restarted",
            MembershipEvent::Leaving { .. } => "leaving",
            MembershipEvent::Left { .. } => "left",
            MembershipEvent::Down { .. } => "down",
            MembershipEvent::Unreachable { .. } => "unreachable",
            MembershipEvent::Reachable { .. } => "reachable",
        }
    }

    /// The node the event is about.
    pub fn node(&self) -> &NodeId {
        match self {
            MembershipEvent::Joined { node, .. }
            | MembershipEvent::Restarted { node, .. }
            | MembershipEvent::Leaving { node, .. }
            | MembershipEvent::Left { node, .. }
            | MembershipEvent::Down { node, .. }
            | MembershipEvent::Unreachable { node, .. }
            | MembershipEvent::Reachable { node, .. } => node,
        }
    }
}

/// Everything a view is derived from, kept between rebuilds.
#[derive(Debug, Default)]
pub struct ViewInput {
    /// Every generation of every node chitchat knows, self included.
    pub gossip: Vec<GossipNode>,
    /// Reachability reports, by node id.
    pub unreachable: HashMap<NodeId, Unreachable>,
    /// The generation shown per node id.
    pub shown: HashMap<NodeId, u64>,
    /// Per node id, the generations replaced: each one shown before another was chosen. They
    /// never come back, even once chitchat forgot the one that replaced them.
    pub retired: HashMap<NodeId, BTreeSet<u64>>,
    /// Per node id and generation, the first heartbeat this node heard. A generation whose
    /// heartbeat grew since is a running process; one that chitchat holds alive only because
    /// its last heartbeat is news here (an old process learned from a peer's memory) is not.
    /// Generations chitchat no longer knows are dropped here and from `retired`, so both stay
    /// as large as chitchat's own state.
    pub first_heartbeats: HashMap<NodeId, BTreeMap<u64, u64>>,
}

/// Builds the view from its input (and drops reachability reports and retired generations that
/// no longer apply). `previous` lends its ring when the ring's members did not change.
pub fn derive_view(self_id: &NodeId, input: &mut ViewInput, previous: &LiveView) -> LiveView {
    // What is remembered lives as long as chitchat knows the node id in that generation (the
    // shown one: in any generation).
    let mut by_id: BTreeMap<&NodeId, Vec<&GossipNode>> = BTreeMap::new();
    for node in &input.gossip {
        by_id.entry(&node.node_id).or_default().push(node);
    }
    input.shown.retain(|id, _| by_id.contains_key(id));
    let knows = |id: &NodeId, g: u64| {
        by_id
            .get(id)
            .is_some_and(|known| known.iter().any(|n| n.generation == g))
    };
    input.retired.retain(|id, retired| {
        retired.retain(|g| knows(id, *g));
        !retired.is_empty()
    });
    input.first_heartbeats.retain(|id, first| {
        first.retain(|g, _| knows(id, *g));
        !first.is_empty()
    });
    for node in &input.gossip {
        input
            .first_heartbeats
            .entry(node.node_id.clone())
            .or_default()
            .entry(node.generation)
            .or_insert(node.heartbeat);
    }
    // Per node id, the generation to show (see `choose`).
    let mut latest: BTreeMap<&NodeId, &GossipNode> = BTreeMap::new();
    for (id, generations) in &by_id {
        let shown = input.shown.get(*id).copied();
        let retired = input.retired.get(*id);
        let first = input.first_heartbeats.get(*id);
        let running = |g: &GossipNode| {
            first
                .and_then(|first| first.get(&g.generation))
                .is_some_and(|first| g.heartbeat > *first)
        };
        let is_retired = |g: u64| retired.is_some_and(|r| r.contains(&g));
        let Some(node) = choose(generations, shown, is_retired, running) else {
            continue;
        };
        latest.insert(id, node);
        if let Some(replaced) = shown.filter(|shown| *shown != node.generation) {
            input
                .retired
                .entry((*id).clone())
                .or_default()
                .insert(replaced);
        }
        input.shown.insert((*id).clone(), node.generation);
    }
    input.unreachable.retain(|id, report| {
        latest
            .get(id)
            .is_some_and(|node| node.generation == report.generation && id != self_id)
    });

    let members: Vec<Member> = latest
        .into_values()
        .map(|node| {
            let report = input.unreachable.get(&node.node_id);
            Member {
                node_id: node.node_id.clone(),
                generation: node.generation,
                gossip_addr: node.gossip_addr,
                forward_addr: node.keys.forward_addr,
                admin_addr: node.keys.admin_addr,
                status: node.keys.status,
                version: node.keys.version.clone(),
                labels: node.keys.labels.clone(),
                live: node.alive && node.keys.forward_addr.is_some(),
                reachable: report.is_none(),
                unreachable_reason: report.map(|r| r.reason.clone()),
            }
        })
        .collect();

    let targets = members
        .iter()
        .filter(|m| m.is_target() && m.node_id != *self_id)
        .map(|m| m.node_id.clone())
        .collect();
    let ring_nodes: Vec<NodeId> = members
        .iter()
        .filter(|m| m.is_ring_member())
        .map(|m| m.node_id.clone())
        .collect();
    let ring = if previous.ring.nodes() == ring_nodes.as_slice() {
        previous.ring.clone()
    } else {
        Arc::new(Ring::new(ring_nodes))
    };
    LiveView {
        self_id: self_id.clone(),
        members,
        targets,
        ring,
        epoch: previous.epoch + 1,
    }
}

/// Which generation of one node id to show, given the one `shown` so far, which are `retired`
/// (replaced) and which are `running` (their heartbeat grew while this node listened): the
/// highest live generation not retired that is running or higher than the shown one; else
/// the shown one while chitchat knows it; else (nothing shown yet) the highest live one, else
/// the highest. So a restart is seen whatever the clocks did: a generation that appears after
/// the shown one replaces it when it is higher, or once the shown one is down when it is lower
/// (the clock stepped back); a node that learns both at once shows the running one as soon as
/// its heartbeat grows, even when the old one, dead but news here, looks alive for a while
/// and is higher; a generation replaced never comes back, higher or lower. `None`: every
/// generation chitchat knows is retired.
fn choose<'a>(
    generations: &[&'a GossipNode],
    shown: Option<u64>,
    retired: impl Fn(u64) -> bool,
    running: impl Fn(&GossipNode) -> bool,
) -> Option<&'a GossipNode> {
    let candidates = || {
        generations
            .iter()
            .copied()
            .filter(|g| !retired(g.generation))
    };
    let newer = |g: &GossipNode| shown.is_none_or(|shown| g.generation > shown);
    candidates()
        .filter(|g| g.alive && (running(g) || newer(g)))
        .max_by_key(|g| g.generation)
        .or_else(|| shown.and_then(|shown| candidates().find(|g| g.generation == shown)))
        .or_else(|| {
            candidates()
                .filter(|g| g.alive)
                .max_by_key(|g| g.generation)
        })
        .or_else(|| candidates().max_by_key(|g| g.generation))
}

/// The events that lead from `old` to `new`, about nodes other than self, in node id order.
///
/// - `Joined`: the node became live and `ready` (a ring member): for the first time, after a
///   restart, or again after it was down with the same generation.
/// - `Restarted`: another generation replaced the old one (a newer one, or a lower one that
///   appeared after the old one died: the clock stepped back); `Joined` follows once it is
///   ready.
/// - `Leaving`: the live node published `status=leaving`.
/// - `Left` / `Down`: the node stopped being live, after announcing its leave or without a word.
/// - `Unreachable` / `Reachable`: this node's reachability reports (a new generation starts
///   reachable; a `Reachable` follows `Restarted` when the old generation was unreachable).
pub fn diff_events(old: &LiveView, new: &LiveView) -> Vec<MembershipEvent> {
    let mut events = Vec::new();
    for m in &new.members {
        if m.node_id == new.self_id {
            continue;
        }
        let node = || m.node_id.clone();
        let generation = m.generation;
        let leaving = |m: &Member| m.live && m.status == Status::Leaving;
        let previous = old.member(m.node_id.as_str());
        // The old state that counts: none when this is a new node or a new generation.
        // Another generation, newer or (after the clock stepped back) older: a restart.
        let same = match previous {
            Some(o) if o.generation != m.generation => {
                events.push(MembershipEvent::Restarted {
                    node: node(),
                    old_generation: o.generation,
                    generation,
                });
                if !o.reachable && m.reachable {
                    events.push(MembershipEvent::Reachable {
                        node: node(),
                        generation,
                    });
                }
                None
            }
            other => other,
        };
        if m.is_ring_member() && !same.is_some_and(Member::is_ring_member) {
            events.push(MembershipEvent::Joined {
                node: node(),
                generation,
            });
        }
        if leaving(m) && !same.is_some_and(leaving) {
            events.push(MembershipEvent::Leaving {
                node: node(),
                generation,
            });
        }
        let Some(o) = same else { continue };
        if o.live && !m.live {
            let left = o.status == Status::Leaving || m.status == Status::Leaving;
            events.push(if left {
                MembershipEvent::Left {
                    node: node(),
                    generation,
                }
            } else {
                MembershipEvent::Down {
                    node: node(),
                    generation,
                }
            });
        }
        match (o.reachable, m.reachable) {
            (true, false) => events.push(MembershipEvent::Unreachable {
                node: node(),
                generation,
                reason: m.unreachable_reason.clone().unwrap_or_default(),
            }),
            (false, true) => events.push(MembershipEvent::Reachable {
                node: node(),
                generation,
            }),
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heartbeat the harness fills in: the round for a live node, whose process runs, 0 for
    /// one that is down.
    const BEATING: u64 = u64::MAX;

    fn gossip(id: &str, generation: u64, alive: bool, status: Status) -> GossipNode {
        GossipNode {
            node_id: id.into(),
            generation,
            gossip_addr: "127.0.0.1:1".parse().unwrap(),
            alive,
            heartbeat: BEATING,
            keys: NodeKeys {
                forward_addr: Some("127.0.0.1:2".parse().unwrap()),
                status,
                ..NodeKeys::default()
            },
        }
    }

    /// A generation that chitchat holds alive but whose heartbeat does not grow: a dead
    /// process whose last heartbeat is news to this node.
    fn stale(mut node: GossipNode) -> GossipNode {
        node.heartbeat = 7;
        node
    }

    struct Harness {
        self_id: NodeId,
        input: ViewInput,
        view: LiveView,
        round: u64,
    }

    impl Harness {
        fn new() -> Self {
            let self_id = NodeId::from("me");
            Harness {
                view: LiveView::empty(self_id.clone()),
                self_id,
                input: ViewInput::default(),
                round: 0,
            }
        }

        /// Replaces the gossip input (a round later), rebuilds and returns the events.
        fn gossip(&mut self, mut nodes: Vec<GossipNode>) -> Vec<MembershipEvent> {
            self.round += 1;
            for node in &mut nodes {
                if node.heartbeat == BEATING {
                    node.heartbeat = if node.alive { self.round } else { 0 };
                }
            }
            self.input.gossip = nodes;
            self.rebuild()
        }

        fn rebuild(&mut self) -> Vec<MembershipEvent> {
            let new = derive_view(&self.self_id, &mut self.input, &self.view);
            let events = diff_events(&self.view, &new);
            self.view = new;
            events
        }

        fn kinds(events: &[MembershipEvent]) -> Vec<(&'static str, String)> {
            events
                .iter()
                .map(|e| (e.kind(), e.node().to_string()))
                .collect()
        }
    }

    fn me() -> GossipNode {
        gossip("me", 1, true, Status::Ready)
    }

    #[test]
    fn a_restart_replaces_the_old_generation_and_it_never_comes_back() {
        let mut h = Harness::new();
        h.gossip(vec![me(), gossip("b", 10, true, Status::Ready)]);
        let events = h.gossip(vec![
            me(),
            gossip("b", 10, true, Status::Ready),
            gossip("b", 20, true, Status::Ready),
        ]);
        assert_eq!(
            events,
            [
                MembershipEvent::Restarted {
                    node: "b".into(),
                    old_generation: 10,
                    generation: 20
                },
                MembershipEvent::Joined {
                    node: "b".into(),
                    generation: 20
                }
            ]
        );
        assert_eq!(h.view.member("b").unwrap().generation, 20);
        assert_eq!(h.view.members().len(), 2);

        // chitchat forgot generation 20 before 10: 10 must not come back.
        let events = h.gossip(vec![me(), gossip("b", 10, true, Status::Ready)]);
        assert!(events.is_empty(), "{events:?}");
        assert!(h.view.member("b").is_none());
        assert!(!h.view.is_target("b"));
    }

    /// The clock stepped back between two runs: generation 5 appears after 20. While 20 is
    /// alive it stays; once it is down, 5 replaces it (`Restarted`, then `Joined`), and 20
    /// does not come back, dead or alive.
    #[test]
    fn a_lower_generation_that_appears_later_replaces_the_shown_one_once_it_is_down() {
        let mut h = Harness::new();
        h.gossip(vec![me(), gossip("b", 20, true, Status::Ready)]);
        let events = h.gossip(vec![
            me(),
            gossip("b", 20, true, Status::Ready),
            gossip("b", 5, true, Status::Ready),
        ]);
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(h.view.member("b").unwrap().generation, 20);
        let events = h.gossip(vec![
            me(),
            gossip("b", 20, false, Status::Ready),
            gossip("b", 5, true, Status::Ready),
        ]);
        assert_eq!(
            Harness::kinds(&events),
            [("restarted", "b".into()), ("joined", "b".into())]
        );
        assert_eq!(h.view.member("b").unwrap().generation, 5);
        assert_eq!(h.view.ring().nodes(), ["b", "me"]);
        // 20 seems alive again (a paused old process): 5, chosen after it, stays.
        let events = h.gossip(vec![
            me(),
            gossip("b", 20, true, Status::Ready),
            gossip("b", 5, true, Status::Ready),
        ]);
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(h.view.member("b").unwrap().generation, 5);
    }

    /// A node that learns both generations at once, after a restart whose clock stepped back:
    /// the old, higher one, dead but with a last heartbeat that is news here, looks alive for
    /// a while. The lower one is shown as soon as its heartbeat grows, and the old one never
    /// comes back.
    #[test]
    fn a_node_that_learns_an_old_higher_generation_with_a_live_lower_one_shows_the_lower() {
        let mut h = Harness::new();
        h.gossip(vec![
            me(),
            stale(gossip("b", 20, true, Status::Ready)),
            gossip("b", 5, true, Status::Ready),
        ]);
        assert_eq!(h.view.member("b").unwrap().generation, 20);
        let events = h.gossip(vec![
            me(),
            stale(gossip("b", 20, true, Status::Ready)),
            gossip("b", 5, true, Status::Ready),
        ]);
        assert_eq!(
            Harness::kinds(&events),
            [("restarted", "b".into()), ("joined", "b".into())]
        );
        let b = h.view.member("b").unwrap();
        assert!(b.generation == 5 && b.live);
        for alive in [false, true] {
            let events = h.gossip(vec![
                me(),
                gossip("b", 20, alive, Status::Ready),
                gossip("b", 5, true, Status::Ready),
            ]);
            assert!(events.is_empty(), "{events:?}");
            assert_eq!(h.view.member("b").unwrap().generation, 5);
        }
    }

    /// A node that joins while an old, lower generation of a member still looks alive (its
    /// process paused) shows the new one, and keeps it when the old one's heartbeat is heard
    /// again, until the new one is down.
    #[test]
    fn a_node_that_learns_a_paused_lower_generation_with_the_new_one_shows_the_new() {
        let mut h = Harness::new();
        for _ in 0..2 {
            h.gossip(vec![
                me(),
                stale(gossip("b", 10, true, Status::Ready)),
                gossip("b", 20, true, Status::Ready),
            ]);
            assert_eq!(h.view.member("b").unwrap().generation, 20);
        }
        let events = h.gossip(vec![
            me(),
            gossip("b", 10, true, Status::Ready),
            gossip("b", 20, true, Status::Ready),
        ]);
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(h.view.member("b").unwrap().generation, 20);
    }

    #[test]
    fn leaving_and_unreachable_members_are_not_targets_but_stay_on_the_ring() {
        let mut h = Harness::new();
        h.gossip(vec![
            me(),
            gossip("a", 1, true, Status::Ready),
            gossip("b", 1, true, Status::Leaving),
            gossip("c", 1, true, Status::Ready),
            gossip("d", 1, true, Status::Joining),
            gossip("e", 1, false, Status::Ready),
        ]);
        assert_eq!(h.view.broadcast_targets(), ["a", "c"]);
        h.input.unreachable.insert(
            "c".into(),
            Unreachable {
                generation: 1,
                reason: "ack timeout".into(),
            },
        );
        let events = h.rebuild();
        assert_eq!(
            events,
            [MembershipEvent::Unreachable {
                node: "c".into(),
                generation: 1,
                reason: "ack timeout".into()
            }]
        );
        assert_eq!(h.view.broadcast_targets(), ["a"]);
        assert_eq!(h.view.ring().nodes(), ["a", "c", "me"]);
        let c = h.view.member("c").unwrap();
        assert!(c.live && !c.reachable);
        assert_eq!(c.unreachable_reason.as_deref(), Some("ack timeout"));
    }

    #[test]
    fn a_member_without_forward_addr_is_not_live() {
        let mut h = Harness::new();
        let mut b = gossip("b", 1, true, Status::Ready);
        b.keys.forward_addr = None;
        let events = h.gossip(vec![me(), b]);
        assert!(events.is_empty());
        assert!(!h.view.member("b").unwrap().live);
        assert!(h.view.broadcast_targets().is_empty());
        assert_eq!(h.view.ring().nodes(), ["me"]);
    }

    #[test]
    fn a_new_generation_clears_an_unreachable_report() {
        let mut h = Harness::new();
        h.gossip(vec![me(), gossip("b", 1, true, Status::Ready)]);
        h.input.unreachable.insert(
            "b".into(),
            Unreachable {
                generation: 1,
                reason: "connection lost".into(),
            },
        );
        h.rebuild();
        assert!(!h.view.is_target("b"));
        h.gossip(vec![
            me(),
            gossip("b", 1, false, Status::Ready),
            gossip("b", 2, true, Status::Ready),
        ]);
        assert!(h.view.is_target("b"));
        assert!(h.input.unreachable.is_empty());
    }

    #[test]
    fn a_graceful_leave_reads_leaving_then_left_and_a_crash_reads_down() {
        let mut h = Harness::new();
        h.gossip(vec![
            me(),
            gossip("a", 1, true, Status::Ready),
            gossip("b", 1, true, Status::Ready),
        ]);
        let events = h.gossip(vec![
            me(),
            gossip("a", 1, true, Status::Leaving),
            gossip("b", 1, true, Status::Ready),
        ]);
        assert_eq!(Harness::kinds(&events), [("leaving", "a".into())]);
        assert!(!h.view.is_target("a"));
        let events = h.gossip(vec![
            me(),
            gossip("a", 1, false, Status::Leaving),
            gossip("b", 1, false, Status::Ready),
        ]);
        assert_eq!(
            Harness::kinds(&events),
            [("left", "a".into()), ("down", "b".into())]
        );
        // A paused node that comes back is live again.
        let events = h.gossip(vec![
            me(),
            gossip("a", 1, false, Status::Leaving),
            gossip("b", 1, true, Status::Ready),
        ]);
        assert_eq!(Harness::kinds(&events), [("joined", "b".into())]);
    }

    #[test]
    fn a_join_is_reported_once_when_the_node_is_ready_and_never_about_self() {
        let mut h = Harness::new();
        let events = h.gossip(vec![me(), gossip("a", 1, true, Status::Joining)]);
        assert!(events.is_empty(), "{events:?}");
        assert!(!h.view.is_target("a"));
        let events = h.gossip(vec![me(), gossip("a", 1, true, Status::Ready)]);
        assert_eq!(Harness::kinds(&events), [("joined", "a".into())]);
        assert!(h.view.is_target("a"));
        assert!(!h.view.is_target("me"));
        let events = h.gossip(vec![
            me(),
            gossip("a", 1, true, Status::Ready),
            gossip("b", 1, true, Status::Ready),
        ]);
        assert_eq!(Harness::kinds(&events), [("joined", "b".into())]);
        assert_eq!(h.view.epoch(), 3);
    }

    #[test]
    fn a_restart_reads_restarted_then_joined_once_ready_and_clears_unreachable() {
        let mut h = Harness::new();
        h.gossip(vec![me(), gossip("b", 1, true, Status::Ready)]);
        h.input.unreachable.insert(
            "b".into(),
            Unreachable {
                generation: 1,
                reason: "connection lost".into(),
            },
        );
        h.rebuild();
        let events = h.gossip(vec![
            me(),
            gossip("b", 1, false, Status::Ready),
            gossip("b", 2, true, Status::Joining),
        ]);
        assert_eq!(
            Harness::kinds(&events),
            [("restarted", "b".into()), ("reachable", "b".into())]
        );
        let events = h.gossip(vec![
            me(),
            gossip("b", 1, false, Status::Ready),
            gossip("b", 2, true, Status::Ready),
        ]);
        assert_eq!(Harness::kinds(&events), [("joined", "b".into())]);
    }

    #[test]
    fn an_unchanged_input_derives_an_equal_view() {
        let mut h = Harness::new();
        h.gossip(vec![me(), gossip("a", 1, true, Status::Ready)]);
        let again = derive_view(&h.self_id, &mut h.input, &h.view);
        assert_eq!(again.members(), h.view.members());
    }

    #[test]
    fn the_ring_is_reused_while_its_members_do_not_change() {
        let mut h = Harness::new();
        h.gossip(vec![me(), gossip("a", 1, true, Status::Ready)]);
        let before = h.view.ring.clone();
        h.input.unreachable.insert(
            "a".into(),
            Unreachable {
                generation: 1,
                reason: "x".into(),
            },
        );
        h.rebuild();
        assert!(Arc::ptr_eq(&before, &h.view.ring));
    }
}
