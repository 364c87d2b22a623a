//! A peer cannot make a node allocate much by what a frame claims: lengths inside a frame are
//! the sender's word, and decoding reserves room for at most a bounded part of them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use wamp_cluster::testkit::protocol::FrameCodec;

/// The system allocator, noting the largest single request made on each thread.
struct Largest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

#[test]
fn nested_lists_that_claim_a_million_items_each_reserve_little() {
    let claimed: u32 = 1 << 20;
    let mut body = vec![3]; // a Forward frame
    body.extend_from_slice(&5000u32.to_be_bytes()); // time to live
    body.push(1); // id
    for node in [b'a', b'b'] {
        body.extend_from_slice(&[1, b'r', 1, node, 0]); // realm "r", node, no session
    }
    body.extend_from_slice(&[7, 1, 0, 1, b't', 3]); // PUBLISH 1 {} "t", a transparent payload
    for _ in 0..12 {
        body.push(7); // a list...
        body.push(252); // ...claiming `claimed` items
        body.extend_from_slice(&claimed.to_le_bytes());
    }
    // A megabyte of bytes that are no value at all: the frame is malformed.
    body.resize(body.len() + (1 << 20), 0xff);
    let mut frame = BytesMut::from(&(body.len() as u32).to_be_bytes()[..]);
    frame.extend_from_slice(&body);

    LARGEST.with(|l| l.set(0));
    let decoded = FrameCodec::new(16 << 20).decode(&mut frame);
    let largest = LARGEST.with(Cell::get);
    assert!(decoded.is_err(), "{decoded:?}");
    // Believing the lengths would reserve 72 MB (a million 72-byte values) per level.
    assert!(largest < 4 << 20, "a single allocation of {largest} bytes");
}
