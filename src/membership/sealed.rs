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
/// socket up.
pub const MAX_RELAYS: usize = 1024;

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// How long a send waits for chitchat's bytes at the relay (they cross loopback at once).
const RELAY_TIMEOUT: Duration = Duration::from_secs(1);

/// Log lines a second about dropped datagrams.
const DROP_LINES_PER_SEC: u32 = 10;

/// A transport sealing every datagram with the first of `keys` and opening with any.
pub(crate) struct SealedTransport {
    pub(crate) keys: ClusterKeys,
    pub(crate) replay_window_ms: u64,
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
            sealed: Vec::with_capacity(MAX_DATAGRAM + SEAL_OVERHEAD),
            node: self.node.clone(),
            log: Limiter::new(DROP_LINES_PER_SEC),
        }))
    }
}

struct Relay {
    socket: TokioUdpSocket,
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
    node: String,
    log: Limiter,
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
    async fn relay(&mut self, peer: SocketAddr) -> anyhow::Result<&Relay> {
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
            let socket = TokioUdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .context("failed to bind a gossip relay")?;
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
    async fn pass_on(&mut self, len: usize, from: SocketAddr) -> anyhow::Result<()> {
        if len > MAX_DATAGRAM {
            self.dropped("unsealed", Some(from), len);
            return Ok(());
        }
        let opened = self.keys.open(
            &self.buf[..len],
            now_ms(),
            &mut self.guard,
            &mut self.message,
        );
        if let Err(reason) = opened {
            self.dropped(reason.name(), Some(from), len);
            return Ok(());
        }
        let to = self.chitchat_addr;
        let message = std::mem::take(&mut self.message);
        let sent = match self.relay(from).await {
            Ok(relay) => relay.socket.send_to(&message, to).await.map(|_| ()),
            Err(err) => Err(std::io::Error::other(err)),
        };
        self.message = message;
        if let Err(err) = sent {
            if self.log.check(std::time::Instant::now()).is_some() {
                warn!(%err, "cannot pass a gossip datagram on");
            }
        }
        Ok(())
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
        let deadline = tokio::time::Instant::now() + RELAY_TIMEOUT;
        let len = loop {
            let (len, from) = tokio::time::timeout_at(deadline, self.out.recv_from(&mut self.buf))
                .await
                .context("gossip relay: chitchat's datagram did not arrive")??;
            // Anything else on loopback that writes to the relay is not sealed.
            if from == self.chitchat_addr {
                break len;
            }
        };
        self.keys.seal(&self.buf[..len], now_ms(), &mut self.sealed);
        if self.sealed.len() > MAX_DATAGRAM {
            self.dropped("too_large", None, self.sealed.len());
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.public
            .send_to(&self.sealed, to)
            .await
            .context("failed to send chitchat message to peer")?;
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
                Event::Public(Ok((len, from))) => self.pass_on(len, from).await?,
                Event::Public(Err(err)) if is_transient(&err) => {}
                Event::Public(Err(err)) => return Err(err).context("fatal UDP recv error"),
            }
        }
    }
}
