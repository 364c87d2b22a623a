//! The frames of a node-to-node connection, the versions of the protocol and what a listener
//! answers a hello.

use std::fmt;
use std::io;

use bincode::config::Configuration;
use serde::{Deserialize, Serialize};

use crate::delivery::{Delivery, NackReason};
use crate::NodeId;

/// The first bytes of every [`Hello`].
pub const MAGIC: [u8; 4] = *b"WAMC";

/// The oldest protocol version this build speaks. Version 2 carries the dialer's clock in the
/// hello and each forwarded message's deadline; no release spoke version 1.
pub const MIN_VERSION: u16 = 2;

/// The newest protocol version this build speaks.
pub const MAX_VERSION: u16 = 2;

/// The largest frame any configuration may allow, in bytes (64 MiB), and bincode's decode
/// limit: `forward.max_frame_bytes` is capped here.
pub const FRAME_LIMIT: usize = 64 * 1024 * 1024;

/// The read buffer of a connection: frames are decoded from reads of up to this many bytes.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Bytes of the length prefix.
pub(super) const LENGTH_BYTES: usize = 4;

/// The variant indexes of the frames with a hand-written path.
pub(super) const FORWARD_VARIANT: u8 = 3;
pub(super) const ACK_VARIANT: u8 = 4;
pub(super) const PING_VARIANT: u8 = 6;
pub(super) const PONG_VARIANT: u8 = 7;

pub(super) type WireConfig = Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_LIMIT>,
>;

pub(super) const fn wire_config() -> WireConfig {
    bincode::config::standard().with_limit::<FRAME_LIMIT>()
}

/// One frame on a node-to-node connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Dialer → listener, first frame.
    Hello(Hello),
    /// Listener → dialer: accepted, speaking `version`.
    Welcome {
        /// The highest version both sides speak.
        version: u16,
        /// The listener's generation: a dialer that knows a newer one of that node has reached
        /// an old process (paused, then resumed) and goes no further.
        generation: u64,
    },
    /// Listener → dialer: refused; the listener closes the connection.
    Refuse {
        /// Why.
        reason: RefuseReason,
    },
    /// Dialer → listener: a message to deliver. Boxed: it is far larger than the other frames
    /// (336 bytes against 72), and a decoded frame is moved through several layers of
    /// `Option`/`Poll`; an allocation costs less than those copies (measured).
    Forward(Box<Forward>),
    /// Listener → dialer: the handler accepted message `id`.
    Ack {
        /// The `Forward` frame's id.
        id: u64,
    },
    /// Listener → dialer: message `id` was not delivered.
    Nack {
        /// The `Forward` frame's id.
        id: u64,
        /// Why.
        reason: NackReason,
    },
    /// Dialer → listener: are you there?
    Ping {
        /// Echoed in the `Pong`.
        id: u64,
    },
    /// Listener → dialer: the answer to `Ping { id }`.
    Pong {
        /// The ping's id.
        id: u64,
    },
    /// Listener → dialer, instead of `Welcome` when the listener has a cluster secret: prove
    /// you know it.
    Challenge {
        /// The listener's fresh nonce.
        nonce: [u8; 32],
    },
    /// Dialer → listener, the answer to `Challenge`.
    Proof {
        /// The dialer's fresh nonce.
        nonce: [u8; 32],
        /// HMAC-SHA256 of the hello and both nonces, with the handshake key of the dialer's
        /// first secret (see the `security` module).
        mac: [u8; 32],
    },
    /// Listener → dialer: the proof checked; speaking `version`.
    Verified {
        /// The highest version both sides speak.
        version: u16,
        /// The listener's generation, as in `Welcome`.
        generation: u64,
        /// HMAC-SHA256 of the hello, both nonces, the version and the generation, with the
        /// secret the dialer's proof was made with.
        mac: [u8; 32],
    },
}

impl Frame {
    /// The frame's name (`Hello`, `Forward`, …), for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Refuse { .. } => "Refuse",
            Frame::Forward(_) => "Forward",
            Frame::Ack { .. } => "Ack",
            Frame::Nack { .. } => "Nack",
            Frame::Ping { .. } => "Ping",
            Frame::Pong { .. } => "Pong",
            Frame::Challenge { .. } => "Challenge",
            Frame::Proof { .. } => "Proof",
            Frame::Verified { .. } => "Verified",
        }
    }
}

/// The dialer's introduction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// Oldest protocol version the dialer speaks.
    pub min_version: u16,
    /// Newest protocol version the dialer speaks.
    pub max_version: u16,
    /// The dialer's cluster id.
    pub cluster_id: String,
    /// The dialer's node id.
    pub node_id: NodeId,
    /// The dialer's generation.
    pub generation: u64,
    /// The node the dialer means to reach (from its view of the cluster).
    pub to_node: NodeId,
    /// The dialer's wall clock as it says hello, in milliseconds since the Unix epoch: the
    /// listener refuses a dialer whose clock is further than `forward.max_clock_skew_ms` from
    /// its own, since it reads forwarded messages' deadlines by its own clock.
    pub wall_clock_ms: u64,
}

/// Why a listener refused a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The first frame was not a `Hello` with the magic bytes.
    BadHello,
    /// No protocol version in common; the listener speaks `min..=max`.
    NoCommonVersion {
        /// Oldest version the listener speaks.
        min: u16,
        /// Newest version the listener speaks.
        max: u16,
    },
    /// The dialer belongs to another cluster.
    WrongCluster {
        /// The listener's cluster id.
        expected: String,
    },
    /// The dialer meant another node (its view is stale, or the address was reused).
    WrongNode {
        /// The listener's node id.
        actual: NodeId,
    },
    /// The listener takes no more connections.
    Overloaded,
    /// The listener is shutting down.
    ShuttingDown,
    /// The dialer did not prove it knows the cluster secret.
    BadSecret,
    /// The dialer's TLS certificate does not name the node its hello gives.
    BadCertificate,
    /// The dialer is an older generation of its node than the one the listener knows: an old
    /// process, paused, then resumed.
    StaleGeneration {
        /// The generation the listener knows.
        current: u64,
    },
    /// The two clocks are further apart than the listener's `forward.max_clock_skew_ms`.
    ClockSkew {
        /// The listener's wall clock as it read the hello, in ms since the Unix epoch.
        listener_ms: u64,
        /// The dialer's, as its hello gave it.
        dialer_ms: u64,
    },
}

impl RefuseReason {
    /// The reason's name in snake case, as metrics label it.
    pub fn name(&self) -> &'static str {
        match self {
            RefuseReason::BadHello => "bad_hello",
            RefuseReason::NoCommonVersion { .. } => "no_common_version",
            RefuseReason::WrongCluster { .. } => "wrong_cluster",
            RefuseReason::WrongNode { .. } => "wrong_node",
            RefuseReason::Overloaded => "overloaded",
            RefuseReason::ShuttingDown => "shutting_down",
            RefuseReason::BadSecret => "bad_secret",
            RefuseReason::BadCertificate => "bad_certificate",
            RefuseReason::StaleGeneration { .. } => "stale_generation",
            RefuseReason::ClockSkew { .. } => "clock_skew",
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::BadHello => f.write_str("bad hello"),
            RefuseReason::NoCommonVersion { min, max } => {
                write!(
                    f,
                    "no common protocol version (listener speaks {min}..={max})"
                )
            }
            RefuseReason::WrongCluster { expected } => {
                write!(f, "wrong cluster (listener is in `{expected}`)")
            }
            RefuseReason::WrongNode { actual } => write!(f, "wrong node (listener is `{actual}`)"),
            RefuseReason::Overloaded => f.write_str("overloaded"),
            RefuseReason::ShuttingDown => f.write_str("shutting down"),
            RefuseReason::BadSecret => f.write_str("no proof of the cluster secret"),
            RefuseReason::BadCertificate => {
                f.write_str("the certificate does not name the node of the hello")
            }
            RefuseReason::StaleGeneration { current } => write!(
                f,
                "an older generation of its node than the one known here ({current})"
            ),
            RefuseReason::ClockSkew {
                listener_ms,
                dialer_ms,
            } => write!(
                f,
                "the clocks are too far apart: the listener's reads {listener_ms} ms since the \
                 Unix epoch, the dialer's {dialer_ms}"
            ),
        }
    }
}

/// A message to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    /// When the sender stops waiting for the ack, by its wall clock, in milliseconds since
    /// the Unix epoch; the receiver nacks `Expired` rather than deliver once its own clock has
    /// passed it, however long the frame waited in buffers. Encoded first and with a fixed
    /// width, so that the writer can set it in an encoded frame (`set_deadline`).
    #[serde(with = "fixed_u64")]
    pub deadline_ms: u64,
    /// Unique per connection direction; echoed in the `Ack` or `Nack`.
    pub id: u64,
    /// The sending peer, the receiving peer and the message, encoded one after the other as
    /// if they were fields of this frame; decoded straight into what the handler gets.
    pub delivery: Delivery,
}

/// A `u64` encoded as 8 big-endian bytes whatever the integer encoding.
mod fixed_u64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        value.to_be_bytes().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        <[u8; 8]>::deserialize(deserializer).map(u64::from_be_bytes)
    }
}

/// What the listener answers a [`Hello`]: the version to speak, or why not. A pure function.
pub fn negotiate(hello: &Hello, cluster_id: &str, node_id: &NodeId) -> Result<u16, RefuseReason> {
    // A node id that could not be configured is refused as configured ones are: it would
    // become a label, a map key and a log field.
    if hello.magic != MAGIC || crate::node_id::check(hello.node_id.as_str()).is_err() {
        return Err(RefuseReason::BadHello);
    }
    if hello.cluster_id != cluster_id {
        return Err(RefuseReason::WrongCluster {
            expected: cluster_id.to_owned(),
        });
    }
    if hello.to_node != *node_id {
        return Err(RefuseReason::WrongNode {
            actual: node_id.clone(),
        });
    }
    let version = hello.max_version.min(MAX_VERSION);
    if version < hello.min_version.max(MIN_VERSION) {
        return Err(RefuseReason::NoCommonVersion {
            min: MIN_VERSION,
            max: MAX_VERSION,
        });
    }
    Ok(version)
}

/// Whether the dialer's clock, as `hello` gives it, is within `max_skew_ms` of the listener's
/// (`now_ms`, both in milliseconds since the Unix epoch). A pure function.
pub fn check_clock(hello: &Hello, now_ms: u64, max_skew_ms: u64) -> Result<(), RefuseReason> {
    if hello.wall_clock_ms.abs_diff(now_ms) <= max_skew_ms {
        return Ok(());
    }
    Err(RefuseReason::ClockSkew {
        listener_ms: now_ms,
        dialer_ms: hello.wall_clock_ms,
    })
}

/// The wall clock in milliseconds since the Unix epoch (0 for a clock before it).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The bytes of `hello` that the proofs of the handshake cover: its encoding.
pub fn hello_bytes(hello: &Hello) -> Vec<u8> {
    // Encoding a struct of strings and integers into a vector cannot fail.
    bincode::serde::encode_to_vec(hello, wire_config()).unwrap_or_default()
}

/// Why a message could not be encoded for another node. Nothing was sent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// The frame is longer than the limit.
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is nested deeper than [`crate::wamp::MAX_DEPTH`] levels, which no node decodes.
    #[error("a value is nested deeper than {} levels", crate::wamp::MAX_DEPTH)]
    TooDeep,
}

/// A frame that could not be read or written. The connection cannot go on after a read error.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// A frame longer than the limit (received: the length prefix said so; sent: refused
    /// before anything was written).
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    TooLarge {
        /// The frame's length, when known.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a frame of this protocol.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn hello() -> Hello {
        Hello {
            magic: MAGIC,
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            cluster_id: "c".into(),
            node_id: "a".into(),
            generation: 7,
            to_node: "b".into(),
            wall_clock_ms: 1_000_000,
        }
    }

    #[test]
    fn a_dialer_whose_clock_is_too_far_from_ours_is_refused_naming_both_clocks() {
        assert_eq!(check_clock(&hello(), 1_000_500, 500), Ok(()));
        assert_eq!(check_clock(&hello(), 999_500, 500), Ok(()));
        let refused = check_clock(&hello(), 1_000_501, 500).unwrap_err();
        assert_eq!(
            refused,
            RefuseReason::ClockSkew {
                listener_ms: 1_000_501,
                dialer_ms: 1_000_000
            }
        );
        let said = refused.to_string();
        assert!(
            said.contains("1000501") && said.contains("1000000"),
            "{said}"
        );
    }

    #[test]
    fn negotiation_picks_the_highest_common_version_and_names_refusals() {
        let me = NodeId::from("b");
        assert_eq!(negotiate(&hello(), "c", &me), Ok(MAX_VERSION));
        let newer = Hello {
            min_version: MAX_VERSION,
            max_version: MAX_VERSION + 5,
            ..hello()
        };
        assert_eq!(negotiate(&newer, "c", &me), Ok(MAX_VERSION));
        let too_new = Hello {
            min_version: MAX_VERSION + 1,
            max_version: MAX_VERSION + 2,
            ..hello()
        };
        assert!(matches!(
            negotiate(&too_new, "c", &me),
            Err(RefuseReason::NoCommonVersion { .. })
        ));
        assert!(matches!(
            negotiate(&hello(), "other", &me),
            Err(RefuseReason::WrongCluster { .. })
        ));
        assert!(matches!(
            negotiate(&hello(), "c", &NodeId::from("z")),
            Err(RefuseReason::WrongNode { .. })
        ));
        let bad = Hello {
            magic: *b"HTTP",
            ..hello()
        };
        assert_eq!(negotiate(&bad, "c", &me), Err(RefuseReason::BadHello));
    }
}
