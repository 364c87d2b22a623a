//! The invariants of a run, checked on the records the node program's test traffic leaves
//! (see [`super::traffic`]): every message started ended and none late, every acked message
//! delivered, none twice, in order.

use std::io;
use std::path::Path;

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
