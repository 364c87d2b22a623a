//! Error types of the library, one enum per layer.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A configuration that cannot be used. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file is not valid TOML, or holds an unknown key or a value of the wrong type; the
    /// message names the key and its line.
    #[error("{source_name}: {message}")]
    Parse {
        /// The file, or `config`.
        source_name: String,
        /// The parser's message.
        message: String,
    },
    /// No such configuration key.
    #[error("unknown configuration key `{key}`")]
    UnknownKey {
        /// The key as given.
        key: String,
    },
    /// An environment variable with the `WAMP_CLUSTER_` prefix names no key.
    #[error("environment variable {name} names no configuration key")]
    UnknownEnv {
        /// The variable.
        name: String,
    },
    /// A key has a bad value.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The key (with sections joined by `.`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Membership could not start, or stopped on its own.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MembershipError {
    /// The gossip socket or runtime could not be set up. Nothing is left running.
    #[error("cannot start gossip on {addr}: {message}")]
    Start {
        /// The gossip bind address.
        addr: SocketAddr,
        /// Why.
        message: String,
    },
    /// Another process gossips with this node's id and a newer generation. This node stopped
    /// gossiping: two processes must not share an id.
    #[error(
        "node id `{node_id}` is used by another process: this node (generation {generation}, \
         gossip {gossip_addr}) saw generation {other_generation} at {other_gossip_addr}; \
         this node stops"
    )]
    NodeIdConflict {
        /// The shared node id.
        node_id: String,
        /// This node's generation.
        generation: u64,
        /// This node's gossip address.
        gossip_addr: SocketAddr,
        /// The other process's generation.
        other_generation: u64,
        /// The other process's gossip address.
        other_gossip_addr: SocketAddr,
    },
    /// The gossip server stopped on an error (its socket broke).
    #[error("gossip stopped: {0}")]
    Gossip(String),
    /// Membership was already stopped.
    #[error("membership is stopped")]
    Stopped,
}

/// A node could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Membership failed.
    #[error(transparent)]
    Membership(#[from] MembershipError),
    /// The admin API could not bind its address.
    #[error("cannot bind admin API on {addr}: {source}")]
    AdminBind {
        /// The admin address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}
