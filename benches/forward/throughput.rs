//! Acked messages per second: `async_forward` with a window of messages in flight, through a
//! handler that accepts at once and through a `Dispatcher` whose handler gives the verdict;
//! and the same while bad input arrives at the receiver's forward port.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wamp_cluster::testkit::publish_of;
use wamp_cluster::{ForwardOptions, NodeHandle};

use wamp_cluster::testkit::cluster::{from, to};

/// Messages per second acked, `count` messages of `size` bytes with `window` in flight.
pub async fn forward(a: &NodeHandle, count: u64, size: usize, window: usize) -> f64 {
    let f = a.forwarder();
    let options = ForwardOptions::default();
    let message = publish_of(0, size);
    let (from, to) = (from(a), to("node-1"));
    let mut in_flight = VecDeque::with_capacity(window);
    let start = Instant::now();
    for _ in 0..count {
        if in_flight.len() == window {
            let id = in_flight.pop_front().unwrap();
            f.receive_ack(id, Duration::from_secs(10)).await.unwrap();
        }
        // The caller keeps its ids and message and lends them.
        in_flight.push_back(
            f.async_forward(&from, &to, &message, &options)
                .await
                .unwrap(),
        );
    }
    for id in in_flight {
        f.receive_ack(id, Duration::from_secs(10)).await.unwrap();
    }
    count as f64 / start.elapsed().as_secs_f64()
}

/// Bad input at `target` (a forward port) until `stop` is set (at most two minutes): one
/// connection a millisecond, in turn random bytes, a length over the limit, a wrong cluster
/// id, and a hello trickled a byte every 100 ms on up to 16 connections held open. Returns the
/// connections made.
async fn bad_input(target: SocketAddr, stop: Arc<AtomicBool>) -> u64 {
    let mut garbage = vec![0u8; 1024];
    let mut state: u32 = 7;
    for byte in garbage.iter_mut() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *byte = (state >> 16) as u8;
    }
    let wrong_cluster = wamp_cluster::testkit::protocol::hello_from_intruder("another");
    let hello = wamp_cluster::testkit::protocol::hello_from_intruder("default");
    let mut trickling: VecDeque<(TcpStream, usize)> = VecDeque::new();
    let end = Instant::now() + Duration::from_secs(120);
    let mut made = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The trickles: one more byte each every 100 ms.
        if made % 100 == 0 {
            for _ in 0..trickling.len() {
                let Some((mut stream, at)) = trickling.pop_front() else {
                    break;
                };
                if at < hello.len() && stream.write_all(&hello[at..=at]).await.is_ok() {
                    trickling.push_back((stream, at + 1));
                }
            }
        }
        let Ok(mut stream) = TcpStream::connect(target).await else {
            continue;
        };
        made += 1;
        let _ = match made % 4 {
            0 => stream.write_all(&garbage).await,
            1 => stream.write_all(&u32::MAX.to_be_bytes()).await,
            2 => stream.write_all(&wrong_cluster).await,
            _ if trickling.len() < 16 => {
                trickling.push_back((stream, 0));
                Ok(())
            }
            _ => Ok(()),
        };
    }
    made
}

/// Forward throughput while bad input arrives at the receiver's forward port, and the bad
/// connections made a second.
pub async fn under_bad_input(pair: &[NodeHandle], count: u64, window: usize) -> (f64, f64) {
    let target = pair[1].forwarder().local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = tokio::spawn(bad_input(target, stop.clone()));
    // Let the trickles start.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let rate = forward(&pair[0], count, 128, window).await;
    let elapsed = start.elapsed().as_secs_f64() + 0.2;
    stop.store(true, Ordering::Relaxed);
    let made = attacker.await.unwrap_or(0);
    (rate, made as f64 / elapsed)
}
