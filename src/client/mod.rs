//! A small async WAMP client: WebSocket (`ws://host:port/ws`, `wss://` over TLS) or RawSocket
//! (`rs://host:port`, `rss://` over TLS), JSON, msgpack or CBOR; call (with progressive results, timeout and
//! cancel), register (with progressive results and interrupts), publish (acknowledged or not)
//! and subscribe. The tests, the benchmarks and the launcher use it, and so can a Rust service.
//!
//! ```no_run
//! # async fn run() -> Result<(), wamp_cluster::client::ClientError> {
//! use wamp_cluster::client::{Client, ClientOptions};
//! use wamp_cluster::wamp::{Payload, Value};
//!
//! let client = Client::connect("ws://127.0.0.1:8090/ws", ClientOptions::new("realm1")).await?;
//! let reply = client.call("com.example.add", Payload::Args(vec![Value::Integer(1), Value::Integer(2)])).await?;
//! client.leave().await?;
//! # Ok(()) }
//! ```
//!
//! One task reads the connection and hands each answer to the request waiting for it; one task
//! writes. Every wait has a deadline ([`ClientOptions::timeout`]); every queue a bound.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::router::auth::{cra_key, cra_sign};
use crate::router::session::Outgoing;
use crate::router::transport::rawsocket::{self, RawReader, RawWriter};
use crate::router::transport::websocket::{self, WsReader, WsWriter};
use crate::router::transport::{FrameReader, FrameWriter, Inbound};
use crate::wamp::serializer::Serializer;
use crate::wamp::{code, Dict, Id, Payload, Value, WampMessage, MAX_ID};

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The connection or its transport handshake failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The router ended the session (or refused it) with ABORT.
    #[error("aborted: {reason}: {message}")]
    Abort {
        /// The ABORT's reason URI.
        reason: String,
        /// Its `message` detail, if any.
        message: String,
    },
    /// The connection closed; the request's outcome is unknown.
    #[error("the connection closed")]
    Closed,
    /// No answer within the client's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The router or the callee answered with an ERROR.
    #[error("{0}")]
    Error(Box<WampError>),
    /// The router sent something out of turn.
    #[error("protocol violation by the router: {0}")]
    Protocol(String),
}

/// An ERROR message's content.
#[derive(Debug, Clone, PartialEq)]
pub struct WampError {
    /// The error URI.
    pub uri: String,
    /// Its details.
    pub details: Dict,
    /// Its arguments.
    pub payload: Payload,
}

impl WampError {
    /// An error with this URI and arguments.
    pub fn new(uri: impl Into<String>, payload: Payload) -> WampError {
        WampError {
            uri: uri.into(),
            details: Dict::new(),
            payload,
        }
    }
}

impl std::fmt::Display for WampError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.uri)?;
        if let Payload::Args(args) | Payload::ArgsKw(args, _) = &self.payload {
            if let Some(Value::String(message)) = args.first() {
                write!(f, ": {message}")?;
            }
        }
        Ok(())
    }
}

/// How a client proves who it is.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// No authentication.
    Anonymous,
    /// A ticket.
    Ticket {
        /// The authid.
        authid: String,
        /// The ticket.
        ticket: String,
    },
    /// WAMP-CRA with a secret (salted or not, as the router's challenge says).
    WampCra {
        /// The authid.
        authid: String,
        /// The secret.
        secret: String,
    },
    /// Cryptosign with an ed25519 private key (32 bytes).
    Cryptosign {
        /// The authid.
        authid: String,
        /// The private key's seed.
        key: [u8; 32],
    },
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The realm to join.
    pub realm: String,
    /// The serializer to speak.
    pub serializer: Serializer,
    /// How to authenticate.
    pub credentials: Credentials,
    /// The longest wait for any answer of the router (a call's own timeout aside).
    pub timeout: Duration,
    /// The largest message it takes.
    pub max_message_bytes: usize,
    /// Messages queued for writing before a send waits.
    pub queue: usize,
    /// For wss:// and rss://: the TLS settings (the authorities the router's certificate must
    /// chain to).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClientOptions {
    /// Anonymous, JSON, 10 s timeout, 16 MiB messages.
    pub fn new(realm: &str) -> ClientOptions {
        ClientOptions {
            realm: realm.to_owned(),
            serializer: Serializer::Json,
            credentials: Credentials::Anonymous,
            timeout: Duration::from_secs(10),
            max_message_bytes: 16 << 20,
            queue: 4096,
            tls: None,
        }
    }

    /// For wss:// and rss://: trusts the authorities in this PEM file.
    pub fn tls_authorities(mut self, ca_file: &std::path::Path) -> Result<Self, ClientError> {
        use rustls::pki_types::pem::PemObject;
        let bad =
            |e: &dyn std::fmt::Display| ClientError::Connect(format!("{}: {e}", ca_file.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            rustls::pki_types::CertificateDer::pem_file_iter(ca_file).map_err(|e| bad(&e))?
        {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.tls = Some(Arc::new(config));
        Ok(self)
    }

    /// With this serializer.
    pub fn serializer(mut self, serializer: Serializer) -> Self {
        self.serializer = serializer;
        self
    }

    /// With these credentials.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// With this timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A call's options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// The router's call timeout (`timeout`, milliseconds; 0: none).
    pub timeout_ms: u64,
    /// Ask for the caller's identity to be disclosed (`disclose_me`).
    pub disclose_me: bool,
    /// Further options, as they are.
    pub extra: Dict,
}

/// A RESULT's content.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    /// Its details.
    pub details: Dict,
    /// Its arguments.
    pub payload: Payload,
}

/// An INVOCATION as a handler sees it.
#[derive(Debug)]
pub struct Invocation {
    /// Its details (`caller`, `procedure`, `receive_progress`, …).
    pub details: Dict,
    /// Its arguments.
    pub payload: Payload,
    /// Cancelled when the router INTERRUPTs the call.
    pub interrupted: CancellationToken,
    request: Id,
    client: Arc<Shared>,
}

impl Invocation {
    /// Whether the caller takes progressive results.
    pub fn receives_progress(&self) -> bool {
        matches!(
            self.details.get("receive_progress"),
            Some(Value::Bool(true))
        )
    }

    /// Sends a progressive result.
    pub async fn progress(&self, payload: Payload) -> Result<(), ClientError> {
        let mut options = Dict::new();
        options.insert("progress".into(), Value::Bool(true));
        self.client
            .send(WampMessage::Yield {
                request: self.request,
                options,
                payload,
            })
            .await
    }
}

/// What a handler returns: the final result's payload, or an error.
pub type Reply = Result<Payload, WampError>;

/// A registered procedure's handler.
pub type Handler =
    Arc<dyn Fn(Invocation) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// An EVENT as a subscriber receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The publication id.
    pub publication: Id,
    /// Its details (`topic`, `publisher`, …).
    pub details: Dict,
    /// Its arguments.
    pub payload: Payload,
}

/// A subscription: its events arrive on [`Subscription::events`].
#[derive(Debug)]
pub struct Subscription {
    /// The subscription id.
    pub id: Id,
    /// The events, in the order the router sent them; bounded (see [`EVENT_QUEUE`]): a
    /// subscriber that stops reading stops the client's reader, and then the router closes
    /// the session as a slow consumer.
    pub events: mpsc::Receiver<Event>,
}

/// Events queued per subscription before the client's reader waits.
pub const EVENT_QUEUE: usize = 65_536;

/// A call in flight: progressive results on [`CallHandle::progress`], the end with
/// [`CallHandle::result`].
#[derive(Debug)]
pub struct CallHandle {
    request: Id,
    client: Arc<Shared>,
    /// Progressive results, in order.
    pub progress: mpsc::Receiver<CallResult>,
    result: oneshot::Receiver<Result<CallResult, ClientError>>,
}

impl CallHandle {
    /// The CALL's request id.
    pub fn request(&self) -> Id {
        self.request
    }

    /// Sends CANCEL with a mode (`skip`, `kill`, `killnowait`).
    pub async fn cancel(&self, mode: &str) -> Result<(), ClientError> {
        let mut options = Dict::new();
        options.insert("mode".into(), Value::String(mode.into()));
        self.client
            .send(WampMessage::Cancel {
                request: self.request,
                options,
            })
            .await
    }

    /// The RESULT, or the ERROR; waits at most `wait`.
    pub async fn result(self, wait: Duration) -> Result<CallResult, ClientError> {
        match tokio::time::timeout(wait, self.result).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(wait)),
        }
    }
}

/// What a REGISTERED or SUBSCRIBED puts in place before anything else is read, so that an
/// INVOCATION or EVENT right behind it finds its handler or its queue.
enum Install {
    Nothing,
    Handler(Handler),
    Events(mpsc::Sender<Event>),
}

enum Waiter {
    /// A request answered by one message.
    Reply(oneshot::Sender<WampMessage>, Install),
    /// A call: progress, then the end.
    Call {
        progress: mpsc::Sender<CallResult>,
        done: oneshot::Sender<Result<CallResult, ClientError>>,
    },
}

#[derive(Default)]
struct State {
    waiting: HashMap<Id, Waiter>,
    handlers: HashMap<Id, Handler>,
    invocations: HashMap<Id, CancellationToken>,
    subscriptions: HashMap<Id, mpsc::Sender<Event>>,
    closed: Option<ClientError>,
}

struct Shared {
    tx: mpsc::Sender<Outgoing>,
    serializer: Serializer,
    state: Mutex<State>,
    next_request: AtomicU64,
    timeout: Duration,
    closed: CancellationToken,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request_id(&self) -> Id {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed) % MAX_ID;
        id + 1
    }

    async fn send(&self, message: WampMessage) -> Result<(), ClientError> {
        let bytes = Bytes::from(self.serializer.encode(&message));
        match tokio::time::timeout(self.timeout, self.tx.send(Outgoing::Message(bytes))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.lock().closed.clone().unwrap_or(ClientError::Closed)),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }

    /// Sends a request and waits for the one message that answers it.
    async fn request(
        &self,
        request: Id,
        message: WampMessage,
        install: Install,
    ) -> Result<WampMessage, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.lock()
            .waiting
            .insert(request, Waiter::Reply(tx, install));
        if let Err(err) = self.send(message).await {
            self.lock().waiting.remove(&request);
            return Err(err);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(WampMessage::Error {
                details,
                error,
                payload,
                ..
            })) => Err(ClientError::Error(Box::new(WampError {
                uri: error,
                details,
                payload,
            }))),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(self.lock().closed.clone().unwrap_or(ClientError::Closed)),
            Err(_) => {
                self.lock().waiting.remove(&request);
                Err(ClientError::Timeout(self.timeout))
            }
        }
    }
}

/// A WAMP session with a router.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    session: Id,
    welcome: Dict,
}

/// What a URL names: the transport, whether over TLS, the `host:port` to dial, the host.
struct Target {
    websocket: bool,
    tls: bool,
    addr: String,
    host: String,
}

fn parse_url(url: &str) -> Result<Target, ClientError> {
    let schemes = [
        ("ws://", true, false),
        ("wss://", true, true),
        ("rs://", false, false),
        ("tcp://", false, false),
        ("rss://", false, true),
    ];
    for (scheme, websocket, tls) in schemes {
        if let Some(rest) = url.strip_prefix(scheme) {
            let addr = rest.split('/').next().unwrap_or(rest).to_owned();
            let host = match addr.rsplit_once(':') {
                Some((host, _)) => host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                None => addr.clone(),
            };
            return Ok(Target {
                websocket,
                tls,
                addr,
                host,
            });
        }
    }
    Err(ClientError::Connect(format!(
        "{url}: the URL must start with ws:// or wss:// (WebSocket), rs:// or rss:// (RawSocket)"
    )))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string_of(dict: &Dict, key: &str) -> Option<String> {
    match dict.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

impl Client {
    /// Connects and joins the realm.
    pub async fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let connect = async {
            let target = parse_url(url)?;
            let stream = TcpStream::connect(&target.addr)
                .await
                .map_err(|e| ClientError::Connect(format!("{}: {e}", target.addr)))?;
            let _ = stream.set_nodelay(true);
            if !target.tls {
                return Self::handshake(stream, &target, url, &options).await;
            }
            let Some(tls) = options.tls.clone() else {
                return Err(ClientError::Connect(format!(
                    "{url}: TLS needs the authorities to trust (ClientOptions::tls_authorities)"
                )));
            };
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| ClientError::Connect(format!("{}: {e}", target.host)))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await
                .map_err(|e| ClientError::Connect(format!("TLS with {}: {e}", target.addr)))?;
            Self::handshake(stream, &target, url, &options).await
        };
        let (shared, mut first) = tokio::time::timeout(options.timeout, connect)
            .await
            .map_err(|_| ClientError::Timeout(options.timeout))??;
        let join = async {
            shared.send(hello(&options)).await?;
            loop {
                match first.recv().await {
                    Some(WampMessage::Welcome { session, details }) => {
                        return Ok(Client {
                            shared: shared.clone(),
                            session,
                            welcome: details,
                        })
                    }
                    Some(WampMessage::Abort { details, reason }) => {
                        return Err(ClientError::Abort {
                            reason,
                            message: string_of(&details, "message").unwrap_or_default(),
                        })
                    }
                    Some(WampMessage::Challenge { auth_method, extra }) => {
                        let signature = sign(&options.credentials, &auth_method, &extra)?;
                        shared
                            .send(WampMessage::Authenticate {
                                signature,
                                extra: Dict::new(),
                            })
                            .await?;
                    }
                    Some(other) => {
                        return Err(ClientError::Protocol(format!(
                            "{} before WELCOME",
                            other.name()
                        )))
                    }
                    None => return Err(ClientError::Closed),
                }
            }
        };
        let result = tokio::time::timeout(options.timeout, join)
            .await
            .map_err(|_| ClientError::Timeout(options.timeout))?;
        if result.is_err() {
            shared.closed.cancel();
        }
        result
    }

    /// The transport's handshake over `stream`, then the reader and writer tasks.
    async fn handshake<S>(
        stream: S,
        target: &Target,
        url: &str,
        options: &ClientOptions,
    ) -> Result<(Arc<Shared>, mpsc::Receiver<WampMessage>), ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let failed = |e: &dyn std::fmt::Display| ClientError::Connect(e.to_string());
        if target.websocket {
            let mut request =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                    .map_err(|e| failed(&e))?;
            request.headers_mut().insert(
                "sec-websocket-protocol",
                tokio_tungstenite::tungstenite::http::HeaderValue::from_static(
                    options.serializer.subprotocol(),
                ),
            );
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                request,
                stream,
                Some(websocket::config(options.max_message_bytes)),
            )
            .await
            .map_err(|e| failed(&e))?;
            let (sink, stream) = futures_util::StreamExt::split(ws);
            let writer = WsWriter {
                sink,
                text: options.serializer.is_text(),
            };
            return Ok(Self::start(WsReader(stream), writer, options));
        }
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let hello = rawsocket::client_handshake(options.serializer, options.max_message_bytes);
        stream.write_all(&hello).await.map_err(|e| failed(&e))?;
        let mut reply = [0u8; 4];
        stream
            .read_exact(&mut reply)
            .await
            .map_err(|e| failed(&e))?;
        let router_max =
            rawsocket::parse_reply(reply, options.serializer).map_err(ClientError::Connect)?;
        let (read, write) = tokio::io::split(stream);
        let reader = RawReader {
            stream: read,
            max_bytes: rawsocket::max_length(rawsocket::exponent_for(options.max_message_bytes)),
        };
        let writer = RawWriter {
            stream: tokio::io::BufWriter::new(write),
            peer_max_bytes: router_max,
        };
        Ok(Self::start(reader, writer, options))
    }

    fn start<R, W>(
        reader: R,
        writer: W,
        options: &ClientOptions,
    ) -> (Arc<Shared>, mpsc::Receiver<WampMessage>)
    where
        R: FrameReader + 'static,
        W: FrameWriter,
    {
        let (tx, rx) = mpsc::channel(options.queue);
        let shared = Arc::new(Shared {
            tx,
            serializer: options.serializer,
            state: Mutex::new(State::default()),
            next_request: AtomicU64::new(0),
            timeout: options.timeout,
            closed: CancellationToken::new(),
        });
        let (first_tx, first_rx) = mpsc::channel(8);
        tokio::spawn(write_loop(rx, writer, shared.closed.clone()));
        tokio::spawn(read_loop(reader, shared.clone(), first_tx));
        (shared, first_rx)
    }

    /// The session id.
    pub fn session(&self) -> Id {
        self.session
    }

    /// The WELCOME's details.
    pub fn welcome(&self) -> &Dict {
        &self.welcome
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Calls a procedure and waits for its result.
    pub async fn call(&self, procedure: &str, payload: Payload) -> Result<CallResult, ClientError> {
        let handle = self
            .call_with(procedure, payload, CallOptions::default(), false)
            .await?;
        handle.result(self.shared.timeout).await
    }

    /// Starts a call; `receive_progress` asks for progressive results.
    pub async fn call_with(
        &self,
        procedure: &str,
        payload: Payload,
        options: CallOptions,
        receive_progress: bool,
    ) -> Result<CallHandle, ClientError> {
        let request = self.shared.request_id();
        let mut opts = options.extra.clone();
        if options.timeout_ms > 0 {
            opts.insert("timeout".into(), Value::Integer(options.timeout_ms as i64));
        }
        if options.disclose_me {
            opts.insert("disclose_me".into(), Value::Bool(true));
        }
        if receive_progress {
            opts.insert("receive_progress".into(), Value::Bool(true));
        }
        let (progress_tx, progress_rx) = mpsc::channel(EVENT_QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        self.shared.lock().waiting.insert(
            request,
            Waiter::Call {
                progress: progress_tx,
                done: done_tx,
            },
        );
        let sent = self
            .shared
            .send(WampMessage::Call {
                request,
                options: opts,
                procedure: procedure.to_owned(),
                payload,
            })
            .await;
        if let Err(err) = sent {
            self.shared.lock().waiting.remove(&request);
            return Err(err);
        }
        Ok(CallHandle {
            request,
            client: self.shared.clone(),
            progress: progress_rx,
            result: done_rx,
        })
    }

    /// Registers a procedure (`options`: `match`, `invoke`, …); its calls run `handler`,
    /// each in a task of its own.
    pub async fn register<F, Fut>(
        &self,
        procedure: &str,
        options: Dict,
        handler: F,
    ) -> Result<Id, ClientError>
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let request = self.shared.request_id();
        let handler: Handler = Arc::new(move |invocation| Box::pin(handler(invocation)));
        let reply = self
            .shared
            .request(
                request,
                WampMessage::Register {
                    request,
                    options,
                    procedure: procedure.to_owned(),
                },
                Install::Handler(handler),
            )
            .await?;
        match reply {
            WampMessage::Registered { registration, .. } => Ok(registration),
            other => Err(ClientError::Protocol(format!(
                "{} answered REGISTER",
                other.name()
            ))),
        }
    }

    /// Unregisters.
    pub async fn unregister(&self, registration: Id) -> Result<(), ClientError> {
        let request = self.shared.request_id();
        self.shared
            .request(
                request,
                WampMessage::Unregister {
                    request,
                    registration,
                },
                Install::Nothing,
            )
            .await?;
        self.shared.lock().handlers.remove(&registration);
        Ok(())
    }

    /// Subscribes (`options`: `match`, …).
    pub async fn subscribe(&self, topic: &str, options: Dict) -> Result<Subscription, ClientError> {
        let request = self.shared.request_id();
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let reply = self
            .shared
            .request(
                request,
                WampMessage::Subscribe {
                    request,
                    options,
                    topic: topic.to_owned(),
                },
                Install::Events(tx),
            )
            .await?;
        match reply {
            WampMessage::Subscribed { subscription, .. } => Ok(Subscription {
                id: subscription,
                events: rx,
            }),
            other => Err(ClientError::Protocol(format!(
                "{} answered SUBSCRIBE",
                other.name()
            ))),
        }
    }

    /// Unsubscribes.
    pub async fn unsubscribe(&self, subscription: Id) -> Result<(), ClientError> {
        let request = self.shared.request_id();
        self.shared
            .request(
                request,
                WampMessage::Unsubscribe {
                    request,
                    subscription,
                },
                Install::Nothing,
            )
            .await?;
        self.shared.lock().subscriptions.remove(&subscription);
        Ok(())
    }

    /// Publishes; with `acknowledge` in `options`, waits for PUBLISHED and returns the
    /// publication id.
    pub async fn publish(
        &self,
        topic: &str,
        options: Dict,
        payload: Payload,
    ) -> Result<Option<Id>, ClientError> {
        let request = self.shared.request_id();
        let acknowledge = matches!(options.get("acknowledge"), Some(Value::Bool(true)));
        let message = WampMessage::Publish {
            request,
            options,
            topic: topic.to_owned(),
            payload,
        };
        if !acknowledge {
            self.shared.send(message).await?;
            return Ok(None);
        }
        match self
            .shared
            .request(request, message, Install::Nothing)
            .await?
        {
            WampMessage::Published { publication, .. } => Ok(Some(publication)),
            other => Err(ClientError::Protocol(format!(
                "{} answered PUBLISH",
                other.name()
            ))),
        }
    }

    /// Sends a message as it is (for tests of the router's refusals).
    pub async fn send_raw(&self, message: WampMessage) -> Result<(), ClientError> {
        self.shared.send(message).await
    }

    /// Says GOODBYE and waits for the router's.
    pub async fn leave(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        // GOODBYE has no request id; 0 is never one.
        self.shared
            .lock()
            .waiting
            .insert(0, Waiter::Reply(tx, Install::Nothing));
        self.shared
            .send(WampMessage::Goodbye {
                details: Dict::new(),
                reason: "wamp.close.close_realm".into(),
            })
            .await?;
        let answered = tokio::time::timeout(self.shared.timeout, rx).await;
        self.shared.closed.cancel();
        match answered {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.shared.timeout)),
        }
    }

    /// Closes the connection without GOODBYE (as a crash would).
    pub fn disconnect(&self) {
        self.shared.closed.cancel();
    }

    /// Waits until the session closes; the reason, if the router gave one.
    pub async fn closed(&self) -> Option<ClientError> {
        self.shared.closed.cancelled().await;
        self.shared.lock().closed.clone()
    }
}

fn hello(options: &ClientOptions) -> WampMessage {
    let role = crate::wamp::role;
    let mut roles = Dict::new();
    roles.insert(
        "caller".into(),
        role(&[
            "caller_identification",
            "progressive_call_results",
            "call_canceling",
            "call_timeout",
        ]),
    );
    roles.insert(
        "callee".into(),
        role(&[
            "caller_identification",
            "progressive_call_results",
            "call_canceling",
            "pattern_based_registration",
            "shared_registration",
        ]),
    );
    roles.insert(
        "publisher".into(),
        role(&["publisher_identification", "publisher_exclusion"]),
    );
    roles.insert("subscriber".into(), role(&["pattern_based_subscription"]));
    let mut details = Dict::new();
    details.insert("roles".into(), Value::Dict(roles));
    let method = |authid: &str, method: &str, details: &mut Dict| {
        details.insert("authid".into(), Value::String(authid.into()));
        details.insert(
            "authmethods".into(),
            Value::List(vec![Value::String(method.into())]),
        );
    };
    match &options.credentials {
        Credentials::Anonymous => {}
        Credentials::Ticket { authid, .. } => method(authid, "ticket", &mut details),
        Credentials::WampCra { authid, .. } => method(authid, "wampcra", &mut details),
        Credentials::Cryptosign { authid, key } => {
            method(authid, "cryptosign", &mut details);
            let public = SigningKey::from_bytes(key).verifying_key();
            let mut extra = Dict::new();
            extra.insert("pubkey".into(), Value::String(hex(public.as_bytes())));
            details.insert("authextra".into(), Value::Dict(extra));
        }
    }
    WampMessage::Hello {
        realm: options.realm.clone(),
        details,
    }
}

fn sign(credentials: &Credentials, method: &str, extra: &Dict) -> Result<String, ClientError> {
    let challenge = string_of(extra, "challenge");
    match (credentials, method) {
        (Credentials::Ticket { ticket, .. }, "ticket") => Ok(ticket.clone()),
        (Credentials::WampCra { secret, .. }, "wampcra") => {
            let challenge = challenge
                .ok_or_else(|| ClientError::Protocol("wampcra without a challenge".into()))?;
            let salt = string_of(extra, "salt");
            let int = |key: &str, default: u32| match extra.get(key) {
                Some(Value::Integer(i)) => u32::try_from(*i).unwrap_or(default),
                _ => default,
            };
            let key = cra_key(
                secret,
                salt.as_deref()
                    .map(|s| (s, int("iterations", 1000), int("keylen", 32))),
            );
            Ok(cra_sign(&key, &challenge))
        }
        (Credentials::Cryptosign { key, .. }, "cryptosign") => {
            let challenge = challenge
                .ok_or_else(|| ClientError::Protocol("cryptosign without a challenge".into()))?;
            let bytes: Vec<u8> = (0..challenge.len() / 2)
                .filter_map(|i| u8::from_str_radix(challenge.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            let signature = SigningKey::from_bytes(key).sign(&bytes);
            Ok(hex(&signature.to_bytes()) + &challenge)
        }
        (_, method) => Err(ClientError::Protocol(format!(
            "unexpected CHALLENGE for {method}"
        ))),
    }
}

async fn write_loop<W: FrameWriter>(
    mut rx: mpsc::Receiver<Outgoing>,
    mut writer: W,
    closed: CancellationToken,
) {
    let result: std::io::Result<()> = async {
        loop {
            let frame = tokio::select! {
                frame = rx.recv() => frame,
                () = closed.cancelled() => None,
            };
            let Some(frame) = frame else {
                return writer.close().await;
            };
            writer.write(frame).await?;
            while let Ok(frame) = rx.try_recv() {
                writer.write(frame).await?;
            }
            writer.flush().await?;
        }
    }
    .await;
    let _ = result;
    closed.cancel();
}

async fn read_loop<R: FrameReader>(
    mut reader: R,
    shared: Arc<Shared>,
    first: mpsc::Sender<WampMessage>,
) {
    let mut joined = false;
    let reason = loop {
        let read = tokio::select! {
            read = reader.read() => read,
            () = shared.closed.cancelled() => break None,
        };
        let bytes = match read {
            Ok(Inbound::Message(bytes)) => bytes,
            Ok(Inbound::Ping(payload)) => {
                let _ = shared.tx.try_send(Outgoing::Pong(payload));
                continue;
            }
            Ok(Inbound::Pong) => continue,
            Ok(Inbound::TooLarge(len)) => {
                break Some(ClientError::Protocol(format!(
                    "a message of {len} bytes is too large"
                )))
            }
            Ok(Inbound::Closed) | Err(_) => break None,
        };
        let message = match shared.serializer.decode(&bytes) {
            Ok(m) => m,
            Err(err) => break Some(ClientError::Protocol(err.to_string())),
        };
        if !joined {
            joined = matches!(message, WampMessage::Welcome { .. });
            let abort = matches!(message, WampMessage::Abort { .. });
            let _ = first.send(message).await;
            if abort {
                break None;
            }
            continue;
        }
        if let Some(reason) = dispatch(&shared, message).await {
            break Some(reason);
        }
    };
    let mut state = shared.lock();
    state.closed = Some(reason.unwrap_or(ClientError::Closed));
    // Every waiter learns the end: dropping its sender wakes it.
    state.waiting.clear();
    state.subscriptions.clear();
    for token in state.invocations.values() {
        token.cancel();
    }
    drop(state);
    shared.closed.cancel();
}

/// Handles one message of an open session; `Some` ends it.
async fn dispatch(shared: &Arc<Shared>, message: WampMessage) -> Option<ClientError> {
    match message {
        WampMessage::Result {
            request,
            details,
            payload,
        } => {
            let progress = matches!(details.get("progress"), Some(Value::Bool(true)));
            let result = CallResult { details, payload };
            let mut state = shared.lock();
            if progress {
                if let Some(Waiter::Call { progress, .. }) = state.waiting.get(&request) {
                    let _ = progress.try_send(result);
                }
            } else if let Some(Waiter::Call { done, .. }) = state.waiting.remove(&request) {
                let _ = done.send(Ok(result));
            }
        }
        WampMessage::Error {
            request_type,
            request,
            details,
            error,
            payload,
        } => {
            let waiter = shared.lock().waiting.remove(&request);
            let err = WampError {
                uri: error,
                details,
                payload,
            };
            match waiter {
                Some(Waiter::Call { done, .. }) if request_type == code::CALL => {
                    let _ = done.send(Err(ClientError::Error(Box::new(err))));
                }
                Some(Waiter::Reply(tx, _)) => {
                    let _ = tx.send(WampMessage::Error {
                        request_type,
                        request,
                        details: err.details,
                        error: err.uri,
                        payload: err.payload,
                    });
                }
                _ => {}
            }
        }
        WampMessage::Event {
            subscription,
            publication,
            details,
            payload,
        } => {
            let tx = shared.lock().subscriptions.get(&subscription).cloned();
            if let Some(tx) = tx {
                // Waits when the subscriber does not keep up (bounded queue).
                let _ = tx
                    .send(Event {
                        publication,
                        details,
                        payload,
                    })
                    .await;
            }
        }
        WampMessage::Invocation {
            request,
            registration,
            details,
            payload,
        } => {
            let handler = shared.lock().handlers.get(&registration).cloned();
            let Some(handler) = handler else {
                let error = WampError::new("wamp.error.no_such_registration", Payload::Empty);
                let _ =
                    shared
                        .tx
                        .try_send(Outgoing::Message(Bytes::from(shared.serializer.encode(
                            &WampMessage::Error {
                                request_type: code::INVOCATION,
                                request,
                                details: Dict::new(),
                                error: error.uri,
                                payload: error.payload,
                            },
                        ))));
                return None;
            };
            let interrupted = CancellationToken::new();
            shared
                .lock()
                .invocations
                .insert(request, interrupted.clone());
            let invocation = Invocation {
                details,
                payload,
                interrupted,
                request,
                client: shared.clone(),
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let reply = handler(invocation).await;
                shared.lock().invocations.remove(&request);
                let message = match reply {
                    Ok(payload) => WampMessage::Yield {
                        request,
                        options: Dict::new(),
                        payload,
                    },
                    Err(err) => WampMessage::Error {
                        request_type: code::INVOCATION,
                        request,
                        details: err.details,
                        error: err.uri,
                        payload: err.payload,
                    },
                };
                let _ = shared.send(message).await;
            });
        }
        WampMessage::Interrupt { request, .. } => {
            if let Some(token) = shared.lock().invocations.get(&request) {
                token.cancel();
            }
        }
        WampMessage::Goodbye { reason, .. } => {
            if let Some(Waiter::Reply(tx, _)) = shared.lock().waiting.remove(&0) {
                let _ = tx.send(WampMessage::Goodbye {
                    details: Dict::new(),
                    reason: String::new(),
                });
                return Some(ClientError::Closed);
            }
            // The router said GOODBYE first: answer, and end.
            let _ = shared
                .send(WampMessage::Goodbye {
                    details: Dict::new(),
                    reason: "wamp.close.goodbye_and_out".into(),
                })
                .await;
            return Some(ClientError::Abort {
                reason,
                message: "the router said GOODBYE".into(),
            });
        }
        WampMessage::Abort { details, reason } => {
            return Some(ClientError::Abort {
                reason,
                message: string_of(&details, "message").unwrap_or_default(),
            })
        }
        WampMessage::Registered { request, .. }
        | WampMessage::Unregistered { request }
        | WampMessage::Subscribed { request, .. }
        | WampMessage::Unsubscribed { request }
        | WampMessage::Published { request, .. } => {
            let mut state = shared.lock();
            if let Some(Waiter::Reply(tx, install)) = state.waiting.remove(&request) {
                match (install, &message) {
                    (Install::Handler(h), WampMessage::Registered { registration, .. }) => {
                        state.handlers.insert(*registration, h);
                    }
                    (Install::Events(e), WampMessage::Subscribed { subscription, .. }) => {
                        state.subscriptions.insert(*subscription, e);
                    }
                    _ => {}
                }
                let _ = tx.send(message);
            }
        }
        other => {
            return Some(ClientError::Protocol(format!(
                "{} from a router",
                other.name()
            )))
        }
    }
    None
}
