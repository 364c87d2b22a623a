//! Forwarding WAMP messages to other nodes over TCP, with acknowledgements.
//!
//! A message to another node goes through these steps: [`Forwarder::async_forward`] checks it
//! (forwardable, not local, the node live in the view), registers its pending ack, encodes its
//! frame and queues it on the node's link; the link's writer ([`outbound`]) sets the frame's
//! time to live, writes it in a batch and notes the connection it went out on; the receiving
//! node's listener ([`inbound`]) hands it to the [`Deliver`] handler and answers `Ack` or
//! `Nack`; the link's reader completes the pending entry; [`Forwarder::receive_ack`] takes the
//! outcome.
//!
//! - [`pending`]: the table of pending acks.
//! - `queue`: a link's send queue, bounded in frames and bytes.
//! - [`dispatcher`]: a worker pool behind that trait, ordered per session.
//! - [`delivery_log`]: a handler that counts deliveries, duplicates and reordering.
//! - [`stats`]: the sending side's counters per peer.
//! - [`outbound`]: one link per peer: dial, handshake, queue, batched writes, redial.
//! - [`inbound`]: the listener: handshake, delivery in arrival order, batched acks.

pub mod delivery_log;
pub mod dispatcher;
pub mod inbound;
pub mod outbound;
pub mod pending;
mod queue;
pub mod stats;
mod stream;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use delivery_log::{DeliveryCounters, DeliveryLog};
pub use dispatcher::Dispatcher;

use crate::config::{ForwardConfig, LimitsConfig};
use crate::delivery::Deliver;
use crate::error::ForwardError;
use crate::membership::Membership;
use crate::peer_id::PeerId;
use crate::wamp::WampMessage;
use crate::wire::{self, Frame, FrameCodec};
use crate::NodeId;
use outbound::{Link, Offered};
use pending::Pending;

/// The links by peer, looked up on every send: hashed with foldhash, several times cheaper
/// than the standard library's SipHash for short keys (the keys are member ids, not chosen by
/// whoever sends us frames).
type Links = HashMap<NodeId, Arc<Link>, foldhash::fast::RandomState>;

/// How often the pending-ack and queue-depth gauges are set, and counters of peers that left
/// are dropped.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// The longest pause between two sweeps of the pending acks (they run sooner when an entry
/// is due sooner).
const LONGEST_SWEEP_PAUSE: Duration = GAUGE_INTERVAL;

/// How often the nodes reported unreachable are considered for a probe; also the first pause
/// before one.
const PROBE_TICK: Duration = Duration::from_millis(100);

/// The longest timeout a call may have; longer ones are cut to it (a day: an "infinite"
/// timeout must not overflow the clock).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Bad-node reports a subscriber may fall behind by before it loses the oldest.
pub const REPORT_CHANNEL_CAPACITY: usize = 1024;

/// The id of a pending ack, from [`Forwarder::async_forward`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckId(pub u64);

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct ForwardOptions {
    /// How long to wait for the ack; `forward.ack_timeout_ms` when `None`.
    pub timeout: Option<Duration>,
    /// Fail at once with `QueueFull` rather than wait for room in a full send queue.
    pub fail_if_full: bool,
}

/// Why a node was reported bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadReason {
    /// No ack within the timeout.
    AckTimeout,
    /// Connecting or the handshake failed.
    ConnectFailed(String),
    /// An established connection broke.
    ConnectionLost(String),
}

impl std::fmt::Display for BadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadReason::AckTimeout => f.write_str("ack timeout"),
            BadReason::ConnectFailed(why) => write!(f, "connect failed: {why}"),
            BadReason::ConnectionLost(why) => write!(f, "connection lost: {why}"),
        }
    }
}

/// A node became unreachable from this one (one report per transition, not per failure).
#[derive(Debug, Clone, PartialEq)]
pub struct BadNodeReport {
    /// The node.
    pub node: NodeId,
    /// Why.
    pub reason: BadReason,
    /// When.
    pub at: SystemTime,
}

/// The outcome of a broadcast: the nodes that acked and those that did not, each with why.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Broadcast {
    /// Nodes that acked, in the order given.
    pub good: Vec<NodeId>,
    /// Nodes that did not, in the order given.
    pub bad: Vec<(NodeId, ForwardError)>,
}

/// The forwarder of one node. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) self_id: NodeId,
    pub(crate) cluster_id: String,
    pub(crate) generation: u64,
    pub(crate) config: ForwardConfig,
    pub(crate) limits: LimitsConfig,
    pub(crate) protection: Protection,
    pub(crate) membership: Membership,
    pub(crate) pending: Pending,
    links: Mutex<Links>,
    /// Counters per peer; kept across links, dropped when the peer leaves the view.
    stats: Mutex<HashMap<NodeId, Arc<stats::PeerStats>>>,
    reports: broadcast::Sender<BadNodeReport>,
    pub(crate) shutdown: CancellationToken,
    /// Set just before `shutdown` is cancelled: read on every send, where the token's own
    /// check would take its lock, a line the tasks waiting on it share.
    stopping: AtomicBool,
    /// Limits the log lines about what peers send.
    pub(crate) bad_input_log: crate::log_limit::Limiter,
    pub(crate) tasks: TaskTracker,
    local_addr: SocketAddr,
}

/// What protects a forwarder's connections: with keys, each handshake proves that both sides
/// know the cluster secret; with TLS, connections are encrypted and certificates checked
/// against node ids. Neither by default.
#[derive(Debug, Clone, Default)]
pub struct Protection {
    /// The keys of the cluster secret.
    pub keys: Option<crate::security::ClusterKeys>,
    /// TLS settings.
    pub tls: Option<crate::tls::Tls>,
}

impl Forwarder {
    /// Starts the forwarder on a bound listener; inbound messages go to `deliver`.
    pub fn start(
        config: ForwardConfig,
        limits: LimitsConfig,
        protection: Protection,
        listener: TcpListener,
        cluster_id: String,
        membership: Membership,
        deliver: Arc<dyn Deliver>,
    ) -> std::io::Result<Forwarder> {
        let local_addr = listener.local_addr()?;
        let (reports, _) = broadcast::channel(REPORT_CHANNEL_CAPACITY);
        let inner = Arc::new(Inner {
            self_id: membership.node_id().clone(),
            generation: membership.generation(),
            cluster_id,
            config,
            limits,
            protection,
            membership,
            pending: Pending::default(),
            links: Mutex::new(Links::default()),
            stats: Mutex::new(HashMap::new()),
            reports,
            shutdown: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            bad_input_log: crate::log_limit::Limiter::new(inbound::BAD_INPUT_LINES_PER_SEC),
            tasks: TaskTracker::new(),
            local_addr,
        });
        inner
            .tasks
            .spawn(inbound::listen(inner.clone(), listener, deliver));
        inner.tasks.spawn(sweep(inner.clone()));
        inner.tasks.spawn(probe_unreachable(inner.clone()));
        info!(node = %inner.self_id, %local_addr, "forwarder listening");
        Ok(Forwarder { inner })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Sends `message` to `to.node` and returns once it is queued, with the id to pass to
    /// [`Forwarder::receive_ack`]. The pending ack is registered before the frame is queued.
    ///
    /// The peer ids and the message are taken by value or by reference: they are encoded as
    /// the call queues the frame, never kept, so a caller that keeps its own need not clone.
    pub async fn async_forward(
        &self,
        from: impl Borrow<PeerId>,
        to: impl Borrow<PeerId>,
        message: impl Borrow<WampMessage>,
        options: &ForwardOptions,
    ) -> Result<AckId, ForwardError> {
        let (now, deadline) = self.inner.deadline(options);
        let (from, to, message) = (from.borrow(), to.borrow(), message.borrow());
        self.inner
            .send(from, to, message, now, deadline, options.fail_if_full)
            .await
    }

    /// Waits at most `timeout` for the outcome of an [`Forwarder::async_forward`]. An id that
    /// was never issued, was already received or expired is `UnknownAck`.
    pub async fn receive_ack(&self, id: AckId, timeout: Duration) -> Result<(), ForwardError> {
        // An outcome already in: no clock, no wait.
        if let Some(outcome) = self.inner.pending.take_done(id.0) {
            return outcome;
        }
        let until = Instant::now() + timeout.min(MAX_TIMEOUT);
        self.inner.receive(id.0, until, true).await
    }

    /// Sends `message` and waits for its ack (at most the timeout of `options`). Takes its
    /// arguments by value or by reference, as [`Forwarder::async_forward`] does.
    pub async fn forward(
        &self,
        from: impl Borrow<PeerId>,
        to: impl Borrow<PeerId>,
        message: impl Borrow<WampMessage>,
        options: &ForwardOptions,
    ) -> Result<(), ForwardError> {
        let (now, deadline) = self.inner.deadline(options);
        let (from, to, message) = (from.borrow(), to.borrow(), message.borrow());
        let id = self
            .inner
            .send(from, to, message, now, deadline, options.fail_if_full)
            .await?;
        self.inner.receive(id.0, deadline, true).await
    }

    /// Sends `message` to every node of `nodes` at once and waits for all acks under one shared
    /// deadline (waiting for room in a full queue counts against it too). `good` and `bad` keep
    /// the order of `nodes`; this node, if listed, is bad with `LocalDestination`. The message is
    /// encoded once per node; `to` addresses the node as a whole (realm of `from`,
    /// no session).
    pub async fn broadcast(
        &self,
        from: &PeerId,
        nodes: &[NodeId],
        message: &WampMessage,
        options: &ForwardOptions,
    ) -> Broadcast {
        let (now, deadline) = self.inner.deadline(options);
        let calls = nodes.iter().map(|node| async move {
            let to = PeerId::node(from.realm.clone(), node.clone());
            let id = self
                .inner
                .send(from, &to, message, now, deadline, options.fail_if_full)
                .await?;
            self.inner.receive(id.0, deadline, true).await
        });
        let outcomes = futures_util::future::join_all(calls).await;
        let mut result = Broadcast::default();
        for (node, outcome) in nodes.iter().zip(outcomes) {
            match outcome {
                Ok(()) => result.good.push(node.clone()),
                Err(err) => result.bad.push((node.clone(), err)),
            }
        }
        result
    }

    /// [`Forwarder::broadcast`] to the live view's broadcast targets (ready, live, reachable,
    /// not self); the lists come sorted by node id.
    pub async fn broadcast_live(
        &self,
        from: &PeerId,
        message: &WampMessage,
        options: &ForwardOptions,
    ) -> Broadcast {
        let targets = self.inner.membership.view().broadcast_targets().to_vec();
        self.broadcast(from, &targets, message, options).await
    }

    /// Sends a ping to `node` and waits at most `timeout` for the pong; returns the round trip.
    /// A pong makes a node reported unreachable reachable again.
    pub async fn probe(&self, node: &NodeId, timeout: Duration) -> Result<Duration, ForwardError> {
        self.inner.probe(node, timeout).await
    }

    /// Bad-node reports from now on.
    pub fn subscribe_reports(&self) -> broadcast::Receiver<BadNodeReport> {
        self.inner.reports.subscribe()
    }

    /// The forwarding counters of every peer this node has sent to and that is still a member.
    pub fn stats(&self) -> std::collections::BTreeMap<NodeId, stats::PeerCounters> {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(node, stats)| (node.clone(), stats.counters()))
            .collect()
    }

    /// Pending acks right now (finished outcomes not yet taken included).
    pub fn pending_acks(&self) -> usize {
        self.inner.pending.len()
    }

    /// Asks every task to stop without waiting.
    pub(crate) fn signal_stop(&self) {
        self.inner.stop();
    }

    /// Stops: fails every pending ack with `ShuttingDown`, closes the links and the listener,
    /// and waits (at most `timeout`) for its tasks.
    pub async fn shutdown(&self, timeout: Duration) {
        self.inner.stop();
        self.inner.pending.fail_all(&ForwardError::ShuttingDown);
        self.inner.tasks.close();
        if tokio::time::timeout(timeout, self.inner.tasks.wait())
            .await
            .is_err()
        {
            warn!("forwarder tasks did not stop in time");
        }
    }
}

impl Inner {
    fn links(&self) -> MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn send(
        self: &Arc<Self>,
        from: &PeerId,
        to: &PeerId,
        message: &WampMessage,
        now: Instant,
        deadline: Instant,
        fail_if_full: bool,
    ) -> Result<AckId, ForwardError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(ForwardError::ShuttingDown);
        }
        if !message.is_forwardable() {
            return Err(ForwardError::NotForwardable {
                message_type: message.name(),
            });
        }
        let node = to.node.clone();
        if node == self.self_id {
            return Err(ForwardError::LocalDestination);
        }
        if !message.within_depth() {
            return Err(ForwardError::TooDeep {
                max: crate::wamp::MAX_DEPTH,
            });
        }
        let link = self.live_link(&node)?;
        let max = self.config.max_frame_bytes;
        // The time to live is set as the frame is written.
        let encode = |id, offer: &mut dyn FnMut(&[u8]) -> Offered| {
            wire::encode_forward(id, from, to, message, max, offer)
        };
        match self
            .enqueue(&node, link, now, deadline, fail_if_full, encode)
            .await
        {
            Ok((id, link)) => {
                link.stats.sent();
                // Like tokio's own channels: a caller that queues message after message without
                // ever waiting yields now and then, so that the link's writer (woken on this
                // worker) runs. Only once queued: a yield before would let an overlapping call
                // of the same caller take its place in the queue.
                tokio::task::consume_budget().await;
                Ok(AckId(id))
            }
            Err(err) => {
                self.peer_stats(&node).failed(&err, 1);
                Err(err)
            }
        }
    }

    /// Registers a pending entry (sent at `now`) and has `encode` encode its frame and offer
    /// it to `link`'s queue (it goes in at once, or comes back owned to wait for room). On any
    /// failure the entry is removed again.
    async fn enqueue(
        self: &Arc<Self>,
        node: &NodeId,
        link: Arc<Link>,
        now: Instant,
        deadline: Instant,
        fail_if_full: bool,
        encode: impl FnOnce(u64, &mut dyn FnMut(&[u8]) -> Offered) -> Result<Offered, wire::WireError>,
    ) -> Result<(u64, Arc<Link>), ForwardError> {
        let max = self.limits.max_pending_acks_per_peer.get();
        if link.peer().pending() >= max {
            let node = node.clone();
            return Err(ForwardError::TooManyPending { node, max });
        }
        // An outcome nobody takes is kept for as long again as the call's timeout.
        let retain_until = deadline + deadline.saturating_duration_since(now);
        let id = self
            .pending
            .register(link.peer(), now, deadline, retain_until);
        let mut offer = |frame: &[u8]| link.offer(id, deadline, fail_if_full, frame);
        let offered = match encode(id, &mut offer) {
            Ok(offered) => offered,
            Err(err) => {
                self.pending.cancel(id);
                let max = self.config.max_frame_bytes;
                return Err(match err {
                    wire::WireError::TooLarge { len, max } => ForwardError::TooLarge { len, max },
                    other => {
                        warn!(error = %other, "a message could not be encoded");
                        ForwardError::TooLarge { len: 0, max }
                    }
                });
            }
        };
        let queued = match offered {
            Offered::Queued => Ok(()),
            Offered::Wait(item) => link.enqueue(item, deadline).await,
            Offered::Refused(err) => Err(err),
        };
        if let Err(err) = queued {
            self.pending.cancel(id);
            return Err(err);
        }
        Ok((id, link))
    }

    /// Sends a ping to `node` and waits at most `timeout` for its pong; returns the round trip.
    /// A pong makes the node reachable again.
    pub(crate) async fn probe(
        self: &Arc<Self>,
        node: &NodeId,
        timeout: Duration,
    ) -> Result<Duration, ForwardError> {
        if *node == self.self_id {
            return Err(ForwardError::LocalDestination);
        }
        let link = self.live_link(node)?;
        let start = Instant::now();
        let deadline = start + timeout.min(MAX_TIMEOUT);
        let max = self.config.max_frame_bytes;
        let ping = |id, offer: &mut dyn FnMut(&[u8]) -> Offered| {
            let mut bytes = BytesMut::new();
            FrameCodec::new(max)
                .encode(&Frame::Ping { id }, &mut bytes)
                .map(|()| offer(&bytes))
        };
        let (id, _) = self
            .enqueue(node, link, start, deadline, false, ping)
            .await?;
        // A probe's timeout is reported, but not counted as a failed forward.
        self.receive(id, deadline, false).await?;
        Ok(start.elapsed())
    }

    /// Waits for entry `id` until `until`; a timeout past the entry's deadline reports the
    /// node, and counts a failed forward when `count`.
    async fn receive(&self, id: u64, until: Instant, count: bool) -> Result<(), ForwardError> {
        let (outcome, timed_out_node) = self.pending.wait(id, until).await;
        if let Some(node) = timed_out_node {
            if count {
                self.timed_out(&node, 1);
            } else {
                self.report_bad(&node, BadReason::AckTimeout);
            }
        }
        outcome
    }

    /// Tells every task to stop.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.shutdown.cancel();
    }

    /// The time now, and the deadline of a call with these options made now.
    fn deadline(&self, options: &ForwardOptions) -> (Instant, Instant) {
        let timeout = options.timeout.unwrap_or(self.config.ack_timeout_ms);
        let now = Instant::now();
        (now, now + timeout.min(MAX_TIMEOUT))
    }

    /// Counts `count` timeouts of messages to `node` and reports it bad.
    fn timed_out(&self, node: &NodeId, count: u64) {
        let timeout = ForwardError::Timeout { node: node.clone() };
        self.peer_stats(node).failed(&timeout, count);
        self.report_bad(node, BadReason::AckTimeout);
    }

    /// The counters of `node`, created if there are none.
    fn peer_stats(&self, node: &NodeId) -> Arc<stats::PeerStats> {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats
            .entry(node.clone())
            .or_insert_with(|| Arc::new(stats::PeerStats::new(&self.self_id, node)))
            .clone()
    }

    /// The link to `node` if it is live in the view (with a forward address), started if there
    /// is none. A link remembers the last view it was found live in, so that sending again
    /// under the same view does not look the node up again.
    fn live_link(self: &Arc<Self>, node: &NodeId) -> Result<Arc<Link>, ForwardError> {
        let mut links = self.links();
        let link = links.get(node).filter(|l| !l.is_closed());
        if let Some(link) = link.filter(|l| l.live_in() == self.membership.view_epoch()) {
            return Ok(link.clone());
        }
        let view = self.membership.peek_view();
        let epoch = view.epoch();
        let addr = view
            .member(node.as_str())
            .filter(|m| m.live)
            .and_then(|m| m.forward_addr)
            .ok_or_else(|| ForwardError::UnknownNode { node: node.clone() })?;
        if let Some(link) = link {
            link.set_live_in(epoch);
            return Ok(link.clone());
        }
        let stats = self.peer_stats(node);
        let link = Link::start(self.clone(), node.clone(), addr, stats);
        link.set_live_in(epoch);
        links.insert(node.clone(), link.clone());
        Ok(link)
    }

    /// Sets the gauges and drops the counters and closed links of peers no longer in the view.
    fn update_gauges(&self) {
        metrics::gauge!(crate::metrics::PENDING_ACKS, "node" => self.self_id.to_string())
            .set(self.pending.len() as f64);
        let view = self.membership.view();
        let mut links = self.links();
        links.retain(|_, link| !link.is_closed());
        for link in links.values() {
            link.stats.queue_depth.set(link.queued() as f64);
        }
        drop(links);
        self.stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|node, _| view.member(node.as_str()).is_some());
    }

    /// Reports `node` unreachable: to membership, and on the transition to subscribers and the
    /// log.
    pub(crate) fn report_bad(&self, node: &NodeId, reason: BadReason) {
        // A node that announced its leave closes its connections on purpose: not a bad node.
        let view = self.membership.view();
        if view
            .member(node.as_str())
            .is_some_and(|m| m.status == crate::membership::Status::Leaving)
        {
            return;
        }
        if self
            .membership
            .report_unreachable(node.as_str(), reason.to_string())
        {
            warn!(node = %self.self_id, peer = %node, %reason, "node reported bad");
            metrics::counter!(
                crate::metrics::BAD_NODE_REPORTS,
                "node" => self.self_id.to_string(),
                "peer" => node.to_string(),
                "reason" => match reason {
                    BadReason::AckTimeout => "ack_timeout",
                    BadReason::ConnectFailed(_) => "connect_failed",
                    BadReason::ConnectionLost(_) => "connection_lost",
                }
            )
            .increment(1);
            let _ = self.reports.send(BadNodeReport {
                node: node.clone(),
                reason,
                at: SystemTime::now(),
            });
        }
    }

    /// The node answered: reachable again if it was reported.
    pub(crate) fn report_good(&self, node: &NodeId) {
        self.membership.report_reachable(node.as_str());
    }
}

/// Milliseconds of a timeout as a frame's time to live.
pub(crate) fn ttl_ms(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX)
}

/// Probes, with backoff, the nodes this node reported unreachable while gossip still shows them
/// live, so that they become reachable again without any traffic from the application.
async fn probe_unreachable(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(PROBE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per node: when to probe next, and the pause after the next failure.
    let mut schedule: HashMap<NodeId, (Instant, Duration)> = HashMap::new();
    let mut views = inner.membership.watch_view();
    loop {
        if schedule.is_empty() {
            // Nothing unreachable: no ticking, until a view may say otherwise.
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                changed = views.changed() => {
                    if changed.is_err() {
                        // Membership stopped: no more views; look now and then.
                        tokio::time::sleep(PROBE_TICK).await;
                    }
                }
            }
        } else {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
        }
        let view = views.borrow_and_update().clone();
        let unreachable: Vec<NodeId> = view
            .members()
            .iter()
            .filter(|m| m.live && !m.reachable && m.node_id != inner.self_id)
            .map(|m| m.node_id.clone())
            .collect();
        schedule.retain(|node, _| unreachable.contains(node));
        let now = Instant::now();
        let due: Vec<NodeId> = unreachable
            .into_iter()
            .filter(|node| {
                let (at, _) = schedule
                    .entry(node.clone())
                    .or_insert((now + PROBE_TICK, PROBE_TICK));
                *at <= now
            })
            .collect();
        let timeout = inner.config.connect_timeout_ms;
        // Each link's signs of life before its probe.
        let before: Vec<Option<(Arc<Link>, u64)>> = {
            let links = inner.links();
            due.iter()
                .map(|node| links.get(node).map(|l| (l.clone(), l.activity())))
                .collect()
        };
        let probes = due.iter().map(|node| inner.probe(node, timeout));
        let results = futures_util::future::join_all(probes).await;
        for ((node, result), before) in due.into_iter().zip(results).zip(before) {
            match result {
                Ok(_) => {
                    schedule.remove(&node);
                }
                Err(err) => {
                    // A connection that did not carry the pong back, and read nothing else
                    // meanwhile, is replaced (a probe of the admin API, whose timeout the
                    // caller picks, does not do this).
                    if let (ForwardError::Timeout { .. }, Some((link, before))) = (err, before) {
                        link.reset_if_silent_since(before);
                    }
                    if let Some((at, backoff)) = schedule.get_mut(&node) {
                        *backoff = (*backoff * 2).min(inner.config.max_redial_backoff_ms);
                        *at = Instant::now() + *backoff;
                    }
                }
            }
        }
    }
}

/// Times out pending acks nobody waits for (reporting their nodes) and drops old outcomes.
async fn sweep(inner: Arc<Inner>) {
    let mut last_gauges = Instant::now();
    loop {
        let now = Instant::now();
        let swept = inner.pending.sweep(now);
        let mut counts: HashMap<&NodeId, u64> = HashMap::new();
        for node in &swept.timed_out {
            *counts.entry(node).or_default() += 1;
        }
        for (node, count) in counts {
            inner.timed_out(node, count);
        }
        if last_gauges.elapsed() >= GAUGE_INTERVAL {
            last_gauges = Instant::now();
            inner.update_gauges();
        }
        let next = inner.pending.next_sweep(now, LONGEST_SWEEP_PAUSE);
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next.min(last_gauges + GAUGE_INTERVAL)) => {}
            _ = inner.pending.sweep_wanted() => {}
        }
    }
}
