//! The listening side: accepts connections from other nodes, does the handshake, hands each
//! `Forward` to the [`Deliver`] handler in arrival order, and answers `Ack` or `Nack` only after
//! the handler's verdict. Answers are batched: they are written when no further frame is
//! already readable, before waiting on a handler, or once 64 KiB have gathered.
//!
//! Time to live: a frame's time to live counts from when it is read, less the time the
//! connection spent waiting on handlers while the frame may already have been waiting in the
//! socket; a frame whose time has run out is nacked `Expired`, never delivered.
//!
//! One connection per peer delivers: the newest. A peer dials again when it gave up on its
//! connection (its frames on it failed with `ConnectionLost`), but the old connection may still
//! hold unread frames here, for instance after this node was paused. Delivering those after
//! frames of the new connection would break the sender's order, so once a newer connection
//! from the same node is accepted, the older one delivers nothing more and closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};
use tracing::{debug, info, warn};

use super::stream::{self, Reader, Writer};
use super::{BadReason, Inner};
use crate::delivery::{Deliver, NackReason, Verdict};
use crate::metrics as m;
use crate::security::{self, Role, Transcript};
use crate::wire::{self, Frame, FrameCodec, Hello, RefuseReason};
use crate::NodeId;

/// Largest frame read before the handshake is done: a hello is small, and an unauthenticated
/// socket must not make the node reserve `max_frame_bytes`.
const HANDSHAKE_FRAME_LIMIT: usize = 16 * 1024;

/// Answers gathered before they are written even if more frames are readable.
const ANSWER_BATCH_BYTES: usize = 64 * 1024;

/// Lines a second logged about refused connections and bad frames, per forwarder.
pub(crate) const BAD_INPUT_LINES_PER_SEC: u32 = 10;

/// Inbound connection numbers, unique in the process.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per peer node, the number of the connection that delivers its messages. A connection holds
/// its peer's entry locked while it hands a message to the handler, so that a newer connection
/// takes over between two messages, never during one.
#[derive(Default)]
struct Current(Mutex<HashMap<NodeId, Arc<Mutex<u64>>>>);

impl Current {
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

/// Accepts connections until shutdown.
pub(crate) async fn listen(inner: Arc<Inner>, listener: TcpListener, deliver: Arc<dyn Deliver>) {
    let slots = Arc::new(Semaphore::new(inner.limits.max_inbound_connections.get()));
    let current = Arc::new(Current::default());
    loop {
        let accepted = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let inner2 = inner.clone();
                    let deliver = deliver.clone();
                    let current = current.clone();
                    let number = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
                    inner.tasks.spawn(async move {
                        connection(inner2, stream, peer, number, deliver, &current).await;
                        drop(slot);
                    });
                }
                Err(_) => {
                    count_refusal(&inner, RefuseReason::Overloaded.name());
                    if let Some(left_out) = inner.bad_input_log.check(std::time::Instant::now()) {
                        info!(%peer, left_out, "refused: too many inbound connections");
                    }
                }
            },
            Err(err) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn count_refusal(inner: &Inner, reason: &'static str) {
    metrics::counter!(m::HANDSHAKES_REFUSED, "node" => inner.self_id.to_string(), "reason" => reason)
        .increment(1);
}

fn count_bad_frame(inner: &Inner, reason: &'static str) {
    metrics::counter!(m::FRAMES_REFUSED, "node" => inner.self_id.to_string(), "reason" => reason)
        .increment(1);
}

/// Writes `out` unless the forwarder shuts down first or the write stalls for
/// `limits.idle_timeout_ms` (a peer that stops reading must not keep this task alive).
/// Returns `false` when the connection is done.
async fn flush(inner: &Inner, write: &mut Writer, out: &mut BytesMut) -> bool {
    if out.is_empty() {
        return true;
    }
    let written = tokio::select! {
        _ = inner.shutdown.cancelled() => return false,
        written = tokio::time::timeout(inner.limits.idle_timeout_ms, async {
            write.write_all(out).await?;
            write.flush().await
        }) => written,
    };
    out.clear();
    match written {
        Ok(written) => written.is_ok(),
        Err(_) => {
            count_bad_frame(inner, "write_stalled");
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
    fn new(per_sec: u64) -> FrameRate {
        FrameRate {
            per_sec,
            tokens: per_sec,
            refilled: std::time::Instant::now(),
        }
    }

    /// Takes one frame's token; when there is none, how long until there is. The clock is read
    /// only when the bucket is empty.
    fn take(&mut self) -> Option<Duration> {
        if self.tokens == 0 {
            let now = std::time::Instant::now();
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

/// The read half of a connection, counting the bytes read once the peer is known.
struct Counted {
    read: Reader,
    bytes: Option<metrics::Counter>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.read).poll_read(cx, buf);
        if let Some(bytes) = &self.bytes {
            bytes.increment((buf.filled().len() - before) as u64);
        }
        polled
    }
}

/// Serves one inbound connection.
async fn connection(
    inner: Arc<Inner>,
    stream: TcpStream,
    peer: SocketAddr,
    number: u64,
    deliver: Arc<dyn Deliver>,
    current: &Current,
) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + inner.limits.handshake_timeout_ms;
    let mut certificate = None;
    let (read, mut write) = match &inner.protection.tls {
        None => stream::plain(stream),
        Some(tls) => match tokio::time::timeout_at(deadline, tls.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => {
                certificate = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|cert| cert.clone().into_owned());
                stream::tls(tls.into())
            }
            Ok(Err(err)) => {
                count_refusal(&inner, "tls");
                if let Some(left_out) = inner.bad_input_log.check(std::time::Instant::now()) {
                    info!(%peer, %err, left_out, "TLS handshake failed");
                }
                return;
            }
            Err(_) => {
                count_refusal(&inner, "timeout");
                return;
            }
        },
    };
    let mut codec = FrameCodec::new(inner.config.max_frame_bytes);
    let read = Counted { read, bytes: None };
    let mut reader = FramedRead::with_capacity(
        read,
        FrameCodec::new(HANDSHAKE_FRAME_LIMIT),
        wire::READ_BUFFER_BYTES,
    );
    let mut out = BytesMut::new();

    let accepted = handshake(
        &inner,
        &mut reader,
        &mut write,
        &mut out,
        deadline,
        certificate.as_ref(),
    )
    .await;
    let (hello, answer) = match accepted {
        Ok(accepted) => accepted,
        Err(None) => return,
        Err(Some(reason)) => {
            count_refusal(&inner, reason.name());
            if let Some(left_out) = inner.bad_input_log.check(std::time::Instant::now()) {
                info!(%peer, %reason, left_out, "handshake refused");
            }
            let _ = codec.encode(&Frame::Refuse { reason }, &mut out);
            flush(&inner, &mut write, &mut out).await;
            return;
        }
    };
    let from = hello.node_id;
    // Before the welcome: once the peer may send on this connection, its older one delivers
    // nothing more.
    let delivering = current.take_over(&from, number);
    if codec.encode(&answer, &mut out).is_err() || !flush(&inner, &mut write, &mut out).await {
        current.end(&from, number);
        return;
    }
    *reader.decoder_mut() = FrameCodec::new(inner.config.max_frame_bytes);
    let ended = serve(
        &inner,
        &mut reader,
        &mut write,
        &mut out,
        &mut codec,
        &from,
        number,
        &delivering,
        deliver.as_ref(),
    )
    .await;
    // A connection that a newer one took over closes quietly, however it ended: its peer
    // is not bad.
    let superseded = *lock(&delivering) != number;
    current.end(&from, number);
    let Some(ended) = ended else { return };
    flush(&inner, &mut write, &mut out).await;
    if let Some(left_out) = inner.bad_input_log.check(std::time::Instant::now()) {
        debug!(%peer, %from, why = %ended, left_out, "inbound connection ended");
    }
    // The peer's side went away: a crashed node is noticed here at once even by nodes that
    // never sent it anything (a leaving node is not reported; see `report_bad`).
    if !superseded && !inner.shutdown.is_cancelled() {
        inner.report_bad(&from, BadReason::ConnectionLost(ended));
    }
}

/// Reads the hello (and with a cluster secret, the proof) before `deadline`, and checks it and
/// the peer's certificate: the hello and the frame that accepts it (`Welcome`, or `Verified`),
/// or the reason to refuse, or `None` to close without a word (counted).
async fn handshake(
    inner: &Inner,
    reader: &mut FramedRead<Counted, FrameCodec>,
    write: &mut Writer,
    out: &mut BytesMut,
    deadline: Instant,
    certificate: Option<&rustls::pki_types::CertificateDer<'static>>,
) -> Result<(Hello, Frame), Option<RefuseReason>> {
    let timed_out = |_| {
        count_refusal(inner, "timeout");
        None
    };
    let hello = match tokio::time::timeout_at(deadline, reader.next())
        .await
        .map_err(timed_out)?
    {
        Some(Ok(Frame::Hello(hello))) => hello,
        Some(_) => return Err(Some(RefuseReason::BadHello)),
        None => return Err(None),
    };
    let checked = |hello: &Hello| {
        let version = wire::negotiate(hello, &inner.cluster_id, &inner.self_id).map_err(Some)?;
        if certificate.is_some_and(|cert| !crate::tls::names(cert, hello.node_id.as_str())) {
            return Err(Some(RefuseReason::BadCertificate));
        }
        Ok(version)
    };
    let Some(keys) = &inner.protection.keys else {
        let version = checked(&hello)?;
        return Ok((hello, Frame::Welcome { version }));
    };
    // With a secret, the node says nothing about itself (its cluster id, its node id) to a
    // dialer that has not proved it knows one.
    if hello.magic != wire::MAGIC {
        return Err(Some(RefuseReason::BadHello));
    }
    let ours = security::random().map_err(|_| None)?;
    let mut codec = FrameCodec::new(HANDSHAKE_FRAME_LIMIT);
    if codec
        .encode(&Frame::Challenge { nonce: ours }, out)
        .is_err()
        || !flush(inner, write, out).await
    {
        return Err(None);
    }
    let (theirs, proof) = match tokio::time::timeout_at(deadline, reader.next())
        .await
        .map_err(timed_out)?
    {
        Some(Ok(Frame::Proof { nonce, mac })) => (nonce, mac),
        _ => return Err(Some(RefuseReason::BadSecret)),
    };
    let hello_bytes = wire::hello_bytes(&hello);
    let mut transcript = Transcript {
        hello: &hello_bytes,
        listener_nonce: &ours,
        dialer_nonce: &theirs,
        version: 0,
    };
    let key = keys
        .check(Role::Dialer, &transcript, &proof)
        .ok_or(Some(RefuseReason::BadSecret))?;
    let version = checked(&hello)?;
    transcript.version = version;
    let mac = keys.prove(key, Role::Listener, &transcript);
    Ok((hello, Frame::Verified { version, mac }))
}

/// Serves an accepted connection; `None` when it must end without a word (shutdown, or the
/// socket broke while answering).
#[allow(clippy::too_many_arguments)]
async fn serve(
    inner: &Inner,
    reader: &mut FramedRead<Counted, FrameCodec>,
    write: &mut Writer,
    out: &mut BytesMut,
    codec: &mut FrameCodec,
    from: &NodeId,
    number: u64,
    delivering: &Mutex<u64>,
    deliver: &dyn Deliver,
) -> Option<String> {
    reader.get_mut().bytes = Some(metrics::counter!(
        m::BYTES_RECEIVED,
        "node" => inner.self_id.to_string(),
        "peer" => from.to_string()
    ));
    // Time spent waiting on handlers since the connection last waited for the socket: frames
    // read now may have been waiting that long.
    let mut stalled = Duration::ZERO;
    let mut rate = FrameRate::new(inner.limits.max_inbound_frames_per_sec_per_peer.get());

    let ended = loop {
        if let Some(wait) = rate.take() {
            // Over the peer's rate: read nothing for a while (the peer's writes back up), after
            // sending what is answered.
            metrics::counter!(m::INBOUND_THROTTLED, "node" => inner.self_id.to_string(), "peer" => from.to_string())
                .increment(1);
            if !flush(inner, write, out).await {
                return None;
            }
            tokio::select! {
                _ = inner.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            stalled += wait;
            continue;
        }
        // Take what is already readable; flush the answers before waiting for more.
        let next = match reader.next().now_or_never() {
            Some(next) => next,
            None => {
                if !flush(inner, write, out).await {
                    return None;
                }
                stalled = Duration::ZERO;
                let idle = inner.limits.idle_timeout_ms;
                tokio::select! {
                    _ = inner.shutdown.cancelled() => return None,
                    next = tokio::time::timeout(idle, reader.next()) => match next {
                        Ok(next) => next,
                        // Its peer's link pings when it has nothing to send: this one is gone,
                        // or trickles bytes that never make a frame.
                        Err(_) => {
                            count_bad_frame(inner, "idle");
                            break format!("no complete frame for {idle:?}");
                        }
                    },
                }
            }
        };
        let frame = match next {
            None => break "closed by the peer".to_string(),
            Some(Ok(frame)) => frame,
            Some(Err(err)) => {
                let reason = match err {
                    wire::WireError::TooLarge { .. } => "too_large",
                    wire::WireError::Malformed(_) => "malformed",
                    wire::WireError::Io(_) => "io",
                };
                count_bad_frame(inner, reason);
                break format!("bad frame: {err}");
            }
        };
        let answer = match frame {
            Frame::Forward(forward) => {
                let id = forward.id;
                let ttl = Duration::from_millis(forward.ttl_ms.into()).saturating_sub(stalled);
                let verdict = if ttl.is_zero() {
                    Some(Err(NackReason::Expired))
                } else if !forward.delivery.message.is_forwardable() {
                    Some(Err(NackReason::NotForwardable))
                } else if forward.delivery.to.node != inner.self_id
                    || forward.delivery.from.node != *from
                {
                    Some(Err(NackReason::Refused(format!(
                        "a message from `{}` to `{}` on a connection from `{from}` to `{}`",
                        forward.delivery.from.node, forward.delivery.to.node, inner.self_id
                    ))))
                } else {
                    // Delivered only while this connection is the peer's newest.
                    let verdict = {
                        let delivering = lock(delivering);
                        if *delivering == number {
                            Some(deliver.deliver(forward.delivery))
                        } else {
                            None
                        }
                    };
                    let Some(verdict) = verdict else {
                        return Some("a newer connection from the same node took over".into());
                    };
                    match verdict {
                        Verdict::Accepted => Some(Ok(())),
                        Verdict::Refused(reason) => Some(Err(reason)),
                        Verdict::Later(answer) => {
                            // The acks of what came before go out first; that counts against
                            // the time to live too.
                            let began = Instant::now();
                            if !flush(inner, write, out).await {
                                return None;
                            }
                            let expiry = began + ttl;
                            let answer = tokio::select! {
                                _ = inner.shutdown.cancelled() => return None,
                                answer = tokio::time::timeout_at(expiry, answer) => answer,
                            };
                            stalled += began.elapsed();
                            match answer {
                                Ok(Ok(result)) => Some(result),
                                Ok(Err(_)) => Some(Err(NackReason::Refused(
                                    "the handler dropped the message".into(),
                                ))),
                                // A handler that does not answer within the time to live gets
                                // no answer sent for it: the sender sees `Timeout`, as from a
                                // node that does not answer, which is the truth.
                                Err(_) => None,
                            }
                        }
                    }
                };
                match verdict {
                    Some(Ok(())) => Frame::Ack { id },
                    Some(Err(reason)) => Frame::Nack { id, reason },
                    None => continue,
                }
            }
            Frame::Ping { id } => Frame::Pong { id },
            other => {
                count_bad_frame(inner, "unexpected");
                break format!("unexpected frame {other:?}");
            }
        };
        if codec.encode(&answer, out).is_err() {
            break "an answer could not be encoded".to_string();
        }
        if out.len() >= ANSWER_BATCH_BYTES && !flush(inner, write, out).await {
            return None;
        }
    };
    Some(ended)
}
