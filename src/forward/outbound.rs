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

use crossbeam_utils::CachePadded;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};
use tracing::debug;

use super::pending::{Outcome, Peer};
use super::queue::{Batch, Queued, Refused, SendQueue, Taken};
use super::stats::PeerStats;
use super::stream::{self, Reader, Writer};
use super::{BadReason, Inner};
use crate::delivery::NackReason;
use crate::error::ForwardError;
use crate::security::{self, Role, Transcript};
use crate::wire::{self, Frame, FrameCodec, Hello};
use crate::NodeId;

/// A writer's buffer that grew larger than this for a burst is given back after the write.
const WRITE_KEEP_BYTES: usize = 256 * 1024;

/// Answers read between two readings of the clock when they come in a burst.
const CLOCK_EVERY: u32 = 64;

/// The first pause before a redial; it doubles up to `forward.max_redial_backoff_ms`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The sending side of the link to one peer.
///
/// Aligned to its own cache lines: callers read it on every send while the link's task, on the
/// other CPU, writes the objects allocated around it.
#[repr(align(128))]
pub(crate) struct Link {
    node: NodeId,
    queue: Arc<SendQueue>,
    /// Wakes the serving connection to drop it.
    reset: Arc<Notify>,
    /// Frames read from the peer, plus one per connection made: a sign of life.
    activity: Arc<CachePadded<AtomicU64>>,
    /// The epoch of the last view the peer was found live in.
    live_in: AtomicU64,
    /// The peer's pending entries, counted.
    peer: Arc<Peer>,
    /// The peer's counters.
    pub stats: Arc<PeerStats>,
}

impl Link {
    /// Creates the link and starts its task.
    pub fn start(
        inner: Arc<Inner>,
        node: NodeId,
        addr: SocketAddr,
        stats: Arc<PeerStats>,
    ) -> Arc<Link> {
        let queue = Arc::new(SendQueue::new(
            inner.config.queue_capacity.get(),
            inner.config.queue_capacity_bytes,
        ));
        let reset = Arc::new(Notify::new());
        let activity = Arc::new(CachePadded::new(AtomicU64::new(0)));
        let link = Arc::new(Link {
            node: node.clone(),
            queue: queue.clone(),
            reset: reset.clone(),
            activity: activity.clone(),
            live_in: AtomicU64::new(u64::MAX),
            peer: Arc::new(Peer::new(node.clone())),
            stats: stats.clone(),
        });
        let tasks = inner.tasks.clone();
        tasks.spawn(run(inner, node, addr, queue, stats, reset, activity));
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

    /// The peer, with its pending entries counted.
    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
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

/// The link's task: dial, serve, redial while the peer is live.
async fn run(
    inner: Arc<Inner>,
    node: NodeId,
    mut addr: SocketAddr,
    queue: Arc<SendQueue>,
    stats: Arc<PeerStats>,
    reset: Arc<Notify>,
    activity: Arc<CachePadded<AtomicU64>>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut connected_before = false;
    loop {
        if inner.shutdown.is_cancelled() {
            break;
        }
        match connect(&inner, &node, addr).await {
            Ok((reader, writer)) => {
                backoff = FIRST_BACKOFF;
                if connected_before {
                    stats.reconnected();
                }
                connected_before = true;
                inner.report_good(&node);
                activity.fetch_add(1, Ordering::Relaxed);
                let written = Mutex::new(VecDeque::new());
                let connection = Connection {
                    inner: &inner,
                    node: &node,
                    stats: &stats,
                    activity: &activity,
                    written: &written,
                };
                let why = tokio::select! {
                    why = connection.serve(reader, writer, &queue) => why,
                    _ = reset.notified() => "no pong to a probe in time: the connection is dead".to_string(),
                };
                if inner.shutdown.is_cancelled() {
                    break;
                }
                // Written and not answered: maybe delivered, maybe not.
                let lost = ForwardError::ConnectionLost { node: node.clone() };
                let now = Instant::now();
                let failed = written
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner)
                    .into_iter()
                    .filter(|id| {
                        inner
                            .pending
                            .complete(*id, Err(lost.clone()), now)
                            .is_some()
                    })
                    .count();
                stats.failed(&lost, failed as u64);
                debug!(peer = %node, %why, failed, "connection lost");
                inner.report_bad(&node, BadReason::ConnectionLost(why));
            }
            Err(why) => {
                debug!(peer = %node, %addr, %why, "connect failed");
                inner.report_bad(&node, BadReason::ConnectFailed(why));
            }
        }
        tokio::select! {
            _ = inner.shutdown.cancelled() => break,
            _ = tokio::time::sleep(jitter(backoff)) => {}
        }
        backoff = (backoff * 2).min(inner.config.max_redial_backoff_ms);
        // Redial only while the peer is live, at the address it now publishes.
        match inner
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
    queue.close();
    let error = if inner.shutdown.is_cancelled() {
        ForwardError::ShuttingDown
    } else {
        ForwardError::UnknownNode { node: node.clone() }
    };
    let mut left = Batch::default();
    queue.take_all(&mut left);
    let now = Instant::now();
    for frame in left.frames {
        inner.pending.complete(frame.id, Err(error.clone()), now);
    }
}

/// Between half and all of `backoff`, so that many nodes redialling one peer spread out.
fn jitter(backoff: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    backoff / 2 + backoff.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// Connects and does the handshake within `forward.connect_timeout_ms`.
async fn connect(
    inner: &Inner,
    node: &NodeId,
    addr: SocketAddr,
) -> Result<(FramedRead<Reader, FrameCodec>, Writer), String> {
    let handshake = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (read, mut write) = match &inner.protection.tls {
            None => stream::plain(stream),
            Some(tls) => {
                let name = crate::tls::server_name(node.as_str())?;
                let tls = tls
                    .connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                stream::tls(tls.into())
            }
        };
        let hello = Hello {
            magic: wire::MAGIC,
            min_version: wire::MIN_VERSION,
            max_version: wire::MAX_VERSION,
            cluster_id: inner.cluster_id.clone(),
            node_id: inner.self_id.clone(),
            generation: inner.generation,
            to_node: node.clone(),
        };
        let mut codec = FrameCodec::new(inner.config.max_frame_bytes);
        let mut buf = BytesMut::new();
        let send = |frame: &Frame, buf: &mut BytesMut, codec: &mut FrameCodec| {
            buf.clear();
            codec.encode(frame, buf).map_err(|e| e.to_string())
        };
        send(&Frame::Hello(hello.clone()), &mut buf, &mut codec)?;
        write_out(&mut write, &buf).await?;
        let mut reader = FramedRead::with_capacity(read, codec, wire::READ_BUFFER_BYTES);
        let version = match (next(&mut reader).await?, &inner.protection.keys) {
            (Frame::Welcome { version }, None) => version,
            (Frame::Welcome { .. }, Some(_)) => {
                return Err(
                    "the listener has no cluster secret: it cannot prove it is a member".into(),
                )
            }
            (Frame::Challenge { .. }, None) => {
                return Err("the listener wants a cluster secret; this node has none".into())
            }
            (Frame::Challenge { nonce: theirs }, Some(keys)) => {
                let ours = security::random().map_err(|e| e.to_string())?;
                let hello_bytes = wire::hello_bytes(&hello);
                let mut transcript = Transcript {
                    hello: &hello_bytes,
                    listener_nonce: &theirs,
                    dialer_nonce: &ours,
                    version: 0,
                };
                let mac = keys.prove(0, Role::Dialer, &transcript);
                send(
                    &Frame::Proof { nonce: ours, mac },
                    &mut buf,
                    reader.decoder_mut(),
                )?;
                write_out(&mut write, &buf).await?;
                let Frame::Verified { version, mac } = next(&mut reader).await? else {
                    return Err("unexpected answer to the proof".into());
                };
                transcript.version = version;
                if !keys.check_with(0, Role::Listener, &transcript, &mac) {
                    return Err("the listener's proof of the cluster secret is wrong".into());
                }
                version
            }
            (other, _) => return Err(format!("unexpected answer to hello: {other:?}")),
        };
        if !(wire::MIN_VERSION..=wire::MAX_VERSION).contains(&version) {
            return Err(format!(
                "the listener chose protocol version {version}, which this node does not speak"
            ));
        }
        Ok((reader, write))
    };
    tokio::time::timeout(inner.config.connect_timeout_ms, handshake)
        .await
        .unwrap_or_else(|_| Err("handshake timed out".into()))
}

/// Writes all of `bytes` and flushes them (through TLS).
async fn write_out(write: &mut Writer, bytes: &[u8]) -> Result<(), String> {
    write.write_all(bytes).await.map_err(|e| e.to_string())?;
    write.flush().await.map_err(|e| e.to_string())
}

/// The next frame of the handshake; a refusal, an error or the end is an error.
async fn next(reader: &mut FramedRead<Reader, FrameCodec>) -> Result<Frame, String> {
    match reader.next().await {
        Some(Ok(Frame::Refuse { reason })) => Err(format!("refused: {reason}")),
        Some(Ok(frame)) => Ok(frame),
        Some(Err(err)) => Err(err.to_string()),
        None => Err("closed during the handshake".into()),
    }
}

/// One connection of a link, and what its reading and writing halves share.
struct Connection<'a> {
    inner: &'a Inner,
    node: &'a NodeId,
    stats: &'a PeerStats,
    activity: &'a AtomicU64,
    /// Ids of the frames written and not yet answered, in the order written: the listener
    /// answers in that order (it sends no answer only for a message whose handler did not
    /// answer in time). Both halves run in the link's task, so the lock is never contended.
    written: &'a Mutex<VecDeque<u64>>,
}

impl Connection<'_> {
    /// Serves the connection until it breaks or the forwarder shuts down; returns why it
    /// ended.
    async fn serve(
        &self,
        reader: FramedRead<Reader, FrameCodec>,
        writer: Writer,
        queue: &SendQueue,
    ) -> String {
        tokio::select! {
            why = self.read(reader) => why,
            why = self.write(writer, queue) => why,
            _ = self.inner.shutdown.cancelled() => "shutting down".to_string(),
        }
    }

    /// Reads answers and ends their pending entries.
    async fn read(&self, mut reader: FramedRead<Reader, FrameCodec>) -> String {
        let (inner, node) = (self.inner, self.node);
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
                self.activity.fetch_add(acks.into(), Ordering::Relaxed);
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
                    if std::mem::take(&mut answered)
                        && !inner
                            .membership
                            .peek_view()
                            .member(node.as_str())
                            .is_none_or(|m| m.reachable)
                    {
                        inner.report_good(node);
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
            self.activity.fetch_add(1, Ordering::Relaxed);
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
                other => return format!("unexpected frame from the listener: {other:?}"),
            };
            answered |= self.answer(id, outcome, counted, now);
        }
    }

    /// Ends the pending entry of answer `id` (known at `now`) with `outcome`, counted as a
    /// forward if `counted` (a pong is not); `false` if the entry had ended already.
    fn answer(&self, id: u64, outcome: Outcome, counted: bool, now: Instant) -> bool {
        {
            // Frames before the answered one got no answer and never will (their handler did
            // not answer in time); an id not in the list (a duplicate) changes nothing.
            let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
            if written.front() == Some(&id) {
                written.pop_front();
            } else if let Some(at) = written.iter().position(|w| *w == id) {
                written.drain(..=at);
            }
        }
        let failure = outcome.as_ref().err().cloned();
        let Some(latency) = self.inner.pending.complete(id, outcome, now) else {
            if counted {
                self.stats.late_ack();
            }
            return false;
        };
        match failure {
            _ if !counted => {}
            None => self.stats.acked(latency),
            Some(err) => self.stats.failed(&err, 1),
        }
        true
    }

    /// Writes what the queue holds, all of it in one write, again and again; a ping when there
    /// was nothing to write for `limits.keepalive_interval_ms`. A write that stalls for
    /// `limits.idle_timeout_ms` ends the connection.
    async fn write(&self, mut writer: Writer, queue: &SendQueue) -> String {
        let limits = &self.inner.limits;
        let mut batch = Batch::default();
        loop {
            match queue.take_all(&mut batch) {
                Taken::Some => self.prepare(&mut batch),
                Taken::Empty => {
                    let keepalive = limits.keepalive_interval_ms;
                    if tokio::time::timeout(keepalive, queue.wait_ready())
                        .await
                        .is_ok()
                    {
                        continue;
                    }
                    // Id 0 is no pending entry's: its pong ends nothing.
                    let ping = Frame::Ping { id: 0 };
                    let mut bytes = BytesMut::new();
                    if let Err(err) = FrameCodec::new(wire::FRAME_LIMIT).encode(&ping, &mut bytes) {
                        return err.to_string();
                    }
                    batch.bytes.extend_from_slice(&bytes);
                }
                Taken::Closed => return "queue closed".to_string(),
            }
            if !batch.bytes.is_empty() {
                let write = write_out(&mut writer, &batch.bytes);
                match tokio::time::timeout(limits.idle_timeout_ms, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => return err,
                    Err(_) => return format!("a write stalled for {:?}", limits.idle_timeout_ms),
                }
                self.stats.bytes_sent(batch.bytes.len());
            }
            batch.clear(WRITE_KEEP_BYTES);
        }
    }

    /// Readies a batch for its write: sets each frame's time to live, leaves out the frames
    /// whose sender gave up (the waiter or the sweep ends their entries), and notes the others
    /// as written.
    fn prepare(&self, batch: &mut Batch) {
        let now = Instant::now();
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
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
            let ttl = super::ttl_ms(frame.deadline - now);
            wire::set_ttl(&mut batch.bytes[kept..kept + frame.len], ttl);
            kept += frame.len;
            written.push_back(frame.id);
        }
        batch.bytes.truncate(kept);
    }
}
