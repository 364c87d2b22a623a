//! WAMP over WebSocket (RFC 6455, tokio-tungstenite): paths `/` and `/ws`, subprotocols
//! `wamp.2.json` (text frames), `wamp.2.msgpack` and `wamp.2.cbor` (binary frames); the first
//! of the client's subprotocols that the router speaks wins, and a handshake that offers none
//! is refused (HTTP 400). Pings of the client are answered, and the router's own pings keep the
//! idle timeout honest.

use std::io;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::{FrameReader, FrameWriter, Inbound};
use crate::router::session::Outgoing;
use crate::wamp::serializer::Serializer;

/// Bytes a connection reads from its socket at a time (tungstenite's default is 128 KiB, far
/// more than an idle session needs).
const READ_BUFFER: usize = 8 * 1024;

/// The WebSocket settings of a router whose messages are at most `max_message_bytes`.
pub fn config(max_message_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(max_message_bytes))
        .max_frame_size(Some(max_message_bytes))
}

/// The serializer a handshake's `Sec-WebSocket-Protocol` offers first among those the router
/// speaks.
pub fn choose(request: &Request) -> Option<Serializer> {
    request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|name| Serializer::from_subprotocol(name.trim()))
}

fn refuse(status: StatusCode, text: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(text.to_owned()));
    *response.status_mut() = status;
    response
}

/// Accepts a WebSocket handshake; the serializer it agreed on.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    max_message_bytes: usize,
) -> Result<(WebSocketStream<S>, Serializer), WsError> {
    let mut chosen = None;
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    let callback = |request: &Request, mut response: Response| {
        if !matches!(request.uri().path(), "/" | "/ws") {
            return Err(refuse(StatusCode::NOT_FOUND, "WAMP is served at / and /ws"));
        }
        let Some(serializer) = choose(request) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "offer one of the subprotocols wamp.2.json, wamp.2.msgpack, wamp.2.cbor",
            ));
        };
        chosen = Some(serializer);
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(serializer.subprotocol()),
        );
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(config(max_message_bytes)),
    )
    .await?;
    let serializer = chosen.ok_or(WsError::ConnectionClosed)?;
    Ok((ws, serializer))
}

/// The reading half of a WebSocket connection.
pub struct WsReader<S>(pub SplitStream<WebSocketStream<S>>);

/// The writing half of a WebSocket connection, for a serializer (text frames for JSON).
pub struct WsWriter<S> {
    /// The sink.
    pub sink: SplitSink<WebSocketStream<S>, Message>,
    /// Whether messages go as text frames.
    pub text: bool,
}

fn io_error(err: WsError) -> io::Error {
    match err {
        WsError::Io(err) => err,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> FrameReader for WsReader<S> {
    async fn read(&mut self) -> io::Result<Inbound> {
        loop {
            return match self.0.next().await {
                None => Ok(Inbound::Closed),
                Some(Ok(Message::Text(text))) => Ok(Inbound::Message(Bytes::from(text))),
                Some(Ok(Message::Binary(bytes))) => Ok(Inbound::Message(bytes)),
                Some(Ok(Message::Ping(payload))) => Ok(Inbound::Ping(payload)),
                Some(Ok(Message::Pong(_))) => Ok(Inbound::Pong),
                Some(Ok(Message::Close(_))) => Ok(Inbound::Closed),
                Some(Ok(Message::Frame(_))) => continue,
                Some(Err(WsError::Capacity(err))) => {
                    let len = match err {
                        tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                            size,
                            ..
                        } => size,
                        _ => usize::MAX,
                    };
                    Ok(Inbound::TooLarge(len))
                }
                Some(Err(err)) => Err(io_error(err)),
            };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> FrameWriter for WsWriter<S> {
    async fn write(&mut self, frame: Outgoing) -> io::Result<()> {
        let message = match frame {
            // JSON is UTF-8: the check does not copy.
            Outgoing::Message(bytes) if self.text => match Utf8Bytes::try_from(bytes.clone()) {
                Ok(text) => Message::Text(text),
                Err(_) => Message::Binary(bytes),
            },
            Outgoing::Message(bytes) => Message::Binary(bytes),
            Outgoing::Ping(payload) => Message::Ping(payload),
            // tungstenite answers a client's ping itself as it reads it.
            Outgoing::Pong(_) => return Ok(()),
            Outgoing::Close => Message::Close(None),
        };
        self.sink.feed(message).await.map_err(io_error)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.sink.flush().await.map_err(io_error)
    }

    async fn close(&mut self) -> io::Result<()> {
        self.sink.close().await.map_err(io_error)
    }
}
