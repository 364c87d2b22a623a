//! What the router knows of one client session ([`SessionInfo`]), the bounded queue of what
//! it sends the client ([`Outbox`]), and the table of a realm's sessions ([`Sessions`]).
//!
//! A message for a session is encoded at once with the session's serializer and queued; the
//! connection's writer writes what is queued, in order. The queue is bounded in messages and
//! in bytes: a message that does not fit means the client does not read (a slow consumer), and
//! the session is closed at once (counted, logged once), so that it neither grows the router's
//! memory nor slows the sessions that send to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tracing::warn;

use super::metrics::RealmMetrics;
use crate::wamp::serializer::Serializer;
use crate::wamp::{Dict, Id, Value, WampMessage, MAX_ID};

/// A WAMP session id.
pub type SessionId = Id;

/// What a connection's writer does next.
#[derive(Debug)]
pub enum Outgoing {
    /// Write this encoded message.
    Message(Bytes),
    /// Send a transport-level ping with this payload.
    Ping(Bytes),
    /// Answer a transport-level ping.
    Pong(Bytes),
    /// Write what is queued before this, then close the connection.
    Close,
}

/// How a connection reached the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// WebSocket (RFC 6455).
    WebSocket,
    /// WAMP RawSocket over TCP.
    RawSocket,
}

impl TransportKind {
    /// The name the meta API and the admin API show (`websocket`, `rawsocket`).
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::RawSocket => "rawsocket",
        }
    }
}

/// A client session, as the router and the meta API see it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session id, random in [1, 2^53].
    pub id: SessionId,
    /// The realm it joined.
    pub realm: String,
    /// The authenticated id (anonymous sessions get a random one).
    pub authid: String,
    /// The role its permissions come from.
    pub authrole: String,
    /// How it authenticated (`anonymous`, `ticket`, `wampcra`, `cryptosign`).
    pub authmethod: String,
    /// Where its credentials were checked (`static`: the router's configuration).
    pub authprovider: String,
    /// The serializer it speaks.
    pub serializer: Serializer,
    /// The transport it came over.
    pub transport: TransportKind,
    /// Its address.
    pub peer: SocketAddr,
    /// The roles and features its HELLO announced.
    pub roles: Dict,
    /// When it joined.
    pub joined: SystemTime,
}

impl SessionInfo {
    /// Whether the client announced `feature` for `role` (`callee`, `call_canceling`).
    pub fn has_feature(&self, role: &str, feature: &str) -> bool {
        let Some(Value::Dict(role)) = self.roles.get(role) else {
            return false;
        };
        let Some(Value::Dict(features)) = role.get("features") else {
            return false;
        };
        matches!(features.get(feature), Some(Value::Bool(true)))
    }
}

/// Why a session was closed from the router's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Its queue held as many messages as it may.
    Messages,
    /// Its queue held as many bytes as it may.
    Bytes,
}

/// The bounded queue of what a session sends its client, and the way to close it.
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    serializer: Serializer,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    closed: CancellationToken,
    overflowed: AtomicBool,
}

/// The writer's end of an [`Outbox`].
#[derive(Debug)]
pub struct OutboxReader {
    /// What to write, in order.
    pub rx: mpsc::Receiver<Outgoing>,
    /// Bytes queued and not yet written: the writer subtracts what it wrote.
    pub queued_bytes: Arc<AtomicUsize>,
}

impl OutboxReader {
    /// Counts `n` bytes of a message as written.
    pub fn written(&self, n: usize) {
        self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
    }
}

impl Outbox {
    /// A queue of at most `max_messages` messages and `max_bytes` bytes, for a client that
    /// speaks `serializer`; `closed` is cancelled when the router closes the session.
    pub fn new(
        serializer: Serializer,
        max_messages: usize,
        max_bytes: usize,
        closed: CancellationToken,
    ) -> (Arc<Outbox>, OutboxReader) {
        // One more slot than messages: the Close that follows an ABORT always fits.
        let (tx, rx) = mpsc::channel(max_messages.max(1) + 1);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let outbox = Outbox {
            tx,
            serializer,
            queued_bytes: queued_bytes.clone(),
            max_bytes,
            closed,
            overflowed: AtomicBool::new(false),
        };
        (Arc::new(outbox), OutboxReader { rx, queued_bytes })
    }

    /// The serializer the client speaks.
    pub fn serializer(&self) -> Serializer {
        self.serializer
    }

    /// Encodes and queues a message. `Err` when the client does not read fast enough: the
    /// session is then closed (the caller counts and logs it, once: the first `Err` only).
    pub fn send(&self, message: &WampMessage) -> Result<(), Overflow> {
        self.send_encoded(Bytes::from(self.serializer.encode(message)))
    }

    /// Queues a message already encoded with [`Outbox::serializer`].
    pub fn send_encoded(&self, bytes: Bytes) -> Result<(), Overflow> {
        if self.closed.is_cancelled() {
            // Closing already: what is sent now would never be written.
            return Ok(());
        }
        let len = bytes.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return self.overflow(Overflow::Bytes);
        }
        // The capacity keeps one slot for Close: a message may use all but that one.
        if self.tx.capacity() <= 1 {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return self.overflow(Overflow::Messages);
        }
        if self.tx.try_send(Outgoing::Message(bytes)).is_err() {
            // The writer is gone: the connection is closing.
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        Ok(())
    }

    fn overflow(&self, why: Overflow) -> Result<(), Overflow> {
        self.closed.cancel();
        if self.overflowed.swap(true, Ordering::Relaxed) {
            Ok(())
        } else {
            Err(why)
        }
    }

    /// Queues a transport-level frame (a ping, a pong); dropped when the queue is full.
    pub fn send_control(&self, frame: Outgoing) {
        let _ = self.tx.try_send(frame);
    }

    /// Closes the session from the router's side (the meta API killed it): what is queued is
    /// written, then the connection closes.
    pub fn kill(&self) {
        self.close();
        self.closed.cancel();
    }

    /// Whether the session was closed for not reading (a slow consumer).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Writes what is queued, then closes the connection.
    pub fn close(&self) {
        let _ = self.tx.try_send(Outgoing::Close);
    }

    /// Whether the router closed this session.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

/// A joined session: what it is and where its messages go.
#[derive(Debug, Clone)]
pub struct Joined {
    /// What it is.
    pub info: Arc<SessionInfo>,
    /// Where its messages go.
    pub outbox: Arc<Outbox>,
}

/// The sessions of one realm on this node, the ids it hands out in their scope, and the way
/// to send them messages.
#[derive(Debug)]
pub struct Sessions {
    map: HashMap<SessionId, Entry>,
    metrics: Arc<RealmMetrics>,
}

#[derive(Debug)]
struct Entry {
    joined: Joined,
    /// The last request id the router used in this session's scope (INVOCATIONs).
    last_request: Id,
}

impl Sessions {
    /// No sessions yet, in a realm with these metrics.
    pub fn new(metrics: Arc<RealmMetrics>) -> Sessions {
        Sessions {
            map: HashMap::new(),
            metrics,
        }
    }

    /// The realm's metrics.
    pub fn metrics(&self) -> &RealmMetrics {
        &self.metrics
    }

    /// Sends a message to a session; `false` when it is gone or was just closed for not
    /// reading (a slow consumer: counted and logged here, once).
    pub fn send(&self, id: SessionId, message: &WampMessage) -> bool {
        match self.get(id) {
            Some(joined) => self.send_to(joined, message),
            None => false,
        }
    }

    /// Sends a message to a joined session; see [`Sessions::send`].
    pub fn send_to(&self, joined: &Joined, message: &WampMessage) -> bool {
        if let WampMessage::Error { error, .. } = message {
            self.metrics.error(error);
        }
        let bytes = Bytes::from(joined.outbox.serializer().encode(message));
        self.send_encoded(joined, message.code(), bytes)
    }

    /// Sends a message of type `code` encoded already with the session's serializer.
    pub fn send_encoded(&self, joined: &Joined, code: u64, bytes: Bytes) -> bool {
        match joined.outbox.send_encoded(bytes) {
            Ok(()) => {
                self.metrics.message_out(code);
                !joined.outbox.is_closed()
            }
            Err(why) => {
                self.metrics.slow_consumers.increment(1);
                warn!(
                    session = joined.info.id,
                    realm = %joined.info.realm,
                    queue = ?why,
                    "session closed: its client does not read what it is sent (slow consumer)"
                );
                false
            }
        }
    }

    /// Adds a session.
    pub fn insert(&mut self, joined: Joined) {
        self.map.insert(
            joined.info.id,
            Entry {
                joined,
                last_request: 0,
            },
        );
    }

    /// Removes a session.
    pub fn remove(&mut self, id: SessionId) -> Option<Joined> {
        self.map.remove(&id).map(|e| e.joined)
    }

    /// A session.
    pub fn get(&self, id: SessionId) -> Option<&Joined> {
        self.map.get(&id).map(|e| &e.joined)
    }

    /// Whether the id is taken.
    pub fn contains(&self, id: SessionId) -> bool {
        self.map.contains_key(&id)
    }

    /// How many sessions there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every session.
    pub fn iter(&self) -> impl Iterator<Item = &Joined> {
        self.map.values().map(|e| &e.joined)
    }

    /// The next request id in a session's scope (1, 2, …, 2^53, then 1 again).
    pub fn next_request(&mut self, id: SessionId) -> Option<Id> {
        let entry = self.map.get_mut(&id)?;
        entry.last_request = if entry.last_request >= MAX_ID {
            1
        } else {
            entry.last_request + 1
        };
        Some(entry.last_request)
    }
}

/// A random id in [1, 2^53], as the spec asks for ids of global scope.
pub fn random_id() -> Id {
    let mut bytes = [0u8; 8];
    // The OS's generator does not fail on the systems this runs on; if it did, a clock-derived
    // value still gives distinct ids.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_le_bytes();
    }
    (u64::from_le_bytes(bytes) % MAX_ID) + 1
}

/// An RFC 3339 UTC timestamp (`2026-12-08T02:31:26.123Z`).
pub fn timestamp(time: SystemTime) -> String {
    let d = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> WampMessage {
        WampMessage::Abort {
            details: Dict::new(),
            reason: "x".repeat(len),
        }
    }

    #[tokio::test]
    async fn a_full_outbox_closes_the_session_and_says_so_once() {
        let closed = CancellationToken::new();
        let (outbox, mut reader) = Outbox::new(Serializer::Json, 2, 1 << 20, closed.clone());
        outbox.send(&message(1)).unwrap();
        outbox.send(&message(1)).unwrap();
        assert_eq!(outbox.send(&message(1)), Err(Overflow::Messages));
        assert!(closed.is_cancelled());
        assert_eq!(outbox.send(&message(1)), Ok(()), "closed: said once");
        outbox.close();
        let mut n = 0;
        while let Ok(item) = reader.rx.try_recv() {
            if let Outgoing::Message(bytes) = item {
                reader.written(bytes.len());
            }
            n += 1;
        }
        assert_eq!(n, 3, "two messages and the close");
        assert_eq!(reader.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_outbox_is_bounded_in_bytes_but_takes_one_message_of_any_size() {
        let (outbox, _reader) = Outbox::new(Serializer::Json, 100, 100, CancellationToken::new());
        outbox.send(&message(500)).unwrap();
        assert_eq!(outbox.send(&message(1)), Err(Overflow::Bytes));
    }

    #[test]
    fn request_ids_count_up_per_session_and_wrap_after_2_pow_53() {
        let mut sessions = Sessions::new(Arc::new(RealmMetrics::new("n", "realm1")));
        let (outbox, _reader) = Outbox::new(Serializer::Json, 1, 1, CancellationToken::new());
        let info = SessionInfo {
            id: 7,
            realm: "realm1".into(),
            authid: "a".into(),
            authrole: "anonymous".into(),
            authmethod: "anonymous".into(),
            authprovider: "static".into(),
            serializer: Serializer::Json,
            transport: TransportKind::WebSocket,
            peer: ([127, 0, 0, 1], 1).into(),
            roles: Dict::new(),
            joined: SystemTime::now(),
        };
        sessions.insert(Joined {
            info: Arc::new(info),
            outbox,
        });
        assert_eq!(sessions.next_request(7), Some(1));
        assert_eq!(sessions.next_request(7), Some(2));
        assert_eq!(sessions.next_request(8), None);
        sessions.map.get_mut(&7).unwrap().last_request = MAX_ID;
        assert_eq!(sessions.next_request(7), Some(1));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_697_086_123);
        assert_eq!(timestamp(t), "2026-12-08T02:31:26.123Z");
    }

    #[test]
    fn random_ids_are_within_the_specs_range() {
        for _ in 0..1000 {
            let id = random_id();
            assert!((1..=MAX_ID).contains(&id));
        }
    }
}
