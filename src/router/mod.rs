//! The WAMP router every node runs: clients connect over WebSocket or RawSocket, join a realm,
//! and call, register, publish and subscribe.
//!
//! It is built on the library's public API only, as any embedder would (`tests/layout.rs`
//! checks that nothing here reaches a private item of the crate).
//!
//! # Layout
//!
//! - [`uri`]: URI rules, match policies and the [`uri::PatternMap`] the dealer and the broker
//!   share; the spec's error URIs.
//! - [`config`]: the `[router]` section. [`metrics`]: metric names and a realm's series.
//! - [`session`]: a session's info and its bounded [`session::Outbox`]; the realm's session
//!   table. [`request`]: option reading and refusals.
//! - [`dealer`] (registrations, calls, policies, cancel, timeouts) and [`broker`]
//!   (subscriptions, publications): the routing table, one entry per (match, URI) whose
//!   candidates are sessions here and will be nodes of the cluster.
//! - [`auth`]: authentication methods and role rules. [`realm`]: one realm's state under one
//!   lock, and what a session's message does to it.
//! - [`connection`]: a connection's session state machine (HELLO … GOODBYE).
//! - [`admin`]: the router's routes on the node's admin API.
//! - [`transport`]: WebSocket and RawSocket framing, the timers, the writer.
//!
//! # How a call flows
//!
//! A CALL arrives on the caller's connection task, is decoded with the connection's
//! serializer, and [`realm::Realm::handle`] takes the realm's lock: the dealer finds the best
//! match, picks the callee by the registration's policy, gives the INVOCATION the callee's next
//! request id, records the call (and its deadline), encodes the INVOCATION with the callee's
//! serializer and queues it on the callee's outbox. The callee's writer task writes it. The
//! YIELD comes back the same way and ends the call with a RESULT on the caller's outbox.

pub mod admin;
pub mod auth;
pub mod broker;
pub mod config;
pub mod connection;
pub mod dealer;
pub mod meta;
pub mod metrics;
pub mod realm;
pub mod request;
pub mod session;
pub mod state;
pub mod transport;
pub mod uri;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use self::config::RouterConfig;
use self::connection::Realms;
use self::realm::Realm;
use self::session::TransportKind;
use self::transport::rawsocket::{self, HandshakeError, RawReader, RawWriter};
use self::transport::websocket::{self, WsReader, WsWriter};
use self::transport::{drive, Limits};
use crate::config::Section;
use crate::{ConfigError, TlsConfig};

/// Why a router did not start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A setting is wrong (the key is named); nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not bind its address; nothing was started.
    #[error("router: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// A running router: its listeners and every connection's task.
pub struct Router {
    realms: Arc<Realms>,
    tls: bool,
    ws_addr: SocketAddr,
    rawsocket_addr: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// What the accept loops share.
struct Accepting {
    realms: Arc<Realms>,
    limits: Limits,
    max_connections: usize,
    connections: AtomicUsize,
    acceptor: Option<TlsAcceptor>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// How long a router's shutdown waits for its connections to say GOODBYE and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Router {
    /// Starts a router for node `node`: its realms (secrets read from their files) and its
    /// listeners; with `router.tls`, over TLS with the node's `[tls]` certificate (`tls`).
    pub async fn start(
        config: RouterConfig,
        node: &str,
        tls: &TlsConfig,
    ) -> Result<Router, RouterError> {
        config.validate()?;
        metrics::describe();
        let acceptor = if config.tls {
            Some(crate::client_acceptor(tls)?.ok_or_else(|| {
                ConfigError::invalid(
                    "router.tls",
                    "needs tls.cert_file and tls.key_file (the certificate clients see)",
                )
            })?)
        } else {
            None
        };
        let mut map = HashMap::new();
        for (i, realm) in config.effective_realms().iter().enumerate() {
            let key = format!("router.realms[{i}]");
            let realm_state = Realm::new(realm, &key, node, config.max_retained_events)?;
            map.insert(realm.name.clone(), Arc::new(realm_state));
        }
        let realms = Arc::new(Realms {
            node: node.to_owned(),
            map,
            max_message_bytes: config.max_message_bytes,
        });
        let ws = listen(config.ws_addr)?;
        let raw = match config.rawsocket_addr {
            Some(addr) => Some(listen(addr)?),
            None => None,
        };
        let local = |l: &TcpListener, addr| {
            l.local_addr()
                .map_err(|source| RouterError::Bind { addr, source })
        };
        let ws_addr = local(&ws, config.ws_addr)?;
        let rawsocket_addr = match (&raw, config.rawsocket_addr) {
            (Some(l), Some(addr)) => Some(local(l, addr)?),
            _ => None,
        };
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let accepting = Arc::new(Accepting {
            realms: realms.clone(),
            limits: Limits {
                ping_interval: config.ping_interval_ms,
                idle_timeout: config.idle_timeout_ms,
                hello_timeout: config.hello_timeout_ms,
                queue_messages: config.session_queue_messages,
                queue_bytes: config.session_queue_bytes,
            },
            max_connections: config.max_connections,
            connections: AtomicUsize::new(0),
            acceptor,
            stop: stop.clone(),
            tasks: tasks.clone(),
        });
        for realm in realms.map.values() {
            tasks.spawn(realm.clone().run_deadlines(stop.clone()));
        }
        tasks.spawn(accept_loop(ws, TransportKind::WebSocket, accepting.clone()));
        if let Some(raw) = raw {
            tasks.spawn(accept_loop(raw, TransportKind::RawSocket, accepting));
        }
        info!(node, %ws_addr, rawsocket_addr = ?rawsocket_addr, realms = realms.map.len(), "router listening");
        Ok(Router {
            realms,
            tls: config.tls,
            ws_addr,
            rawsocket_addr,
            stop,
            tasks,
        })
    }

    /// The WebSocket listener's address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The WebSocket URL clients connect to (`ws://127.0.0.1:8090/ws`, `wss://` with TLS).
    pub fn ws_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.ws_addr)
    }

    /// The RawSocket listener's address, if it has one.
    pub fn rawsocket_addr(&self) -> Option<SocketAddr> {
        self.rawsocket_addr
    }

    /// A realm.
    pub fn realm(&self, name: &str) -> Option<&Arc<Realm>> {
        self.realms.map.get(name)
    }

    /// Every realm.
    pub fn realms(&self) -> impl Iterator<Item = &Arc<Realm>> {
        self.realms.map.values()
    }

    /// The router's routes for the node's admin API (`GET /router/sessions`,
    /// `/router/registrations`, `/router/subscriptions`): give them to
    /// [`NodeBuilder::admin_routes`](crate::NodeBuilder::admin_routes).
    pub fn admin_routes(&self) -> axum::Router {
        admin::routes(self.realms.clone())
    }

    /// Stops accepting, says GOODBYE (`wamp.close.system_shutdown`) to every session, and
    /// waits up to 5 s for the connections to close.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("router: connections still open after the shutdown grace; dropping them");
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connections the kernel completes and queues before the router accepts them: a burst of
/// clients (a restart of many) waits there rather than being dropped. The kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> Result<TcpListener, RouterError> {
    let bind = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().map_err(|source| RouterError::Bind { addr, source })
}

async fn accept_loop(listener: TcpListener, kind: TransportKind, shared: Arc<Accepting>) {
    loop {
        let accepted = tokio::select! {
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors, mostly: wait a little rather than spin.
                warn!(%err, "router: accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if shared.connections.fetch_add(1, Ordering::Relaxed) >= shared.max_connections {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            shared.realms.refused("max_connections");
            drop(stream);
            continue;
        }
        let shared2 = shared.clone();
        shared.tasks.spawn(async move {
            let opened = Instant::now();
            match &shared2.acceptor {
                None => serve(&shared2, kind, stream, peer, opened).await,
                Some(acceptor) => {
                    let deadline = opened + shared2.limits.hello_timeout;
                    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve(&shared2, kind, tls, peer, opened).await,
                        Ok(Err(err)) => {
                            shared2.realms.refused("handshake");
                            debug!(%peer, %err, "TLS handshake failed");
                        }
                        Err(_) => shared2.realms.refused("hello_timeout"),
                    }
                }
            }
            shared2.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Serves one connection, plain or TLS, by its listener's transport.
async fn serve<S>(
    shared: &Accepting,
    kind: TransportKind,
    stream: S,
    peer: SocketAddr,
    opened: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match kind {
        TransportKind::WebSocket => serve_websocket(shared, stream, peer, opened).await,
        TransportKind::RawSocket => serve_rawsocket(shared, stream, peer, opened).await,
    }
}

async fn serve_websocket<S>(shared: &Accepting, stream: S, peer: SocketAddr, opened: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = opened + shared.limits.hello_timeout;
    let handshake = websocket::accept(stream, shared.realms.max_message_bytes);
    let (ws, serializer) = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => {
            shared.realms.refused("handshake");
            debug!(%peer, %err, "WebSocket handshake refused");
            return;
        }
        Err(_) => {
            shared.realms.refused("hello_timeout");
            return;
        }
    };
    let (sink, stream) = futures_util::StreamExt::split(ws);
    let writer = WsWriter {
        sink,
        text: serializer.is_text(),
    };
    drive(
        shared.realms.clone(),
        &shared.limits,
        serializer,
        TransportKind::WebSocket,
        peer,
        opened,
        WsReader(stream),
        writer,
        shared.stop.clone(),
    )
    .await;
}

async fn serve_rawsocket<S>(shared: &Accepting, mut stream: S, peer: SocketAddr, opened: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    let deadline = opened + shared.limits.hello_timeout;
    let mut hello = [0u8; 4];
    match tokio::time::timeout_at(deadline, stream.read_exact(&mut hello)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => {
            shared.realms.refused("handshake");
            return;
        }
        Err(_) => {
            shared.realms.refused("hello_timeout");
            return;
        }
    }
    let exponent = rawsocket::exponent_for(shared.realms.max_message_bytes);
    let (serializer, client_max) = match rawsocket::parse_handshake(hello) {
        Ok(pair) => pair,
        Err(err) => {
            shared.realms.refused("handshake");
            debug!(%peer, ?err, "RawSocket handshake refused");
            if err != HandshakeError::NotRawSocket {
                let _ = stream
                    .write_all(&rawsocket::handshake_reply(Err(err)))
                    .await;
            }
            return;
        }
    };
    if stream
        .write_all(&rawsocket::handshake_reply(Ok((serializer, exponent))))
        .await
        .is_err()
    {
        return;
    }
    let (read, write) = tokio::io::split(stream);
    drive(
        shared.realms.clone(),
        &shared.limits,
        serializer,
        TransportKind::RawSocket,
        peer,
        opened,
        RawReader {
            stream: read,
            max_bytes: shared
                .realms
                .max_message_bytes
                .min(rawsocket::max_length(exponent)),
        },
        RawWriter {
            stream: tokio::io::BufWriter::with_capacity(16 * 1024, write),
            peer_max_bytes: client_max,
        },
        shared.stop.clone(),
    )
    .await;
}
