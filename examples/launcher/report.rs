//! The end of a run: the six invariants checked on the records, a human summary
//! (`report.txt`, also printed), `report.json` and an SVG timeline (`timeline.svg`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;
use serde::Serialize;
use serde_json::{json, Value};
use wamp_cluster::testkit::chart::{self, Line, Lines};
use wamp_cluster::testkit::records::{self, complete_lines};

use crate::chaos::{Fault, Planned};
use crate::{Applied, Launcher, Run, State};

/// How a fault reads in the schedule and the report.
pub fn describe(fault: &Fault) -> String {
    let nodes = |n: &[usize]| {
        n.iter()
            .map(|n| format!("node-{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match fault {
        Fault::Crash { node } => format!("kill -9 node-{node}"),
        Fault::Pause { node, ms } => format!("pause node-{node} for {:.1} s", *ms as f64 / 1e3),
        Fault::Restart {
            node,
            clock_back_ms: 0,
        } => format!("restart node-{node} (kill -9, start at once)"),
        Fault::Restart {
            node,
            clock_back_ms,
        } => format!(
            "restart node-{node} (kill -9, start at once, its clock {:.1} h behind)",
            *clock_back_ms as f64 / 3.6e6
        ),
        Fault::Leave { node } => format!("node-{node} leaves"),
        Fault::Start { node } => format!("start node-{node} again"),
        Fault::Join { node } => format!("new node-{node} joins"),
        Fault::Partition { side, one_way, ms } => format!(
            "partition {} from the others ({}) for {:.1} s",
            nodes(side),
            if *one_way {
                "one way: they hear nothing"
            } else {
                "both ways"
            },
            *ms as f64 / 1e3
        ),
        Fault::Loss { node, percent, ms } => format!(
            "node-{node} loses {percent}% of inbound packets for {:.1} s",
            *ms as f64 / 1e3
        ),
        Fault::Delay { node, delay_ms, ms } => format!(
            "node-{node} sends with {delay_ms} ms delay for {:.1} s",
            *ms as f64 / 1e3
        ),
    }
}

/// Bad-node reports a process made: the `unreachable` events it recorded.
pub fn reports(run: &Run) -> usize {
    complete_lines(&run.dir, "events.log")
        .map(|lines| {
            lines
                .iter()
                .filter(|l| l.contains("\"kind\":\"unreachable\""))
                .count()
        })
        .unwrap_or(0)
}

/// The state of `slot` at `t_ms`, from the transitions.
fn state_at(launcher: &Launcher, slot: usize, t_ms: u64) -> Option<State> {
    launcher
        .transitions
        .iter()
        .rev()
        .find(|(t, s, _)| *s == slot && *t <= t_ms)
        .map(|(_, _, state)| *state)
}

/// Whether `slot` was up, not paused and not cut off, all through `from..=to`.
fn healthy(launcher: &Launcher, slot: usize, from: u64, to: u64) -> bool {
    state_at(launcher, slot, from) == Some(State::Up)
        && !launcher
            .transitions
            .iter()
            .any(|(t, s, _)| *s == slot && *t > from && *t <= to)
}

/// When (milliseconds after the launcher's start) the process `run` first saw the generation
/// `generation` of `victim` gone: down, unreachable, left, or replaced by a restart; at or
/// after `since`.
fn first_seen(
    launcher: &Launcher,
    run: &Run,
    victim: &str,
    generation: u64,
    since: u64,
) -> Option<u64> {
    let lines = complete_lines(&run.dir, "events.log").ok()?;
    lines.iter().find_map(|line| {
        let event: Value = serde_json::from_str(line).ok()?;
        if event["node"] != victim {
            return None;
        }
        let gone = match event["kind"].as_str()? {
            "down" | "unreachable" | "left" => event["generation"] == generation,
            "restarted" => event["old_generation"] == generation,
            _ => false,
        };
        let t = event["t_ms"]
            .as_u64()?
            .checked_sub(launcher.start_unix_ms)?;
        (gone && t >= since).then_some(t)
    })
}

/// Whether the process `run` recorded that it lost events between `from` and `to`.
fn lagged(launcher: &Launcher, run: &Run, from: u64, to: u64) -> bool {
    let lines = complete_lines(&run.dir, "events.log").unwrap_or_default();
    lines.iter().any(|line| {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            return false;
        };
        let t = event["t_ms"]
            .as_u64()
            .and_then(|t| t.checked_sub(launcher.start_unix_ms));
        event["kind"] == "lagged" && t.is_some_and(|t| t >= from && t <= to)
    })
}

/// One observer's view of one crash or pause.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub fault_at_ms: u64,
    /// `kill` (a crash or a restart) or `pause`.
    pub fault: &'static str,
    pub victim: String,
    pub observer: String,
    /// Milliseconds from the fault until the observer saw it; `None`: never seen.
    pub after_ms: Option<u64>,
}

/// A node must be up this long before a fault to count as an observer: time to have joined.
const OBSERVER_SETTLE_MS: u64 = 2000;

/// The node a crash, restart or pause that was applied hit, and the pause's length.
fn victim(applied: &Applied) -> Option<(usize, Option<u64>)> {
    match &applied.fault {
        _ if applied.skipped.is_some() => None,
        Fault::Crash { node } | Fault::Restart { node, .. } => Some((*node - 1, None)),
        Fault::Pause { node, ms } => Some((*node - 1, Some(*ms))),
        _ => None,
    }
}

/// Every crash, restart and pause of at least `bound_ms` (or, with `all`, every pause), as each
/// healthy observer saw it; with `latest`, only the latest such fault of each node.
fn detections(launcher: &Launcher, bound_ms: u64, all: bool, latest: bool) -> Vec<Detection> {
    let mut found = Vec::new();
    for (k, applied) in launcher.applied.iter().enumerate() {
        let Some((victim, pause)) = victim(applied) else {
            continue;
        };
        let at = applied.at_ms;
        // A pause lasts until the node's next change of state (its SIGCONT, or a later fault),
        // which may come before or after the planned length.
        let window = match pause {
            None => bound_ms,
            Some(_) => launcher
                .transitions
                .iter()
                .find(|(t, s, _)| *s == victim && *t > at)
                .map_or(u64::MAX, |(t, _, _)| t - at),
        };
        if pause.is_some() && !all && window < bound_ms {
            continue;
        }
        if latest
            && launcher.applied[k + 1..]
                .iter()
                .any(|later| self::victim(later).is_some_and(|(n, _)| n == victim))
        {
            continue;
        }
        let Some(Some(generation)) = applied.generations.first().copied() else {
            continue;
        };
        for (i, slot) in launcher.slots.iter().enumerate() {
            if i == victim || !healthy(launcher, i, at.saturating_sub(OBSERVER_SETTLE_MS), at) {
                continue;
            }
            let Some(run) = slot.runs.iter().rev().find(|r| r.started_ms <= at) else {
                continue;
            };
            // The observer counts while it stays healthy: what it saw until then is a
            // sighting; if it stayed healthy all through the window and saw nothing, a miss.
            let healthy_until = launcher
                .transitions
                .iter()
                .find(|(t, s, _)| *s == i && *t > at)
                .map_or(u64::MAX, |(t, _, _)| *t);
            let seen = first_seen(launcher, run, &launcher.slots[victim].name, generation, at)
                .filter(|&t| t <= healthy_until && t - at <= window);
            let after_ms = seen.map(|t| t - at);
            // Not asked: it stopped being healthy before the window ended, or it lost events
            // in the window (its record says so), so its silence proves nothing.
            let end = at.saturating_add(window);
            if after_ms.is_none() && (healthy_until < end || lagged(launcher, run, at, end)) {
                continue;
            }
            found.push(Detection {
                fault_at_ms: at,
                fault: if matches!(applied.fault, Fault::Pause { .. }) {
                    "pause"
                } else {
                    "kill"
                },
                victim: launcher.slots[victim].name.clone(),
                observer: slot.name.clone(),
                after_ms,
            });
        }
    }
    found
}

/// For the status table, per node: the longest time any healthy node took to see its latest
/// crash, restart or pause (no bound), once at least one saw it.
pub fn last_detections(launcher: &Launcher) -> BTreeMap<String, u64> {
    let mut longest = BTreeMap::new();
    for d in detections(launcher, u64::MAX, true, true) {
        if let Some(ms) = d.after_ms {
            let entry = longest.entry(d.victim).or_insert(ms);
            *entry = (*entry).max(ms);
        }
    }
    longest
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[rank])
}

/// What the run's end needs to write its report.
pub struct Inputs<'a> {
    pub launcher: &'a Launcher,
    pub seed: Option<u64>,
    pub chaos_end_ms: u64,
    pub schedule: &'a [Planned],
    pub detection_bound_ms: u64,
    pub agreement_bound_ms: u64,
    pub agreement_ms: Option<u64>,
    pub netns_requested: bool,
    pub netns_note: Option<String>,
    pub forward_timeout_ms: u64,
}

struct Invariant {
    name: &'static str,
    ok: bool,
    detail: String,
}

impl Inputs<'_> {
    /// Checks the invariants, prints the summary, writes the report files; true when every
    /// invariant holds.
    pub fn write(self) -> anyhow::Result<bool> {
        let l = self.launcher;
        let runs: Vec<records::Run> = l
            .slots
            .iter()
            .flat_map(|s| {
                s.runs.iter().map(|r| records::Run {
                    node: s.name.clone(),
                    dir: r.dir.clone(),
                    killed: r.killed,
                    paused: r.paused,
                })
            })
            .collect();
        let checked = records::check(&runs, self.forward_timeout_ms)?;

        let detections = detections(l, self.detection_bound_ms, false, false);
        // Detection times in milliseconds, sorted: of every fault, of kills, of pauses.
        let times_of = |fault: Option<&str>| {
            let mut times: Vec<u64> = detections
                .iter()
                .filter(|d| fault.is_none_or(|f| d.fault == f))
                .filter_map(|d| d.after_ms)
                .collect();
            times.sort_unstable();
            times
        };
        let (times, kills, pauses) = (
            times_of(None),
            times_of(Some("kill")),
            times_of(Some("pause")),
        );
        let p50_max = |times: &[u64]| match (percentile(times, 0.5), times.last()) {
            (Some(p50), Some(max)) => format!("p50 {p50} ms, max {max} ms"),
            _ => "none".to_owned(),
        };
        let missed: Vec<&Detection> = detections.iter().filter(|d| d.after_ms.is_none()).collect();
        let faults_checked: std::collections::BTreeSet<(u64, &str)> = detections
            .iter()
            .map(|d| (d.fault_at_ms, d.victim.as_str()))
            .collect();

        let exits: Vec<String> = l
            .slots
            .iter()
            .flat_map(|s| {
                s.runs.iter().enumerate().filter_map(move |(k, r)| {
                    r.unexpected_exit
                        .as_ref()
                        .map(|why| format!("{} run {}: {why}", s.name, k + 1))
                })
            })
            .collect();
        let mut panics = Vec::new();
        for slot in &l.slots {
            for run in &slot.runs {
                let log = std::fs::read_to_string(run.dir.join("node.log")).unwrap_or_default();
                if let Some(line) = log.lines().find(|line| line.contains("panicked")) {
                    panics.push(format!("{}: {line}", run.dir.display()));
                }
            }
        }

        let failed_total: usize = checked.failed.values().sum();
        let invariants = [
            Invariant {
                name: "1. every forward started ended, none past its timeout",
                ok: checked.unended.is_empty() && checked.late.is_empty(),
                detail: format!(
                    "{} started, {} acked, {} failed {:?}, {} cut by kill -9, {} unended, {} late",
                    checked.started,
                    checked.acked,
                    failed_total,
                    checked.failed,
                    checked.cut_by_kill,
                    checked.unended.len(),
                    checked.late.len()
                ),
            },
            Invariant {
                name: "2. every acked message was delivered",
                ok: checked.acked_not_delivered.is_empty(),
                detail: format!(
                    "{} acked but not delivered",
                    checked.acked_not_delivered.len()
                ),
            },
            Invariant {
                name: "3. nothing delivered twice, each sender in order",
                ok: checked.duplicates.is_empty() && checked.out_of_order.is_empty(),
                detail: format!(
                    "{} duplicates, {} out of order",
                    checked.duplicates.len(),
                    checked.out_of_order.len()
                ),
            },
            Invariant {
                name: "4. running nodes agree on the members after chaos",
                ok: self.agreement_ms.is_some(),
                detail: match self.agreement_ms {
                    Some(ms) => format!(
                        "agreed {:.1} s after the chaos (bound {:.0} s)",
                        ms as f64 / 1e3,
                        self.agreement_bound_ms as f64 / 1e3
                    ),
                    None => format!(
                        "no agreement within {:.0} s",
                        self.agreement_bound_ms as f64 / 1e3
                    ),
                },
            },
            Invariant {
                name: "5. every crash and long pause seen by every node",
                ok: missed.is_empty(),
                detail: format!(
                    "{} faults, {} sightings, {} missed; kill -9 seen: {}; pause seen: {} (pauses of {:.1} s or more)",
                    faults_checked.len(),
                    times.len(),
                    missed.len(),
                    p50_max(&kills),
                    p50_max(&pauses),
                    self.detection_bound_ms as f64 / 1e3
                ),
            },
            Invariant {
                name: "6. no exit but by the launcher, no panic",
                ok: exits.is_empty() && panics.is_empty(),
                detail: format!("{} unexpected exits, {} panics", exits.len(), panics.len()),
            },
        ];
        let all_ok = invariants.iter().all(|i| i.ok);

        let mut text = String::new();
        let applied_count = l.applied.iter().filter(|a| a.skipped.is_none()).count();
        let skipped: Vec<&Applied> = l.applied.iter().filter(|a| a.skipped.is_some()).collect();
        let _ = writeln!(
            text,
            "{} nodes ({} at the start), {} process starts, {:.0} s{}",
            l.slots.len(),
            self.launcher
                .slots
                .iter()
                .filter(|s| s
                    .runs
                    .first()
                    .is_some_and(|r| r.started_ms < l.chaos_offset_ms))
                .count(),
            runs.len(),
            self.chaos_end_ms.saturating_sub(l.chaos_offset_ms) as f64 / 1e3,
            match self.seed {
                Some(seed) => format!(
                    ", chaos seed {seed}: {applied_count} faults applied, {} skipped",
                    skipped.len()
                ),
                None => String::new(),
            }
        );
        if self.netns_requested {
            let _ = writeln!(
                text,
                "network namespaces: {}",
                match (&self.netns_note, l.netns.as_ref()) {
                    (Some(why), _) => format!("not available, their faults skipped ({why})"),
                    (None, Some(ns)) => match &ns.netem_missing {
                        Some(why) => format!("used; delay skipped, tc netem missing ({why})"),
                        None => "used, with tc netem".into(),
                    },
                    (None, None) => "not used".into(),
                }
            );
        }
        let _ = writeln!(text);
        let _ = writeln!(text, "{:<54} {:<6} detail", "invariant", "result");
        for i in &invariants {
            let _ = writeln!(
                text,
                "{:<54} {:<6} {}",
                i.name,
                if i.ok { "ok" } else { "FAILED" },
                i.detail
            );
        }
        for d in &missed {
            let _ = writeln!(
                text,
                "  missed: {} did not see {} ({:.1} s)",
                d.observer,
                d.victim,
                d.fault_at_ms as f64 / 1e3
            );
        }
        for line in exits.iter().chain(&panics) {
            let _ = writeln!(text, "  {line}");
        }
        let dir = &l.dir;
        let _ = writeln!(text);
        let _ = writeln!(text, "report: {}", dir.join("report.json").display());
        let _ = writeln!(text, "timeline: {}", dir.join("timeline.svg").display());
        println!();
        print!("{text}");
        std::fs::write(dir.join("report.txt"), &text)?;

        let report = json!({
            "ok": all_ok,
            "seed": self.seed,
            "nodes": l.slots.iter().map(|s| json!({ "node": s.name, "runs": s.runs })).collect::<Vec<_>>(),
            "chaos": { "start_ms": l.chaos_offset_ms, "end_ms": self.chaos_end_ms },
            "netns": {
                "requested": self.netns_requested,
                "used": l.netns.is_some(),
                "prefix": l.netns.as_ref().map(|n| n.prefix.clone()),
                "unavailable": self.netns_note,
                "netem_missing": l.netns.as_ref().and_then(|n| n.netem_missing.clone()),
            },
            "invariants": invariants.iter().map(|i| json!({ "name": i.name, "ok": i.ok, "detail": i.detail })).collect::<Vec<_>>(),
            "traffic": checked,
            "detection": {
                "bound_ms": self.detection_bound_ms,
                "p50_ms": percentile(&times, 0.5),
                "max_ms": times.last(),
                "kill_p50_ms": percentile(&kills, 0.5),
                "kill_max_ms": kills.last(),
                "pause_p50_ms": percentile(&pauses, 0.5),
                "pause_max_ms": pauses.last(),
                "sightings": detections,
            },
            "agreement": { "bound_ms": self.agreement_bound_ms, "took_ms": self.agreement_ms },
            "unexpected_exits": exits,
            "panics": panics,
            "schedule": self.schedule.iter().map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                v["at_ms"] = (p.at_ms + l.chaos_offset_ms).into();
                v
            }).collect::<Vec<_>>(),
            "applied": l.applied,
            "timeline": l.transitions.iter().map(|(t, s, state)| json!({ "t_ms": t, "node": l.slots[*s].name, "state": state })).collect::<Vec<_>>(),
            "traffic_per_second": l.samples,
        });
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        timeline(l, self.chaos_end_ms, &dir.join("timeline.svg"))
            .map_err(|err| anyhow::anyhow!("drawing the timeline: {err}"))?;
        Ok(all_ok)
    }
}

fn color(state: State) -> RGBColor {
    match state {
        State::Up => RGBColor(76, 175, 80),
        State::Paused => RGBColor(255, 152, 0),
        State::Down => RGBColor(229, 57, 53),
        State::Left => RGBColor(158, 158, 158),
        State::Partitioned => RGBColor(142, 68, 173),
        State::Degraded => RGBColor(253, 216, 53),
    }
}

/// The SVG timeline: one row per node coloured by state, and under it the cluster's acked and
/// failed forwards per second.
fn timeline(
    l: &Launcher,
    chaos_end_ms: u64,
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let end_s = (l
        .transitions
        .iter()
        .map(|t| t.0)
        .max()
        .unwrap_or(0)
        .max(chaos_end_ms) as f64
        / 1e3)
        .max(1.0);
    let rows = l.slots.len().max(1);
    // Rows tall enough for the legend beside them.
    let rows_px = (28 * rows as u32).max(200);
    let height = 120 + rows_px + 300;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(90 + rows_px);

    let mut chart = ChartBuilder::on(&top)
        .caption("wamp-cluster launcher: node states", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end_s * 1.15, (0..rows).into_segmented())?;
    chart
        .configure_mesh()
        .disable_mesh()
        .y_labels(rows)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => l.slots.get(*i).map_or(String::new(), |s| s.name.clone()),
            _ => String::new(),
        })
        .x_desc("seconds")
        .draw()?;
    for (i, _) in l.slots.iter().enumerate() {
        let changes: Vec<(u64, State)> = l
            .transitions
            .iter()
            .filter(|(_, s, _)| *s == i)
            .map(|(t, _, state)| (*t, *state))
            .collect();
        for (k, (t, state)) in changes.iter().enumerate() {
            let until = changes
                .get(k + 1)
                .map_or(end_s, |(next, _)| *next as f64 / 1e3);
            let from = *t as f64 / 1e3;
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (from, SegmentValue::Exact(i)),
                    (until.max(from + 0.05), SegmentValue::Exact(i + 1)),
                ],
                color(*state).filled(),
            )))?;
        }
    }
    // A restart is a kill -9 and a start in the same instant: a black mark shows it.
    for applied in l.applied.iter().filter(|a| a.skipped.is_none()) {
        if let Fault::Restart { node, .. } = applied.fault {
            let t = applied.at_ms as f64 / 1e3;
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (t, SegmentValue::Exact(node - 1)),
                    (t + end_s / 250.0, SegmentValue::Exact(node)),
                ],
                BLACK.filled(),
            )))?;
        }
    }
    chart
        .draw_series(std::iter::empty::<Rectangle<(f64, SegmentValue<usize>)>>())?
        .label("restart")
        .legend(|(x, y)| Rectangle::new([(x + 3, y - 5), (x + 6, y + 5)], BLACK.filled()));
    for state in [
        State::Up,
        State::Paused,
        State::Down,
        State::Left,
        State::Partitioned,
        State::Degraded,
    ] {
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, SegmentValue<usize>)>>())?
            .label(format!("{state:?}").to_lowercase())
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], color(state).filled())
            });
    }
    chart::legend(&mut chart)?;

    let series = |f: fn(&crate::Sample) -> u64| -> Vec<(f64, f64)> {
        l.samples.iter().map(|s| (s.t_s, f(s) as f64)).collect()
    };
    Lines {
        title: "cluster forwards per second".into(),
        x: "seconds".into(),
        y: "forwards per second".into(),
        log: false,
        lines: vec![
            Line {
                name: "acked".into(),
                points: series(|s| s.acked_per_s),
                color: (0, 0, 255),
            },
            Line {
                name: "failed".into(),
                points: series(|s| s.failed_per_s),
                color: (255, 0, 0),
            },
        ],
    }
    .draw(&bottom)?;
    root.present()?;
    Ok(())
}
