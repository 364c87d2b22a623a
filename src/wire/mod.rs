//! The node-to-node wire protocol, and the only place that knows its encoding.
//!
//! A frame is a 4-byte big-endian length followed by the bincode 2 encoding
//! (`config::standard()`, with a decode limit of [`FRAME_LIMIT`]) of a [`Frame`]. A connection
//! starts with the dialer's [`Hello`] and the listener's `Welcome` (the highest version both
//! speak) or `Refuse`; then the dialer sends `Forward` and `Ping` frames and the listener
//! answers `Ack`, `Nack` and `Pong`. With a cluster secret the listener answers the hello with
//! a `Challenge` (its nonce), the dialer proves it knows the secret with a `Proof` (its nonce
//! and a MAC), and the listener proves it too with `Verified` instead of `Welcome` (or refuses
//! with `BadSecret`). With TLS all of it runs inside the TLS session.
//!
//! Sizes: a frame longer than the configured `max_frame_bytes` is refused before it is written
//! (sender) and ends the connection (receiver); the decode limit, a compile-time constant, stops
//! a length forged inside a small frame from making the receiver allocate more than
//! [`FRAME_LIMIT`] bytes.
//!
//! - [`frame`]: the frames, the protocol versions and the negotiation of a hello.
//! - `codec`: frames on a connection (length prefix, decode limit), forwarded frames written
//!   into a scratch buffer, their time to live set in place.
//! - `reader`: frames read from a connection, the memory of long ones within a budget shared
//!   by the node's connections.
//! - `fast`: the hand-written encoding and decoding of forwarded frames, byte for byte as
//!   bincode's.

mod codec;
mod fast;
pub mod frame;
mod reader;

pub use codec::{encode_forward, ping, set_deadline, take_acks, FrameCodec};
pub use frame::EncodeError;
pub use frame::{
    check_clock, hello_bytes, negotiate, wall_clock_ms, Frame, Hello, RefuseReason, WireError,
    FRAME_LIMIT, MAGIC, MAX_VERSION, MIN_VERSION,
};
pub use reader::{FrameReader, ReadBudget};
