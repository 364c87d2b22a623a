//! Decoding of the strings that every forwarded frame repeats (node ids, realms): each thread
//! (for serde) and each connection's decoder (for forwarded frames) keeps the few it decoded
//! last and hands out a clone of the one it has rather than a new allocation.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::thread::LocalKey;

use serde::Deserializer;

/// How many strings of one kind a thread remembers: a cluster has few nodes and few realms.
pub(crate) const RECENT: usize = 8;

/// Longer strings are not remembered: a peer cannot make a thread keep large ones.
const LONGEST: usize = 256;

/// The strings of one kind decoded lately on a thread (or connection).
#[derive(Debug, Default)]
pub(crate) struct Recent {
    strings: [Option<Arc<str>>; RECENT],
    next: usize,
}

impl Recent {
    pub(crate) const fn new() -> Recent {
        Recent {
            strings: [const { None }; RECENT],
            next: 0,
        }
    }

    /// The string of bytes `s`, shared with one decoded lately when there is one: only a new
    /// one is checked as UTF-8 and allocated.
    pub(crate) fn get(&mut self, s: &[u8]) -> Result<Arc<str>, std::str::Utf8Error> {
        if let Some(known) = self.strings.iter().flatten().find(|k| k.as_bytes() == s) {
            return Ok(known.clone());
        }
        let new: Arc<str> = std::str::from_utf8(s)?.into();
        if s.len() <= LONGEST {
            self.strings[self.next] = Some(new.clone());
            self.next = (self.next + 1) % RECENT;
        }
        Ok(new)
    }
}

/// What a string newtype over `Arc<str>` shared through a per-thread cache (`NodeId`, `Realm`)
/// has: made from `&str`, `String` and `Arc<str>`; seen as a `str`; compared (pointers first:
/// values decoded through one cache share their string), hashed, shown and serialized as the
/// string; read with serde through the thread's cache. `$what` names it in decoding errors.
/// The type itself derives `Clone, Eq, PartialOrd, Ord`.
macro_rules! shared_string {
    ($name:ident, $what:literal) => {
        impl $name {
            /// The string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        thread_local! {
            /// Values decoded lately on this thread.
            static RECENT: std::cell::RefCell<crate::shared_str::Recent> =
                const { std::cell::RefCell::new(crate::shared_str::Recent::new()) };
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                std::sync::Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.into())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s.into())
            }
        }

        impl From<std::sync::Arc<str>> for $name {
            fn from(s: std::sync::Arc<str>) -> Self {
                $name(s)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                &*self.0 == *other
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                crate::shared_str::deserialize(deserializer, &RECENT, $what).map($name)
            }
        }
    };
}

pub(crate) use shared_string;

/// Deserializes a string through the thread's cache `recent`; `expecting` names it in errors.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
    recent: &'static LocalKey<RefCell<Recent>>,
    expecting: &'static str,
) -> Result<Arc<str>, D::Error> {
    // As a string in every format (some binary ones tell strings and bytes apart); the hot
    // path, forwarded frames, reads through the decoder's own cache without serde.
    deserializer.deserialize_str(Visitor { recent, expecting })
}

struct Visitor {
    recent: &'static LocalKey<RefCell<Recent>>,
    expecting: &'static str,
}

impl serde::de::Visitor<'_> for Visitor {
    type Value = Arc<str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Arc<str>, E> {
        self.recent
            .with(|recent| recent.borrow_mut().get(s.as_bytes()))
            .map_err(E::custom)
    }

    fn visit_bytes<E: serde::de::Error>(self, s: &[u8]) -> Result<Arc<str>, E> {
        self.recent
            .with(|recent| recent.borrow_mut().get(s))
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Bytes(s), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_shared_and_long_ones_never_kept() {
        let mut recent = Recent::new();
        let short = recent.get(b"node-1").unwrap();
        assert!(Arc::ptr_eq(&short, &recent.get(b"node-1").unwrap()));
        let long = vec![b'x'; LONGEST + 1];
        let first = recent.get(&long).unwrap();
        assert!(!Arc::ptr_eq(&first, &recent.get(&long).unwrap()));
        assert!(recent.strings.iter().flatten().all(|s| s.len() <= LONGEST));
        assert!(recent.get(&[0xff]).is_err());
    }
}
