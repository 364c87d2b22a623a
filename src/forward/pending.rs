//! The table of pending acks: one entry per forwarded message, from before its frame is written
//! until its outcome is taken or expires.
//!
//! An entry is registered before its frame is queued, so an ack can never arrive for an unknown
//! id. It ends in one of these ways: an ack or a nack arrives; the connection it was written on
//! breaks; its deadline passes (found by the waiter, or by [`Pending::sweep`]); the forwarder
//! shuts down. An outcome nobody waits for yet is kept until [`Pending::sweep`] drops it one
//! timeout after the deadline, so memory stays bounded however the API is used.
//!
//! Layout, for millions of entries a second: entries live in a slab (a vector of slots reused
//! through a free list), and an id is the slot's index with the slot's generation, so a lookup
//! is an index and a stale id (a late ack) is told apart from the slot's new entry. Deadlines
//! sit in a timing wheel of [`TICK`]-wide buckets swept periodically, not one timer per entry:
//! each entry is in the bucket of its next sweep action and knows its place there, so adding
//! and removing it is constant time. An outcome that arrives before the deadline (nearly all)
//! leaves its entry in the deadline's bucket, where the sweep moves it to the bucket of its
//! retention if it is still there: one wheel operation fewer per message. A deadline more than
//! one turn of the wheel away waits in its bucket and is passed over until its turn comes.
//!
//! The sweep runs when there is something to sweep, not on every tick: [`Pending::next_sweep`]
//! says when the first non-empty bucket ends, and an entry due before that wakes the sweep
//! ([`Pending::sweep_wanted`]). An idle forwarder, or one whose acks all come in time, does not
//! wake a CPU a hundred times a second for nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::error::ForwardError;
use crate::NodeId;

/// The outcome of one forward.
pub type Outcome = Result<(), ForwardError>;

/// The width of a wheel bucket: how late past its deadline [`Pending::sweep`] may find an
/// entry, beyond the sweep's own interval.
pub const TICK: Duration = Duration::from_millis(10);
const TICK_NANOS: u64 = TICK.as_nanos() as u64;

/// Buckets in the wheel: one turn is 4096 × 10 ms, about 41 s.
const BUCKETS: usize = 4096;

/// The count of one peer's pending entries: each entry holds it, and counts itself out when it
/// goes, however it goes.
#[derive(Debug)]
pub struct PendingCount {
    /// The peer's node id.
    pub node: NodeId,
    pending: AtomicUsize,
}

impl PendingCount {
    /// A peer with no pending entries.
    pub fn new(node: NodeId) -> PendingCount {
        PendingCount {
            node,
            pending: AtomicUsize::new(0),
        }
    }

    /// Its entries in the table, finished or not.
    pub fn count(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// One count of a peer's pending entries, given back when dropped.
struct CountGuard(Arc<PendingCount>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Entry {
    peer: CountGuard,
    registered: Instant,
    deadline: Instant,
    /// When a finished outcome nobody took is dropped.
    retain_until: Instant,
    state: Progress,
}

impl Entry {
    /// When the sweep next has something to do with the entry.
    fn due(&self) -> Instant {
        match self.state {
            Progress::Waiting(_) => self.deadline,
            Progress::Done(_) => self.retain_until,
        }
    }
}

enum Progress {
    /// No outcome yet; the sender is told when it comes, if someone waits.
    Waiting(Option<oneshot::Sender<Outcome>>),
    /// The outcome, kept for a later `wait`.
    Done(Outcome),
}

struct Slot {
    /// Bumped each time the slot is freed, so that old ids no longer match.
    generation: u32,
    /// The entry's wheel bucket, and its index there.
    bucket: u32,
    position: u32,
    entry: Option<Entry>,
}

struct Table {
    slots: Vec<Slot>,
    /// Indexes of the empty slots, oldest freed first: slots take turns, so a slot's
    /// generation wraps only after 2^32 uses of every slot (years at millions a second),
    /// where reusing the last freed one would wrap a hot slot's in about an hour.
    free: VecDeque<u32>,
    /// Per bucket, the slots whose next sweep action falls in it (or a whole number of turns
    /// later).
    wheel: Vec<Vec<u32>>,
    /// Tick 0 of the wheel.
    origin: Instant,
    /// The first tick not wholly swept yet (the last sweep's tick: entries due later in it
    /// wait in its bucket).
    next_tick: u64,
    /// The tick at whose end the sweep is to run next.
    planned_tick: u64,
    /// Set when an entry was scheduled before `planned_tick`: the sweep must be woken.
    wake_sweep: bool,
}

/// What [`Pending::sweep`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Swept {
    /// Nodes of the entries that timed out (once per entry).
    pub timed_out: Vec<NodeId>,
    /// Finished outcomes nobody took, dropped.
    pub dropped: usize,
}

/// The pending-ack table of one forwarder.
pub struct Pending {
    table: Mutex<Table>,
    /// Wakes the sweep for an entry due before its planned run.
    sweep_wanted: Notify,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            table: Mutex::new(Table {
                slots: Vec::new(),
                free: VecDeque::new(),
                wheel: vec![Vec::new(); BUCKETS],
                origin: Instant::now(),
                next_tick: 0,
                planned_tick: 0,
                wake_sweep: false,
            }),
            sweep_wanted: Notify::new(),
        }
    }
}

fn id_of(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

impl Table {
    /// The tick `at` falls in (an instant before the origin is tick 0).
    fn tick(&self, at: Instant) -> u64 {
        // In 64-bit integers: a division of `as_nanos`'s u128 is a slow library call, and
        // 2^64 ns is 584 years.
        let since = at.saturating_duration_since(self.origin);
        let nanos = since.as_secs() * 1_000_000_000 + u64::from(since.subsec_nanos());
        nanos / TICK_NANOS
    }

    fn bucket(tick: u64) -> usize {
        (tick % BUCKETS as u64) as usize
    }

    /// The slot index of `id` if it holds that entry.
    fn index(&self, id: u64) -> Option<usize> {
        let index = (id & u64::from(u32::MAX)) as usize;
        let slot = self.slots.get(index)?;
        (u64::from(slot.generation) == id >> 32 && slot.entry.is_some()).then_some(index)
    }

    fn entry(&mut self, id: u64) -> Option<(usize, &mut Entry)> {
        let index = self.index(id)?;
        self.slots[index].entry.as_mut().map(|e| (index, e))
    }

    /// Puts slot `index` in the bucket of its entry's due time.
    fn schedule(&mut self, index: usize) {
        let Some(due) = self.slots[index].entry.as_ref().map(Entry::due) else {
            return;
        };
        // Never into a bucket already swept this turn: it would wait a whole turn.
        let tick = self.tick(due).max(self.next_tick);
        if tick < self.planned_tick {
            self.planned_tick = tick;
            self.wake_sweep = true;
        }
        let bucket = Self::bucket(tick);
        let slot = &mut self.slots[index];
        slot.bucket = bucket as u32;
        slot.position = self.wheel[bucket].len() as u32;
        self.wheel[bucket].push(index as u32);
    }

    /// Takes slot `index` out of its bucket (the one of its entry's current due time).
    fn unschedule(&mut self, index: usize) {
        let slot = &self.slots[index];
        if slot.entry.is_none() {
            return;
        }
        let position = slot.position as usize;
        let slots = &mut self.wheel[slot.bucket as usize];
        slots.swap_remove(position);
        if let Some(&moved) = slots.get(position) {
            self.slots[moved as usize].position = position as u32;
        }
    }

    /// Removes the entry of slot `index` and frees the slot.
    fn remove(&mut self, index: usize) -> Option<Entry> {
        self.unschedule(index);
        let slot = &mut self.slots[index];
        let entry = slot.entry.take()?;
        // Never 0 (the keepalive's id is 0): after u32::MAX comes 1.
        slot.generation = slot.generation.checked_add(1).unwrap_or(1);
        self.free.push_back(index as u32);
        Some(entry)
    }

    /// Changes the state of slot `index`, moving it to the bucket of its new due time.
    fn set_state(&mut self, index: usize, state: Progress) {
        self.unschedule(index);
        if let Some(entry) = self.slots[index].entry.as_mut() {
            entry.state = state;
        }
        self.schedule(index);
    }
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a message to `peer`, sent at `now`, that must be acked by `deadline`; its
    /// outcome is kept until `retain_until` if nobody takes it. Returns its id.
    pub fn register(
        &self,
        peer: &Arc<PendingCount>,
        now: Instant,
        deadline: Instant,
        retain_until: Instant,
    ) -> u64 {
        peer.pending.fetch_add(1, Ordering::Relaxed);
        let mut t = self.lock();
        let entry = Entry {
            peer: CountGuard(peer.clone()),
            registered: now,
            deadline,
            retain_until: retain_until.max(deadline),
            state: Progress::Waiting(None),
        };
        let index = match t.free.pop_front() {
            Some(index) => index as usize,
            None => {
                t.slots.push(Slot {
                    generation: 1,
                    bucket: 0,
                    position: 0,
                    entry: None,
                });
                t.slots.len() - 1
            }
        };
        t.slots[index].entry = Some(entry);
        t.schedule(index);
        let id = id_of(index as u32, t.slots[index].generation);
        let wake = std::mem::take(&mut t.wake_sweep);
        drop(t);
        if wake {
            self.sweep_wanted.notify_one();
        }
        id
    }

    /// Number of entries, finished or not.
    pub fn len(&self) -> usize {
        let t = self.lock();
        t.slots.len() - t.free.len()
    }

    /// Whether any entry still waits for its outcome.
    pub fn any_waiting(&self) -> bool {
        self.lock().slots.iter().any(|slot| {
            slot.entry
                .as_ref()
                .is_some_and(|entry| matches!(entry.state, Progress::Waiting(_)))
        })
    }

    /// Removes entry `id` without an outcome (its frame was never queued).
    pub fn cancel(&self, id: u64) {
        let mut t = self.lock();
        if let Some(index) = t.index(id) {
            t.remove(index);
        }
    }

    /// Records the outcome of entry `id`, known at `now`, and returns the time since it was
    /// registered; `None` when the entry is unknown or already finished: a late ack, which the
    /// caller counts and drops.
    pub fn complete(&self, id: u64, outcome: Outcome, now: Instant) -> Option<Duration> {
        let mut t = self.lock();
        let (index, entry) = t.entry(id)?;
        let Progress::Waiting(waiter) = &mut entry.state else {
            return None;
        };
        let elapsed = now.saturating_duration_since(entry.registered);
        // A waiter whose caller gave up on its future (dropped it) waits no more: the outcome
        // is kept for the next wait.
        match waiter.take().filter(|waiter| !waiter.is_closed()) {
            Some(waiter) => {
                t.remove(index);
                drop(t);
                // The waiter may have given up meanwhile: nothing to do then.
                let _ = waiter.send(outcome);
            }
            // Left in the bucket of its deadline: most outcomes are taken long before it, and
            // the sweep moves those still there to the bucket of their retention.
            None => entry.state = Progress::Done(outcome),
        }
        Some(elapsed)
    }

    /// Fails every waiting entry with `error` (shutdown).
    pub fn fail_all(&self, error: &ForwardError) {
        let ids: Vec<u64> = {
            let t = self.lock();
            t.slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.entry.is_some())
                .map(|(i, s)| id_of(i as u32, s.generation))
                .collect()
        };
        let now = Instant::now();
        for id in ids {
            self.complete(id, Err(error.clone()), now);
        }
    }

    /// Takes the outcome of entry `id` if it has one, removing the entry; `None` when it is
    /// still waiting or unknown (then [`Pending::wait`] tells which).
    pub fn take_done(&self, id: u64) -> Option<Outcome> {
        let mut t = self.lock();
        let (index, entry) = t.entry(id)?;
        if !matches!(entry.state, Progress::Done(_)) {
            return None;
        }
        match t.remove(index) {
            Some(Entry {
                state: Progress::Done(outcome),
                ..
            }) => Some(outcome),
            _ => None,
        }
    }

    /// Waits for the outcome of entry `id`, until its deadline or `until`, whichever is first,
    /// and removes the entry. An unknown id, or one whose outcome was already taken, is
    /// `UnknownAck`. When the wait ends first the result is `Timeout`: at the entry's deadline
    /// the entry is removed and its node returned beside it for a bad-node report; before it,
    /// the entry stays for a later wait.
    pub async fn wait(&self, id: u64, until: Instant) -> (Outcome, Option<NodeId>) {
        let (receiver, deadline, node) = {
            let mut t = self.lock();
            let Some((index, entry)) = t.entry(id) else {
                return (Err(ForwardError::UnknownAck { id }), None);
            };
            match &mut entry.state {
                Progress::Done(_) => {
                    let Some(Entry {
                        state: Progress::Done(outcome),
                        ..
                    }) = t.remove(index)
                    else {
                        unreachable!("the entry was just seen done");
                    };
                    return (outcome, None);
                }
                Progress::Waiting(Some(waiter)) if !waiter.is_closed() => {
                    // Someone already waits for it: a second wait is a misuse.
                    return (Err(ForwardError::UnknownAck { id }), None);
                }
                Progress::Waiting(waiter) => {
                    let (tx, rx) = oneshot::channel();
                    *waiter = Some(tx);
                    (rx, entry.deadline, entry.peer.0.node.clone())
                }
            }
        };
        let mut receiver = receiver;
        match tokio::time::timeout_at(deadline.min(until), &mut receiver).await {
            Ok(Ok(outcome)) => (outcome, None),
            // The sender was dropped without an outcome: only when the table itself goes.
            Ok(Err(_)) => (Err(ForwardError::ShuttingDown), None),
            Err(_) => {
                // Our time is up. Past the forward's deadline the entry ends here; before it
                // (a shorter wait) the entry stays for a later wait, and an ack that comes
                // meanwhile is not late. Unless an outcome raced in.
                let mut t = self.lock();
                let timeout = Err(ForwardError::Timeout { node: node.clone() });
                if let Some((index, entry)) = t.entry(id) {
                    if let Progress::Waiting(waiter) = &mut entry.state {
                        if Instant::now() < entry.deadline {
                            *waiter = None;
                            return (timeout, None);
                        }
                        t.remove(index);
                        return (timeout, Some(node));
                    }
                }
                drop(t);
                // The outcome raced in as the time ran out: it is in the channel.
                let outcome = receiver
                    .try_recv()
                    .unwrap_or(Err(ForwardError::Timeout { node }));
                (outcome, None)
            }
        }
    }

    /// Times out the waiting entries whose deadline passed and drops the finished outcomes kept
    /// past their retention. Call it periodically.
    pub fn sweep(&self, now: Instant) -> Swept {
        let mut swept = Swept::default();
        let mut guard = self.lock();
        let t = &mut *guard;
        let now_tick = t.tick(now);
        if now_tick < t.next_tick {
            return swept;
        }
        // After a long pause every bucket is looked at once, not once per tick missed.
        let first = t
            .next_tick
            .max((now_tick + 1).saturating_sub(BUCKETS as u64));
        let (mut due, mut moved) = (Vec::new(), Vec::new());
        for tick in first..=now_tick {
            // Entries moved while this bucket is handled (a timeout kept for its retention)
            // go to a later bucket, never back into one already handled this turn.
            t.next_tick = tick + 1;
            let bucket = Table::bucket(tick);
            due.clear();
            moved.clear();
            for &index in &t.wheel[bucket] {
                match t.slots[index as usize].entry.as_ref() {
                    Some(e) if e.due() <= now => due.push(index as usize),
                    // Finished before its deadline, still in the deadline's bucket.
                    Some(Entry {
                        state: Progress::Done(_),
                        ..
                    }) => moved.push(index as usize),
                    _ => {}
                }
            }
            for &index in &moved {
                t.unschedule(index);
                t.schedule(index);
            }
            for &index in &due {
                let Some(entry) = t.slots[index].entry.as_mut() else {
                    continue;
                };
                match &mut entry.state {
                    Progress::Waiting(waiter) => {
                        let node = entry.peer.0.node.clone();
                        let timeout = Err(ForwardError::Timeout { node: node.clone() });
                        swept.timed_out.push(node);
                        match waiter.take() {
                            Some(waiter) => {
                                t.remove(index);
                                let _ = waiter.send(timeout);
                            }
                            None => t.set_state(index, Progress::Done(timeout)),
                        }
                    }
                    Progress::Done(_) => {
                        t.remove(index);
                        swept.dropped += 1;
                    }
                }
            }
        }
        // Entries due later within the current tick wait in its bucket for the next sweep.
        t.next_tick = now_tick;
        swept
    }

    /// When the sweep is to run next, after a sweep at `now`: at the end of the first tick
    /// whose bucket holds an entry, and at the latest `longest` after `now`. Until then,
    /// [`Pending::sweep_wanted`] wakes it for an entry due earlier.
    pub fn next_sweep(&self, now: Instant, longest: Duration) -> Instant {
        let mut t = self.lock();
        let now_tick = t.tick(now);
        let last = t.tick(now + longest).max(now_tick);
        // From the first bucket not wholly swept; each checked once at most (a turn of the
        // wheel is far longer than `longest`).
        let planned = (t.next_tick..last)
            .take(BUCKETS)
            .find(|&tick| !t.wheel[Table::bucket(tick)].is_empty())
            .unwrap_or(last);
        t.planned_tick = planned;
        t.wake_sweep = false;
        let end = Duration::from_nanos((planned + 1).saturating_mul(TICK_NANOS));
        (t.origin + end).min(now + longest)
    }

    /// Completes when an entry was registered due before the sweep's planned run.
    pub async fn sweep_wanted(&self) {
        self.sweep_wanted.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn node() -> NodeId {
        NodeId::from("b")
    }

    fn peer() -> Arc<PendingCount> {
        Arc::new(PendingCount::new(node()))
    }

    fn register(p: &Pending, timeout: Duration) -> u64 {
        let now = Instant::now();
        p.register(&peer(), now, now + timeout, now + 2 * timeout)
    }

    fn sweep_woken(p: &Pending) -> bool {
        use futures_util::FutureExt;
        p.sweep_wanted().now_or_never().is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn a_peers_entries_are_counted_until_each_goes_however_it_goes() {
        let p = Pending::default();
        let peer = peer();
        let now = Instant::now();
        let register = |timeout| p.register(&peer, now, now + timeout, now + 2 * timeout);
        let (taken, cancelled, waited, _swept, kept) = (
            register(SECOND),
            register(SECOND),
            register(SECOND),
            register(TICK),
            register(100 * SECOND),
        );
        assert_eq!(peer.count(), 5);
        assert!(p.complete(taken, Ok(()), now).is_some());
        assert_eq!(p.take_done(taken), Some(Ok(())));
        p.cancel(cancelled);
        assert_eq!(peer.count(), 3);
        // A wait that runs out at the entry's deadline removes it; the sweep times one out
        // and, its retention past too, drops it.
        assert!(p.wait(waited, now + 10 * SECOND).await.0.is_err());
        assert_eq!(peer.count(), 2);
        tokio::time::advance(4 * TICK).await;
        assert_eq!(p.sweep(Instant::now()).timed_out.len(), 1);
        assert_eq!(peer.count(), 1);
        p.fail_all(&ForwardError::ShuttingDown);
        assert_eq!(p.take_done(kept), Some(Err(ForwardError::ShuttingDown)));
        assert_eq!(peer.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweep_is_planned_for_the_first_entry_due_and_woken_for_an_earlier_one() {
        let p = Pending::default();
        let now = Instant::now();
        // Nothing pending: the longest pause.
        assert_eq!(p.next_sweep(now, SECOND), now + SECOND);
        // Due later than that: no wake, the plan stands.
        register(&p, 5 * SECOND);
        assert!(!sweep_woken(&p));
        assert_eq!(p.next_sweep(now, SECOND), now + SECOND);
        // Due sooner: woken, and planned for the end of its tick.
        let soon = 3 * TICK + TICK / 2;
        let id = register(&p, soon);
        assert!(sweep_woken(&p));
        assert!(!sweep_woken(&p), "one wake, not one per call");
        let next = p.next_sweep(now, SECOND);
        assert!(
            next >= now + soon && next <= now + soon + TICK,
            "{:?}",
            next - now
        );
        // A second entry due in the same tick wakes nothing more.
        register(&p, soon);
        assert!(!sweep_woken(&p));
        // Once their bucket is swept, both (one acked, one timed out) wait for the end of
        // their retention, 70 ms after registering: the end of tick 7.
        assert!(p.complete(id, Ok(()), Instant::now()).is_some());
        tokio::time::advance(soon + TICK).await;
        let later = Instant::now();
        assert_eq!(p.sweep(later).timed_out.len(), 1);
        assert_eq!(p.next_sweep(later, SECOND), now + 8 * TICK);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_completes_a_waiting_entry_and_a_second_wait_is_unknown() {
        let p = Arc::new(Pending::default());
        let id = register(&p, SECOND);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait(id, Instant::now() + SECOND).await })
        };
        tokio::task::yield_now().await;
        assert!(p.complete(id, Ok(()), Instant::now()).is_some());
        assert_eq!(waiter.await.unwrap(), (Ok(()), None));
        assert_eq!(p.len(), 0);
        let (outcome, _) = p.wait(id, Instant::now() + SECOND).await;
        assert_eq!(outcome, Err(ForwardError::UnknownAck { id }));
        assert!(
            p.complete(id, Ok(()), Instant::now()).is_none(),
            "a late ack is refused"
        );
    }

    /// No real id is 0, the keepalive's: a slot's generation skips 0 when it wraps.
    #[tokio::test(start_paused = true)]
    async fn a_slots_generation_wraps_past_zero() {
        let p = Pending::default();
        let first = register(&p, SECOND);
        p.cancel(first);
        p.lock().slots[0].generation = u32::MAX;
        let last = register(&p, SECOND);
        assert_eq!(last, u64::from(u32::MAX) << 32);
        p.cancel(last);
        let wrapped = register(&p, SECOND);
        assert_ne!(wrapped, 0);
        assert_eq!(wrapped, first, "generation 1 again");
        assert!(p.complete(0, Ok(()), Instant::now()).is_none());
        assert!(p.complete(wrapped, Ok(()), Instant::now()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_that_arrives_before_the_wait_is_kept_for_it() {
        let p = Pending::default();
        let id = register(&p, SECOND);
        assert!(p
            .complete(
                id,
                Err(ForwardError::Expired { node: node() }),
                Instant::now()
            )
            .is_some());
        assert!(
            p.complete(id, Ok(()), Instant::now()).is_none(),
            "only the first outcome counts"
        );
        let (outcome, _) = p.wait(id, Instant::now() + SECOND).await;
        assert_eq!(outcome, Err(ForwardError::Expired { node: node() }));
        assert_eq!(p.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_at_the_deadline_and_names_the_node_to_report() {
        let p = Pending::default();
        let id = register(&p, SECOND);
        let start = Instant::now();
        let (outcome, report) = p.wait(id, start + 10 * SECOND).await;
        assert_eq!(outcome, Err(ForwardError::Timeout { node: node() }));
        assert_eq!(report, Some(node()));
        assert_eq!(start.elapsed(), SECOND);
        assert_eq!(p.len(), 0);
        assert!(
            p.complete(id, Ok(()), Instant::now()).is_none(),
            "the ack after the timeout is late"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_wait_gives_up_without_blaming_the_node_and_leaves_the_entry() {
        let p = Pending::default();
        let id = register(&p, 10 * SECOND);
        let (outcome, report) = p.wait(id, Instant::now() + SECOND).await;
        assert_eq!(outcome, Err(ForwardError::Timeout { node: node() }));
        assert_eq!(report, None);
        assert_eq!(p.len(), 1, "kept until the forward's own deadline");
        assert!(
            p.complete(id, Ok(()), Instant::now()).is_some(),
            "the ack is not late"
        );
        let (outcome, _) = p.wait(id, Instant::now() + SECOND).await;
        assert_eq!(outcome, Ok(()), "a later wait gets the outcome");
        assert_eq!(p.len(), 0);
    }

    /// A wait that is dropped (its caller gave up on the future) leaves the entry too: the
    /// outcome that comes after is kept for the next wait.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_leaves_the_outcome_for_the_next() {
        let p = Pending::default();
        let id = register(&p, 10 * SECOND);
        let cut = tokio::time::timeout(SECOND, p.wait(id, Instant::now() + 10 * SECOND)).await;
        assert!(cut.is_err());
        assert!(p.complete(id, Ok(()), Instant::now()).is_some());
        let (outcome, _) = p.wait(id, Instant::now() + SECOND).await;
        assert_eq!(outcome, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_nobody_waits_for_time_out_then_expire() {
        let p = Pending::default();
        let acked = register(&p, SECOND);
        let silent = register(&p, SECOND);
        p.complete(acked, Ok(()), Instant::now());
        assert_eq!(p.sweep(Instant::now()), Swept::default());
        tokio::time::advance(SECOND).await;
        let swept = p.sweep(Instant::now());
        assert_eq!(swept.timed_out, [node()]);
        assert_eq!(p.len(), 2, "outcomes are kept for a later receive_ack");
        tokio::time::advance(SECOND).await;
        let swept = p.sweep(Instant::now());
        assert_eq!(swept.dropped, 2);
        assert_eq!(p.len(), 0);
        let (outcome, _) = p.wait(silent, Instant::now() + SECOND).await;
        assert_eq!(outcome, Err(ForwardError::UnknownAck { id: silent }));
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_nobody_takes_is_dropped_when_its_retention_ends_not_a_turn_later() {
        let p = Pending::default();
        let now = Instant::now();
        p.register(&peer(), now, now + SECOND, now + 3 * SECOND);
        let id = p.register(&peer(), now, now + SECOND, now + 3 * SECOND);
        p.complete(id, Ok(()), now);
        for second in 1..=3 {
            tokio::time::advance(SECOND).await;
            let swept = p.sweep(Instant::now());
            assert_eq!(swept.timed_out.len(), usize::from(second == 1));
            assert_eq!(swept.dropped, if second == 3 { 2 } else { 0 });
        }
        assert_eq!(p.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_fails_every_waiting_entry_and_cancel_removes_one() {
        let p = Pending::default();
        let done = register(&p, SECOND);
        let waiting = register(&p, SECOND);
        let cancelled = register(&p, SECOND);
        p.complete(done, Ok(()), Instant::now());
        p.cancel(cancelled);
        p.fail_all(&ForwardError::ShuttingDown);
        assert_eq!(p.wait(done, Instant::now() + SECOND).await.0, Ok(()));
        assert_eq!(
            p.wait(waiting, Instant::now() + SECOND).await.0,
            Err(ForwardError::ShuttingDown)
        );
        assert_eq!(
            p.wait(cancelled, Instant::now() + SECOND).await.0,
            Err(ForwardError::UnknownAck { id: cancelled })
        );
        assert_eq!(p.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_sweep_drops_an_outcome_whose_retention_it_passed_too() {
        let p = Pending::default();
        let now = Instant::now();
        // Times out at 3 ms, its outcome is kept until 6 ms; the sweep comes late, at 26 ms:
        // both are due, in buckets it has to come back to.
        p.register(&peer(), now, now + TICK * 3 / 10, now + TICK * 6 / 10);
        // Kept until 30 ms: dropped by the first sweep after that.
        p.register(&peer(), now, now + TICK * 3 / 10, now + TICK * 3);
        tokio::time::advance(TICK * 26 / 10).await;
        let swept = p.sweep(Instant::now());
        assert_eq!((swept.timed_out.len(), swept.dropped), (2, 1));
        tokio::time::advance(TICK).await;
        assert_eq!(p.sweep(Instant::now()).dropped, 1);
        assert_eq!(p.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_slot_does_not_answer_to_its_old_id() {
        let p = Pending::default();
        let old = register(&p, SECOND);
        p.cancel(old);
        let new = register(&p, SECOND);
        assert_ne!(old, new);
        assert!(
            p.complete(old, Ok(()), Instant::now()).is_none(),
            "a stale id is a late ack"
        );
        assert_eq!(p.len(), 1);
        assert!(p.complete(new, Ok(()), Instant::now()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_beyond_a_turn_of_the_wheel_and_mixed_timeouts_expire_on_time() {
        let p = Pending::default();
        let start = Instant::now();
        // Registered out of deadline order; one is more than a turn of the wheel away.
        let timeouts = [3 * SECOND, SECOND / 2, 100 * SECOND, SECOND, TICK / 2];
        let ids: Vec<u64> = timeouts.iter().map(|t| register(&p, *t)).collect();
        let mut expired = Vec::new();
        while expired.len() < ids.len() && start.elapsed() < 200 * SECOND {
            tokio::time::advance(TICK).await;
            let now = Instant::now();
            for _ in 0..p.sweep(now).timed_out.len() {
                expired.push(now - start);
            }
        }
        let mut expected: Vec<Duration> = timeouts.to_vec();
        expected.sort();
        assert_eq!(expired.len(), expected.len());
        for (seen, due) in expired.iter().zip(&expected) {
            assert!(
                *seen >= *due && *seen <= *due + 2 * TICK,
                "{seen:?} for {due:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_when_nobody_ever_waits() {
        let p = Pending::default();
        for round in 0..10 {
            for _ in 0..1000 {
                let id = register(&p, SECOND);
                if round % 2 == 0 {
                    p.complete(id, Ok(()), Instant::now());
                }
            }
            tokio::time::advance(SECOND).await;
            p.sweep(Instant::now());
            assert!(p.len() <= 2000, "{}", p.len());
        }
        tokio::time::advance(2 * SECOND).await;
        p.sweep(Instant::now());
        assert_eq!(p.len(), 0);
        assert!(p.lock().wheel.iter().all(Vec::is_empty));
    }
}
