//! The client transports: [`websocket`] (RFC 6455 with the WAMP subprotocols) and
//! [`rawsocket`] (WAMP RawSocket over TCP), each over plain TCP or TLS.
//!
//! Both frame messages and then share [`drive`]: a reader loop that feeds the session's
//! [`Connection`] and keeps its timers (the HELLO deadline, pings, the idle timeout), and a
//! writer task that writes what the session's outbox queues, many messages per flush.

pub mod rawsocket;
pub mod websocket;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::connection::{Connection, Flow, Realms};
use super::session::{Outbox, OutboxReader, Outgoing, TransportKind};
use crate::wamp::serializer::Serializer;

/// What a transport read.
#[derive(Debug)]
pub enum Inbound {
    /// One message's bytes.
    Message(Bytes),
    /// A message longer than the router takes, announced or read (its length).
    TooLarge(usize),
    /// A ping: answer it with this payload.
    Ping(Bytes),
    /// A pong (the client is alive).
    Pong,
    /// The client closed the connection.
    Closed,
}

/// The reading half of a transport.
pub trait FrameReader: Send {
    /// The next frame.
    fn read(&mut self) -> impl Future<Output = io::Result<Inbound>> + Send;
}

/// The writing half of a transport.
pub trait FrameWriter: Send + 'static {
    /// Buffers one frame.
    fn write(&mut self, frame: Outgoing) -> impl Future<Output = io::Result<()>> + Send;
    /// Writes what is buffered.
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the connection (after a flush).
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// The settings every connection follows.
#[derive(Debug, Clone)]
pub struct Limits {
    /// See `router.ping_interval_ms`.
    pub ping_interval: Duration,
    /// See `router.idle_timeout_ms`.
    pub idle_timeout: Duration,
    /// See `router.hello_timeout_ms`.
    pub hello_timeout: Duration,
    /// See `router.session_queue_messages`.
    pub queue_messages: usize,
    /// See `router.session_queue_bytes`.
    pub queue_bytes: usize,
}

/// How long the writer may take to write what is left once the session ended.
const WRITER_GRACE: Duration = Duration::from_secs(5);

/// Runs one connection until it closes: the session on this task, the writer on another.
/// `opened` is when the connection was accepted (the HELLO deadline counts from it).
#[allow(clippy::too_many_arguments)]
pub async fn drive<R: FrameReader, W: FrameWriter>(
    realms: Arc<Realms>,
    limits: &Limits,
    serializer: Serializer,
    kind: TransportKind,
    peer: std::net::SocketAddr,
    opened: Instant,
    mut reader: R,
    writer: W,
    shutdown: CancellationToken,
) {
    let closed = CancellationToken::new();
    let (outbox, out) = Outbox::new(
        serializer,
        limits.queue_messages,
        limits.queue_bytes,
        closed.clone(),
    );
    let mut writer = tokio::spawn(write_loop(out, writer));
    let mut connection = Connection::new(realms.clone(), outbox.clone(), kind, peer);
    let hello_deadline = opened + limits.hello_timeout;
    let mut last_heard = Instant::now();
    let mut ping =
        tokio::time::interval_at(Instant::now() + limits.ping_interval, limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_count: u64 = 0;
    loop {
        tokio::select! {
            read = reader.read() => match read {
                Ok(Inbound::Message(bytes)) => {
                    last_heard = Instant::now();
                    if connection.on_bytes(&bytes) == Flow::Close {
                        break;
                    }
                }
                Ok(Inbound::TooLarge(len)) => {
                    connection.too_large(len);
                    break;
                }
                Ok(Inbound::Ping(payload)) => {
                    last_heard = Instant::now();
                    outbox.send_control(Outgoing::Pong(payload));
                }
                Ok(Inbound::Pong) => last_heard = Instant::now(),
                Ok(Inbound::Closed) => break,
                Err(err) => {
                    debug!(%peer, %err, "client connection failed");
                    break;
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() >= limits.idle_timeout {
                    realms.refused("idle_timeout");
                    debug!(%peer, "closing a connection that stopped answering pings");
                    break;
                }
                ping_count += 1;
                outbox.send_control(Outgoing::Ping(Bytes::copy_from_slice(&ping_count.to_be_bytes())));
            }
            () = tokio::time::sleep_until(hello_deadline), if connection.joined().is_none() => {
                realms.refused("hello_timeout");
                debug!(%peer, "closing a connection that did not open a session in time");
                break;
            }
            () = closed.cancelled() => break,
            () = shutdown.cancelled() => {
                connection.shutdown();
                break;
            }
        }
    }
    connection.leave();
    outbox.close();
    let overflowed = outbox.overflowed();
    drop(connection);
    drop(outbox);
    if overflowed {
        // A slow consumer: what is queued would never be read.
        writer.abort();
    } else if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        debug!(%peer, "the writer did not finish in time; the connection is dropped");
        writer.abort();
    }
}

/// Writes what the outbox queues, as many frames per flush as are queued, until Close.
async fn write_loop<W: FrameWriter>(mut out: OutboxReader, mut writer: W) {
    let result: io::Result<()> = async {
        while let Some(frame) = out.rx.recv().await {
            let mut next = Some(frame);
            while let Some(frame) = next.take() {
                match frame {
                    Outgoing::Close => {
                        writer.flush().await?;
                        return writer.close().await;
                    }
                    Outgoing::Message(bytes) => {
                        let len = bytes.len();
                        writer.write(Outgoing::Message(bytes)).await?;
                        out.written(len);
                    }
                    other => writer.write(other).await?,
                }
                next = out.rx.try_recv().ok();
            }
            writer.flush().await?;
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
        debug!(%err, "writing to a client failed");
    }
}
