//! wamp-cluster: the cluster layer of a clustered WAMP router.
//!
//! Nodes learn who is in the cluster and who is alive from gossip (the `chitchat` crate, over
//! UDP); each node publishes an immutable live view of the members and a consistent-hash ring
//! over them. Nodes forward WAMP messages to each other over TCP with acknowledgements, and
//! report the nodes that fail to answer. The same library runs as the `wamp-cluster` node
//! program and inside a router.
//!
//! # Layout
//!
//! - [`config`]: the configuration keys, their defaults, validation, and the layering of file,
//!   `WAMP_CLUSTER_*` environment variables and flags.
//! - [`membership`]: chitchat on a thread of its own; the [`LiveView`] derived from gossip by
//!   pure functions ([`membership::view`]), the ring ([`membership::ring`]), membership events
//!   and reachability reports.
//! - [`wamp`]: WAMP messages and values, and their JSON array form.
//! - [`wire`]: the node-to-node frames, their encoding and the handshake; the only module that
//!   knows the wire format.
//! - [`forward`]: the [`Forwarder`] (`forward`, `async_forward`, `receive_ack`, `broadcast`),
//!   pending acks, one outbound link per peer, the inbound listener, the [`Deliver`] trait, the
//!   [`Dispatcher`] worker pool, bad-node reports and probes.
//! - [`node`]: [`Node::builder`] starts membership, the forwarder and the admin API together
//!   from one [`Config`]; [`NodeHandle`] stops them.
//! - [`admin`]: the HTTP admin API and `/metrics`.
//! - [`traffic`]: test traffic and a record of it that survives `kill -9`, for checking a
//!   cluster under faults.
//! - [`security`]: the cluster secret: the keys derived from it, the proofs of the forwarding
//!   handshake and the sealing of gossip datagrams.
//! - [`tls`]: TLS on the forwarding connections.
//! - [`metrics`]: metric names and the Prometheus recorder.
//! - [`error`]: one error enum per layer.
//!
//! # How a message flows
//!
//! A router on node A calls [`Forwarder::forward`] with a PUBLISH, ERROR, INTERRUPT, INVOCATION
//! or RESULT for a peer on node B. The forwarder checks B is live in the [`LiveView`], registers
//! the pending ack, encodes a `Forward` frame and queues it on the link to B; the link's writer
//! sets the frame's time to live and writes it in a batch. B's listener decodes it and calls the
//! router's [`Deliver`] handler (for example a [`Dispatcher`]), then answers `Ack` or `Nack`. A's
//! link reads the answer and completes the pending entry; `forward` returns. If B does not
//! answer in time, or its connection fails, the call ends with a typed [`ForwardError`] and B is
//! reported unreachable: [`Membership`] takes it out of the broadcast targets, subscribers get a
//! [`BadNodeReport`], and background probes bring it back when it answers again.
//!
//! # How a membership change flows
//!
//! chitchat applies a gossip exchange → its live-nodes watcher fires on the gossip thread →
//! [`Membership`] reads chitchat's state, derives a new [`LiveView`], stores it in an `ArcSwap`
//! (read without a lock by [`Membership::view`]) and sends it to view watchers, then sends the
//! [`MembershipEvent`]s that lead to it and updates the metrics.

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(clippy::await_holding_lock)]

pub mod admin;
pub mod config;
mod delivery;
pub mod error;
pub mod forward;
pub mod log_limit;
pub mod membership;
pub mod metrics;
pub mod node;
mod node_id;
mod peer_id;
pub mod security;
mod shared_str;
pub mod tls;
pub mod traffic;
pub mod wamp;
pub mod wire;

pub use config::{Config, ForwardConfig, GossipConfig, LimitsConfig, TlsConfig};
pub use delivery::{Deliver, Delivery, Discard, NackReason, Verdict};
pub use error::{ConfigError, ForwardError, MembershipError, NodeError};
pub use forward::{
    AckId, BadNodeReport, BadReason, Broadcast, DeliveryCounters, DeliveryLog, Dispatcher,
    ForwardOptions, Forwarder, Protection,
};
pub use membership::{LiveView, Member, Membership, MembershipEvent, Ring, Status};
pub use node::{Node, NodeBuilder, NodeHandle};
pub use node_id::NodeId;
pub use peer_id::{PeerId, Realm, SessionId};

/// The version of wamp-cluster, published in gossip as `version`.
pub use membership::keys::THIS_VERSION as VERSION;
