//! The routing state of one realm on this node: its sessions, its dealer and its broker,
//! kept together under the realm's one lock.

use std::collections::HashMap;

use super::broker::Broker;
use super::dealer::Dealer;
use super::session::{SessionId, Sessions};
use crate::wamp::{Dict, Payload};

/// The most testaments one session may leave.
pub const MAX_TESTAMENTS_PER_SESSION: usize = 64;

/// An event a session asked the router to publish when it ends
/// (`wamp.session.add_testament`).
#[derive(Debug, Clone)]
pub struct Testament {
    /// The topic.
    pub topic: String,
    /// The publication's options (`publish_options`).
    pub options: Dict,
    /// Its arguments.
    pub payload: Payload,
}

/// The routing state of a realm.
#[derive(Debug)]
pub struct RealmState {
    /// The sessions joined here.
    pub sessions: Sessions,
    /// Registrations and calls.
    pub dealer: Dealer,
    /// Subscriptions and retained events.
    pub broker: Broker,
    /// The testaments of each session that left some.
    pub testaments: HashMap<SessionId, Vec<Testament>>,
}
