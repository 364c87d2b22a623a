//! Forwarding WAMP messages to other nodes over TCP, with acknowledgements.
//!
//! - [`pending`]: the table of pending acks.

pub mod pending;
