//! A node: membership and the admin API started together from one [`Config`], stopped together.
//! This is what the `wamp-cluster` program runs and what a router embeds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin;
use crate::config::Config;
use crate::delivery::Deliver;
use crate::error::{MembershipError, NodeError};
use crate::forward::{DeliveryLog, Forwarder, Protection};
use crate::membership::{LiveView, Membership};
use crate::metrics::UPKEEP_INTERVAL;
use crate::security::ClusterKeys;
use crate::tls::Tls;
use crate::NodeId;

/// How long stopping waits for the forwarder's tasks.
const FORWARDER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long stopping waits for the admin server's open requests.
const ADMIN_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Entry point: `Node::builder(config).start().await`.
pub struct Node;

impl Node {
    /// A builder for a node with this configuration.
    pub fn builder(config: Config) -> NodeBuilder {
        NodeBuilder {
            config,
            prometheus: None,
            deliver: None,
            counters: None,
        }
    }
}

/// Options of a node before it starts.
pub struct NodeBuilder {
    config: Config,
    prometheus: Option<PrometheusHandle>,
    deliver: Option<Arc<dyn Deliver>>,
    counters: Option<Arc<DeliveryLog>>,
}

impl NodeBuilder {
    /// Serves this recorder's output on `/metrics` and runs its upkeep. Without it `/metrics`
    /// answers 404 (the embedding program may export metrics its own way).
    pub fn prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// The handler of messages forwarded to this node. By default a [`DeliveryLog`] accepts
    /// and counts them, and `/stats` shows its counters.
    pub fn deliver(mut self, deliver: Arc<dyn Deliver>) -> Self {
        self.deliver = Some(deliver);
        self
    }

    /// The delivery counters `/stats` shows, when the handler given to
    /// [`NodeBuilder::deliver`] keeps them.
    pub fn delivery_counters(mut self, counters: Arc<DeliveryLog>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Validates the configuration, binds the admin API and the forward listener, and starts
    /// gossip and the forwarder. Returns once both
    /// listen; the node is `joining` until it has joined (see [`Membership::start`]).
    pub async fn start(self) -> Result<NodeHandle, NodeError> {
        let config = &self.config;
        config.validate()?;
        // The files the configuration names, read once, for gossip and forwarding alike.
        let token = config
            .admin_token_file
            .as_deref()
            .map(admin::load_token)
            .transpose()?;
        let protection = Protection {
            keys: ClusterKeys::load(
                config.cluster_secret_file.as_deref(),
                config.cluster_secret.as_ref(),
                &config.cluster_id,
            )?,
            tls: Tls::load(&config.tls)?,
        };
        let listener = TcpListener::bind(self.config.admin_addr)
            .await
            .map_err(|source| NodeError::AdminBind {
                addr: self.config.admin_addr,
                source,
            })?;
        let admin_addr = listener
            .local_addr()
            .map_err(|source| NodeError::AdminBind {
                addr: self.config.admin_addr,
                source,
            })?;
        let forward_listener =
            TcpListener::bind(self.config.forward_addr)
                .await
                .map_err(|source| NodeError::ForwardBind {
                    addr: self.config.forward_addr,
                    source,
                })?;
        let membership =
            Membership::start(&self.config, Some(admin_addr), protection.keys.clone()).await?;
        let (deliver, log): (Arc<dyn Deliver>, _) = match self.deliver {
            Some(deliver) => (deliver, self.counters),
            None => {
                let log = Arc::new(DeliveryLog::default());
                (log.clone(), Some(log))
            }
        };
        let forwarder = match Forwarder::start(
            self.config.forward.clone(),
            self.config.limits.clone(),
            protection,
            forward_listener,
            self.config.cluster_id.clone(),
            membership.clone(),
            deliver,
        ) {
            Ok(forwarder) => forwarder,
            Err(source) => {
                let _ = membership.shutdown().await;
                return Err(NodeError::ForwardBind {
                    addr: self.config.forward_addr,
                    source,
                });
            }
        };
        let leave_requested = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let state = admin::AdminState {
            membership: membership.clone(),
            forwarder: forwarder.clone(),
            deliveries: log,
            ack_timeout: self.config.forward.ack_timeout_ms,
            prometheus: self.prometheus.clone(),
            leave_requested: leave_requested.clone(),
            token,
        };
        let stop = admin_stop.clone();
        tasks.spawn(async move {
            let result = axum::serve(listener, admin::router(state))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(err) = result {
                warn!(error = %err, "admin API stopped");
            }
        });
        if let Some(handle) = self.prometheus {
            let stop = admin_stop.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => handle.run_upkeep(),
                    }
                }
            });
        }
        tasks.close();
        info!(node = %membership.node_id(), %admin_addr, "node started");
        Ok(NodeHandle {
            membership,
            forwarder,
            admin_addr,
            leave_requested,
            admin_stop,
            tasks,
        })
    }
}

/// A running node. Stop it with [`NodeHandle::leave`] (graceful) or [`NodeHandle::abort`].
pub struct NodeHandle {
    membership: Membership,
    forwarder: Forwarder,
    admin_addr: SocketAddr,
    leave_requested: CancellationToken,
    admin_stop: CancellationToken,
    tasks: TaskTracker,
}

impl NodeHandle {
    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        self.membership.node_id()
    }

    /// Membership: views, events, reachability reports.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The forwarder: forward, broadcast, bad-node reports.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// The current live view.
    pub fn view(&self) -> Arc<LiveView> {
        self.membership.view()
    }

    /// The address the admin API is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Resolves when a leave was asked for through the admin API (`POST /cluster/leave`). The
    /// leave has then begun; [`NodeHandle::leave`] waits for its end and stops the node.
    pub async fn leave_requested(&self) {
        self.leave_requested.cancelled().await
    }

    /// Resolves when membership stopped on its own, with the reason (such as a node id
    /// conflict). The node should then be stopped with [`NodeHandle::abort`].
    pub async fn failed(&self) -> MembershipError {
        match self.membership.stopped().await {
            Err(err) => err,
            Ok(()) => MembershipError::Stopped,
        }
    }

    /// Graceful leave: announce `leaving`, keep gossiping a few rounds, stop gossip, then stop
    /// the admin API.
    pub async fn leave(self) -> Result<(), NodeError> {
        let result = self.membership.leave().await;
        self.forwarder.shutdown(FORWARDER_STOP_TIMEOUT).await;
        self.stop_admin().await;
        Ok(result?)
    }

    /// Stops at once without announcing anything: peers see the node `Down`.
    pub async fn abort(self) -> Result<(), NodeError> {
        let result = self.membership.shutdown().await;
        self.forwarder.shutdown(FORWARDER_STOP_TIMEOUT).await;
        self.stop_admin().await;
        Ok(result?)
    }

    async fn stop_admin(&self) {
        self.admin_stop.cancel();
        if tokio::time::timeout(ADMIN_STOP_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("admin API did not stop in time");
        }
    }
}

impl Drop for NodeHandle {
    /// A node dropped without [`NodeHandle::leave`] or [`NodeHandle::abort`] stops at once, as
    /// `abort` does, without waiting.
    fn drop(&mut self) {
        self.membership.signal_stop();
        self.forwarder.signal_stop();
        self.admin_stop.cancel();
    }
}
