//! What the cluster secret and TLS cost: three pairs of nodes (plain, with a secret, with a
//! secret and mutual TLS) measured in turns, so that each meets the same moments of the
//! machine.

use serde_json::{json, Value};
use wamp_cluster::testkit::certs::Authority;
use wamp_cluster::{Config, Secret};

use crate::{cluster_with, latency, median, throughput, Tweak};

/// Throughput, p50 and p99 of each pair: `runs` turns of `count` messages and `samples` round
/// trips each.
pub async fn measure(runs: usize, count: u64, samples: usize, window: usize) -> Value {
    let ca = Authority::new();
    let secret = |config: &mut Config| {
        config.cluster_secret = Some(Secret::new("a-secret-for-the-bench-0123"));
    };
    let tls = |config: &mut Config| {
        secret(config);
        let name = config.node_id.clone();
        ca.configure(config, &name);
    };
    let kinds: [(&str, &Tweak<'_>); 3] = [
        ("plain", &|_| {}),
        ("secret", &secret),
        ("secret_and_tls", &tls),
    ];
    let mut pairs = Vec::new();
    for (name, tweak) in kinds {
        let nodes = cluster_with(2, &[], &[], tweak).await;
        throughput::forward(&nodes[0], 20_000, 128, window).await;
        pairs.push((name, nodes, Vec::new(), Vec::new(), Vec::new()));
    }
    for _ in 0..runs {
        for (_, nodes, rates, p50, p99) in &mut pairs {
            rates.push(throughput::forward(&nodes[0], count, 128, window).await);
            let [a, b, _] = latency::percentiles(latency::forward(&nodes[0], samples).await);
            p50.push(a);
            p99.push(b);
        }
    }
    let mut protection = serde_json::Map::new();
    for (name, nodes, rates, p50, p99) in pairs {
        for node in nodes {
            node.abort().await;
        }
        protection.insert(
            name.into(),
            json!({
                "forward_msgs_per_sec": median(rates),
                "p50_us": median(p50),
                "p99_us": median(p99),
            }),
        );
    }
    Value::Object(protection)
}
