//! Membership: who is in the cluster and who is alive, from chitchat gossip over UDP.
//!
//! [`Membership::start`] runs chitchat on a thread of its own with its own single-threaded
//! runtime, so that no forwarding load can starve the gossip timers (a node whose gossip stalls
//! for about a second is declared dead by every other node). On every change that gossip
//! reports, and on every reachability report, the [`LiveView`] is derived again by the pure
//! functions of [`view`] and published three ways: a lock-free snapshot ([`Membership::view`]),
//! a watch channel of snapshots and a broadcast channel of [`MembershipEvent`]s.
//!
//! - [`keys`]: the gossip keys a node publishes.
//! - [`view`]: members, the live view, events; derived from gossip.
//! - [`ring`]: consistent hashing over the live, ready members.

pub mod keys;
mod ring;
mod sealed;
pub(crate) mod view;

use sealed::SealedTransport;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use chitchat::transport::{Transport, UdpTransport};
use chitchat::{
    spawn_chitchat, Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig,
    ProtocolVersion,
};
use tokio::sync::{broadcast, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

pub use keys::{NodeKeys, Status};
pub use ring::Ring;
pub use view::{LiveView, Member, MembershipEvent};

use crate::config::Config;
use crate::error::MembershipError;
use crate::metrics as m;
use crate::security::ClusterKeys;
use crate::NodeId;
use view::{derive_view, diff_events, GossipNode, Unreachable, ViewInput};

/// Events a subscriber may fall behind by before it loses the oldest ones (it is told how many
/// with `RecvError::Lagged`).
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;

/// The view is also rebuilt this often without a gossip change, to notice dead nodes that
/// chitchat forgot.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait for the gossip thread to start (bind its socket, resolve seed names) or stop.
const THREAD_START_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Peers told of a status change at once, without waiting for the next gossip round (chitchat
/// gossips with 3 random live nodes per round; this is the same fan-out).
const ANNOUNCE_FANOUT: usize = 3;

/// Chitchat's failure detector ignores heartbeat intervals longer than this.
const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Heartbeat intervals the failure detector averages over.
const SAMPLING_WINDOW: usize = 1000;

/// The chitchat configuration of a node with this configuration and generation: gossip
/// protocol V1, the failure detector's initial interval equal to the gossip interval (so a
/// freshly joined node's crash is detected as fast as an old one's), and dead nodes forgotten
/// after `gossip.dead_node_grace_period_secs`.
pub fn chitchat_config(config: &Config, generation: u64) -> ChitchatConfig {
    let interval = config.gossip.interval_ms;
    let grace_period = config.gossip.dead_node_grace_period_secs;
    ChitchatConfig {
        chitchat_id: ChitchatId::new(
            config.node_id.as_str(),
            generation,
            config.gossip_public_addr(),
        ),
        cluster_id: config.cluster_id.clone(),
        gossip_interval: interval,
        listen_addr: config.gossip_addr,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: config.gossip.phi_threshold,
            sampling_window_size: SAMPLING_WINDOW,
            max_interval: MAX_HEARTBEAT_INTERVAL,
            initial_interval: interval,
            dead_node_grace_period: grace_period,
        },
        marked_for_deletion_grace_period: grace_period,
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V1,
    }
}

/// A running membership. Cheap to clone; every clone talks to the same gossip thread. When the
/// last clone is dropped, gossip stops (without announcing a leave).
#[derive(Clone)]
pub struct Membership {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Held by every [`Membership`] clone and not by the gossip thread: its drop stops gossip.
struct Owner(CancellationToken);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

struct Shared {
    self_id: NodeId,
    generation: u64,
    gossip_addr: SocketAddr,
    leave_duration: Duration,
    view: ArcSwap<LiveView>,
    /// The epoch of `view`, stored after it: the cheapest way to tell that a view seen
    /// before is still the current one.
    view_epoch: AtomicU64,
    view_tx: watch::Sender<Arc<LiveView>>,
    events_tx: broadcast::Sender<MembershipEvent>,
    input: Mutex<ViewInput>,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    stop: CancellationToken,
    stopped: watch::Sender<Option<Result<(), MembershipError>>>,
    /// Set once a leave began: the node never turns `ready` after that.
    leaving: AtomicBool,
    /// Notified when this node's status changed, to gossip it at once.
    announce: Notify,
}

impl Membership {
    /// Starts gossip from a validated configuration. `admin_addr` is published when given.
    /// Returns once the gossip socket is bound; the node starts as `joining` and turns `ready`
    /// once it hears from another node, or after `gossip.join_timeout_ms`, or at once when no
    /// seed other than itself is configured. With `secret` (the cluster secret's keys, see
    /// [`ClusterKeys::load`]) gossip datagrams are sealed; a program's own transport is used
    /// as it is (the node refuses one together with a secret). `generation` replaces the
    /// clock's (tests).
    pub(crate) async fn start(
        config: &Config,
        admin_addr: Option<SocketAddr>,
        secret: Option<ClusterKeys>,
        transport: Option<Box<dyn Transport>>,
        generation: Option<u64>,
    ) -> Result<Membership, MembershipError> {
        let generation = generation.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        });
        let self_id = NodeId::from(config.node_id.as_str());
        let gossip_addr = config.gossip_public_addr();
        let chitchat_config = chitchat_config(config, generation);
        let keys = NodeKeys {
            forward_addr: Some(config.forward_public_addr()),
            admin_addr,
            status: Status::Joining,
            version: Some(keys::THIS_VERSION.to_owned()),
            labels: config.labels.clone(),
        };
        let foreign_seeds = config
            .seeds
            .iter()
            .any(|seed| seed.parse::<SocketAddr>().ok() != Some(gossip_addr));
        let join_timeout = config.gossip.join_timeout_ms;
        let start_error = |message: String| MembershipError::Start {
            addr: config.gossip_addr,
            message,
        };
        let transport: Box<dyn Transport> = match (transport, secret) {
            (Some(transport), _) => transport,
            (None, None) => Box::new(UdpTransport),
            (None, Some(keys)) => Box::new(SealedTransport {
                keys,
                replay_window_ms: u64::try_from(config.gossip.replay_window_ms.as_millis())
                    .unwrap_or(u64::MAX),
                relay_timeout: config.gossip.interval_ms,
                node: config.node_id.clone(),
            }),
        };

        let (started_tx, started_rx) = oneshot::channel();
        let thread_name = format!("gossip-{}", config.node_id);
        let leave_duration = config.gossip.leave_duration();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = started_tx.send(Err(err.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let handle =
                        match spawn_chitchat(chitchat_config, keys.to_pairs(), &*transport).await {
                            Ok(handle) => handle,
                            Err(err) => {
                                let _ = started_tx.send(Err(format!("{err:#}")));
                                return;
                            }
                        };
                    let self_view = LiveView::empty(self_id.clone());
                    let (view_tx, _) = watch::channel(Arc::new(self_view.clone()));
                    let (events_tx, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
                    let (stopped, _) = watch::channel(None);
                    let shared = Arc::new(Shared {
                        self_id,
                        generation,
                        gossip_addr,
                        leave_duration,
                        view_epoch: AtomicU64::new(self_view.epoch()),
                        view: ArcSwap::from_pointee(self_view),
                        view_tx,
                        events_tx,
                        input: Mutex::new(ViewInput::default()),
                        chitchat: handle.chitchat(),
                        stop: CancellationToken::new(),
                        stopped,
                        leaving: AtomicBool::new(false),
                        announce: Notify::new(),
                    });
                    if started_tx.send(Ok(shared.clone())).is_err() {
                        // The caller gave up waiting: nobody will ever use this node.
                        let _ = handle.shutdown().await;
                        return;
                    }
                    let _guard = StoppedGuard(shared.clone());
                    let span = tracing::info_span!(
                        "membership",
                        node = %shared.self_id,
                        generation,
                        gossip_addr = %shared.gossip_addr,
                    );
                    let result = drive(&shared, &handle, foreign_seeds, join_timeout)
                        .instrument(span)
                        .await;
                    if let Err(err) = handle.shutdown().await {
                        debug!(error = %err, "gossip server stopped with an error");
                    }
                    if let Err(err) = &result {
                        error!(error = %err, "membership stopped");
                    }
                    shared.stopped.send_replace(Some(result));
                });
            })
            .map_err(|err| start_error(err.to_string()))?;

        let shared = tokio::time::timeout(THREAD_START_STOP_TIMEOUT, started_rx)
            .await
            .map_err(|_| start_error("timed out".into()))?
            .map_err(|_| start_error("gossip thread died".into()))?
            .map_err(start_error)?;
        info!(
            node = %shared.self_id,
            generation,
            gossip_addr = %shared.gossip_addr,
            "membership started"
        );
        let owner = Arc::new(Owner(shared.stop.clone()));
        Ok(Membership {
            shared,
            _owner: owner,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.shared.self_id
    }

    /// This node's generation (its start time in nanoseconds since the Unix epoch).
    pub fn generation(&self) -> u64 {
        self.shared.generation
    }

    /// The gossip address other nodes reach this node at.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.shared.gossip_addr
    }

    /// The current view: a lock-free read of an immutable snapshot.
    pub fn view(&self) -> Arc<LiveView> {
        self.shared.view.load_full()
    }

    /// The current view, lent for a short look: cheaper than [`Membership::view`] on a hot
    /// path (no shared reference count to touch), but not to be held across an `.await`.
    pub(crate) fn peek_view(&self) -> arc_swap::Guard<Arc<LiveView>> {
        self.shared.view.load()
    }

    /// The epoch of the current view (it may trail a view published this very moment).
    pub(crate) fn view_epoch(&self) -> u64 {
        self.shared.view_epoch.load(Ordering::Acquire)
    }

    /// A receiver that always holds the latest view and wakes on every new one.
    pub fn watch_view(&self) -> watch::Receiver<Arc<LiveView>> {
        self.shared.view_tx.subscribe()
    }

    /// A receiver of membership events from now on. One that falls [`EVENT_CHANNEL_CAPACITY`]
    /// events behind loses the oldest and is told how many (`RecvError::Lagged`).
    pub fn subscribe_events(&self) -> broadcast::Receiver<MembershipEvent> {
        self.shared.events_tx.subscribe()
    }

    /// Marks `node` unreachable in its current generation: it leaves the broadcast targets (not
    /// the ring) until [`Membership::report_reachable`] or a new generation. Returns `true` when
    /// this changed its state (the caller reports bad nodes on that transition only); unknown
    /// nodes and self are ignored.
    pub fn report_unreachable(&self, node: &str, reason: impl Into<String>) -> bool {
        let mut input = self.shared.lock_input();
        let view = self.view();
        let Some(member) = view.member(node).filter(|_| self.shared.self_id != node) else {
            return false;
        };
        if input
            .unreachable
            .get(node)
            .is_some_and(|r| r.generation == member.generation)
        {
            return false;
        }
        let report = Unreachable {
            generation: member.generation,
            reason: reason.into(),
        };
        input.unreachable.insert(member.node_id.clone(), report);
        self.shared.rebuild(&mut input);
        true
    }

    /// Marks `node` reachable again. Returns `true` when it was unreachable.
    pub fn report_reachable(&self, node: &str) -> bool {
        let mut input = self.shared.lock_input();
        if input.unreachable.remove(node).is_none() {
            return false;
        }
        self.shared.rebuild(&mut input);
        true
    }

    /// Graceful leave: publishes `status=leaving`, keeps gossiping for `gossip.leave_rounds`
    /// rounds so that peers see it (they take the node out of their broadcast targets at once,
    /// and later see it `Left`, not `Down`), then stops gossip. Bounded by the leave duration
    /// plus the thread's stop timeout. Calling it again while a leave is under way waits for
    /// that leave.
    pub(crate) async fn leave(&self) -> Result<(), MembershipError> {
        if self.shared.stop.is_cancelled() {
            return self.shutdown().await;
        }
        if self.shared.leaving.swap(true, Ordering::SeqCst) {
            // A leave is under way: wait for it to end.
            let bound = self.shared.leave_duration + THREAD_START_STOP_TIMEOUT;
            return match tokio::time::timeout(bound, self.stopped()).await {
                Ok(result) => result,
                Err(_) => self.shutdown().await,
            };
        }
        info!(node = %self.shared.self_id, "leaving the cluster");
        self.shared.set_status(Status::Leaving).await;
        let mut stopped = self.shared.stopped.subscribe();
        // Stop early if gossip dies meanwhile.
        let _ = tokio::time::timeout(
            self.shared.leave_duration,
            stopped.wait_for(|s| s.is_some()),
        )
        .await;
        self.shutdown().await
    }

    /// Stops gossip at once, without announcing a leave: peers see the node `Down`. Returns how
    /// membership ended (an error if it had stopped on its own, such as a node id conflict).
    pub(crate) async fn shutdown(&self) -> Result<(), MembershipError> {
        self.shared.stop.cancel();
        match tokio::time::timeout(THREAD_START_STOP_TIMEOUT, self.stopped()).await {
            Ok(result) => result,
            Err(_) => Err(MembershipError::Gossip(
                "gossip thread did not stop in time".into(),
            )),
        }
    }

    /// Asks the gossip thread to stop without waiting for it.
    pub(crate) fn signal_stop(&self) {
        self.shared.stop.cancel();
    }

    /// Resolves when membership has stopped: `Ok` after [`Membership::leave`] or
    /// [`Membership::shutdown`], the error when it stopped on its own.
    pub(crate) async fn stopped(&self) -> Result<(), MembershipError> {
        let mut stopped = self.shared.stopped.subscribe();
        // Bound to a name so that the borrow of `stopped` ends before it is dropped.
        let result = match stopped.wait_for(|s| s.is_some()).await {
            Ok(result) => result.clone().unwrap_or(Err(MembershipError::Stopped)),
            Err(_) => Err(MembershipError::Stopped),
        };
        result
    }

    /// Whether membership has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.borrow().is_some()
    }
}

/// Marks membership stopped if the gossip thread unwinds before it could say how it ended, so
/// that nobody waits forever on [`Membership::stopped`].
struct StoppedGuard(Arc<Shared>);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        self.0.stopped.send_if_modified(|stopped| {
            if stopped.is_some() {
                return false;
            }
            *stopped = Some(Err(MembershipError::Gossip(
                "the gossip thread panicked".into(),
            )));
            true
        });
    }
}

impl Shared {
    fn lock_input(&self) -> MutexGuard<'_, ViewInput> {
        self.input.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Derives and publishes a new view from `input`, and sends the events that lead to it.
    fn rebuild(&self, input: &mut ViewInput) {
        let old = self.view.load_full();
        let derived = derive_view(&self.self_id, input, &old);
        let node = self.self_id.to_string();
        if derived.members() == old.members() {
            // Nothing changed: keep the published view, only refresh the gauges (they expire
            // when idle).
            self.set_gauges(&node, &old);
            return;
        }
        let new = Arc::new(derived);
        let events = diff_events(&old, &new);
        self.view.store(new.clone());
        self.view_epoch.store(new.epoch(), Ordering::Release);
        self.view_tx.send_replace(new.clone());
        self.set_gauges(&node, &new);
        for event in events {
            info!(node = %self.self_id, peer = %event.node(), kind = event.kind(), ?event, "membership event");
            metrics::counter!(m::MEMBERSHIP_EVENTS, "node" => node.clone(), "kind" => event.kind())
                .increment(1);
            // No receiver is fine: nobody is listening.
            let _ = self.events_tx.send(event);
        }
    }

    fn set_gauges(&self, node: &str, view: &LiveView) {
        for status in [Status::Joining, Status::Ready, Status::Leaving] {
            let count = view
                .members()
                .iter()
                .filter(|m| m.live && m.status == status)
                .count();
            metrics::gauge!(m::LIVE_MEMBERS, "node" => node.to_owned(), "status" => status.as_str())
                .set(count as f64);
        }
        let dead = view.members().iter().filter(|m| !m.live).count();
        metrics::gauge!(m::DEAD_MEMBERS, "node" => node.to_owned()).set(dead as f64);
        let unreachable = view
            .members()
            .iter()
            .filter(|m| m.live && !m.reachable)
            .count();
        metrics::gauge!(m::UNREACHABLE_MEMBERS, "node" => node.to_owned()).set(unreachable as f64);
    }

    /// Reads chitchat's state, rebuilds the view, and returns a node id conflict if one shows.
    /// The input lock is taken before chitchat's is released, so two refreshes (from the gossip
    /// thread and from a leave) publish their snapshots in the order they read them.
    async fn refresh(&self) -> Result<(), MembershipError> {
        let chitchat = self.chitchat.lock().await;
        let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
        // Only a live newer generation is another process: a dead one may be this node's own
        // previous life, seen newer after the clock stepped back.
        if let Some(other) = live
            .iter()
            .find(|id| *id.node_id == *self.self_id.as_str() && id.generation_id > self.generation)
        {
            metrics::counter!(
                m::NODE_ID_CONFLICTS,
                "node" => self.self_id.to_string(),
                "other_gossip_addr" => other.gossip_advertise_addr.to_string()
            )
            .increment(1);
            return Err(MembershipError::NodeIdConflict {
                node_id: self.self_id.to_string(),
                generation: self.generation,
                gossip_addr: self.gossip_addr,
                other_generation: other.generation_id,
                other_gossip_addr: other.gossip_advertise_addr,
            });
        }
        let gossip: Vec<GossipNode> = chitchat
            .node_states()
            .iter()
            .map(|(id, state)| GossipNode {
                node_id: NodeId::from(id.node_id.clone()),
                generation: id.generation_id,
                gossip_addr: id.gossip_advertise_addr,
                alive: live.contains(id),
                heartbeat: state.heartbeat().into(),
                keys: NodeKeys::parse(state.key_values()),
            })
            .collect();
        let mut input = self.lock_input();
        drop(chitchat);
        input.gossip = gossip;
        self.rebuild(&mut input);
        Ok(())
    }

    /// Publishes this node's status and refreshes the view so that it shows at once. `Ready`
    /// is not published once a leave began (checked under chitchat's lock, which the leave
    /// also takes to publish `Leaving`).
    async fn set_status(&self, status: Status) {
        {
            let mut chitchat = self.chitchat.lock().await;
            if status == Status::Ready && self.leaving.load(Ordering::SeqCst) {
                return;
            }
            chitchat
                .self_node_state()
                .set(keys::STATUS, status.as_str());
        }
        // Tell a few peers now rather than at the next gossip round.
        self.announce.notify_one();
        if let Err(err) = self.refresh().await {
            warn!(error = %err, "refresh after a status change failed");
        }
    }
}

/// Starts a gossip exchange at once with up to [`ANNOUNCE_FANOUT`] live peers, picked from a
/// varying offset, so that a status change spreads without waiting for the next round.
fn announce(shared: &Shared, handle: &ChitchatHandle) {
    let view = shared.view.load();
    let peers: Vec<SocketAddr> = view
        .members()
        .iter()
        .filter(|m| m.live && m.node_id != shared.self_id)
        .map(|m| m.gossip_addr)
        .collect();
    if peers.is_empty() {
        return;
    }
    let offset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize);
    for i in 0..peers.len().min(ANNOUNCE_FANOUT) {
        let peer = peers[(offset + i) % peers.len()];
        if let Err(err) = handle.gossip(peer) {
            debug!(error = %err, %peer, "could not start a gossip exchange");
        }
    }
}

/// The membership loop on the gossip thread: refreshes the view on every gossip change, turns
/// the node `ready` once it has joined, and ends on a stop request, a node id conflict or a
/// gossip failure.
async fn drive(
    shared: &Shared,
    handle: &ChitchatHandle,
    foreign_seeds: bool,
    join_timeout: Duration,
) -> Result<(), MembershipError> {
    let mut watcher = shared.chitchat.lock().await.live_nodes_watcher();
    let termination = handle.termination_watcher();
    tokio::pin!(termination);
    let mut refresh_tick = tokio::time::interval(REFRESH_INTERVAL);
    let join_deadline = tokio::time::Instant::now() + join_timeout;
    let mut joining = true;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return Ok(()),
            result = &mut termination => {
                let message = result.err().map_or("stopped".to_string(), |e| format!("{e:#}"));
                return Err(MembershipError::Gossip(message));
            }
            changed = watcher.changed() => {
                if changed.is_err() {
                    return Err(MembershipError::Gossip("gossip state dropped".into()));
                }
            }
            _ = refresh_tick.tick() => {}
            _ = shared.announce.notified() => {
                announce(shared, handle);
                continue;
            }
            _ = tokio::time::sleep_until(join_deadline), if joining => {}
        }
        shared.refresh().await?;
        if joining {
            let heard_from_peer = shared
                .view
                .load()
                .members()
                .iter()
                .any(|m| m.node_id != shared.self_id && m.live);
            if !foreign_seeds || heard_from_peer || tokio::time::Instant::now() >= join_deadline {
                joining = false;
                info!(node = %shared.self_id, heard_from_peer, "node is ready");
                shared.set_status(Status::Ready).await;
            }
        }
    }
}
