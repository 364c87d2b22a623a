//! Application values ([`Value`], [`Dict`]) and the payload ([`Payload`]) of the messages that
//! carry one, with their serde encoding.
//!
//! Decoding counts nesting: a derived `Deserialize` recurses once per level of nesting, and
//! bincode has no depth limit of its own, so a frame of a hundred thousand nested one-element
//! lists would overflow the stack. This one refuses values nested deeper than [`MAX_DEPTH`]. It
//! reads the same encoding the derived `Serialize` writes.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// The deepest nesting of lists and dicts a decoded value may have (JSON parsers commonly stop
/// at 128; WAMP payloads are far shallower).
pub const MAX_DEPTH: usize = 64;

/// Items of a list or dict allocated before they are read, whatever length the input claims:
/// more grow as they arrive.
pub(crate) const PREALLOCATE: usize = 1024;

/// A dictionary of values; keys keep their insertion order.
pub type Dict = IndexMap<String, Value>;

/// An application value. Decoding refuses values nested deeper than [`MAX_DEPTH`], so that a
/// peer cannot exhaust the stack with a frame of nested lists.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Value {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// A signed integer.
    Integer(i64),
    /// An unsigned integer above `i64::MAX`.
    Unsigned(u64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    String(String),
    /// Binary data (in JSON, a string of `\u0000` followed by base64). Encoded as a byte
    /// string (a length, then the bytes in one copy), not as a sequence of numbers.
    Bytes(#[serde(serialize_with = "byte_string")] Vec<u8>),
    /// A list.
    List(Vec<Value>),
    /// A dictionary.
    Dict(Dict),
}

/// The application payload at the end of PUBLISH, EVENT, CALL, RESULT, INVOCATION, YIELD and
/// ERROR.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum Payload {
    /// No arguments at all.
    #[default]
    Empty,
    /// `Arguments` only.
    Args(Vec<Value>),
    /// `Arguments` and `ArgumentsKw`.
    ArgsKw(Vec<Value>, #[serde(deserialize_with = "dict")] Dict),
    /// Payload passthrough mode (the options or details carry `enc_algo`): one value in place
    /// of the arguments, carried untouched.
    Transparent(Value),
}

const VARIANTS: &[&str] = &[
    "Null", "Bool", "Integer", "Unsigned", "Float", "String", "Bytes", "List", "Dict",
];

/// Decodes one value at nesting `depth`.
#[derive(Clone, Copy)]
struct ValueSeed {
    depth: usize,
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ValueSeed { depth: 0 }.deserialize(deserializer)
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(format!(
                "value nested deeper than {MAX_DEPTH} levels"
            )));
        }
        deserializer.deserialize_enum("Value", VARIANTS, self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a WAMP value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (index, variant): (u32, _) = data.variant()?;
        let inner = ValueSeed {
            depth: self.depth + 1,
        };
        Ok(match index {
            0 => {
                variant.unit_variant()?;
                Value::Null
            }
            1 => Value::Bool(variant.newtype_variant()?),
            2 => Value::Integer(variant.newtype_variant()?),
            3 => Value::Unsigned(variant.newtype_variant()?),
            4 => Value::Float(variant.newtype_variant()?),
            5 => Value::String(variant.newtype_variant_seed(Str)?),
            6 => Value::Bytes(variant.newtype_variant_seed(ByteString)?),
            7 => Value::List(variant.newtype_variant_seed(ListSeed(inner))?),
            8 => Value::Dict(variant.newtype_variant_seed(DictSeed(inner))?),
            other => {
                return Err(de::Error::invalid_value(
                    de::Unexpected::Unsigned(other.into()),
                    &"a Value variant index from 0 to 8",
                ))
            }
        })
    }
}

/// Writes `bytes` as a byte string: in bincode the same bytes as a sequence of `u8`, written
/// in one copy rather than one call per byte.
fn byte_string<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// Reads a string from the decoder's bytes when it lends them (bincode decoding from a slice
/// does): one allocation of the exact size, where serde's `String` has bincode fill a zeroed
/// buffer first.
pub(crate) fn string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_str(Str)
}

/// Reads a dict of a message's fields with the same string handling; its values count their
/// depth from 0, as the arguments' do.
pub(crate) fn dict<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Dict, D::Error> {
    DictSeed(ValueSeed { depth: 0 }).deserialize(deserializer)
}

/// See [`string`].
struct Str;

impl<'de> DeserializeSeed<'de> for Str {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        string(deserializer)
    }
}

impl Visitor<'_> for Str {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        Ok(s.to_owned())
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<String, E> {
        Ok(s)
    }
}

/// Reads what [`byte_string`] wrote, from the decoder's bytes when it lends them.
struct ByteString;

impl<'de> DeserializeSeed<'de> for ByteString {
    type Value = Vec<u8>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for ByteString {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }
}

/// A list whose items are at the given depth.
struct ListSeed(ValueSeed);

impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = Vec<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Value>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = Vec<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        // Grow as items arrive: the announced length is not trusted for the allocation.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOCATE));
        while let Some(item) = seq.next_element_seed(self.0)? {
            items.push(item);
        }
        Ok(items)
    }
}

/// A dict whose values are at the given depth.
struct DictSeed(ValueSeed);

impl<'de> DeserializeSeed<'de> for DictSeed {
    type Value = Dict;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Dict, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DictSeed {
    type Value = Dict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a dict of values")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dict, A::Error> {
        let mut dict = Dict::with_capacity(map.size_hint().unwrap_or(0).min(PREALLOCATE));
        while let Some(key) = map.next_key_seed(Str)? {
            let value = map.next_value_seed(self.0)?;
            dict.insert(key, value);
        }
        Ok(dict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> Value {
        let mut value = Value::Null;
        for _ in 0..depth {
            value = Value::List(vec![value]);
        }
        value
    }

    fn round_trip(value: &Value) -> Result<Value, String> {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(value, config).map_err(|e| e.to_string())?;
        bincode::serde::decode_from_slice::<Value, _>(&bytes, config)
            .map(|(v, _)| v)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn values_up_to_the_depth_limit_round_trip() {
        let value = nested(MAX_DEPTH);
        assert_eq!(round_trip(&value).unwrap(), value);
        let mut dict = Dict::new();
        dict.insert("k".into(), nested(3));
        let value = Value::Dict(dict);
        assert_eq!(round_trip(&value).unwrap(), value);
    }

    #[test]
    fn a_message_takes_the_same_depth_in_its_dicts_as_in_its_arguments() {
        let config = bincode::config::standard();
        for depth in [MAX_DEPTH, MAX_DEPTH + 1] {
            let mut options = Dict::new();
            options.insert("k".into(), nested(depth));
            let in_dict = crate::wamp::WampMessage::Publish {
                request: 1,
                options,
                topic: "t".into(),
                payload: Payload::Empty,
            };
            let in_args = crate::wamp::WampMessage::Publish {
                request: 1,
                options: Dict::new(),
                topic: "t".into(),
                payload: Payload::Args(vec![nested(depth)]),
            };
            for message in [in_dict, in_args] {
                let bytes = bincode::serde::encode_to_vec(&message, config).unwrap();
                let decoded = bincode::serde::decode_from_slice::<crate::wamp::WampMessage, _>(
                    &bytes, config,
                );
                assert_eq!(decoded.is_ok(), depth == MAX_DEPTH, "{message:?}");
            }
        }
    }

    #[test]
    fn bytes_are_a_length_then_the_bytes_and_round_trip() {
        let data: Vec<u8> = (0..=255).collect();
        let value = Value::Bytes(data.clone());
        let config = bincode::config::standard();
        let encoded = bincode::serde::encode_to_vec(&value, config).unwrap();
        // Variant 6, the length as a varint (251 = a u16 follows), the bytes as they are.
        let mut expected = vec![6, 251, 0, 1];
        expected.extend_from_slice(&data);
        assert_eq!(encoded, expected);
        assert_eq!(round_trip(&value).unwrap(), value);
    }

    #[test]
    fn a_value_nested_past_the_limit_is_refused_without_recursing_through_it() {
        let err = round_trip(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.contains("nested deeper"), "{err}");
        // A hundred thousand levels, as a hostile peer would send: bytes built by hand (the
        // encoder itself would recurse). List is variant 7, a list of one is length 1.
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[7, 1]);
        }
        bytes.push(0);
        let result =
            bincode::serde::decode_from_slice::<Value, _>(&bytes, bincode::config::standard());
        assert!(result.is_err());
    }
}
