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
//! Only complete lines count: a line that a kill cut short has no newline and is skipped.

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
use crate::forward::{DeliveryLog, ForwardOptions, Forwarder};
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

/// A `Deliver` handler that appends every delivery to `deliveries.log` before it acks, and
/// counts deliveries like [`DeliveryLog`].
pub struct RecordingDeliver {
    file: Mutex<File>,
    /// The counters shown in `/stats`.
    pub log: Arc<DeliveryLog>,
    /// Test-only: ack test messages without recording them, a broken delivery that the
    /// checker must catch.
    ack_without_delivery: bool,
}

impl RecordingDeliver {
    /// Opens (appending) `dir/deliveries.log`.
    pub fn open(dir: &Path) -> io::Result<RecordingDeliver> {
        Ok(RecordingDeliver {
            file: Mutex::new(append(&dir.join("deliveries.log"))?),
            log: Arc::new(DeliveryLog::default()),
            ack_without_delivery: false,
        })
    }

    /// Test-only: ack every test message without recording it, as a broken node would ack a
    /// message it never delivered. [`check`] reports each one under `acked_not_delivered`.
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
pub fn sequence_for(message: &WampMessage, me: &NodeId) -> Option<(u64, u64)> {
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

/// One process start of a node, as [`check`] reads it.
#[derive(Debug, Clone)]
pub struct Run {
    /// The node's id.
    pub node: String,
    /// Its record directory (`--record-dir`) for this process start.
    pub dir: std::path::PathBuf,
    /// The process was killed (`kill -9`): messages it started and never saw end are counted
    /// under `cut_by_kill`, not as unended.
    pub killed: bool,
    /// The process was paused (SIGSTOP) at some time: its outcomes may come late by the length
    /// of the pause and are not checked against the timeout.
    pub paused: bool,
}

impl Run {
    /// A run that was neither killed nor paused.
    pub fn clean(node: impl Into<String>, dir: impl Into<std::path::PathBuf>) -> Run {
        Run {
            node: node.into(),
            dir: dir.into(),
            killed: false,
            paused: false,
        }
    }
}

/// How long past its timeout an outcome may come before it counts as late: the time for the
/// timer to fire and the line to be written on a busy machine.
pub const LATE_GRACE_MS: u64 = 2000;

/// What the records of a run show: the first three invariants of a chaos run.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Checked {
    /// Messages started (`S` lines), over all senders.
    pub started: usize,
    /// Messages acked.
    pub acked: usize,
    /// Messages that failed, by error name.
    pub failed: std::collections::BTreeMap<String, usize>,
    /// Started messages without an outcome: `(from, to, seq)`.
    pub unended: Vec<(String, String, u64)>,
    /// Started messages whose sender was killed before their outcome was known.
    pub cut_by_kill: usize,
    /// Outcomes known later than the timeout plus [`LATE_GRACE_MS`], from a sender that was
    /// never paused: `(from, to, seq, milliseconds)`.
    pub late: Vec<(String, String, u64, u64)>,
    /// Acked messages missing from the receiver's delivery log: `(from, to, seq)`.
    pub acked_not_delivered: Vec<(String, String, u64)>,
    /// Messages delivered more than once: `(from@generation, to, seq)`.
    pub duplicates: Vec<(String, String, u64)>,
    /// Deliveries whose sequence number was lower than one delivered before from the same
    /// sender generation: `(from@generation, to, seq)`.
    pub out_of_order: Vec<(String, String, u64)>,
}

impl Checked {
    /// Whether every invariant holds.
    pub fn ok(&self) -> bool {
        self.unended.is_empty()
            && self.late.is_empty()
            && self.acked_not_delivered.is_empty()
            && self.duplicates.is_empty()
            && self.out_of_order.is_empty()
    }
}

/// The complete lines of `dir/file` (each ended by a newline: a line a kill cut short is not
/// one). A missing file reads as empty (a node that never sent or never received).
pub fn complete_lines(dir: &Path, file: &str) -> io::Result<Vec<String>> {
    let text = match std::fs::read_to_string(dir.join(file)) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err),
    };
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    // The piece after the last newline: empty, or a line cut short.
    lines.pop();
    Ok(lines)
}

/// Checks the records of a run: every process start of every node, each node's starts in the
/// order they happened. `timeout_ms` is the senders' forward timeout.
pub fn check(runs: &[Run], timeout_ms: u64) -> io::Result<Checked> {
    use std::collections::{BTreeMap, HashSet};
    let mut checked = Checked::default();
    // ("from@generation", to) -> delivered sequence numbers, in delivery order.
    let mut delivered: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for run in runs {
        for line in complete_lines(&run.dir, "deliveries.log")? {
            let fields: Vec<&str> = line.split(' ').collect();
            if let [from, generation, seq] = fields[..] {
                if let (Ok(_), Ok(seq)) = (generation.parse::<u64>(), seq.parse()) {
                    delivered
                        .entry((format!("{from}@{generation}"), run.node.clone()))
                        .or_default()
                        .push(seq);
                }
            }
        }
    }
    let mut delivered_sets: BTreeMap<(String, String), HashSet<u64>> = BTreeMap::new();
    for ((from, to), seqs) in &delivered {
        let mut seen = HashSet::new();
        let mut highest = 0;
        for &seq in seqs {
            if !seen.insert(seq) {
                checked.duplicates.push((from.clone(), to.clone(), seq));
            } else if seq < highest {
                checked.out_of_order.push((from.clone(), to.clone(), seq));
            }
            highest = highest.max(seq);
        }
        delivered_sets.insert((from.clone(), to.clone()), seen);
    }
    for run in runs {
        let node = &run.node;
        let mut open: std::collections::HashSet<(String, u64)> = HashSet::new();
        let mut sender = node.clone();
        for line in complete_lines(&run.dir, "outcomes.log")? {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                ["G", generation] => sender = format!("{node}@{generation}"),
                ["S", to, seq] => {
                    if let Ok(seq) = seq.parse() {
                        checked.started += 1;
                        open.insert((to.to_owned(), seq));
                    }
                }
                ["E", to, seq, result, ms] => {
                    let (Ok(seq), Ok(ms)) = (seq.parse(), ms.parse::<u64>()) else {
                        continue;
                    };
                    open.remove(&(to.to_owned(), seq));
                    if !run.paused && ms > timeout_ms + LATE_GRACE_MS {
                        checked.late.push((node.clone(), to.to_owned(), seq, ms));
                    }
                    if result == "ok" {
                        checked.acked += 1;
                        let key = (sender.clone(), to.to_owned());
                        if !delivered_sets.get(&key).is_some_and(|s| s.contains(&seq)) {
                            checked
                                .acked_not_delivered
                                .push((node.clone(), to.to_owned(), seq));
                        }
                    } else {
                        *checked.failed.entry(result.to_owned()).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
        if run.killed {
            checked.cut_by_kill += open.len();
            continue;
        }
        let mut unended: Vec<_> = open.into_iter().collect();
        unended.sort();
        checked
            .unended
            .extend(unended.into_iter().map(|(to, seq)| (node.clone(), to, seq)));
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, node: &str, deliveries: &str, outcomes: &str) -> std::path::PathBuf {
        let d = dir.join(node);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("deliveries.log"), deliveries).unwrap();
        std::fs::write(d.join("outcomes.log"), outcomes).unwrap();
        d
    }

    #[test]
    fn a_clean_run_passes_and_each_broken_invariant_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a",
            "",
            "G 7\nS b 1\nE b 1 ok 3\nS b 2\nE b 2 timeout 5000\n",
        );
        let b = write(dir.path(), "b", "a 7 1\n", "");
        let mut nodes = vec![Run::clean("a", &a), Run::clean("b", &b)];
        let clean = check(&nodes, 5000).unwrap();
        assert!(clean.ok(), "{clean:?}");
        assert_eq!(
            (clean.started, clean.acked, clean.failed["timeout"]),
            (2, 1, 1)
        );

        // An ack without a delivery, a start without an end, a duplicate, a reordering, an
        // outcome past the timeout; a line cut short by a kill is no line.
        std::fs::write(
            a.join("outcomes.log"),
            "G 7\nS b 1\nE b 1 ok 3\nS b 2\nE b 2 ok 1\nS b 3\nS b 4\nE b 4 timeout 9000\nE b 3 ok",
        )
        .unwrap();
        // A restarted sender (generation 8) counting from 1 again is no duplicate.
        std::fs::write(
            b.join("deliveries.log"),
            "a 7 1\na 7 4\na 7 3\na 7 3\na 8 1\na 8 2\nb 1 cut",
        )
        .unwrap();
        let broken = check(&nodes, 5000).unwrap();
        assert!(!broken.ok());
        assert_eq!(broken.acked_not_delivered, [("a".into(), "b".into(), 2)]);
        assert_eq!(broken.unended, [("a".into(), "b".into(), 3)]);
        assert_eq!(broken.late, [("a".into(), "b".into(), 4, 9000)]);
        assert_eq!(broken.duplicates, [("a@7".into(), "b".into(), 3)]);
        assert_eq!(broken.out_of_order, [("a@7".into(), "b".into(), 3)]);

        // A killed sender's open starts were cut by the kill; a paused one may be late.
        nodes[0].killed = true;
        nodes[0].paused = true;
        let excused = check(&nodes, 5000).unwrap();
        assert_eq!((excused.cut_by_kill, excused.unended.len()), (1, 0));
        assert!(excused.late.is_empty());
    }
}
