//! The router in the `wamp-cluster` program, as a real process: clients on its WebSocket
//! port, its admin routes and metrics, ten thousand connections that send nothing, and bad
//! `[router]` settings.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http;
use serde_json::Value as Json;
use wamp_cluster::client::{Client, ClientOptions};
use wamp_cluster::testkit::{free_addr, Reaped};
use wamp_cluster::wamp::serializer::Serializer;
use wamp_cluster::wamp::{Dict, Payload, Value};

const BIN: &str = env!("CARGO_BIN_EXE_wamp-cluster");

/// A node process with its router on a free port; `extra` flags added.
struct Node {
    _process: Reaped,
    ws: SocketAddr,
    admin: SocketAddr,
    log: std::path::PathBuf,
}

impl Node {
    fn start(dir: &Path, extra: &[&str]) -> Node {
        let (ws, admin) = (free_addr(), free_addr());
        let log = dir.join("node.log");
        let process = Reaped(
            Command::new(BIN)
                .args(["node", "--node-id", "r1"])
                .args(["--gossip-addr", &free_addr().to_string()])
                .args(["--forward-addr", &free_addr().to_string()])
                .args(["--admin-addr", &admin.to_string()])
                .args(["--router-ws-addr", &ws.to_string()])
                .args(extra)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("wamp-cluster starts"),
        );
        common::wait_listening(ws, Duration::from_secs(20));
        Node {
            _process: process,
            ws,
            admin,
            log,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    async fn get(&self, path: &str) -> String {
        let url = format!("http://{}{path}", self.admin);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match http().get(&url).send().await {
                Ok(r) => return r.text().await.expect("a body"),
                Err(e) => {
                    assert!(Instant::now() < deadline, "{url}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn json(&self, path: &str) -> Json {
        serde_json::from_str(&self.get(path).await).unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The value of a Prometheus series whose line contains every one of `parts`.
fn metric(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// With no `[router]` section the program serves `realm1` to anonymous clients; the admin API
/// lists their sessions, registrations and subscriptions, and the metrics count them per
/// realm.
#[tokio::test]
async fn the_program_serves_clients_and_its_admin_api_shows_the_routing_table() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let client = Client::connect(
        &node.url(),
        ClientOptions::new("realm1").serializer(Serializer::Msgpack),
    )
    .await
    .unwrap();
    client
        .register("com.example.add", Dict::new(), |inv| async move {
            let Payload::Args(args) = inv.payload else {
                return Ok(Payload::Empty);
            };
            let sum: i64 = args
                .iter()
                .filter_map(|v| match v {
                    Value::Integer(i) => Some(*i),
                    _ => None,
                })
                .sum();
            Ok(Payload::Args(vec![Value::Integer(sum)]))
        })
        .await
        .unwrap();
    let _sub = client
        .subscribe(
            "com.example.",
            [("match".to_owned(), Value::String("prefix".into()))]
                .into_iter()
                .collect(),
        )
        .await
        .unwrap();
    let r = client
        .call(
            "com.example.add",
            Payload::Args(vec![Value::Integer(2), Value::Integer(3)]),
        )
        .await
        .unwrap();
    assert_eq!(r.payload, Payload::Args(vec![Value::Integer(5)]));
    let sessions = node.json("/router/sessions").await;
    let realm = &sessions["realms"][0];
    assert_eq!(realm["realm"], "realm1");
    assert_eq!(realm["entries"][0]["session"], client.session());
    assert_eq!(realm["entries"][0]["serializer"], "msgpack");
    let registrations = node.json("/router/registrations").await;
    let entry = &registrations["realms"][0]["entries"][0];
    assert_eq!(entry["uri"], "com.example.add");
    assert_eq!(entry["callees"], serde_json::json!([client.session()]));
    let subscriptions = node.json("/router/subscriptions").await;
    assert_eq!(subscriptions["realms"][0]["entries"][0]["match"], "prefix");
    let metrics = node.get("/metrics").await;
    let realm1 = "realm=\"realm1\"";
    assert_eq!(
        metric(&metrics, "wamp_cluster_router_sessions", &[realm1]),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "wamp_cluster_router_messages_in_total",
            &[realm1, "type=\"CALL\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "wamp_cluster_router_messages_out_total",
            &[realm1, "type=\"RESULT\""]
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "wamp_cluster_router_call_latency_seconds_count",
            &[realm1]
        ) >= 1.0
    );
    let _ = client.call("com.example.none", Payload::Empty).await;
    let metrics = node.get("/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "wamp_cluster_router_errors_total",
            &[realm1, "uri=\"wamp.error.no_such_procedure\""]
        ),
        1.0
    );
    client.leave().await.unwrap();
    assert!(node.log_text().contains("WAMP router ready"));
}

/// Ten thousand connections that never complete a handshake or say HELLO are each closed
/// after `router.hello_timeout_ms` and counted, while a client's calls keep passing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_silent_connections_are_closed_and_counted_while_calls_pass() {
    const SILENT: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--router-hello-timeout-ms", "3000"]);
    let callee = Client::connect(&node.url(), ClientOptions::new("realm1"))
        .await
        .unwrap();
    callee
        .register("com.example.ping", Dict::new(), |_| async {
            Ok(Payload::Args(vec![Value::String("pong".into())]))
        })
        .await
        .unwrap();
    let caller = Client::connect(&node.url(), ClientOptions::new("realm1"))
        .await
        .unwrap();
    // Open the silent ones in waves, calling between waves.
    let mut silent = Vec::with_capacity(SILENT);
    let mut calls = 0;
    let started = Instant::now();
    while silent.len() < SILENT {
        let wave: Vec<_> = (0..250)
            .map(|_| tokio::spawn(tokio::net::TcpStream::connect(node.ws)))
            .collect();
        for w in wave {
            if let Ok(Ok(stream)) = w.await {
                silent.push(stream);
            }
        }
        let r = caller
            .call("com.example.ping", Payload::Empty)
            .await
            .unwrap();
        assert_eq!(r.payload, Payload::Args(vec![Value::String("pong".into())]));
        calls += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "opening took too long"
        );
    }
    println!(
        "{} silent connections opened in {:.1} s, {calls} calls passed meanwhile",
        silent.len(),
        started.elapsed().as_secs_f64()
    );
    // Every one is closed by the router: reading gives the end of the stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut closed = 0;
    use tokio::io::AsyncReadExt;
    for mut stream in silent {
        let mut buf = [0u8; 64];
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => {}
            Err(_) => break,
        }
    }
    let warnings: Vec<String> = node
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(5)
        .map(String::from)
        .collect();
    assert_eq!(
        closed, SILENT,
        "every silent connection was closed; the node's warnings: {warnings:#?}"
    );
    for _ in 0..100 {
        caller
            .call("com.example.ping", Payload::Empty)
            .await
            .unwrap();
    }
    let metrics = node.get("/metrics").await;
    let counted = metric(
        &metrics,
        "wamp_cluster_router_connections_refused_total",
        &["reason=\"hello_timeout\""],
    );
    assert!(
        counted >= SILENT as f64,
        "counted {counted}: {}",
        node.log_text()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A bad `[router]` value, from a flag or the file, stops the program with exit code 2 and a
/// message that names the key.
#[test]
fn a_bad_router_setting_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["node", "--node-id", "bad"])
            .args(["--gossip-addr", &free_addr().to_string()])
            .args(["--forward-addr", &free_addr().to_string()])
            .args(["--admin-addr", &free_addr().to_string()])
            .args(["--router-ws-addr", &free_addr().to_string()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--router-ping-interval-ms", "5"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("router.ping_interval_ms"), "{err}");
    let (code, err) = run(&["--router-max-message-bytes", "lots"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("router.max_message_bytes"), "{err}");
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "[[router.realms]]\nname = \"r\"\nanonymous_role = \"nobody\"\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("router.realms[0].anonymous_role"), "{err}");
    std::fs::write(
        &file,
        "[[router.realms]]\nname = \"r\"\n[[router.realms.roles]]\nname = \"u\"\n\
         [[router.realms.users]]\nauthid = \"a\"\nrole = \"u\"\nticket_file = \"/nonexistent/ticket\"\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("router.realms[0].users[0].ticket_file"),
        "{err}"
    );
}
