//! The routing state of one realm on this node: its sessions, its dealer and its broker,
//! kept together under the realm's one lock.

use super::broker::Broker;
use super::dealer::Dealer;
use super::session::Sessions;

/// The routing state of a realm.
#[derive(Debug)]
pub struct RealmState {
    /// The sessions joined here.
    pub sessions: Sessions,
    /// Registrations and calls.
    pub dealer: Dealer,
    /// Subscriptions.
    pub broker: Broker,
}
