//! The table printed at the end of a run, the JSON report and the chart of throughput
//! against message size.

use serde_json::Value;
use wamp_cluster::testkit::chart::{Line, Lines};

/// Prints the table of `report`.
pub fn print(report: &Value, pinned: bool) {
    let t = &report["throughput"];
    let l = &report["latency"];
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    println!(
        "forwarding against raw TCP on loopback ({} run(s), medians)",
        report["runs"]
    );
    println!(
        "{:<52} {:>14} {:>14} {:>8}",
        "figure", "raw", "wamp-cluster", "ratio"
    );
    println!(
        "{:<52} {:>14.0} {:>14.0} {:>8.4}",
        "acked msg/s, 128 B, window 4096",
        f(&t["raw_msgs_per_sec"]),
        f(&t["forward_msgs_per_sec"]),
        f(&t["ratio"])
    );
    let bad = &report["bad_input"];
    println!(
        "{:<52} {:>14} {:>14.0} {:>8.4}",
        format!(
            "  the same, bad input at the port ({:.0} conn/s)",
            f(&bad["connections_per_sec"])
        ),
        "",
        f(&bad["forward_msgs_per_sec"]),
        f(&bad["ratio_to_clean"])
    );
    for q in ["p50", "p99", "p999"] {
        println!(
            "{:<52} {:>14.1} {:>14.1} {:>8.2}",
            format!("round trip {q}, µs (runtime's placement)"),
            f(&l[format!("raw_{q}_us")]),
            f(&l[format!("forward_{q}_us")]),
            f(&l[format!("{q}_ratio")])
        );
    }
    if pinned {
        for q in ["p50", "p99", "p999"] {
            println!(
                "{:<52} {:>14.1} {:>14.1} {:>8.2}",
                format!("round trip {q}, µs (pinned to one CPU)"),
                f(&l[format!("pinned_raw_{q}_us")]),
                f(&l[format!("pinned_forward_{q}_us")]),
                f(&l[format!("pinned_{q}_ratio")])
            );
        }
    }
    for size in report["sizes"].as_array().cloned().unwrap_or_default() {
        let (raw, ours) = (
            f(&size["raw_msgs_per_sec"]),
            f(&size["forward_msgs_per_sec"]),
        );
        println!(
            "{:<52} {raw:>14.0} {ours:>14.0} {:>8.4}",
            format!("acked msg/s, {} B", size["bytes"]),
            ours / raw
        );
    }
    let p = &report["protection"];
    for kind in ["plain", "secret", "secret_and_tls"] {
        println!(
            "{:<52} {:>10.0} msg/s ({:.3}×)  p50 {:>6.1} µs  p99 {:>6.1} µs",
            format!("protection: {kind}, 128 B"),
            f(&p[kind]["forward_msgs_per_sec"]),
            f(&p[kind]["forward_msgs_per_sec"]) / f(&p["plain"]["forward_msgs_per_sec"]),
            f(&p[kind]["p50_us"]),
            f(&p[kind]["p99_us"]),
        );
    }
    let b = &report["broadcast"];
    println!(
        "broadcast to 8, all live: {:.1} ms; one silent: {:.1} ms against a {} ms timeout ({:.3}×)",
        f(&b["all_live_ms"]),
        f(&b["one_silent_ms"]),
        b["timeout_ms"],
        f(&b["one_silent_ms"]) / f(&b["timeout_ms"])
    );
    let m = &report["memory"];
    println!(
        "memory: {:.0} bytes per pending ack; {:.1} MiB resident with 100,000 pending",
        f(&m["bytes_per_pending_ack"]),
        f(&m["rss_bytes_100k_pending"]) / 1048576.0
    );
    println!(
        "allocations per message (both nodes): {:.2}; false downs under load: {}; {:.0} s in all",
        f(&report["allocations"]["per_message"]),
        report["membership"]["false_downs"],
        f(&report["seconds"])
    );

    let d = &report["dispatcher"];
    println!(
        "{:<52} {:>14} {:>14.0} {:>8.4}",
        "  the same through a Dispatcher (2 workers, verdicts)",
        "",
        f(&d["forward_msgs_per_sec"]),
        f(&d["ratio_to_direct"])
    );
}

/// Writes `forward.json` and `forward-sizes.svg` into `dir`.
pub fn write(report: &Value, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("forward.json"),
        serde_json::to_string_pretty(report).unwrap(),
    )
    .unwrap();
    let sizes = report["sizes"].as_array().map_or(&[][..], |v| v);
    let points = |key: &str| -> Vec<(f64, f64)> {
        sizes
            .iter()
            .map(|s| {
                (
                    s["bytes"].as_f64().unwrap_or(1.0),
                    s[key].as_f64().unwrap_or(1.0),
                )
            })
            .collect()
    };
    let chart = Lines {
        title: "acked messages per second against message size".into(),
        x: "payload bytes".into(),
        y: "messages per second".into(),
        log: true,
        lines: vec![
            Line {
                name: "raw TCP".into(),
                points: points("raw_msgs_per_sec"),
                color: (0, 0, 255),
            },
            Line {
                name: "wamp-cluster".into(),
                points: points("forward_msgs_per_sec"),
                color: (255, 0, 0),
            },
        ],
    };
    if let Err(err) = chart.save(&dir.join("forward-sizes.svg"), (900, 520)) {
        eprintln!("the size chart could not be drawn: {err}");
    }
    println!(
        "wrote {} and forward-sizes.svg",
        dir.join("forward.json").display()
    );
}
