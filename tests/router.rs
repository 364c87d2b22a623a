//! The router on one node, driven by the crate's own client over real sockets: every
//! transport and serializer, RPC (policies, progressive results, timeouts, cancel, callee
//! loss), PubSub (patterns, exclusion, eligibility, acknowledgement, order), authentication
//! and authorization, and bad clients that cannot stop it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wamp_cluster::client::{
    CallOptions, Client, ClientError, ClientOptions, Credentials, WampError,
};
use wamp_cluster::router::config::RouterConfig;
use wamp_cluster::router::Router;
use wamp_cluster::wamp::serializer::Serializer;
use wamp_cluster::wamp::{Dict, Payload, Value};

fn dict(pairs: &[(&str, Value)]) -> Dict {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn s(text: &str) -> Value {
    Value::String(text.into())
}

fn loopback() -> std::net::SocketAddr {
    ([127, 0, 0, 1], 0).into()
}

async fn router_with(mut config: RouterConfig) -> Router {
    config.ws_addr = loopback();
    config.rawsocket_addr = Some(loopback());
    Router::start(config, "test-node", &wamp_cluster::TlsConfig::default())
        .await
        .expect("router starts")
}

async fn router() -> Router {
    router_with(RouterConfig::default()).await
}

/// The URLs of a router: WebSocket and RawSocket.
fn urls(router: &Router) -> [String; 2] {
    [
        router.ws_url(),
        format!("rs://{}", router.rawsocket_addr().unwrap()),
    ]
}

async fn join(url: &str, serializer: Serializer) -> Client {
    Client::connect(url, ClientOptions::new("realm1").serializer(serializer))
        .await
        .unwrap_or_else(|e| panic!("{url} {serializer}: {e}"))
}

fn wamp_error(err: ClientError) -> WampError {
    match err {
        ClientError::Error(e) => *e,
        other => panic!("expected an ERROR, got {other:?}"),
    }
}

/// A call with arguments and keyword arguments reaches its callee and its result comes back,
/// over WebSocket and RawSocket, with JSON, msgpack and CBOR, between clients that speak
/// different serializers.
#[tokio::test]
async fn a_call_and_its_result_cross_every_transport_and_serializer() {
    let router = router().await;
    for url in urls(&router) {
        for (i, serializer) in Serializer::ALL.into_iter().enumerate() {
            let callee = join(&url, serializer).await;
            let other = Serializer::ALL[(i + 1) % 3];
            let caller = join(&url, other).await;
            let procedure = format!("com.example.echo.{i}");
            callee
                .register(
                    &procedure,
                    Dict::new(),
                    |inv| async move { Ok(inv.payload) },
                )
                .await
                .unwrap();
            let payload = Payload::ArgsKw(
                vec![
                    s("héllo ✓"),
                    Value::Integer(-7),
                    Value::Bytes(vec![0, 255]),
                    Value::Float(1.5),
                ],
                dict(&[(
                    "nested",
                    Value::List(vec![Value::Dict(dict(&[("k", Value::Null)]))]),
                )]),
            );
            let result = caller.call(&procedure, payload.clone()).await.unwrap();
            assert_eq!(result.payload, payload, "{url} {serializer} -> {other}");
            caller.leave().await.unwrap();
            callee.leave().await.unwrap();
        }
    }
    router.shutdown().await;
}

/// An application error's URI, arguments and keyword arguments reach the caller untouched;
/// an unknown procedure, a second `single` registration and an invalid URI get the spec's
/// errors.
#[tokio::test]
async fn errors_pass_untouched_and_the_router_answers_with_the_specs_uris() {
    let router = router().await;
    let url = router.ws_url();
    let callee = join(&url, Serializer::Json).await;
    let caller = join(&url, Serializer::Msgpack).await;
    callee
        .register("com.example.fail", Dict::new(), |_| async {
            Err(WampError::new(
                "com.example.error.bad",
                Payload::ArgsKw(vec![s("why")], dict(&[("code", Value::Integer(42))])),
            ))
        })
        .await
        .unwrap();
    let err = wamp_error(
        caller
            .call("com.example.fail", Payload::Empty)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.uri, "com.example.error.bad");
    assert_eq!(
        err.payload,
        Payload::ArgsKw(vec![s("why")], dict(&[("code", Value::Integer(42))]))
    );
    let err = wamp_error(
        caller
            .call("com.example.none", Payload::Empty)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.uri, "wamp.error.no_such_procedure");
    let again = caller
        .register("com.example.fail", Dict::new(), |_| async {
            Ok(Payload::Empty)
        })
        .await;
    assert_eq!(
        wamp_error(again.unwrap_err()).uri,
        "wamp.error.procedure_already_exists"
    );
    for bad in ["com..x", "com.my app", "wamp.session.mine"] {
        let err = caller
            .register(bad, Dict::new(), |_| async { Ok(Payload::Empty) })
            .await;
        assert_eq!(
            wamp_error(err.unwrap_err()).uri,
            "wamp.error.invalid_uri",
            "{bad}"
        );
    }
    let err = caller.call("com..x", Payload::Empty).await.unwrap_err();
    assert_eq!(wamp_error(err).uri, "wamp.error.invalid_uri");
    let err = caller.unregister(12345).await.unwrap_err();
    assert_eq!(wamp_error(err).uri, "wamp.error.no_such_registration");
    let err = caller.unsubscribe(12345).await.unwrap_err();
    assert_eq!(wamp_error(err).uri, "wamp.error.no_such_subscription");
    router.shutdown().await;
}

/// Progressive results arrive in order before the final result; a caller that did not ask
/// for them gets the final result only.
#[tokio::test]
async fn progressive_results_arrive_in_order_before_the_final_one() {
    let router = router().await;
    let url = router.ws_url();
    let callee = join(&url, Serializer::Cbor).await;
    let caller = join(&url, Serializer::Json).await;
    callee
        .register("com.example.count", Dict::new(), |inv| async move {
            if inv.receives_progress() {
                for i in 0..5 {
                    inv.progress(Payload::Args(vec![Value::Integer(i)]))
                        .await
                        .map_err(|e| WampError::new("x", Payload::Args(vec![s(&e.to_string())])))?;
                }
            }
            Ok(Payload::Args(vec![s("done")]))
        })
        .await
        .unwrap();
    let mut call = caller
        .call_with(
            "com.example.count",
            Payload::Empty,
            CallOptions::default(),
            true,
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(p) = call.progress.recv().await {
        assert_eq!(p.details.get("progress"), Some(&Value::Bool(true)));
        seen.push(p.payload.clone());
        if seen.len() == 5 {
            break;
        }
    }
    assert_eq!(
        seen,
        (0..5)
            .map(|i| Payload::Args(vec![Value::Integer(i)]))
            .collect::<Vec<_>>()
    );
    let result = call.result(Duration::from_secs(5)).await.unwrap();
    assert_eq!(result.payload, Payload::Args(vec![s("done")]));
    let plain = caller
        .call("com.example.count", Payload::Empty)
        .await
        .unwrap();
    assert_eq!(plain.payload, Payload::Args(vec![s("done")]));
    router.shutdown().await;
}

/// A callee that takes longer than the call's timeout: the caller gets `wamp.error.timeout`
/// when it passes, and the callee an INTERRUPT.
#[tokio::test]
async fn a_call_past_its_timeout_ends_with_wamp_error_timeout_and_interrupts_the_callee() {
    let router = router().await;
    let url = router.ws_url();
    let callee = join(&url, Serializer::Json).await;
    let caller = join(&url, Serializer::Json).await;
    let interrupted = Arc::new(AtomicUsize::new(0));
    let seen = interrupted.clone();
    callee
        .register("com.example.slow", Dict::new(), move |inv| {
            let seen = seen.clone();
            async move {
                tokio::select! {
                    () = inv.interrupted.cancelled() => { seen.fetch_add(1, Ordering::SeqCst); }
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
                Err(WampError::new("wamp.error.canceled", Payload::Empty))
            }
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let call = caller
        .call_with(
            "com.example.slow",
            Payload::Empty,
            CallOptions {
                timeout_ms: 300,
                ..CallOptions::default()
            },
            false,
        )
        .await
        .unwrap();
    let err = wamp_error(call.result(Duration::from_secs(5)).await.unwrap_err());
    assert_eq!(err.uri, "wamp.error.timeout");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while interrupted.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        interrupted.load(Ordering::SeqCst),
        1,
        "the callee was interrupted"
    );
    router.shutdown().await;
}

/// CANCEL `skip` answers at once and tells the callee nothing; `killnowait` answers at once
/// and interrupts; `kill` interrupts and the caller's ERROR is the callee's answer.
#[tokio::test]
async fn cancel_skip_kill_and_killnowait_behave_as_the_spec_says() {
    let router = router().await;
    let url = router.ws_url();
    let callee = join(&url, Serializer::Msgpack).await;
    let caller = join(&url, Serializer::Msgpack).await;
    let interrupts = Arc::new(AtomicUsize::new(0));
    let seen = interrupts.clone();
    callee
        .register("com.example.wait", Dict::new(), move |inv| {
            let seen = seen.clone();
            async move {
                tokio::select! {
                    () = inv.interrupted.cancelled() => {
                        seen.fetch_add(1, Ordering::SeqCst);
                        Err(WampError::new("com.example.stopped", Payload::Args(vec![s("by interrupt")])))
                    }
                    () = tokio::time::sleep(Duration::from_secs(3)) => Ok(Payload::Args(vec![s("late")])),
                }
            }
        })
        .await
        .unwrap();
    let start = |mode: &'static str| {
        let caller = caller.clone();
        async move {
            let call = caller
                .call_with(
                    "com.example.wait",
                    Payload::Empty,
                    CallOptions::default(),
                    false,
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            call.cancel(mode).await.unwrap();
            let at = std::time::Instant::now();
            let err = wamp_error(call.result(Duration::from_secs(10)).await.unwrap_err());
            (err.uri, at.elapsed())
        }
    };
    let (uri, took) = start("skip").await;
    assert_eq!(uri, "wamp.error.canceled");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        interrupts.load(Ordering::SeqCst),
        0,
        "skip tells the callee nothing"
    );
    let (uri, _) = start("killnowait").await;
    assert_eq!(uri, "wamp.error.canceled");
    let (uri, _) = start("kill").await;
    assert_eq!(uri, "com.example.stopped", "kill: the callee's own answer");
    assert_eq!(interrupts.load(Ordering::SeqCst), 2);
    router.shutdown().await;
}

/// A callee that disconnects in the middle of calls fails each with `wamp.error.canceled`,
/// and its registration is gone.
#[tokio::test]
async fn a_callee_that_disconnects_mid_call_fails_its_calls_with_canceled() {
    let router = router().await;
    let url = format!("rs://{}", router.rawsocket_addr().unwrap());
    let callee = join(&url, Serializer::Cbor).await;
    let caller = join(&url, Serializer::Json).await;
    callee
        .register("com.example.hang", Dict::new(), |_| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Payload::Empty)
        })
        .await
        .unwrap();
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(
            caller
                .call_with(
                    "com.example.hang",
                    Payload::Empty,
                    CallOptions::default(),
                    false,
                )
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    callee.disconnect();
    for call in calls {
        let err = wamp_error(call.result(Duration::from_secs(5)).await.unwrap_err());
        assert_eq!(err.uri, "wamp.error.canceled");
    }
    let err = wamp_error(
        caller
            .call("com.example.hang", Payload::Empty)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.uri, "wamp.error.no_such_procedure");
    router.shutdown().await;
}

/// Shared registrations: roundrobin spreads calls evenly, first and last stick to one
/// callee, random reaches every callee; a different policy is refused.
#[tokio::test]
async fn shared_registrations_pick_callees_by_their_policy() {
    let router = router().await;
    let url = router.ws_url();
    for policy in ["roundrobin", "random", "first", "last"] {
        let procedure = format!("com.example.shared.{policy}");
        let mut callees = Vec::new();
        for i in 0..3 {
            let callee = join(&url, Serializer::Json).await;
            callee
                .register(
                    &procedure,
                    dict(&[("invoke", s(policy))]),
                    move |_| async move { Ok(Payload::Args(vec![Value::Integer(i)])) },
                )
                .await
                .unwrap();
            callees.push(callee);
        }
        let other = join(&url, Serializer::Json).await;
        let refused = other
            .register(&procedure, dict(&[("invoke", s("single"))]), |_| async {
                Ok(Payload::Empty)
            })
            .await;
        assert_eq!(
            wamp_error(refused.unwrap_err()).uri,
            "wamp.error.procedure_already_exists"
        );
        let mut counts = [0usize; 3];
        for _ in 0..90 {
            let r = other.call(&procedure, Payload::Empty).await.unwrap();
            let Payload::Args(args) = r.payload else {
                panic!()
            };
            let Value::Integer(i) = args[0] else { panic!() };
            counts[i as usize] += 1;
        }
        match policy {
            "roundrobin" => assert_eq!(counts, [30, 30, 30]),
            "first" => assert_eq!(counts, [90, 0, 0]),
            "last" => assert_eq!(counts, [0, 0, 90]),
            _ => assert!(counts.iter().all(|&c| c > 5), "{policy}: {counts:?}"),
        }
    }
    router.shutdown().await;
}

/// A prefix and a wildcard registration: the call carries `details.procedure`, an exact one
/// wins over both.
#[tokio::test]
async fn pattern_registrations_match_and_disclose_the_procedure() {
    let router = router().await;
    let url = router.ws_url();
    let callee = join(&url, Serializer::Json).await;
    let echo_details = |inv: wamp_cluster::client::Invocation| async move {
        Ok(Payload::ArgsKw(vec![], inv.details))
    };
    callee
        .register(
            "com.example.",
            dict(&[("match", s("prefix"))]),
            echo_details,
        )
        .await
        .unwrap();
    callee
        .register("com..wild", dict(&[("match", s("wildcard"))]), echo_details)
        .await
        .unwrap();
    callee
        .register("com.example.exact", Dict::new(), |_| async {
            Ok(Payload::Args(vec![s("exact")]))
        })
        .await
        .unwrap();
    let caller = join(&url, Serializer::Msgpack).await;
    let r = caller
        .call("com.example.anything.deep", Payload::Empty)
        .await
        .unwrap();
    let Payload::ArgsKw(_, details) = r.payload else {
        panic!("{r:?}")
    };
    assert_eq!(
        details.get("procedure"),
        Some(&s("com.example.anything.deep"))
    );
    let r = caller.call("com.other.wild", Payload::Empty).await.unwrap();
    let Payload::ArgsKw(_, details) = r.payload else {
        panic!("{r:?}")
    };
    assert_eq!(details.get("procedure"), Some(&s("com.other.wild")));
    let r = caller
        .call("com.example.exact", Payload::Empty)
        .await
        .unwrap();
    assert_eq!(r.payload, Payload::Args(vec![s("exact")]));
    router.shutdown().await;
}

/// With `disclose_me`, the callee sees the caller's session, authid and authrole.
#[tokio::test]
async fn a_caller_that_discloses_itself_is_identified_to_the_callee() {
    let router = router().await;
    let url = router.ws_url();
    let callee = join(&url, Serializer::Json).await;
    callee
        .register("com.example.who", Dict::new(), |inv| async move {
            Ok(Payload::ArgsKw(vec![], inv.details))
        })
        .await
        .unwrap();
    let caller = join(&url, Serializer::Json).await;
    let r = caller
        .call_with(
            "com.example.who",
            Payload::Empty,
            CallOptions {
                disclose_me: true,
                ..CallOptions::default()
            },
            false,
        )
        .await
        .unwrap()
        .result(Duration::from_secs(5))
        .await
        .unwrap();
    let Payload::ArgsKw(_, details) = r.payload else {
        panic!()
    };
    assert_eq!(
        details.get("caller"),
        Some(&Value::Integer(caller.session() as i64))
    );
    assert_eq!(details.get("caller_authrole"), Some(&s("anonymous")));
    let r = caller
        .call("com.example.who", Payload::Empty)
        .await
        .unwrap();
    let Payload::ArgsKw(_, details) = r.payload else {
        panic!()
    };
    assert_eq!(details.get("caller"), None, "not disclosed unless asked");
    router.shutdown().await;
}

async fn next_event(sub: &mut wamp_cluster::client::Subscription) -> wamp_cluster::client::Event {
    tokio::time::timeout(Duration::from_secs(5), sub.events.recv())
        .await
        .expect("an event within 5 s")
        .expect("the subscription is open")
}

async fn no_event(sub: &mut wamp_cluster::client::Subscription) {
    if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), sub.events.recv()).await {
        panic!("unexpected event {e:?}");
    }
}

/// Exact, prefix and wildcard subscriptions each receive a matching event once, the pattern
/// ones with `details.topic`; `acknowledge` gets PUBLISHED with the publication id the events
/// carry.
#[tokio::test]
async fn subscriptions_of_each_policy_receive_matching_events_and_acknowledge_gets_published() {
    let router = router().await;
    let url = router.ws_url();
    let subscriber = join(&url, Serializer::Cbor).await;
    let mut exact = subscriber
        .subscribe("com.example.topic.a", Dict::new())
        .await
        .unwrap();
    let mut prefix = subscriber
        .subscribe("com.example.", dict(&[("match", s("prefix"))]))
        .await
        .unwrap();
    let mut wild = subscriber
        .subscribe("com..topic.a", dict(&[("match", s("wildcard"))]))
        .await
        .unwrap();
    let publisher = join(&url, Serializer::Json).await;
    let publication = publisher
        .publish(
            "com.example.topic.a",
            dict(&[("acknowledge", Value::Bool(true))]),
            Payload::Args(vec![s("x")]),
        )
        .await
        .unwrap()
        .expect("acknowledged");
    for (sub, topic) in [
        (&mut exact, None),
        (&mut prefix, Some("com.example.topic.a")),
        (&mut wild, Some("com.example.topic.a")),
    ] {
        let event = next_event(sub).await;
        assert_eq!(event.publication, publication);
        assert_eq!(event.payload, Payload::Args(vec![s("x")]));
        assert_eq!(event.details.get("topic"), topic.map(s).as_ref());
    }
    publisher
        .publish("com.example.other", Dict::new(), Payload::Empty)
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut prefix).await.details.get("topic"),
        Some(&s("com.example.other"))
    );
    no_event(&mut exact).await;
    no_event(&mut wild).await;
    let refused = publisher
        .publish(
            "com..bad",
            dict(&[("acknowledge", Value::Bool(true))]),
            Payload::Empty,
        )
        .await;
    assert_eq!(
        wamp_error(refused.unwrap_err()).uri,
        "wamp.error.invalid_uri"
    );
    // Nobody forges the router's meta events.
    let forged = publisher
        .publish(
            "wamp.session.on_join",
            dict(&[("acknowledge", Value::Bool(true))]),
            Payload::Empty,
        )
        .await;
    assert_eq!(
        wamp_error(forged.unwrap_err()).uri,
        "wamp.error.invalid_uri"
    );
    router.shutdown().await;
}

/// `exclude_me` (on by default), `exclude`/`eligible` by session, authid and authrole pick
/// who receives an event; a publisher that discloses itself is named in the event.
#[tokio::test]
async fn exclusion_and_eligibility_choose_the_receivers_and_the_publisher_may_disclose_itself() {
    let router = router().await;
    let url = router.ws_url();
    let mut clients = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..3 {
        let c = join(&url, Serializer::Msgpack).await;
        subs.push(c.subscribe("com.example.t", Dict::new()).await.unwrap());
        clients.push(c);
    }
    let ids: Vec<Value> = clients
        .iter()
        .map(|c| Value::Integer(c.session() as i64))
        .collect();
    let publish = |options: Dict| {
        let p = clients[0].clone();
        async move {
            p.publish(
                "com.example.t",
                dict(&[("acknowledge", Value::Bool(true))])
                    .into_iter()
                    .chain(options)
                    .collect(),
                Payload::Empty,
            )
            .await
            .unwrap()
            .unwrap()
        }
    };
    // Default: the publisher is excluded.
    let id = publish(Dict::new()).await;
    assert_eq!(next_event(&mut subs[1]).await.publication, id);
    assert_eq!(next_event(&mut subs[2]).await.publication, id);
    no_event(&mut subs[0]).await;
    // exclude_me false, exclude session 1.
    let id = publish(dict(&[
        ("exclude_me", Value::Bool(false)),
        ("exclude", Value::List(vec![ids[1].clone()])),
    ]))
    .await;
    assert_eq!(next_event(&mut subs[0]).await.publication, id);
    assert_eq!(next_event(&mut subs[2]).await.publication, id);
    no_event(&mut subs[1]).await;
    // eligible: session 2 only.
    let id = publish(dict(&[("eligible", Value::List(vec![ids[2].clone()]))])).await;
    assert_eq!(next_event(&mut subs[2]).await.publication, id);
    no_event(&mut subs[1]).await;
    // By authid and authrole: every anonymous session has its own authid, role "anonymous".
    let authid = clients[1].welcome().get("authid").cloned().unwrap();
    let id = publish(dict(&[("eligible_authid", Value::List(vec![authid]))])).await;
    assert_eq!(next_event(&mut subs[1]).await.publication, id);
    no_event(&mut subs[2]).await;
    publish(dict(&[(
        "exclude_authrole",
        Value::List(vec![s("anonymous")]),
    )]))
    .await;
    no_event(&mut subs[1]).await;
    no_event(&mut subs[2]).await;
    let id = publish(dict(&[
        ("eligible_authrole", Value::List(vec![s("anonymous")])),
        ("disclose_me", Value::Bool(true)),
    ]))
    .await;
    let event = next_event(&mut subs[1]).await;
    assert_eq!(event.publication, id);
    assert_eq!(event.details.get("publisher"), Some(&ids[0]));
    assert_eq!(
        event.details.get("publisher_authrole"),
        Some(&s("anonymous"))
    );
    router.shutdown().await;
}

/// Each subscriber receives one publisher's events in the order they were published, with
/// several publishers at once.
#[tokio::test]
async fn events_reach_each_subscriber_in_publish_order_per_publisher() {
    let router = router().await;
    let url = router.ws_url();
    let sub_client = join(&url, Serializer::Json).await;
    let mut sub = sub_client
        .subscribe("com.example.seq", Dict::new())
        .await
        .unwrap();
    let mut publishers = Vec::new();
    for p in 0..3i64 {
        let client = join(&url, Serializer::ALL[p as usize]).await;
        publishers.push(tokio::spawn(async move {
            for i in 0..500i64 {
                client
                    .publish(
                        "com.example.seq",
                        Dict::new(),
                        Payload::Args(vec![Value::Integer(p), Value::Integer(i)]),
                    )
                    .await
                    .unwrap();
            }
            client
        }));
    }
    let mut next = [0i64; 3];
    for _ in 0..1500 {
        let event = next_event(&mut sub).await;
        let Payload::Args(args) = event.payload else {
            panic!()
        };
        let (Value::Integer(p), Value::Integer(i)) = (&args[0], &args[1]) else {
            panic!()
        };
        assert_eq!(*i, next[*p as usize], "publisher {p}");
        next[*p as usize] += 1;
    }
    for p in publishers {
        p.await.unwrap();
    }
    router.shutdown().await;
}

mod raw {
    //! A client that sends whatever it is told, to see what the router makes of it.

    use futures_util::{SinkExt, StreamExt};
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

    pub async fn connect(url: &str, subprotocol: &str) -> Ws {
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(subprotocol).unwrap(),
        );
        tokio_tungstenite::connect_async(request).await.unwrap().0
    }

    pub async fn send(ws: &mut Ws, text: &str) {
        ws.send(Message::text(text)).await.unwrap();
    }

    /// The next WAMP message as JSON text, `None` once the connection closed.
    pub async fn recv(ws: &mut Ws) -> Option<String> {
        loop {
            match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return Some(t.to_string()),
                Ok(Some(Ok(Message::Binary(b)))) => return Some(format!("{b:?}")),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(Some(Ok(_))) | Ok(Some(Err(_))) | Ok(None) => return None,
                Err(_) => panic!("no answer within 5 s"),
            }
        }
    }

    /// Whether the router closes the connection within 5 s (reading on until it does).
    pub async fn closes(ws: &mut Ws) -> bool {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

const HELLO: &str = r#"[1,"realm1",{"roles":{"caller":{}}}]"#;

/// Each kind of bad input ends that session with ABORT `wamp.error.protocol_violation` (or
/// the spec's other reason) and a close, and the router serves a good client afterwards.
#[tokio::test]
async fn a_client_that_breaks_the_protocol_is_aborted_and_the_router_goes_on() {
    let router = router_with(RouterConfig {
        max_message_bytes: 64 * 1024,
        session_queue_bytes: 1 << 20,
        ..RouterConfig::default()
    })
    .await;
    let url = router.ws_url();
    let cases: &[(&[&str], &str)] = &[
        (&[r#"[48,1,{},"com.x"]"#], "wamp.error.protocol_violation"),
        (&[HELLO, HELLO], "wamp.error.protocol_violation"),
        (&["not json at all"], "wamp.error.protocol_violation"),
        (&[HELLO, "[99,1]"], "wamp.error.protocol_violation"),
        (
            &[HELLO, r#"[48,9007199254740993,{},"com.x"]"#],
            "wamp.error.protocol_violation",
        ),
        (
            &[HELLO, r#"[48,-1,{},"com.x"]"#],
            "wamp.error.protocol_violation",
        ),
        (&[HELLO, r#"[2,1,{}]"#], "wamp.error.protocol_violation"),
        (&[HELLO, r#"[36,1,2,{}]"#], "wamp.error.protocol_violation"),
        (&[r#"[1,"realm1",{}]"#], "wamp.error.protocol_violation"),
        (
            &[r#"[1,"no.such.realm",{"roles":{"caller":{}}}]"#],
            "wamp.error.no_such_realm",
        ),
    ];
    for (messages, reason) in cases {
        let mut ws = raw::connect(&url, "wamp.2.json").await;
        let mut answers = Vec::new();
        for m in *messages {
            raw::send(&mut ws, m).await;
        }
        while let Some(answer) = raw::recv(&mut ws).await {
            let abort = answer.starts_with("[3,");
            answers.push(answer);
            if abort {
                break;
            }
        }
        let last = answers.last().cloned().unwrap_or_default();
        assert!(
            last.starts_with("[3,") && last.contains(reason),
            "{messages:?}: {answers:?}"
        );
        assert!(
            raw::closes(&mut ws).await,
            "{messages:?}: the connection closes"
        );
    }
    // A message over router.max_message_bytes.
    let mut ws = raw::connect(&url, "wamp.2.json").await;
    raw::send(&mut ws, HELLO).await;
    assert!(raw::recv(&mut ws).await.unwrap().starts_with("[2,"));
    let big = format!(r#"[16,1,{{}},"com.x",["{}"]]"#, "x".repeat(100 * 1024));
    raw::send(&mut ws, &big).await;
    let abort = raw::recv(&mut ws).await.unwrap();
    assert!(abort.contains("max_message_bytes"), "{abort}");
    assert!(raw::closes(&mut ws).await);
    // A handshake without a WAMP subprotocol is refused.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "chat".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    // RawSocket: garbage, then a bad serializer, then a frame of an unknown type.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let raw_addr = router.rawsocket_addr().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(raw_addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0),
        0
    );
    let mut tcp = tokio::net::TcpStream::connect(raw_addr).await.unwrap();
    tcp.write_all(&[0x7F, 0xF9, 0, 0]).await.unwrap();
    let mut reply = [0u8; 4];
    tcp.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [0x7F, 0x10, 0, 0], "error 1: serializer unsupported");
    // The router still serves.
    let client = join(&url, Serializer::Json).await;
    let err = client
        .call("com.example.none", Payload::Empty)
        .await
        .unwrap_err();
    assert_eq!(wamp_error(err).uri, "wamp.error.no_such_procedure");
    router.shutdown().await;
}

/// A subscriber that sends nothing after subscribing stays past the HELLO and idle timeouts,
/// because its transport answers the router's pings, and still receives events; a
/// connection that never says HELLO is closed after the HELLO timeout; one that stops
/// answering pings is closed after the idle timeout.
#[tokio::test]
async fn a_silent_subscriber_stays_while_it_answers_pings_and_the_others_are_closed() {
    let router = router_with(RouterConfig {
        ping_interval_ms: Duration::from_millis(200),
        idle_timeout_ms: Duration::from_millis(1000),
        hello_timeout_ms: Duration::from_millis(500),
        ..RouterConfig::default()
    })
    .await;
    let url = router.ws_url();
    let subscriber = join(&url, Serializer::Msgpack).await;
    let mut sub = subscriber
        .subscribe("com.example.quiet", Dict::new())
        .await
        .unwrap();
    let mut silent = raw::connect(&url, "wamp.2.json").await;
    // A RawSocket client that joins and then neither reads nor answers pings.
    let raw_addr = router.rawsocket_addr().unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut deaf = tokio::net::TcpStream::connect(raw_addr).await.unwrap();
    deaf.write_all(&[0x7F, 0xF1, 0, 0]).await.unwrap();
    let mut reply = [0u8; 4];
    deaf.read_exact(&mut reply).await.unwrap();
    deaf.write_all(&wamp_cluster::router::transport::rawsocket::frame(
        HELLO.as_bytes(),
    ))
    .await
    .unwrap();
    // Past the HELLO timeout and the idle timeout, with room for a loaded machine.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(raw::closes(&mut silent).await, "no HELLO: closed");
    let publisher = join(&url, Serializer::Json).await;
    publisher
        .publish(
            "com.example.quiet",
            Dict::new(),
            Payload::Args(vec![s("still here")]),
        )
        .await
        .unwrap();
    let event = next_event(&mut sub).await;
    assert_eq!(event.payload, Payload::Args(vec![s("still here")]));
    assert!(!subscriber.is_closed());
    // The deaf client: its connection was closed (reading returns the end after the WELCOME
    // and the pings the router sent).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), deaf.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the router closed the deaf connection"
    );
    router.shutdown().await;
}

/// A subscriber that stops reading is disconnected once its queue is full, and another
/// subscriber of the same topic keeps receiving every event.
#[tokio::test]
async fn a_subscriber_that_stops_reading_is_disconnected_without_slowing_the_others() {
    let router = router_with(RouterConfig {
        session_queue_messages: 64,
        max_message_bytes: 16 * 1024,
        session_queue_bytes: 256 * 1024,
        ..RouterConfig::default()
    })
    .await;
    let url = router.ws_url();
    // The stalled one: a raw WebSocket that subscribes and then never reads.
    let mut stalled = raw::connect(&url, "wamp.2.json").await;
    raw::send(&mut stalled, HELLO).await;
    assert!(raw::recv(&mut stalled).await.unwrap().starts_with("[2,"));
    raw::send(&mut stalled, r#"[32,1,{},"com.example.flood"]"#).await;
    assert!(raw::recv(&mut stalled).await.unwrap().starts_with("[33,"));
    let good = join(&url, Serializer::Json).await;
    let mut sub = good
        .subscribe("com.example.flood", Dict::new())
        .await
        .unwrap();
    let publisher = join(&url, Serializer::Json).await;
    let payload = Payload::Args(vec![s(&"x".repeat(8 * 1024))]);
    let reader = tokio::spawn(async move {
        for i in 0..5000 {
            let e = next_event(&mut sub).await;
            assert_eq!(
                e.payload,
                Payload::Args(vec![s(&"x".repeat(8 * 1024))]),
                "event {i}"
            );
        }
    });
    // Acknowledged: the publisher goes at the router's pace, which a reading subscriber
    // keeps; the stalled one's socket buffers fill, then its queue.
    let ack = dict(&[("acknowledge", Value::Bool(true))]);
    for _ in 0..5000 {
        publisher
            .publish("com.example.flood", ack.clone(), payload.clone())
            .await
            .unwrap();
    }
    reader.await.unwrap();
    // The stalled one was cut: reading on ends with the close (after what was written).
    assert!(raw::closes(&mut stalled).await);
    router.shutdown().await;
}

/// A realm with users of every method and a role that may call `com.example.` but not
/// register there; secrets in files.
fn secured(dir: &std::path::Path) -> RouterConfig {
    std::fs::write(dir.join("ticket"), "ticket-of-alice\n").unwrap();
    std::fs::write(dir.join("secret"), "bob's secret").unwrap();
    let public = ed25519_public([5; 32]);
    let text = format!(
        r#"
[[realms]]
name = "secure"

[[realms.roles]]
name = "user"
permissions = [
  {{ uri = "com.example.", match = "prefix", call = true, subscribe = true }},
  {{ uri = "com.example.mine", match = "exact", call = true, register = true, publish = true }},
]

[[realms.users]]
authid = "alice"
role = "user"
ticket_file = "{dir}/ticket"

[[realms.users]]
authid = "bob"
role = "user"
secret_file = "{dir}/secret"

[[realms.users]]
authid = "bob-salted"
role = "user"
secret_file = "{dir}/secret"
salt = "pepper"
iterations = 100
keylen = 32

[[realms.users]]
authid = "carol"
role = "user"
pubkeys = ["{public}"]
"#,
        dir = dir.display()
    );
    toml::from_str(&text).unwrap()
}

fn ed25519_public(seed: [u8; 32]) -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    key.verifying_key()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Ticket, WAMP-CRA (plain and salted) and cryptosign let the right credentials in and keep
/// wrong ones out with `wamp.error.authentication_failed`; anonymous is refused where the
/// realm has no anonymous role; role rules refuse with `wamp.error.not_authorized`.
#[tokio::test]
async fn every_auth_method_admits_good_credentials_only_and_roles_limit_what_a_session_does() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(secured(dir.path())).await;
    let url = router.ws_url();
    let connect = |credentials: Credentials| {
        let url = url.clone();
        async move {
            Client::connect(
                &url,
                ClientOptions::new("secure")
                    .credentials(credentials)
                    .serializer(Serializer::Msgpack),
            )
            .await
        }
    };
    let good = [
        Credentials::Ticket {
            authid: "alice".into(),
            ticket: "ticket-of-alice".into(),
        },
        Credentials::WampCra {
            authid: "bob".into(),
            secret: "bob's secret".into(),
        },
        Credentials::WampCra {
            authid: "bob-salted".into(),
            secret: "bob's secret".into(),
        },
        Credentials::Cryptosign {
            authid: "carol".into(),
            key: [5; 32],
        },
    ];
    for credentials in good {
        let client = connect(credentials.clone())
            .await
            .unwrap_or_else(|e| panic!("{credentials:?}: {e}"));
        assert_eq!(client.welcome().get("authrole"), Some(&s("user")));
        client.leave().await.unwrap();
    }
    let bad = [
        Credentials::Ticket {
            authid: "alice".into(),
            ticket: "guess".into(),
        },
        Credentials::WampCra {
            authid: "bob".into(),
            secret: "wrong".into(),
        },
        Credentials::WampCra {
            authid: "bob-salted".into(),
            secret: "wrong".into(),
        },
        Credentials::Cryptosign {
            authid: "carol".into(),
            key: [6; 32],
        },
        Credentials::Ticket {
            authid: "mallory".into(),
            ticket: "x".into(),
        },
    ];
    for credentials in bad {
        match connect(credentials.clone()).await {
            Err(ClientError::Abort { reason, .. }) => assert_eq!(
                reason, "wamp.error.authentication_failed",
                "{credentials:?}"
            ),
            other => panic!("{credentials:?}: {other:?}"),
        }
    }
    match connect(Credentials::Anonymous).await {
        Err(ClientError::Abort { reason, .. }) => assert_eq!(reason, "wamp.error.no_auth_method"),
        other => panic!("{other:?}"),
    }
    let alice = connect(Credentials::Ticket {
        authid: "alice".into(),
        ticket: "ticket-of-alice".into(),
    })
    .await
    .unwrap();
    let refused = alice
        .register("com.example.other", Dict::new(), |_| async {
            Ok(Payload::Empty)
        })
        .await;
    assert_eq!(
        wamp_error(refused.unwrap_err()).uri,
        "wamp.error.not_authorized"
    );
    alice
        .register("com.example.mine", Dict::new(), |_| async {
            Ok(Payload::Args(vec![s("ok")]))
        })
        .await
        .unwrap();
    assert_eq!(
        alice
            .call("com.example.mine", Payload::Empty)
            .await
            .unwrap()
            .payload,
        Payload::Args(vec![s("ok")])
    );
    let err = alice
        .call("org.example.x", Payload::Empty)
        .await
        .unwrap_err();
    assert_eq!(wamp_error(err).uri, "wamp.error.not_authorized");
    let err = alice
        .publish(
            "com.example.t",
            dict(&[("acknowledge", Value::Bool(true))]),
            Payload::Empty,
        )
        .await
        .unwrap_err();
    assert_eq!(wamp_error(err).uri, "wamp.error.not_authorized");
    let err = alice.subscribe("org.t", Dict::new()).await.unwrap_err();
    assert_eq!(wamp_error(err).uri, "wamp.error.not_authorized");
    alice.subscribe("com.example.t", Dict::new()).await.unwrap();
    router.shutdown().await;
}

/// The meta API answers for the realm's sessions, registrations and subscriptions, publishes
/// their events, and kills sessions on request.
#[tokio::test]
async fn the_meta_api_answers_publishes_its_events_and_kills_sessions() {
    let router = router().await;
    let url = router.ws_url();
    let watcher = join(&url, Serializer::Json).await;
    let mut joins = watcher
        .subscribe("wamp.session.on_join", Dict::new())
        .await
        .unwrap();
    let mut leaves = watcher
        .subscribe("wamp.session.on_leave", Dict::new())
        .await
        .unwrap();
    let mut creates = watcher
        .subscribe("wamp.registration.on_create", Dict::new())
        .await
        .unwrap();
    let mut deletes = watcher
        .subscribe("wamp.registration.on_delete", Dict::new())
        .await
        .unwrap();
    let mut subscribes = watcher
        .subscribe("wamp.subscription.on_subscribe", Dict::new())
        .await
        .unwrap();
    let callee = join(&url, Serializer::Msgpack).await;
    let joined = next_event(&mut joins).await;
    let Payload::Args(args) = joined.payload else {
        panic!()
    };
    let Value::Dict(details) = &args[0] else {
        panic!()
    };
    assert_eq!(
        details.get("session"),
        Some(&Value::Integer(callee.session() as i64))
    );
    let rid = callee
        .register(
            "com.example.m",
            dict(&[("invoke", s("roundrobin"))]),
            |_| async { Ok(Payload::Empty) },
        )
        .await
        .unwrap();
    let created = next_event(&mut creates).await;
    let Payload::Args(args) = created.payload else {
        panic!()
    };
    assert_eq!(args[0], Value::Integer(callee.session() as i64));
    let one = |p: Payload| match p {
        Payload::Args(mut a) if !a.is_empty() => a.remove(0),
        other => panic!("{other:?}"),
    };
    let call = |procedure: &'static str, args: Vec<Value>| {
        let watcher = watcher.clone();
        async move {
            one(watcher
                .call(procedure, Payload::Args(args))
                .await
                .unwrap()
                .payload)
        }
    };
    assert_eq!(call("wamp.session.count", vec![]).await, Value::Integer(2));
    assert_eq!(
        call("wamp.session.count", vec![Value::List(vec![s("nobody")])]).await,
        Value::Integer(0)
    );
    let Value::List(list) = call("wamp.session.list", vec![]).await else {
        panic!()
    };
    assert_eq!(list.len(), 2);
    let Value::Dict(got) = call(
        "wamp.session.get",
        vec![Value::Integer(callee.session() as i64)],
    )
    .await
    else {
        panic!()
    };
    assert_eq!(got.get("authrole"), Some(&s("anonymous")));
    let rid_v = Value::Integer(rid as i64);
    assert_eq!(
        call("wamp.registration.lookup", vec![s("com.example.m")]).await,
        rid_v
    );
    assert_eq!(
        call("wamp.registration.match", vec![s("com.example.m")]).await,
        rid_v
    );
    assert_eq!(
        call("wamp.registration.match", vec![s("com.example.none")]).await,
        Value::Null
    );
    let Value::Dict(list) = call("wamp.registration.list", vec![]).await else {
        panic!()
    };
    assert_eq!(list.get("exact"), Some(&Value::List(vec![rid_v.clone()])));
    let Value::Dict(reg) = call("wamp.registration.get", vec![rid_v.clone()]).await else {
        panic!()
    };
    assert_eq!(reg.get("invoke"), Some(&s("roundrobin")));
    assert_eq!(
        call("wamp.registration.count_callees", vec![rid_v.clone()]).await,
        Value::Integer(1)
    );
    assert_eq!(
        call("wamp.registration.list_callees", vec![rid_v.clone()]).await,
        Value::List(vec![Value::Integer(callee.session() as i64)])
    );
    let sub = callee
        .subscribe("com.example.", dict(&[("match", s("prefix"))]))
        .await
        .unwrap();
    next_event(&mut subscribes).await;
    let sid = Value::Integer(sub.id as i64);
    assert_eq!(
        call(
            "wamp.subscription.lookup",
            vec![
                s("com.example."),
                Value::Dict(dict(&[("match", s("prefix"))]))
            ]
        )
        .await,
        sid
    );
    assert_eq!(
        call("wamp.subscription.match", vec![s("com.example.x")]).await,
        Value::List(vec![sid.clone()])
    );
    assert_eq!(
        call("wamp.subscription.count_subscribers", vec![sid.clone()]).await,
        Value::Integer(1)
    );
    let err = watcher
        .call(
            "wamp.registration.get",
            Payload::Args(vec![Value::Integer(1)]),
        )
        .await
        .unwrap_err();
    assert_eq!(wamp_error(err).uri, "wamp.error.no_such_registration");
    let err = watcher
        .call("wamp.no.such.thing", Payload::Empty)
        .await
        .unwrap_err();
    assert_eq!(wamp_error(err).uri, "wamp.error.no_such_procedure");
    // Kill the callee: it gets GOODBYE wamp.close.killed, its registration is deleted.
    let killed = watcher
        .call(
            "wamp.session.kill",
            Payload::ArgsKw(
                vec![Value::Integer(callee.session() as i64)],
                dict(&[("message", s("bye"))]),
            ),
        )
        .await;
    assert!(killed.is_ok(), "{killed:?}");
    match tokio::time::timeout(Duration::from_secs(5), callee.closed())
        .await
        .unwrap()
    {
        Some(ClientError::Abort { reason, .. }) => assert_eq!(reason, "wamp.close.killed"),
        other => panic!("{other:?}"),
    }
    let deleted = next_event(&mut deletes).await;
    assert_eq!(
        deleted.payload,
        Payload::Args(vec![Value::Integer(callee.session() as i64), rid_v])
    );
    let left = next_event(&mut leaves).await;
    assert_eq!(one(left.payload), Value::Integer(callee.session() as i64));
    assert_eq!(call("wamp.session.count", vec![]).await, Value::Integer(1));
    let err = watcher
        .call(
            "wamp.session.kill",
            Payload::Args(vec![Value::Integer(watcher.session() as i64)]),
        )
        .await;
    assert_eq!(
        wamp_error(err.unwrap_err()).uri,
        "wamp.error.no_such_session"
    );
    // By authid and by authrole: the others go, the caller stays.
    let a = join(&url, Serializer::Json).await;
    let b = join(&url, Serializer::Cbor).await;
    let authid = a.welcome().get("authid").cloned().unwrap();
    assert_eq!(
        call("wamp.session.kill_by_authid", vec![authid]).await,
        Value::Integer(1)
    );
    assert!(tokio::time::timeout(Duration::from_secs(5), a.closed())
        .await
        .is_ok());
    assert_eq!(
        call("wamp.session.kill_by_authrole", vec![s("anonymous")]).await,
        Value::Integer(1)
    );
    assert!(tokio::time::timeout(Duration::from_secs(5), b.closed())
        .await
        .is_ok());
    assert_eq!(call("wamp.session.count", vec![]).await, Value::Integer(1));
    router.shutdown().await;
}

/// With `router.tls`, both listeners speak TLS with the node's certificate: a client that
/// trusts its authority calls over wss:// and rss://; a plain client gets nowhere, and the
/// router goes on.
#[tokio::test]
async fn over_tls_clients_connect_by_wss_and_rss_and_plain_ones_are_refused() {
    let authority = wamp_cluster::testkit::certs::Authority::new();
    let (cert, key) = authority.issue("localhost", "router");
    let tls = wamp_cluster::TlsConfig {
        cert_file: Some(cert),
        key_file: Some(key),
        ..wamp_cluster::TlsConfig::default()
    };
    let config = RouterConfig {
        ws_addr: loopback(),
        rawsocket_addr: Some(loopback()),
        tls: true,
        hello_timeout_ms: Duration::from_millis(500),
        ..RouterConfig::default()
    };
    let router = Router::start(config, "tls-node", &tls).await.unwrap();
    assert!(router.ws_url().starts_with("wss://"));
    let options = |s| {
        ClientOptions::new("realm1")
            .serializer(s)
            .tls_authorities(&authority.ca_file())
            .unwrap()
    };
    let wss = format!("wss://localhost:{}/ws", router.ws_addr().port());
    let rss = format!(
        "rss://localhost:{}",
        router.rawsocket_addr().unwrap().port()
    );
    let callee = Client::connect(&wss, options(Serializer::Json))
        .await
        .unwrap();
    callee
        .register("com.example.secure", Dict::new(), |_| async {
            Ok(Payload::Args(vec![s("over tls")]))
        })
        .await
        .unwrap();
    let caller = Client::connect(&rss, options(Serializer::Cbor))
        .await
        .unwrap();
    let r = caller
        .call("com.example.secure", Payload::Empty)
        .await
        .unwrap();
    assert_eq!(r.payload, Payload::Args(vec![s("over tls")]));
    let plain = format!("ws://localhost:{}/ws", router.ws_addr().port());
    assert!(Client::connect(
        &plain,
        ClientOptions::new("realm1").timeout(Duration::from_secs(3))
    )
    .await
    .is_err());
    let untrusted = Client::connect(&wss, ClientOptions::new("realm1")).await;
    assert!(
        matches!(untrusted, Err(ClientError::Connect(_))),
        "{untrusted:?}"
    );
    // Without a certificate, router.tls is refused, naming the key.
    let err = Router::start(
        RouterConfig {
            ws_addr: loopback(),
            tls: true,
            ..RouterConfig::default()
        },
        "n",
        &wamp_cluster::TlsConfig::default(),
    )
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("router.tls"), "{err}");
    assert_eq!(
        caller
            .call("com.example.secure", Payload::Empty)
            .await
            .unwrap()
            .payload,
        Payload::Args(vec![s("over tls")])
    );
    router.shutdown().await;
}

/// An event published with `retain` reaches a later subscriber that asks with `get_retained`
/// (with `details.retained`), the last one per topic only; one that does not ask gets none.
#[tokio::test]
async fn a_retained_event_reaches_later_subscribers_that_ask_for_it() {
    let router = router().await;
    let url = router.ws_url();
    let publisher = join(&url, Serializer::Json).await;
    let retain = dict(&[
        ("retain", Value::Bool(true)),
        ("acknowledge", Value::Bool(true)),
    ]);
    publisher
        .publish(
            "com.example.state",
            retain.clone(),
            Payload::Args(vec![Value::Integer(1)]),
        )
        .await
        .unwrap();
    let last = publisher
        .publish(
            "com.example.state",
            retain.clone(),
            Payload::Args(vec![Value::Integer(2)]),
        )
        .await
        .unwrap()
        .unwrap();
    publisher
        .publish(
            "com.example.other",
            dict(&[("acknowledge", Value::Bool(true))]),
            Payload::Empty,
        )
        .await
        .unwrap();
    let late = join(&url, Serializer::Cbor).await;
    let mut sub = late
        .subscribe(
            "com.example.state",
            dict(&[("get_retained", Value::Bool(true))]),
        )
        .await
        .unwrap();
    let event = next_event(&mut sub).await;
    assert_eq!(event.publication, last);
    assert_eq!(event.payload, Payload::Args(vec![Value::Integer(2)]));
    assert_eq!(event.details.get("retained"), Some(&Value::Bool(true)));
    no_event(&mut sub).await;
    let mut pattern = late
        .subscribe(
            "com.example.",
            dict(&[("match", s("prefix")), ("get_retained", Value::Bool(true))]),
        )
        .await
        .unwrap();
    let event = next_event(&mut pattern).await;
    assert_eq!(event.details.get("topic"), Some(&s("com.example.state")));
    no_event(&mut pattern).await;
    let plain = join(&url, Serializer::Json).await;
    let mut without = plain
        .subscribe("com.example.state", Dict::new())
        .await
        .unwrap();
    no_event(&mut without).await;
    router.shutdown().await;
}

/// A session's testaments are published when it ends, whether it says GOODBYE or its
/// connection drops; flushed ones are not.
#[tokio::test]
async fn testaments_are_published_when_their_session_ends_unless_flushed() {
    let router = router().await;
    let url = router.ws_url();
    let watcher = join(&url, Serializer::Json).await;
    let mut sub = watcher
        .subscribe("com.example.gone", Dict::new())
        .await
        .unwrap();
    for (i, crash) in [(1, true), (2, false)] {
        let mortal = join(&url, Serializer::Msgpack).await;
        let testament = Payload::Args(vec![
            s("com.example.gone"),
            Value::List(vec![Value::Integer(i)]),
            Value::Dict(Dict::new()),
        ]);
        mortal
            .call("wamp.session.add_testament", testament)
            .await
            .unwrap();
        if crash {
            mortal.disconnect();
        } else {
            mortal.leave().await.unwrap();
        }
        let event = next_event(&mut sub).await;
        assert_eq!(
            event.payload,
            Payload::ArgsKw(vec![Value::Integer(i)], Dict::new())
        );
    }
    let flushed = join(&url, Serializer::Json).await;
    let testament = Payload::Args(vec![
        s("com.example.gone"),
        Value::List(vec![Value::Integer(3)]),
    ]);
    flushed
        .call("wamp.session.add_testament", testament)
        .await
        .unwrap();
    let n = flushed
        .call("wamp.session.flush_testaments", Payload::Empty)
        .await
        .unwrap();
    assert_eq!(n.payload, Payload::Args(vec![Value::Integer(1)]));
    flushed.leave().await.unwrap();
    no_event(&mut sub).await;
    let bad = watcher
        .call(
            "wamp.session.add_testament",
            Payload::Args(vec![s("com..x")]),
        )
        .await
        .unwrap_err();
    assert_eq!(wamp_error(bad).uri, "wamp.error.invalid_uri");
    router.shutdown().await;
}
