//! Frames on a connection: the length-prefixed encoding for `tokio_util`'s codecs, the
//! forwarded frames written by the fast path into a thread's scratch buffer, and the time to
//! live set in an encoded frame just before it is written.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::fast::{self, Names};
use super::frame::{
    wire_config, EncodeError, Frame, WireError, ACK_VARIANT, FORWARD_VARIANT, FRAME_LIMIT,
    LENGTH_BYTES, PING_VARIANT, PONG_VARIANT,
};
use crate::delivery::Delivery;
use crate::peer_id::PeerId;
use crate::wamp::{WampMessage, MAX_DEPTH};

/// A scratch buffer that grew past this for a large frame is given back after it.
const SCRATCH_KEEP_BYTES: usize = 256 * 1024;

thread_local! {
    /// Where frames are encoded before they are copied into a link's send queue.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Encodes a whole `Forward` frame (length prefix included, as [`FrameCodec`] writes it) into
/// a buffer of the thread's and hands it to `use_frame`, which copies it where it must go (a
/// link's send queue); its deadline is set later with [`set_deadline`]. Refused when longer than
/// `max_frame_bytes`, or nested too deep for any node to read.
pub fn encode_forward<R>(
    id: u64,
    from: &PeerId,
    to: &PeerId,
    message: &WampMessage,
    max_frame_bytes: usize,
    use_frame: impl FnOnce(&[u8]) -> R,
) -> Result<R, EncodeError> {
    let max = max_frame_bytes.min(FRAME_LIMIT);
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        buf.clear();
        buf.extend_from_slice(&[0; LENGTH_BYTES]);
        buf.push(FORWARD_VARIANT);
        let written = fast::forward(&mut buf, id, from, to, message);
        let len = buf.len() - LENGTH_BYTES;
        let result = match written {
            Err(fast::TooDeep) => Err(EncodeError::TooDeep),
            Ok(_) if len > max => Err(EncodeError::TooLarge { len, max }),
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

/// A `Ping` frame, written by hand: it cannot fail.
pub fn ping(id: u64) -> impl std::ops::Deref<Target = [u8]> {
    fast::small_frame(PING_VARIANT, id)
}

/// The length a frame's prefix gives.
fn length_of(prefix: &[u8]) -> usize {
    u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize
}

/// Where `deadline_ms` sits in an encoded `Forward` frame: after the length prefix and the
/// one-byte variant index.
const DEADLINE_OFFSET: usize = LENGTH_BYTES + 1;

/// Sets the deadline of an encoded `Forward` frame (as [`FrameCodec`] wrote it) just before it
/// is written, by the writer's wall clock then. Returns `false`, changing nothing, when `frame`
/// is not an encoded `Forward` frame.
pub fn set_deadline(frame: &mut [u8], deadline_ms: u64) -> bool {
    if frame.len() < DEADLINE_OFFSET + 8 || frame[LENGTH_BYTES] != FORWARD_VARIANT {
        return false;
    }
    frame[DEADLINE_OFFSET..DEADLINE_OFFSET + 8].copy_from_slice(&deadline_ms.to_be_bytes());
    true
}

/// Encodes and decodes length-prefixed frames for `tokio_util::codec::Framed`.
///
/// Frames are decoded in place from the read buffer. Forwarded frames and the answers
/// (`Ack`, `Pong`), one per forwarded message, are encoded and decoded by the fast paths, byte
/// for byte as bincode does (tests hold them to it), without the general path's cost; a
/// forwarded frame is written by the node's own writer, [`encode_forward`].
#[derive(Debug)]
pub struct FrameCodec {
    max_frame_bytes: usize,
    names: Names,
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame_bytes` (capped at [`FRAME_LIMIT`]).
    pub fn new(max_frame_bytes: usize) -> FrameCodec {
        FrameCodec {
            max_frame_bytes: max_frame_bytes.min(FRAME_LIMIT),
            names: Default::default(),
        }
    }

    /// The length of the frame at the front of `buf`, its prefix included, once the prefix is
    /// there; a frame longer than the limit is refused from its prefix.
    pub fn front(&self, buf: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(prefix) = buf.get(..LENGTH_BYTES) else {
            return Ok(None);
        };
        let len = length_of(prefix);
        if len > self.max_frame_bytes {
            return Err(WireError::TooLarge {
                len,
                max: self.max_frame_bytes,
            });
        }
        Ok(Some(LENGTH_BYTES + len))
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
        let len = length_of(prefix);
        let start = at + LENGTH_BYTES;
        let Some([ACK_VARIANT, id @ ..]) = buf.get(start..start + len) else {
            break;
        };
        let Some(id) = fast::exact_varint(id) else {
            break;
        };
        each(id);
        at = start + len;
    }
    buf.advance(at);
}

/// Decodes one frame's bytes (without the length prefix).
fn decode_body(body: &[u8], names: &mut Names) -> Result<Frame, WireError> {
    if let [variant @ (ACK_VARIANT | PONG_VARIANT), rest @ ..] = body {
        if let Some(id) = fast::exact_varint(rest) {
            return Ok(if *variant == ACK_VARIANT {
                Frame::Ack { id }
            } else {
                Frame::Pong { id }
            });
        }
    }
    if let [FORWARD_VARIANT, fields @ ..] = body {
        if let Some(forward) = fast::read_forward(fields, names) {
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

    /// Decodes the frame at the front of `src` once it is whole. Reserves nothing: the
    /// memory of frames being read is the reader's to bound (`FrameReader`).
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let total = match self.front(src)? {
            Some(total) if src.len() >= total => total,
            _ => return Ok(None),
        };
        let frame = decode_body(&src[LENGTH_BYTES..total], &mut self.names)?;
        src.advance(total);
        Ok(Some(frame))
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = WireError;

    /// Appends the frame to `dst`; on error `dst` is left as it was.
    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        let small = match frame {
            Frame::Ack { id } => Some((ACK_VARIANT, *id)),
            Frame::Ping { id } => Some((PING_VARIANT, *id)),
            Frame::Pong { id } => Some((PONG_VARIANT, *id)),
            _ => None,
        };
        if let Some((variant, id)) = small {
            dst.extend_from_slice(&fast::small_frame(variant, id));
            return Ok(());
        }
        if let Frame::Forward(forward) = frame {
            // The one writer of forwarded frames, the node's own.
            let Delivery { from, to, message } = &forward.delivery;
            let max = self.max_frame_bytes;
            return encode_forward(forward.id, from, to, message, max, |bytes| {
                let start = dst.len();
                dst.extend_from_slice(bytes);
                set_deadline(&mut dst[start..], forward.deadline_ms);
            })
            .map_err(|err| match err {
                EncodeError::TooLarge { len, max } => WireError::TooLarge { len, max },
                EncodeError::TooDeep => {
                    WireError::Malformed(format!("a value nested deeper than {MAX_DEPTH} levels"))
                }
            });
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
    use crate::delivery::{Delivery, NackReason};
    use crate::wamp::samples;
    use crate::wire::frame::tests::hello;
    use crate::wire::frame::{Forward, RefuseReason};

    fn every_frame() -> Vec<Frame> {
        let mut frames = vec![
            Frame::Hello(hello()),
            Frame::Welcome {
                version: 1,
                generation: 1 << 40,
            },
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
                generation: 1 << 40,
                mac: [10; 32],
            },
        ];
        for (id, message) in (0..).zip(samples().into_iter().filter(|m| m.is_forwardable())) {
            frames.push(Frame::Forward(Box::new(Forward {
                id,
                deadline_ms: 5000,
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

    /// The frame as bincode's serde path writes it, length prefix included: the reference.
    fn by_bincode(frame: &Frame) -> Vec<u8> {
        let body = bincode::serde::encode_to_vec(frame, wire_config()).unwrap();
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        bytes
    }

    #[test]
    fn every_frame_is_written_as_bincode_writes_it() {
        for frame in every_frame() {
            assert_eq!(&encoded(&frame)[..], &by_bincode(&frame)[..], "{frame:?}");
        }
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
    fn the_deadline_of_an_encoded_forward_frame_can_be_set_in_place() {
        let mut codec = FrameCodec::new(FRAME_LIMIT);
        for frame in every_frame() {
            let mut bytes = encoded(&frame);
            let is_forward = matches!(frame, Frame::Forward(_));
            assert_eq!(set_deadline(&mut bytes, 1_234_567_890_123), is_forward);
            let decoded = codec.decode(&mut bytes).unwrap().unwrap();
            match (decoded, frame) {
                (Frame::Forward(d), Frame::Forward(f)) => {
                    assert_eq!(d.deadline_ms, 1_234_567_890_123);
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
            for frame in [Frame::Ack { id }, Frame::Ping { id }, Frame::Pong { id }] {
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
    fn a_ping_written_by_hand_is_the_frame_bincode_writes() {
        for id in [0, 1, 250, 251, 65_536, u64::MAX] {
            assert_eq!(&ping(id)[..], &by_bincode(&Frame::Ping { id })[..]);
        }
    }

    #[test]
    fn encode_forward_writes_the_bytes_bincode_writes_for_the_same_frame() {
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
            set_deadline(&mut bytes, f.deadline_ms);
            assert_eq!(&bytes[..], &by_bincode(&frame)[..]);
        }
        let big = WampMessage::Publish {
            request: 1,
            options: Default::default(),
            topic: "t".into(),
            payload: crate::wamp::Payload::Args(vec![crate::wamp::Value::Bytes(vec![0; 1000])]),
        };
        let from = PeerId::session("realm1", "a", 1);
        let err = encode_forward(1, &from, &from, &big, 500, <[u8]>::to_vec).unwrap_err();
        assert!(
            matches!(err, EncodeError::TooLarge { max: 500, .. }),
            "{err}"
        );
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
                        deadline_ms: 0,
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
            let read = fast::read_forward(&by_hand[LENGTH_BYTES + 1..], &mut Default::default());
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
        // A value nested as deep as any node reads.
        let mut deep = Value::Null;
        for _ in 0..crate::wamp::MAX_DEPTH {
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
        assert!(fast::read_forward(&body[LENGTH_BYTES + 1..], &mut Default::default()).is_some());
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
                match fast::read_forward(fields, &mut Default::default()) {
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
}
