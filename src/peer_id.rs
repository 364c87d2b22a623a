//! The address of a WAMP peer in the cluster: a realm, a node and, optionally, a session.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wamp::Id;
use crate::NodeId;

/// A WAMP session id.
pub type SessionId = Id;

/// Where a forwarded message comes from or goes to, after Bondy's
/// `{RealmUri, Node, SessionId, Pid}`. A message for a node rather than a session (a broadcast)
/// has no session.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerId {
    /// The realm URI.
    pub realm: Realm,
    /// The node the session is connected to.
    pub node: NodeId,
    /// The session, if the message addresses one.
    pub session: Option<SessionId>,
}

impl PeerId {
    /// A peer id for a session on a node.
    pub fn session(realm: impl Into<Realm>, node: impl Into<NodeId>, session: SessionId) -> Self {
        PeerId {
            realm: realm.into(),
            node: node.into(),
            session: Some(session),
        }
    }

    /// A peer id for a node as a whole.
    pub fn node(realm: impl Into<Realm>, node: impl Into<NodeId>) -> Self {
        PeerId {
            realm: realm.into(),
            node: node.into(),
            session: None,
        }
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.session {
            Some(session) => write!(f, "{}@{}/{}", session, self.node, self.realm),
            None => write!(f, "{}/{}", self.node, self.realm),
        }
    }
}

/// A realm URI. Clones share one allocation, and so do the realms decoded on one thread: a
/// forwarded frame names its realm twice, and a cluster serves few realms. Compared, ordered
/// and hashed as the string; dereferences to `str`.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct Realm(Arc<str>);

impl Realm {
    /// The realm as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The realm of bytes read off the wire, through the thread's cache; `None` if not UTF-8.
    pub(crate) fn from_wire(bytes: &[u8]) -> Option<Realm> {
        crate::shared_str::from_wire(&RECENT, bytes).map(Realm)
    }
}

impl PartialEq for Realm {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl std::hash::Hash for Realm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Deref for Realm {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Realm {
    fn from(s: &str) -> Self {
        Realm(s.into())
    }
}

impl From<String> for Realm {
    fn from(s: String) -> Self {
        Realm(s.into())
    }
}

impl From<&String> for Realm {
    fn from(s: &String) -> Self {
        Realm(s.as_str().into())
    }
}

impl Borrow<str> for Realm {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Realm {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Realm {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<String> for Realm {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl From<Realm> for String {
    fn from(realm: Realm) -> String {
        realm.0.to_string()
    }
}

impl PartialEq<&str> for Realm {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Display for Realm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Realm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Realm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Realm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::shared_str::deserialize(deserializer, &RECENT, "a realm URI").map(Realm)
    }
}

thread_local! {
    /// Realms decoded lately on this thread.
    static RECENT: std::cell::RefCell<crate::shared_str::Recent> =
        const { std::cell::RefCell::new(crate::shared_str::Recent::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_decoded_again_share_their_realm_and_read_back_as_json() {
        let config = bincode::config::standard();
        let peer = PeerId::session("com.example", "node-1", 7);
        let bytes = bincode::serde::encode_to_vec(&peer, config).unwrap();
        let (first, _): (PeerId, _) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        let (again, _): (PeerId, _) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(first, peer);
        assert!(Arc::ptr_eq(&first.realm.0, &again.realm.0));
        let json = serde_json::to_string(&peer).unwrap();
        assert_eq!(
            json,
            r#"{"realm":"com.example","node":"node-1","session":7}"#
        );
        assert_eq!(serde_json::from_str::<PeerId>(&json).unwrap(), peer);
        assert_eq!(peer.realm, "com.example");
        assert_eq!(peer.realm.len(), 11);
    }
}
