//! The admin HTTP API of a running two-node cluster, over real HTTP: every route, its JSON
//! shape, and its answers to bad requests.

mod common;

use std::time::Duration;

use common::{http, SERIAL};
use serde_json::Value;
use wamp_cluster::testkit::{node_config, tolerant, wait_until, within};
use wamp_cluster::Discard;
use wamp_cluster::{Node, NodeHandle, Status, Stopped};

async fn get(node: &NodeHandle, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", node.admin_addr().unwrap());
    let response = http().get(&url).send().await.expect("admin API answers");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

async fn get_json(node: &NodeHandle, path: &str) -> (u16, Value) {
    let (status, body) = get(node, path).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, json)
}

/// Every route answers with the documented shape; bad requests get a JSON error naming what is
/// wrong; a leave request reaches the program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_serves_every_route_with_its_documented_shape() {
    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let mut seed_config = node_config("node-a", &[], tolerant());
    seed_config.labels = [("zone".to_string(), "a".to_string())].into();
    let seed_addr = seed_config.gossip_addr;
    let a = Node::builder(seed_config, |_, _| Discard)
        .prometheus(prometheus)
        .start()
        .await
        .unwrap();
    let b = Node::builder(node_config("node-b", &[seed_addr], tolerant()), |_, _| {
        Discard
    })
    .start()
    .await
    .unwrap();
    wait_until(Duration::from_secs(15), "both nodes ready", || {
        a.membership()
            .view()
            .members()
            .iter()
            .filter(|m| m.live && m.status == Status::Ready)
            .count()
            == 2
    })
    .await;

    let (status, health) = get_json(&a, "/health").await;
    assert_eq!(status, 200);
    assert_eq!(
        health,
        serde_json::json!({"status": "ok", "node_id": "node-a"})
    );

    let (status, ready) = get_json(&a, "/ready").await;
    assert_eq!((status, &ready["status"]), (200, &Value::from("ready")));

    let (status, members) = get_json(&a, "/cluster/members").await;
    assert_eq!(status, 200);
    assert_eq!(members["self"], "node-a");
    let list = members["members"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let me = &list[0];
    let keys: Vec<&str> = me.as_object().unwrap().keys().map(String::as_str).collect();
    let mut expected = [
        "node_id",
        "generation",
        "gossip_addr",
        "forward_addr",
        "status",
        "live",
        "reachable",
        "labels",
    ];
    expected.sort();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    assert_eq!(me["node_id"], "node-a");
    assert_eq!(
        me["generation"],
        Value::from(a.membership().generation().to_string())
    );
    assert_eq!(me["labels"]["zone"], "a");
    assert_eq!(me["live"], true);
    assert_eq!(me["reachable"], true);
    assert_eq!(list[1]["node_id"], "node-b");
    assert_eq!(list[1]["status"], "ready");

    let (status, ring) = get_json(&a, "/cluster/ring?key=com.example.add&replicas=2").await;
    assert_eq!(status, 200);
    assert_eq!(ring["key"], "com.example.add");
    let mut owners: Vec<&str> = ring["owners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        owners[0],
        a.membership()
            .view()
            .ring()
            .owner("com.example.add")
            .unwrap()
            .as_str()
    );
    owners.sort();
    assert_eq!(owners, ["node-a", "node-b"]);
    let (_, one) = get_json(&a, "/cluster/ring?key=k").await;
    assert_eq!(one["owners"].as_array().unwrap().len(), 1);

    for bad in [
        "/cluster/ring",
        "/cluster/ring?key=k&replicas=0",
        "/cluster/ring?key=k&replicas=many",
    ] {
        let (status, body) = get_json(&a, bad).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"], "bad_request", "{bad}");
    }
    let (status, body) = get_json(&a, "/no/such/route").await;
    assert_eq!((status, &body["error"]), (404, &Value::from("not_found")));

    let (status, text) = get(&a, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("wamp_cluster_live_members{node=\"node-a\",status=\"ready\"} 2"),
        "{text}"
    );
    assert!(text.contains("wamp_cluster_membership_events_total{node=\"node-a\",kind=\"joined\"}"));
    // The second node was built without a recorder handle.
    assert_eq!(get(&b, "/metrics").await.0, 404);

    let response = http()
        .post(format!("http://{}/cluster/leave", b.admin_addr().unwrap()))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // The node carries the leave out by itself, and says so.
    assert_eq!(
        within(Duration::from_secs(15), "the leave ends", b.stopped()).await,
        Stopped::LeaveRequested
    );
    // Stopped once: a leave asked now ends at once with how it stopped.
    assert_eq!(b.leave().await, Stopped::LeaveRequested);
    wait_until(Duration::from_secs(15), "a sees b leave", || {
        a.membership()
            .view()
            .member("node-b")
            .is_some_and(|m| m.status == Status::Leaving)
    })
    .await;
    a.abort().await;
}

/// A node answers 503 on `/ready` until it is ready, and again once it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_joining_and_while_leaving() {
    let _serial = SERIAL.lock().await;
    let unreachable_seed = wamp_cluster::testkit::free_addr();
    let mut config = node_config("lonely", &[unreachable_seed], tolerant());
    // Wide windows: the first request must land before the join timeout, the last one during
    // the leave.
    config.gossip.join_timeout_ms = Duration::from_millis(3000);
    config.gossip.leave_rounds = std::num::NonZeroU32::new(25).unwrap();
    let node = Node::builder(config, |_, _| Discard).start().await.unwrap();
    let (status, body) = get_json(&node, "/ready").await;
    assert_eq!((status, &body["status"]), (503, &Value::from("joining")));
    wait_until(
        Duration::from_secs(10),
        "ready after the join timeout",
        || {
            node.membership()
                .view()
                .self_member()
                .is_some_and(|m| m.status == Status::Ready)
        },
    )
    .await;
    assert_eq!(get(&node, "/ready").await.0, 200);
    let membership = node.membership().clone();
    let admin = node.admin_addr().unwrap();
    let node = std::sync::Arc::new(node);
    let leaving = {
        let node = node.clone();
        tokio::spawn(async move { node.leave().await })
    };
    wait_until(Duration::from_secs(5), "status leaving", || {
        membership
            .view()
            .self_member()
            .is_some_and(|m| m.status == Status::Leaving)
    })
    .await;
    let status = http()
        .get(format!("http://{admin}/ready"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 503);
    assert_eq!(leaving.await.unwrap(), Stopped::Left);
}

async fn post_json(node: &NodeHandle, path: &str, body: &str) -> (u16, Value) {
    let response = http()
        .post(format!("http://{}{path}", node.admin_addr().unwrap()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("admin API answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `/cluster/probe`, `/cluster/broadcast` and `/stats` across three nodes, one of them stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_broadcast_and_stats_routes_tell_the_truth() {
    let _serial = SERIAL.lock().await;
    let seed = node_config("node-a", &[], tolerant());
    let seed_addr = seed.gossip_addr;
    let a = Node::builder(seed, |_, _| Discard).start().await.unwrap();
    let b = Node::builder(node_config("node-b", &[seed_addr], tolerant()), |_, _| {
        Discard
    })
    .start()
    .await
    .unwrap();
    let c = Node::builder(node_config("node-c", &[seed_addr], tolerant()), |_, _| {
        Discard
    })
    .start()
    .await
    .unwrap();
    wait_until(Duration::from_secs(15), "all ready", || {
        a.membership().view().broadcast_targets().len() == 2
    })
    .await;

    let (status, ok) = post_json(
        &a,
        "/cluster/probe",
        r#"{"node":"node-b","timeout_ms":2000}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ok["ok"], true, "{ok}");
    assert!(ok["rtt_us"].as_u64().is_some());
    let (_, unknown) = post_json(&a, "/cluster/probe", r#"{"node":"nobody"}"#).await;
    assert_eq!(
        (&unknown["ok"], &unknown["error"]),
        (&Value::from(false), &Value::from("unknown_node"))
    );
    for bad in [
        r#"{"timeout_ms":1}"#,
        r#"{"node":"node-b","timeout_ms":0}"#,
        "nonsense",
    ] {
        let (status, body) = post_json(&a, "/cluster/probe", bad).await;
        assert_eq!(
            (status, &body["error"]),
            (400, &Value::from("bad_request")),
            "{bad}"
        );
    }

    let (status, all) = post_json(&a, "/cluster/broadcast", r#"{"timeout_ms":2000}"#).await;
    assert_eq!(status, 200);
    assert_eq!(
        all,
        serde_json::json!({"good": ["node-b", "node-c"], "bad": []})
    );

    c.abort().await;
    let (_, one_down) = post_json(&a, "/cluster/broadcast", r#"{"timeout_ms":500}"#).await;
    assert_eq!(one_down["good"], serde_json::json!(["node-b"]));
    assert_eq!(one_down["bad"][0]["node"], "node-c");
    assert_eq!(one_down["bad"][0]["error"], "timeout", "{one_down}");

    let from = wamp_cluster::PeerId::session("realm1", "node-a", 1);
    let to = wamp_cluster::PeerId::session("realm1", "node-b", 2);
    let message = wamp_cluster::wamp::WampMessage::Interrupt {
        request: 7,
        options: Default::default(),
    };
    a.forwarder()
        .forward(from, to, message, &Default::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(5), "the ack counted", || {
        a.forwarder()
            .stats()
            .get("node-b")
            .is_some_and(|s| s.acked == 1)
    })
    .await;
    let (status, stats) = get_json(&a, "/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["peers"]["node-b"]["sent"], 1, "{stats}");
    assert_eq!(stats["peers"]["node-b"]["acked"], 1, "{stats}");
    let (_, stats) = get_json(&b, "/stats").await;
    // What the receiver's listener counted of node-a's messages.
    assert_eq!(stats["peers"]["node-a"]["delivered"], 1, "{stats}");
    assert_eq!(stats["peers"]["node-a"]["refused"], 0, "{stats}");
    assert_eq!(stats["peers"]["node-a"]["expired"], 0, "{stats}");
    a.abort().await;
    b.abort().await;
}

/// With `admin_token_file` set, the routes that change or probe anything need the bearer
/// token: without it, or with another, 401 and counted, and nothing happens; the read-only
/// routes stay open; with it, the request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_that_change_or_probe_need_the_admin_token_when_one_is_set() {
    let _serial = SERIAL.lock().await;
    let prometheus = wamp_cluster::metrics::install_prometheus().unwrap();
    let dir = std::env::temp_dir().join(format!("wamp-cluster-admin-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "  s3cret-token-of-the-admin-api\n").unwrap();
    let mut config = node_config("node-t", &[], tolerant());
    config.admin_token_file = Some(token_file);
    let a = Node::builder(config, |_, _| Discard)
        .prometheus(prometheus)
        .start()
        .await
        .unwrap();
    let send = |path: &str, token: Option<&str>| {
        let mut request = http()
            .post(format!("http://{}{path}", a.admin_addr().unwrap()))
            .header("content-type", "application/json")
            .body("{}");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send()
    };
    for (path, token) in [
        ("/cluster/leave", None),
        ("/cluster/leave", Some("s3cret-token-of-the-admin-apI")),
        ("/cluster/broadcast", Some("")),
        (
            "/cluster/probe",
            Some("s3cret-token-of-the-admin-api-and-more"),
        ),
    ] {
        let response = send(path, token).await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path} {token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized", "{body}");
    }
    // Nothing happened: the node did not start to leave, and it still serves.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.membership().view().self_member().map(|m| m.status),
        Some(Status::Ready)
    );
    assert!(futures_util::FutureExt::now_or_never(a.stopped()).is_none());
    let (status, _) = get_json(&a, "/health").await;
    assert_eq!(status, 200);
    let (status, _) = get_json(&a, "/cluster/members").await;
    assert_eq!(status, 200);
    // The right token, in any case of the scheme's name.
    let response = send("/cluster/broadcast", Some("s3cret-token-of-the-admin-api"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = http()
        .post(format!(
            "http://{}/cluster/broadcast",
            a.admin_addr().unwrap()
        ))
        .header("authorization", "bearer s3cret-token-of-the-admin-api")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (_, metrics) = get(&a, "/metrics").await;
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("wamp_cluster_admin_unauthorized_total") && l.contains("node=\"node-t\"")
        })
        .unwrap_or_else(|| panic!("no refusal counter in {metrics}"));
    assert!(refused.ends_with(" 4"), "{refused}");
    a.abort().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a web page can make a browser send is refused, and the node keeps running: a state
/// change without `content-type: application/json` (a form post), one from a page of another
/// origin, and any request whose `Host` is a name the node does not answer to (DNS
/// rebinding). The node's own address, `localhost` on loopback and the names of
/// `admin_allowed_hosts` are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_web_page_could_send_are_refused_and_the_node_keeps_running() {
    let _serial = SERIAL.lock().await;
    let mut config = node_config("node-a", &[], tolerant());
    config.admin_allowed_hosts = vec!["admin.example.internal".into()];
    let a = Node::builder(config, |_, _| Discard).start().await.unwrap();
    let addr = a.admin_addr().unwrap();
    let port = addr.port();
    let send = |path: &str, headers: &[(&str, String)], body: Option<&str>| {
        let url = format!("http://{addr}{path}");
        let mut request = match body {
            Some(body) => http().post(url).body(body.to_owned()),
            None => http().get(url),
        };
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        async move {
            let response = request.send().await.expect("admin API answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body["error"].as_str().unwrap_or("").to_string())
        }
    };
    let json = ("content-type", "application/json".to_string());
    let refused = [
        ("/cluster/leave", vec![], 415, "unsupported_media_type"),
        (
            "/cluster/leave",
            vec![("content-type", "text/plain".into())],
            415,
            "unsupported_media_type",
        ),
        (
            "/cluster/leave",
            vec![
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("origin", "http://evil.example".into()),
            ],
            403,
            "forbidden",
        ),
        (
            "/cluster/leave",
            vec![json.clone(), ("origin", "http://evil.example".into())],
            403,
            "forbidden",
        ),
        (
            "/cluster/leave",
            vec![json.clone(), ("origin", "null".into())],
            403,
            "forbidden",
        ),
        (
            "/cluster/leave",
            vec![json.clone(), ("host", format!("rebound.example:{port}"))],
            403,
            "forbidden",
        ),
    ];
    for (path, headers, status, error) in refused {
        let answer = send(path, &headers, Some("")).await;
        assert_eq!(answer, (status, error.to_string()), "{headers:?}");
    }
    // DNS rebinding reads too: a page of rebound.example reads nothing.
    let rebound = [("host", format!("rebound.example:{port}"))];
    assert_eq!(send("/cluster/members", &rebound, None).await.0, 403);
    assert_eq!(
        a.membership().view().self_member().map(|m| m.status),
        Some(Status::Ready),
        "nothing refused stopped the node"
    );
    // Served: the bound address, localhost on loopback, an allowed name, its own origin.
    for host in [
        addr.to_string(),
        format!("localhost:{port}"),
        format!("admin.example.internal:{port}"),
    ] {
        let headers = [("host", host.clone())];
        assert_eq!(send("/health", &headers, None).await.0, 200, "{host}");
        let same_origin = [
            ("host", host.clone()),
            ("origin", format!("http://{host}")),
            json.clone(),
        ];
        let probe = send("/cluster/probe", &same_origin, Some(r#"{"node":"nobody"}"#)).await;
        assert_eq!(probe.1, "unknown_node", "{host}");
    }
    let leave = send("/cluster/leave", &[json], Some("")).await;
    assert_eq!(leave.0, 200);
    assert_eq!(
        within(Duration::from_secs(15), "the leave ends", a.stopped()).await,
        Stopped::LeaveRequested
    );
}
