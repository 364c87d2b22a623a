//! The node program's test traffic and its record, with the `testkit` feature: see
//! `wamp_cluster::testkit::traffic`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};
use wamp_cluster::testkit::traffic::{record_events, run_traffic, RecordingDeliver};
use wamp_cluster::{Deliver, Discard, NodeHandle};

/// How long stopping waits for the test traffic's calls to end (each ends by its timeout).
const TRAFFIC_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The flags of test traffic, and of a generation as after the clock stepped back.
#[derive(clap::Args)]
pub struct TrafficArgs {
    /// Send test traffic to the other live nodes at this many messages per second.
    #[arg(long, value_name = "PER_SECOND")]
    traffic_rate: Option<f64>,
    /// Record deliveries (before acking) and traffic outcomes in this directory.
    #[arg(long, value_name = "DIR")]
    record_dir: Option<PathBuf>,
    /// Test-only: ack test traffic without recording it, a broken node for the checker to
    /// catch.
    #[arg(long, hide = true, requires = "record_dir")]
    test_ack_without_delivery: bool,
    /// Start as the generation the clock gives less this many milliseconds, as after the
    /// host's clock stepped back: for chaos runs.
    #[arg(long, value_name = "MS")]
    generation_behind_ms: Option<u64>,
}

/// The traffic and the event record of a running node.
pub struct Running {
    stop: CancellationToken,
    sender: Option<JoinHandle<std::io::Result<()>>>,
    events: Option<JoinHandle<std::io::Result<()>>>,
}

impl TrafficArgs {
    /// Whether the flags are sound.
    pub fn check(&self) -> Result<(), String> {
        match self.traffic_rate {
            Some(rate) if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) => {
                Err("--traffic-rate must be between 0 and 1000000".into())
            }
            _ => Ok(()),
        }
    }

    /// The generation to start as, if the flags set one.
    pub fn generation(&self) -> Option<u64> {
        let behind = self.generation_behind_ms?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Some(now.saturating_sub(behind.saturating_mul(1_000_000)).max(1))
    }

    /// The handler of forwarded messages: with a record directory, one that records test
    /// traffic before it acks; else one that acks and drops.
    pub fn handler(&self) -> anyhow::Result<Arc<dyn Deliver>> {
        let Some(dir) = &self.record_dir else {
            return Ok(Arc::new(Discard));
        };
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the record directory {}", dir.display()))?;
        let mut recording = RecordingDeliver::open(dir).context("opening the delivery log")?;
        if self.test_ack_without_delivery {
            warn!("test switch: acking test traffic without delivering it");
            recording = recording.ack_without_delivery();
        }
        Ok(Arc::new(recording))
    }

    /// Starts the traffic and the event record the flags ask for.
    pub fn start(&self, node: &NodeHandle) -> Running {
        let stop = CancellationToken::new();
        let events = self.record_dir.clone().map(|dir| {
            let membership = node.membership().clone();
            let stop = stop.clone();
            tokio::spawn(async move { record_events(membership, &dir, stop).await })
        });
        let sender = self.traffic_rate.map(|rate| {
            let forwarder = node.forwarder().clone();
            let membership = node.membership().clone();
            let stop = stop.clone();
            let dir = self.record_dir.clone();
            tokio::spawn(async move {
                run_traffic(forwarder, membership, rate, dir.as_deref(), stop).await
            })
        });
        Running {
            stop,
            sender,
            events,
        }
    }
}

impl Running {
    /// Stops sending and waits for the calls in flight to end.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(sender) = self.sender {
            match tokio::time::timeout(TRAFFIC_STOP_TIMEOUT, sender).await {
                Ok(Ok(Err(err))) => error!("test traffic failed: {err}"),
                Ok(_) => {}
                Err(_) => error!("test traffic did not stop in time"),
            }
        }
        if let Some(events) = self.events {
            if let Ok(Err(err)) = events.await {
                error!("recording membership events failed: {err}");
            }
        }
    }
}
