//! Memory and allocations: bytes per pending ack and resident memory with 100,000 acks
//! pending (their receiver never answers), and allocations per message of both nodes, counted
//! by a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use wamp_cluster::testkit::publish_of;
use wamp_cluster::NodeHandle;

use crate::{cluster, throughput};
use wamp_cluster::testkit::cluster::{from, options, to};

/// Counts every allocation of the process while [`COUNTING`] is set. Off, it costs a read of a
/// flag that never changes meanwhile; on, a shared counter that both cores bump (a few per
/// cent of the run), so throughput is measured with it off and allocations in a run of their
/// own.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count_allocation() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations per message (both nodes and the caller) while forwarding `count` 128-byte
/// messages.
pub async fn allocations_per_message(a: &NodeHandle, count: u64) -> f64 {
    COUNTING.store(true, Ordering::Relaxed);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    throughput::forward(a, count, 128, 4096).await;
    let counted = ALLOCATIONS.load(Ordering::Relaxed) - before;
    COUNTING.store(false, Ordering::Relaxed);
    counted as f64 / count as f64
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Resident memory of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A listener that does the handshake of a forwarding connection and then reads everything
/// and answers nothing: a peer that never acks and holds nothing per message.
async fn black_hole() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    use wamp_cluster::testkit::protocol::{Frame, FrameCodec, MAX_VERSION};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::new(1 << 20));
                if let Some(Ok(Frame::Hello(_))) = framed.next().await {
                    let welcome = Frame::Welcome {
                        version: MAX_VERSION,
                        generation: u64::MAX,
                    };
                    let _ = framed.send(&welcome).await;
                }
                let mut stream = framed.into_inner();
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Bytes per pending ack, and the process's resident memory with `pending` acks pending.
pub async fn per_pending_ack(pending: u64) -> (f64, u64) {
    let hole = black_hole().await;
    let nodes = cluster(2, &[], &[(1, hole)]).await;
    let f = nodes[0].forwarder();
    let options = options(3_600_000);
    let message = publish_of(0, 128);
    // Warm up: the link, its buffers, the table's first growth.
    let mut ids = Vec::with_capacity(pending as usize + 10_000);
    for _ in 0..10_000 {
        ids.push(
            f.async_forward(from(&nodes[0]), to("node-1"), message.clone(), &options)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_bytes();
    for _ in 0..pending {
        ids.push(
            f.async_forward(from(&nodes[0]), to("node-1"), message.clone(), &options)
                .await
                .unwrap(),
        );
    }
    // Let the link write everything out, so that what stays is the pending table.
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.stats().values().map(|s| s.sent).sum::<u64>() < pending + 10_000
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes();
    for node in nodes {
        node.abort().await;
    }
    drop(ids);
    (after.saturating_sub(before) as f64 / pending as f64, after)
}
