//! A node: membership, the forwarder, the handler of forwarded messages and the admin API,
//! started together from one [`Config`] and stopped together. This is what the `wamp-cluster`
//! program runs and what a router embeds.
//!
//! A node stops in exactly one way, whoever asks first: a graceful leave
//! ([`NodeHandle::leave`], or `POST /cluster/leave`), an abort ([`NodeHandle::abort`], or
//! dropping the handle), or a failure of membership (another process with the same node id,
//! a broken gossip socket); an abort cuts a leave short. One task carries the stop out in
//! order (membership, the delivery of arriving messages, the handler's drain, the forwarder,
//! the admin API), and [`NodeHandle::stopped`] tells when it is over and why.

use std::net::SocketAddr;
use std::sync::Arc;

use chitchat::transport::Transport;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

pub(crate) mod stop;

pub use stop::Stopped;

use crate::admin;
use crate::config::Config;
use crate::delivery::Deliver;
use crate::error::{ConfigError, NodeError};
use crate::forward::{Forwarder, Protection};
use crate::membership::Membership;
use crate::metrics::UPKEEP_INTERVAL;
use crate::security::ClusterKeys;
use crate::tls::Tls;
use crate::NodeId;
use stop::{Parts, Request, Stop};

/// The handler of forwarded messages, made once the node's forwarder and membership exist.
type HandlerFactory = Box<dyn FnOnce(&Forwarder, &Membership) -> Arc<dyn Deliver> + Send>;

/// Entry point: `Node::builder(config, handler).start().await`.
pub struct Node;

impl Node {
    /// A builder for a node with this configuration. `handler` makes the [`Deliver`] handler
    /// of the messages other nodes forward to this one; it gets the node's [`Forwarder`] and
    /// [`Membership`] (a router's handler forwards RESULTs back, and watches the view), and is
    /// called once, before the node delivers anything. A node that only sends can pass
    /// `|_, _| Discard`.
    pub fn builder<H, F>(config: Config, handler: F) -> NodeBuilder
    where
        H: Deliver,
        F: FnOnce(&Forwarder, &Membership) -> H + Send + 'static,
    {
        NodeBuilder {
            config,
            handler: Box::new(move |forwarder, membership| {
                Arc::new(handler(forwarder, membership)) as Arc<dyn Deliver>
            }),
            prometheus: None,
            admin: true,
            admin_routes: None,
            transport: None,
            generation: None,
        }
    }
}

/// Options of a node before it starts.
pub struct NodeBuilder {
    config: Config,
    handler: HandlerFactory,
    prometheus: Option<PrometheusHandle>,
    admin: bool,
    admin_routes: Option<axum::Router>,
    transport: Option<Box<dyn Transport>>,
    generation: Option<u64>,
}

impl NodeBuilder {
    /// Serves this recorder's output on `/metrics` and runs its upkeep. Without it `/metrics`
    /// answers 404 (the embedding program may export metrics its own way).
    pub fn prometheus(mut self, handle: PrometheusHandle) -> Self {
        self.prometheus = Some(handle);
        self
    }

    /// Serves no admin API (`admin_addr` is then not bound, and not gossiped): for a program
    /// that exposes the node's state its own way.
    pub fn without_admin(mut self) -> Self {
        self.admin = false;
        self
    }

    /// Serves these routes on the admin API beside its own (a router's `/router/…`), behind
    /// the same checks of host and origin. They must not change anything: the admin token
    /// guards only the API's own routes that do.
    pub fn admin_routes(mut self, routes: axum::Router) -> Self {
        self.admin_routes = Some(routes);
        self
    }

    /// Gossips over `transport` instead of UDP on `gossip_addr` (chitchat's own
    /// `ChannelTransport` runs gossip in memory, and can cut links between nodes). Gossip is
    /// then not sealed: a node with a cluster secret refuses this.
    pub fn transport(mut self, transport: impl Transport) -> Self {
        self.transport = Some(Box::new(transport));
        self
    }

    /// Starts as `generation` instead of the clock's time in nanoseconds: for tests and chaos
    /// runs that replay a restart after the clock stepped back.
    #[cfg(feature = "testkit")]
    pub fn generation(mut self, generation: u64) -> Self {
        self.generation = Some(generation);
        self
    }

    /// Validates the configuration, reads the files it names, binds the admin API and the
    /// forward listener, and starts gossip, the forwarder and the handler. Returns once all
    /// listen; the node is `joining` until it has joined.
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
        let secret_key = crate::security::secret_key(
            config.cluster_secret_file.as_deref(),
            config.cluster_secret.as_ref(),
        );
        if let (Some(_), Some(key)) = (&self.transport, secret_key) {
            return Err(NodeError::Config(ConfigError::invalid(
                key,
                "gossip over a transport given by the program cannot be sealed: \
                 use UDP gossip with a cluster secret",
            )));
        }
        let admin_listener = match self.admin {
            true => Some(bind(config.admin_addr, NodeError::admin_bind).await?),
            false => None,
        };
        let admin_addr = match &admin_listener {
            Some(listener) => Some(
                listener
                    .local_addr()
                    .map_err(|source| NodeError::admin_bind(config.admin_addr, source))?,
            ),
            None => None,
        };
        let forward_listener = bind(config.forward_addr, NodeError::forward_bind).await?;
        let forward_addr = forward_listener
            .local_addr()
            .map_err(|source| NodeError::forward_bind(config.forward_addr, source))?;
        let membership = Membership::start(
            config,
            admin_addr,
            protection.keys.clone(),
            self.transport,
            self.generation,
        )
        .await?;
        let forwarder = Forwarder::new(
            config.forward.clone(),
            config.limits.clone(),
            protection,
            config.cluster_id.clone(),
            membership.clone(),
            forward_addr,
        );
        let deliver = (self.handler)(&forwarder, &membership);
        forwarder.listen(forward_listener, deliver.clone());

        let stop = Stop::new();
        let admin_stop = CancellationToken::new();
        let mut admin_tasks = Vec::new();
        if let Some(listener) = admin_listener {
            if let Some(warning) = admin::exposure(config.admin_addr, token.is_some()) {
                warn!(admin_addr = %config.admin_addr, "{warning}");
            }
            let state = admin::AdminState {
                membership: membership.clone(),
                forwarder: forwarder.clone(),
                ack_timeout: config.forward.ack_timeout_ms,
                prometheus: self.prometheus.clone(),
                stop: stop.clone(),
                token,
                hosts: Arc::new(admin::Hosts::new(
                    admin_addr.unwrap_or(config.admin_addr),
                    &config.admin_allowed_hosts,
                )),
            };
            let stopped = admin_stop.clone();
            let extra_routes = self.admin_routes.clone();
            admin_tasks.push(tokio::spawn(async move {
                let result = axum::serve(listener, admin::router(state, extra_routes))
                    .with_graceful_shutdown(stopped.cancelled_owned())
                    .await;
                if let Err(err) = result {
                    warn!(error = %err, "admin API stopped");
                }
            }));
        }
        if let Some(handle) = self.prometheus {
            let stopped = admin_stop.clone();
            admin_tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
                loop {
                    tokio::select! {
                        _ = stopped.cancelled() => break,
                        _ = tick.tick() => handle.run_upkeep(),
                    }
                }
            }));
        }
        let node_id = membership.node_id().clone();
        let span =
            tracing::info_span!("node", node = %node_id, generation = membership.generation());
        tokio::spawn(
            stop::carry_out(
                stop.clone(),
                Parts {
                    membership: membership.clone(),
                    forwarder: forwarder.clone(),
                    deliver,
                    admin_stop,
                    admin_tasks,
                    stop_timeout: config.stop_timeout_ms,
                },
            )
            .instrument(span),
        );
        info!(node = %node_id, admin_addr = ?admin_addr, %forward_addr, "node started");
        Ok(NodeHandle {
            membership,
            forwarder,
            admin_addr,
            stop,
        })
    }
}

async fn bind(
    addr: SocketAddr,
    error: fn(SocketAddr, std::io::Error) -> NodeError,
) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| error(addr, source))
}

/// A running node. It stops once, in one of three ways: [`NodeHandle::leave`] (graceful),
/// [`NodeHandle::abort`] (at once; also on drop), or on its own when membership fails; a
/// `POST /cluster/leave` to its admin API is a leave too. [`NodeHandle::stopped`] says when it
/// stopped and why.
pub struct NodeHandle {
    membership: Membership,
    forwarder: Forwarder,
    admin_addr: Option<SocketAddr>,
    stop: Arc<Stop>,
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

    /// The address the admin API is bound to; `None` without one
    /// ([`NodeBuilder::without_admin`]).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Resolves once the node has stopped, with why: for any of the ways it stops, a leave
    /// through the admin API and a failure included.
    pub async fn stopped(&self) -> Stopped {
        self.stop.outcome().await
    }

    /// Graceful leave: announces `leaving`, keeps gossiping `gossip.leave_rounds` rounds so
    /// that peers see it, then stops gossip, the forwarder, the handler (its drain) and the
    /// admin API. Returns how the node stopped: [`Stopped::Left`], or the way it had already
    /// begun to stop.
    pub async fn leave(&self) -> Stopped {
        self.stop.ask(Request::Leave);
        self.stopped().await
    }

    /// Stops at once without announcing anything: peers see the node `Down`; a leave under
    /// way is cut short. Returns how the node stopped: [`Stopped::Aborted`], or how it had
    /// stopped already.
    pub async fn abort(&self) -> Stopped {
        self.stop.ask(Request::Abort);
        self.stopped().await
    }
}

impl Drop for NodeHandle {
    /// A node dropped before it stopped stops at once, as [`NodeHandle::abort`] does, without
    /// waiting: gossip, on a thread of its own, is told at once (also when the runtime is going
    /// away); the rest follows on the runtime in the stop's order.
    fn drop(&mut self) {
        if self.stop.outcome.borrow().is_some() {
            return;
        }
        self.stop.ask(Request::Abort);
        self.membership.signal_stop();
    }
}
