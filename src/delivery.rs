//! What crosses from one node to a handler on another: the [`Delivery`], the handler's
//! [`Verdict`] on it, and the [`NackReason`] a refusal carries back to the sender. The
//! embedding router implements [`Deliver`]; the forwarder calls it for every message that
//! arrives from another node.
//!
//! This module is the bottom of the forwarding layers: the wire format encodes its types, the
//! errors name its reasons, the forwarder calls its trait, and it knows none of them.

use std::fmt;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::peer_id::PeerId;
use crate::wamp::WampMessage;

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

/// Why a message was not delivered. Travels back to the sender in a nack, where it becomes
/// `ForwardError::Rejected` (or `Expired`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NackReason {
    /// Its time to live ran out before it could be delivered.
    Expired,
    /// The receiver's handler is overloaded.
    Overloaded,
    /// No such session on the receiving node.
    NoSuchSession,
    /// The receiving node is shutting down.
    ShuttingDown,
    /// The message type is not forwarded.
    NotForwardable,
    /// Any other refusal of the handler, in its words.
    Refused(String),
    /// The handler failed on it (a [`crate::Dispatcher`]'s handler panicked): not delivered.
    HandlerFailed,
}

impl fmt::Display for NackReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NackReason::Expired => f.write_str("expired"),
            NackReason::Overloaded => f.write_str("overloaded"),
            NackReason::NoSuchSession => f.write_str("no such session"),
            NackReason::ShuttingDown => f.write_str("shutting down"),
            NackReason::NotForwardable => f.write_str("not forwardable"),
            NackReason::Refused(reason) => f.write_str(reason),
            NackReason::HandlerFailed => f.write_str("handler failed"),
        }
    }
}

/// A handler's answer to a delivery.
#[derive(Debug)]
pub enum Verdict {
    /// Taken: the sender gets its ack.
    Accepted,
    /// Refused: the sender gets a nack with the reason; the message was not delivered.
    Refused(NackReason),
    /// The handler answers later through this channel (make one with [`Verdict::later`]). The
    /// connection goes on reading and handing over the next messages meanwhile; answers go
    /// back in the order the messages arrived, so an answer waits for those of the messages
    /// before it. A message whose answer does not come within its time to live gets none: the
    /// sender sees `Timeout`. A dropped sender is a refusal.
    Later(oneshot::Receiver<Result<(), NackReason>>),
}

impl Verdict {
    /// A verdict to be given later, and the sender that gives it.
    pub fn later() -> (Verdict, oneshot::Sender<Result<(), NackReason>>) {
        let (tx, rx) = oneshot::channel();
        (Verdict::Later(rx), tx)
    }
}

/// The embedding router's side of the forwarder: called for each message that arrives from
/// another node, in the order the messages arrived on their connection. It must not block:
/// decide at once (is the session there?) or hand the message on (to a queue, such as a
/// [`crate::Dispatcher`]) and answer with [`Verdict::Later`].
pub trait Deliver: Send + Sync + 'static {
    /// Takes one message.
    fn deliver(&self, delivery: Delivery) -> Verdict;

    /// Called once when the node stops, after its last delivery: finish the work already
    /// accepted (the node waits for it, within `stop_timeout_ms`; verdicts given meanwhile
    /// still reach their senders). Nothing to do by default.
    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// A handler that accepts everything and does nothing with it: for nodes that only send.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl Deliver for Discard {
    fn deliver(&self, _: Delivery) -> Verdict {
        Verdict::Accepted
    }
}

impl<D: Deliver + ?Sized> Deliver for std::sync::Arc<D> {
    fn deliver(&self, delivery: Delivery) -> Verdict {
        (**self).deliver(delivery)
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        (**self).drain()
    }
}
