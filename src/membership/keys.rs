//! The gossip keys each node publishes about itself, and how they are read back.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

/// TCP address the node's forwarder listens on.
pub const FORWARD_ADDR: &str = "forward_addr";
/// HTTP address of the node's admin API.
pub const ADMIN_ADDR: &str = "admin_addr";
/// The node's [`Status`].
pub const STATUS: &str = "status";
/// The version of wamp-cluster the node runs.
pub const VERSION: &str = "version";

/// The version of wamp-cluster this node runs, published in gossip under the key `version`.
pub const THIS_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The node's labels, as a JSON object of strings.
pub const LABELS: &str = "labels";

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started, not yet ready to take traffic.
    #[default]
    Joining,
    /// Member of the cluster, takes traffic.
    Ready,
    /// Leaving gracefully: takes no new traffic.
    Leaving,
}

impl Status {
    /// The value published in gossip.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Joining => "joining",
            Status::Ready => "ready",
            Status::Leaving => "leaving",
        }
    }

    /// Reads a gossiped value. An unknown value (from a newer version) reads as `Joining`: such
    /// a node takes no traffic until it says `ready`.
    pub fn parse(value: &str) -> Status {
        match value {
            "ready" => Status::Ready,
            "leaving" => Status::Leaving,
            _ => Status::Joining,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node published about itself, read from its gossip keys. Values that do not parse are
/// treated as absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeKeys {
    /// `FORWARD_ADDR`
    pub forward_addr: Option<SocketAddr>,
    /// `ADMIN_ADDR`
    pub admin_addr: Option<SocketAddr>,
    /// `STATUS`; `Joining` when absent.
    pub status: Status,
    /// `VERSION`
    pub version: Option<String>,
    /// `LABELS`
    pub labels: BTreeMap<String, String>,
}

impl NodeKeys {
    /// Reads the keys from a node's key-value pairs; other keys are ignored.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> NodeKeys {
        let mut keys = NodeKeys::default();
        for (key, value) in pairs {
            match key {
                FORWARD_ADDR => keys.forward_addr = value.parse().ok(),
                ADMIN_ADDR => keys.admin_addr = value.parse().ok(),
                STATUS => keys.status = Status::parse(value),
                VERSION => keys.version = Some(value.to_owned()),
                LABELS => keys.labels = serde_json::from_str(value).unwrap_or_default(),
                _ => {}
            }
        }
        keys
    }

    /// The key-value pairs to publish.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = vec![(STATUS.to_owned(), self.status.as_str().to_owned())];
        if let Some(addr) = self.forward_addr {
            pairs.push((FORWARD_ADDR.to_owned(), addr.to_string()));
        }
        if let Some(addr) = self.admin_addr {
            pairs.push((ADMIN_ADDR.to_owned(), addr.to_string()));
        }
        if let Some(version) = &self.version {
            pairs.push((VERSION.to_owned(), version.clone()));
        }
        let labels = serde_json::to_string(&self.labels).unwrap_or_else(|_| "{}".into());
        pairs.push((LABELS.to_owned(), labels));
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_keys_read_back_the_same() {
        let keys = NodeKeys {
            forward_addr: Some("127.0.0.1:7947".parse().unwrap()),
            admin_addr: Some("127.0.0.1:8080".parse().unwrap()),
            status: Status::Ready,
            version: Some("0.1.0".into()),
            labels: [("zone".to_string(), "a".to_string())].into(),
        };
        let pairs = keys.to_pairs();
        let read = NodeKeys::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(read, keys);
    }

    #[test]
    fn values_that_do_not_parse_read_as_absent() {
        let read = NodeKeys::parse([
            (FORWARD_ADDR, "not an address"),
            (STATUS, "dancing"),
            (LABELS, "[1,2]"),
        ]);
        assert_eq!(read, NodeKeys::default());
    }
}
