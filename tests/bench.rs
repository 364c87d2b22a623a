//! The forward benchmark as a smoke run: `cargo bench --bench forward -- --quick` completes and
//! writes valid JSON with every figure present. No figure is judged here: speed is read from
//! the benchmark's own output, never asserted in a test.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A process group, killed whole when dropped (the bench, its pinned child and cargo), even
/// when the test fails.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        // kill(2) itself, not the `kill` program: procps-ng 4.0's `kill -KILL -PGID` signals
        // every process it may (as for -1) when the group no longer exists, as after a clean
        // exit. Nothing left to kill is not an error here.
        let Ok(group) = libc::pid_t::try_from(self.0) else {
            return;
        };
        if group > 1 {
            // SAFETY: kill(2) with a negative pid other than -1 signals that process group only.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
    }
}

#[test]
fn the_forward_bench_runs_quick_and_writes_every_figure() {
    let out = tempfile::tempdir().unwrap();
    let manifest = env!("CARGO_MANIFEST_DIR");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // A target folder of its own: the one of this test run is locked by the cargo running it.
    let mut child = Command::new(cargo)
        .args(["bench", "--bench", "forward", "--manifest-path"])
        .arg(format!("{manifest}/Cargo.toml"))
        .args(["--", "--quick", "--out"])
        .arg(out.path())
        .env("CARGO_TARGET_DIR", format!("{manifest}/target/bench-smoke"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out.path().join("bench.out")).unwrap())
        .stderr(std::fs::File::create(out.path().join("bench.err")).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let _group = Group(child.id());
    let status = wamp_cluster::testkit::wait_exit(&mut child, Duration::from_secs(1200));
    let printed = std::fs::read_to_string(out.path().join("bench.out")).unwrap_or_default();
    let errors = std::fs::read_to_string(out.path().join("bench.err")).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{printed}\n{errors}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("forward.json")).unwrap())
            .unwrap();
    for path in [
        "throughput.raw_msgs_per_sec",
        "throughput.forward_msgs_per_sec",
        "throughput.ratio",
        "latency.raw_p50_us",
        "latency.forward_p50_us",
        "latency.p50_ratio",
        "latency.raw_p99_us",
        "latency.forward_p99_us",
        "latency.p99_ratio",
        "latency.raw_p999_us",
        "latency.forward_p999_us",
        "latency.p999_ratio",
        "broadcast.all_live_ms",
        "broadcast.one_silent_ms",
        "broadcast.timeout_ms",
        "memory.bytes_per_pending_ack",
        "memory.rss_bytes_100k_pending",
        "allocations.per_message",
        "membership.false_downs",
        "bad_input.forward_msgs_per_sec",
        "bad_input.ratio_to_clean",
        "bad_input.connections_per_sec",
        "protection.plain.forward_msgs_per_sec",
        "protection.secret.forward_msgs_per_sec",
        "protection.secret.p99_us",
        "protection.secret_and_tls.forward_msgs_per_sec",
        "protection.secret_and_tls.p50_us",
        "protection.secret_and_tls.p99_us",
        "dispatcher.forward_msgs_per_sec",
        "dispatcher.ratio_to_direct",
    ] {
        let value = path.split('.').fold(&report, |v, key| &v[key]);
        assert!(
            value.as_f64().is_some_and(f64::is_finite),
            "{path}: {value}\n{report:#}"
        );
    }
    let sizes = report["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 6, "{report:#}");
    for size in sizes {
        for key in ["bytes", "raw_msgs_per_sec", "forward_msgs_per_sec"] {
            assert!(size[key].as_f64().is_some_and(|v| v > 0.0), "{size}");
        }
    }
    let svg = std::fs::read_to_string(out.path().join("forward-sizes.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
}
