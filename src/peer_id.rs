//! The address of a WAMP peer in the cluster: a realm, a node and, optionally, a session.

use std::fmt;

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
    #[serde(deserialize_with = "crate::wamp::string")]
    pub realm: String,
    /// The node the session is connected to.
    pub node: NodeId,
    /// The session, if the message addresses one.
    pub session: Option<SessionId>,
}

impl PeerId {
    /// A peer id for a session on a node.
    pub fn session(realm: impl Into<String>, node: impl Into<NodeId>, session: SessionId) -> Self {
        PeerId {
            realm: realm.into(),
            node: node.into(),
            session: Some(session),
        }
    }

    /// A peer id for a node as a whole.
    pub fn node(realm: impl Into<String>, node: impl Into<NodeId>) -> Self {
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
