//! How a router embeds wamp-cluster: start a node with a `Deliver` handler (here the
//! `Dispatcher` worker pool), forward and broadcast, watch bad-node reports and membership
//! events, shut down. Run two of them on one machine:
//!
//! ```text
//! cargo run --example embed -- router-1 7946
//! cargo run --example embed -- router-2 7956 127.0.0.1:7946
//! ```
//!
//! Arguments: node id, gossip port (the forward port is the next one), then seeds. Every five
//! seconds each router publishes an event to every other router. Ctrl-C leaves gracefully.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::broadcast::error::RecvError;
use wamp_cluster::wamp::{Dict, Payload, Value, WampMessage};
use wamp_cluster::{Config, Delivery, Dispatcher, ForwardOptions, Node, PeerId};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    // A real router would look up the target session here and write the message to it.
    let dispatcher = Dispatcher::new(4, 10_000, |delivery: Delivery| async move {
        println!("delivered from {}: {:?}", delivery.from, delivery.message);
    });
    let node = Node::builder(config)
        .deliver(Arc::new(dispatcher))
        .start()
        .await?;
    println!("admin API on http://{}", node.admin_addr());

    let mut events = node.membership().subscribe_events();
    let mut reports = node.forwarder().subscribe_reports();
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let me = PeerId::session("realm1", node_id.as_str(), 1);
    let mut publication = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => match event {
                Ok(event) => println!("membership: {event:?}"),
                Err(RecvError::Lagged(n)) => println!("missed {n} membership events"),
                Err(RecvError::Closed) => break,
            },
            Ok(report) = reports.recv() => println!("bad node: {} ({})", report.node, report.reason),
            _ = ticker.tick() => {
                // The hot path reads a lock-free snapshot: targets and ring owners.
                let view = node.view();
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
            err = node.failed() => return Err(err.into()),
        }
    }
    node.leave().await?;
    Ok(())
}
