//! One link per peer node: a bounded send queue and a task that dials the peer, does the
//! handshake, writes queued frames in batches, reads acks, and redials with capped exponential
//! backoff and jitter while the peer is live.
//!
//! Frames still queued when a connection breaks go out on the next connection if their deadline
//! allows. Frames put in a write on the broken connection and not answered fail with
//! `ConnectionLost`: they may or may not have been delivered.
//!
//! A connection can die without closing: a partition, a peer that was paused, a middlebox
//! that forgot it. TCP then retransmits with a backoff that grows to many seconds, and could
//! keep the link stalled long after the path is back. So when the background probe of an
//! unreachable node gets no pong within `forward.connect_timeout_ms` and the connection read
//! nothing else meanwhile, `Link::reset_if_silent_since` drops it and the link dials anew.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;
use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use super::context::{Context, MAX_TIMEOUT};
use super::handshake;
use super::pending::{Outcome, PendingCount};
use super::queue::{Batch, Queued, Refused, SendQueue, Taken};
use super::report::BadReason;
use super::stats::PeerStats;
use super::stream::{ReadSide, WriteSide};
use crate::delivery::NackReason;
use crate::error::ForwardError;
use crate::wire::{self, Frame, FrameReader};
use crate::NodeId;

/// A writer's buffer that grew larger than this for a burst is given back after the write.
const WRITE_KEEP_BYTES: usize = 256 * 1024;

/// Answers read between two readings of the clock when they come in a burst.
const CLOCK_EVERY: u32 = 64;

/// The first pause before a redial; it doubles up to `forward.max_redial_backoff_ms`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Link connection numbers, unique in the process (for logs).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// The sending side of the link to one peer.
///
/// Aligned to its own cache lines: callers read it on every send while the link's task, on the
/// other CPU, writes the objects allocated around it.
#[repr(align(128))]
pub(crate) struct Link {
    node: NodeId,
    queue: SendQueue,
    /// Wakes the serving connection to drop it.
    reset: Notify,
    /// Frames read from the peer, plus one per connection made: a sign of life.
    activity: CachePadded<AtomicU64>,
    /// The generation of the peer the connection now served reaches (0: none yet).
    serving: AtomicU64,
    /// The epoch of the last view the peer was found live in.
    live_in: AtomicU64,
    /// The peer's pending entries, counted.
    pending: Arc<PendingCount>,
    /// The peer's counters.
    pub stats: Arc<PeerStats>,
}

impl Link {
    /// Creates the link and starts its task.
    pub fn start(
        ctx: Arc<Context>,
        node: NodeId,
        addr: SocketAddr,
        stats: Arc<PeerStats>,
    ) -> Arc<Link> {
        let queue = SendQueue::new(
            ctx.config.queue_capacity.get(),
            ctx.config.queue_capacity_bytes,
        );
        let link = Arc::new(Link {
            node: node.clone(),
            queue,
            reset: Notify::new(),
            activity: CachePadded::new(AtomicU64::new(0)),
            serving: AtomicU64::new(0),
            live_in: AtomicU64::new(u64::MAX),
            pending: Arc::new(PendingCount::new(node.clone())),
            stats,
        });
        let span = tracing::info_span!("link", node = %ctx.node, peer = %node);
        let tasks = ctx.tasks.clone();
        tasks.spawn(run(ctx, link.clone(), addr).instrument(span));
        link
    }

    /// The epoch of the last view the peer was found live in.
    pub fn live_in(&self) -> u64 {
        self.live_in.load(Ordering::Relaxed)
    }

    /// Notes that the peer is live in the view of `epoch`.
    pub fn set_live_in(&self, epoch: u64) {
        self.live_in.store(epoch, Ordering::Relaxed);
    }

    /// The peer's pending entries, counted.
    pub fn pending(&self) -> &Arc<PendingCount> {
        &self.pending
    }

    /// Signs of life so far: frames read, and connections made.
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    /// Drops the connection now being served for a new one if there was no sign of life since
    /// [`Link::activity`] returned `before`: a probe got no answer, and the connection is not
    /// merely busy, nor new. Frames written on it fail with `ConnectionLost`.
    pub fn reset_if_silent_since(&self, before: u64) {
        if self.activity() == before {
            self.reset.notify_waiters();
        }
    }

    /// Drops the connection now being served for a new one, to the address the view gives
    /// then, unless it reaches `generation` of the peer (the peer restarted: the connection
    /// may reach its old process). Frames written on it fail with `ConnectionLost`; queued
    /// ones go on the next. A connection already made to the new generation stays.
    pub fn reset_unless_serving(&self, generation: u64) {
        if self.serving.load(Ordering::Acquire) != generation {
            self.reset.notify_waiters();
        }
    }

    /// Frames waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether the link's task has ended (the peer left the view, or shutdown).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Offers an encoded frame to the queue: it goes in at once if there is room; else, unless
    /// `fail_if_full`, the caller gets it back owned, to wait for room with
    /// [`Link::enqueue`].
    pub fn offer(&self, id: u64, deadline: Instant, fail_if_full: bool, frame: &[u8]) -> Offered {
        match self.queue.try_push(id, deadline, frame) {
            Ok(()) => Offered::Queued,
            Err(Refused::Full) if !fail_if_full => Offered::Wait(Queued {
                id,
                deadline,
                bytes: frame.to_vec(),
            }),
            Err(refused) => Offered::Refused(self.refusal(refused)),
        }
    }

    /// Queues a frame once there is room, waiting until `deadline` (then `Timeout`).
    pub async fn enqueue(&self, item: Queued, deadline: Instant) -> Result<(), ForwardError> {
        self.queue
            .push(item, false, deadline)
            .await
            .map_err(|refused| self.refusal(refused))
    }

    fn refusal(&self, refused: Refused) -> ForwardError {
        let node = self.node.clone();
        match refused {
            Refused::Full => ForwardError::QueueFull { node },
            Refused::Late => ForwardError::Timeout { node },
            Refused::Closed => ForwardError::UnknownNode { node },
        }
    }
}

/// What became of a frame offered to a link's queue.
pub(crate) enum Offered {
    /// It is in the queue.
    Queued,
    /// The queue has no room now: here it is, owned, to wait for room.
    Wait(Queued),
    /// It cannot go in.
    Refused(ForwardError),
}

/// The next pause after one of `backoff` (between dials, or probes): twice as long, at most
/// `max`.
pub(super) fn next_backoff(backoff: Duration, max: Duration) -> Duration {
    (backoff * 2).min(max)
}

/// Between half and all of `backoff`, so that many nodes redialling one peer spread out;
/// `noise` is any number (the clock's nanoseconds).
fn jitter(backoff: Duration, noise: u32) -> Duration {
    backoff / 2 + backoff.mul_f64(f64::from(noise % 1000) / 2000.0)
}

fn clock_noise() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// The link's task: dial, serve, redial while the peer is live.
async fn run(ctx: Arc<Context>, link: Arc<Link>, mut addr: SocketAddr) {
    let node = &link.node;
    let mut backoff = FIRST_BACKOFF;
    let mut connected_before = false;
    loop {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let number = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
        let generation = ctx
            .membership
            .peek_view()
            .member(node.as_str())
            .map(|m| m.generation);
        let span = tracing::info_span!("connection", number, %addr, generation);
        match handshake::dial(&ctx, node, addr, generation)
            .instrument(span.clone())
            .await
        {
            Ok((reader, writer, generation)) => {
                link.serving.store(generation, Ordering::Release);
                backoff = FIRST_BACKOFF;
                if connected_before {
                    link.stats.reconnected();
                }
                connected_before = true;
                ctx.reporter.good(node);
                link.activity.fetch_add(1, Ordering::Relaxed);
                let written = Mutex::new(Written::default());
                let connection = Connection {
                    ctx: &ctx,
                    link: &link,
                    written: &written,
                };
                let why = tokio::select! {
                    why = connection.serve(reader, writer).instrument(span.clone()) => why,
                    _ = link.reset.notified() => "reset: no pong to a probe in time, or the peer restarted".to_string(),
                };
                if ctx.shutdown.is_cancelled() {
                    break;
                }
                // Written and not answered: maybe delivered, maybe not.
                let lost = ForwardError::ConnectionLost { node: node.clone() };
                let now = Instant::now();
                let unanswered = written
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                let failed = unanswered
                    .into_iter()
                    .filter(|id| ctx.pending.complete(*id, Err(lost.clone()), now).is_some())
                    .count();
                link.stats.failed(&lost, failed as u64);
                span.in_scope(|| {
                    debug!(%why, failed, "connection lost");
                    ctx.reporter.bad(node, BadReason::ConnectionLost(why));
                });
            }
            Err(why) => {
                span.in_scope(|| {
                    debug!(%why, "connect failed");
                    ctx.reporter
                        .bad(node, BadReason::ConnectFailed(why.to_string()));
                });
            }
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tokio::time::sleep(jitter(backoff, clock_noise())) => {}
        }
        backoff = next_backoff(backoff, ctx.config.max_redial_backoff_ms);
        // Redial only while the peer is live, at the address it now publishes.
        match ctx
            .membership
            .view()
            .member(node.as_str())
            .filter(|m| m.live)
            .and_then(|m| m.forward_addr)
        {
            Some(current) => addr = current,
            None => break,
        }
    }
    // Nothing queued will be sent: end those entries now rather than at their deadline.
    link.queue.close();
    let error = if ctx.shutdown.is_cancelled() {
        ForwardError::ShuttingDown
    } else {
        ForwardError::UnknownNode { node: node.clone() }
    };
    let mut left = Batch::default();
    link.queue.take_all(&mut left);
    let now = Instant::now();
    for frame in left.frames {
        ctx.pending.complete(frame.id, Err(error.clone()), now);
    }
}

/// The ids of the frames written on a connection and not yet answered, in the order written:
/// the listener answers in that order (it sends no answer only for a message whose handler did
/// not answer in time).
#[derive(Debug, Default)]
struct Written(VecDeque<u64>);

impl Written {
    fn note(&mut self, id: u64) {
        self.0.push_back(id);
    }

    /// Forgets `id`, answered, and the frames written before it: they got no answer and never
    /// will. Whether `id` was written here and unanswered: an id not in the list (a duplicate,
    /// the keepalive's 0, an id written on another connection) changes nothing.
    fn answered(&mut self, id: u64) -> bool {
        if self.0.front() == Some(&id) {
            self.0.pop_front();
        } else if let Some(at) = self.0.iter().position(|w| *w == id) {
            self.0.drain(..=at);
        } else {
            return false;
        }
        true
    }

    /// Every id still unanswered.
    fn take(self) -> VecDeque<u64> {
        self.0
    }
}

/// Readies a batch for its write at `now` (`wall_ms` by the wall clock): sets each frame's
/// deadline by the wall clock, leaves out the frames whose sender gave up (the waiter or the
/// sweep ends their entries), and notes the others as written.
fn prepare(batch: &mut Batch, now: Instant, wall_ms: u64, written: &mut Written) {
    let (mut at, mut kept) = (0, 0);
    for frame in &batch.frames {
        let from = at;
        at += frame.len;
        if frame.deadline <= now {
            continue;
        }
        if kept != from {
            batch.bytes.copy_within(from..at, kept);
        }
        let left = (frame.deadline - now).min(MAX_TIMEOUT).as_millis() as u64;
        wire::set_deadline(&mut batch.bytes[kept..kept + frame.len], wall_ms + left);
        kept += frame.len;
        written.note(frame.id);
    }
    batch.bytes.truncate(kept);
}

/// One connection of a link, and what its reading and writing halves share.
struct Connection<'a> {
    ctx: &'a Context,
    link: &'a Link,
    /// Both halves run in the link's task, so the lock is never contended.
    written: &'a Mutex<Written>,
}

impl Connection<'_> {
    /// Serves the connection until it breaks or the forwarder shuts down; returns why it
    /// ended.
    async fn serve(&self, reader: FrameReader<ReadSide>, writer: WriteSide) -> String {
        tokio::select! {
            why = self.read(reader) => why,
            why = self.write(writer) => why,
            _ = self.ctx.shutdown.cancelled() => "shutting down".to_string(),
        }
    }

    /// Reads answers and ends their pending entries.
    async fn read(&self, mut reader: FrameReader<ReadSide>) -> String {
        let node = &self.link.node;
        let mut answered = false;
        // The time answers are stamped with: read again after each wait for the socket and
        // every `CLOCK_EVERY` answers, not for each one.
        let mut now = Instant::now();
        let mut unstamped = 0;
        loop {
            // Most answers are acks: those already read are taken straight from the buffer.
            let mut acks = 0;
            wire::take_acks(reader.read_buffer_mut(), |id| {
                acks += 1;
                answered |= self.answer(id, Ok(()), true, now);
            });
            if acks > 0 {
                self.link.activity.fetch_add(acks.into(), Ordering::Relaxed);
                unstamped += acks;
                if unstamped >= CLOCK_EVERY {
                    (now, unstamped) = (Instant::now(), 0);
                }
            }
            let next = match reader.next().now_or_never() {
                Some(next) => next,
                None => {
                    // Before waiting: a node that answered is reachable again if it was
                    // reported (checked once per read, not per answer).
                    if std::mem::take(&mut answered) {
                        self.ctx.reporter.good(node);
                    }
                    let next = reader.next().await;
                    (now, unstamped) = (Instant::now(), 0);
                    next
                }
            };
            unstamped += 1;
            if unstamped >= CLOCK_EVERY {
                (now, unstamped) = (Instant::now(), 0);
            }
            let frame = match next {
                None => return "closed by the peer".to_string(),
                Some(Err(err)) => return err.to_string(),
                Some(Ok(frame)) => frame,
            };
            self.link.activity.fetch_add(1, Ordering::Relaxed);
            // Pongs answer probes: they end their entries but are not forwards.
            let (id, outcome, counted) = match frame {
                Frame::Ack { id } => (id, Ok(()), true),
                Frame::Nack { id, reason } => {
                    let err = match reason {
                        NackReason::Expired => ForwardError::Expired { node: node.clone() },
                        reason => ForwardError::Rejected {
                            node: node.clone(),
                            reason,
                        },
                    };
                    (id, Err(err), true)
                }
                Frame::Pong { id } => (id, Ok(()), false),
                other => return format!("unexpected {} frame from the listener", other.name()),
            };
            answered |= self.answer(id, outcome, counted, now);
        }
    }

    /// Ends the pending entry of answer `id` (known at `now`) with `outcome`, counted as a
    /// forward if `counted` (a pong is not); `false` if the entry had ended already. Only an id
    /// written on this connection ends an entry: an answer to anything else is late.
    fn answer(&self, id: u64, outcome: Outcome, counted: bool, now: Instant) -> bool {
        let ours = self
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .answered(id);
        let stats = &self.link.stats;
        let failure = outcome.as_ref().err().cloned();
        let completed = ours
            .then(|| self.ctx.pending.complete(id, outcome, now))
            .flatten();
        let Some(latency) = completed else {
            if counted {
                stats.late_ack();
            }
            return false;
        };
        match failure {
            _ if !counted => {}
            None => stats.acked(latency),
            Some(err) => stats.failed(&err, 1),
        }
        true
    }

    /// Writes what the queue holds, all of it in one write, again and again; a ping when there
    /// was nothing to write for `limits.keepalive_interval_ms`. A write that stalls for
    /// `limits.idle_timeout_ms` ends the connection.
    async fn write(&self, mut writer: WriteSide) -> String {
        let limits = &self.ctx.limits;
        let queue = &self.link.queue;
        let mut batch = Batch::default();
        let mut checked_epoch = self.ctx.membership.view_epoch();
        loop {
            // Nothing is written to a generation of the peer that the view replaced (a paused
            // old process): what is queued stays for the next connection, to the new one.
            let epoch = self.ctx.membership.view_epoch();
            if epoch != checked_epoch {
                checked_epoch = epoch;
                let serving = self.link.serving.load(Ordering::Acquire);
                let shown = self
                    .ctx
                    .membership
                    .peek_view()
                    .member(self.link.node.as_str())
                    .map(|m| m.generation);
                if shown.is_some_and(|shown| shown != serving) {
                    return "the peer restarted: this connection reaches its old process".into();
                }
            }
            match queue.take_all(&mut batch) {
                Taken::Some => {
                    let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
                    prepare(
                        &mut batch,
                        Instant::now(),
                        wire::wall_clock_ms(),
                        &mut written,
                    );
                }
                Taken::Empty => {
                    let keepalive = limits.keepalive_interval_ms;
                    if tokio::time::timeout(keepalive, queue.wait_ready())
                        .await
                        .is_ok()
                    {
                        continue;
                    }
                    // Id 0 is no pending entry's: its pong ends nothing.
                    batch.bytes.extend_from_slice(&wire::ping(0));
                }
                Taken::Closed => return "queue closed".to_string(),
            }
            if !batch.bytes.is_empty() {
                let write = async {
                    writer.write_all(&batch.bytes).await?;
                    writer.flush().await
                };
                match tokio::time::timeout(limits.idle_timeout_ms, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => return err.to_string(),
                    Err(_) => return format!("a write stalled for {:?}", limits.idle_timeout_ms),
                }
                self.link.stats.bytes_sent(batch.bytes.len());
            }
            batch.clear(WRITE_KEEP_BYTES);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_forgets_its_frame_and_those_written_before_it_and_a_duplicate_nothing() {
        let mut written = Written::default();
        for id in 1..=5 {
            written.note(id);
        }
        assert!(written.answered(1));
        // 2 got no answer (its handler did not answer in time): 3's answer forgets it.
        assert!(written.answered(3));
        assert!(!written.answered(3), "a duplicate");
        assert!(!written.answered(9), "never written here");
        assert!(!written.answered(2), "forgotten");
        assert_eq!(written.take(), [4, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_keeps_the_frames_still_wanted_with_their_deadline_set() {
        use crate::delivery::Delivery;
        use crate::wamp::{Dict, WampMessage};
        use crate::PeerId;
        let now = Instant::now();
        let from = PeerId::node("r", "a");
        let to = PeerId::node("r", "b");
        let message = WampMessage::Interrupt {
            request: 1,
            options: Dict::new(),
        };
        let frame =
            |id| wire::encode_forward(id, &from, &to, &message, 1 << 20, <[u8]>::to_vec).unwrap();
        let queue = SendQueue::new(10, 1 << 20);
        // Frame 2's sender gave up already.
        for (id, left) in [(1, 300), (2, 0), (3, 1500)] {
            let deadline = now + Duration::from_millis(left);
            queue.try_push(id, deadline, &frame(id)).unwrap();
        }
        let mut batch = Batch::default();
        queue.take_all(&mut batch);
        let mut written = Written::default();
        prepare(&mut batch, now, 1_000_000, &mut written);
        assert_eq!(written.take(), [1, 3]);
        let mut codec = wire::FrameCodec::new(1 << 20);
        let mut bytes = bytes::BytesMut::from(&batch.bytes[..]);
        let mut seen = Vec::new();
        while let Some(Frame::Forward(f)) =
            tokio_util::codec::Decoder::decode(&mut codec, &mut bytes).unwrap()
        {
            seen.push((f.id, f.deadline_ms));
            assert_eq!(
                f.delivery,
                Delivery {
                    from: from.clone(),
                    to: to.clone(),
                    message: message.clone()
                }
            );
        }
        assert_eq!(seen, [(1, 1_000_300), (3, 1_001_500)]);
    }

    #[test]
    fn redials_back_off_twice_as_long_each_time_up_to_the_limit_with_jitter() {
        let max = Duration::from_millis(2000);
        let mut backoff = FIRST_BACKOFF;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            pauses.push(backoff.as_millis());
            backoff = next_backoff(backoff, max);
        }
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        for noise in [0, 1, 499, 999, 1000, u32::MAX] {
            let pause = jitter(max, noise);
            assert!(pause >= max / 2 && pause < max, "{pause:?}");
        }
        assert_ne!(jitter(max, 0), jitter(max, 500));
    }
}
