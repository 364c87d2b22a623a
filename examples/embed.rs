//! How a router embeds wamp-cluster: start a node, follow membership, ask the ring who owns a
//! key. Run two of them on one machine:
//!
//! ```text
//! cargo run --example embed -- router-1 7946
//! cargo run --example embed -- router-2 7956 127.0.0.1:7946
//! ```
//!
//! Arguments: node id, gossip port (the forward port is the next one), then seeds. Ctrl-C
//! leaves gracefully.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::broadcast::error::RecvError;
use wamp_cluster::{Config, Node};

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
    let mut config = Config::new(node_id);
    config.gossip_addr = ([127, 0, 0, 1], port).into();
    config.forward_addr = ([127, 0, 0, 1], port + 1).into();
    config.admin_addr = ([127, 0, 0, 1], 0).into();
    config.seeds = args.collect();

    let node = Node::builder(config).start().await?;
    println!("admin API on http://{}", node.admin_addr());
    let mut events = node.membership().subscribe_events();
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.recv() => match event {
                Ok(event) => println!("event: {event:?}"),
                Err(RecvError::Lagged(n)) => println!("missed {n} events"),
                Err(RecvError::Closed) => break,
            },
            _ = ticker.tick() => {
                // The hot path: a lock-free snapshot read, then pure lookups.
                let view = node.view();
                let owner = view.ring().owner("com.example.add");
                println!(
                    "targets {:?}; com.example.add is owned by {owner:?}",
                    view.broadcast_targets()
                );
            }
            err = node.failed() => return Err(err.into()),
        }
    }
    node.leave().await?;
    Ok(())
}
