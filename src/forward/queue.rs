//! A link's send queue: bounded in frames and in bytes, first come first served, drained whole
//! by the link's writer.
//!
//! The frames are kept back to back in one buffer, as they will be written, beside a list of
//! what each is (id, deadline, length): a frame costs no allocation of its own, and the writer
//! swaps the whole buffer for its empty one. Senders copy encoded frames in one at a time; the
//! writer takes everything queued in one step (one lock per batch, not per frame), which frees
//! the queue's room at once. A sender that finds the queue full waits its turn: senders are
//! let in in the order they first found the queue full, and a newcomer does not overtake one
//! that waits, so the frames of one caller keep their order even when its calls overlap.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

/// What the queue knows of a frame it holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    /// Its pending-ack id.
    pub id: u64,
    /// Its sender's deadline: not written after it.
    pub deadline: Instant,
    /// Its length in the buffer.
    pub len: usize,
}

/// Frames back to back in `bytes`, described in order by `frames`.
#[derive(Default)]
pub(crate) struct Batch {
    pub frames: VecDeque<Meta>,
    pub bytes: Vec<u8>,
}

impl Batch {
    fn push(&mut self, id: u64, deadline: Instant, frame: &[u8]) {
        self.bytes.extend_from_slice(frame);
        self.frames.push_back(Meta {
            id,
            deadline,
            len: frame.len(),
        });
    }

    /// Moves `other`'s frames to the back of this batch.
    fn append(&mut self, other: &mut Batch) {
        if self.frames.is_empty() {
            // Swapping hands the other side this batch's empty buffers: no allocation.
            self.bytes.clear();
            std::mem::swap(self, other);
        } else {
            self.bytes.extend_from_slice(&other.bytes);
            self.frames.append(&mut other.frames);
            other.bytes.clear();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Empties the batch, and gives back a buffer grown past `keep_bytes`.
    pub fn clear(&mut self, keep_bytes: usize) {
        self.frames.clear();
        self.bytes.clear();
        if self.bytes.capacity() > keep_bytes {
            self.bytes = Vec::new();
        }
    }
}

/// A frame to queue, owned: one that waits for room.
pub(crate) struct Queued {
    /// Its pending-ack id.
    pub id: u64,
    /// Its sender's deadline: not written after it.
    pub deadline: Instant,
    /// The encoded frame.
    pub bytes: Vec<u8>,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq)]
pub(crate) enum Refused {
    /// Full, and the sender asked not to wait.
    Full,
    /// Still full at the deadline.
    Late,
    /// The queue is closed: its link ended.
    Closed,
}

/// What [`SendQueue::take_all`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Taken {
    /// Frames were moved out.
    Some,
    /// Nothing queued; wait on [`SendQueue::wait_ready`].
    Empty,
    /// Nothing queued, and nothing will be: the queue is closed.
    Closed,
}

#[derive(Default)]
struct Contents {
    items: Batch,
    /// Tickets of the senders waiting for room, oldest first.
    waiting: VecDeque<u64>,
    next_ticket: u64,
}

/// The queue of one link.
pub(crate) struct SendQueue {
    state: Mutex<Contents>,
    capacity: usize,
    capacity_bytes: usize,
    closed: AtomicBool,
    /// Frames queued, for the gauge (read without the lock).
    len: AtomicUsize,
    /// Wakes the writer when a frame arrives in an empty queue.
    ready: Notify,
    /// Wakes waiting senders when there may be room or their turn came.
    room: Notify,
}

impl SendQueue {
    /// A queue of at most `capacity` frames and `capacity_bytes` bytes (a frame larger than
    /// that still goes in when the queue is empty).
    pub fn new(capacity: usize, capacity_bytes: usize) -> SendQueue {
        SendQueue {
            state: Mutex::new(Contents::default()),
            capacity: capacity.max(1),
            capacity_bytes,
            closed: AtomicBool::new(false),
            len: AtomicUsize::new(0),
            ready: Notify::new(),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Contents> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Frames queued now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether a frame of `len` bytes has room now.
    fn fits(&self, state: &Contents, len: usize) -> bool {
        let items = &state.items;
        items.is_empty()
            || (items.frames.len() < self.capacity
                && items.bytes.len() + len <= self.capacity_bytes)
    }

    /// Copies `frame` in, if it has room now and no sender waits for room before it: else
    /// `Full`, or `Closed`.
    pub fn try_push(&self, id: u64, deadline: Instant, frame: &[u8]) -> Result<(), Refused> {
        let mut state = self.lock();
        if self.is_closed() {
            return Err(Refused::Closed);
        }
        if !state.waiting.is_empty() || !self.fits(&state, frame.len()) {
            return Err(Refused::Full);
        }
        let was_empty = state.items.is_empty();
        state.items.push(id, deadline, frame);
        self.len.store(state.items.frames.len(), Ordering::Relaxed);
        drop(state);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Queues `item`: at once, or `Full` when there is no room and `fail_if_full`, else after
    /// waiting for room and for the senders that waited before it, until `deadline` (`Late`).
    pub async fn push(
        &self,
        item: Queued,
        fail_if_full: bool,
        deadline: Instant,
    ) -> Result<(), Refused> {
        let mut turn = Turn {
            queue: self,
            ticket: None,
        };
        let len = item.bytes.len();
        loop {
            // Registered before the check, so that room made after it is not missed; only
            // once the queue was found full.
            let mut room = pin!(self.room.notified());
            if turn.ticket.is_some() {
                room.as_mut().enable();
            }
            {
                let mut state = self.lock();
                if self.is_closed() {
                    return Err(Refused::Closed);
                }
                let first = match turn.ticket {
                    None => state.waiting.is_empty(),
                    Some(ticket) => state.waiting.front() == Some(&ticket),
                };
                if first && self.fits(&state, len) {
                    let was_empty = state.items.is_empty();
                    state.items.push(item.id, item.deadline, &item.bytes);
                    self.len.store(state.items.frames.len(), Ordering::Relaxed);
                    let others_wait = turn.ticket.take().is_some() && {
                        state.waiting.pop_front();
                        !state.waiting.is_empty()
                    };
                    drop(state);
                    if was_empty {
                        self.ready.notify_one();
                    }
                    if others_wait {
                        self.room.notify_waiters();
                    }
                    return Ok(());
                }
                if fail_if_full {
                    return Err(Refused::Full);
                }
                if turn.ticket.is_none() {
                    let ticket = state.next_ticket;
                    state.next_ticket += 1;
                    state.waiting.push_back(ticket);
                    turn.ticket = Some(ticket);
                    // Check again with the wake-up registered.
                    continue;
                }
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Refused::Late);
            }
        }
    }

    /// Moves every queued frame to the back of `into`, freeing the queue's room.
    pub fn take_all(&self, into: &mut Batch) -> Taken {
        let mut state = self.lock();
        if state.items.is_empty() {
            return if self.is_closed() {
                Taken::Closed
            } else {
                Taken::Empty
            };
        }
        into.append(&mut state.items);
        self.len.store(0, Ordering::Relaxed);
        let waiting = !state.waiting.is_empty();
        drop(state);
        if waiting {
            self.room.notify_waiters();
        }
        Taken::Some
    }

    /// Waits until a frame may have arrived since [`SendQueue::take_all`] found none, or the
    /// queue was closed.
    pub async fn wait_ready(&self) {
        self.ready.notified().await;
    }

    /// Closes the queue: no more frames get in, waiting senders get `Closed`, and the writer
    /// wakes. Frames already queued stay for [`SendQueue::take_all`].
    pub fn close(&self) {
        let state = self.lock();
        self.closed.store(true, Ordering::Release);
        drop(state);
        self.room.notify_waiters();
        self.ready.notify_one();
    }
}

/// A waiting sender's place in line; given up when the sender stops waiting for any reason
/// (including its future being dropped), so that it never blocks those behind it.
struct Turn<'a> {
    queue: &'a SendQueue,
    ticket: Option<u64>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else { return };
        let mut state = self.queue.lock();
        let was_first = state.waiting.front() == Some(&ticket);
        state.waiting.retain(|t| *t != ticket);
        let others_wait = was_first && !state.waiting.is_empty();
        drop(state);
        if others_wait {
            self.queue.room.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn item(id: u64, len: usize) -> Queued {
        Queued {
            id,
            deadline: Instant::now() + Duration::from_secs(60),
            bytes: vec![id as u8; len],
        }
    }

    fn ids(items: &Batch) -> Vec<u64> {
        items.frames.iter().map(|i| i.id).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_or_waits_until_its_deadline() {
        let q = SendQueue::new(2, 1000);
        let later = Instant::now() + Duration::from_secs(1);
        q.push(item(1, 10), true, later).await.unwrap();
        q.push(item(2, 10), true, later).await.unwrap();
        assert_eq!(q.push(item(3, 10), true, later).await, Err(Refused::Full));
        assert_eq!(q.push(item(3, 10), false, later).await, Err(Refused::Late));
        assert_eq!(Instant::now(), later);
        assert_eq!(q.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_budget_counts_but_one_large_frame_always_fits_an_empty_queue() {
        let q = SendQueue::new(100, 100);
        let later = Instant::now() + Duration::from_secs(1);
        q.push(item(1, 500), true, later).await.unwrap();
        assert_eq!(q.push(item(2, 1), true, later).await, Err(Refused::Full));
        let mut out = Batch::default();
        assert_eq!(q.take_all(&mut out), Taken::Some);
        q.push(item(2, 60), true, later).await.unwrap();
        assert_eq!(q.push(item(3, 60), true, later).await, Err(Refused::Full));
        q.push(item(3, 40), true, later).await.unwrap();
        assert_eq!(q.take_all(&mut out), Taken::Some);
        assert_eq!(ids(&out), [1, 2, 3]);
        assert_eq!(q.take_all(&mut out), Taken::Empty);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_senders_get_in_in_order_and_newcomers_do_not_overtake_them() {
        let q = Arc::new(SendQueue::new(1, 1000));
        let later = Instant::now() + Duration::from_secs(10);
        q.push(item(1, 10), false, later).await.unwrap();
        let mut waiters = Vec::new();
        for id in 2..=4 {
            let q = q.clone();
            waiters.push(tokio::spawn(async move {
                q.push(item(id, 10), false, later).await
            }));
            tokio::task::yield_now().await;
        }
        let mut out = Batch::default();
        for _ in 0..3 {
            assert_eq!(q.take_all(&mut out), Taken::Some);
            // A newcomer that finds room must still queue behind the waiters.
            let newcomer = q.push(item(9, 10), true, later).await;
            assert_eq!(newcomer, Err(Refused::Full));
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(q.take_all(&mut out), Taken::Some);
        assert_eq!(ids(&out), [1, 2, 3, 4]);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sender_that_gives_up_does_not_block_those_behind_it() {
        let q = Arc::new(SendQueue::new(1, 1000));
        let far = Instant::now() + Duration::from_secs(10);
        q.push(item(1, 10), false, far).await.unwrap();
        let first = {
            let q = q.clone();
            tokio::spawn(async move { q.push(item(2, 10), false, far).await })
        };
        tokio::task::yield_now().await;
        let second = {
            let q = q.clone();
            tokio::spawn(async move { q.push(item(3, 10), false, far).await })
        };
        tokio::task::yield_now().await;
        first.abort();
        let _ = first.await;
        let mut out = Batch::default();
        q.take_all(&mut out);
        assert_eq!(second.await.unwrap(), Ok(()));
        q.take_all(&mut out);
        assert_eq!(ids(&out), [1, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_wakes_the_waiting_senders_and_keeps_what_was_queued() {
        let q = Arc::new(SendQueue::new(1, 1000));
        let far = Instant::now() + Duration::from_secs(10);
        q.push(item(1, 10), false, far).await.unwrap();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.push(item(2, 10), false, far).await })
        };
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.unwrap(), Err(Refused::Closed));
        let mut out = Batch::default();
        assert_eq!(q.take_all(&mut out), Taken::Some);
        assert_eq!(q.take_all(&mut out), Taken::Closed);
        assert_eq!(ids(&out), [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_lie_back_to_back_in_the_order_queued_across_takes() {
        let q = SendQueue::new(100, 1000);
        let later = Instant::now() + Duration::from_secs(1);
        q.try_push(1, later, &[1; 3]).unwrap();
        q.push(item(2, 2), true, later).await.unwrap();
        let mut out = Batch::default();
        assert_eq!(q.take_all(&mut out), Taken::Some);
        q.try_push(3, later, &[3; 1]).unwrap();
        // Taken into a batch that still holds frames: appended behind them.
        assert_eq!(q.take_all(&mut out), Taken::Some);
        assert_eq!(ids(&out), [1, 2, 3]);
        assert_eq!(out.bytes, [1, 1, 1, 2, 2, 3]);
        let lens: Vec<usize> = out.frames.iter().map(|m| m.len).collect();
        assert_eq!(lens, [3, 2, 1]);
        assert_eq!(q.len(), 0);
        // The queue's room is free again, and the writer's emptied buffers are reused.
        out.clear(1 << 20);
        q.try_push(4, later, &[4; 2]).unwrap();
        assert_eq!(q.take_all(&mut out), Taken::Some);
        assert_eq!((ids(&out), &out.bytes[..]), (vec![4], &[4, 4][..]));
    }

    #[tokio::test(start_paused = true)]
    async fn try_push_does_not_overtake_a_waiting_sender() {
        let q = Arc::new(SendQueue::new(1, 1000));
        let later = Instant::now() + Duration::from_secs(10);
        q.try_push(1, later, &[1]).unwrap();
        assert_eq!(q.try_push(2, later, &[2]), Err(Refused::Full));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.push(item(2, 1), false, later).await })
        };
        tokio::task::yield_now().await;
        let mut out = Batch::default();
        q.take_all(&mut out);
        assert_eq!(q.try_push(9, later, &[9]), Err(Refused::Full));
        assert_eq!(waiter.await.unwrap(), Ok(()));
        q.take_all(&mut out);
        assert_eq!(ids(&out), [1, 2]);
        q.close();
        assert_eq!(q.try_push(9, later, &[9]), Err(Refused::Closed));
    }
}
