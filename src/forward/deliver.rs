//! What the receiving node does with a forwarded message: the [`Deliver`] trait a router
//! implements.

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::peer_id::PeerId;
use crate::wamp::WampMessage;
use crate::wire::NackReason;

/// A message that arrived from another node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The sending peer.
    pub from: PeerId,
    /// The receiving peer (on this node).
    pub to: PeerId,
    /// The message.
    pub message: WampMessage,
}

/// A handler's answer to a delivery.
#[derive(Debug)]
pub enum Verdict {
    /// Taken: the sender gets its ack.
    Accepted,
    /// Refused: the sender gets a nack with the reason; the message was not delivered.
    Refused(NackReason),
    /// The handler answers later through this channel. The connection waits for it before it
    /// hands over the next message (arrival order is kept), at most until the message's time to
    /// live runs out; then no answer is sent and the sender sees `Timeout`.
    Later(oneshot::Receiver<Result<(), NackReason>>),
}

/// The embedding router's side of the forwarder: called for each inbound message, in the order
/// the messages arrived on a connection. It must not block: hand the message to a queue (such as
/// a `Dispatcher`) and answer, or answer [`Verdict::Later`].
pub trait Deliver: Send + Sync + 'static {
    /// Takes one message.
    fn deliver(&self, delivery: Delivery) -> Verdict;
}

/// A handler that accepts everything and does nothing with it: for nodes that only send, and
/// for tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl Deliver for Discard {
    fn deliver(&self, _: Delivery) -> Verdict {
        Verdict::Accepted
    }
}
