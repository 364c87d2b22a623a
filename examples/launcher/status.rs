//! The live status table: every running node's admin API polled once a second, its
//! forwards per second and totals, and a sample of the cluster's traffic for the timeline.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::Value;

use crate::{generation_of, report, Launcher, Sample, State};

pub(crate) async fn get_json(
    client: &reqwest::Client,
    admin: SocketAddr,
    path: &str,
) -> Option<Value> {
    let response = client
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// What one node's admin API says.
#[derive(Default)]
struct Polled {
    /// `/cluster/members`, if it answered.
    members: Option<Value>,
    acked: u64,
    failed: u64,
}

async fn poll(client: &reqwest::Client, admin: SocketAddr) -> Polled {
    let (members, stats) = tokio::join!(
        get_json(client, admin, "/cluster/members"),
        get_json(client, admin, "/stats")
    );
    let (mut acked, mut failed) = (0, 0);
    if let Some(peers) = stats.as_ref().and_then(|s| s["peers"].as_object()) {
        for peer in peers.values() {
            acked += peer["acked"].as_u64().unwrap_or(0);
            if let Some(f) = peer["failed"].as_object() {
                failed += f.values().filter_map(Value::as_u64).sum::<u64>();
            }
        }
    }
    Polled {
        members,
        acked,
        failed,
    }
}

impl Launcher {
    /// Polls every running node that is not paused; prints the status table and samples the
    /// traffic.
    pub(crate) async fn status(&mut self, client: &reqwest::Client, plain: bool, first: bool) {
        let targets: Vec<(usize, SocketAddr)> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running() && s.state != State::Paused)
            .filter_map(|(i, s)| s.runs.last().map(|r| (i, r.admin)))
            .collect();
        let polled = futures_util::future::join_all(
            targets
                .iter()
                .map(|&(i, admin)| async move { (i, poll(client, admin).await) }),
        )
        .await;
        let polled: BTreeMap<usize, Polled> = polled.into_iter().collect();
        let (mut acked_delta, mut failed_delta) = (0, 0);
        let mut lines = vec![format!(
            "{:<9} {:<12} {:>6} {:>7} {:>9} {:>7} {:>7} {:>10}",
            "node", "status", "gen", "fwd/s", "acked", "failed", "reports", "detected"
        )];
        let detected = report::last_detections(self);
        for (i, slot) in self.slots.iter().enumerate() {
            let run_index = slot.runs.len().saturating_sub(1);
            let p = polled.get(&i);
            let (acked, failed) = p.map_or((0, 0), |p| (p.acked, p.failed));
            let before = self.counted.get(&(i, run_index)).copied().unwrap_or((0, 0));
            let rate = acked.saturating_sub(before.0);
            if p.is_some() {
                acked_delta += rate;
                failed_delta += failed.saturating_sub(before.1);
                self.counted.insert((i, run_index), (acked, failed));
            }
            let status = match (slot.state, p) {
                (State::Up, Some(p)) => p
                    .members
                    .as_ref()
                    .and_then(|m| {
                        m["members"]
                            .as_array()?
                            .iter()
                            .find(|x| x["node_id"] == slot.name.as_str())?["status"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "no answer".into()),
                (state, _) => format!("{state:?}").to_lowercase(),
            };
            let run = slot.runs.last();
            let generation = run
                .and_then(generation_of)
                .map(|g| format!("{:06}", g % 1_000_000))
                .unwrap_or_else(|| "-".into());
            let reports = run.map_or(0, report::reports);
            let detected = detected
                .get(&slot.name)
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into());
            lines.push(format!(
                "{:<9} {:<12} {:>6} {:>7} {:>9} {:>7} {:>7} {:>10}",
                slot.name,
                status,
                generation,
                if p.is_some() {
                    rate.to_string()
                } else {
                    "-".into()
                },
                acked,
                failed,
                reports,
                detected
            ));
        }
        self.samples.push(Sample {
            t_s: self.start.elapsed().as_secs_f64(),
            acked_per_s: acked_delta,
            failed_per_s: failed_delta,
        });
        if plain {
            for line in &lines {
                println!("{line}");
            }
        } else {
            if !first {
                // Move the cursor up over the previous table to redraw it in place.
                print!("\x1b[{}A", lines.len());
            }
            for line in &lines {
                println!("{line}\x1b[K");
            }
        }
    }
}
