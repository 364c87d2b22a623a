//! Forwarding WAMP messages to other nodes over TCP, with acknowledgements.
//!
//! A message to another node goes through these steps: [`Forwarder::async_forward`] checks it
//! (forwardable, not local, the node live in the view), registers its pending ack, encodes its
//! frame and queues it on the node's link; the link's writer (`link`) sets the frame's time to
//! live, writes it in a batch and notes the connection it went out on; the receiving node's
//! listener (`listener`) decides on it and hands it to the `Deliver` handler, and answers `Ack`
//! or `Nack` with the handler's verdict; the link's reader completes the pending entry;
//! [`Forwarder::receive_ack`] takes the outcome.
//!
//! The forwarder hands its links and listener a shared `context` (configuration, shutdown,
//! pending acks, the reporter of bad nodes) and is never called back by them.
//!
//! - `admission`: who holds the inbound connection slots, and who is closed to make room.
//! - `context`: what the forwarder's parts share.
//! - `handshake`: the handshake of both sides, with the cluster secret and TLS.
//! - `link`: one link per peer: dial, handshake, queue, batched writes, redial.
//! - `listener`: accepts connections, decides on each message, pipelined verdicts.
//! - `pending`: the table of pending acks.
//! - `queue`: a link's send queue, bounded in frames and bytes.
//! - `report`: bad-node reports, to membership and subscribers.
//! - `stats`: the counters per peer.
//! - `stream`: plain or TLS streams.
//! - [`dispatcher`]: a worker pool behind the `Deliver` trait, ordered per session.

mod admission;
mod context;
mod dispatcher;
mod handshake;
mod link;
mod listener;
mod pending;
mod queue;
mod report;
mod stats;
mod stream;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

pub use dispatcher::Dispatcher;
pub use report::{BadNodeReport, BadReason, REPORT_CHANNEL_CAPACITY};
pub use stats::PeerCounters;

pub(crate) use context::Protection;
pub use context::MAX_TIMEOUT;

use crate::config::{ForwardConfig, LimitsConfig};
use crate::delivery::Deliver;
use crate::error::ForwardError;
use crate::membership::{Membership, MembershipEvent};
use crate::peer_id::PeerId;
use crate::wamp::WampMessage;
use crate::wire;
use crate::NodeId;
use context::Context;
use link::{Link, Offered};
use stats::Received;

/// The links by peer, looked up on every send: hashed with foldhash, several times cheaper
/// than the standard library's SipHash for short keys (the keys are member ids, not chosen by
/// whoever sends us frames).
type Links = HashMap<NodeId, Arc<Link>, foldhash::fast::RandomState>;

/// How often the pending-ack and queue-depth gauges are set, and counters of peers that left
/// are dropped.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a leave looks whether the messages in flight have their outcomes.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(10);

/// The longest pause between two sweeps of the pending acks (they run sooner when an entry
/// is due sooner).
const LONGEST_SWEEP_PAUSE: Duration = GAUGE_INTERVAL;

/// How often the nodes reported unreachable are considered for a probe; also the first pause
/// before one.
const PROBE_TICK: Duration = Duration::from_millis(100);

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

struct Inner {
    ctx: Arc<Context>,
    links: Mutex<Links>,
    /// Counters per peer; kept across links, dropped when the peer leaves the view.
    stats: Mutex<HashMap<NodeId, Arc<stats::PeerStats>>>,
    /// Set just before `shutdown` is cancelled: read on every send, where the token's own
    /// check would take its lock, a line the tasks waiting on it share.
    stopping: AtomicBool,
    local_addr: SocketAddr,
}

impl Forwarder {
    /// A forwarder of `membership`'s node whose listener is bound to `local_addr`; it sends
    /// at once, and delivers once [`Forwarder::listen`] is called.
    pub(crate) fn new(
        config: ForwardConfig,
        limits: LimitsConfig,
        protection: Protection,
        cluster_id: String,
        membership: Membership,
        local_addr: SocketAddr,
    ) -> Forwarder {
        let ctx = Arc::new(Context::new(
            config, limits, protection, cluster_id, membership,
        ));
        let inner = Arc::new(Inner {
            ctx: ctx.clone(),
            links: Mutex::new(Links::default()),
            stats: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            local_addr,
        });
        let span = tracing::info_span!("forwarder", node = %ctx.node, generation = ctx.generation);
        ctx.tasks
            .spawn(sweep(inner.clone()).instrument(span.clone()));
        ctx.tasks
            .spawn(probe_unreachable(inner.clone()).instrument(span.clone()));
        ctx.tasks
            .spawn(reset_restarted(inner.clone()).instrument(span));
        Forwarder { inner }
    }

    /// Serves `listener`: messages from other nodes go to `deliver`.
    pub(crate) fn listen(&self, listener: TcpListener, deliver: Arc<dyn Deliver>) {
        let ctx = &self.inner.ctx;
        info!(node = %ctx.node, local_addr = %self.inner.local_addr, "forwarder listening");
        ctx.tasks
            .spawn(listener::listen(ctx.clone(), listener, deliver));
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
    /// was never issued, was already received or expired is `UnknownAck`. A wait that ends
    /// before the forward's own deadline (`Timeout`, or its future dropped) leaves the entry:
    /// a later `receive_ack` of the same id can still get the outcome.
    pub async fn receive_ack(&self, id: AckId, timeout: Duration) -> Result<(), ForwardError> {
        // An outcome already in: no clock, no wait.
        if let Some(outcome) = self.inner.ctx.pending.take_done(id.0) {
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
    /// no session). Takes `from` and the message by value or by reference, as
    /// [`Forwarder::forward`] does.
    pub async fn broadcast(
        &self,
        from: impl Borrow<PeerId>,
        nodes: &[NodeId],
        message: impl Borrow<WampMessage>,
        options: &ForwardOptions,
    ) -> Broadcast {
        let (from, message) = (from.borrow(), message.borrow());
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
        from: impl Borrow<PeerId>,
        message: impl Borrow<WampMessage>,
        options: &ForwardOptions,
    ) -> Broadcast {
        let targets = self
            .inner
            .ctx
            .membership
            .view()
            .broadcast_targets()
            .to_vec();
        self.broadcast(from, &targets, message, options).await
    }

    /// Sends a ping to `node` and waits at most `timeout` for the pong; returns the round trip.
    /// A pong makes a node reported unreachable reachable again.
    pub async fn probe(&self, node: &NodeId, timeout: Duration) -> Result<Duration, ForwardError> {
        self.inner.probe(node, timeout).await
    }

    /// Bad-node reports from now on.
    pub fn subscribe_reports(&self) -> broadcast::Receiver<BadNodeReport> {
        self.inner.ctx.reporter.subscribe()
    }

    /// The forwarding counters of every peer this node has sent to or received from, and that
    /// is still a member.
    pub fn stats(&self) -> std::collections::BTreeMap<NodeId, stats::PeerCounters> {
        let mut peers: std::collections::BTreeMap<NodeId, stats::PeerCounters> = self
            .inner
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(node, stats)| (node.clone(), stats.counters()))
            .collect();
        let received = self
            .inner
            .ctx
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (node, received) in received.iter() {
            received.add_to(peers.entry(node.clone()).or_default());
        }
        peers
    }

    /// Pending acks right now (finished outcomes not yet taken included).
    pub fn pending_acks(&self) -> usize {
        self.inner.ctx.pending.len()
    }

    /// Hands no more arriving messages to the handler (they are nacked `ShuttingDown`) while
    /// the connections go on writing the answers of those it has: the first step of a stop,
    /// before the handler drains.
    pub(crate) fn stop_delivering(&self) {
        self.inner
            .ctx
            .delivering
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// For a leave: takes no more messages to send (`ShuttingDown`), and waits until every
    /// message in flight has its outcome, at most `timeout`.
    pub(crate) async fn finish_in_flight(&self, timeout: Duration) {
        self.inner.stopping.store(true, Ordering::Release);
        let until = Instant::now() + timeout;
        while self.inner.ctx.pending.any_waiting() && Instant::now() < until {
            tokio::time::sleep(IN_FLIGHT_POLL).await;
        }
    }

    /// Stops: fails every pending ack with `ShuttingDown`, closes the links and the listener,
    /// and waits (at most `timeout`) for its tasks.
    pub(crate) async fn stop(&self, timeout: Duration) {
        self.inner.stop();
        self.inner.ctx.pending.fail_all(&ForwardError::ShuttingDown);
        self.inner.ctx.tasks.close();
        if tokio::time::timeout(timeout, self.inner.ctx.tasks.wait())
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
        if node == self.ctx.node {
            return Err(ForwardError::LocalDestination);
        }
        let link = self.live_link(&node)?;
        let max = self.ctx.config.max_frame_bytes;
        // The time to live is set as the frame is written.
        let encode = |id, offer: &mut dyn FnMut(&[u8]) -> Offered| {
            wire::encode_forward(id, from, to, message, max, offer).map_err(|err| match err {
                wire::EncodeError::TooLarge { len, max } => ForwardError::TooLarge { len, max },
                wire::EncodeError::TooDeep => ForwardError::TooDeep {
                    max: crate::wamp::MAX_DEPTH,
                },
            })
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
        encode: impl FnOnce(u64, &mut dyn FnMut(&[u8]) -> Offered) -> Result<Offered, ForwardError>,
    ) -> Result<(u64, Arc<Link>), ForwardError> {
        let max = self.ctx.limits.max_pending_acks_per_peer.get();
        if link.pending().count() >= max {
            let node = node.clone();
            return Err(ForwardError::TooManyPending { node, max });
        }
        // An outcome nobody takes is kept for as long again as the call's timeout.
        let retain_until = deadline + deadline.saturating_duration_since(now);
        let id = self
            .ctx
            .pending
            .register(link.pending(), now, deadline, retain_until);
        let mut offer = |frame: &[u8]| link.offer(id, deadline, fail_if_full, frame);
        let offered = match encode(id, &mut offer) {
            Ok(offered) => offered,
            Err(err) => {
                self.ctx.pending.cancel(id);
                return Err(err);
            }
        };
        let queued = match offered {
            Offered::Queued => Ok(()),
            Offered::Wait(item) => link.enqueue(item, deadline).await,
            Offered::Refused(err) => Err(err),
        };
        if let Err(err) = queued {
            self.ctx.pending.cancel(id);
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
        if *node == self.ctx.node {
            return Err(ForwardError::LocalDestination);
        }
        let link = self.live_link(node)?;
        let start = Instant::now();
        let deadline = start + timeout.min(MAX_TIMEOUT);
        let ping = |id, offer: &mut dyn FnMut(&[u8]) -> Offered| Ok(offer(&wire::ping(id)));
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
        let (outcome, timed_out_node) = self.ctx.pending.wait(id, until).await;
        if let Some(node) = timed_out_node {
            if count {
                self.timed_out(&node, 1);
            } else {
                self.ctx.reporter.bad(&node, BadReason::AckTimeout);
            }
        }
        outcome
    }

    /// Tells every task to stop.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.ctx.shutdown.cancel();
    }

    /// The time now, and the deadline of a call with these options made now.
    fn deadline(&self, options: &ForwardOptions) -> (Instant, Instant) {
        let timeout = options.timeout.unwrap_or(self.ctx.config.ack_timeout_ms);
        let now = Instant::now();
        (now, now + timeout.min(MAX_TIMEOUT))
    }

    /// Counts `count` timeouts of messages to `node` and reports it bad.
    fn timed_out(&self, node: &NodeId, count: u64) {
        let timeout = ForwardError::Timeout { node: node.clone() };
        self.peer_stats(node).failed(&timeout, count);
        self.ctx.reporter.bad(node, BadReason::AckTimeout);
    }

    /// The counters of `node`, created if there are none.
    fn peer_stats(&self, node: &NodeId) -> Arc<stats::PeerStats> {
        let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats
            .entry(node.clone())
            .or_insert_with(|| Arc::new(stats::PeerStats::new(&self.ctx.node, node)))
            .clone()
    }

    /// The link to `node` if it is live in the view (with a forward address), started if there
    /// is none. A link remembers the last view it was found live in, so that sending again
    /// under the same view does not look the node up again.
    fn live_link(self: &Arc<Self>, node: &NodeId) -> Result<Arc<Link>, ForwardError> {
        let mut links = self.links();
        let link = links.get(node).filter(|l| !l.is_closed());
        if let Some(link) = link.filter(|l| l.live_in() == self.ctx.membership.view_epoch()) {
            return Ok(link.clone());
        }
        let view = self.ctx.membership.peek_view();
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
        let link = Link::start(self.ctx.clone(), node.clone(), addr, stats);
        link.set_live_in(epoch);
        links.insert(node.clone(), link.clone());
        Ok(link)
    }

    /// Publishes the counters and gauges, and drops the counters and closed links of peers no
    /// longer in the view.
    fn update_gauges(&self) {
        metrics::gauge!(crate::metrics::PENDING_ACKS, "node" => self.ctx.node.to_string())
            .set(self.ctx.pending.len() as f64);
        crate::metrics::touch_node_counters(self.ctx.node.as_str());
        let view = self.ctx.membership.view();
        let mut links = self.links();
        links.retain(|_, link| !link.is_closed());
        let queued: HashMap<NodeId, usize> = links
            .iter()
            .map(|(node, link)| (node.clone(), link.queued()))
            .collect();
        drop(links);
        let stats: Vec<(NodeId, Arc<stats::PeerStats>)> = {
            let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
            stats.retain(|node, _| view.member(node.as_str()).is_some());
            stats.iter().map(|(n, s)| (n.clone(), s.clone())).collect()
        };
        for (node, stats) in stats {
            stats.publish(queued.get(&node).copied());
        }
        // A peer's connections hold its counts while they serve, in the view or not yet; what
        // they read is published before the counts of a closed one go.
        let received: Vec<(NodeId, Arc<Received>)> = {
            let mut received = self
                .ctx
                .received
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let all = received
                .iter()
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect();
            received.retain(|node, received| {
                Arc::strong_count(received) > 1 || view.member(node.as_str()).is_some()
            });
            all
        };
        // Ids that are not members (yet) share one series: strangers cannot make new ones.
        let mut strangers = stats::Inbound::default();
        for (node, received) in received {
            let inbound = received.unpublished();
            match view.member(node.as_str()) {
                Some(_) => inbound.publish(&self.ctx.node, node.as_str()),
                None => strangers.add(inbound),
            }
        }
        if !strangers.is_empty() {
            strangers.publish(&self.ctx.node, stats::NON_MEMBER);
        }
    }
}

/// Resets the link to a node that restarted: its connection may reach the old process (paused,
/// not yet dead), which must not get what is meant for the new one.
async fn reset_restarted(inner: Arc<Inner>) {
    let mut events = inner.ctx.membership.subscribe_events();
    loop {
        let event = tokio::select! {
            _ = inner.ctx.shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(MembershipEvent::Restarted {
                node, generation, ..
            }) => {
                if let Some(link) = inner.links().get(&node) {
                    link.reset_unless_serving(generation);
                }
            }
            Ok(_) => {}
            // Events were missed: the dialer's generation check still refuses an old process
            // when its connection breaks or a probe resets it.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Probes, with backoff, the nodes this node reported unreachable while gossip still shows them
/// live, so that they become reachable again without any traffic from the application.
async fn probe_unreachable(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(PROBE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per node: when to probe next, and the pause after the next failure.
    let mut schedule: HashMap<NodeId, (Instant, Duration)> = HashMap::new();
    let mut views = inner.ctx.membership.watch_view();
    loop {
        if schedule.is_empty() {
            // Nothing unreachable: no ticking, until a view may say otherwise.
            tokio::select! {
                _ = inner.ctx.shutdown.cancelled() => return,
                changed = views.changed() => {
                    if changed.is_err() {
                        // Membership stopped: no more views; look now and then.
                        tokio::time::sleep(PROBE_TICK).await;
                    }
                }
            }
        } else {
            tokio::select! {
                _ = inner.ctx.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
        }
        let view = views.borrow_and_update().clone();
        let unreachable: Vec<NodeId> = view
            .members()
            .iter()
            .filter(|m| m.live && !m.reachable && m.node_id != inner.ctx.node)
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
        let timeout = inner.ctx.config.connect_timeout_ms;
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
                        *backoff =
                            link::next_backoff(*backoff, inner.ctx.config.max_redial_backoff_ms);
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
        let swept = inner.ctx.pending.sweep(now);
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
        let next = inner.ctx.pending.next_sweep(now, LONGEST_SWEEP_PAUSE);
        tokio::select! {
            _ = inner.ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(next.min(last_gauges + GAUGE_INTERVAL)) => {}
            _ = inner.ctx.pending.sweep_wanted() => {}
        }
    }
}
