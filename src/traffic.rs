//! Test traffic for a running cluster, and a record of it that survives `kill -9`.
//!
//! [`run_traffic`] sends PUBLISH messages to the other live nodes at a given rate, by `forward`
//! (one node at a time, round robin) and every [`BROADCAST_EVERY`]th message by
//! `broadcast_live`. Each message carries, in `ArgumentsKw`, the sequence number of this sender
//! for each destination (`{"seq": {"node-2": 17}}`), so a receiver can check that it got every
//! message once and in order. [`RecordingDeliver`] is the matching handler: it appends each
//! delivery to a file *before* it acks, with one `write` each, so the record survives the
//! process being killed.
//!
//! Record lines (text, space-separated):
//! - `deliveries.log`: `<from node> <seq>`: a message delivered here.
//! - `outcomes.log`: `S <to node> <seq>` before a message is sent, then
//!   `E <to node> <seq> <ok|error name> <milliseconds>` when its outcome is known.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::forward::{Deliver, Delivery, DeliveryLog, ForwardOptions, Forwarder, Verdict};
use crate::membership::Membership;
use crate::peer_id::PeerId;
use crate::wamp::{Dict, Payload, Value, WampMessage};
use crate::wire::NackReason;
use crate::NodeId;

/// One message in this many goes out by `broadcast_live`; the others by `forward`.
pub const BROADCAST_EVERY: u64 = 10;

/// The realm of test traffic.
pub const REALM: &str = "wamp_cluster.traffic";

/// The topic of test traffic.
pub const TOPIC: &str = "wamp_cluster.traffic";

/// A `Deliver` handler that appends every delivery to `deliveries.log` before it acks, and
/// counts deliveries like [`DeliveryLog`].
pub struct RecordingDeliver {
    file: Mutex<File>,
    /// The counters shown in `/stats`.
    pub log: Arc<DeliveryLog>,
}

impl RecordingDeliver {
    /// Opens (appending) `dir/deliveries.log`.
    pub fn open(dir: &Path) -> io::Result<RecordingDeliver> {
        Ok(RecordingDeliver {
            file: Mutex::new(append(&dir.join("deliveries.log"))?),
            log: Arc::new(DeliveryLog::default()),
        })
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The sequence number of this message for node `me`, if it is test traffic.
pub fn sequence_for(message: &WampMessage, me: &NodeId) -> Option<u64> {
    let WampMessage::Publish {
        payload: Payload::ArgsKw(_, kwargs),
        ..
    } = message
    else {
        return None;
    };
    match kwargs.get("seq")? {
        Value::Dict(seqs) => match seqs.get(me.as_str())? {
            Value::Integer(n) => u64::try_from(*n).ok(),
            Value::Unsigned(n) => Some(*n),
            _ => None,
        },
        _ => None,
    }
}

impl Deliver for RecordingDeliver {
    fn deliver(&self, delivery: Delivery) -> Verdict {
        if let Some(seq) = sequence_for(&delivery.message, &delivery.to.node) {
            let line = format!("{} {seq}\n", delivery.from.node);
            let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(err) = file.write_all(line.as_bytes()) {
                // Without the record the delivery could not be checked: refuse it.
                warn!(error = %err, "cannot record a delivery");
                return Verdict::Refused(NackReason::Refused("cannot record the delivery".into()));
            }
        }
        self.log.deliver(delivery)
    }
}

/// Appends lines to `outcomes.log`, one `write` each.
struct Outcomes(Mutex<File>);

impl Outcomes {
    fn line(&self, line: String) {
        let mut file = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = file.write_all(line.as_bytes()) {
            warn!(error = %err, "cannot record an outcome");
        }
    }
}

/// Sends test traffic at `rate` messages per second until `stop`, recording outcomes in
/// `dir/outcomes.log` when `dir` is given. Each message waits for its outcome in a task of its
/// own, so a slow node does not slow the rate.
pub async fn run_traffic(
    forwarder: Forwarder,
    membership: Membership,
    rate: f64,
    dir: Option<&Path>,
    stop: CancellationToken,
) -> io::Result<()> {
    let outcomes = match dir {
        Some(dir) => Some(Arc::new(Outcomes(Mutex::new(append(
            &dir.join("outcomes.log"),
        )?)))),
        None => None,
    };
    let me = membership.node_id().clone();
    let from = PeerId::session(REALM, me.clone(), 1);
    let mut next_seq: HashMap<NodeId, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: u64 = 0;
    let mut turn = 0usize;
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let targets = membership.view().broadcast_targets().to_vec();
        if targets.is_empty() {
            continue;
        }
        sent += 1;
        let broadcast = sent % BROADCAST_EVERY == 0;
        let destinations: Vec<NodeId> = if broadcast {
            targets.clone()
        } else {
            turn = (turn + 1) % targets.len();
            vec![targets[turn].clone()]
        };
        let mut seqs = Dict::new();
        for node in &destinations {
            let seq = next_seq.entry(node.clone()).or_insert(0);
            *seq += 1;
            seqs.insert(node.to_string(), Value::Unsigned(*seq));
            if let Some(o) = &outcomes {
                o.line(format!("S {node} {seq}\n"));
            }
        }
        let mut kwargs = Dict::new();
        kwargs.insert("seq".into(), Value::Dict(seqs.clone()));
        let message = WampMessage::Publish {
            request: sent,
            options: Dict::new(),
            topic: TOPIC.into(),
            payload: Payload::ArgsKw(vec![], kwargs),
        };
        let forwarder = forwarder.clone();
        let from = from.clone();
        let outcomes = outcomes.clone();
        tasks.spawn(async move {
            let start = Instant::now();
            let options = ForwardOptions::default();
            let results: Vec<(NodeId, Result<(), crate::ForwardError>)> = if broadcast {
                let result = forwarder
                    .broadcast(&from, &destinations, &message, &options)
                    .await;
                result
                    .good
                    .into_iter()
                    .map(|n| (n, Ok(())))
                    .chain(result.bad.into_iter().map(|(n, e)| (n, Err(e))))
                    .collect()
            } else {
                let node = destinations[0].clone();
                let to = PeerId::node(REALM, node.clone());
                vec![(node, forwarder.forward(from, to, message, &options).await)]
            };
            let ms = start.elapsed().as_millis();
            if let Some(o) = &outcomes {
                for (node, result) in results {
                    let seq = match seqs.get(node.as_str()) {
                        Some(Value::Unsigned(seq)) => *seq,
                        _ => continue,
                    };
                    let name = result.err().map_or("ok", |e| e.name());
                    o.line(format!("E {node} {seq} {name} {ms}\n"));
                }
            }
        });
    }
    tasks.close();
    // Every call ends by its timeout: wait for them so every start has its end.
    tasks.wait().await;
    Ok(())
}
