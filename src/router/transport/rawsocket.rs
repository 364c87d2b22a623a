//! WAMP RawSocket: a 4-byte handshake (`0x7F`, the client's maximum length exponent and
//! serializer, two reserved zero bytes), then frames of a 4-byte header (the low 3 bits of the
//! first byte: 0 message, 1 ping, 2 pong; the other three bytes: the length, big-endian) and
//! the payload.
//!
//! The router answers the handshake with its own maximum (from `router.max_message_bytes`,
//! rounded down to a power of two between 512 bytes and 16 MiB) and the serializer, or with an
//! error code: 1 serializer unsupported, 3 reserved bits used. A frame longer than the router's
//! maximum closes the connection after an ABORT. A message longer than the client's maximum is
//! never sent: the connection closes instead.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf,
};

use super::{FrameReader, FrameWriter, Inbound};
use crate::router::session::Outgoing;
use crate::wamp::serializer::Serializer;

/// The first byte of every handshake.
pub const MAGIC: u8 = 0x7F;

/// Frame types.
const MESSAGE: u8 = 0;
const PING: u8 = 1;
const PONG: u8 = 2;

/// The largest length exponent: 2^(9 + 15) = 16 MiB, the most a 3-byte length can say.
const MAX_EXPONENT: u8 = 15;

/// The length exponent whose maximum (2^(9 + e)) is the largest not above `max_bytes`.
pub fn exponent_for(max_bytes: usize) -> u8 {
    (0..=MAX_EXPONENT)
        .rev()
        .find(|e| (1usize << (9 + e)) <= max_bytes)
        .unwrap_or(0)
}

/// The maximum length of an exponent.
pub fn max_length(exponent: u8) -> usize {
    1usize << (9 + exponent.min(MAX_EXPONENT))
}

/// A handshake the router refuses, with the spec's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a RawSocket client (the first byte is not 0x7F).
    NotRawSocket,
    /// 1: serializer unsupported.
    Serializer,
    /// 3: use of reserved bits.
    Reserved,
}

/// Reads a client's handshake: the serializer and the client's maximum length.
pub fn parse_handshake(bytes: [u8; 4]) -> Result<(Serializer, usize), HandshakeError> {
    if bytes[0] != MAGIC {
        return Err(HandshakeError::NotRawSocket);
    }
    if bytes[2] != 0 || bytes[3] != 0 {
        return Err(HandshakeError::Reserved);
    }
    let serializer =
        Serializer::from_rawsocket_id(bytes[1] & 0x0F).ok_or(HandshakeError::Serializer)?;
    Ok((serializer, max_length(bytes[1] >> 4)))
}

/// The router's answer to a handshake.
pub fn handshake_reply(result: Result<(Serializer, u8), HandshakeError>) -> [u8; 4] {
    match result {
        Ok((serializer, exponent)) => [MAGIC, (exponent << 4) | serializer.rawsocket_id(), 0, 0],
        Err(HandshakeError::Serializer) => [MAGIC, 1 << 4, 0, 0],
        Err(_) => [MAGIC, 3 << 4, 0, 0],
    }
}

/// The client's handshake for a serializer and maximum length.
pub fn client_handshake(serializer: Serializer, max_bytes: usize) -> [u8; 4] {
    [
        MAGIC,
        (exponent_for(max_bytes) << 4) | serializer.rawsocket_id(),
        0,
        0,
    ]
}

/// Reads the router's answer to a client's handshake: the router's maximum length.
pub fn parse_reply(bytes: [u8; 4], serializer: Serializer) -> Result<usize, String> {
    if bytes[0] != MAGIC {
        return Err("not a WAMP RawSocket router".into());
    }
    match bytes[1] & 0x0F {
        0 => Err(match bytes[1] >> 4 {
            1 => "the router does not speak this serializer".into(),
            2 => "the router refuses this maximum message length".into(),
            3 => "the router saw reserved bits used".into(),
            4 => "the router has reached its connection limit".into(),
            code => format!("the router refused the handshake with code {code}"),
        }),
        id if id == serializer.rawsocket_id() => Ok(max_length(bytes[1] >> 4)),
        id => Err(format!("the router answered with serializer {id}")),
    }
}

/// The reading half of a RawSocket connection.
pub struct RawReader<S> {
    /// The stream.
    pub stream: ReadHalf<S>,
    /// The longest message this end takes.
    pub max_bytes: usize,
}

/// The writing half of a RawSocket connection.
pub struct RawWriter<S> {
    /// The stream, buffered so that many frames leave in one write.
    pub stream: BufWriter<WriteHalf<S>>,
    /// The longest message the other end takes.
    pub peer_max_bytes: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> FrameReader for RawReader<S> {
    async fn read(&mut self) -> io::Result<Inbound> {
        {
            let mut header = [0u8; 4];
            match self.stream.read_exact(&mut header).await {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(Inbound::Closed)
                }
                Err(err) => return Err(err),
            }
            let kind = header[0] & 0x07;
            let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
            if header[0] & 0xF8 != 0 || kind > PONG {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("RawSocket frame of unknown type {:#04x}", header[0]),
                ));
            }
            if len > self.max_bytes {
                return Ok(Inbound::TooLarge(len));
            }
            let mut payload = BytesMut::zeroed(len);
            self.stream.read_exact(&mut payload).await?;
            let payload = payload.freeze();
            Ok(match kind {
                MESSAGE => Inbound::Message(payload),
                PING => Inbound::Ping(payload),
                _ => Inbound::Pong,
            })
        }
    }
}

/// Writes one frame's header.
fn header(kind: u8, len: usize) -> [u8; 4] {
    let l = (len as u32).to_be_bytes();
    [kind, l[1], l[2], l[3]]
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> FrameWriter for RawWriter<S> {
    async fn write(&mut self, frame: Outgoing) -> io::Result<()> {
        let (kind, payload) = match frame {
            Outgoing::Message(bytes) => (MESSAGE, bytes),
            Outgoing::Ping(bytes) => (PING, bytes),
            Outgoing::Pong(bytes) => (PONG, bytes),
            Outgoing::Close => return Ok(()),
        };
        if payload.len() > self.peer_max_bytes.min(max_length(MAX_EXPONENT)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a message of {} bytes exceeds the {} bytes the client takes",
                    payload.len(),
                    self.peer_max_bytes
                ),
            ));
        }
        self.stream.write_all(&header(kind, payload.len())).await?;
        self.stream.write_all(&payload).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.stream.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }
}

/// Frames one message for a RawSocket stream (for clients writing by hand).
pub fn frame(payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&header(MESSAGE, payload.len()));
    out.extend_from_slice(payload);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_carry_the_serializer_and_the_length_exponent() {
        assert_eq!(exponent_for(16 << 20), 15);
        assert_eq!(exponent_for(1 << 20), 11);
        assert_eq!(exponent_for(1_500_000), 11);
        assert_eq!(exponent_for(100), 0);
        let hs = client_handshake(Serializer::Msgpack, 1 << 20);
        assert_eq!(hs, [0x7F, 0xB2, 0, 0]);
        assert_eq!(parse_handshake(hs), Ok((Serializer::Msgpack, 1 << 20)));
        assert_eq!(
            parse_handshake([0x7F, 0xF5, 0, 0]),
            Err(HandshakeError::Serializer)
        );
        assert_eq!(
            parse_handshake([0x7F, 0xF1, 0, 1]),
            Err(HandshakeError::Reserved)
        );
        assert_eq!(parse_handshake(*b"GET "), Err(HandshakeError::NotRawSocket));
        let reply = handshake_reply(Ok((Serializer::Cbor, 15)));
        assert_eq!(parse_reply(reply, Serializer::Cbor), Ok(16 << 20));
        let refused = handshake_reply(Err(HandshakeError::Serializer));
        assert!(parse_reply(refused, Serializer::Json)
            .unwrap_err()
            .contains("serializer"));
    }
}
