//! The table of pending acks: one entry per forwarded message, from before its frame is written
//! until its outcome is taken or expires.
//!
//! An entry is registered before its frame is queued, so an ack can never arrive for an unknown
//! id. It ends in one of these ways: an ack or a nack arrives; the connection it was written on
//! breaks; its deadline passes (found by the waiter, or by [`Pending::sweep`]); the forwarder
//! shuts down. An outcome nobody waits for yet is kept until [`Pending::sweep`] drops it one
//! timeout after the deadline, so memory stays bounded however the API is used. Deadlines sit
//! in one ordered set swept periodically, not one timer per entry.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::error::ForwardError;
use crate::NodeId;

/// The outcome of one forward.
pub type Outcome = Result<(), ForwardError>;

struct Entry {
    node: NodeId,
    registered: Instant,
    deadline: Instant,
    /// When a finished outcome nobody took is dropped.
    retain_until: Instant,
    /// The connection the frame was written on, once written.
    written_on: Option<u64>,
    state: State,
}

enum State {
    /// No outcome yet; the sender is told when it comes, if someone waits.
    Waiting(Option<oneshot::Sender<Outcome>>),
    /// The outcome, kept for a later `wait`.
    Done(Outcome),
}

#[derive(Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    /// (time of the entry's next sweep action, id): its deadline while waiting, its
    /// `retain_until` once done.
    timeline: BTreeSet<(Instant, u64)>,
    next_id: u64,
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
#[derive(Default)]
pub struct Pending {
    table: Mutex<Table>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a message to `node` that must be acked by `deadline`; its outcome is kept
    /// until `retain_until` if nobody takes it. Returns its id.
    pub fn register(&self, node: NodeId, deadline: Instant, retain_until: Instant) -> u64 {
        let mut t = self.lock();
        t.next_id += 1;
        let id = t.next_id;
        t.entries.insert(
            id,
            Entry {
                node,
                registered: Instant::now(),
                deadline,
                retain_until: retain_until.max(deadline),
                written_on: None,
                state: State::Waiting(None),
            },
        );
        t.timeline.insert((deadline, id));
        id
    }

    /// Number of entries, finished or not.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The deadline of entry `id`, if it is still waiting.
    pub fn deadline(&self, id: u64) -> Option<Instant> {
        let t = self.lock();
        t.entries
            .get(&id)
            .filter(|e| matches!(e.state, State::Waiting(_)))
            .map(|e| e.deadline)
    }

    /// Notes that entry `id`'s frame was written on connection `connection`.
    pub fn written(&self, id: u64, connection: u64) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.written_on = Some(connection);
        }
    }

    /// Removes entry `id` without an outcome (its frame was never queued).
    pub fn cancel(&self, id: u64) {
        let mut t = self.lock();
        if let Some(entry) = t.entries.remove(&id) {
            t.timeline.remove(&(entry.deadline, id));
            t.timeline.remove(&(entry.retain_until, id));
        }
    }

    /// Records the outcome of entry `id` and returns the time since it was registered; `None`
    /// when the entry is unknown or already finished: a late ack, which the caller counts and
    /// drops.
    pub fn complete(&self, id: u64, outcome: Outcome) -> Option<Duration> {
        let mut guard = self.lock();
        let t = &mut *guard;
        let entry = t.entries.get_mut(&id)?;
        let elapsed = entry.registered.elapsed();
        let State::Waiting(waiter) = &mut entry.state else {
            return None;
        };
        let deadline = entry.deadline;
        match waiter.take() {
            Some(waiter) => {
                t.entries.remove(&id);
                t.timeline.remove(&(deadline, id));
                // The waiter may have given up meanwhile: nothing to do then.
                let _ = waiter.send(outcome);
            }
            None => {
                entry.state = State::Done(outcome);
                let retain_until = entry.retain_until;
                t.timeline.remove(&(deadline, id));
                t.timeline.insert((retain_until, id));
            }
        }
        Some(elapsed)
    }

    /// Fails every entry written on `connection` with `error` (the frames still queued are
    /// not touched: they go out on the next connection). Returns how many.
    pub fn fail_connection(&self, connection: u64, error: &ForwardError) -> usize {
        let ids: Vec<u64> = self
            .lock()
            .entries
            .iter()
            .filter(|(_, e)| {
                e.written_on == Some(connection) && matches!(e.state, State::Waiting(_))
            })
            .map(|(id, _)| *id)
            .collect();
        ids.iter()
            .filter(|id| self.complete(**id, Err(error.clone())).is_some())
            .count()
    }

    /// Fails every waiting entry with `error` (shutdown).
    pub fn fail_all(&self, error: &ForwardError) {
        let ids: Vec<u64> = self.lock().entries.keys().copied().collect();
        for id in ids {
            self.complete(id, Err(error.clone()));
        }
    }

    /// Waits for the outcome of entry `id`, until its deadline or `until`, whichever is first,
    /// and removes the entry. An unknown id, or one whose outcome was already taken, is
    /// `UnknownAck`. When the wait ends first, the entry is removed and the result is `Timeout`;
    /// the node is returned beside it for a bad-node report when its deadline had passed.
    pub async fn wait(&self, id: u64, until: Instant) -> (Outcome, Option<NodeId>) {
        let (receiver, deadline, node) = {
            let mut guard = self.lock();
            let t = &mut *guard;
            let Some(entry) = t.entries.get_mut(&id) else {
                return (Err(ForwardError::UnknownAck { id }), None);
            };
            match &mut entry.state {
                State::Done(_) => {
                    let retain_until = entry.retain_until;
                    let Some(Entry {
                        state: State::Done(outcome),
                        ..
                    }) = t.entries.remove(&id)
                    else {
                        unreachable!("the entry was just seen done");
                    };
                    t.timeline.remove(&(retain_until, id));
                    return (outcome, None);
                }
                State::Waiting(Some(_)) => {
                    // Someone already waits for it: a second wait is a misuse.
                    return (Err(ForwardError::UnknownAck { id }), None);
                }
                State::Waiting(waiter) => {
                    let (tx, rx) = oneshot::channel();
                    *waiter = Some(tx);
                    (rx, entry.deadline, entry.node.clone())
                }
            }
        };
        let mut receiver = receiver;
        match tokio::time::timeout_at(deadline.min(until), &mut receiver).await {
            Ok(Ok(outcome)) => (outcome, None),
            // The sender was dropped without an outcome: only when the table itself goes.
            Ok(Err(_)) => (Err(ForwardError::ShuttingDown), None),
            Err(_) => {
                // Our time is up; take the entry out unless an outcome raced in.
                let mut t = self.lock();
                if let Some(entry) = t.entries.remove(&id) {
                    t.timeline.remove(&(entry.deadline, id));
                    let past_deadline = Instant::now() >= entry.deadline;
                    let timeout = Err(ForwardError::Timeout { node: node.clone() });
                    return (timeout, past_deadline.then_some(node));
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
        while let Some(&(at, id)) = t.timeline.first() {
            if at > now {
                break;
            }
            t.timeline.pop_first();
            let Some(entry) = t.entries.get_mut(&id) else {
                continue;
            };
            match &mut entry.state {
                State::Waiting(waiter) => {
                    let timeout = Err(ForwardError::Timeout {
                        node: entry.node.clone(),
                    });
                    swept.timed_out.push(entry.node.clone());
                    match waiter.take() {
                        Some(waiter) => {
                            t.entries.remove(&id);
                            let _ = waiter.send(timeout);
                        }
                        None => {
                            entry.state = State::Done(timeout);
                            t.timeline.insert((entry.retain_until, id));
                        }
                    }
                }
                State::Done(_) => {
                    t.entries.remove(&id);
                    swept.dropped += 1;
                }
            }
        }
        swept
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

    fn register(p: &Pending, timeout: Duration) -> u64 {
        let now = Instant::now();
        p.register(node(), now + timeout, now + 2 * timeout)
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
        assert!(p.complete(id, Ok(())).is_some());
        assert_eq!(waiter.await.unwrap(), (Ok(()), None));
        assert!(p.is_empty());
        let (outcome, _) = p.wait(id, Instant::now() + SECOND).await;
        assert_eq!(outcome, Err(ForwardError::UnknownAck { id }));
        assert!(p.complete(id, Ok(())).is_none(), "a late ack is refused");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_that_arrives_before_the_wait_is_kept_for_it() {
        let p = Pending::default();
        let id = register(&p, SECOND);
        assert!(p
            .complete(id, Err(ForwardError::Expired { node: node() }))
            .is_some());
        assert!(
            p.complete(id, Ok(())).is_none(),
            "only the first outcome counts"
        );
        let (outcome, _) = p.wait(id, Instant::now() + SECOND).await;
        assert_eq!(outcome, Err(ForwardError::Expired { node: node() }));
        assert!(p.is_empty());
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
        assert!(p.is_empty());
        assert!(
            p.complete(id, Ok(())).is_none(),
            "the ack after the timeout is late"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_wait_gives_up_without_blaming_the_node() {
        let p = Pending::default();
        let id = register(&p, 10 * SECOND);
        let (outcome, report) = p.wait(id, Instant::now() + SECOND).await;
        assert_eq!(outcome, Err(ForwardError::Timeout { node: node() }));
        assert_eq!(report, None);
        assert!(p.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_nobody_waits_for_time_out_then_expire() {
        let p = Pending::default();
        let acked = register(&p, SECOND);
        let silent = register(&p, SECOND);
        p.complete(acked, Ok(()));
        assert_eq!(p.sweep(Instant::now()), Swept::default());
        tokio::time::advance(SECOND).await;
        let swept = p.sweep(Instant::now());
        assert_eq!(swept.timed_out, [node()]);
        assert_eq!(p.len(), 2, "outcomes are kept for a later receive_ack");
        tokio::time::advance(SECOND).await;
        let swept = p.sweep(Instant::now());
        assert_eq!(swept.dropped, 2);
        assert!(p.is_empty());
        let (outcome, _) = p.wait(silent, Instant::now() + SECOND).await;
        assert_eq!(outcome, Err(ForwardError::UnknownAck { id: silent }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_connection_fails_only_what_was_written_on_it() {
        let p = Pending::default();
        let written = register(&p, SECOND);
        let queued = register(&p, SECOND);
        let other = register(&p, SECOND);
        p.written(written, 1);
        p.written(other, 2);
        let lost = ForwardError::ConnectionLost { node: node() };
        assert_eq!(p.fail_connection(1, &lost), 1);
        assert_eq!(p.wait(written, Instant::now() + SECOND).await.0, Err(lost));
        assert!(p.deadline(queued).is_some() && p.deadline(other).is_some());
        p.fail_all(&ForwardError::ShuttingDown);
        assert_eq!(
            p.wait(queued, Instant::now() + SECOND).await.0,
            Err(ForwardError::ShuttingDown)
        );
        p.cancel(other);
        assert!(p.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_when_nobody_ever_waits() {
        let p = Pending::default();
        for round in 0..10 {
            for _ in 0..1000 {
                let id = register(&p, SECOND);
                if round % 2 == 0 {
                    p.complete(id, Ok(()));
                }
            }
            tokio::time::advance(SECOND).await;
            p.sweep(Instant::now());
            assert!(p.len() <= 2000, "{}", p.len());
        }
        tokio::time::advance(2 * SECOND).await;
        p.sweep(Instant::now());
        assert!(p.is_empty());
        assert!(p.lock().timeline.is_empty());
    }
}
