//! [`Value`]s in the self-describing formats clients speak (JSON, msgpack, CBOR): a decoder
//! that takes whatever the input holds ([`DynSeed`]) and an encoder ([`Dyn`]) that writes
//! each value as that format's own type (a msgpack `bin`, a CBOR byte string).
//!
//! JSON has no binary type: there a byte string travels as a string of `\u0000` followed by
//! base64, the WAMP convention, in both directions. Decoding counts nesting and refuses values
//! deeper than the limit it is given, whatever the format's own limit.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserializer, Serialize, Serializer};

use super::{Dict, Value, PREALLOCATE};

/// Decodes one value of a self-describing format.
#[derive(Clone, Copy)]
pub(crate) struct DynSeed {
    /// Levels of lists and dicts still allowed below this value.
    pub(crate) depth_left: usize,
    /// JSON: a string that starts with `\u0000` is base64 binary.
    pub(crate) json: bool,
}

impl DynSeed {
    fn inner(self) -> Result<DynSeed, String> {
        match self.depth_left.checked_sub(1) {
            Some(depth_left) => Ok(DynSeed { depth_left, ..self }),
            None => Err("value nested too deeply".to_owned()),
        }
    }
}

impl<'de> DeserializeSeed<'de> for DynSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DynSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a WAMP value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Integer(i))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        Ok(match i64::try_from(u) {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::Unsigned(u),
        })
    }

    fn visit_i128<E: de::Error>(self, i: i128) -> Result<Value, E> {
        if let Ok(i) = i64::try_from(i) {
            return Ok(Value::Integer(i));
        }
        u64::try_from(i)
            .map(Value::Unsigned)
            .map_err(|_| E::custom("integer out of range"))
    }

    fn visit_u128<E: de::Error>(self, u: u128) -> Result<Value, E> {
        self.visit_i128(i128::try_from(u).map_err(|_| E::custom("integer out of range"))?)
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        match s.strip_prefix('\0') {
            Some(encoded) if self.json => BASE64
                .decode(encoded)
                .map(Value::Bytes)
                .map_err(|e| E::custom(format!("bad base64 binary: {e}"))),
            _ => Ok(Value::String(s.to_owned())),
        }
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        if self.json && s.starts_with('\0') {
            return self.visit_str(&s);
        }
        Ok(Value::String(s))
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(bytes.to_vec()))
    }

    fn visit_byte_buf<E: de::Error>(self, bytes: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(bytes))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Value, A::Error> {
        Ok(Value::List(read_list(self, seq)?))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.inner().map_err(de::Error::custom)?;
        let mut dict = Dict::with_capacity(map.size_hint().unwrap_or(0).min(PREALLOCATE));
        while let Some(key) = map.next_key_seed(Key)? {
            let value = map.next_value_seed(inner)?;
            dict.insert(key, value);
        }
        Ok(Value::Dict(dict))
    }
}

/// The items of a list whose own level is `seed`'s.
pub(crate) fn read_list<'de, A: SeqAccess<'de>>(
    seed: DynSeed,
    mut seq: A,
) -> Result<Vec<Value>, A::Error> {
    let inner = seed.inner().map_err(de::Error::custom)?;
    // Grow as items arrive: the announced length is not trusted for the allocation.
    let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PREALLOCATE));
    while let Some(item) = seq.next_element_seed(inner)? {
        items.push(item);
    }
    Ok(items)
}

/// A dict key: a string, nothing else.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for Key {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        Ok(s.to_owned())
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<String, E> {
        Ok(s)
    }
}

/// Writes a value as the format's own types; in JSON, bytes as `\u0000` + base64.
pub(crate) struct Dyn<'a> {
    pub(crate) value: &'a Value,
    pub(crate) json: bool,
}

impl Serialize for Dyn<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = self.json;
        match self.value {
            Value::Null => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Integer(i) => serializer.serialize_i64(*i),
            Value::Unsigned(u) => serializer.serialize_u64(*u),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::String(s) => serializer.serialize_str(s),
            Value::Bytes(b) if json => serializer.serialize_str(&format!("\0{}", BASE64.encode(b))),
            Value::Bytes(b) => serializer.serialize_bytes(b),
            Value::List(items) => DynList { items, json }.serialize(serializer),
            Value::Dict(dict) => DynDict { dict, json }.serialize(serializer),
        }
    }
}

/// Writes a list of values.
pub(crate) struct DynList<'a> {
    pub(crate) items: &'a [Value],
    pub(crate) json: bool,
}

impl Serialize for DynList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.items.len()))?;
        for value in self.items {
            seq.serialize_element(&Dyn {
                value,
                json: self.json,
            })?;
        }
        seq.end()
    }
}

/// Writes a dict, its order kept.
pub(crate) struct DynDict<'a> {
    pub(crate) dict: &'a Dict,
    pub(crate) json: bool,
}

impl Serialize for DynDict<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.dict.len()))?;
        for (key, value) in self.dict {
            map.serialize_entry(
                key,
                &Dyn {
                    value,
                    json: self.json,
                },
            )?;
        }
        map.end()
    }
}
