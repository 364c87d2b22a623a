//! The node processes of a run: starting one (seeded by a running node, recording into a
//! folder of its own, dying with the launcher), stopping it (SIGTERM, `kill -9`), pausing it,
//! and reaping those that exited.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use wamp_cluster::testkit::free_port_on;

use crate::{Launcher, Run, Slot, State, LEAVE_TIMEOUT};

/// A node process, killed and reaped when dropped.
pub(crate) struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl NodeProc {
    pub(crate) fn signal(&self, signal: i32) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the pid of our own child, which is not reaped yet.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}

impl Launcher {
    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn set_state(&mut self, slot: usize, state: State) {
        if self.slots[slot].state != state {
            self.slots[slot].state = state;
            let now = self.now_ms();
            self.transitions.push((now, slot, state));
        }
    }

    /// Adds slot `number` (from 1) if it does not exist yet.
    pub(crate) fn ensure_slot(&mut self, number: usize) -> anyhow::Result<usize> {
        while self.slots.len() < number {
            let n = self.slots.len() + 1;
            if let Some(netns) = &mut self.netns {
                netns.add(n).map_err(anyhow::Error::msg)?;
            }
            self.slots.push(Slot {
                name: format!("node-{n}"),
                number: n,
                proc: None,
                runs: Vec::new(),
                state: State::Down,
                leaving: false,
                until: None,
            });
        }
        Ok(number - 1)
    }

    /// Starts a new process for `slot`, seeded by a running node; its generation is its
    /// clock's time less `clock_back_ms`.
    pub(crate) fn start_node(&mut self, slot: usize, clock_back_ms: u64) -> anyhow::Result<()> {
        let number = self.slots[slot].number;
        let ip = match &self.netns {
            Some(netns) => IpAddr::V4(netns.ip(number)),
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let bind = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let port = || free_port_on(bind).context("no free port");
        let (gossip, forward, admin, ws) = (
            SocketAddr::new(ip, port()?),
            SocketAddr::new(ip, port()?),
            SocketAddr::new(ip, port()?),
            SocketAddr::new(ip, port()?),
        );
        let seed = self
            .slots
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != slot && s.running() && s.state == State::Up && !s.leaving)
            .find_map(|(_, s)| s.runs.last().map(|r| r.gossip));
        let name = self.slots[slot].name.clone();
        let record = self
            .dir
            .join(&name)
            .join(format!("run-{}", self.slots[slot].runs.len() + 1));
        std::fs::create_dir_all(&record)
            .with_context(|| format!("creating {}", record.display()))?;
        let log = std::fs::File::create(record.join("node.log"))?;
        let mut command = match &self.netns {
            Some(netns) => netns.command(number, &self.binary),
            None => Command::new(&self.binary),
        };
        command
            .args(["node", "--node-id", &name, "--cluster-id", "launcher"])
            .args(["--gossip-addr", &gossip.to_string()])
            .args(["--forward-addr", &forward.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--router-ws-addr", &ws.to_string()])
            .args(["--traffic-rate", &self.rate.to_string()])
            .arg("--record-dir")
            .arg(&record)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Ctrl-C in the terminal reaches the launcher only; it stops the nodes itself.
            .process_group(0);
        if let Some(seed) = seed {
            command.args(["--seed", &seed.to_string()]);
        }
        if clock_back_ms > 0 {
            command.args(["--generation-behind-ms", &clock_back_ms.to_string()]);
        }
        if self.broken.as_deref() == Some(name.as_str()) {
            command.arg("--test-ack-without-delivery");
        }
        if let Some(secret) = &self.secret {
            command.env("WAMP_CLUSTER_SECRET", secret);
        }
        // SAFETY: prctl(2) and getppid(2) only, between fork and exec. The node dies with the
        // launcher's main thread, which starts every node (the runtime runs `run` with
        // `block_on` on it); if the launcher died before the prctl, the node does not start.
        let launcher = std::process::id();
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if u32::try_from(libc::getppid()).ok() != Some(launcher) {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let now = self.now_ms();
        let s = &mut self.slots[slot];
        s.proc = Some(NodeProc(child));
        s.leaving = false;
        s.until = None;
        s.runs.push(Run {
            dir: record,
            admin,
            gossip,
            ws,
            started_ms: now,
            ended_ms: None,
            killed: false,
            paused: false,
            unexpected_exit: None,
        });
        self.set_state(slot, State::Up);
        Ok(())
    }

    /// `kill -9`.
    pub(crate) fn kill_node(&mut self, slot: usize) {
        let now = self.now_ms();
        let s = &mut self.slots[slot];
        if let Some(proc) = s.proc.take() {
            drop(proc);
            if let Some(run) = s.runs.last_mut() {
                run.killed = true;
                run.ended_ms = Some(now);
            }
        }
        self.heal(slot);
        self.set_state(slot, State::Down);
    }

    /// SIGTERM: the node leaves and exits by itself.
    pub(crate) fn leave_node(&mut self, slot: usize) {
        self.resume(slot);
        self.heal(slot);
        let s = &mut self.slots[slot];
        if let Some(proc) = &s.proc {
            proc.signal(libc::SIGTERM);
            s.leaving = true;
        }
        self.set_state(slot, State::Left);
    }

    pub(crate) fn pause(&mut self, slot: usize, ms: u64) {
        let s = &mut self.slots[slot];
        if let Some(proc) = &s.proc {
            proc.signal(libc::SIGSTOP);
            s.until = Some(Instant::now() + Duration::from_millis(ms));
            if let Some(run) = s.runs.last_mut() {
                run.paused = true;
            }
            self.set_state(slot, State::Paused);
        }
    }

    /// SIGCONT if paused.
    pub(crate) fn resume(&mut self, slot: usize) {
        if self.slots[slot].state == State::Paused {
            if let Some(proc) = &self.slots[slot].proc {
                proc.signal(libc::SIGCONT);
            }
            self.slots[slot].until = None;
            self.set_state(slot, State::Up);
        }
    }

    /// Reaps processes that exited; an exit the launcher did not ask for is recorded.
    pub(crate) fn reap(&mut self) {
        let now = self.now_ms();
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            let Some(proc) = s.proc.as_mut() else {
                continue;
            };
            let status = match proc.0.try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(err) => {
                    eprintln!("launcher: cannot wait for {}: {err}", s.name);
                    continue;
                }
            };
            s.proc = None;
            let leaving = s.leaving;
            if let Some(run) = s.runs.last_mut() {
                run.ended_ms = Some(now);
                if !leaving {
                    run.unexpected_exit = Some(format!("exited by itself: {status}"));
                } else if !status.success() {
                    run.unexpected_exit = Some(format!("left with {status}"));
                }
            }
            if !leaving {
                self.set_state(i, State::Down);
            }
        }
    }

    /// SIGTERM to every running node, then waits for each to exit (killed after
    /// [`LEAVE_TIMEOUT`]).
    pub(crate) async fn stop_all(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].running() && !self.slots[i].leaving {
                self.leave_node(i);
            }
        }
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        while self.slots.iter().any(Slot::running) && Instant::now() < deadline {
            self.reap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let now = self.now_ms();
        for slot in &mut self.slots {
            if let Some(proc) = slot.proc.take() {
                println!("{} did not leave in time: killed", slot.name);
                drop(proc);
                if let Some(run) = slot.runs.last_mut() {
                    run.ended_ms = Some(now);
                    run.unexpected_exit = Some("did not leave in time".into());
                }
            }
        }
    }
}
