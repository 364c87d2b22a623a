//! The halves of a forwarding connection: plain TCP, or TLS over TCP; and a read side that
//! counts the bytes it reads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::stats::Received;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// The read half of a connection.
pub(crate) enum ReadSide {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The write half of a connection.
pub(crate) enum WriteSide {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

/// Splits a plain connection.
pub(crate) fn plain(stream: TcpStream) -> (ReadSide, WriteSide) {
    let (read, write) = stream.into_split();
    (ReadSide::Plain(read), WriteSide::Plain(write))
}

/// Splits a TLS connection.
pub(crate) fn tls(stream: TlsStream<TcpStream>) -> (ReadSide, WriteSide) {
    let (read, write) = tokio::io::split(stream);
    (ReadSide::Tls(read), WriteSide::Tls(write))
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Plain(read) => Pin::new(read).poll_read(cx, buf),
            ReadSide::Tls(read) => Pin::new(read).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Plain(write) => Pin::new(write).poll_write(cx, buf),
            WriteSide::Tls(write) => Pin::new(write).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(write) => Pin::new(write).poll_flush(cx),
            WriteSide::Tls(write) => Pin::new(write).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(write) => Pin::new(write).poll_shutdown(cx),
            WriteSide::Tls(write) => Pin::new(write).poll_shutdown(cx),
        }
    }
}

/// A read side that counts what it reads once told where to (the peer is known after the
/// handshake).
pub(crate) struct CountingRead {
    read: ReadSide,
    counts: Option<Arc<Received>>,
}

impl CountingRead {
    pub(crate) fn new(read: ReadSide) -> CountingRead {
        CountingRead { read, counts: None }
    }

    /// Counts the bytes read from now on in the peer's `counts`.
    pub(crate) fn count_in(&mut self, counts: Arc<Received>) {
        self.counts = Some(counts);
    }
}

impl AsyncRead for CountingRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.read).poll_read(cx, buf);
        if let Some(counts) = &self.counts {
            let read = (buf.filled().len() - before) as u64;
            counts.bytes.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}
