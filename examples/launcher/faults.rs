//! Faults as the schedule applies them, and their end: pauses and network faults end when
//! their time is up, or all at once when the chaos stops.

use std::time::{Duration, Instant};

use crate::chaos::{Fault, Planned};
use crate::{generation_of, report, Applied, Launcher, Slot, State};

impl Launcher {
    /// Removes network faults from the node's namespace.
    pub(crate) fn heal(&mut self, slot: usize) {
        let state = self.slots[slot].state;
        if matches!(state, State::Partitioned | State::Degraded) {
            if let Some(netns) = &self.netns {
                netns.heal(self.slots[slot].number);
            }
            self.slots[slot].until = None;
            self.set_state(slot, State::Up);
        }
    }

    /// Applies one fault; a fault that cannot be applied is recorded as skipped.
    pub(crate) fn apply(&mut self, planned: &Planned) -> anyhow::Result<()> {
        let at_ms = self.now_ms();
        let fault = planned.fault.clone();
        let mut skipped = None;
        let slots: Vec<usize> = fault.nodes().iter().map(|n| n - 1).collect();
        for &n in &fault.nodes() {
            self.ensure_slot(n)?;
        }
        let generations = slots
            .iter()
            .map(|&i| {
                let s = &self.slots[i];
                s.running()
                    .then(|| s.runs.last().and_then(generation_of))
                    .flatten()
            })
            .collect();
        let needs_running = !matches!(fault, Fault::Start { .. } | Fault::Join { .. });
        let healthy = |s: &Slot| s.running() && s.state == State::Up && !s.leaving;
        if needs_running && !slots.iter().all(|&i| healthy(&self.slots[i])) {
            skipped = Some("the node is not up and healthy".to_owned());
        } else if !needs_running && slots.iter().any(|&i| self.slots[i].running()) {
            skipped = Some("the node is still running".to_owned());
        } else if fault.needs_netns() && self.netns.is_none() {
            skipped = Some("no network namespaces".to_owned());
        } else {
            match &fault {
                Fault::Crash { .. } => self.kill_node(slots[0]),
                Fault::Pause { ms, .. } => self.pause(slots[0], *ms),
                Fault::Restart { clock_back_ms, .. } => {
                    self.kill_node(slots[0]);
                    self.start_node(slots[0], *clock_back_ms)?;
                }
                Fault::Leave { .. } => self.leave_node(slots[0]),
                Fault::Start { .. } | Fault::Join { .. } => self.start_node(slots[0], 0)?,
                Fault::Partition { side, one_way, ms } => {
                    let others: Vec<usize> = (1..=self.slots.len())
                        .filter(|n| !side.contains(n))
                        .collect();
                    if let Some(netns) = &self.netns {
                        for &n in side {
                            if let Err(err) = netns.cut(n, &others, *one_way) {
                                skipped = Some(err);
                            }
                        }
                    }
                    if skipped.is_none() {
                        for &i in &slots {
                            self.slots[i].until = Some(Instant::now() + Duration::from_millis(*ms));
                            self.set_state(i, State::Partitioned);
                        }
                    } else if let Some(netns) = &self.netns {
                        for &n in side {
                            netns.heal(n);
                        }
                    }
                }
                Fault::Loss {
                    node, percent, ms, ..
                } => {
                    let result = self.netns.as_ref().map(|ns| ns.loss(*node, *percent));
                    skipped = self.degrade(slots[0], *ms, result);
                }
                Fault::Delay {
                    node, delay_ms, ms, ..
                } => {
                    let result = self.netns.as_ref().map(|ns| ns.delay(*node, *delay_ms));
                    skipped = self.degrade(slots[0], *ms, result);
                }
            }
        }
        println!(
            "{:>7.1} s  {}{}",
            at_ms.saturating_sub(self.chaos_offset_ms) as f64 / 1000.0,
            report::describe(&fault),
            skipped
                .as_ref()
                .map(|why| format!("  (skipped: {why})"))
                .unwrap_or_default()
        );
        self.applied.push(Applied {
            at_ms,
            fault,
            generations,
            skipped,
        });
        Ok(())
    }

    pub(crate) fn degrade(
        &mut self,
        slot: usize,
        ms: u64,
        result: Option<Result<(), String>>,
    ) -> Option<String> {
        match result {
            Some(Ok(())) => {
                self.slots[slot].until = Some(Instant::now() + Duration::from_millis(ms));
                self.set_state(slot, State::Degraded);
                None
            }
            Some(Err(err)) => Some(err),
            None => Some("no network namespaces".to_owned()),
        }
    }

    /// Ends the pauses and network faults whose time is up (all of them with `all`).
    pub(crate) fn end_faults(&mut self, all: bool) {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if self.slots[i].until.is_some_and(|until| all || until <= now) {
                self.resume(i);
                self.heal(i);
            }
        }
    }
}
