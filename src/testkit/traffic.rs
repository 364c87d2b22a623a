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
//! - `deliveries.log`: `<from node> <from generation> <seq>`: a message delivered here.
//! - `outcomes.log`: `G <generation>` when a process starts sending, then `S <to node> <seq>`
//!   before a message is sent and `E <to node> <seq> <ok|error name> <milliseconds>` when its
//!   outcome is known. Sequence numbers count per sender generation and destination, so a
//!   restarted node starts again from 1 without looking like a duplicate.
//! - `events.log`: one JSON object per line, each membership event this node saw with the
//!   wall-clock time in milliseconds since the Unix epoch (`t_ms`), written by
//!   [`record_events`].
//!
//! Only complete lines count: a line that a kill cut short has no newline and is skipped
//! ([`super::records`] reads them).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::delivery::{Deliver, Delivery, NackReason, Verdict};
use crate::forward::{ForwardOptions, Forwarder};
use crate::membership::Membership;
use crate::peer_id::PeerId;
use crate::wamp::{Dict, Payload, Value, WampMessage};
use crate::NodeId;

/// One message in this many goes out by `broadcast_live`; the others by `forward`.
pub const BROADCAST_EVERY: u64 = 10;

/// The realm of test traffic.
pub const REALM: &str = "wamp_cluster.traffic";

/// The topic of test traffic.
pub const TOPIC: &str = "wamp_cluster.traffic";

/// A `Deliver` handler that appends every delivery of test traffic to `deliveries.log` before
/// it acks, and accepts every other message.
pub struct RecordingDeliver {
    file: Mutex<File>,
    /// Test-only: ack test messages without recording them, a broken delivery that the
    /// checker must catch.
    ack_without_delivery: bool,
}

impl RecordingDeliver {
    /// Opens (appending) `dir/deliveries.log`.
    pub fn open(dir: &Path) -> io::Result<RecordingDeliver> {
        Ok(RecordingDeliver {
            file: Mutex::new(append(&dir.join("deliveries.log"))?),
            ack_without_delivery: false,
        })
    }

    /// Test-only: ack every test message without recording it, as a broken node would ack a
    /// message it never delivered. [`super::records::check`] reports each one under
    /// `acked_not_delivered`.
    pub fn ack_without_delivery(mut self) -> RecordingDeliver {
        self.ack_without_delivery = true;
        self
    }
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn unsigned(value: &Value) -> Option<u64> {
    match value {
        Value::Integer(n) => u64::try_from(*n).ok(),
        Value::Unsigned(n) => Some(*n),
        _ => None,
    }
}

/// The sender's generation and this message's sequence number for node `me`, if it is test
/// traffic.
fn sequence_for(message: &WampMessage, me: &NodeId) -> Option<(u64, u64)> {
    let WampMessage::Publish {
        payload: Payload::ArgsKw(_, kwargs),
        ..
    } = message
    else {
        return None;
    };
    let generation = unsigned(kwargs.get("gen")?)?;
    match kwargs.get("seq")? {
        Value::Dict(seqs) => Some((generation, unsigned(seqs.get(me.as_str())?)?)),
        _ => None,
    }
}

impl Deliver for RecordingDeliver {
    fn deliver(&self, delivery: Delivery) -> Verdict {
        if let Some((generation, seq)) = sequence_for(&delivery.message, &delivery.to.node) {
            if self.ack_without_delivery {
                return Verdict::Accepted;
            }
            let line = format!("{} {generation} {seq}\n", delivery.from.node);
            let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(err) = file.write_all(line.as_bytes()) {
                // Without the record the delivery could not be checked: refuse it.
                warn!(error = %err, "cannot record a delivery");
                return Verdict::Refused(NackReason::Refused("cannot record the delivery".into()));
            }
        }
        Verdict::Accepted
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
/// `dir/outcomes.log` when `dir` is given. Messages are queued in sequence order; each then
/// waits for its outcome in a task of its own, so a slow node does not slow the rate.
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
    let generation = membership.generation();
    let from = PeerId::session(REALM, me.clone(), 1);
    if let Some(o) = &outcomes {
        o.line(format!("G {generation}\n"));
    }
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
        kwargs.insert("gen".into(), Value::Unsigned(generation));
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
        let call = async move {
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
        };
        // The first poll queues the message (or every message of the broadcast) on its links;
        // doing it here, in the loop, keeps each destination's messages in sequence order.
        // What is left, waiting for the outcome, goes on in a task of its own.
        let mut call = Box::pin(call);
        if futures_util::future::poll_immediate(&mut call)
            .await
            .is_none()
        {
            tasks.spawn(call);
        }
    }
    tasks.close();
    // Every call ends by its timeout: wait for them so every start has its end.
    tasks.wait().await;
    Ok(())
}

/// Appends every membership event this node sees to `dir/events.log` until `stop`: one JSON
/// object per line, the event's fields plus `t_ms`, the wall-clock time in milliseconds since
/// the Unix epoch. Events lost because this task fell behind are recorded as one
/// `{"kind":"lagged","missed":N}` line.
pub async fn record_events(
    membership: Membership,
    dir: &Path,
    stop: CancellationToken,
) -> io::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut file = append(&dir.join("events.log"))?;
    let mut events = membership.subscribe_events();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            event = events.recv() => event,
        };
        let t_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut line = match event {
            Ok(event) => {
                let mut value = serde_json::to_value(&event)?;
                value["t_ms"] = t_ms.into();
                value.to_string()
            }
            Err(RecvError::Lagged(missed)) => {
                serde_json::json!({ "kind": "lagged", "missed": missed, "t_ms": t_ms }).to_string()
            }
            Err(RecvError::Closed) => return Ok(()),
        };
        line.push('\n');
        file.write_all(line.as_bytes())?;
    }
}
