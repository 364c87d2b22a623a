//! The name of a node: cheap to clone, compared and ordered as a string.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A node id (`node_id` in the configuration). Clones share one allocation.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl std::hash::Hash for NodeId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the string: equal ids hash alike however they are shared.
        self.0.hash(state);
    }
}

impl PartialEq for NodeId {
    fn eq(&self, other: &Self) -> bool {
        // Ids decoded from the wire share the allocation of one decoded before, so the
        // pointers are often equal and the bytes need not be compared.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl NodeId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of bytes read off the wire, through the thread's cache; `None` if not UTF-8.
    pub(crate) fn from_wire(bytes: &[u8]) -> Option<NodeId> {
        crate::shared_str::from_wire(&RECENT, bytes).map(NodeId)
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
        crate::shared_str::deserialize(deserializer, &RECENT, "a node id").map(NodeId)
    }
}

thread_local! {
    /// Node ids decoded lately on this thread: every forwarded frame names two.
    static RECENT: std::cell::RefCell<crate::shared_str::Recent> =
        const { std::cell::RefCell::new(crate::shared_str::Recent::new()) };
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
        for i in 0..3 * crate::shared_str::RECENT {
            let id = NodeId::from(format!("node-{i}"));
            assert_eq!(decode(&id), id);
        }
        assert_eq!(decode(&NodeId::from("node-a")), first);
    }

    #[test]
    fn an_id_that_is_not_utf8_is_refused() {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(serde_bytes_of(&[b'n', 0xff]), config).unwrap();
        let decoded = bincode::serde::decode_from_slice::<NodeId, _>(&bytes, config);
        assert!(decoded.is_err(), "{decoded:?}");
        // The same bytes as a str are an id.
        let bytes = bincode::serde::encode_to_vec("n-1", config).unwrap();
        let (id, _): (NodeId, _) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(id, NodeId::from("n-1"));
    }

    /// Bytes serialized as serde bytes (length, then the bytes), as a str is on the wire.
    fn serde_bytes_of(bytes: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(bytes)
    }
}
