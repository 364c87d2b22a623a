//! How a node stops: asked for once (the first request wins: a leave, a leave through the
//! admin API, an abort; but an abort cuts a leave short), or on its own when membership fails;
//! one task carries the stop out in order (membership, the delivery of arriving messages, the
//! handler's drain, the forwarder, the admin API) and publishes why it stopped.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::delivery::Deliver;
use crate::error::MembershipError;
use crate::forward::Forwarder;
use crate::membership::Membership;

/// Why a node stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopped {
    /// It left gracefully, asked by [`NodeHandle::leave`](crate::NodeHandle::leave).
    Left,
    /// It left gracefully, asked through the admin API (`POST /cluster/leave`).
    LeaveRequested,
    /// It stopped at once, asked by [`NodeHandle::abort`](crate::NodeHandle::abort) or by dropping its handle; its peers
    /// see it `Down`.
    Aborted,
    /// Membership stopped on its own (another process uses this node id, the gossip socket
    /// broke), and the node with it.
    Failed(MembershipError),
}

/// How the stop of a node was asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Request {
    Leave,
    AdminLeave,
    Abort,
}

/// The stop of a node: asked for once (the first request wins), carried out by the node's
/// stop task, and its outcome.
pub(crate) struct Stop {
    pub(crate) request: watch::Sender<Option<Request>>,
    pub(crate) outcome: watch::Sender<Option<Stopped>>,
}

impl Stop {
    pub(crate) fn new() -> Arc<Stop> {
        Arc::new(Stop {
            request: watch::channel(None).0,
            outcome: watch::channel(None).0,
        })
    }

    /// Asks for the stop: the first request wins, but an abort cuts a leave short.
    pub(crate) fn ask(&self, request: Request) {
        self.request
            .send_if_modified(|asked| match (*asked, request) {
                (None, _) | (Some(Request::Leave | Request::AdminLeave), Request::Abort) => {
                    *asked = Some(request);
                    true
                }
                _ => false,
            });
    }

    pub(crate) async fn outcome(&self) -> Stopped {
        let mut outcome = self.outcome.subscribe();
        // The stop task always publishes an outcome (see `Published`), and the sender lives
        // as long as `self`: the wait ends.
        let stopped = match outcome.wait_for(Option::is_some).await {
            Ok(stopped) => stopped.clone().unwrap_or(Stopped::Aborted),
            Err(_) => Stopped::Aborted,
        };
        stopped
    }
}

/// What the stop task stops.
pub(crate) struct Parts {
    pub membership: Membership,
    pub forwarder: Forwarder,
    pub deliver: Arc<dyn Deliver>,
    pub admin_stop: CancellationToken,
    pub admin_tasks: Vec<JoinHandle<()>>,
    pub stop_timeout: Duration,
}

/// Publishes that the node stopped if the stop task ends without saying how (it panicked, or
/// its runtime shut down), so that nobody waits for `stopped()` forever.
struct Published(Arc<Stop>);

impl Drop for Published {
    fn drop(&mut self) {
        self.0.outcome.send_if_modified(|outcome| {
            if outcome.is_some() {
                return false;
            }
            *outcome = Some(Stopped::Aborted);
            true
        });
    }
}

/// Waits for a stop request or a failure of membership, stops every part in order and
/// publishes why: membership (a leave announces it and gossips a few rounds first, unless an
/// abort comes meanwhile), then the
/// delivery of arriving messages (refused `ShuttingDown` from then on), then the handler's
/// drain of what it accepted (its answers still go out), then the forwarder, then the admin
/// API.
pub(crate) async fn carry_out(stop: Arc<Stop>, mut parts: Parts) {
    let _published = Published(stop.clone());
    let mut requests = stop.request.subscribe();
    let mut request = tokio::select! {
        request = requests.wait_for(Option::is_some) => {
            request.ok().and_then(|r| *r).unwrap_or(Request::Abort)
        }
        // Membership failed on its own: the rest stops at once, and the failure says why.
        _ = parts.membership.stopped() => Request::Abort,
    };
    let ended = match request {
        Request::Leave | Request::AdminLeave => tokio::select! {
            ended = parts.membership.leave() => ended,
            Ok(()) = async { requests.wait_for(|asked| *asked == Some(Request::Abort)).await.map(drop) } => {
                request = Request::Abort;
                parts.membership.shutdown().await
            }
        },
        Request::Abort => parts.membership.shutdown().await,
    };
    parts.forwarder.stop_delivering();
    // A handler that panics while it drains stops nothing else.
    let drain = AssertUnwindSafe(parts.deliver.drain()).catch_unwind();
    match tokio::time::timeout(parts.stop_timeout, drain).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => warn!("the handler panicked while it drained"),
        Err(_) => warn!("the handler did not drain in time"),
    }
    if request != Request::Abort {
        // A leave lets what this node sent finish: the receivers may still be answering.
        parts.forwarder.finish_in_flight(parts.stop_timeout).await;
    }
    parts.forwarder.stop(parts.stop_timeout).await;
    parts.admin_stop.cancel();
    let admin = futures_util::future::join_all(parts.admin_tasks.iter_mut());
    if tokio::time::timeout(parts.stop_timeout, admin)
        .await
        .is_err()
    {
        // A client holding a connection open must not keep the port: cut it.
        warn!("the admin API did not stop in time");
        parts.admin_tasks.iter().for_each(JoinHandle::abort);
    }
    let stopped = match (ended, request) {
        (Err(MembershipError::Stopped), Request::Abort) => Stopped::Aborted,
        (Err(err), _) => Stopped::Failed(err),
        (Ok(()), Request::Leave) => Stopped::Left,
        (Ok(()), Request::AdminLeave) => Stopped::LeaveRequested,
        (Ok(()), Request::Abort) => Stopped::Aborted,
    };
    info!(?stopped, "node stopped");
    stop.outcome.send_replace(Some(stopped));
}
