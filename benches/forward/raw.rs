//! The baseline: the raw-TCP limit of the design, on the same loopback in the same run:
//! length-prefixed frames, pipelined, each acked with 8 bytes, writes batched on both sides;
//! and ping-pong round trips of the same frames.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// A raw server: reads length-prefixed frames and answers each with an 8-byte ack (its
/// number), writing the acks of everything one read brought in one write.
pub async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let (mut read, mut write) = stream.into_split();
                let mut buf = BytesMut::with_capacity(256 * 1024);
                let mut out = Vec::with_capacity(64 * 1024);
                let mut seq: u64 = 0;
                loop {
                    match read.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    while buf.len() >= 4 {
                        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                        if buf.len() < 4 + len {
                            buf.reserve(4 + len);
                            break;
                        }
                        buf.advance(4 + len);
                        seq += 1;
                        out.extend_from_slice(&seq.to_be_bytes());
                    }
                    if !out.is_empty() {
                        if write.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
            });
        }
    });
    addr
}

/// Raw acked frames per second: `count` frames of `size` bytes, at most `window` unacked,
/// written in batches.
pub async fn throughput(server: SocketAddr, count: u64, size: usize, window: usize) -> f64 {
    let stream = TcpStream::connect(server).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut read, mut write) = stream.into_split();
    let room = Arc::new(Semaphore::new(window));
    let start = Instant::now();
    let reader = {
        let room = room.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let (mut acked, mut partial) = (0u64, 0usize);
            while acked < count {
                let n = read.read(&mut buf).await.unwrap();
                assert!(n > 0, "the raw server closed");
                partial += n;
                let whole = (partial / 8) as u64;
                partial %= 8;
                acked += whole;
                room.add_permits(whole as usize);
            }
        })
    };
    let mut frame = (size as u32).to_be_bytes().to_vec();
    frame.resize(4 + size, 0x5a);
    let batch_frames = (64 * 1024 / (4 + size)).max(1);
    let mut out = Vec::with_capacity(batch_frames * frame.len());
    let mut sent = 0u64;
    while sent < count {
        let n = (batch_frames as u64).min(count - sent) as u32;
        room.acquire_many(n).await.unwrap().forget();
        for _ in 0..n {
            out.extend_from_slice(&frame);
        }
        write.write_all(&out).await.unwrap();
        out.clear();
        sent += u64::from(n);
    }
    reader.await.unwrap();
    count as f64 / start.elapsed().as_secs_f64()
}

/// Raw ping-pong round trips: a 4 + 128-byte frame out, an 8-byte ack back, one in flight.
pub async fn latency(stream: &mut TcpStream, count: usize) -> Vec<f64> {
    let mut frame = 128u32.to_be_bytes().to_vec();
    frame.resize(4 + 128, 0x5a);
    let mut ack = [0u8; 8];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        stream.write_all(&frame).await.unwrap();
        stream.read_exact(&mut ack).await.unwrap();
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples
}
