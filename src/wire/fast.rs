//! The fast paths of the wire format: a `Forward` frame written and read by hand, byte for byte
//! as bincode's serde path writes it (`config::standard()`: varints, little endian, enum
//! variants as their index, sequences and maps after their length), without serde's calls per
//! field. bincode's own derives were measured against these (instructions per message, with
//! callgrind): 25–30 % more to encode and 28–120 % more to decode, so the hand paths stay.
//!
//! The writer covers every message type; a value nested deeper than [`MAX_DEPTH`] is refused
//! as it is written, the one depth limit of the wire format (the serde path refuses the same
//! when it reads). The reader covers the forwardable messages and accepts only what it is sure
//! of (canonical varints, valid UTF-8, no repeated keys, no bytes left over); it says `None`
//! otherwise, so that the serde path reads the frame or gives the error: for any input, the
//! frame it gives is the one the serde path gives. Tests hold both to bincode.
//!
//! The variant indexes of [`WampMessage`] live in [`tag`], one definition for writer and
//! reader; [`tag_of`] matches every variant, so a new one does not compile without its tag,
//! and a test fails when the declaration order and the table disagree.

use bytes::BufMut;

use super::frame::{Forward, LENGTH_BYTES};
use crate::delivery::Delivery;
use crate::peer_id::{PeerId, Realm};
use crate::shared_str::Recent;
use crate::wamp::{Dict, Payload, Value, WampMessage, MAX_DEPTH, PREALLOCATE};
use crate::NodeId;

/// The variant index of each [`WampMessage`] in the encoding: its declaration order.
pub(crate) mod tag {
    pub const HELLO: u8 = 0;
    pub const WELCOME: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const CHALLENGE: u8 = 3;
    pub const AUTHENTICATE: u8 = 4;
    pub const GOODBYE: u8 = 5;
    pub const ERROR: u8 = 6;
    pub const PUBLISH: u8 = 7;
    pub const PUBLISHED: u8 = 8;
    pub const SUBSCRIBE: u8 = 9;
    pub const SUBSCRIBED: u8 = 10;
    pub const UNSUBSCRIBE: u8 = 11;
    pub const UNSUBSCRIBED: u8 = 12;
    pub const EVENT: u8 = 13;
    pub const CALL: u8 = 14;
    pub const CANCEL: u8 = 15;
    pub const RESULT: u8 = 16;
    pub const REGISTER: u8 = 17;
    pub const REGISTERED: u8 = 18;
    pub const UNREGISTER: u8 = 19;
    pub const UNREGISTERED: u8 = 20;
    pub const INVOCATION: u8 = 21;
    pub const INTERRUPT: u8 = 22;
    pub const YIELD: u8 = 23;
}

/// The variant index of `message`.
pub(crate) fn tag_of(message: &WampMessage) -> u8 {
    use WampMessage::*;
    match message {
        Hello { .. } => tag::HELLO,
        Welcome { .. } => tag::WELCOME,
        Abort { .. } => tag::ABORT,
        Challenge { .. } => tag::CHALLENGE,
        Authenticate { .. } => tag::AUTHENTICATE,
        Goodbye { .. } => tag::GOODBYE,
        Error { .. } => tag::ERROR,
        Publish { .. } => tag::PUBLISH,
        Published { .. } => tag::PUBLISHED,
        Subscribe { .. } => tag::SUBSCRIBE,
        Subscribed { .. } => tag::SUBSCRIBED,
        Unsubscribe { .. } => tag::UNSUBSCRIBE,
        Unsubscribed { .. } => tag::UNSUBSCRIBED,
        Event { .. } => tag::EVENT,
        Call { .. } => tag::CALL,
        Cancel { .. } => tag::CANCEL,
        Result { .. } => tag::RESULT,
        Register { .. } => tag::REGISTER,
        Registered { .. } => tag::REGISTERED,
        Unregister { .. } => tag::UNREGISTER,
        Unregistered { .. } => tag::UNREGISTERED,
        Invocation { .. } => tag::INVOCATION,
        Interrupt { .. } => tag::INTERRUPT,
        Yield { .. } => tag::YIELD,
    }
}

/// A value nested deeper than [`MAX_DEPTH`]: nothing may be sent.
#[derive(Debug, PartialEq)]
pub(crate) struct TooDeep;

/// bincode's varint: one byte below 251, else a marker and the value in 2, 4 or 8 bytes.
#[inline(always)]
fn varint(buf: &mut impl BufMut, n: u64) {
    if n < 251 {
        buf.put_u8(n as u8);
    } else if n <= u64::from(u16::MAX) {
        buf.put_u8(251);
        buf.put_u16_le(n as u16);
    } else if n <= u64::from(u32::MAX) {
        buf.put_u8(252);
        buf.put_u32_le(n as u32);
    } else {
        buf.put_u8(253);
        buf.put_u64_le(n);
    }
}

/// A whole frame of a variant index and an id (`Ack`, `Ping`, `Pong`), length prefix
/// included: the answers, one per forwarded message, cost no allocation and no serde.
pub(crate) struct SmallFrame {
    bytes: [u8; LENGTH_BYTES + 1 + 9],
    len: usize,
}

impl std::ops::Deref for SmallFrame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[inline]
pub(super) fn small_frame(variant: u8, id: u64) -> SmallFrame {
    let mut bytes = [0u8; LENGTH_BYTES + 1 + 9];
    bytes[LENGTH_BYTES] = variant;
    let mut rest = &mut bytes[LENGTH_BYTES + 1..];
    varint(&mut rest, id);
    let body = 1 + 9 - rest.len();
    bytes[..LENGTH_BYTES].copy_from_slice(&(body as u32).to_be_bytes());
    SmallFrame {
        bytes,
        len: LENGTH_BYTES + body,
    }
}

#[inline]
fn bytes(buf: &mut Vec<u8>, b: &[u8]) {
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A value at nesting `depth` (the values of a message's dicts and arguments are at 0).
fn value(buf: &mut Vec<u8>, v: &Value, depth: usize) -> Result<(), TooDeep> {
    if depth > MAX_DEPTH {
        return Err(TooDeep);
    }
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
            list(buf, items, depth + 1)?;
        }
        Value::Dict(d) => {
            buf.push(8);
            dict(buf, d, depth + 1)?;
        }
    }
    Ok(())
}

fn list(buf: &mut Vec<u8>, items: &[Value], depth: usize) -> Result<(), TooDeep> {
    varint(buf, items.len() as u64);
    items.iter().try_for_each(|v| value(buf, v, depth))
}

fn dict(buf: &mut Vec<u8>, d: &Dict, depth: usize) -> Result<(), TooDeep> {
    varint(buf, d.len() as u64);
    for (k, v) in d {
        bytes(buf, k.as_bytes());
        value(buf, v, depth)?;
    }
    Ok(())
}

fn payload(buf: &mut Vec<u8>, p: &Payload) -> Result<(), TooDeep> {
    match p {
        Payload::Empty => buf.push(0),
        Payload::Args(args) => {
            buf.push(1);
            list(buf, args, 0)?;
        }
        Payload::ArgsKw(args, kw) => {
            buf.push(2);
            list(buf, args, 0)?;
            dict(buf, kw, 0)?;
        }
        Payload::Transparent(v) => {
            buf.push(3);
            value(buf, v, 0)?;
        }
    }
    Ok(())
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

/// Appends a message as bincode writes it.
pub(crate) fn message(buf: &mut Vec<u8>, message: &WampMessage) -> Result<(), TooDeep> {
    use WampMessage::*;
    buf.push(tag_of(message));
    let text = |buf: &mut Vec<u8>, s: &String| bytes(buf, s.as_bytes());
    match message {
        Hello { realm, details } => {
            text(buf, realm);
            dict(buf, details, 0)?;
        }
        Welcome { session, details } => {
            varint(buf, *session);
            dict(buf, details, 0)?;
        }
        Abort { details, reason } | Goodbye { details, reason } => {
            dict(buf, details, 0)?;
            text(buf, reason);
        }
        Challenge {
            auth_method: s,
            extra,
        }
        | Authenticate {
            signature: s,
            extra,
        } => {
            text(buf, s);
            dict(buf, extra, 0)?;
        }
        Error {
            request_type,
            request,
            details,
            error,
            payload: p,
        } => {
            varint(buf, *request_type);
            varint(buf, *request);
            dict(buf, details, 0)?;
            text(buf, error);
            payload(buf, p)?;
        }
        Publish {
            request,
            options,
            topic: uri,
            payload: p,
        }
        | Call {
            request,
            options,
            procedure: uri,
            payload: p,
        } => {
            varint(buf, *request);
            dict(buf, options, 0)?;
            text(buf, uri);
            payload(buf, p)?;
        }
        Subscribe {
            request,
            options,
            topic: uri,
        }
        | Register {
            request,
            options,
            procedure: uri,
        } => {
            varint(buf, *request);
            dict(buf, options, 0)?;
            text(buf, uri);
        }
        Published {
            request,
            publication: id,
        }
        | Subscribed {
            request,
            subscription: id,
        }
        | Unsubscribe {
            request,
            subscription: id,
        }
        | Registered {
            request,
            registration: id,
        }
        | Unregister {
            request,
            registration: id,
        } => {
            varint(buf, *request);
            varint(buf, *id);
        }
        Unsubscribed { request } | Unregistered { request } => varint(buf, *request),
        Event {
            subscription,
            publication,
            details,
            payload: p,
        } => {
            varint(buf, *subscription);
            varint(buf, *publication);
            dict(buf, details, 0)?;
            payload(buf, p)?;
        }
        Cancel { request, options } | Interrupt { request, options } => {
            varint(buf, *request);
            dict(buf, options, 0)?;
        }
        Result {
            request,
            details,
            payload: p,
        } => {
            varint(buf, *request);
            dict(buf, details, 0)?;
            payload(buf, p)?;
        }
        Invocation {
            request,
            registration,
            details,
            payload: p,
        } => {
            varint(buf, *request);
            varint(buf, *registration);
            dict(buf, details, 0)?;
            payload(buf, p)?;
        }
        Yield {
            request,
            options,
            payload: p,
        } => {
            varint(buf, *request);
            dict(buf, options, 0)?;
            payload(buf, p)?;
        }
    }
    Ok(())
}

/// Appends a `Forward` frame's fields after its variant index: room for `deadline_ms` (8
/// bytes, set as the frame is written), then the id, the two peers and the message.
pub(crate) fn forward(
    buf: &mut Vec<u8>,
    id: u64,
    from: &PeerId,
    to: &PeerId,
    m: &WampMessage,
) -> Result<(), TooDeep> {
    buf.extend_from_slice(&[0; 8]);
    varint(buf, id);
    peer(buf, from);
    peer(buf, to);
    message(buf, m)
}

/// The node ids and realms one connection decoded lately: each frame repeats the same few,
/// and a match here costs less than a look in the thread's caches.
#[derive(Debug, Default)]
pub(crate) struct Names {
    nodes: Recent,
    realms: Recent,
}

/// Reads the encoding from a slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
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

    /// A varint in its shortest form, as the writer writes it.
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

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(String::from)
    }

    /// A value at nesting `depth`, as [`value`] writes it.
    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
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
            7 => Value::List(self.list(depth + 1)?),
            8 => Value::Dict(self.dict(depth + 1)?),
            _ => return None,
        })
    }

    fn list(&mut self, depth: usize) -> Option<Vec<Value>> {
        let n = self.len()?;
        // A length is the peer's word: room for at most what is left (every value takes a
        // byte) and at most `PREALLOCATE` values; more grows as they arrive.
        let mut items = Vec::with_capacity(n.min(self.0.len()).min(PREALLOCATE));
        for _ in 0..n {
            items.push(self.value(depth)?);
        }
        Some(items)
    }

    fn dict(&mut self, depth: usize) -> Option<Dict> {
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
            1 => Payload::Args(self.list(0)?),
            2 => Payload::ArgsKw(self.list(0)?, self.dict(0)?),
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

    /// Decodes a forwardable message into `slot`, where it stays: a message is large, and
    /// each move of one is a copy.
    fn message(&mut self, slot: &mut WampMessage) -> Option<()> {
        *slot = match self.byte()? {
            tag::ERROR => WampMessage::Error {
                request_type: self.varint()?,
                request: self.varint()?,
                details: self.dict(0)?,
                error: self.string()?,
                payload: self.payload()?,
            },
            tag::PUBLISH => WampMessage::Publish {
                request: self.varint()?,
                options: self.dict(0)?,
                topic: self.string()?,
                payload: self.payload()?,
            },
            tag::RESULT => WampMessage::Result {
                request: self.varint()?,
                details: self.dict(0)?,
                payload: self.payload()?,
            },
            tag::INVOCATION => WampMessage::Invocation {
                request: self.varint()?,
                registration: self.varint()?,
                details: self.dict(0)?,
                payload: self.payload()?,
            },
            tag::INTERRUPT => WampMessage::Interrupt {
                request: self.varint()?,
                options: self.dict(0)?,
            },
            _ => return None,
        };
        Some(())
    }
}

/// The varint that is all of `bytes`, in its shortest form.
pub(crate) fn exact_varint(bytes: &[u8]) -> Option<u64> {
    let mut r = Cursor(bytes);
    r.varint().filter(|_| r.0.is_empty())
}

/// The frame whose fields (after its variant index) are `body`, if decoded here, with the
/// names in it shared with those in `names`. Boxed first and the message decoded into the box:
/// a `Forward` is large, and each move of it is a copy.
pub(crate) fn read_forward(body: &[u8], names: &mut Names) -> Option<Box<Forward>> {
    let mut r = Cursor(body);
    let deadline_ms = u64::from_be_bytes(r.array()?);
    let id = r.varint()?;
    let from = r.peer(names)?;
    let to = r.peer(names)?;
    let mut forward = Box::new(Forward {
        deadline_ms,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wamp::samples;

    fn by_bincode(message: &WampMessage) -> Vec<u8> {
        bincode::serde::encode_to_vec(message, bincode::config::standard()).unwrap()
    }

    /// Fails to compile when a message type is added without a case here; the test below
    /// then needs a sample of it.
    fn covered(message: &WampMessage) -> &'static str {
        use WampMessage::*;
        match message {
            Hello { .. } | Welcome { .. } | Abort { .. } | Challenge { .. } => "session",
            Authenticate { .. } | Goodbye { .. } => "session",
            Error { .. } => "error",
            Publish { .. } | Published { .. } | Subscribe { .. } | Subscribed { .. } => "pubsub",
            Unsubscribe { .. } | Unsubscribed { .. } | Event { .. } => "pubsub",
            Call { .. } | Cancel { .. } | Result { .. } | Register { .. } => "rpc",
            Registered { .. } | Unregister { .. } | Unregistered { .. } => "rpc",
            Invocation { .. } | Interrupt { .. } | Yield { .. } => "rpc",
        }
    }

    #[test]
    fn every_message_type_is_written_by_hand_exactly_as_bincode_writes_it() {
        let samples = samples();
        let mut tags: Vec<u8> = samples.iter().map(tag_of).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags, (0..24).collect::<Vec<u8>>(), "a sample of every type");
        for sample in &samples {
            covered(sample);
            let mut fast = Vec::new();
            message(&mut fast, sample).unwrap();
            assert_eq!(fast, by_bincode(sample), "{sample:?}");
        }
    }

    #[test]
    fn a_value_nested_past_the_limit_is_refused_as_it_is_written_and_read() {
        let nested = |depth: usize| {
            let mut value = Value::Null;
            for _ in 0..depth {
                value = Value::List(vec![value]);
            }
            value
        };
        let publish = |value: Value| WampMessage::Publish {
            request: 1,
            options: Dict::new(),
            topic: "t".into(),
            payload: Payload::Args(vec![value]),
        };
        let (from, to) = (PeerId::node("r", "a"), PeerId::node("r", "b"));
        let deepest = publish(nested(MAX_DEPTH));
        let mut buf = Vec::new();
        forward(&mut buf, 1, &from, &to, &deepest).unwrap();
        let read = read_forward(&buf, &mut Names::default()).unwrap();
        assert_eq!(read.delivery.message, deepest);
        let too_deep = publish(nested(MAX_DEPTH + 1));
        assert_eq!(
            forward(&mut Vec::new(), 1, &from, &to, &too_deep),
            Err(TooDeep)
        );
        // The same bytes bincode writes are not read here, and the serde path refuses them.
        let mut bytes = vec![0; 8];
        bytes.push(1);
        for p in [&from, &to] {
            peer(&mut bytes, p);
        }
        bytes.extend(by_bincode(&too_deep));
        assert!(read_forward(&bytes, &mut Names::default()).is_none());
        let as_frame = [&[super::super::frame::FORWARD_VARIANT][..], &bytes].concat();
        let by_serde = bincode::serde::decode_from_slice::<super::super::frame::Frame, _>(
            &as_frame,
            bincode::config::standard(),
        );
        assert!(by_serde.is_err());
    }
}
