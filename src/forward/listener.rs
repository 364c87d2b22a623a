//! The listening side: accepts connections from other nodes, does the handshake, hands each
//! `Forward` to the [`Deliver`] handler in arrival order, and answers `Ack` or `Nack` only after
//! the handler's verdict.
//!
//! Verdicts are pipelined: a connection goes on reading and handing over messages while
//! handlers that answer later ([`Verdict::Later`]) decide, and sends the answers in the order
//! the messages arrived, each once it and those before it are known (at most
//! [`MAX_UNDECIDED`] at once; past that the connection waits before it reads more). Answers
//! are batched: they are written when no further frame is already readable, or once 64 KiB
//! have gathered. However a connection ends (its node stopping included), the verdicts already
//! given are written before it closes.
//!
//! Time to live: a frame's time to live counts from when it is read, less the time the
//! connection spent not reading (throttled, or waiting for verdicts) while the frame may
//! already have been waiting in the socket; a frame whose time has run out is nacked
//! `Expired`, never delivered, and a verdict that comes after it is not sent.
//!
//! One connection per peer delivers: the newest. A peer dials again when it gave up on its
//! connection (its frames on it failed with `ConnectionLost`), but the old connection may still
//! hold unread frames here, for instance after this node was paused. Delivering those after
//! frames of the new connection would break the sender's order, so once a newer connection
//! from the same node is accepted, the older one delivers nothing more and closes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::admission::{Admission, Eviction, Slot};
use super::context::{Context, MAX_TIMEOUT};
use super::handshake::{self, HandshakeError};
use super::report::BadReason;
use super::stats::{Counts, Received};
use super::stream::{CountingRead, WriteSide};
use crate::delivery::{Deliver, Delivery, NackReason, Verdict};
use crate::metrics as m;
use crate::wire::{self, Frame, FrameCodec, FrameReader, RefuseReason, WireError};
use crate::NodeId;

/// Answers gathered before they are written even if more frames are readable.
const ANSWER_BATCH_BYTES: usize = 64 * 1024;

/// Messages of one connection whose verdict is not known yet, at most: past it the connection
/// reads nothing more until the oldest is decided.
pub(crate) const MAX_UNDECIDED: usize = 16_384;

/// Inbound connection numbers, unique in the process.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per peer node, the number of the connection that delivers its messages. A connection holds
/// its peer's entry locked while it hands a message to the handler, so that a newer connection
/// takes over between two messages, never during one.
#[derive(Default)]
struct Takeover(Mutex<HashMap<NodeId, Arc<Mutex<u64>>>>);

impl Takeover {
    /// Makes `connection` the one that delivers the messages of `from`, unless a connection
    /// accepted after it already does: numbers follow the order of accepts, which is the order
    /// of the peer's dials, so a stale connection that finishes its handshake late (after a
    /// pause, from the listen backlog) does not take over from the live one.
    fn take_over(&self, from: &NodeId, connection: u64) -> Arc<Mutex<u64>> {
        let mut peers = lock(&self.0);
        let entry = peers.entry(from.clone()).or_default().clone();
        let mut current = lock(&entry);
        *current = (*current).max(connection);
        drop(current);
        entry
    }

    /// Forgets `from` if `connection` still delivers its messages.
    fn end(&self, from: &NodeId, connection: u64) {
        let mut peers = lock(&self.0);
        if peers.get(from).is_some_and(|e| *lock(e) == connection) {
            peers.remove(from);
        }
    }
}

/// What becomes of a forwarded message that arrived on a connection.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Hand it to the handler.
    Deliver,
    /// Nack it with this reason, without delivering it.
    Refuse(NackReason),
    /// A newer connection from the same node took over: deliver nothing more, close.
    Superseded,
}

/// The receiver's decision on `delivery`, arrived from `peer` with `ttl` left, on a connection
/// that is (`newest`) or is not the peer's newest, while this node is (`delivering`) or is no
/// longer handing messages to its handler.
#[inline]
fn decide(
    delivery: &Delivery,
    ttl: Duration,
    me: &NodeId,
    peer: &NodeId,
    newest: bool,
    delivering: bool,
) -> Decision {
    if ttl.is_zero() {
        Decision::Refuse(NackReason::Expired)
    } else if !delivery.message.is_forwardable() {
        Decision::Refuse(NackReason::NotForwardable)
    } else if delivery.to.node != *me || delivery.from.node != *peer {
        Decision::Refuse(NackReason::Refused(format!(
            "a message from `{}` to `{}` on a connection from `{peer}` to `{me}`",
            delivery.from.node, delivery.to.node
        )))
    } else if !newest {
        Decision::Superseded
    } else if !delivering {
        Decision::Refuse(NackReason::ShuttingDown)
    } else {
        Decision::Deliver
    }
}

/// Hands `delivery` to `handler`; a handler that panics refuses it `HandlerFailed` (logged),
/// and the connection goes on.
fn deliver_caught(handler: &dyn Deliver, delivery: Delivery) -> Verdict {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.deliver(delivery)))
        .unwrap_or_else(|_| {
            tracing::error!("the handler panicked on a delivery");
            Verdict::Refused(NackReason::HandlerFailed)
        })
}

/// An answer owed to the peer, in the order its message arrived.
enum Owed {
    /// Known.
    Known(Frame),
    /// To come from the handler, until `expiry`.
    Later {
        id: u64,
        expiry: Instant,
        answer: oneshot::Receiver<Result<(), NackReason>>,
    },
}

/// The answers a connection owes, in arrival order, and the counts of what was answered (kept
/// here and added to the peer's counters when the answers are written out, not per answer).
struct Answers {
    owed: VecDeque<Owed>,
    received: Arc<Received>,
    counts: Counts,
}

/// The answer to message `id` from its handler's verdict; a handler that dropped the sender
/// of its verdict refused it.
fn answer_of<E>(id: u64, verdict: Result<Result<(), NackReason>, E>) -> Frame {
    match verdict {
        Ok(Ok(())) => Frame::Ack { id },
        Ok(Err(reason)) => Frame::Nack { id, reason },
        Err(_) => Frame::Nack {
            id,
            reason: NackReason::Refused("the handler dropped the message".into()),
        },
    }
}

impl Answers {
    fn new(received: Arc<Received>) -> Answers {
        Answers {
            owed: VecDeque::new(),
            received,
            counts: Counts::default(),
        }
    }

    /// Adds what was answered since the last time to the peer's counters.
    fn publish(&mut self) {
        self.received.add(std::mem::take(&mut self.counts));
    }

    fn is_full(&self) -> bool {
        self.owed.len() >= MAX_UNDECIDED
    }

    /// Writes `answer` into `out`, and counts it.
    fn write(
        &mut self,
        answer: &Frame,
        out: &mut BytesMut,
        codec: &mut FrameCodec,
    ) -> Result<(), WireError> {
        codec.encode(answer, out)?;
        self.counts.count(answer);
        Ok(())
    }

    /// Owes `answer`: written into `out` at once when nothing owed comes before it.
    fn known(
        &mut self,
        answer: Frame,
        out: &mut BytesMut,
        codec: &mut FrameCodec,
    ) -> Result<(), WireError> {
        if self.owed.is_empty() {
            self.write(&answer, out, codec)
        } else {
            self.owed.push_back(Owed::Known(answer));
            Ok(())
        }
    }

    /// Owes the answer the handler gives later through `answer`, until `expiry`.
    fn later(
        &mut self,
        id: u64,
        expiry: Instant,
        answer: oneshot::Receiver<Result<(), NackReason>>,
    ) {
        self.owed.push_back(Owed::Later { id, expiry, answer });
    }

    /// Writes into `out` the answers now known at the front, in order; a verdict whose time
    /// ran out by `now` gets none (its sender sees `Timeout`). Stops at the first one still
    /// to come.
    fn take_known(
        &mut self,
        now: Instant,
        out: &mut BytesMut,
        codec: &mut FrameCodec,
    ) -> Result<(), WireError> {
        while let Some(front) = self.owed.front_mut() {
            let answer = match front {
                Owed::Known(_) => None,
                Owed::Later { expiry, .. } if *expiry <= now => {
                    // Dropping the receiver tells the handler nobody waits for the verdict.
                    self.owed.pop_front();
                    continue;
                }
                Owed::Later { id, answer, .. } => match answer.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => return Ok(()),
                    verdict => Some(answer_of(*id, verdict)),
                },
            };
            let answer = match (answer, self.owed.pop_front()) {
                (Some(answer), _) => answer,
                (None, Some(Owed::Known(answer))) => answer,
                (None, _) => continue,
            };
            self.write(&answer, out, codec)?;
        }
        Ok(())
    }

    /// Resolves when the first answer still to come is known (it is kept) or its time runs
    /// out; never when none is to come.
    async fn first_known(&mut self) {
        let Some(front) = self.owed.front_mut() else {
            return std::future::pending().await;
        };
        let Owed::Later { id, expiry, answer } = front else {
            return std::future::pending().await;
        };
        // Its time ran out: `take_known` passes it over.
        if let Ok(verdict) = tokio::time::timeout_at(*expiry, answer).await {
            *front = Owed::Known(answer_of(*id, verdict));
        }
    }
}

/// Accepts connections until shutdown, each in a slot of the [`Admission`].
pub(crate) async fn listen(ctx: Arc<Context>, listener: TcpListener, deliver: Arc<dyn Deliver>) {
    let admission = Admission::new(
        ctx.limits.max_inbound_connections.get(),
        ctx.limits.max_unproven_connections.get(),
    );
    let takeover = Arc::new(Takeover::default());
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let number = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
                let view = ctx.membership.peek_view();
                let (slot, evicted) = admission.admit(number, &ctx.shutdown, |node| {
                    view.member(node.as_str()).is_some()
                });
                drop(view);
                for why in evicted {
                    count_eviction(&ctx, why);
                }
                if let Some(slot) = slot {
                    let span = tracing::info_span!(
                        "inbound",
                        node = %ctx.node,
                        number,
                        %peer,
                        from = tracing::field::Empty,
                        generation = tracing::field::Empty,
                    );
                    let (ctx2, deliver, takeover, admission) = (
                        ctx.clone(),
                        deliver.clone(),
                        takeover.clone(),
                        admission.clone(),
                    );
                    ctx.tasks.spawn(
                        async move {
                            let served = Served {
                                deliver: &*deliver,
                                takeover: &takeover,
                                admission: &admission,
                            };
                            connection(&ctx2, stream, number, slot, served).await;
                        }
                        .instrument(span),
                    );
                } else {
                    count_refusal(&ctx, RefuseReason::Overloaded.name());
                    if let Some(left_out) = ctx.may_log_bad_input() {
                        info!(%peer, left_out, "refused: every slot serves a member");
                    }
                }
            }
            Err(err) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn count_refusal(ctx: &Context, reason: &'static str) {
    metrics::counter!(m::HANDSHAKES_REFUSED, "node" => ctx.node.to_string(), "reason" => reason)
        .increment(1);
}

fn count_eviction(ctx: &Context, why: Eviction) {
    metrics::counter!(m::INBOUND_EVICTED, "node" => ctx.node.to_string(), "reason" => why.name())
        .increment(1);
    if let Some(left_out) = ctx.may_log_bad_input() {
        info!(
            reason = why.name(),
            left_out, "an inbound connection closed to make room"
        );
    }
}

fn count_bad_frame(ctx: &Context, reason: &'static str) {
    metrics::counter!(m::FRAMES_REFUSED, "node" => ctx.node.to_string(), "reason" => reason)
        .increment(1);
}

/// Writes `out` unless the write stalls for `limits.idle_timeout_ms` (a peer that stops
/// reading must not keep this task alive). Returns `false` when the connection is done.
async fn write_out(ctx: &Context, write: &mut WriteSide, out: &mut BytesMut) -> bool {
    let written = tokio::time::timeout(ctx.limits.idle_timeout_ms, async {
        write.write_all(out).await?;
        write.flush().await
    })
    .await;
    out.clear();
    match written {
        Ok(written) => written.is_ok(),
        Err(_) => {
            count_bad_frame(ctx, "write_stalled");
            false
        }
    }
}

/// A bucket of frames a connection may read: `per_sec` a second, as many at once.
struct FrameRate {
    per_sec: u64,
    tokens: u64,
    refilled: std::time::Instant,
}

impl FrameRate {
    fn new(per_sec: u64, now: std::time::Instant) -> FrameRate {
        FrameRate {
            per_sec,
            tokens: per_sec,
            refilled: now,
        }
    }

    /// Takes one frame's token at `now`; when there is none, how long until there is. The
    /// clock is read only when the bucket is empty.
    fn take(&mut self, now: impl FnOnce() -> std::time::Instant) -> Option<Duration> {
        if self.tokens == 0 {
            let now = now();
            let nanos = now.duration_since(self.refilled).as_nanos();
            let earned = nanos * u128::from(self.per_sec) / 1_000_000_000;
            if earned == 0 {
                let nanos_per_token = 1_000_000_000 / self.per_sec.max(1);
                return Some(Duration::from_nanos(nanos_per_token.max(1000)));
            }
            self.tokens = u64::try_from(earned).unwrap_or(u64::MAX).min(self.per_sec);
            self.refilled = now;
        }
        self.tokens -= 1;
        None
    }
}

/// What the connections of a listener share.
struct Served<'a> {
    deliver: &'a dyn Deliver,
    takeover: &'a Takeover,
    admission: &'a Admission,
}

/// Serves inbound connection `number` in its `slot`, until it ends, the slot is taken to make
/// room (it ends at once then) or the forwarder stops.
async fn connection(ctx: &Context, stream: TcpStream, number: u64, slot: Slot, served: Served<'_>) {
    let Served {
        deliver,
        takeover,
        admission,
    } = served;
    let stop = &slot.stop;
    let accepted = tokio::select! {
        _ = stop.cancelled() => return,
        accepted = handshake::accept(ctx, stream) => accepted,
    };
    let mut accepted = match accepted {
        Ok(accepted) => accepted,
        Err(err) => {
            if let Some(reason) = err.refusal() {
                count_refusal(ctx, reason);
                if let Some(left_out) = ctx.may_log_bad_input() {
                    info!(why = %err, left_out, "handshake refused");
                }
            }
            return;
        }
    };
    let from = accepted.hello.node_id.clone();
    if !admission.prove(&slot, &from) {
        return;
    }
    let span = tracing::Span::current();
    span.record("from", tracing::field::display(&from));
    span.record("generation", accepted.hello.generation);
    // Before the welcome: once the peer may send on this connection, its older one delivers
    // nothing more.
    let delivering = takeover.take_over(&from, number);
    let welcomed = tokio::select! {
        _ = stop.cancelled() => Err(HandshakeError::Closed),
        welcomed = accepted.welcome(ctx) => welcomed,
    };
    if welcomed.is_err() {
        takeover.end(&from, number);
        return;
    }
    let handshake::Accepted {
        mut reader,
        mut writer,
        ..
    } = accepted;
    let received = ctx.received_from(&from);
    reader.get_mut().count_in(received.clone());
    let mut serving = Serving {
        ctx,
        stop,
        from: &from,
        number,
        delivering: &delivering,
        deliver,
        out: BytesMut::new(),
        codec: FrameCodec::new(ctx.config.max_frame_bytes),
        answers: Answers::new(received),
        broken: false,
    };
    let ended = serving.serve(&mut reader, &mut writer).await;
    // A connection that a newer one took over closes quietly, however it ended: its peer
    // is not bad.
    let superseded = *lock(&delivering) != number;
    takeover.end(&from, number);
    // Closed to make room: a stranger's or a superseded connection, whose answers nobody
    // waits for.
    let evicted = stop.is_cancelled() && !ctx.shutdown.is_cancelled();
    if evicted {
        return;
    }
    serving.finish(&mut writer).await;
    let Some(ended) = ended else { return };
    if let Some(left_out) = ctx.may_log_bad_input() {
        debug!(why = %ended, left_out, "inbound connection ended");
    }
    // The peer's side went away: a crashed node is noticed here at once even by nodes that
    // never sent it anything (a leaving node is not reported; see `Reporter::bad`).
    if !superseded && !stop.is_cancelled() {
        ctx.reporter.bad(&from, BadReason::ConnectionLost(ended));
    }
}

/// An accepted connection being served.
struct Serving<'a> {
    ctx: &'a Context,
    /// Cancelled when the connection is closed to make room, or the forwarder stops.
    stop: &'a CancellationToken,
    /// The peer node.
    from: &'a NodeId,
    /// This connection's number.
    number: u64,
    /// The number of the peer's connection that delivers.
    delivering: &'a Mutex<u64>,
    deliver: &'a dyn Deliver,
    /// Answers to write.
    out: BytesMut,
    codec: FrameCodec,
    answers: Answers,
    /// A write failed or was cut short.
    broken: bool,
}

impl Serving<'_> {
    /// Writes the answers gathered, and counts them in the peer's counters, unless the
    /// forwarder stops first; `false` when the connection is done.
    async fn send(&mut self, write: &mut WriteSide) -> bool {
        self.answers.publish();
        if self.out.is_empty() {
            return true;
        }
        let ctx = self.ctx;
        // The write first: a stop cuts only a write that waits for the socket, never one that
        // would go through at once (the last verdicts of a drained handler come just before
        // the stop).
        let sent = tokio::select! {
            biased;
            sent = write_out(ctx, write, &mut self.out) => sent,
            _ = self.stop.cancelled() => false,
        };
        // A write cut short leaves part of a frame behind: nothing more may follow it.
        self.broken = !sent;
        sent
    }

    /// Writes the verdicts already given, however the connection ended: a stopping node's
    /// handler has drained, so its last verdicts are known, before the forwarder stops.
    async fn finish(&mut self, write: &mut WriteSide) {
        let known = self
            .answers
            .take_known(Instant::now(), &mut self.out, &mut self.codec);
        self.answers.publish();
        if known.is_ok() && !self.broken && !self.out.is_empty() {
            write_out(self.ctx, write, &mut self.out).await;
        }
    }

    /// Serves until the connection ends; `None` when it ends without a word (shutdown, or the
    /// socket broke while answering), else why it ended.
    async fn serve(
        &mut self,
        reader: &mut FrameReader<CountingRead>,
        write: &mut WriteSide,
    ) -> Option<String> {
        let ctx = self.ctx;
        let mut rate = FrameRate::new(
            ctx.limits.max_inbound_frames_per_sec_per_peer.get(),
            std::time::Instant::now(),
        );
        // A token of the frame rate taken for a read that has not happened yet (the wait for
        // the socket ended on a verdict instead).
        let mut token = false;
        loop {
            // Only a connection that owes answers reads the clock for them.
            if !self.answers.owed.is_empty()
                && self
                    .answers
                    .take_known(Instant::now(), &mut self.out, &mut self.codec)
                    .is_err()
            {
                return Some("an answer could not be encoded".into());
            }
            if self.answers.is_full() {
                // Read nothing more until the oldest verdict is known.
                if !self.send(write).await {
                    return None;
                }
                tokio::select! {
                    _ = self.stop.cancelled() => return None,
                    _ = self.answers.first_known() => {}
                }
                continue;
            }
            if let Some(wait) = (!token)
                .then(|| rate.take(std::time::Instant::now))
                .flatten()
            {
                // Over the peer's rate: read nothing for a while (the peer's writes back up),
                // after sending what is answered.
                self.answers
                    .received
                    .throttled
                    .fetch_add(1, Ordering::Relaxed);
                if !self.send(write).await {
                    return None;
                }
                tokio::select! {
                    _ = self.stop.cancelled() => return None,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            token = true;
            // Take what is already readable; write the answers before waiting for more.
            let next = match reader.next().now_or_never() {
                Some(next) => next,
                None => {
                    if !self.send(write).await {
                        return None;
                    }
                    let idle = ctx.limits.idle_timeout_ms;
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        // A verdict came: write it before reading on.
                        _ = self.answers.first_known() => continue,
                        next = tokio::time::timeout(idle, reader.next()) => match next {
                            Ok(next) => next,
                            // Its peer's link pings when it has nothing to send: this one is
                            // gone, or trickles bytes that never make a frame.
                            Err(_) => {
                                count_bad_frame(ctx, "idle");
                                return Some(format!("no complete frame for {idle:?}"));
                            }
                        },
                    }
                }
            };
            token = false;
            let frame = match next {
                None => return Some("closed by the peer".into()),
                Some(Ok(frame)) => frame,
                Some(Err(err)) => {
                    let reason = match err {
                        WireError::TooLarge { .. } => "too_large",
                        WireError::Malformed(_) => "malformed",
                        WireError::Io(_) => "io",
                    };
                    count_bad_frame(ctx, reason);
                    return Some(format!("bad frame: {err}"));
                }
            };
            let answered = match frame {
                Frame::Forward(forward) => {
                    // By this node's clock, read as the frame is taken: however long it
                    // waited in buffers, or while this process was paused, counts.
                    let id = forward.id;
                    let left = forward.deadline_ms.saturating_sub(wire::wall_clock_ms());
                    let ttl = Duration::from_millis(left).min(MAX_TIMEOUT);
                    let verdict = {
                        let delivering = lock(self.delivering);
                        let newest = *delivering == self.number;
                        let open = ctx.is_delivering();
                        match decide(&forward.delivery, ttl, &ctx.node, self.from, newest, open) {
                            Decision::Deliver => deliver_caught(self.deliver, forward.delivery),
                            Decision::Refuse(reason) => Verdict::Refused(reason),
                            Decision::Superseded => {
                                return Some(
                                    "a newer connection from the same node took over".into(),
                                )
                            }
                        }
                    };
                    match verdict {
                        Verdict::Accepted => {
                            self.answers
                                .known(Frame::Ack { id }, &mut self.out, &mut self.codec)
                        }
                        Verdict::Refused(reason) => self.answers.known(
                            Frame::Nack { id, reason },
                            &mut self.out,
                            &mut self.codec,
                        ),
                        Verdict::Later(answer) => {
                            self.answers.later(id, Instant::now() + ttl, answer);
                            Ok(())
                        }
                    }
                }
                Frame::Ping { id } => {
                    self.answers
                        .known(Frame::Pong { id }, &mut self.out, &mut self.codec)
                }
                other => {
                    count_bad_frame(ctx, "unexpected");
                    return Some(format!("unexpected {} frame", other.name()));
                }
            };
            if answered.is_err() {
                return Some("an answer could not be encoded".into());
            }
            if self.out.len() >= ANSWER_BATCH_BYTES && !self.send(write).await {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wamp::{Dict, WampMessage};
    use crate::PeerId;

    fn delivery(from: &str, to: &str, message: WampMessage) -> Delivery {
        Delivery {
            from: PeerId::session("r", from, 1),
            to: PeerId::session("r", to, 2),
            message,
        }
    }

    fn interrupt() -> WampMessage {
        WampMessage::Interrupt {
            request: 1,
            options: Dict::new(),
        }
    }

    #[test]
    fn a_message_is_delivered_only_in_time_forwardable_well_addressed_and_on_the_newest_connection()
    {
        let (me, peer) = (NodeId::from("b"), NodeId::from("a"));
        let second = Duration::from_secs(1);
        let good = delivery("a", "b", interrupt());
        assert_eq!(
            decide(&good, second, &me, &peer, true, true),
            Decision::Deliver
        );
        assert_eq!(
            decide(&good, Duration::ZERO, &me, &peer, true, true),
            Decision::Refuse(NackReason::Expired)
        );
        let hello = WampMessage::Hello {
            realm: "r".into(),
            details: Dict::new(),
        };
        assert_eq!(
            decide(&delivery("a", "b", hello), second, &me, &peer, true, true),
            Decision::Refuse(NackReason::NotForwardable)
        );
        for wrong in [
            delivery("a", "c", interrupt()),
            delivery("c", "b", interrupt()),
        ] {
            assert!(matches!(
                decide(&wrong, second, &me, &peer, true, true),
                Decision::Refuse(NackReason::Refused(_))
            ));
        }
        assert_eq!(
            decide(&good, second, &me, &peer, false, true),
            Decision::Superseded
        );
        // A node that stopped delivering refuses, and says why.
        assert_eq!(
            decide(&good, second, &me, &peer, true, false),
            Decision::Refuse(NackReason::ShuttingDown)
        );
        // An expired message is nacked as such even on an old connection.
        assert_eq!(
            decide(&good, Duration::ZERO, &me, &peer, false, true),
            Decision::Refuse(NackReason::Expired)
        );
    }

    fn written(out: &mut BytesMut) -> Vec<Frame> {
        let mut codec = FrameCodec::new(1 << 20);
        let mut frames = Vec::new();
        while let Some(frame) = tokio_util::codec::Decoder::decode(&mut codec, out).unwrap() {
            frames.push(frame);
        }
        frames
    }

    #[tokio::test(start_paused = true)]
    async fn answers_go_out_in_arrival_order_as_verdicts_come_and_a_late_one_not_at_all() {
        let received = Arc::new(Received::default());
        let mut answers = Answers::new(received.clone());
        let mut out = BytesMut::new();
        let mut codec = FrameCodec::new(1 << 20);
        let now = Instant::now();
        let second = Duration::from_secs(1);
        // Nothing owed: an ack goes out at once.
        answers
            .known(Frame::Ack { id: 1 }, &mut out, &mut codec)
            .unwrap();
        let (v2, t2) = Verdict::later();
        let (v3, t3) = Verdict::later();
        let (v5, t5) = Verdict::later();
        for (id, verdict, left) in [(2, v2, second), (3, v3, 2 * second)] {
            let Verdict::Later(rx) = verdict else {
                unreachable!()
            };
            answers.later(id, now + left, rx);
        }
        // Known at once, but behind 2 and 3.
        answers
            .known(Frame::Ack { id: 4 }, &mut out, &mut codec)
            .unwrap();
        let Verdict::Later(rx5) = v5 else {
            unreachable!()
        };
        answers.later(5, now + second, rx5);
        answers
            .known(Frame::Pong { id: 6 }, &mut out, &mut codec)
            .unwrap();
        answers.take_known(now, &mut out, &mut codec).unwrap();
        assert_eq!(written(&mut out), [Frame::Ack { id: 1 }]);
        // 3 is decided first: it waits for 2.
        t3.send(Err(NackReason::NoSuchSession)).unwrap();
        answers.take_known(now, &mut out, &mut codec).unwrap();
        assert!(written(&mut out).is_empty());
        t2.send(Ok(())).unwrap();
        answers.first_known().await;
        answers
            .take_known(Instant::now(), &mut out, &mut codec)
            .unwrap();
        assert_eq!(
            written(&mut out),
            [
                Frame::Ack { id: 2 },
                Frame::Nack {
                    id: 3,
                    reason: NackReason::NoSuchSession
                },
                Frame::Ack { id: 4 },
            ]
        );
        // 5's handler never answers: at its expiry it is passed over without an answer.
        answers.first_known().await;
        assert_eq!(Instant::now(), now + second);
        answers
            .take_known(Instant::now(), &mut out, &mut codec)
            .unwrap();
        assert_eq!(written(&mut out), [Frame::Pong { id: 6 }]);
        drop(t5);
        // A handler that drops its sender refuses.
        let (v7, t7) = Verdict::later();
        let Verdict::Later(rx7) = v7 else {
            unreachable!()
        };
        answers.later(7, Instant::now() + second, rx7);
        drop(t7);
        answers
            .take_known(Instant::now(), &mut out, &mut codec)
            .unwrap();
        assert!(matches!(
            written(&mut out)[..],
            [Frame::Nack {
                id: 7,
                reason: NackReason::Refused(_)
            }]
        ));
        // Counted as written: 1, 2 and 4 delivered, 3 and 7 refused; the pong is no delivery.
        answers.publish();
        let mut counters = crate::forward::stats::PeerCounters::default();
        received.add_to(&mut counters);
        assert_eq!(
            (counters.delivered, counters.refused, counters.expired),
            (3, 2, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_verdict_known_only_after_its_time_to_live_is_not_answered() {
        let mut answers = Answers::new(Arc::new(Received::default()));
        let (mut out, mut codec) = (BytesMut::new(), FrameCodec::new(1 << 20));
        let now = Instant::now();
        let (slow, slow_answer) = Verdict::later();
        let (quick, quick_answer) = Verdict::later();
        for (id, verdict, left) in [(1, slow, 5), (2, quick, 1)] {
            let Verdict::Later(rx) = verdict else {
                unreachable!()
            };
            answers.later(id, now + Duration::from_secs(left), rx);
        }
        // 2 is decided in time, but waits behind 1, which is decided after 2's time ran out.
        quick_answer.send(Ok(())).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        slow_answer.send(Ok(())).unwrap();
        answers
            .take_known(Instant::now(), &mut out, &mut codec)
            .unwrap();
        assert_eq!(written(&mut out), [Frame::Ack { id: 1 }]);
    }

    #[test]
    fn the_frame_rate_lets_a_second_of_frames_through_then_says_how_long_to_wait() {
        let start = std::time::Instant::now();
        let mut rate = FrameRate::new(100, start);
        for _ in 0..100 {
            assert_eq!(rate.take(|| start), None);
        }
        let wait = rate.take(|| start).unwrap();
        assert_eq!(wait, Duration::from_millis(10));
        // Half a second later, half a second's worth.
        let later = start + Duration::from_millis(500);
        let passed = (0..100)
            .take_while(|_| rate.take(|| later).is_none())
            .count();
        assert_eq!(passed, 50);
    }

    #[test]
    fn a_newer_connection_takes_over_and_an_older_one_never_takes_back() {
        let takeover = Takeover::default();
        let a = NodeId::from("a");
        let first = takeover.take_over(&a, 1);
        assert_eq!(*lock(&first), 1);
        let second = takeover.take_over(&a, 5);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(*lock(&first), 5);
        // A stale connection that finishes its handshake late does not take over.
        takeover.take_over(&a, 3);
        assert_eq!(*lock(&first), 5);
        // The superseded one ending forgets nothing; the current one ending forgets the peer.
        takeover.end(&a, 3);
        assert!(lock(&takeover.0).contains_key(&a));
        takeover.end(&a, 5);
        assert!(!lock(&takeover.0).contains_key(&a));
    }
}
