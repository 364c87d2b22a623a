//! The worker pool a router can put behind [`Deliver`]: N workers, each with a bounded queue;
//! messages are partitioned by their target session, so one session's messages are handled in
//! order (Bondy's pool broke that order). The handler's answer is the verdict the sender gets
//! (an ack, or a nack with the handler's reason), sent once the handler has run; a full queue
//! answers `Overloaded` at once. A handler that panics costs its own delivery only: it is
//! nacked `HandlerFailed`, counted and logged, and its worker goes on. The node drains the
//! pool when it stops.

use std::future::Future;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::delivery::{Deliver, Delivery, NackReason, Verdict};

/// A delivery with the sender of its verdict.
struct Job {
    delivery: Delivery,
    verdict: oneshot::Sender<Result<(), NackReason>>,
}

/// A pool of workers that handle deliveries. [`Dispatcher::close`] (which the node calls as it
/// stops, through [`Deliver::drain`]) lets each worker finish its queue; deliveries after it
/// are refused `ShuttingDown`.
pub struct Dispatcher {
    queues: Vec<mpsc::Sender<Job>>,
    /// Spreads targets over the queues.
    hasher: foldhash::fast::RandomState,
    workers: TaskTracker,
    /// Tells the workers to finish their queues and stop.
    closing: CancellationToken,
    /// Set by `close`: deliveries are refused from then on (read on every delivery, where the
    /// token's check would take its lock).
    closed: AtomicBool,
    /// Handler runs that panicked.
    panics: Arc<AtomicU64>,
}

impl Dispatcher {
    /// Starts `workers` workers (at least one) on the current runtime, each with a queue of
    /// `queue_capacity` deliveries (at least one), running `handler` for each delivery; the
    /// handler's result is the verdict: `Ok(())` acks, `Err(reason)` nacks with the reason
    /// (`NoSuchSession`, say).
    pub fn new<H, F>(workers: usize, queue_capacity: usize, handler: H) -> Dispatcher
    where
        H: Fn(Delivery) -> F + Send + Sync + 'static,
        F: Future<Output = Result<(), NackReason>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let closing = CancellationToken::new();
        let tracker = TaskTracker::new();
        let panics = Arc::new(AtomicU64::new(0));
        let queues = (0..workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Job>(queue_capacity.max(1));
                tracker.spawn(work(rx, handler.clone(), closing.clone(), panics.clone()));
                tx
            })
            .collect();
        Dispatcher {
            queues,
            hasher: Default::default(),
            workers: tracker,
            closing,
            closed: AtomicBool::new(false),
            panics,
        }
    }

    /// How many handler runs panicked (each nacked `HandlerFailed`).
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// The worker that handles deliveries to this target: by session, else by realm and node.
    fn partition(&self, delivery: &Delivery) -> usize {
        let hash = match delivery.to.session {
            Some(session) => self.hasher.hash_one(session),
            None => self
                .hasher
                .hash_one((&delivery.to.realm, &delivery.to.node)),
        };
        (hash % self.queues.len() as u64) as usize
    }

    /// Deliveries waiting in all queues.
    pub fn queued(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .sum()
    }

    /// Stops taking deliveries and waits for the workers to finish what is queued; every
    /// caller waits for that, the first one and those that come while it waits, and a caller
    /// that gives up waiting leaves the others as they were.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.cancel();
        self.workers.close();
        self.workers.wait().await;
    }
}

/// One worker: handles its queue in order until the pool closes and the queue is empty.
async fn work<H, F>(
    mut queue: mpsc::Receiver<Job>,
    handler: Arc<H>,
    closing: CancellationToken,
    panics: Arc<AtomicU64>,
) where
    H: Fn(Delivery) -> F,
    F: Future<Output = Result<(), NackReason>>,
{
    let mut closed = false;
    loop {
        let job = tokio::select! {
            biased;
            job = queue.recv() => job,
            _ = closing.cancelled(), if !closed => {
                // No more deliveries get in; what is queued is still handled.
                queue.close();
                closed = true;
                continue;
            }
        };
        let Some(job) = job else { return };
        if job.verdict.is_closed() {
            // Nobody waits for the verdict any more (the message's time to live ran out while
            // it was queued): its sender gave up, so it is not handled.
            continue;
        }
        // The handler is called inside the caught future, so a panic before its first await
        // is caught too.
        let run = AssertUnwindSafe(async { handler(job.delivery).await });
        let verdict = match run.catch_unwind().await {
            Ok(verdict) => verdict,
            Err(panic) => {
                panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    panic = panic_message(&*panic),
                    "a delivery's handler panicked"
                );
                Err(NackReason::HandlerFailed)
            }
        };
        // The connection may have given up on it (its time to live ran out).
        let _ = job.verdict.send(verdict);
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

impl Deliver for Dispatcher {
    fn deliver(&self, delivery: Delivery) -> Verdict {
        if self.closed.load(Ordering::Acquire) {
            return Verdict::Refused(NackReason::ShuttingDown);
        }
        // Room first: a refusal costs no channel for a verdict.
        match self.queues[self.partition(&delivery)].try_reserve() {
            Ok(room) => {
                let (later, verdict) = Verdict::later();
                room.send(Job { delivery, verdict });
                later
            }
            Err(mpsc::error::TrySendError::Full(())) => Verdict::Refused(NackReason::Overloaded),
            Err(mpsc::error::TrySendError::Closed(())) => {
                Verdict::Refused(NackReason::ShuttingDown)
            }
        }
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.close())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use tokio::sync::Notify;

    use super::*;
    use crate::peer_id::PeerId;
    use crate::wamp::{Dict, WampMessage};

    fn delivery(session: u64, request: u64) -> Delivery {
        Delivery {
            from: PeerId::node("realm1", "a"),
            to: PeerId::session("realm1", "b", session),
            message: WampMessage::Interrupt {
                request,
                options: Dict::new(),
            },
        }
    }

    fn request(d: &Delivery) -> u64 {
        match d.message {
            WampMessage::Interrupt { request, .. } => request,
            _ => unreachable!(),
        }
    }

    async fn verdict_of(verdict: Verdict) -> Result<(), NackReason> {
        match verdict {
            Verdict::Accepted => Ok(()),
            Verdict::Refused(reason) => Err(reason),
            Verdict::Later(answer) => answer.await.unwrap_or(Err(NackReason::ShuttingDown)),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_sessions_messages_are_handled_in_order_and_get_the_handlers_verdict() {
        let seen: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
        let recorder = seen.clone();
        // Room for all 20,000 in one queue: the random hasher may put many sessions on one.
        let dispatcher = Dispatcher::new(4, 20_000, move |d: Delivery| {
            let recorder = recorder.clone();
            async move {
                tokio::task::yield_now().await;
                let session = d.to.session.unwrap_or_default();
                if session == 13 {
                    return Err(NackReason::NoSuchSession);
                }
                recorder
                    .lock()
                    .unwrap()
                    .entry(session)
                    .or_default()
                    .push(request(&d));
                Ok(())
            }
        });
        let mut verdicts = Vec::new();
        for request in 0..1000 {
            for session in 0..20 {
                verdicts.push((session, dispatcher.deliver(delivery(session, request))));
            }
        }
        for (session, verdict) in verdicts {
            let expected = if session == 13 {
                Err(NackReason::NoSuchSession)
            } else {
                Ok(())
            };
            assert_eq!(verdict_of(verdict).await, expected);
        }
        dispatcher.close().await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 19);
        for requests in seen.values() {
            assert_eq!(*requests, (0..1000).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn a_full_queue_answers_overloaded() {
        let gate = Arc::new(Notify::new());
        let held = gate.clone();
        let dispatcher = Dispatcher::new(1, 2, move |_| {
            let held = held.clone();
            async move {
                held.notified().await;
                Ok(())
            }
        });
        let mut verdicts = Vec::new();
        for i in 0..5 {
            verdicts.push(dispatcher.deliver(delivery(1, i)));
            tokio::task::yield_now().await;
        }
        let overloaded = verdicts
            .iter()
            .filter(|v| matches!(v, Verdict::Refused(NackReason::Overloaded)))
            .count();
        // One in the worker's hands, two queued, the rest refused.
        assert_eq!(overloaded, 2, "{verdicts:?}");
        assert_eq!(dispatcher.queued(), 2);
        gate.notify_waiters();
    }

    #[tokio::test]
    async fn a_delivery_whose_sender_gave_up_while_it_was_queued_is_not_handled() {
        let gate = Arc::new(Notify::new());
        let handled = Arc::new(Mutex::new(Vec::new()));
        let (held, record) = (gate.clone(), handled.clone());
        let dispatcher = Dispatcher::new(1, 10, move |d: Delivery| {
            let (held, record) = (held.clone(), record.clone());
            async move {
                record.lock().unwrap().push(request(&d));
                held.notified().await;
                Ok(())
            }
        });
        let first = dispatcher.deliver(delivery(1, 1));
        while handled.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // Queued behind the first, then abandoned: the connection dropped its verdict.
        drop(dispatcher.deliver(delivery(1, 2)));
        let third = dispatcher.deliver(delivery(1, 3));
        gate.notify_one();
        assert_eq!(verdict_of(first).await, Ok(()));
        gate.notify_one();
        assert_eq!(verdict_of(third).await, Ok(()));
        assert_eq!(*handled.lock().unwrap(), [1, 3]);
    }

    #[tokio::test]
    async fn every_caller_of_close_waits_for_the_workers() {
        let gate = Arc::new(Notify::new());
        let held = gate.clone();
        let dispatcher = Arc::new(Dispatcher::new(1, 10, move |_| {
            let held = held.clone();
            async move {
                held.notified().await;
                Ok(())
            }
        }));
        let verdict = dispatcher.deliver(delivery(1, 1));
        let first = tokio::spawn({
            let d = dispatcher.clone();
            async move { d.close().await }
        });
        tokio::task::yield_now().await;
        let second = tokio::spawn({
            let d = dispatcher.clone();
            async move { d.close().await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "the second close waits too");
        gate.notify_one();
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(verdict_of(verdict).await, Ok(()));
    }

    /// A close cut short (the node's stop gave up on the drain) leaves the pool as it was: a
    /// close after it still waits for the workers and ends; while the workers are busy, what
    /// comes is refused.
    #[tokio::test]
    async fn a_close_given_up_on_leaves_later_closes_waiting_for_the_workers() {
        let gate = Arc::new(Notify::new());
        let held = gate.clone();
        let dispatcher = Dispatcher::new(1, 10, move |_| {
            let held = held.clone();
            async move {
                held.notified().await;
                Ok(())
            }
        });
        let verdict = dispatcher.deliver(delivery(1, 1));
        let cut = tokio::time::timeout(std::time::Duration::from_millis(20), dispatcher.close());
        assert!(cut.await.is_err(), "the worker is held");
        assert!(matches!(
            dispatcher.deliver(delivery(2, 2)),
            Verdict::Refused(NackReason::ShuttingDown)
        ));
        gate.notify_one();
        let again = tokio::time::timeout(std::time::Duration::from_secs(10), dispatcher.close());
        assert!(
            again.await.is_ok(),
            "a later close ends once the worker has"
        );
        assert_eq!(verdict_of(verdict).await, Ok(()));
    }

    /// A handler that panics costs its own delivery only: that one is nacked `HandlerFailed`,
    /// the deliveries queued behind it on the same worker are handled, and the worker takes
    /// new ones.
    #[tokio::test]
    async fn a_handler_that_panics_costs_that_delivery_only() {
        let gate = Arc::new(Notify::new());
        let held = gate.clone();
        let dispatcher = Dispatcher::new(1, 10, move |d: Delivery| {
            let held = held.clone();
            async move {
                if request(&d) == 1 {
                    held.notified().await;
                    panic!("handler bug");
                }
                Ok(())
            }
        });
        let first = dispatcher.deliver(delivery(1, 1));
        let queued: Vec<Verdict> = (2..5).map(|i| dispatcher.deliver(delivery(1, i))).collect();
        gate.notify_one();
        assert_eq!(verdict_of(first).await, Err(NackReason::HandlerFailed));
        for verdict in queued {
            assert_eq!(verdict_of(verdict).await, Ok(()));
        }
        assert_eq!(verdict_of(dispatcher.deliver(delivery(1, 9))).await, Ok(()));
        assert_eq!(dispatcher.panics(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_finishes_what_was_queued_and_refuses_what_comes_after() {
        let handled = Arc::new(Mutex::new(Vec::new()));
        let recorder = handled.clone();
        let dispatcher = Dispatcher::new(2, 100, move |d: Delivery| {
            let recorder = recorder.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                recorder.lock().unwrap().push(request(&d));
                Ok(())
            }
        });
        let queued: Vec<Verdict> = (0..10)
            .map(|i| dispatcher.deliver(delivery(i, i)))
            .collect();
        dispatcher.drain().await;
        assert_eq!(handled.lock().unwrap().len(), 10);
        for verdict in queued {
            assert_eq!(verdict_of(verdict).await, Ok(()));
        }
        assert!(matches!(
            dispatcher.deliver(delivery(1, 99)),
            Verdict::Refused(NackReason::ShuttingDown)
        ));
        // A second close waits for nothing.
        dispatcher.close().await;
    }
}
