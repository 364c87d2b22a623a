//! The name of a node: cheap to clone, compared and ordered as a string.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node id (`node_id` in the configuration). Clones share one allocation.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.into())
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        NodeId(s.into())
    }
}

impl From<Arc<str>> for NodeId {
    fn from(s: Arc<str>) -> Self {
        NodeId(s)
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeId {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for NodeId {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(NodeIdVisitor)
    }
}

/// Node ids decoded lately on this thread, reused rather than allocated again: a cluster has
/// few nodes, and every forwarded frame names two of them.
const RECENT_IDS: usize = 8;

thread_local! {
    static RECENT: std::cell::RefCell<([Option<NodeId>; RECENT_IDS], usize)> =
        const { std::cell::RefCell::new(([const { None }; RECENT_IDS], 0)) };
}

/// The node id `s`, shared with one decoded lately on this thread when there is one.
fn decoded(s: &str) -> NodeId {
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        let (ids, next) = &mut *recent;
        if let Some(id) = ids.iter().flatten().find(|id| id.as_str() == s) {
            return id.clone();
        }
        let id = NodeId::from(s);
        ids[*next] = Some(id.clone());
        *next = (*next + 1) % RECENT_IDS;
        id
    })
}

/// Builds the id from the decoder's bytes without an intermediate `String`.
struct NodeIdVisitor;

impl serde::de::Visitor<'_> for NodeIdVisitor {
    type Value = NodeId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a node id")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<NodeId, E> {
        Ok(decoded(s))
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(id: &NodeId) -> NodeId {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(id, config).unwrap();
        bincode::serde::decode_from_slice(&bytes, config).unwrap().0
    }

    #[test]
    fn a_node_id_decoded_again_shares_the_first_ones_string() {
        let first = decode(&NodeId::from("node-a"));
        let again = decode(&NodeId::from("node-a"));
        assert_eq!(first, again);
        assert!(Arc::ptr_eq(&first.0, &again.0));
        // More distinct ids than the cache holds still decode right.
        for i in 0..3 * RECENT_IDS {
            let id = NodeId::from(format!("node-{i}"));
            assert_eq!(decode(&id), id);
        }
        assert_eq!(decode(&NodeId::from("node-a")), first);
    }
}
