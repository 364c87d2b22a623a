//! The serializers WAMP clients speak: JSON, msgpack and CBOR, each the array form of a
//! message ([`Serializer::encode`], [`Serializer::decode`]).
//!
//! Each decodes to the same [`WampMessage`], so a message travels between nodes and between
//! clients whatever each end speaks (a JSON caller calls a msgpack callee). Binary values are
//! msgpack `bin`, CBOR byte strings, and in JSON a string of `\u0000` followed by base64.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::Deserializer;

use super::dynamic::{read_list, DynSeed};
pub use super::form::DecodeError;
use super::form::{from_items, ArrayForm};
use super::{Value, WampMessage, MAX_DEPTH};

/// A WAMP serializer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serializer {
    /// `wamp.2.json`, RawSocket serializer 1.
    Json,
    /// `wamp.2.msgpack`, RawSocket serializer 2.
    Msgpack,
    /// `wamp.2.cbor`, RawSocket serializer 3.
    Cbor,
}

impl Serializer {
    /// Every serializer, in the order a client prefers them by default.
    pub const ALL: [Serializer; 3] = [Serializer::Json, Serializer::Msgpack, Serializer::Cbor];

    /// The WebSocket subprotocol (`wamp.2.json`).
    pub fn subprotocol(self) -> &'static str {
        match self {
            Serializer::Json => "wamp.2.json",
            Serializer::Msgpack => "wamp.2.msgpack",
            Serializer::Cbor => "wamp.2.cbor",
        }
    }

    /// The serializer of a WebSocket subprotocol, if it is one of these.
    pub fn from_subprotocol(name: &str) -> Option<Serializer> {
        Serializer::ALL
            .into_iter()
            .find(|s| s.subprotocol() == name)
    }

    /// The serializer's number in the RawSocket handshake.
    pub fn rawsocket_id(self) -> u8 {
        match self {
            Serializer::Json => 1,
            Serializer::Msgpack => 2,
            Serializer::Cbor => 3,
        }
    }

    /// The serializer of a RawSocket handshake number, if it is one of these.
    pub fn from_rawsocket_id(id: u8) -> Option<Serializer> {
        Serializer::ALL.into_iter().find(|s| s.rawsocket_id() == id)
    }

    /// Whether messages are text (WebSocket text frames) rather than binary.
    pub fn is_text(self) -> bool {
        self == Serializer::Json
    }

    /// The short name (`json`, `msgpack`, `cbor`), as metrics and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Serializer::Json => "json",
            Serializer::Msgpack => "msgpack",
            Serializer::Cbor => "cbor",
        }
    }

    /// Encodes a message.
    pub fn encode(self, message: &WampMessage) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode_into(message, &mut out);
        out
    }

    /// Encodes a message at the end of `out`.
    pub fn encode_into(self, message: &WampMessage, out: &mut Vec<u8>) {
        let form = ArrayForm {
            message,
            json: self == Serializer::Json,
        };
        // Writing into a vector fails only for a value the format cannot represent, and each
        // of these formats represents every `Value`: a failure is a bug here, not bad input.
        let written = match self {
            Serializer::Json => serde_json::to_writer(&mut *out, &form).map_err(|e| e.to_string()),
            Serializer::Msgpack => {
                let mut s = rmp_serde::Serializer::new(&mut *out);
                serde::Serialize::serialize(&form, &mut s).map_err(|e| e.to_string())
            }
            Serializer::Cbor => ciborium::into_writer(&form, &mut *out).map_err(|e| e.to_string()),
        };
        if let Err(e) = written {
            unreachable!("{} cannot write a WAMP message: {e}", self.name());
        }
    }

    /// Decodes one message.
    pub fn decode(self, bytes: &[u8]) -> Result<WampMessage, DecodeError> {
        let syntax = |detail: String| DecodeError::Syntax {
            serializer: self.name(),
            detail,
        };
        let seed = TopSeed {
            json: self == Serializer::Json,
        };
        let items = match self {
            Serializer::Json => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                let items = seed
                    .deserialize(&mut de)
                    .map_err(|e| syntax(e.to_string()))?;
                de.end().map_err(|e| syntax(e.to_string()))?;
                items
            }
            Serializer::Msgpack => {
                let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
                let items = seed
                    .deserialize(&mut de)
                    .map_err(|e| syntax(e.to_string()))?;
                if de.position() != bytes.len() as u64 {
                    return Err(syntax("bytes after the message".into()));
                }
                items
            }
            Serializer::Cbor => {
                let mut reader = bytes;
                let items = ciborium::de::from_reader_with_recursion_limit(
                    &mut reader,
                    // The seed counts the depth itself; this bounds the decoder's own stack.
                    MAX_DEPTH + 8,
                )
                .map(|Items(items)| items)
                .map_err(|e| syntax(e.to_string()))?;
                if !reader.is_empty() {
                    return Err(syntax("bytes after the message".into()));
                }
                items
            }
        };
        match items {
            Some(items) => from_items(items),
            None => Err(DecodeError::ProtocolViolation(
                "a message is an array".into(),
            )),
        }
    }
}

impl fmt::Display for Serializer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Serializer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Serializer::ALL
            .into_iter()
            .find(|ser| ser.name() == s)
            .ok_or_else(|| format!("unknown serializer {s:?}: json, msgpack or cbor"))
    }
}

/// The top level of a message: an array of items (`None` when the input is not an array).
/// The array's own level counts, as do the payload's list and dict: a value inside the
/// arguments may nest [`MAX_DEPTH`] levels, as on the node-to-node wire.
#[derive(Clone, Copy)]
struct TopSeed {
    json: bool,
}

impl<'de> DeserializeSeed<'de> for TopSeed {
    type Value = Option<Vec<Value>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed {
    type Value = Option<Vec<Value>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a WAMP message")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let seed = DynSeed {
            depth_left: MAX_DEPTH + 2,
            json: self.json,
        };
        read_list(seed, seq).map(Some)
    }

    // Anything else is well-formed but not a message.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Drain it so the decoder stays in step; its content does not matter.
        while map
            .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
            .is_some()
        {}
        Ok(None)
    }
}

/// The items of a CBOR message: ciborium deserializes a type, not a seed.
struct Items(Option<Vec<Value>>);

impl<'de> serde::Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        TopSeed { json: false }.deserialize(deserializer).map(Items)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use serde_json::Value as Json;

    use super::*;
    use crate::wamp::{samples, Dict, Payload};

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The WAMP project's test vectors, copied into `tests/data/wamp-testsuite`.
    pub(crate) fn vector_files() -> Vec<PathBuf> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/wamp-testsuite/singlemessage");
        let mut files = Vec::new();
        for dir in ["basic", "advanced"] {
            let dir = root.join(dir);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("test vectors expected at {}: {e}", dir.display()));
            for entry in entries {
                files.push(entry.unwrap().path());
            }
        }
        files.sort();
        assert!(files.len() >= 26, "{files:?}");
        files
    }

    /// Every msgpack and CBOR variant of every serialization sample decodes to the message its
    /// JSON variant decodes to, and encodes back to its own bytes exactly.
    #[test]
    fn every_msgpack_and_cbor_vector_decodes_and_reencodes_byte_for_byte() {
        let mut checked = 0;
        for path in vector_files() {
            let file: Json =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            if file["wamp_message_type"] == "EVENT_RECEIVED" {
                continue; // provisional, not modelled
            }
            for sample in file["samples"].as_array().unwrap() {
                let Some(serializers) = sample.get("serializers") else {
                    continue;
                };
                let place = format!("{} / {}", path.display(), sample["description"]);
                let json = hex(serializers["json"][0]["bytes_hex"].as_str().unwrap());
                let expected = Serializer::Json
                    .decode(&json)
                    .unwrap_or_else(|e| panic!("{place}: {e}"));
                for serializer in [Serializer::Msgpack, Serializer::Cbor] {
                    for variant in serializers[serializer.name()].as_array().unwrap() {
                        let bytes = hex(variant["bytes_hex"].as_str().unwrap());
                        let decoded = serializer
                            .decode(&bytes)
                            .unwrap_or_else(|e| panic!("{place} ({serializer}): {e}"));
                        assert_eq!(decoded, expected, "{place} ({serializer})");
                        assert_eq!(
                            serializer.encode(&decoded),
                            bytes,
                            "{place} ({serializer}): re-encoded"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * 34, "every vector was read");
    }

    #[test]
    fn every_message_type_round_trips_through_every_serializer() {
        for serializer in Serializer::ALL {
            for message in samples() {
                let bytes = serializer.encode(&message);
                assert_eq!(
                    serializer.decode(&bytes).unwrap(),
                    message,
                    "{serializer}: {message:?}"
                );
            }
        }
    }

    #[test]
    fn binary_is_msgpack_bin_and_a_cbor_byte_string() {
        let message = WampMessage::Result {
            request: 1,
            details: Dict::new(),
            payload: Payload::Args(vec![Value::Bytes(vec![0, 1, 2, 255])]),
        };
        // [50, 1, {}, [bin8(4) 00 01 02 ff]]
        assert_eq!(
            Serializer::Msgpack.encode(&message),
            [0x94, 0x32, 0x01, 0x80, 0x91, 0xc4, 0x04, 0, 1, 2, 255]
        );
        // [50, 1, {}, [bytes(4) 00 01 02 ff]]
        assert_eq!(
            Serializer::Cbor.encode(&message),
            [0x84, 0x18, 0x32, 0x01, 0xa0, 0x81, 0x44, 0, 1, 2, 255]
        );
    }

    #[test]
    fn garbage_and_non_messages_are_refused_by_every_serializer() {
        for serializer in Serializer::ALL {
            for bytes in [&b""[..], b"\xff\xfe\xfd", b"\xc1"] {
                assert!(
                    matches!(serializer.decode(bytes), Err(DecodeError::Syntax { .. })),
                    "{serializer}: {bytes:?}"
                );
            }
            let not_array = serializer.encode(&WampMessage::Unsubscribed { request: 1 });
            let mut trailing = not_array.clone();
            trailing.push(b'1');
            assert!(serializer.decode(&trailing).is_err(), "{serializer}");
        }
        let unknown = Serializer::Msgpack.decode(&[0x91, 0x63]).unwrap_err();
        assert!(unknown.to_string().contains("unknown message type 99"));
        let map = Serializer::Cbor.decode(&[0xa0]).unwrap_err();
        assert_eq!(
            map,
            DecodeError::ProtocolViolation("a message is an array".into())
        );
    }

    #[test]
    fn values_nested_past_the_limit_are_refused_by_every_serializer() {
        for serializer in Serializer::ALL {
            for (depth, ok) in [(MAX_DEPTH, true), (MAX_DEPTH + 1, false), (100_000, false)] {
                let mut value = Value::Null;
                // Build the deepest ones as bytes by hand: the encoder itself would recurse.
                let bytes = if depth > 1000 {
                    let (open, close): (&[u8], &[u8]) = match serializer {
                        Serializer::Json => (b"[", b"]"),
                        Serializer::Msgpack => (&[0x91], b""),
                        Serializer::Cbor => (&[0x81], b""),
                    };
                    let mut bytes = serializer.encode(&WampMessage::Result {
                        request: 1,
                        details: Dict::new(),
                        payload: Payload::Empty,
                    });
                    // Replace the closing of a JSON array by a payload; for the binary ones,
                    // raise the array's length by one and append the payload.
                    match serializer {
                        Serializer::Json => {
                            bytes.pop();
                            bytes.push(b',');
                        }
                        _ => bytes[0] += 1,
                    }
                    for _ in 0..depth {
                        bytes.extend_from_slice(open);
                    }
                    bytes.extend_from_slice(match serializer {
                        Serializer::Json => b"null",
                        Serializer::Msgpack => &[0xc0],
                        Serializer::Cbor => &[0xf6],
                    });
                    for _ in 0..depth {
                        bytes.extend_from_slice(close);
                    }
                    if serializer == Serializer::Json {
                        bytes.push(b']');
                    }
                    bytes
                } else {
                    for _ in 0..depth {
                        value = Value::List(vec![value]);
                    }
                    serializer.encode(&WampMessage::Result {
                        request: 1,
                        details: Dict::new(),
                        payload: Payload::Args(vec![value]),
                    })
                };
                assert_eq!(
                    serializer.decode(&bytes).is_ok(),
                    ok,
                    "{serializer} at depth {depth}"
                );
            }
        }
    }

    #[test]
    fn subprotocols_and_rawsocket_ids_name_each_serializer_once() {
        for serializer in Serializer::ALL {
            assert_eq!(
                Serializer::from_subprotocol(serializer.subprotocol()),
                Some(serializer)
            );
            assert_eq!(
                Serializer::from_rawsocket_id(serializer.rawsocket_id()),
                Some(serializer)
            );
            assert_eq!(serializer.name().parse::<Serializer>(), Ok(serializer));
        }
        assert_eq!(Serializer::from_subprotocol("wamp.2.ubjson"), None);
        assert_eq!(Serializer::from_rawsocket_id(4), None);
    }
}
