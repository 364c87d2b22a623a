//! How a router embeds wamp-cluster: start a node whose handler is a `Dispatcher` worker pool
//! (made once the node's forwarder exists, so that it could forward answers back), forward and
//! broadcast, watch bad-node reports and membership events, and stop in any of the ways a node
//! stops. Run two of them on one machine:
//!
//! ```text
//! cargo run --example embed -- router-1 7946
//! cargo run --example embed -- router-2 7956 127.0.0.1:7946
//! ```
//!
//! Arguments: node id, gossip port (the forward port is the next one), then seeds. Every five
//! seconds each router publishes an event to every other router. Ctrl-C (or SIGTERM) leaves
//! gracefully, and so does `POST /cluster/leave` to the admin API it prints; either way it
//! exits 0, and 1 if the node failed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::error::RecvError;
use wamp_cluster::wamp::{Dict, Payload, Value, WampMessage};
use wamp_cluster::{
    Config, Delivery, Dispatcher, ForwardOptions, NackReason, Node, PeerId, Stopped,
};

/// The realm this router serves.
const REALM: &str = "realm1";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(Stopped::Failed(err)) => {
            eprintln!("the node failed: {err}");
            ExitCode::FAILURE
        }
        Ok(stopped) => {
            println!("stopped: {stopped:?}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<Stopped> {
    tracing_subscriber::fmt()
        .with_env_filter("warn,wamp_cluster=info")
        .init();
    let mut args = std::env::args().skip(1);
    let node_id = args.next().unwrap_or_else(|| "router-1".into());
    let port: u16 = args
        .next()
        .unwrap_or_else(|| "7946".into())
        .parse()
        .context("the gossip port must be a number")?;
    let mut config = Config::new(node_id.clone());
    config.gossip_addr = ([127, 0, 0, 1], port).into();
    config.forward_addr = ([127, 0, 0, 1], port + 1).into();
    config.admin_addr = ([127, 0, 0, 1], 0).into();
    config.seeds = args.collect();

    // The router's side: messages from other nodes go to a worker pool, ordered per session.
    // A real router would look up the target session and write the message to it; here,
    // only the realm is served, and a message for another one is refused.
    let node = Node::builder(config, |_forwarder, _membership| {
        Dispatcher::new(4, 10_000, |delivery: Delivery| async move {
            if delivery.to.realm != REALM {
                return Err(NackReason::NoSuchSession);
            }
            println!("delivered from {}: {:?}", delivery.from, delivery.message);
            Ok(())
        })
    })
    .start()
    .await?;
    if let Some(admin) = node.admin_addr() {
        println!("admin API on http://{admin}");
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut events = node.membership().subscribe_events();
    let mut reports = node.forwarder().subscribe_reports();
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let me = PeerId::session(REALM, node_id.as_str(), 1);
    let mut publication = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(node.leave().await),
            _ = sigterm.recv() => return Ok(node.leave().await),
            // A leave through the admin API, or a failure: the node stopped by itself.
            stopped = node.stopped() => return Ok(stopped),
            event = events.recv() => match event {
                Ok(event) => println!("membership: {event:?}"),
                Err(RecvError::Lagged(n)) => println!("missed {n} membership events"),
                Err(RecvError::Closed) => return Ok(node.stopped().await),
            },
            Ok(report) = reports.recv() => println!("bad node: {} ({})", report.node, report.reason),
            _ = ticker.tick() => {
                // The hot path reads a lock-free snapshot: targets and ring owners.
                let view = node.membership().view();
                let owner = view.ring().owner("com.example.add");
                println!("targets {:?}; com.example.add is owned by {owner:?}", view.broadcast_targets());
                publication += 1;
                let event = WampMessage::Publish {
                    request: publication,
                    options: Dict::new(),
                    topic: "com.example.tick".into(),
                    payload: Payload::Args(vec![Value::Integer(publication as i64)]),
                };
                let result = node
                    .forwarder()
                    .broadcast_live(&me, &event, &ForwardOptions::default())
                    .await;
                println!("broadcast: good {:?}, bad {:?}", result.good, result.bad);
            }
        }
    }
}
