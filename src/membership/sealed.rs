//! Sealed gossip: a chitchat [`Transport`] whose datagrams are sealed with the cluster secret
//! (see [`crate::security`]).
//!
//! chitchat encodes its messages inside its own socket and keeps the encoding to itself, so
//! this transport runs chitchat's public UDP socket on loopback and relays:
//!
//! - out: chitchat's socket sends to one loopback relay socket; the bytes read there are
//!   sealed and sent from the public socket to the real peer;
//! - in: a datagram from the public socket is opened and passed on to chitchat's socket from
//!   a loopback relay socket that stands for its sender (one per peer, at most
//!   [`MAX_RELAYS`]); what chitchat's socket then reads from that relay is handed to chitchat
//!   as coming from the real peer.
//!
//! chitchat fills a datagram up to the UDP limit when it has that much state to send; sealed,
//! such a message would not fit, so a message is sealed in two parts when it must be (each
//! part sealed on its own; the receiver puts the parts back together, keeping at most
//! [`MAX_PARTIAL`] incomplete messages for at most `gossip.replay_window_ms`).
//!
//! Datagrams that do not open (no secret of this node seals them, changed, too old, replayed)
//! never reach chitchat: they are dropped and counted in
//! `wamp_cluster_gossip_dropped_total{reason}`. So a node without the secret can neither join,
//! read the member list, nor move the failure detector.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::ChitchatEnvelope;
use tokio::net::UdpSocket as TokioUdpSocket;
use tracing::{info, warn};

use crate::log_limit::Limiter;
use crate::metrics as m;
use crate::security::{ClusterKeys, ReplayGuard, SEAL_OVERHEAD};

/// Peers with a relay socket at once; past it the one heard from least recently gives its
/// socket up. Each is a file descriptor: well under the usual limit of 1024 a process.
pub const MAX_RELAYS: usize = 256;

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// The largest message sealed in one datagram (with its one-byte header).
const MAX_SEALED_MESSAGE: usize = MAX_DATAGRAM - SEAL_OVERHEAD;

/// The first byte of a sealed message: a whole chitchat datagram follows.
const WHOLE: u8 = 0;
/// The first byte of a sealed message: a part follows, after `index (1) | count (1) | id (8)`
/// (a random id per message and sender).
const PART: u8 = 1;
const PART_HEADER: usize = 11;

/// Parts a message is sealed in at most (a chitchat datagram needs two).
const MAX_PARTS: u8 = 4;

/// Messages whose parts have not all arrived, kept at once; past it the oldest is dropped.
pub const MAX_PARTIAL: usize = 16;

/// Log lines a second about dropped datagrams.
const DROP_LINES_PER_SEC: u32 = 10;

/// A transport sealing every datagram with the first of `keys` and opening with any.
pub(crate) struct SealedTransport {
    pub(crate) keys: ClusterKeys,
    pub(crate) replay_window_ms: u64,
    /// How long a send waits for chitchat's bytes at the relay (they cross loopback at once):
    /// `gossip.interval_ms`.
    pub(crate) relay_timeout: Duration,
    /// The node id, for the metrics' `node` label.
    pub(crate) node: String,
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let public = TokioUdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("failed to bind to {listen_addr}/UDP for gossip"))?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let chitchat = UdpSocket::open(loopback).await?;
        let chitchat_addr = chitchat.local_addr()?;
        let out = TokioUdpSocket::bind(loopback)
            .await
            .context("failed to bind the gossip relay")?;
        let out_addr = out.local_addr()?;
        Ok(Box::new(SealedSocket {
            public,
            chitchat,
            chitchat_addr,
            out,
            out_addr,
            relays: HashMap::new(),
            peers: HashMap::new(),
            used: 0,
            keys: self.keys.clone(),
            guard: ReplayGuard::new(self.replay_window_ms),
            buf: vec![0; MAX_DATAGRAM + 1].into_boxed_slice(),
            message: Vec::with_capacity(MAX_DATAGRAM),
            sealed: Vec::with_capacity(MAX_DATAGRAM),
            parts: Parts::new(Duration::from_millis(self.replay_window_ms)),
            next_id: u64::from_be_bytes(crate::security::random()?),
            node: self.node.clone(),
            log: Limiter::new(DROP_LINES_PER_SEC),
            relay_timeout: self.relay_timeout,
        }))
    }
}

struct Relay {
    socket: std::net::UdpSocket,
    addr: SocketAddr,
    /// When it was last used, in uses of any relay.
    used: u64,
}

struct SealedSocket {
    /// The socket peers see.
    public: TokioUdpSocket,
    /// chitchat's own socket, on loopback.
    chitchat: UdpSocket,
    chitchat_addr: SocketAddr,
    /// Where chitchat's socket sends what this socket then seals.
    out: TokioUdpSocket,
    out_addr: SocketAddr,
    /// Per peer, the relay socket its datagrams reach chitchat's socket from.
    relays: HashMap<SocketAddr, Relay>,
    /// Per relay address, its peer.
    peers: HashMap<SocketAddr, SocketAddr>,
    used: u64,
    keys: ClusterKeys,
    guard: ReplayGuard,
    buf: Box<[u8]>,
    message: Vec<u8>,
    sealed: Vec<u8>,
    /// Messages received in parts, not complete yet.
    parts: Parts,
    /// The id of the next message sent in parts.
    next_id: u64,
    node: String,
    log: Limiter,
    relay_timeout: Duration,
}

/// A message received in parts, not complete yet.
struct Partial {
    from: SocketAddr,
    id: u64,
    parts: Vec<Option<Vec<u8>>>,
    since: std::time::Instant,
}

/// Puts messages sealed in parts back together.
struct Parts {
    partial: std::collections::VecDeque<Partial>,
    keep: Duration,
}

impl Parts {
    fn new(keep: Duration) -> Parts {
        Parts {
            partial: Default::default(),
            keep,
        }
    }

    /// Adds part `index` of `count` of message `id` from `from`; the whole message once every
    /// part has come. `Err` for a part that cannot be one.
    fn add(
        &mut self,
        from: SocketAddr,
        id: u64,
        index: u8,
        count: u8,
        part: &[u8],
        now: std::time::Instant,
    ) -> Result<Option<Vec<u8>>, ()> {
        if !(2..=MAX_PARTS).contains(&count) || index >= count {
            return Err(());
        }
        self.partial
            .retain(|p| now.saturating_duration_since(p.since) < self.keep);
        let at = match self
            .partial
            .iter()
            .position(|p| p.from == from && p.id == id)
        {
            Some(at) => at,
            None => {
                if self.partial.len() >= MAX_PARTIAL {
                    self.partial.pop_front();
                }
                self.partial.push_back(Partial {
                    from,
                    id,
                    parts: vec![None; usize::from(count)],
                    since: now,
                });
                self.partial.len() - 1
            }
        };
        let partial = &mut self.partial[at];
        if partial.parts.len() != usize::from(count) {
            return Err(());
        }
        partial.parts[usize::from(index)] = Some(part.to_vec());
        if partial.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let whole = self
            .partial
            .remove(at)
            .map(|p| p.parts.into_iter().flatten().flatten().collect());
        Ok(whole)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A receive error the socket survives (as chitchat's own socket treats them).
fn is_transient(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::OutOfMemory
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
    )
}

enum Event {
    Chitchat(anyhow::Result<RecvOutcome>),
    Public(std::io::Result<(usize, SocketAddr)>),
}

impl SealedSocket {
    fn dropped(&self, reason: &'static str, from: Option<SocketAddr>, len: usize) {
        metrics::counter!(m::GOSSIP_DROPPED, "node" => self.node.clone(), "reason" => reason)
            .increment(1);
        if let Some(left_out) = self.log.check(std::time::Instant::now()) {
            match from {
                Some(from) => info!(%from, len, reason, left_out, "gossip datagram dropped"),
                None => warn!(len, reason, left_out, "gossip datagram dropped"),
            }
        }
    }

    /// The relay socket that stands for `peer`, made if needed.
    fn relay(&mut self, peer: SocketAddr) -> anyhow::Result<&Relay> {
        self.used += 1;
        if !self.relays.contains_key(&peer) {
            if self.relays.len() >= MAX_RELAYS {
                let oldest = self
                    .relays
                    .iter()
                    .min_by_key(|(_, relay)| relay.used)
                    .map(|(peer, relay)| (*peer, relay.addr));
                if let Some((old_peer, old_addr)) = oldest {
                    self.relays.remove(&old_peer);
                    self.peers.remove(&old_addr);
                }
            }
            // It only sends, at once (never waiting): a plain socket, without the runtime.
            let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .context("failed to bind a gossip relay")?;
            socket.set_nonblocking(true)?;
            let addr = socket.local_addr()?;
            self.peers.insert(addr, peer);
            self.relays.insert(
                peer,
                Relay {
                    socket,
                    addr,
                    used: 0,
                },
            );
        }
        let used = self.used;
        let relay = self.relays.get_mut(&peer).context("gossip relay missing")?;
        relay.used = used;
        Ok(relay)
    }

    /// Opens a datagram read from the public socket and passes it on to chitchat's socket.
    /// Nothing in it waits, so a `recv` cancelled after a datagram was read cannot lose it.
    fn pass_on(&mut self, len: usize, from: SocketAddr) {
        if len > MAX_DATAGRAM {
            self.dropped("unsealed", Some(from), len);
            return;
        }
        let opened = self.keys.open(
            &self.buf[..len],
            now_ms(),
            &mut self.guard,
            &mut self.message,
        );
        if let Err(reason) = opened {
            self.dropped(reason.name(), Some(from), len);
            return;
        }
        let message = match *self.message.as_slice() {
            [WHOLE, ..] => {
                self.message.remove(0);
                std::mem::take(&mut self.message)
            }
            [PART, index, count, a, b, c, d, e, f, g, h, ..] => {
                let id = u64::from_be_bytes([a, b, c, d, e, f, g, h]);
                let part = &self.message[PART_HEADER..];
                let now = std::time::Instant::now();
                match self.parts.add(from, id, index, count, part, now) {
                    Ok(Some(whole)) => whole,
                    Ok(None) => return,
                    Err(()) => {
                        self.dropped("unsealed", Some(from), len);
                        return;
                    }
                }
            }
            _ => {
                self.dropped("unsealed", Some(from), len);
                return;
            }
        };
        let to = self.chitchat_addr;
        let sent = match self.relay(from) {
            Ok(relay) => relay.socket.send_to(&message, to).map(|_| ()),
            Err(err) => Err(std::io::Error::other(err)),
        };
        self.message = message;
        if let Err(err) = sent {
            if self.log.check(std::time::Instant::now()).is_some() {
                warn!(%err, "cannot pass a gossip datagram on");
            }
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public
            .local_addr()
            .context("failed to get UDP socket address")
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // Bytes left by a send that was cancelled half-way belong to nobody now.
        while self.out.try_recv_from(&mut self.buf).is_ok() {}
        self.chitchat.send(self.out_addr, envelope).await?;
        let deadline = tokio::time::Instant::now() + self.relay_timeout;
        let len = loop {
            let (len, from) = tokio::time::timeout_at(deadline, self.out.recv_from(&mut self.buf))
                .await
                .context("gossip relay: chitchat's datagram did not arrive")??;
            // Anything else on loopback that writes to the relay is not sealed.
            if from == self.chitchat_addr {
                break len;
            }
        };
        let datagram = &self.buf[..len];
        let whole = len < MAX_SEALED_MESSAGE;
        let part_len = MAX_SEALED_MESSAGE - PART_HEADER;
        // A UDP datagram needs two parts at most.
        let count = if whole { 1 } else { len.div_ceil(part_len) };
        let count = u8::try_from(count)
            .ok()
            .filter(|&c| c <= MAX_PARTS)
            .context("gossip datagram too large to seal")?;
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let now = now_ms();
        for index in 0..count {
            self.message.clear();
            if whole {
                self.message.push(WHOLE);
                self.message.extend_from_slice(datagram);
            } else {
                self.message.extend_from_slice(&[PART, index, count]);
                self.message.extend_from_slice(&id.to_be_bytes());
                let start = usize::from(index) * part_len;
                self.message
                    .extend_from_slice(&datagram[start..(start + part_len).min(len)]);
            }
            self.keys
                .seal(&self.message, now, &mut self.sealed)
                .context("cannot seal gossip")?;
            self.public
                .send_to(&self.sealed, to)
                .await
                .context("failed to send chitchat message to peer")?;
        }
        Ok(SendOutcome {
            num_bytes_sent: len,
        })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            // Both reads are cancel-safe: a datagram passed on and not read yet is read by
            // the next call, and still maps to its peer.
            let event = tokio::select! {
                outcome = self.chitchat.recv() => Event::Chitchat(outcome),
                received = self.public.recv_from(&mut self.buf) => Event::Public(received),
            };
            match event {
                Event::Chitchat(outcome) => {
                    let mut outcome = outcome?;
                    match self.peers.get(&outcome.from_addr) {
                        Some(peer) => {
                            outcome.from_addr = *peer;
                            return Ok(outcome);
                        }
                        // Not from a relay (another local process), or from one given up.
                        None => self.dropped("unsealed", Some(outcome.from_addr), 0),
                    }
                }
                Event::Public(Ok((len, from))) => self.pass_on(len, from),
                Event::Public(Err(err)) if is_transient(&err) => {}
                Event::Public(Err(err)) => return Err(err).context("fatal UDP recv error"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chitchat::{ChitchatMessage, ProtocolVersion};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    #[test]
    fn parts_come_together_in_any_order_and_bad_or_old_ones_do_not() {
        let now = std::time::Instant::now();
        let mut parts = Parts::new(Duration::from_secs(1));
        assert_eq!(parts.add(addr(1), 7, 1, 2, b"world", now), Ok(None));
        // The same id from another sender is another message.
        assert_eq!(parts.add(addr(2), 7, 0, 2, b"other ", now), Ok(None));
        assert_eq!(
            parts.add(addr(1), 7, 0, 2, b"hello ", now),
            Ok(Some(b"hello world".to_vec()))
        );
        assert_eq!(parts.add(addr(1), 8, 2, 2, b"x", now), Err(()));
        assert_eq!(parts.add(addr(1), 8, 0, 1, b"x", now), Err(()));
        assert_eq!(parts.add(addr(1), 8, 0, MAX_PARTS + 1, b"x", now), Err(()));
        assert_eq!(
            parts.add(addr(2), 7, 0, 3, b"x", now),
            Err(()),
            "count changed"
        );
        // Past the time to keep them, parts are forgotten.
        let later = now + Duration::from_secs(2);
        assert_eq!(parts.add(addr(2), 7, 1, 2, b"late", later), Ok(None));
        assert_eq!(parts.partial.len(), 1);
        for id in 0..(MAX_PARTIAL as u64 * 2) {
            assert_eq!(parts.add(addr(3), id, 0, 2, b"x", later), Ok(None));
        }
        assert_eq!(parts.partial.len(), MAX_PARTIAL);
    }

    async fn socket(keys: &ClusterKeys) -> Box<dyn Socket> {
        let transport = SealedTransport {
            keys: keys.clone(),
            replay_window_ms: 30_000,
            relay_timeout: Duration::from_millis(200),
            node: "test".into(),
        };
        transport.open(addr(0)).await.unwrap()
    }

    fn syn(cluster_id: String) -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn {
                cluster_id,
                digest: Default::default(),
            },
        }
    }

    /// Through two sealed sockets, a small message and one as large as a datagram can be
    /// (sealed in two parts) reach chitchat as sent, from the sender's public address; a
    /// socket with another secret gets neither.
    #[tokio::test]
    async fn messages_of_any_size_cross_sealed_sockets_and_only_with_the_secret() {
        let keys = ClusterKeys::new(["a-secret-for-sockets-0123"], "c");
        let (mut a, mut b) = (socket(&keys).await, socket(&keys).await);
        let mut outsider = socket(&ClusterKeys::new(["another-secret-0123456"], "c")).await;
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // 65,507 bytes in all: the largest a UDP datagram holds.
        let large = "x".repeat(MAX_DATAGRAM - 17);
        for cluster_id in ["small".to_string(), large] {
            let sent = a.send(b_addr, syn(cluster_id.clone())).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), b.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.from_addr, a_addr);
            assert_eq!(got.envelope, syn(cluster_id.clone()));
            assert_eq!(sent.num_bytes_sent, got.num_bytes_received);
            // The large one does not fit one sealed datagram.
            assert!(cluster_id.len() < 100 || sent.num_bytes_sent >= MAX_SEALED_MESSAGE);
            outsider
                .send(b_addr, syn(cluster_id.clone()))
                .await
                .unwrap();
            a.send(outsider.local_addr().unwrap(), syn(cluster_id))
                .await
                .unwrap();
        }
        assert_eq!(
            a.send(b_addr, syn("after".into()))
                .await
                .unwrap()
                .num_bytes_sent,
            b.recv().await.unwrap().num_bytes_received
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(300), outsider.recv())
                .await
                .is_err(),
            "the outsider opened something"
        );
    }
}
