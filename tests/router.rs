//! The router on one node, driven by the crate's own client over real sockets: every
//! transport and serializer, RPC (policies, progressive results, timeouts, cancel, callee
//! loss), PubSub (patterns, exclusion, eligibility, acknowledgement, order), authentication
//! and authorization, and bad clients that cannot stop it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wamp_cluster::client::{CallOptions, Client, ClientError, ClientOptions, Credentials, WampError};
use wamp_cluster::router::config::RouterConfig;
use wamp_cluster::router::Router;
use wamp_cluster::wamp::serializer::Serializer;
use wamp_cluster::wamp::{Dict, Payload, Value};

fn dict(pairs: &[(&str, Value)]) -> Dict {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
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
    Router::start(config, "test-node").await.expect("router starts")
}

async fn router() -> Router {
    router_with(RouterConfig::default()).await
}

/// The URLs of a router: WebSocket and RawSocket.
fn urls(router: &Router) -> [String; 2] {
    [router.ws_url(), format!("rs://{}", router.rawsocket_addr().unwrap())]
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
                .register(&procedure, Dict::new(), |inv| async move { Ok(inv.payload) })
                .await
                .unwrap();
            let payload = Payload::ArgsKw(
                vec![s("héllo ✓"), Value::Integer(-7), Value::Bytes(vec![0, 255]), Value::Float(1.5)],
                dict(&[("nested", Value::List(vec![Value::Dict(dict(&[("k", Value::Null)]))]))]),
            );
            let result = caller.call(&procedure, payload.clone()).await.unwrap();
            assert_eq!(result.payload, payload, "{url} {serializer} -> {other}");
            caller.leave().await.unwrap();
            callee.leave().await.unwrap();
        }
    }
    router.shutdown().await;
}
