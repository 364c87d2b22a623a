//! The launcher example as a user runs it: a short run of a small cluster with traffic ends
//! with every invariant holding and a report.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::SERIAL;

/// The launcher example, built by `cargo test` beside the binary.
fn launcher() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wamp-cluster"));
    bin.parent().unwrap().join("examples").join("launcher")
}

/// Three nodes, traffic for a few seconds, then every node leaves: exit 0, each invariant `ok`,
/// and a JSON report with the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_launcher_run_holds_every_invariant() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(launcher())
        .args([
            "--nodes",
            "3",
            "--rate",
            "100",
            "--duration",
            "4",
            "--plain",
        ])
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_wamp-cluster"))
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("launcher.out")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the launcher example is built by cargo test");
    let status =
        common::wait_exit(&mut child, Duration::from_secs(120)).expect("the launcher finishes");
    let out = std::fs::read_to_string(dir.path().join("launcher.out")).unwrap();
    assert!(status.success(), "{status:?}\n{out}");
    for invariant in [
        "1. every forward started ended",
        "2. every acked message was delivered",
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(invariant))
            .unwrap_or_default();
        assert!(line.contains(" ok"), "{invariant}: {line}\n{out}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert!(report["acked"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["acked_not_delivered"], serde_json::json!([]));
}
