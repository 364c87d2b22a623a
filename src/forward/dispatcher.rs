//! The worker pool a router puts behind [`Deliver`]: N workers, each with a bounded queue;
//! messages are partitioned by their target session, so one session's messages are handled in
//! order (Bondy's pool broke that order), and a full queue answers `Overloaded`.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::delivery::{Deliver, Delivery, NackReason, Verdict};

/// A pool of workers that handle deliveries. Dropping it (or [`Dispatcher::close`]) lets each
/// worker finish its queue and stop.
pub struct Dispatcher {
    queues: Vec<mpsc::Sender<Delivery>>,
    workers: Vec<JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts `workers` workers (at least one) on the current runtime, each with a queue of
    /// `queue_capacity` deliveries (at least one), running `handler` for each delivery.
    pub fn new<H, F>(workers: usize, queue_capacity: usize, handler: H) -> Dispatcher
    where
        H: Fn(Delivery) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let (queues, workers) = (0..workers.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Delivery>(queue_capacity.max(1));
                let handler = handler.clone();
                let worker = tokio::spawn(async move {
                    while let Some(delivery) = rx.recv().await {
                        handler(delivery).await;
                    }
                });
                (tx, worker)
            })
            .unzip();
        Dispatcher { queues, workers }
    }

    /// The worker that handles deliveries to this target: by session, else by realm and node.
    fn partition(&self, delivery: &Delivery) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match delivery.to.session {
            Some(session) => session.hash(&mut hasher),
            None => (&delivery.to.realm, &delivery.to.node).hash(&mut hasher),
        }
        (hasher.finish() % self.queues.len() as u64) as usize
    }

    /// Deliveries waiting in all queues.
    pub fn queued(&self) -> usize {
        self.queues
            .iter()
            .map(|q| q.max_capacity() - q.capacity())
            .sum()
    }

    /// Stops taking deliveries and waits for the workers to finish what is queued.
    pub async fn close(self) {
        let Dispatcher { queues, workers } = self;
        drop(queues);
        for worker in workers {
            // A worker that panicked has nothing left to finish.
            let _ = worker.await;
        }
    }
}

impl Deliver for Dispatcher {
    fn deliver(&self, delivery: Delivery) -> Verdict {
        let queue = &self.queues[self.partition(&delivery)];
        match queue.try_send(delivery) {
            Ok(()) => Verdict::Accepted,
            Err(mpsc::error::TrySendError::Full(_)) => Verdict::Refused(NackReason::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => Verdict::Refused(NackReason::ShuttingDown),
        }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_sessions_messages_are_handled_in_order() {
        let seen: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
        let recorder = seen.clone();
        let dispatcher = Dispatcher::new(4, 10_000, move |d: Delivery| {
            let recorder = recorder.clone();
            async move {
                tokio::task::yield_now().await;
                let session = d.to.session.unwrap();
                recorder
                    .lock()
                    .unwrap()
                    .entry(session)
                    .or_default()
                    .push(request(&d));
            }
        });
        for request in 0..1000 {
            for session in 0..20 {
                assert!(matches!(
                    dispatcher.deliver(delivery(session, request)),
                    Verdict::Accepted
                ));
            }
        }
        dispatcher.close().await;
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 20);
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
            async move { held.notified().await }
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
        drop(dispatcher);
    }
}
