//! Error types of the library, one enum per layer.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::delivery::NackReason;
use crate::NodeId;

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
    #[error("invalid `{key}`{}: {message}", from_where(.origin))]
    Invalid {
        /// The key (with sections joined by `.`).
        key: String,
        /// What is wrong with it.
        message: String,
        /// Where the value came from (`in node.toml`, `from WAMP_CLUSTER_…`, `from --…`),
        /// once the layers of the configuration added it.
        origin: Option<String>,
    },
}

fn from_where(origin: &Option<String>) -> String {
    origin
        .as_ref()
        .map(|origin| format!(" ({origin})"))
        .unwrap_or_default()
}

impl ConfigError {
    /// A bad value of `key`; where it came from is added by whoever knows
    /// ([`crate::config::Layers::locate`]).
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
            origin: None,
        }
    }
}

/// Membership could not start, or stopped on its own.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    /// The forward listener could not bind its address.
    #[error("cannot bind the forward listener on {addr}: {source}")]
    ForwardBind {
        /// The forward address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The admin API could not bind its address.
    #[error("cannot bind admin API on {addr}: {source}")]
    AdminBind {
        /// The admin address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

impl NodeError {
    pub(crate) fn admin_bind(addr: SocketAddr, source: io::Error) -> NodeError {
        NodeError::AdminBind { addr, source }
    }

    pub(crate) fn forward_bind(addr: SocketAddr, source: io::Error) -> NodeError {
        NodeError::ForwardBind { addr, source }
    }
}

/// Why a forward, a `receive_ack` or one node of a broadcast failed. Each variant says whether
/// the message may have been delivered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForwardError {
    /// Only PUBLISH, ERROR, INTERRUPT, INVOCATION and RESULT are forwarded. Nothing was sent.
    #[error("{message_type} is not forwarded between nodes")]
    NotForwardable {
        /// The message type's name.
        message_type: &'static str,
    },
    /// The destination is this node. Nothing was sent.
    #[error("the destination is this node")]
    LocalDestination,
    /// The node is not live in the view. Nothing was sent.
    #[error("node `{node}` is not a live member")]
    UnknownNode {
        /// The node.
        node: NodeId,
    },
    /// No ack within the timeout. The message may have been delivered.
    #[error("no ack from `{node}` in time; the message may have been delivered")]
    Timeout {
        /// The node.
        node: NodeId,
    },
    /// The connection broke after the message was written and before its ack. The message may
    /// have been delivered.
    #[error("connection to `{node}` lost before the ack; the message may have been delivered")]
    ConnectionLost {
        /// The node.
        node: NodeId,
    },
    /// The receiving node refused the message. It was not delivered.
    #[error("`{node}` refused the message: {reason}")]
    Rejected {
        /// The node.
        node: NodeId,
        /// Its reason.
        reason: NackReason,
    },
    /// The receiving node got the message after its time to live. It was not delivered.
    #[error("`{node}` received the message after its time to live; it was not delivered")]
    Expired {
        /// The node.
        node: NodeId,
    },
    /// The send queue to the node is full and the options asked not to wait. Nothing was sent.
    #[error("the send queue to `{node}` is full")]
    QueueFull {
        /// The node.
        node: NodeId,
    },
    /// As many messages to the node as `limits.max_pending_acks_per_peer` allows wait for their
    /// outcome (not acked yet, or acked and not taken). Nothing was sent: take outcomes
    /// (`receive_ack`) before sending more.
    #[error("{max} messages to `{node}` already wait for their outcome")]
    TooManyPending {
        /// The node.
        node: NodeId,
        /// The limit.
        max: usize,
    },
    /// The encoded message is larger than `forward.max_frame_bytes`. Nothing was sent.
    #[error("message of {len} bytes is larger than the limit of {max}")]
    TooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value in the message is nested deeper than [`crate::wamp::MAX_DEPTH`] levels, which no
    /// node decodes. Nothing was sent.
    #[error("a value is nested deeper than {max} levels")]
    TooDeep {
        /// The deepest nesting a node decodes.
        max: usize,
    },
    /// No pending ack has this id: never issued, already received, or expired.
    #[error("no pending ack {id}")]
    UnknownAck {
        /// The id.
        id: u64,
    },
    /// The forwarder is shutting down. The message may have been delivered if it was written.
    #[error("the forwarder is shutting down")]
    ShuttingDown,
}

impl ForwardError {
    /// The variant's name in snake case (`timeout`, `connection_lost`, …), as the admin API and
    /// metrics name it.
    pub fn name(&self) -> &'static str {
        match self {
            ForwardError::NotForwardable { .. } => "not_forwardable",
            ForwardError::LocalDestination => "local_destination",
            ForwardError::UnknownNode { .. } => "unknown_node",
            ForwardError::Timeout { .. } => "timeout",
            ForwardError::ConnectionLost { .. } => "connection_lost",
            ForwardError::Rejected { .. } => "rejected",
            ForwardError::Expired { .. } => "expired",
            ForwardError::QueueFull { .. } => "queue_full",
            ForwardError::TooManyPending { .. } => "too_many_pending",
            ForwardError::TooLarge { .. } => "too_large",
            ForwardError::TooDeep { .. } => "too_deep",
            ForwardError::UnknownAck { .. } => "unknown_ack",
            ForwardError::ShuttingDown => "shutting_down",
        }
    }
}
