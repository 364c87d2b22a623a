//! The name of a node: cheap to clone, compared and ordered as a string.

use std::sync::Arc;

/// A node id (`node_id` in the configuration). Clones share one allocation, and so do the ids
/// decoded on one thread.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

crate::shared_str::shared_string!(NodeId, "a node id");

/// Longest node id or cluster id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Whether `id` is a valid node id or cluster id: 1 to [`MAX_ID_LEN`] bytes of letters,
/// digits, `.`, `_` and `-`; why not, if it is not. The same rules hold for ids in the
/// configuration and ids that come from the network.
pub(crate) fn check(id: &str) -> Result<(), String> {
    if id.is_empty() {
        Err("must be set".to_string())
    } else if id.len() > MAX_ID_LEN {
        Err(format!("longer than {MAX_ID_LEN} bytes"))
    } else if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Err(format!(
            "`{id}` contains {c:?}; use letters, digits, '.', '_' and '-'"
        ))
    } else {
        Ok(())
    }
}

/// The DNS name a node id stands for in a TLS certificate, or why it cannot stand for one.
pub(crate) fn dns_name(node_id: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    match rustls::pki_types::ServerName::try_from(node_id.to_owned()) {
        Ok(name @ rustls::pki_types::ServerName::DnsName(_)) => Ok(name),
        _ => Err(format!(
            "node id `{node_id}` is not a DNS name, so no certificate can name it"
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde::{Serialize, Serializer};

    use super::*;

    fn decode(id: &NodeId) -> NodeId {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(id, config).unwrap();
        bincode::serde::decode_from_slice(&bytes, config).unwrap().0
    }

    #[test]
    fn a_node_id_decoded_again_shares_the_first_ones_string() {
        let first = decode(&NodeId::from("node-a"));
        let again = decode(&NodeId::from("node-a"));
        assert_eq!(first, again);
        assert!(Arc::ptr_eq(&first.0, &again.0));
        // More distinct ids than the cache holds still decode right.
        for i in 0..3 * crate::shared_str::RECENT {
            let id = NodeId::from(format!("node-{i}"));
            assert_eq!(decode(&id), id);
        }
        assert_eq!(decode(&NodeId::from("node-a")), first);
    }

    #[test]
    fn an_id_that_is_not_utf8_is_refused() {
        let config = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(serde_bytes_of(&[b'n', 0xff]), config).unwrap();
        let decoded = bincode::serde::decode_from_slice::<NodeId, _>(&bytes, config);
        assert!(decoded.is_err(), "{decoded:?}");
        // The same bytes as a str are an id.
        let bytes = bincode::serde::encode_to_vec("n-1", config).unwrap();
        let (id, _): (NodeId, _) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(id, NodeId::from("n-1"));
    }

    /// Bytes serialized as serde bytes (length, then the bytes), as a str is on the wire.
    fn serde_bytes_of(bytes: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(bytes)
    }
}
