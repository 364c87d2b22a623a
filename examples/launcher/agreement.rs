//! Agreement after the chaos: every running node shows the same live members, with the
//! generations the launcher knows they run.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::status::get_json;
use crate::{generation_of, Launcher, Slot};

/// The members a node's `/cluster/members` shows live: `(node id, generation)`.
fn live_members(members: &Value) -> Vec<(String, String)> {
    let mut live: Vec<(String, String)> = members["members"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|m| m["live"] == true)
                .map(|m| {
                    (
                        m["node_id"].as_str().unwrap_or("").to_owned(),
                        m["generation"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    live.sort();
    live
}

impl Launcher {
    /// Waits until every running node shows the same live members as the launcher knows are
    /// running (with their current generations). Returns how long it took, or `None` after
    /// `bound`.
    pub(crate) async fn agreement(
        &mut self,
        client: &reqwest::Client,
        bound: Duration,
    ) -> Option<u64> {
        let begin = Instant::now();
        loop {
            self.reap();
            let running: Vec<&Slot> = self.slots.iter().filter(|s| s.running()).collect();
            let mut expected: Vec<(String, String)> = running
                .iter()
                .map(|s| {
                    let generation = s.runs.last().and_then(generation_of);
                    (
                        s.name.clone(),
                        generation.map(|g| g.to_string()).unwrap_or_default(),
                    )
                })
                .collect();
            expected.sort();
            let views = futures_util::future::join_all(running.iter().filter_map(|s| {
                let admin = s.runs.last()?.admin;
                Some(async move { get_json(client, admin, "/cluster/members").await })
            }))
            .await;
            let agreed = !expected.is_empty()
                && views
                    .iter()
                    .all(|v| v.as_ref().is_some_and(|v| live_members(v) == expected));
            if agreed {
                return Some(begin.elapsed().as_millis() as u64);
            }
            if begin.elapsed() > bound {
                for (slot, view) in running.iter().zip(&views) {
                    println!("  {} sees {:?}", slot.name, view.as_ref().map(live_members));
                }
                println!("  expected {expected:?}");
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
