//! URIs and URI patterns: the spec's rules for a valid URI ([`check`]), the three match
//! policies ([`Match`]), and one pattern map ([`PatternMap`]) that the dealer and the broker
//! share.
//!
//! - `exact`: the URI itself.
//! - `prefix`: every URI that starts with the pattern, character by character
//!   (`com.myapp.topic.emergency` matches `com.myapp.topic.emergency-low` and
//!   `com.myapp.topic.emergency.11`); the empty prefix matches every URI.
//! - `wildcard`: the URIs with as many components as the pattern, each equal to the pattern's
//!   unless the pattern's is empty (`com.myapp..userevent` matches
//!   `com.myapp.foo.userevent`).
//!
//! For a call the dealer takes the single best match ([`PatternMap::best`]): an exact one,
//! else the longest prefix, else the wildcard pattern with the most non-empty components (ties
//! go to the one whose first empty component comes latest, then to the smaller pattern
//! string, so the choice is the same on every node). For an event the broker takes all of
//! them ([`PatternMap::all`]).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// How a registration or subscription matches URIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Match {
    /// The URI itself.
    Exact,
    /// Every URI that starts with the pattern.
    Prefix,
    /// Every URI whose components equal the pattern's non-empty ones.
    Wildcard,
}

impl Match {
    /// The option's value in REGISTER and SUBSCRIBE (`"prefix"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Match::Exact => "exact",
            Match::Prefix => "prefix",
            Match::Wildcard => "wildcard",
        }
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Match {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(Match::Exact),
            "prefix" => Ok(Match::Prefix),
            "wildcard" => Ok(Match::Wildcard),
            other => Err(format!(
                "unknown match policy {other:?}: exact, prefix or wildcard"
            )),
        }
    }
}

/// Whether `uri` is valid for `policy` under the spec's loose rules: components separated by
/// `.`, none containing whitespace or `#`; empty components only in a wildcard pattern, and
/// for a prefix only at the end (`com.myapp.` matches what starts with it; the empty prefix
/// matches everything). An exact URI has at least one component.
pub fn check(uri: &str, policy: Match) -> bool {
    if uri.chars().any(|c| c.is_whitespace() || c == '#') {
        return false;
    }
    match policy {
        Match::Exact => !uri.is_empty() && uri.split('.').all(|c| !c.is_empty()),
        Match::Prefix => {
            let body = uri.strip_suffix('.').unwrap_or(uri);
            body.is_empty() || body.split('.').all(|c| !c.is_empty())
        }
        Match::Wildcard => !uri.is_empty(),
    }
}

/// Whether a wildcard `pattern` matches `uri`.
pub fn wildcard_matches(pattern: &str, uri: &str) -> bool {
    let mut p = pattern.split('.');
    let mut u = uri.split('.');
    loop {
        match (p.next(), u.next()) {
            (None, None) => return true,
            (Some(pc), Some(uc)) if pc.is_empty() || pc == uc => {}
            _ => return false,
        }
    }
}

/// How specific a wildcard pattern is, larger first: its non-empty components, then how late
/// its first empty component comes.
fn specificity(pattern: &str) -> (usize, usize) {
    let components: Vec<&str> = pattern.split('.').collect();
    let filled = components.iter().filter(|c| !c.is_empty()).count();
    let first_empty = components
        .iter()
        .position(|c| c.is_empty())
        .unwrap_or(components.len());
    (filled, first_empty)
}

/// Entries keyed by (match policy, URI pattern), with the lookups of a URI the dealer and the
/// broker make. Lookups do not allocate.
#[derive(Debug)]
pub struct PatternMap<T> {
    exact: HashMap<String, T>,
    prefix: HashMap<String, T>,
    /// Wildcard patterns by their number of components.
    wildcard: HashMap<usize, Vec<(String, T)>>,
    len: usize,
}

impl<T> Default for PatternMap<T> {
    fn default() -> Self {
        PatternMap {
            exact: HashMap::new(),
            prefix: HashMap::new(),
            wildcard: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> PatternMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry of exactly this pattern.
    pub fn get(&self, policy: Match, pattern: &str) -> Option<&T> {
        match policy {
            Match::Exact => self.exact.get(pattern),
            Match::Prefix => self.prefix.get(pattern),
            Match::Wildcard => self
                .wildcard
                .get(&components(pattern))?
                .iter()
                .find(|(p, _)| p == pattern)
                .map(|(_, t)| t),
        }
    }

    /// The entry of exactly this pattern, to change.
    pub fn get_mut(&mut self, policy: Match, pattern: &str) -> Option<&mut T> {
        match policy {
            Match::Exact => self.exact.get_mut(pattern),
            Match::Prefix => self.prefix.get_mut(pattern),
            Match::Wildcard => self
                .wildcard
                .get_mut(&components(pattern))?
                .iter_mut()
                .find(|(p, _)| p == pattern)
                .map(|(_, t)| t),
        }
    }

    /// Sets the entry of a pattern; returns the one it replaces.
    pub fn insert(&mut self, policy: Match, pattern: &str, value: T) -> Option<T> {
        let old = match policy {
            Match::Exact => self.exact.insert(pattern.to_owned(), value),
            Match::Prefix => self.prefix.insert(pattern.to_owned(), value),
            Match::Wildcard => {
                let list = self.wildcard.entry(components(pattern)).or_default();
                match list.iter_mut().find(|(p, _)| p == pattern) {
                    Some((_, slot)) => Some(std::mem::replace(slot, value)),
                    None => {
                        list.push((pattern.to_owned(), value));
                        None
                    }
                }
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the entry of a pattern.
    pub fn remove(&mut self, policy: Match, pattern: &str) -> Option<T> {
        let old = match policy {
            Match::Exact => self.exact.remove(pattern),
            Match::Prefix => self.prefix.remove(pattern),
            Match::Wildcard => {
                let n = components(pattern);
                let list = self.wildcard.get_mut(&n)?;
                let i = list.iter().position(|(p, _)| p == pattern)?;
                let (_, old) = list.swap_remove(i);
                if list.is_empty() {
                    self.wildcard.remove(&n);
                }
                Some(old)
            }
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The best match of a URI, for a call: exact, else the longest prefix, else the most
    /// specific wildcard pattern.
    pub fn best(&self, uri: &str) -> Option<(Match, &str, &T)> {
        if let Some((k, v)) = self.exact.get_key_value(uri) {
            return Some((Match::Exact, k, v));
        }
        if !self.prefix.is_empty() {
            let ends = std::iter::once(uri.len()).chain(uri.char_indices().rev().map(|(i, _)| i));
            for end in ends {
                if let Some((k, v)) = self.prefix.get_key_value(&uri[..end]) {
                    return Some((Match::Prefix, k, v));
                }
            }
        }
        self.wildcard
            .get(&components(uri))?
            .iter()
            .filter(|(p, _)| wildcard_matches(p, uri))
            .max_by(|(a, _), (b, _)| specificity(a).cmp(&specificity(b)).then(b.cmp(a)))
            .map(|(p, v)| (Match::Wildcard, p.as_str(), v))
    }

    /// Every match of a URI, for an event: the exact one, every prefix, every wildcard.
    pub fn all<'a>(&'a self, uri: &'a str) -> impl Iterator<Item = (Match, &'a str, &'a T)> + 'a {
        let exact = self
            .exact
            .get_key_value(uri)
            .map(|(k, v)| (Match::Exact, k.as_str(), v));
        let prefixes = (!self.prefix.is_empty())
            .then(|| {
                uri.char_indices()
                    .map(|(i, _)| i)
                    .chain([uri.len()])
                    .filter_map(|end| self.prefix.get_key_value(&uri[..end]))
                    .map(|(k, v)| (Match::Prefix, k.as_str(), v))
            })
            .into_iter()
            .flatten();
        let wildcards = self
            .wildcard
            .get(&components(uri))
            .into_iter()
            .flatten()
            .filter(move |(p, _)| wildcard_matches(p, uri))
            .map(|(p, v)| (Match::Wildcard, p.as_str(), v));
        exact.into_iter().chain(prefixes).chain(wildcards)
    }

    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = (Match, &str, &T)> {
        let exact = self
            .exact
            .iter()
            .map(|(k, v)| (Match::Exact, k.as_str(), v));
        let prefix = self
            .prefix
            .iter()
            .map(|(k, v)| (Match::Prefix, k.as_str(), v));
        let wildcard = self
            .wildcard
            .values()
            .flatten()
            .map(|(k, v)| (Match::Wildcard, k.as_str(), v));
        exact.chain(prefix).chain(wildcard)
    }
}

/// The number of `.`-separated components.
fn components(uri: &str) -> usize {
    uri.bytes().filter(|&b| b == b'.').count() + 1
}

/// A change of a registration or subscription entry, for the meta events: the session that
/// caused it and the entry's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The entry was created (its first session).
    Created(u64, u64),
    /// A session was added to it (registered, subscribed).
    Added(u64, u64),
    /// A session was removed from it.
    Removed(u64, u64),
    /// Its last session was removed and the entry is gone.
    Deleted(u64, u64),
}

/// The spec's error and close URIs the router sends.
pub mod reason {
    #![allow(missing_docs)]
    pub const NO_SUCH_REALM: &str = "wamp.error.no_such_realm";
    pub const NO_SUCH_ROLE: &str = "wamp.error.no_such_role";
    pub const NOT_AUTHORIZED: &str = "wamp.error.not_authorized";
    pub const AUTHENTICATION_FAILED: &str = "wamp.error.authentication_failed";
    pub const NO_AUTH_METHOD: &str = "wamp.error.no_auth_method";
    pub const PROTOCOL_VIOLATION: &str = "wamp.error.protocol_violation";
    pub const INVALID_URI: &str = "wamp.error.invalid_uri";
    pub const INVALID_ARGUMENT: &str = "wamp.error.invalid_argument";
    pub const NO_SUCH_PROCEDURE: &str = "wamp.error.no_such_procedure";
    pub const PROCEDURE_ALREADY_EXISTS: &str = "wamp.error.procedure_already_exists";
    pub const NO_SUCH_REGISTRATION: &str = "wamp.error.no_such_registration";
    pub const NO_SUCH_SUBSCRIPTION: &str = "wamp.error.no_such_subscription";
    pub const NO_SUCH_SESSION: &str = "wamp.error.no_such_session";
    pub const CANCELED: &str = "wamp.error.canceled";
    pub const TIMEOUT: &str = "wamp.error.timeout";
    pub const SYSTEM_SHUTDOWN: &str = "wamp.close.system_shutdown";
    pub const CLOSE_REALM: &str = "wamp.close.close_realm";
    pub const GOODBYE_AND_OUT: &str = "wamp.close.goodbye_and_out";
    pub const KILLED: &str = "wamp.close.killed";
    pub const CLOSE_NORMAL: &str = "wamp.close.normal";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(Match, &str)]) -> PatternMap<usize> {
        let mut map = PatternMap::new();
        for (i, (policy, pattern)) in entries.iter().enumerate() {
            map.insert(*policy, pattern, i);
        }
        map
    }

    #[test]
    fn valid_uris_follow_the_loose_rules() {
        assert!(check("com.myapp.topic1", Match::Exact));
        assert!(check("com.myapp.12", Match::Exact));
        for bad in ["", "com..topic", ".com", "com.", "com.my app", "com.my#"] {
            assert!(!check(bad, Match::Exact), "{bad:?}");
        }
        for prefix in ["", "com.myapp", "com.myapp."] {
            assert!(check(prefix, Match::Prefix), "{prefix:?}");
        }
        assert!(!check("com..myapp", Match::Prefix));
        for wildcard in ["com.myapp..userevent", "..", "com.", ".x"] {
            assert!(check(wildcard, Match::Wildcard), "{wildcard:?}");
        }
        assert!(!check("", Match::Wildcard));
        assert!(!check("a. .b", Match::Wildcard));
    }

    /// The spec's examples: a prefix matches by characters, a wildcard by components.
    #[test]
    fn the_specs_examples_match_as_the_spec_says() {
        let m = map(&[(Match::Prefix, "com.myapp.topic.emergency")]);
        for uri in [
            "com.myapp.topic.emergency.11",
            "com.myapp.topic.emergency-low",
            "com.myapp.topic.emergency.category.severe",
            "com.myapp.topic.emergency",
        ] {
            assert_eq!(m.all(uri).count(), 1, "{uri}");
        }
        assert_eq!(m.all("com.myapp.topic.emergenc").count(), 0);
        let m = map(&[(Match::Wildcard, "com.myapp..userevent")]);
        for uri in [
            "com.myapp.foo.userevent",
            "com.myapp.bar.userevent",
            "com.myapp.a12.userevent",
        ] {
            assert_eq!(m.all(uri).count(), 1, "{uri}");
        }
        for uri in [
            "com.myapp.foo.userevent.bar",
            "com.myapp.foo.user",
            "com.myapp2.foo.userevent",
        ] {
            assert_eq!(m.all(uri).count(), 0, "{uri}");
        }
    }

    #[test]
    fn a_call_takes_exact_then_the_longest_prefix_then_the_most_specific_wildcard() {
        let m = map(&[
            (Match::Exact, "a.b.c.d"),
            (Match::Prefix, "a.b"),
            (Match::Prefix, "a.b.c"),
            (Match::Wildcard, "a...d"),
            (Match::Wildcard, "a.b..d"),
            (Match::Wildcard, "a..c.d"),
        ]);
        assert_eq!(m.best("a.b.c.d").map(|(_, p, _)| p), Some("a.b.c.d"));
        assert_eq!(m.best("a.b.c.x").map(|(_, p, _)| p), Some("a.b.c"));
        assert_eq!(m.best("a.b.x.y").map(|(_, p, _)| p), Some("a.b"));
        // Both have three filled components; a.b..d's first gap comes later.
        assert_eq!(m.best("a.x.c.d").map(|(_, p, _)| p), Some("a..c.d"));
        assert_eq!(m.best("a.x.y.d").map(|(_, p, _)| p), Some("a...d"));
        assert_eq!(m.best("z"), None);
        let m = map(&[(Match::Wildcard, "a.b..d"), (Match::Wildcard, "a..c.d")]);
        assert_eq!(m.best("a.b.c.d").map(|(_, p, _)| p), Some("a.b..d"));
    }

    #[test]
    fn an_event_reaches_every_matching_pattern() {
        let m = map(&[
            (Match::Exact, "a.b.c"),
            (Match::Prefix, ""),
            (Match::Prefix, "a."),
            (Match::Prefix, "a.b.c"),
            (Match::Wildcard, "a..c"),
            (Match::Wildcard, "..c"),
            (Match::Wildcard, "a.b"),
        ]);
        let mut hits: Vec<&str> = m.all("a.b.c").map(|(_, p, _)| p).collect();
        hits.sort();
        assert_eq!(hits, ["", "..c", "a.", "a..c", "a.b.c", "a.b.c"]);
    }

    #[test]
    fn entries_are_replaced_and_removed_by_policy_and_pattern() {
        let mut m = map(&[
            (Match::Exact, "a"),
            (Match::Prefix, "a"),
            (Match::Wildcard, "a."),
        ]);
        assert_eq!(m.len(), 3);
        assert_eq!(m.insert(Match::Wildcard, "a.", 9), Some(2));
        assert_eq!(m.get(Match::Wildcard, "a."), Some(&9));
        assert_eq!(m.remove(Match::Prefix, "a"), Some(1));
        assert_eq!(m.remove(Match::Prefix, "a"), None);
        assert_eq!(m.remove(Match::Wildcard, "a."), Some(9));
        assert_eq!(m.len(), 1);
        assert_eq!(m.iter().count(), 1);
        assert!(m.best("a.x").is_none());
    }

    #[test]
    fn prefixes_of_multibyte_uris_are_cut_at_character_boundaries() {
        let m = map(&[(Match::Prefix, "ré")]);
        assert_eq!(m.best("résumé").map(|(_, p, _)| p), Some("ré"));
    }
}
