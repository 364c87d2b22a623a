//! The launcher example as a user runs it: a short run of a small cluster with traffic, a
//! chaos run, a chaos run in network namespaces, and a broken node that the checker must catch.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::SERIAL;
use serde_json::Value;

/// The launcher example, built by `cargo test` beside the binary.
fn launcher() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_wamp-cluster"));
    bin.parent().unwrap().join("examples").join("launcher")
}

/// Runs the launcher with `args` into `dir`; returns its exit code, its output and its report.
fn run(dir: &Path, args: &[&str], timeout: Duration) -> (Option<i32>, String, Value) {
    let mut child = Command::new(launcher())
        .args(args)
        .arg("--plain")
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_wamp-cluster"))
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("launcher.out")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the launcher example is built by cargo test");
    let status = wamp_cluster::testkit::wait_exit(&mut child, timeout)
        .expect("the launcher finishes in time");
    let out = std::fs::read_to_string(dir.join("launcher.out")).unwrap();
    let report = std::fs::read_to_string(dir.join("report.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| panic!("no report.json\n{out}"));
    (status.code(), out, report)
}

/// The invariants by number (1 to 6) that the report says failed.
fn failed(report: &Value) -> Vec<u64> {
    report["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .filter(|(_, i)| i["ok"] != true)
        .map(|(n, _)| n as u64 + 1)
        .collect()
}

/// The kinds of the faults that were applied (not skipped).
fn applied(report: &Value) -> Vec<String> {
    report["applied"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a.get("skipped").is_none())
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Three nodes, traffic for a few seconds, then every node leaves: exit 0, each invariant `ok`,
/// and a report with the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_launcher_run_holds_every_invariant() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["--nodes", "3", "--rate", "100", "--duration", "4"];
    let (code, out, report) = run(dir.path(), &args, Duration::from_secs(120));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(failed(&report), Vec::<u64>::new(), "{out}");
    assert!(
        out.contains("2. every acked message was delivered"),
        "{out}"
    );
    assert!(
        report["traffic"]["acked"].as_u64().unwrap() > 100,
        "{report}"
    );
    assert!(dir.path().join("timeline.svg").exists());
}

/// A node that acks without delivering: invariant 2 fails, and only it; the exit code says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_acks_without_delivering_fails_invariant_2() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--nodes",
        "3",
        "--rate",
        "100",
        "--duration",
        "3",
        "--test-ack-without-delivery",
        "node-2",
    ];
    let (code, out, report) = run(dir.path(), &args, Duration::from_secs(120));
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(failed(&report), [2], "{out}");
    let not_delivered = report["traffic"]["acked_not_delivered"].as_array().unwrap();
    assert!(!not_delivered.is_empty());
    assert!(not_delivered.iter().all(|m| m[1] == "node-2"), "{report}");
}

/// Five nodes with a cluster secret under a fixed fault schedule for 30 s (kill -9, pause,
/// restart, a restart whose clock went back an hour, leave, join, start again), no namespaces:
/// every invariant holds, the faults were applied, the same seed planned the same schedule,
/// and the timeline was drawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_holds_every_invariant() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--nodes",
        "5",
        "--chaos",
        "--seed",
        "42",
        "--duration",
        "30",
        "--fault-every",
        "2.5",
        // With sealed gossip and proved handshakes.
        "--secret",
        "a-secret-for-the-chaos-run-0123",
    ];
    let (code, out, report) = run(dir.path(), &args, Duration::from_secs(180));
    assert_eq!(failed(&report), Vec::<u64>::new(), "{out}");
    assert_eq!(code, Some(0), "{out}");
    let kinds = applied(&report);
    assert!(kinds.len() >= 6, "{kinds:?}\n{out}");
    for kind in ["pause", "restart", "join"] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind}: {kinds:?}");
    }
    // A restart whose clock went back: a generation lower than the one it replaced.
    let behind =
        report["applied"].as_array().unwrap().iter().any(|a| {
            a["kind"] == "restart" && a.get("skipped").is_none() && a["clock_back_ms"] != 0
        });
    assert!(behind, "no restart with the clock behind: {report}");
    assert!(
        report["detection"]["sightings"].as_array().unwrap().len() >= 3,
        "{report}"
    );
    assert_eq!(report["seed"], 42);
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("node-5"), "{svg}");

    // The same seed plans the same schedule: --plan-only prints it without running it.
    let planned: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("chaos: seed 42"))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|(_, l)| l)
        .collect();
    assert!(planned.len() >= 7, "{out}");
    let plan_only = Command::new(launcher())
        .args(args)
        .arg("--plan-only")
        .output()
        .unwrap();
    assert!(plan_only.status.success());
    let plan_only = String::from_utf8(plan_only.stdout).unwrap();
    assert_eq!(plan_only.lines().collect::<Vec<_>>(), planned, "{out}");
}

/// The same with each node in a network namespace of its own, adding partitions and packet
/// loss (and delay where `tc netem` exists). Skipped, with a message, where namespaces cannot
/// be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_run_in_network_namespaces_holds_every_invariant() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--nodes",
        "5",
        "--chaos",
        "--netns",
        "--seed",
        "7",
        "--duration",
        "30",
        "--fault-every",
        "2.5",
    ];
    let (code, out, report) = run(dir.path(), &args, Duration::from_secs(180));
    if report["netns"]["used"] != true {
        eprintln!(
            "skipped: network namespaces are not available here: {}",
            report["netns"]["unavailable"]
        );
        return;
    }
    assert_eq!(failed(&report), Vec::<u64>::new(), "{out}");
    assert_eq!(code, Some(0), "{out}");
    let kinds = applied(&report);
    assert!(kinds.iter().any(|k| k == "partition"), "{kinds:?}\n{out}");
    // Nothing is left behind: the namespaces are gone.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let prefix = format!("{}n", report["netns"]["prefix"].as_str().unwrap());
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&prefix),
        "namespaces left: {}",
        String::from_utf8_lossy(&list.stdout)
    );
}

/// The schedule `--plan-only` prints for these arguments.
fn plan(seed: u64, netns: bool) -> Vec<String> {
    let seed = seed.to_string();
    let mut args = vec!["--nodes", "5", "--chaos", "--seed", &seed, "--plan-only"];
    if netns {
        args.push("--netns");
    }
    let out = Command::new(launcher()).args(&args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_owned)
        .collect()
}

/// The same seed gives the same schedule, another seed another; over many seeds every kind of
/// fault comes up, and without --netns no namespace fault does.
#[test]
fn the_fault_schedule_follows_the_seed() {
    let a = plan(7, true);
    assert_eq!(a, plan(7, true));
    assert_ne!(a, plan(8, true));
    assert!(a.len() >= 10, "{a:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for seed in 0..30 {
        for line in plan(seed, true) {
            for kind in [
                "kill -9",
                "pause",
                "restart",
                "leaves",
                "again",
                "joins",
                "partition",
                "loses",
                "delay",
            ] {
                if line.contains(kind) {
                    kinds.insert(kind);
                }
            }
        }
        let without = plan(seed, false);
        assert!(
            without
                .iter()
                .all(|l| !l.contains("partition") && !l.contains("loses") && !l.contains("delay")),
            "{without:?}"
        );
    }
    assert_eq!(kinds.len(), 9, "{kinds:?}");
}

/// Starts the launcher without a duration; returns it once the cluster formed.
fn start_until_formed(dir: &Path) -> wamp_cluster::testkit::Reaped {
    let child = Command::new(launcher())
        .args(["--nodes", "3", "--plain"])
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_wamp-cluster"))
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("launcher.out")).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let child = wamp_cluster::testkit::Reaped(child);
    for _ in 0..600 {
        let out = std::fs::read_to_string(dir.join("launcher.out")).unwrap_or_default();
        if out.contains("formed a cluster") {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the cluster did not form within 60 s");
}

/// The node processes whose command line names `dir` (their record directory).
fn nodes_of(dir: &Path) -> String {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(dir.join("node-"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Ctrl-C (SIGINT) makes every node leave; the records are checked and no process is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_leaves_gracefully_and_reaps_every_node() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut launcher = start_until_formed(dir.path());
    assert!(!nodes_of(dir.path()).is_empty());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(launcher.signal("-INT"));
    let status =
        wamp_cluster::testkit::wait_exit(&mut launcher.0, Duration::from_secs(90)).unwrap();
    let out = std::fs::read_to_string(dir.path().join("launcher.out")).unwrap();
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("6. no exit but by the launcher"), "{out}");
    assert_eq!(nodes_of(dir.path()), "", "nodes left running");
}

/// Even `kill -9` of the launcher takes its nodes with it (parent-death signal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_die_with_a_killed_launcher() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut launcher = start_until_formed(dir.path());
    assert!(!nodes_of(dir.path()).is_empty());
    assert!(launcher.signal("-KILL"));
    let _ = wamp_cluster::testkit::wait_exit(&mut launcher.0, Duration::from_secs(10));
    wamp_cluster::testkit::wait_until(Duration::from_secs(10), "the nodes die", || {
        nodes_of(dir.path()).is_empty()
    })
    .await;
}
