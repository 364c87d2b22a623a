//! The fault schedule: drawn from a seed before the run, so the same seed (with the same
//! `--nodes`, `--duration`, `--fault-every`, `--detection-bound` and `--netns`) gives the same
//! schedule.

use serde::Serialize;

/// SplitMix64: a small generator whose output depends on the seed alone, on every platform and
/// every version of this program.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high` (`low` when `high` is below it).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high.saturating_sub(low) + 1)
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// One fault. Nodes are slot numbers (`node-<slot>`), starting at 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9`; the node stays down until a `start`.
    Crash { node: usize },
    /// SIGSTOP, then SIGCONT after `ms`.
    Pause { node: usize, ms: u64 },
    /// `kill -9`, then the same node id starts again at once (a new generation); with
    /// `clock_back_ms`, its generation is its clock's time less that, as after the host's clock
    /// stepped back (or the node moved to a host whose clock is behind): lower than the
    /// generation it replaces.
    Restart { node: usize, clock_back_ms: u64 },
    /// SIGTERM: the node leaves gracefully and exits; it stays away until a `start`.
    Leave { node: usize },
    /// A node that crashed or left starts again (a new generation).
    Start { node: usize },
    /// A node that was never in the cluster joins.
    Join { node: usize },
    /// `side` is cut off from the other nodes for `ms`: both ways, or (`one_way`) only the
    /// traffic from the others to `side` is lost.
    Partition {
        side: Vec<usize>,
        one_way: bool,
        ms: u64,
    },
    /// The node loses `percent` of its inbound packets for `ms`.
    Loss { node: usize, percent: u64, ms: u64 },
    /// The node's outbound packets are delayed by `delay_ms` for `ms` (`tc netem`).
    Delay { node: usize, delay_ms: u64, ms: u64 },
}

impl Fault {
    /// The nodes the fault acts on.
    pub fn nodes(&self) -> Vec<usize> {
        match self {
            Fault::Partition { side, .. } => side.clone(),
            Fault::Crash { node }
            | Fault::Pause { node, .. }
            | Fault::Restart { node, .. }
            | Fault::Leave { node }
            | Fault::Start { node }
            | Fault::Join { node }
            | Fault::Loss { node, .. }
            | Fault::Delay { node, .. } => vec![*node],
        }
    }

    /// Whether the fault needs network namespaces.
    pub fn needs_netns(&self) -> bool {
        matches!(
            self,
            Fault::Partition { .. } | Fault::Loss { .. } | Fault::Delay { .. }
        )
    }
}

/// A fault and when it starts, in milliseconds after the chaos starts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    pub at_ms: u64,
    #[serde(flatten)]
    pub fault: Fault,
}

/// What the schedule needs to know.
pub struct Plan {
    pub seed: u64,
    /// Nodes at the start.
    pub nodes: usize,
    /// At most this many nodes join during the run.
    pub max_joins: usize,
    pub duration_ms: u64,
    /// Mean time between two faults.
    pub every_ms: u64,
    /// Pauses are drawn from one second to twice this, so some are longer and some shorter.
    pub detection_bound_ms: u64,
    pub netns: bool,
}

/// A node is not hit again until this long after it (re)started or recovered, so that each
/// fault meets a node that had time to join.
const SETTLE_MS: u64 = 3000;

/// How far the clock of every other restart goes back (the first, the third, …): an hour, so
/// that the new generation is lower than the old one.
const CLOCK_BACK_MS: u64 = 3_600_000;

#[derive(Clone, Copy, PartialEq)]
enum Model {
    /// Running and healthy from this time on.
    Up(u64),
    /// Running but paused or cut off until this time.
    Busy(u64),
    /// Not running (crashed or left) since this time; may start again.
    Away(u64),
}

/// Draws the schedule. The model keeps at least half of the running nodes (and never fewer
/// than two) free of faults at any time, so the cluster always has healthy observers.
pub fn plan(p: &Plan) -> Vec<Planned> {
    let mut rng = Rng::new(p.seed);
    let mut model: Vec<Model> = vec![Model::Up(0); p.nodes];
    let mut joins = 0;
    let mut restarts = 0;
    let mut schedule = Vec::new();
    let mut t = 0;
    loop {
        t += rng.between(p.every_ms / 2, p.every_ms * 3 / 2).max(1);
        if t >= p.duration_ms {
            break;
        }
        for m in model.iter_mut() {
            if let Model::Busy(until) = *m {
                if until <= t {
                    *m = Model::Up(until);
                }
            }
        }
        let healthy: Vec<usize> = (0..model.len())
            .filter(|&i| matches!(model[i], Model::Up(since) if since + SETTLE_MS <= t))
            .collect();
        let running = model
            .iter()
            .filter(|m| !matches!(m, Model::Away(_)))
            .count();
        let busy = model.iter().filter(|m| matches!(m, Model::Busy(_))).count();
        // A node that left may still be leaving: give it time to be gone.
        let away: Vec<usize> = (0..model.len())
            .filter(|&i| matches!(model[i], Model::Away(since) if since + SETTLE_MS <= t))
            .collect();
        // How many more nodes may be taken out of the healthy ones: at least half of the
        // running nodes, and never fewer than two, stay free of faults.
        let spare = (running - busy).saturating_sub(running.div_ceil(2).max(2));
        let spare = spare.min(healthy.len());
        let left = p.duration_ms - t;

        let mut kinds: Vec<&str> = Vec::new();
        if spare > 0 {
            kinds.extend(["crash", "pause", "pause", "restart", "restart", "leave"]);
            if p.netns {
                kinds.extend(["loss", "delay"]);
                if healthy.len() >= 3 && spare >= 1 {
                    kinds.extend(["partition", "partition"]);
                }
            }
        }
        if !away.is_empty() {
            kinds.extend(["start", "start"]);
        }
        if joins < p.max_joins && model.len() < 100 {
            kinds.push("join");
        }
        if kinds.is_empty() {
            continue;
        }
        let fault = match rng.pick(&kinds) {
            "crash" => {
                let node = rng.pick(&healthy);
                model[node] = Model::Away(t);
                Fault::Crash { node: node + 1 }
            }
            "pause" => {
                let node = rng.pick(&healthy);
                let ms = rng.between(1000, 2 * p.detection_bound_ms).min(left);
                model[node] = Model::Busy(t + ms);
                Fault::Pause { node: node + 1, ms }
            }
            "restart" => {
                let node = rng.pick(&healthy);
                model[node] = Model::Up(t);
                // Taken from the count, not the generator: schedules stay as they were.
                restarts += 1;
                let clock_back_ms = if restarts % 2 == 1 { CLOCK_BACK_MS } else { 0 };
                Fault::Restart {
                    node: node + 1,
                    clock_back_ms,
                }
            }
            "leave" => {
                let node = rng.pick(&healthy);
                model[node] = Model::Away(t);
                Fault::Leave { node: node + 1 }
            }
            "start" => {
                let node = rng.pick(&away);
                model[node] = Model::Up(t);
                Fault::Start { node: node + 1 }
            }
            "join" => {
                joins += 1;
                model.push(Model::Up(t));
                Fault::Join { node: model.len() }
            }
            "partition" => {
                // A minority that leaves at least two healthy nodes on the other side.
                let size = rng.between(1, spare as u64) as usize;
                let mut pool = healthy.clone();
                let mut side = Vec::new();
                for _ in 0..size {
                    let i = (rng.next() % pool.len() as u64) as usize;
                    side.push(pool.swap_remove(i));
                }
                side.sort_unstable();
                let ms = rng.between(2000, 3 * p.detection_bound_ms).min(left);
                for &node in &side {
                    model[node] = Model::Busy(t + ms);
                }
                Fault::Partition {
                    side: side.iter().map(|n| n + 1).collect(),
                    one_way: rng.next() % 2 == 0,
                    ms,
                }
            }
            "loss" => {
                let node = rng.pick(&healthy);
                let ms = rng.between(2000, 3 * p.detection_bound_ms).min(left);
                model[node] = Model::Busy(t + ms);
                Fault::Loss {
                    node: node + 1,
                    percent: rng.pick(&[10, 30, 60]),
                    ms,
                }
            }
            _ => {
                let node = rng.pick(&healthy);
                let ms = rng.between(2000, 3 * p.detection_bound_ms).min(left);
                model[node] = Model::Busy(t + ms);
                Fault::Delay {
                    node: node + 1,
                    delay_ms: rng.pick(&[20, 100, 400]),
                    ms,
                }
            }
        };
        schedule.push(Planned { at_ms: t, fault });
    }
    schedule
}
