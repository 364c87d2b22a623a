//! The start of every forwarding connection, both sides: TLS when configured, the dialer's
//! [`Hello`], and the listener's `Welcome` (or `Refuse`). With a cluster secret the listener
//! challenges, the dialer proves it knows the secret, and the listener proves it too (`Verified`
//! instead of `Welcome`); neither side says anything about itself before the other proved it.
//!
//! [`dial`] is the dialer's side, bounded by `forward.connect_timeout_ms`; [`accept`] the
//! listener's, bounded by `limits.handshake_timeout_ms`. Both fail with a [`HandshakeError`].

use std::io;

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Encoder;

use super::context::Context;
use super::stream::{self, CountingRead, ReadSide, WriteSide};
use crate::security::{self, Role, Transcript};
use crate::wire::{self, Frame, FrameCodec, FrameReader, Hello, RefuseReason, WireError};
use crate::NodeId;

/// Largest frame read before the handshake is done: a hello is small, and an unauthenticated
/// socket must not make the node reserve `max_frame_bytes`.
pub(crate) const HANDSHAKE_FRAME_LIMIT: usize = 16 * 1024;

/// Why a handshake failed, on either side.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The listener is an older generation of the node than the one the dialer knows: an old
    /// process (paused, then resumed) still holding the address.
    #[error("the listener is generation {listener} of the node, older than {known}")]
    StaleListener {
        /// The listener's generation.
        listener: u64,
        /// The generation the dialer knows.
        known: u64,
    },
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(io::Error),
    /// Reading or writing failed.
    #[error("i/o: {0}")]
    Io(io::Error),
    /// The other side sent bytes that are not a frame.
    #[error("{0}")]
    Frame(WireError),
    /// The other side closed the connection.
    #[error("closed during the handshake")]
    Closed,
    /// The handshake took longer than its timeout.
    #[error("handshake timed out")]
    Timeout,
    /// Refused: by the listener (the dialer's view), or by this listener (the reason was sent).
    #[error("refused: {0}")]
    Refused(RefuseReason),
    /// A frame that has no place at this point of the handshake.
    #[error("unexpected {0} frame in the handshake")]
    Unexpected(&'static str),
    /// The listener welcomed without a challenge although this node has a secret.
    #[error("the listener has no cluster secret: it cannot prove it is a member")]
    ListenerWithoutSecret,
    /// The listener challenged although this node has no secret.
    #[error("the listener wants a cluster secret; this node has none")]
    SecretWanted,
    /// The listener's proof does not check with this node's secret.
    #[error("the listener's proof of the cluster secret is wrong")]
    BadListenerProof,
    /// The listener chose a protocol version this node does not speak.
    #[error("the listener chose protocol version {0}, which this node does not speak")]
    Version(u16),
    /// The node id cannot be named by a certificate.
    #[error("{0}")]
    NotDnsName(String),
    /// The operating system gave no randomness for a nonce.
    #[error("no randomness for a nonce")]
    NoRandom,
}

impl HandshakeError {
    /// How a listener counts the refusal in `wamp_cluster_handshakes_refused_total`, if it
    /// counts it: a connection closed quietly by the dialer is not counted.
    pub(crate) fn refusal(&self) -> Option<&'static str> {
        match self {
            HandshakeError::Refused(reason) => Some(reason.name()),
            HandshakeError::Timeout => Some("timeout"),
            HandshakeError::Tls(_) => Some("tls"),
            _ => None,
        }
    }
}

impl From<WireError> for HandshakeError {
    fn from(err: WireError) -> Self {
        match err {
            WireError::Io(err) => HandshakeError::Io(err),
            other => HandshakeError::Frame(other),
        }
    }
}

/// Writes `frame` and flushes it (through TLS).
async fn send(
    write: &mut WriteSide,
    codec: &mut FrameCodec,
    frame: &Frame,
) -> Result<(), HandshakeError> {
    let mut buf = BytesMut::new();
    codec.encode(frame, &mut buf)?;
    write.write_all(&buf).await.map_err(HandshakeError::Io)?;
    write.flush().await.map_err(HandshakeError::Io)
}

/// The next frame of the handshake; the end of the stream is `Closed`.
async fn next<R>(reader: &mut FrameReader<R>) -> Result<Frame, HandshakeError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    match reader.next().await {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(err)) => Err(err.into()),
        None => Err(HandshakeError::Closed),
    }
}

/// The hello this node sends to `to`.
fn hello(ctx: &Context, to: &NodeId) -> Hello {
    Hello {
        magic: wire::MAGIC,
        min_version: wire::MIN_VERSION,
        max_version: wire::MAX_VERSION,
        cluster_id: ctx.cluster_id.clone(),
        node_id: ctx.node.clone(),
        generation: ctx.generation,
        to_node: to.clone(),
        wall_clock_ms: wire::wall_clock_ms(),
    }
}

/// Connects to `node` at `addr` and does the dialer's side of the handshake, within
/// `forward.connect_timeout_ms`. A listener older than generation `known` (the view's) is
/// refused. Returns the connection's halves and the listener's generation.
pub(crate) async fn dial(
    ctx: &Context,
    node: &NodeId,
    addr: std::net::SocketAddr,
    known: Option<u64>,
) -> Result<(FrameReader<ReadSide>, WriteSide, u64), HandshakeError> {
    let handshake = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(HandshakeError::Connect)?;
        stream.set_nodelay(true).map_err(HandshakeError::Connect)?;
        let (read, mut write) = match &ctx.protection.tls {
            None => stream::plain(stream),
            Some(tls) => {
                let name =
                    crate::node_id::dns_name(node.as_str()).map_err(HandshakeError::NotDnsName)?;
                let tls = tls
                    .connector
                    .connect(name, stream)
                    .await
                    .map_err(HandshakeError::Tls)?;
                stream::tls(tls.into())
            }
        };
        let hello = hello(ctx, node);
        let mut codec = FrameCodec::new(ctx.config.max_frame_bytes);
        send(&mut write, &mut codec, &Frame::Hello(hello.clone())).await?;
        let mut reader = FrameReader::new(read, codec, ctx.read_budget.clone());
        let (version, generation) = match (next(&mut reader).await?, &ctx.protection.keys) {
            (Frame::Refuse { reason }, _) => return Err(HandshakeError::Refused(reason)),
            (
                Frame::Welcome {
                    version,
                    generation,
                },
                None,
            ) => (version, generation),
            (Frame::Welcome { .. }, Some(_)) => return Err(HandshakeError::ListenerWithoutSecret),
            (Frame::Challenge { .. }, None) => return Err(HandshakeError::SecretWanted),
            (Frame::Challenge { nonce: theirs }, Some(keys)) => {
                let ours = security::random().map_err(|_| HandshakeError::NoRandom)?;
                let hello_bytes = wire::hello_bytes(&hello);
                let mut transcript = Transcript {
                    hello: &hello_bytes,
                    listener_nonce: &theirs,
                    dialer_nonce: &ours,
                    version: 0,
                    generation: 0,
                };
                let mac = keys.prove(0, Role::Dialer, &transcript);
                let proof = Frame::Proof { nonce: ours, mac };
                send(&mut write, reader.decoder_mut(), &proof).await?;
                let (version, generation, mac) = match next(&mut reader).await? {
                    Frame::Verified {
                        version,
                        generation,
                        mac,
                    } => (version, generation, mac),
                    Frame::Refuse { reason } => return Err(HandshakeError::Refused(reason)),
                    other => return Err(HandshakeError::Unexpected(other.name())),
                };
                transcript.version = version;
                transcript.generation = generation;
                if !keys.check_with(0, Role::Listener, &transcript, &mac) {
                    return Err(HandshakeError::BadListenerProof);
                }
                (version, generation)
            }
            (other, _) => return Err(HandshakeError::Unexpected(other.name())),
        };
        if !(wire::MIN_VERSION..=wire::MAX_VERSION).contains(&version) {
            return Err(HandshakeError::Version(version));
        }
        if let Some(known) = known.filter(|known| generation < *known) {
            return Err(HandshakeError::StaleListener {
                listener: generation,
                known,
            });
        }
        Ok((reader, write, generation))
    };
    tokio::time::timeout(ctx.config.connect_timeout_ms, handshake)
        .await
        .unwrap_or(Err(HandshakeError::Timeout))
}

/// An inbound connection whose hello was accepted; the answer that accepts it is sent by
/// [`Accepted::welcome`].
pub(crate) struct Accepted {
    /// The dialer's hello.
    pub hello: Hello,
    /// The connection's read side, still with the handshake's frame limit.
    pub reader: FrameReader<CountingRead>,
    /// Its write side.
    pub writer: WriteSide,
    /// `Welcome`, or `Verified` with a secret.
    answer: Frame,
}

impl Accepted {
    /// Sends the answer that accepts the connection, and lifts the frame limit to
    /// `forward.max_frame_bytes`.
    pub(crate) async fn welcome(&mut self, ctx: &Context) -> Result<(), HandshakeError> {
        let mut codec = FrameCodec::new(HANDSHAKE_FRAME_LIMIT);
        let sent = tokio::time::timeout(
            ctx.limits.idle_timeout_ms,
            send(&mut self.writer, &mut codec, &self.answer),
        );
        sent.await.unwrap_or(Err(HandshakeError::Timeout))?;
        *self.reader.decoder_mut() = FrameCodec::new(ctx.config.max_frame_bytes);
        Ok(())
    }
}

/// Does the listener's side of the handshake on an accepted `stream` before
/// `limits.handshake_timeout_ms` has passed: TLS, the hello and, with a secret, the proof. A
/// refusal is sent to the dialer before the error is returned.
pub(crate) async fn accept(ctx: &Context, stream: TcpStream) -> Result<Accepted, HandshakeError> {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + ctx.limits.handshake_timeout_ms;
    let mut certificate = None;
    let (read, mut writer) = match &ctx.protection.tls {
        None => stream::plain(stream),
        Some(tls) => {
            let tls = tokio::time::timeout_at(deadline, tls.acceptor.accept(stream))
                .await
                .map_err(|_| HandshakeError::Timeout)?
                .map_err(HandshakeError::Tls)?;
            certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| cert.clone().into_owned());
            stream::tls(tls.into())
        }
    };
    let mut reader = FrameReader::new(
        CountingRead::new(read),
        FrameCodec::new(HANDSHAKE_FRAME_LIMIT),
        ctx.read_budget.clone(),
    );
    let checked = tokio::time::timeout_at(
        deadline,
        check(ctx, &mut reader, &mut writer, certificate.as_ref()),
    )
    .await
    .unwrap_or(Err(HandshakeError::Timeout));
    match checked {
        Ok((hello, answer)) => Ok(Accepted {
            hello,
            reader,
            writer,
            answer,
        }),
        Err(HandshakeError::Refused(reason)) => {
            let refuse = Frame::Refuse {
                reason: reason.clone(),
            };
            let mut codec = FrameCodec::new(HANDSHAKE_FRAME_LIMIT);
            let _ = tokio::time::timeout(
                ctx.limits.idle_timeout_ms,
                send(&mut writer, &mut codec, &refuse),
            )
            .await;
            Err(HandshakeError::Refused(reason))
        }
        Err(err) => Err(err),
    }
}

/// Reads the hello (and with a cluster secret, the proof) and checks it and the dialer's
/// certificate: the hello and the frame that accepts it.
async fn check(
    ctx: &Context,
    reader: &mut FrameReader<CountingRead>,
    writer: &mut WriteSide,
    certificate: Option<&CertificateDer<'static>>,
) -> Result<(Hello, Frame), HandshakeError> {
    let hello = match reader.next().await {
        Some(Ok(Frame::Hello(hello))) => hello,
        Some(_) => return Err(HandshakeError::Refused(RefuseReason::BadHello)),
        None => return Err(HandshakeError::Closed),
    };
    let checked = |hello: &Hello| {
        let version =
            wire::negotiate(hello, &ctx.cluster_id, &ctx.node).map_err(HandshakeError::Refused)?;
        let known = ctx
            .membership
            .peek_view()
            .member(hello.node_id.as_str())
            .map(|m| m.generation);
        if let Some(current) = known.filter(|current| hello.generation < *current) {
            return Err(HandshakeError::Refused(RefuseReason::StaleGeneration {
                current,
            }));
        }
        let max_skew = ctx.config.max_clock_skew_ms.as_millis() as u64;
        wire::check_clock(hello, wire::wall_clock_ms(), max_skew)
            .map_err(HandshakeError::Refused)?;
        if certificate.is_some_and(|cert| !crate::tls::names(cert, hello.node_id.as_str())) {
            return Err(HandshakeError::Refused(RefuseReason::BadCertificate));
        }
        Ok(version)
    };
    let Some(keys) = &ctx.protection.keys else {
        let version = checked(&hello)?;
        let generation = ctx.generation;
        return Ok((
            hello,
            Frame::Welcome {
                version,
                generation,
            },
        ));
    };
    // With a secret, the node says nothing about itself (its cluster id, its node id) to a
    // dialer that has not proved it knows one.
    if hello.magic != wire::MAGIC {
        return Err(HandshakeError::Refused(RefuseReason::BadHello));
    }
    let ours = security::random().map_err(|_| HandshakeError::NoRandom)?;
    let mut codec = FrameCodec::new(HANDSHAKE_FRAME_LIMIT);
    send(writer, &mut codec, &Frame::Challenge { nonce: ours }).await?;
    let (theirs, proof) = match reader.next().await {
        Some(Ok(Frame::Proof { nonce, mac })) => (nonce, mac),
        _ => return Err(HandshakeError::Refused(RefuseReason::BadSecret)),
    };
    let hello_bytes = wire::hello_bytes(&hello);
    let mut transcript = Transcript {
        hello: &hello_bytes,
        listener_nonce: &ours,
        dialer_nonce: &theirs,
        version: 0,
        generation: 0,
    };
    let key = keys
        .check(Role::Dialer, &transcript, &proof)
        .ok_or(HandshakeError::Refused(RefuseReason::BadSecret))?;
    let version = checked(&hello)?;
    let generation = ctx.generation;
    transcript.version = version;
    transcript.generation = generation;
    let mac = keys.prove(key, Role::Listener, &transcript);
    Ok((
        hello,
        Frame::Verified {
            version,
            generation,
            mac,
        },
    ))
}
