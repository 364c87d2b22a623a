//! The address of a WAMP peer in the cluster: a realm, a node and, optionally, a session.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

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

crate::shared_str::shared_string!(Realm, "a realm URI");

impl Deref for Realm {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&String> for Realm {
    fn from(s: &String) -> Self {
        Realm(s.as_str().into())
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
