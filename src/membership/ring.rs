//! Consistent hashing over the members that gossip shows live and ready.
//!
//! Built on the `hashring` crate, which hashes with SipHash under fixed keys, so every process
//! that sees the same members computes the same ring, whatever its Rust version or platform.
//! The crate has no virtual nodes of its own: each node is added [`VNODES_PER_NODE`] times as
//! `(node, i)`, and only stable byte strings are hashed (never `Hash` of a `str` or a slice,
//! whose encoding std does not promise to keep). `owners(key, n)` walks the ring and skips
//! virtual nodes of nodes already chosen, so it returns `n` distinct nodes.
//!
//! During a network partition each side computes the ring of the members it sees: ownership is
//! per partition.

use std::hash::{BuildHasher, Hash, Hasher};

use hashring::{DefaultHashBuilder, HashRing};

use crate::NodeId;

/// Virtual nodes per member. Every node of a cluster must use the same number, so it is a
/// constant rather than a setting. 128 keeps the load of 3 to 200 nodes within a few percent of
/// even while a lookup stays a binary search over a few thousand entries.
pub const VNODES_PER_NODE: u32 = 128;

/// One virtual node: its position on the ring is the hash of the node id's bytes, a separator
/// that no UTF-8 string contains, and the index.
#[derive(Debug, Clone)]
struct VNode {
    node: NodeId,
    index: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.node.as_str().as_bytes());
        state.write(&[0xff]);
        state.write(&self.index.to_be_bytes());
    }
}

/// A key to look up: hashed as its raw bytes.
struct Key<'a>(&'a [u8]);

impl Hash for Key<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// The ring of one live view. Immutable; a new view builds a new ring when its members change.
#[derive(Debug, Clone)]
pub struct Ring {
    ring: HashRing<VNode>,
    /// The same virtual nodes in clockwise order, as (position, index into `nodes`), for
    /// `owners` to walk without copying the ring.
    positions: Vec<(u64, u32)>,
    nodes: Vec<NodeId>,
}

impl Ring {
    /// A ring over these nodes (the order does not matter; duplicates are ignored).
    pub fn new(nodes: impl IntoIterator<Item = NodeId>) -> Ring {
        let mut nodes: Vec<NodeId> = nodes.into_iter().collect();
        nodes.sort();
        nodes.dedup();
        // hashring places each virtual node at its hash under its default builder; so do the
        // positions, so that both agree.
        let mut vnodes = Vec::with_capacity(nodes.len() * VNODES_PER_NODE as usize);
        let mut positions = Vec::with_capacity(vnodes.capacity());
        for (i, node) in (0u32..).zip(&nodes) {
            for index in 0..VNODES_PER_NODE {
                let vnode = VNode {
                    node: node.clone(),
                    index,
                };
                positions.push((DefaultHashBuilder.hash_one(&vnode), i));
                vnodes.push(vnode);
            }
        }
        positions.sort_unstable();
        let mut ring = HashRing::new();
        ring.batch_add(vnodes);
        Ring {
            ring,
            positions,
            nodes,
        }
    }

    /// The nodes on the ring, sorted.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The node that owns `key`, or `None` when the ring is empty. A binary search.
    pub fn owner(&self, key: impl AsRef<[u8]>) -> Option<&NodeId> {
        self.ring.get(&Key(key.as_ref())).map(|vnode| &vnode.node)
    }

    /// The first `n` distinct nodes clockwise from `key`: the owner, then its replicas. Fewer
    /// when the ring has fewer nodes. A binary search, then a walk that skips the virtual nodes
    /// of nodes already chosen.
    pub fn owners(&self, key: impl AsRef<[u8]>, n: usize) -> Vec<NodeId> {
        let n = n.min(self.nodes.len());
        let mut owners: Vec<NodeId> = Vec::with_capacity(n);
        if n == 0 {
            return owners;
        }
        let position = DefaultHashBuilder.hash_one(Key(key.as_ref()));
        let start = self.positions.partition_point(|&(p, _)| p < position);
        let (wrapped, clockwise) = self.positions.split_at(start);
        for &(_, index) in clockwise.iter().chain(wrapped) {
            let node = &self.nodes[index as usize];
            if !owners.contains(node) {
                owners.push(node.clone());
                if owners.len() == n {
                    break;
                }
            }
        }
        owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(names: &[&str]) -> Ring {
        Ring::new(names.iter().map(|n| NodeId::from(*n)))
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..10_000).map(|i| format!("com.example.procedure.{i}"))
    }

    #[test]
    fn two_rings_over_the_same_members_agree_on_every_key() {
        let a = ring(&["n1", "n2", "n3", "n4"]);
        let b = ring(&["n4", "n3", "n2", "n1", "n2"]);
        for key in keys() {
            assert_eq!(a.owner(&key), b.owner(&key));
            assert_eq!(a.owners(&key, 3), b.owners(&key, 3));
        }
    }

    #[test]
    fn ring_positions_do_not_change_between_builds_or_releases() {
        // Pinned answers: a change of hashing would silently move keys between versions that
        // run side by side during a rolling upgrade.
        let r = ring(&["node-1", "node-2", "node-3"]);
        let owners: Vec<_> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|k| r.owner(k).unwrap().to_string())
            .collect();
        assert_eq!(owners, PINNED_OWNERS);
    }

    const PINNED_OWNERS: [&str; 6] = ["node-1", "node-1", "node-3", "node-3", "node-3", "node-3"];

    #[test]
    fn owners_are_distinct_and_start_with_the_owner() {
        let r = ring(&["n1", "n2", "n3", "n4", "n5"]);
        for key in keys() {
            let owners = r.owners(&key, 3);
            assert_eq!(owners.len(), 3);
            assert_eq!(Some(&owners[0]), r.owner(&key));
            let mut sorted = owners.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "{owners:?}");
        }
        assert_eq!(r.owners("k", 9).len(), 5);
        assert!(ring(&[]).owners("k", 2).is_empty());
        assert!(ring(&[]).owner("k").is_none());
    }

    #[test]
    fn a_join_moves_only_keys_to_the_new_node_and_about_one_in_n() {
        let names: Vec<String> = (1..=10).map(|i| format!("node-{i}")).collect();
        let before = Ring::new(names.iter().map(|n| NodeId::from(n.as_str())));
        let after = Ring::new(
            names
                .iter()
                .map(|n| NodeId::from(n.as_str()))
                .chain([NodeId::from("node-11")]),
        );
        let mut moved = 0;
        for key in keys() {
            let (old, new) = (before.owner(&key).unwrap(), after.owner(&key).unwrap());
            if old != new {
                assert_eq!(new.as_str(), "node-11", "a key moved between old nodes");
                moved += 1;
            }
        }
        // The ideal is 1/11 of the keys (909 of 10 000); allow the spread of 128 vnodes.
        assert!((500..1500).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn a_leave_moves_only_the_keys_of_the_leaving_node() {
        let before = ring(&["a", "b", "c", "d", "e"]);
        let after = ring(&["a", "b", "d", "e"]);
        for key in keys() {
            let old = before.owner(&key).unwrap();
            if old.as_str() != "c" {
                assert_eq!(after.owner(&key), Some(old));
            }
        }
    }

    #[test]
    fn load_is_spread_evenly_enough() {
        let r = ring(&["n1", "n2", "n3", "n4", "n5"]);
        let mut counts = std::collections::HashMap::new();
        for key in keys() {
            *counts.entry(r.owner(&key).unwrap().clone()).or_insert(0) += 1;
        }
        for (node, count) in counts {
            assert!(
                (1200..2800).contains(&count),
                "{node} owns {count} of 10 000"
            );
        }
    }
}
