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

use std::fmt;
use std::io;

use bincode::config::Configuration;
use bytes::{Buf, BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder};

use crate::delivery::{Delivery, NackReason};
use crate::peer_id::PeerId;
use crate::wamp::WampMessage;
use crate::NodeId;

/// The first bytes of every [`Hello`].
pub const MAGIC: [u8; 4] = *b"WAMC";

/// The oldest protocol version this build speaks.
pub const MIN_VERSION: u16 = 1;

/// The newest protocol version this build speaks.
pub const MAX_VERSION: u16 = 1;

/// The largest frame any configuration may allow, in bytes (64 MiB), and bincode's decode
/// limit: `forward.max_frame_bytes` is capped here.
pub const FRAME_LIMIT: usize = 64 * 1024 * 1024;

/// The read buffer of a connection: frames are decoded from reads of up to this many bytes.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Bytes of the length prefix.
const LENGTH_BYTES: usize = 4;

type WireConfig = Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<FRAME_LIMIT>,
>;

const fn wire_config() -> WireConfig {
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
        /// first secret (see [`crate::security`]).
        mac: [u8; 32],
    },
    /// Listener → dialer: the proof checked; speaking `version`.
    Verified {
        /// The highest version both sides speak.
        version: u16,
        /// HMAC-SHA256 of the hello, both nonces and the version, with the secret the dialer's
        /// proof was made with.
        mac: [u8; 32],
    },
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
        }
    }
}

/// A message to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forward {
    /// Milliseconds the sender still waits for the ack when it writes the frame; the receiver
    /// nacks `Expired` rather than deliver once they have passed. Encoded first and with a
    /// fixed width, so that the writer can set it in an encoded frame ([`set_ttl`]).
    #[serde(with = "fixed_u32")]
    pub ttl_ms: u32,
    /// Unique per connection direction; echoed in the `Ack` or `Nack`.
    pub id: u64,
    /// The sending peer, the receiving peer and the message, encoded one after the other as
    /// if they were fields of this frame; decoded straight into what the handler gets.
    pub delivery: Delivery,
}

/// A `Forward` frame's fields by reference, encoded exactly as [`Forward`] is: the sender
/// encodes without moving or copying the message into a frame.
#[derive(Serialize)]
struct ForwardRef<'a> {
    #[serde(with = "fixed_u32")]
    ttl_ms: u32,
    id: u64,
    from: &'a PeerId,
    to: &'a PeerId,
    message: &'a WampMessage,
}

/// Appends to a vector: bincode's writer without `std::io::Write`'s per-call overhead.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// A scratch buffer that grew past this for a large frame is given back after it.
const SCRATCH_KEEP_BYTES: usize = 256 * 1024;

thread_local! {
    /// Where frames are encoded before they are copied into a link's send queue.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes a whole `Forward` frame (length prefix included, as [`FrameCodec`] writes it) into
/// a buffer of the thread's and hands it to `use_frame`, which copies it where it must go (a
/// link's send queue); its time to live is set later with [`set_ttl`]. Refused (`TooLarge`)
/// when longer than `max_frame_bytes`.
pub fn encode_forward<R>(
    id: u64,
    from: &PeerId,
    to: &PeerId,
    message: &WampMessage,
    max_frame_bytes: usize,
    use_frame: impl FnOnce(&[u8]) -> R,
) -> Result<R, WireError> {
    let max = max_frame_bytes.min(FRAME_LIMIT);
    let forward = ForwardRef {
        ttl_ms: 0,
        id,
        from,
        to,
        message,
    };
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        buf.extend_from_slice(&[0; LENGTH_BYTES]);
        buf.push(FORWARD_VARIANT);
        let written = if by_hand::forward(&mut buf, &forward) {
            Ok(())
        } else {
            buf.truncate(LENGTH_BYTES + 1);
            bincode::serde::encode_into_writer(&forward, VecWriter(&mut buf), wire_config())
        };
        let len = buf.len() - LENGTH_BYTES;
        let result = match written {
            Err(err) => Err(WireError::Malformed(err.to_string())),
            Ok(_) if len > max => Err(WireError::TooLarge { len, max }),
            Ok(_) => {
                let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
                buf[..LENGTH_BYTES].copy_from_slice(&prefix);
                Ok(use_frame(&buf))
            }
        };
        if buf.capacity() > SCRATCH_KEEP_BYTES {
            *buf = Vec::new();
        }
        result
    })
}

/// The `Forward` frame of a forwardable message written by hand, byte for byte as bincode's
/// serde path writes it (`config::standard()`: varints, little endian, enum variants as their
/// index, sequences and maps after their length), without serde's calls per field. Tests hold
/// it to bincode's output for every message type and kind of value.
mod by_hand {
    use super::ForwardRef;
    use crate::peer_id::PeerId;
    use crate::wamp::{Dict, Payload, Value, WampMessage};

    /// bincode's varint: one byte below 251, else a marker and the value in 2, 4 or 8 bytes.
    #[inline(always)]
    fn varint(buf: &mut Vec<u8>, n: u64) {
        if n < 251 {
            buf.push(n as u8);
        } else if n <= u64::from(u16::MAX) {
            buf.push(251);
            buf.extend_from_slice(&(n as u16).to_le_bytes());
        } else if n <= u64::from(u32::MAX) {
            buf.push(252);
            buf.extend_from_slice(&(n as u32).to_le_bytes());
        } else {
            buf.push(253);
            buf.extend_from_slice(&n.to_le_bytes());
        }
    }

    #[inline]
    fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
        varint(buf, b.len() as u64);
        buf.extend_from_slice(b);
    }

    fn value(buf: &mut Vec<u8>, v: &Value) {
        match v {
            Value::Null => buf.push(0),
            Value::Bool(b) => buf.extend_from_slice(&[1, u8::from(*b)]),
            Value::Integer(i) => {
                buf.push(2);
                varint(buf, ((*i << 1) ^ (*i >> 63)) as u64);
            }
            Value::Unsigned(u) => {
                buf.push(3);
                varint(buf, *u);
            }
            Value::Float(f) => {
                buf.push(4);
                buf.extend_from_slice(&f.to_le_bytes());
            }
            Value::String(s) => {
                buf.push(5);
                bytes(buf, s.as_bytes());
            }
            Value::Bytes(b) => {
                buf.push(6);
                bytes(buf, b);
            }
            Value::List(items) => {
                buf.push(7);
                list(buf, items);
            }
            Value::Dict(d) => {
                buf.push(8);
                dict(buf, d);
            }
        }
    }

    fn list(buf: &mut Vec<u8>, items: &[Value]) {
        varint(buf, items.len() as u64);
        items.iter().for_each(|v| value(buf, v));
    }

    fn dict(buf: &mut Vec<u8>, d: &Dict) {
        varint(buf, d.len() as u64);
        for (k, v) in d {
            bytes(buf, k.as_bytes());
            value(buf, v);
        }
    }

    fn payload(buf: &mut Vec<u8>, p: &Payload) {
        match p {
            Payload::Empty => buf.push(0),
            Payload::Args(args) => {
                buf.push(1);
                list(buf, args);
            }
            Payload::ArgsKw(args, kw) => {
                buf.push(2);
                list(buf, args);
                dict(buf, kw);
            }
            Payload::Transparent(v) => {
                buf.push(3);
                value(buf, v);
            }
        }
    }

    fn peer(buf: &mut Vec<u8>, p: &PeerId) {
        bytes(buf, p.realm.as_bytes());
        bytes(buf, p.node.as_str().as_bytes());
        match p.session {
            None => buf.push(0),
            Some(s) => {
                buf.push(1);
                varint(buf, s);
            }
        }
    }

    /// Appends the frame's fields after its variant index; `false` (with `buf` to be cut back
    /// by the caller) for a message type not written by hand.
    pub(super) fn forward(buf: &mut Vec<u8>, f: &ForwardRef<'_>) -> bool {
        buf.extend_from_slice(&f.ttl_ms.to_be_bytes());
        varint(buf, f.id);
        peer(buf, f.from);
        peer(buf, f.to);
        // The variant indexes follow the declaration order of `WampMessage`.
        match f.message {
            WampMessage::Error {
                request_type,
                request,
                details,
                error,
                payload: p,
            } => {
                buf.push(6);
                varint(buf, *request_type);
                varint(buf, *request);
                dict(buf, details);
                bytes(buf, error.as_bytes());
                payload(buf, p);
            }
            WampMessage::Publish {
                request,
                options,
                topic,
                payload: p,
            } => {
                buf.push(7);
                varint(buf, *request);
                dict(buf, options);
                bytes(buf, topic.as_bytes());
                payload(buf, p);
            }
            WampMessage::Result {
                request,
                details,
                payload: p,
            } => {
                buf.push(16);
                varint(buf, *request);
                dict(buf, details);
                payload(buf, p);
            }
            WampMessage::Invocation {
                request,
                registration,
                details,
                payload: p,
            } => {
                buf.push(21);
                varint(buf, *request);
                varint(buf, *registration);
                dict(buf, details);
                payload(buf, p);
            }
            WampMessage::Interrupt { request, options } => {
                buf.push(22);
                varint(buf, *request);
                dict(buf, options);
            }
            _ => return false,
        }
        true
    }
}

/// The reverse of [`by_hand`]: decodes a `Forward` frame of a forwardable message without
/// serde's calls per field. It accepts only what it is sure of (canonical varints, valid UTF-8,
/// nesting up to [`by_hand_de::DEPTH`], no repeated keys, no bytes left over) and says `None`
/// otherwise, so that the serde path decodes the frame or gives the error: for any input, the
/// frame it gives is the one the serde path gives. Tests hold it to that.
mod by_hand_de {
    use super::Forward;
    use crate::delivery::Delivery;
    use crate::peer_id::{PeerId, Realm};
    use crate::shared_str::Recent;
    use crate::wamp::{Dict, Payload, Value, WampMessage};
    use crate::NodeId;

    /// The node ids and realms one connection decoded lately: each frame repeats the same few,
    /// and a match here costs less than a look in the thread's caches.
    #[derive(Debug, Default)]
    pub(crate) struct Names {
        nodes: Recent,
        realms: Recent,
    }

    /// Nesting of values decoded here; deeper ones go the serde path.
    pub(super) const DEPTH: u32 = 16;

    /// Items of a list or dict allocated before they are read, as serde's own cautious bound.
    const PREALLOCATE: usize = 1024;

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn byte(&mut self) -> Option<u8> {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(b)
        }

        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if n > self.0.len() {
                return None;
            }
            let (taken, rest) = self.0.split_at(n);
            self.0 = rest;
            Some(taken)
        }

        fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
            self.take(N)?.try_into().ok()
        }

        /// A varint in its shortest form, as the encoder writes it.
        fn varint(&mut self) -> Option<u64> {
            match self.byte()? {
                b @ 0..=250 => Some(b.into()),
                251 => Some(u16::from_le_bytes(self.array()?))
                    .filter(|&n| n >= 251)
                    .map(u64::from),
                252 => Some(u32::from_le_bytes(self.array()?))
                    .filter(|&n| n > u32::from(u16::MAX))
                    .map(u64::from),
                253 => Some(u64::from_le_bytes(self.array()?)).filter(|&n| n > u64::from(u32::MAX)),
                _ => None,
            }
        }

        fn len(&mut self) -> Option<usize> {
            usize::try_from(self.varint()?).ok()
        }

        fn bytes(&mut self) -> Option<&'a [u8]> {
            let n = self.len()?;
            self.take(n)
        }

        fn str(&mut self) -> Option<&'a str> {
            std::str::from_utf8(self.bytes()?).ok()
        }

        fn string(&mut self) -> Option<String> {
            self.str().map(String::from)
        }

        fn value(&mut self, depth: u32) -> Option<Value> {
            Some(match self.byte()? {
                0 => Value::Null,
                1 => match self.byte()? {
                    b @ (0 | 1) => Value::Bool(b == 1),
                    _ => return None,
                },
                2 => {
                    let n = self.varint()?;
                    Value::Integer(((n >> 1) as i64) ^ -((n & 1) as i64))
                }
                3 => Value::Unsigned(self.varint()?),
                4 => Value::Float(f64::from_le_bytes(self.array()?)),
                5 => Value::String(self.string()?),
                6 => Value::Bytes(self.bytes()?.to_vec()),
                7 if depth < DEPTH => Value::List(self.list(depth + 1)?),
                8 if depth < DEPTH => Value::Dict(self.dict(depth + 1)?),
                _ => return None,
            })
        }

        fn list(&mut self, depth: u32) -> Option<Vec<Value>> {
            let n = self.len()?;
            // A length is the peer's word: room for at most what is left (every value takes a
            // byte) and at most `PREALLOCATE` values; more grows as they arrive.
            let mut items = Vec::with_capacity(n.min(self.0.len()).min(PREALLOCATE));
            for _ in 0..n {
                items.push(self.value(depth)?);
            }
            Some(items)
        }

        fn dict(&mut self, depth: u32) -> Option<Dict> {
            let n = self.len()?;
            let mut dict = Dict::with_capacity(n.min(self.0.len() / 2).min(PREALLOCATE));
            for _ in 0..n {
                let key = self.string()?;
                let value = self.value(depth)?;
                if dict.insert(key, value).is_some() {
                    return None;
                }
            }
            Some(dict)
        }

        fn payload(&mut self) -> Option<Payload> {
            Some(match self.byte()? {
                0 => Payload::Empty,
                1 => Payload::Args(self.list(1)?),
                2 => Payload::ArgsKw(self.list(1)?, self.dict(1)?),
                3 => Payload::Transparent(self.value(0)?),
                _ => return None,
            })
        }

        fn peer(&mut self, names: &mut Names) -> Option<PeerId> {
            let realm = Realm::from(names.realms.get(self.bytes()?).ok()?);
            let node = NodeId::from(names.nodes.get(self.bytes()?).ok()?);
            let session = match self.byte()? {
                0 => None,
                1 => Some(self.varint()?),
                _ => return None,
            };
            Some(PeerId {
                realm,
                node,
                session,
            })
        }

        /// Decodes the message into `slot`, where it stays: a message is large, and each move
        /// of one is a copy.
        fn message(&mut self, slot: &mut WampMessage) -> Option<()> {
            // The variant indexes follow the declaration order of `WampMessage`.
            *slot = match self.byte()? {
                6 => WampMessage::Error {
                    request_type: self.varint()?,
                    request: self.varint()?,
                    details: self.dict(1)?,
                    error: self.string()?,
                    payload: self.payload()?,
                },
                7 => WampMessage::Publish {
                    request: self.varint()?,
                    options: self.dict(1)?,
                    topic: self.string()?,
                    payload: self.payload()?,
                },
                16 => WampMessage::Result {
                    request: self.varint()?,
                    details: self.dict(1)?,
                    payload: self.payload()?,
                },
                21 => WampMessage::Invocation {
                    request: self.varint()?,
                    registration: self.varint()?,
                    details: self.dict(1)?,
                    payload: self.payload()?,
                },
                22 => WampMessage::Interrupt {
                    request: self.varint()?,
                    options: self.dict(1)?,
                },
                _ => return None,
            };
            Some(())
        }
    }

    /// The varint that is all of `bytes`, in its shortest form.
    pub(super) fn exact_varint(bytes: &[u8]) -> Option<u64> {
        let mut r = Reader(bytes);
        r.varint().filter(|_| r.0.is_empty())
    }

    /// The frame whose fields (after its variant index) are `body`, if decoded here, with the
    /// names in it shared with those in `names`. Boxed first and the message decoded into the
    /// box: a `Forward` is large, and each move of it is a copy.
    pub(crate) fn forward(body: &[u8], names: &mut Names) -> Option<Box<Forward>> {
        let mut r = Reader(body);
        let ttl_ms = u32::from_be_bytes(r.array()?);
        let id = r.varint()?;
        let from = r.peer(names)?;
        let to = r.peer(names)?;
        let mut forward = Box::new(Forward {
            ttl_ms,
            id,
            delivery: Delivery {
                from,
                to,
                // Holds nothing to free: replaced just below.
                message: WampMessage::Unsubscribed { request: 0 },
            },
        });
        r.message(&mut forward.delivery.message)?;
        if !r.0.is_empty() {
            return None;
        }
        Some(forward)
    }
}

/// Where `ttl_ms` sits in an encoded `Forward` frame: after the length prefix and the one-byte
/// variant index.
const TTL_OFFSET: usize = LENGTH_BYTES + 1;

/// Sets the time to live of an encoded `Forward` frame (as [`FrameCodec`] wrote it) just before
/// it is written, so that time spent in the send queue counts. Returns `false`, changing
/// nothing, when `frame` is not an encoded `Forward` frame.
pub fn set_ttl(frame: &mut [u8], ttl_ms: u32) -> bool {
    if frame.len() < TTL_OFFSET + 4 || frame[LENGTH_BYTES] != FORWARD_VARIANT {
        return false;
    }
    frame[TTL_OFFSET..TTL_OFFSET + 4].copy_from_slice(&ttl_ms.to_be_bytes());
    true
}

/// The variant index of `Frame::Forward` in the encoding.
const FORWARD_VARIANT: u8 = 3;

/// A `u32` encoded as 4 big-endian bytes whatever the integer encoding.
mod fixed_u32 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &u32, serializer: S) -> Result<S::Ok, S::Error> {
        value.to_be_bytes().serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        <[u8; 4]>::deserialize(deserializer).map(u32::from_be_bytes)
    }
}

/// What the listener answers a [`Hello`]: the version to speak, or why not. A pure function.
pub fn negotiate(hello: &Hello, cluster_id: &str, node_id: &NodeId) -> Result<u16, RefuseReason> {
    if hello.magic != MAGIC {
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

/// The bytes of `hello` that the proofs of the handshake cover: its encoding.
pub fn hello_bytes(hello: &Hello) -> Vec<u8> {
    // Encoding a struct of strings and integers into a vector cannot fail.
    bincode::serde::encode_to_vec(hello, wire_config()).unwrap_or_default()
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

/// Encodes and decodes length-prefixed frames for `tokio_util::codec::Framed`.
///
/// Frames are decoded in place from the read buffer. The answers (`Ack`, `Pong`), one per
/// forwarded message, are encoded and decoded by hand, byte for byte as bincode does (a test
/// holds them to it), without the general path's cost.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame_bytes: usize,
    names: by_hand_de::Names,
}

/// The variant indexes of the frames with a hand-written path.
const ACK_VARIANT: u8 = 4;
const PONG_VARIANT: u8 = 7;

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame_bytes` (capped at [`FRAME_LIMIT`]).
    pub fn new(max_frame_bytes: usize) -> FrameCodec {
        FrameCodec {
            max_frame_bytes: max_frame_bytes.min(FRAME_LIMIT),
            names: Default::default(),
        }
    }
}

/// Takes the `Ack` frames at the start of `buf` (as [`FrameCodec`] writes them), calling
/// `each` with their ids in order, and stops at the first frame that is not one, is not
/// complete yet, or is in a form it is not sure of: the codec then decodes it, or refuses it,
/// as usual. For the sender's reader, which gets an ack per message: without the codec's
/// work per frame.
pub fn take_acks(buf: &mut BytesMut, mut each: impl FnMut(u64)) {
    let mut at = 0;
    while let Some(prefix) = buf.get(at..at + LENGTH_BYTES) {
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        let start = at + LENGTH_BYTES;
        let Some([ACK_VARIANT, id @ ..]) = buf.get(start..start + len) else {
            break;
        };
        let Some(id) = by_hand_de::exact_varint(id) else {
            break;
        };
        each(id);
        at = start + len;
    }
    buf.advance(at);
}

/// Decodes one frame's bytes (without the length prefix).
fn decode_body(body: &[u8], names: &mut by_hand_de::Names) -> Result<Frame, WireError> {
    if let [variant @ (ACK_VARIANT | PONG_VARIANT), rest @ ..] = body {
        if let Ok((id, read)) = bincode::decode_from_slice::<u64, _>(rest, wire_config()) {
            if read == rest.len() {
                return Ok(if *variant == ACK_VARIANT {
                    Frame::Ack { id }
                } else {
                    Frame::Pong { id }
                });
            }
        }
    }
    if let [FORWARD_VARIANT, fields @ ..] = body {
        if let Some(forward) = by_hand_de::forward(fields, names) {
            return Ok(Frame::Forward(forward));
        }
    }
    let (frame, read) = bincode::serde::decode_from_slice(body, wire_config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if read != body.len() {
        return Err(WireError::Malformed(format!(
            "{} bytes left over after the frame",
            body.len() - read
        )));
    }
    Ok(frame)
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let Some(prefix) = src.get(..LENGTH_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if len > self.max_frame_bytes {
            return Err(WireError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        let total = LENGTH_BYTES + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let frame = decode_body(&src[LENGTH_BYTES..total], &mut self.names)?;
        src.advance(total);
        Ok(Some(frame))
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;

    /// Appends the frame to `dst`; on error `dst` is left as it was.
    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        if let Frame::Ack { id } | Frame::Pong { id } = frame {
            let variant = if matches!(frame, Frame::Ack { .. }) {
                ACK_VARIANT
            } else {
                PONG_VARIANT
            };
            let mut body = [0u8; 10];
            body[0] = variant;
            if let Ok(n) = bincode::encode_into_slice(id, &mut body[1..], wire_config()) {
                dst.put_u32(1 + n as u32);
                dst.extend_from_slice(&body[..1 + n]);
                return Ok(());
            }
        }
        let start = dst.len();
        dst.put_u32(0);
        let written =
            bincode::serde::encode_into_std_write(frame, &mut dst.writer(), wire_config());
        let len = dst.len() - start - LENGTH_BYTES;
        let result = match written {
            Err(err) => Err(WireError::Malformed(err.to_string())),
            Ok(_) if len > self.max_frame_bytes => Err(WireError::TooLarge {
                len,
                max: self.max_frame_bytes,
            }),
            Ok(_) => {
                let prefix = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
                dst[start..start + LENGTH_BYTES].copy_from_slice(&prefix);
                return Ok(());
            }
        };
        dst.truncate(start);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wamp::samples;

    fn hello() -> Hello {
        Hello {
            magic: MAGIC,
            min_version: MIN_VERSION,
            max_version: MAX_VERSION,
            cluster_id: "c".into(),
            node_id: "a".into(),
            generation: 7,
            to_node: "b".into(),
        }
    }

    fn every_frame() -> Vec<Frame> {
        let mut frames = vec![
            Frame::Hello(hello()),
            Frame::Welcome { version: 1 },
            Frame::Refuse {
                reason: RefuseReason::WrongCluster {
                    expected: "c".into(),
                },
            },
            Frame::Ack { id: u64::MAX },
            Frame::Nack {
                id: 3,
                reason: NackReason::Refused("busy".into()),
            },
            Frame::Ping { id: 1 },
            Frame::Pong { id: 1 },
            Frame::Refuse {
                reason: RefuseReason::BadSecret,
            },
            Frame::Challenge { nonce: [7; 32] },
            Frame::Proof {
                nonce: [8; 32],
                mac: [9; 32],
            },
            Frame::Verified {
                version: 1,
                mac: [10; 32],
            },
        ];
        for (id, message) in (0..).zip(samples().into_iter().filter(|m| m.is_forwardable())) {
            frames.push(Frame::Forward(Box::new(Forward {
                id,
                ttl_ms: 5000,
                delivery: Delivery {
                    from: PeerId::session("realm1", "a", 1),
                    to: PeerId::node("realm1", "b"),
                    message,
                },
            })));
        }
        frames
    }

    fn encoded(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        FrameCodec::new(FRAME_LIMIT)
            .encode(frame, &mut buf)
            .unwrap();
        buf
    }

    #[test]
    fn every_frame_and_every_forwardable_message_round_trips() {
        let frames = every_frame();
        assert_eq!(frames.len(), 11 + 5);
        let mut codec = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        for frame in &frames {
            codec.encode(frame, &mut buf).unwrap();
        }
        for frame in &frames {
            assert_eq!(codec.decode(&mut buf).unwrap().as_ref(), Some(frame));
        }
        assert!(buf.is_empty());
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn a_truncated_frame_waits_for_the_rest_and_never_panics() {
        for frame in every_frame() {
            let whole = encoded(&frame);
            for cut in 0..whole.len() {
                let mut codec = FrameCodec::new(FRAME_LIMIT);
                let mut buf = BytesMut::from(&whole[..cut]);
                assert!(codec.decode(&mut buf).unwrap().is_none(), "cut at {cut}");
                buf.extend_from_slice(&whole[cut..]);
                assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame.clone()));
            }
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        // xorshift: deterministic, no dependency.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut errors = 0;
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut buf = BytesMut::new();
            buf.put_u32(len as u32);
            for _ in 0..len {
                buf.put_u8(next() as u8);
            }
            if FrameCodec::new(1024).decode(&mut buf).is_err() {
                errors += 1;
            }
        }
        assert!(errors > 15_000, "most random frames are refused: {errors}");
        // Cut a valid frame's body short inside its length prefix: malformed, not a panic.
        let mut whole = encoded(&every_frame()[8]);
        let len = whole.len() - LENGTH_BYTES - 3;
        whole.truncate(LENGTH_BYTES + len);
        whole[..LENGTH_BYTES].copy_from_slice(&(len as u32).to_be_bytes());
        assert!(matches!(
            FrameCodec::new(FRAME_LIMIT).decode(&mut whole),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn frames_over_the_limit_are_refused_by_sender_and_receiver() {
        let big = Frame::Nack {
            id: 1,
            reason: NackReason::Refused("x".repeat(2000)),
        };
        let mut codec = FrameCodec::new(1000);
        let mut buf = BytesMut::from(&b"kept"[..]);
        let err = codec.encode(&big, &mut buf).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { max: 1000, .. }),
            "{err}"
        );
        assert_eq!(&buf[..], b"kept", "nothing written");

        let mut incoming = encoded(&big);
        let err = codec.decode(&mut incoming).unwrap_err();
        assert!(
            matches!(err, WireError::TooLarge { len, max: 1000 } if len > 2000),
            "{err}"
        );
        assert_eq!(FrameCodec::new(usize::MAX).max_frame_bytes, FRAME_LIMIT);
    }

    #[test]
    fn a_length_forged_inside_a_small_frame_is_refused_without_allocating_it() {
        let frame = Frame::Nack {
            id: 1,
            reason: NackReason::Refused("xy".into()),
        };
        let whole = encoded(&frame);
        // The string's length is the byte 2 followed by "xy"; claim 2^40 bytes instead
        // (varint 253 = a u64 follows).
        let at = whole.windows(3).position(|w| w == [2, b'x', b'y']).unwrap();
        let mut forged = whole[LENGTH_BYTES..at].to_vec();
        forged.push(253);
        forged.extend_from_slice(&(1u64 << 40).to_le_bytes());
        forged.extend_from_slice(b"xy");
        let mut buf = BytesMut::new();
        buf.put_u32(forged.len() as u32);
        buf.extend_from_slice(&forged);
        let err = FrameCodec::new(FRAME_LIMIT).decode(&mut buf).unwrap_err();
        // bincode checks the claimed length against the decode limit before it allocates.
        assert!(
            matches!(&err, WireError::Malformed(m) if m.contains("LimitExceeded")),
            "{err}"
        );
    }

    #[test]
    fn the_time_to_live_of_an_encoded_forward_frame_can_be_set_in_place() {
        let mut codec = FrameCodec::new(FRAME_LIMIT);
        for frame in every_frame() {
            let mut bytes = encoded(&frame);
            let is_forward = matches!(frame, Frame::Forward(_));
            assert_eq!(set_ttl(&mut bytes, 1234), is_forward);
            let decoded = codec.decode(&mut bytes).unwrap().unwrap();
            match (decoded, frame) {
                (Frame::Forward(d), Frame::Forward(f)) => {
                    assert_eq!(d.ttl_ms, 1234);
                    assert_eq!(d.delivery, f.delivery);
                }
                (d, f) => assert_eq!(d, f),
            }
        }
    }

    #[test]
    fn answers_are_encoded_and_decoded_by_hand_exactly_as_bincode_does() {
        let mut codec = FrameCodec::new(FRAME_LIMIT);
        for id in [
            0,
            1,
            250,
            251,
            65_535,
            65_536,
            u64::from(u32::MAX),
            1 << 40,
            u64::MAX,
        ] {
            for frame in [Frame::Ack { id }, Frame::Pong { id }] {
                let mut by_hand = BytesMut::new();
                codec.encode(&frame, &mut by_hand).unwrap();
                let body = bincode::serde::encode_to_vec(&frame, wire_config()).unwrap();
                assert_eq!(&by_hand[LENGTH_BYTES..], &body[..], "{frame:?}");
                assert_eq!(decode_body(&body, &mut Default::default()).unwrap(), frame);
                assert_eq!(codec.decode(&mut by_hand).unwrap(), Some(frame));
            }
        }
        // A trailing byte after an answer is refused, as the general path refuses it.
        let mut body = bincode::serde::encode_to_vec(Frame::Ack { id: 9 }, wire_config()).unwrap();
        body.push(0);
        assert!(decode_body(&body, &mut Default::default()).is_err());
    }

    #[test]
    fn encode_forward_writes_the_bytes_the_codec_writes_for_the_same_frame() {
        for frame in every_frame() {
            let Frame::Forward(f) = &frame else { continue };
            let mut bytes = BytesMut::from(
                &encode_forward(
                    f.id,
                    &f.delivery.from,
                    &f.delivery.to,
                    &f.delivery.message,
                    FRAME_LIMIT,
                    <[u8]>::to_vec,
                )
                .unwrap()[..],
            );
            set_ttl(&mut bytes, f.ttl_ms);
            assert_eq!(&bytes[..], &encoded(&frame)[..]);
        }
        let big = WampMessage::Publish {
            request: 1,
            options: Default::default(),
            topic: "t".into(),
            payload: crate::wamp::Payload::Args(vec![crate::wamp::Value::Bytes(vec![0; 1000])]),
        };
        let from = PeerId::session("realm1", "a", 1);
        let err = encode_forward(1, &from, &from, &big, 500, <[u8]>::to_vec).unwrap_err();
        assert!(matches!(err, WireError::TooLarge { max: 500, .. }), "{err}");
    }

    /// Forward frames of every forwardable type, kind of value and payload, and varint width.
    fn varied_forwards() -> Vec<Forward> {
        use crate::wamp::{Dict, Payload, Value};
        let mut dict = Dict::new();
        dict.insert("k".into(), Value::Integer(-1));
        dict.insert(
            "é".repeat(200),
            Value::List(vec![Value::Null, Value::Bool(true)]),
        );
        let mut values = vec![
            Value::Null,
            Value::Bool(false),
            Value::Float(-1.5e300),
            Value::String("x".repeat(70_000)),
            Value::Bytes(vec![7; 300]),
            Value::List(vec![Value::Dict(dict.clone()), Value::List(Vec::new())]),
            Value::Dict(dict.clone()),
        ];
        for n in [
            0,
            1,
            250,
            251,
            65_535,
            65_536,
            i64::from(u32::MAX) + 1,
            i64::MAX,
        ] {
            values.push(Value::Integer(n));
            values.push(Value::Integer(-n - 1));
            values.push(Value::Unsigned(n as u64 * 2 + 1));
        }
        let payloads = [
            Payload::Empty,
            Payload::Args(values.clone()),
            Payload::ArgsKw(values.clone(), dict.clone()),
            Payload::Transparent(Value::List(values)),
        ];
        let peers = [
            PeerId::session("realm1", "a", u64::MAX),
            PeerId::node("r".repeat(300), "b"),
        ];
        let mut frames = Vec::new();
        for payload in payloads {
            let messages = [
                WampMessage::Publish {
                    request: 1 << 53,
                    options: dict.clone(),
                    topic: "com.example.topic".into(),
                    payload: payload.clone(),
                },
                WampMessage::Error {
                    request_type: 68,
                    request: 300,
                    details: Dict::new(),
                    error: "wamp.error.x".into(),
                    payload: payload.clone(),
                },
                WampMessage::Result {
                    request: 70_000,
                    details: dict.clone(),
                    payload: payload.clone(),
                },
                WampMessage::Invocation {
                    request: 5,
                    registration: u64::from(u32::MAX) + 7,
                    details: dict.clone(),
                    payload: payload.clone(),
                },
                WampMessage::Interrupt {
                    request: 9,
                    options: dict.clone(),
                },
            ];
            for message in messages {
                for (from, to) in [(&peers[0], &peers[1]), (&peers[1], &peers[0])] {
                    frames.push(Forward {
                        ttl_ms: 0,
                        id: u64::MAX - 3,
                        delivery: Delivery {
                            from: from.clone(),
                            to: to.clone(),
                            message: message.clone(),
                        },
                    });
                }
            }
        }
        frames
    }

    #[test]
    fn frames_written_and_read_by_hand_equal_bincodes_for_every_kind_of_value_and_payload() {
        for forward in varied_forwards() {
            let d = &forward.delivery;
            let by_hand = encode_forward(
                forward.id,
                &d.from,
                &d.to,
                &d.message,
                FRAME_LIMIT,
                <[u8]>::to_vec,
            )
            .unwrap();
            let frame = Frame::Forward(Box::new(forward.clone()));
            assert_eq!(&by_hand[..], &encoded(&frame)[..], "{frame:?}");
            let read = by_hand_de::forward(&by_hand[LENGTH_BYTES + 1..], &mut Default::default());
            assert_eq!(read.as_deref(), Some(&forward));
        }
    }

    /// The frame the serde path reads from `body`, if it reads one.
    fn by_serde(body: &[u8]) -> Option<Frame> {
        bincode::serde::decode_from_slice::<Frame, _>(body, wire_config())
            .ok()
            .filter(|(_, read)| *read == body.len())
            .map(|(frame, _)| frame)
    }

    /// The frames read off `stream` by the codec alone, or with acks taken first by
    /// `take_acks`; an error ends the list. Also says how many acks `take_acks` took.
    fn read_stream(stream: &[u8], take: bool) -> (Vec<Result<Frame, String>>, usize) {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(stream);
        let (mut frames, mut taken) = (Vec::new(), 0);
        loop {
            if take {
                take_acks(&mut buf, |id| {
                    taken += 1;
                    frames.push(Ok(Frame::Ack { id }));
                });
            }
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(Ok(frame)),
                Ok(None) => return (frames, taken),
                Err(err) => {
                    frames.push(Err(err.to_string()));
                    return (frames, taken);
                }
            }
        }
    }

    #[test]
    fn acks_taken_from_the_buffer_are_the_frames_the_codec_reads() {
        let ids = [0, 1, 250, 251, 65_535, 65_536, 1 << 40, u64::MAX];
        let mut stream = Vec::new();
        let from = PeerId::node("r", "a");
        let message = samples().into_iter().find(|m| m.is_forwardable()).unwrap();
        for (i, &id) in ids.iter().enumerate() {
            stream.extend_from_slice(&encoded(&Frame::Ack { id }));
            if i % 3 == 0 {
                stream.extend_from_slice(&encoded(&Frame::Pong { id }));
            }
            if i % 4 == 0 {
                stream.extend_from_slice(&encoded(&Frame::Nack {
                    id,
                    reason: NackReason::Overloaded,
                }));
                encode_forward(id, &from, &from, &message, 1024, |f| {
                    stream.extend_from_slice(f)
                })
                .unwrap();
            }
        }
        // An ack whose id is not in its shortest form: left to the codec.
        stream.extend([0, 0, 0, 4, ACK_VARIANT, 251, 5, 0]);
        stream.extend_from_slice(&encoded(&Frame::Ack { id: 7 }));
        // And one not complete yet.
        stream.extend_from_slice(&encoded(&Frame::Ack { id: 8 })[..LENGTH_BYTES + 1]);
        let (frames, taken) = read_stream(&stream, true);
        assert_eq!(frames, read_stream(&stream, false).0);
        assert!(taken >= ids.len(), "{taken}");
        // 8 acks, 3 pongs, 2 nacks, 2 forwards, then the two last acks (the long form read by
        // the codec).
        assert_eq!(frames.len(), 17);
        assert_eq!(
            frames[15..],
            [Ok(Frame::Ack { id: 5 }), Ok(Frame::Ack { id: 7 })]
        );
        // Whatever the bytes, the same frames and the same error (compared as text: a NaN is
        // not equal to itself).
        let same = |v: &[u8]| {
            let shown = |take| format!("{:?}", read_stream(v, take).0);
            assert_eq!(shown(true), shown(false), "{v:?}");
        };
        let mut variants = 0;
        for at in 0..stream.len() {
            for b in [0, 1, 4, 5, 251, 255] {
                let mut v = stream.clone();
                v[at] = b;
                same(&v);
                variants += 1;
            }
            same(&stream[..at]);
        }
        assert!(variants > 1000);
    }

    #[test]
    fn the_hand_reader_gives_what_the_serde_path_gives_or_leaves_the_frame_to_it() {
        use crate::wamp::{Dict, Payload, Value};
        let mut bodies: Vec<Vec<u8>> = every_frame()
            .into_iter()
            .chain(
                varied_forwards()
                    .into_iter()
                    .take(10)
                    .map(|f| Frame::Forward(Box::new(f))),
            )
            .filter(|f| matches!(f, Frame::Forward(_)))
            .map(|f| encoded(&f)[LENGTH_BYTES..].to_vec())
            .collect();
        // A value nested deeper than the hand reader goes, within what the serde path takes.
        let mut deep = Value::Null;
        for _ in 0..by_hand_de::DEPTH + 2 {
            deep = Value::List(vec![deep]);
        }
        let nested = WampMessage::Publish {
            request: 1,
            options: Dict::new(),
            topic: "t".into(),
            payload: Payload::Transparent(deep),
        };
        let from = PeerId::node("r", "a");
        let body = encode_forward(1, &from, &from, &nested, FRAME_LIMIT, <[u8]>::to_vec).unwrap();
        assert!(by_hand_de::forward(&body[LENGTH_BYTES + 1..], &mut Default::default()).is_none());
        assert!(by_serde(&body[LENGTH_BYTES..]).is_some());
        bodies.push(body[LENGTH_BYTES..].to_vec());
        let (mut read, mut left) = (0, 0);
        for body in bodies {
            // Every byte replaced by values that matter to the format, every cut, one extra byte.
            let mut variants = Vec::new();
            for at in 0..body.len().min(400) {
                for b in [
                    0,
                    1,
                    2,
                    3,
                    6,
                    7,
                    8,
                    250,
                    251,
                    252,
                    253,
                    254,
                    255,
                    body[at] ^ 0x80,
                ] {
                    let mut v = body.clone();
                    v[at] = b;
                    variants.push(v);
                }
                variants.push(body[..at].to_vec());
            }
            variants.push([&body[..], &[0]].concat());
            for v in variants {
                let Some(fields) = v.strip_prefix(&[FORWARD_VARIANT]) else {
                    continue;
                };
                match by_hand_de::forward(fields, &mut Default::default()) {
                    Some(forward) => {
                        read += 1;
                        // Compared encoded: a NaN is not equal to itself.
                        let by_serde = by_serde(&v).map(|f| encoded(&f));
                        let by_hand = encoded(&Frame::Forward(forward));
                        assert_eq!(by_serde, Some(by_hand), "{v:?}");
                    }
                    None => left += 1,
                }
            }
        }
        // Both outcomes were exercised.
        assert!(read > 100 && left > 100, "{read} read, {left} left");
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
