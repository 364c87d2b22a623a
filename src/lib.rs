//! wamp-cluster: the cluster layer of a clustered WAMP router.
//!
//! Nodes learn who is in the cluster and who is alive from gossip (the `chitchat` crate, over
//! UDP); each node publishes an immutable live view of the members and a consistent-hash ring
//! over them. Nodes forward WAMP messages to each other over TCP with acknowledgements, and
//! report the nodes that fail to answer. The same library runs as the `wamp-cluster` node
//! program and inside a router.
//!
//! # Using it
//!
//! ```no_run
//! use wamp_cluster::{Config, Deliver, Delivery, Node, Stopped, Verdict};
//!
//! struct Router;
//!
//! impl Deliver for Router {
//!     fn deliver(&self, delivery: Delivery) -> Verdict {
//!         // Look up `delivery.to.session` and hand it the message, or refuse.
//!         Verdict::Accepted
//!     }
//! }
//!
//! # async fn run() -> Result<(), wamp_cluster::NodeError> {
//! let node = Node::builder(Config::new("node-1"), |_forwarder, _membership| Router)
//!     .start()
//!     .await?;
//! // … forward with `node.forwarder()`, watch `node.membership().watch_view()` …
//! match node.leave().await {
//!     Stopped::Failed(err) => eprintln!("the node failed: {err}"),
//!     stopped => println!("{stopped:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! From the bottom up; a module uses only those above it in this list, never one below
//! (`tests/layout.rs` checks that no file imports another that imports it back).
//!
//! - `node_id`, `peer_id` ([`NodeId`], [`PeerId`]) and [`wamp`] (WAMP messages, values, their
//!   JSON, msgpack and CBOR forms): the names and messages everything else speaks of.
//! - `delivery`: what crosses to a handler on another node: [`Delivery`], [`Verdict`],
//!   [`NackReason`], and the [`Deliver`] trait a router implements. `error`: one error enum per
//!   layer.
//! - `wire`: the node-to-node frames (`frame`), the codec, the reader that keeps long frames
//!   within the node's memory budget, and the hand-written fast paths of forwarded frames; the
//!   only place that knows the encoding.
//! - `security` (the cluster secret: keys, proofs, sealing, the replay guard) and
//!   [`log_limit`]. [`metrics`]: metric names and the Prometheus recorder.
//! - [`config`]: the keys, declared once ([`settings!`]) for file, environment and flags; their
//!   layering; pure validation.
//! - `tls`: TLS settings read from `[tls]`, certificates checked against node ids.
//! - `membership`: chitchat on a thread of its own; the [`LiveView`] derived from gossip by
//!   pure functions, the [`Ring`], [`MembershipEvent`]s, reachability reports, sealed gossip.
//! - `forward`: the [`Forwarder`]. Its parts get a shared `context` (identity, settings,
//!   pending acks, the `report`er of bad nodes, one shutdown signal), never the forwarder
//!   itself: `handshake` (both sides), `link` (one per peer: queue, batched writes, redial),
//!   `listener` (delivery in arrival order, pipelined verdicts), `admission` (who holds the
//!   inbound slots, and who makes room), `pending` (the ack table),
//!   `queue`, `stats`, `stream`, and the [`Dispatcher`] worker pool.
//! - `admin`: the HTTP admin API. `node`: [`Node::builder`] starts everything from one
//!   [`Config`]; [`NodeHandle`] and its `stop` task stop it, once.
//! - [`router`]: the WAMP router every node program runs, an embedder of this crate that uses
//!   only what it makes public (sessions, realms, dealer, broker, meta API, WebSocket and
//!   RawSocket). [`client`]: an async WAMP client.
//! - `testkit` (feature `testkit`): clusters in one process, a relay that cuts connections,
//!   test traffic and its invariants, charts, certificates.
//!
//! # How a message flows
//!
//! A router on node A calls [`Forwarder::forward`] with a PUBLISH, ERROR, INTERRUPT, INVOCATION
//! or RESULT for a peer on node B. The forwarder checks B is live in the [`LiveView`], registers
//! the pending ack, encodes a `Forward` frame and queues it on the link to B; the link's writer
//! sets the frame's time to live and writes it in a batch. B's listener decodes it, decides
//! (expired? forwardable? addressed to B? the newest connection from A?) and hands it to the
//! router's [`Deliver`] handler; the verdict (at once, or later from a [`Dispatcher`] worker)
//! becomes an `Ack` or a `Nack`, written in arrival order. A's link reads the answer and
//! completes the pending entry; `forward` returns. If B does not answer in time, or its
//! connection fails, the call ends with a typed [`ForwardError`] and B is reported
//! unreachable: [`Membership`] takes it out of the broadcast targets, subscribers get a
//! [`BadNodeReport`], and background probes bring it back when it answers again.
//!
//! # How a membership change flows
//!
//! chitchat applies a gossip exchange → its live-nodes watcher fires on the gossip thread →
//! [`Membership`] reads chitchat's state, derives a new [`LiveView`], stores it in an `ArcSwap`
//! (read without a lock by [`Membership::view`]) and sends it to view watchers, then sends the
//! [`MembershipEvent`]s that lead to it and updates the metrics.
//!
//! # How a node stops
//!
//! [`NodeHandle::leave`], `POST /cluster/leave`, [`NodeHandle::abort`] (or dropping the handle)
//! and a failure of membership all ask one task to stop the node; the first one wins. It stops
//! membership (a leave announces `leaving` and gossips a few rounds first), then hands no more
//! arriving messages to the handler (they are nacked `ShuttingDown`), lets the handler drain
//! what it accepted ([`Deliver::drain`]) while the connections still write its verdicts, then
//! stops the forwarder and the admin API, and publishes why: [`NodeHandle::stopped`] returns
//! it.

#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(clippy::await_holding_lock)]

mod admin;
pub mod client;
pub mod config;
mod delivery;
mod error;
mod forward;
pub mod log_limit;
mod membership;
pub mod metrics;
mod node;
mod node_id;
mod peer_id;
pub mod router;
mod security;
mod shared_str;
#[cfg(feature = "testkit")]
pub mod testkit;
mod tls;
pub mod wamp;
mod wire;

pub use config::{Config, ForwardConfig, GossipConfig, LimitsConfig, Secret, TlsConfig};
pub use delivery::{Deliver, Delivery, Discard, NackReason, Verdict};
pub use error::{ConfigError, ForwardError, MembershipError, NodeError};
pub use forward::{
    AckId, BadNodeReport, BadReason, Broadcast, Dispatcher, ForwardOptions, Forwarder,
    PeerCounters, MAX_TIMEOUT, REPORT_CHANNEL_CAPACITY,
};
pub use membership::{
    LiveView, Member, Membership, MembershipEvent, Ring, Status, EVENT_CHANNEL_CAPACITY,
};
pub use node::{Node, NodeBuilder, NodeHandle, Stopped};
pub use node_id::NodeId;
pub use peer_id::{PeerId, Realm, SessionId};
pub use tls::client_acceptor;

/// The version of wamp-cluster, published in gossip as `version`.
pub use membership::keys::THIS_VERSION as VERSION;
