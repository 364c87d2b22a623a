//! Frames read from a connection, in memory that is bounded for the whole node.
//!
//! Each connection reads into a buffer of its own that holds at most [`READ_BUFFER_BYTES`];
//! a frame longer than that is read only once the node's [`ReadBudget`] has given its bytes,
//! which go back when the frame is decoded, and the connection's buffer shrinks back then. So
//! the frames being read by all connections of a node take at most
//! `connections × 2 × READ_BUFFER_BYTES` plus the budget, however many peers send large frames
//! at once, or send the start of one and fall silent: a connection that finds the budget spent
//! reads nothing more until its turn (the budget is shared first come, first served), and its
//! peer's writes back up.

use std::io;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Decoder;

use super::codec::FrameCodec;
use super::frame::{Frame, WireError, LENGTH_BYTES, READ_BUFFER_BYTES};

/// Bytes of frames longer than a connection's read buffer that a node's connections may hold
/// at once; shared by clones.
#[derive(Clone, Debug)]
pub struct ReadBudget(Arc<Semaphore>);

impl ReadBudget {
    /// A budget of `bytes`, at least the longest frame a connection may read.
    pub fn new(bytes: usize) -> ReadBudget {
        ReadBudget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Bytes not taken now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// Reads frames from `read` with a [`FrameCodec`] (see the module's docs).
pub struct FrameReader<R> {
    read: R,
    buf: BytesMut,
    codec: FrameCodec,
    budget: ReadBudget,
    /// The budget taken for the frame at the front of `buf`, longer than the read buffer.
    taken: Option<OwnedSemaphorePermit>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads from `read`, decoding with `codec`, frames longer than the read buffer within
    /// `budget`.
    pub fn new(read: R, codec: FrameCodec, budget: ReadBudget) -> FrameReader<R> {
        FrameReader {
            read,
            buf: BytesMut::with_capacity(READ_BUFFER_BYTES),
            codec,
            budget,
            taken: None,
        }
    }

    /// The source read from.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.read
    }

    /// The codec; frames read from now on are decoded with what it is set to.
    pub fn decoder_mut(&mut self) -> &mut FrameCodec {
        &mut self.codec
    }

    /// The bytes read and not decoded yet.
    pub fn read_buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next frame: `None` when the source ended between two frames, an error when it ended
    /// inside one or sent what is not a frame. Cancel-safe: a frame partly read stays in the
    /// buffer for the next call.
    pub async fn next(&mut self) -> Option<Result<Frame, WireError>> {
        loop {
            let wanted = match self.codec.front(&self.buf) {
                Err(err) => return Some(Err(err)),
                Ok(Some(total)) if self.buf.len() >= total => return Some(self.decode()),
                Ok(wanted) => wanted,
            };
            // Room in the buffer: up to the end of a long frame, once the budget gave it.
            let room = match wanted {
                Some(total) if total > READ_BUFFER_BYTES => {
                    if self.taken.is_none() {
                        // The frame's own length, at most `max_frame_bytes`: never more than
                        // the whole budget.
                        let bytes = u32::try_from(total - LENGTH_BYTES).unwrap_or(u32::MAX);
                        let budget = self.budget.0.clone();
                        self.taken = Some(budget.acquire_many_owned(bytes).await.ok()?);
                    }
                    total - self.buf.len()
                }
                _ => READ_BUFFER_BYTES - self.buf.len(),
            };
            self.buf.reserve(room);
            match self.read.read_buf(&mut (&mut self.buf).limit(room)).await {
                Ok(0) if self.buf.is_empty() => return None,
                Ok(0) => {
                    let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "inside a frame");
                    return Some(Err(WireError::Io(eof)));
                }
                Ok(_) => {}
                Err(err) => return Some(Err(WireError::Io(err))),
            }
        }
    }

    /// Decodes the whole frame at the front of the buffer; a long one gives its budget back
    /// and the buffer its memory.
    fn decode(&mut self) -> Result<Frame, WireError> {
        let decoded = self.codec.decode(&mut self.buf);
        // The buffer grew for a long frame: the memory goes back with the budget.
        if self.taken.take().is_some() {
            let rest = self.buf.split();
            self.buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
            self.buf.extend_from_slice(&rest);
        }
        match decoded {
            Ok(Some(frame)) => Ok(frame),
            Ok(None) => Err(WireError::Malformed("a whole frame did not decode".into())),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio_util::codec::Encoder;

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let mut codec = FrameCodec::new(1 << 20);
        for frame in frames {
            codec.encode(frame, &mut out).unwrap();
        }
        out.to_vec()
    }

    fn long(len: usize) -> Frame {
        Frame::Nack {
            id: 7,
            reason: crate::NackReason::Refused("x".repeat(len)),
        }
    }

    #[tokio::test]
    async fn frames_are_read_whole_in_order_and_the_end_is_told_apart_from_a_cut() {
        let frames = [Frame::Ack { id: 1 }, long(200_000), Frame::Pong { id: 3 }];
        let bytes = encoded(&frames);
        let budget = ReadBudget::new(1 << 20);
        let mut reader = FrameReader::new(&bytes[..], FrameCodec::new(1 << 20), budget.clone());
        for frame in &frames {
            assert_eq!(reader.next().await.unwrap().unwrap(), *frame);
        }
        assert!(reader.next().await.is_none());
        assert_eq!(budget.available(), 1 << 20);
        assert!(reader.buf.capacity() <= 2 * READ_BUFFER_BYTES);
        let cut = &bytes[..bytes.len() - 1];
        let mut reader = FrameReader::new(cut, FrameCodec::new(1 << 20), budget);
        for _ in 0..2 {
            reader.next().await.unwrap().unwrap();
        }
        assert!(matches!(reader.next().await, Some(Err(WireError::Io(_)))));
    }

    #[tokio::test]
    async fn a_long_frame_waits_for_the_budget_and_holds_nothing_of_it_meanwhile() {
        let budget = ReadBudget::new(300_000);
        let frame = long(200_000);
        let bytes = encoded(std::slice::from_ref(&frame));
        let (mut first_in, first_out) = tokio::io::duplex(1 << 20);
        let (mut second_in, second_out) = tokio::io::duplex(1 << 20);
        let mut first = FrameReader::new(first_out, FrameCodec::new(1 << 20), budget.clone());
        let mut second = FrameReader::new(second_out, FrameCodec::new(1 << 20), budget.clone());
        // The first starts its frame and falls silent, holding its part of the budget.
        first_in.write_all(&bytes[..1000]).await.unwrap();
        assert!(futures_util::FutureExt::now_or_never(first.next()).is_none());
        assert!(budget.available() < 100_000);
        // The second's whole frame waits: it reads no more than its read buffer meanwhile.
        second_in.write_all(&bytes).await.unwrap();
        assert!(futures_util::FutureExt::now_or_never(second.next()).is_none());
        assert!(second.buf.len() <= READ_BUFFER_BYTES);
        first_in.write_all(&bytes[1000..]).await.unwrap();
        assert_eq!(first.next().await.unwrap().unwrap(), frame);
        assert_eq!(second.next().await.unwrap().unwrap(), frame);
        assert_eq!(budget.available(), 300_000);
    }

    #[tokio::test]
    async fn a_budget_of_the_frame_limit_reads_a_frame_of_the_limit() {
        let frame = long(100_000);
        let bytes = encoded(std::slice::from_ref(&frame));
        let limit = bytes.len() - 4;
        let mut reader =
            FrameReader::new(&bytes[..], FrameCodec::new(limit), ReadBudget::new(limit));
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), reader.next());
        assert_eq!(read.await.unwrap().unwrap().unwrap(), frame);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_from_its_prefix() {
        let bytes = encoded(&[long(5000)]);
        let mut reader =
            FrameReader::new(&bytes[..8], FrameCodec::new(1024), ReadBudget::new(1 << 20));
        assert!(matches!(
            reader.next().await,
            Some(Err(WireError::TooLarge { .. }))
        ));
    }
}
