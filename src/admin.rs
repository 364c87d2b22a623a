//! The HTTP admin API (JSON unless said otherwise), bound to `admin_addr`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `{"status":"ok","node_id":…}` while the process serves |
//! | `GET /ready` | 200 once the node has joined and is `ready`, 503 before and while leaving |
//! | `GET /cluster/members` | every member gossip knows, self included |
//! | `GET /cluster/ring?key=K&replicas=N` | `{"key":K,"owners":[…]}` |
//! | `POST /cluster/probe` `{"node":…,"timeout_ms":…}` | `{"ok":true,"rtt_us":…}` or `{"ok":false,"error":…,"detail":…}` |
//! | `POST /cluster/broadcast` `{"timeout_ms":…}` | `{"good":[…],"bad":[{"node":…,"error":…}]}` |
//! | `GET /stats` | forwarding counters per peer |
//! | `POST /cluster/leave` | `{"status":"leaving"}`, then graceful leave; the program exits |
//! | `GET /metrics` | Prometheus text format |
//!
//! Errors are `{"error":"snake_case_name","detail":"…"}` with status 400 (bad request), 401
//! (no or wrong token) or 404.
//!
//! With `admin_token_file` set, the `POST` routes (they change or probe something) need
//! `Authorization: Bearer <token>`; a request without it, or with another token, gets 401 and
//! is counted (`wamp_cluster_admin_unauthorized_total`). The `GET` routes stay open, for health
//! checks and scrapes: the API binds to loopback unless told otherwise.
//!
//! What a web page could make a browser send is refused, token or not (403 `forbidden` or 415
//! `unsupported_media_type`, counted in `wamp_cluster_admin_refused_total` by `reason`): a
//! `POST` without `content-type: application/json` (a form can send no other type without
//! asking first); a request with an `Origin` other than the API's own (`http://` and the
//! `Host` it was sent to); and a request whose `Host` names what the API does not answer to
//! (DNS rebinding): an IP address, `localhost` when the API binds loopback (or every address),
//! and the names of `admin_allowed_hosts` are served, any other name is not.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::forward::Forwarder;
use crate::membership::{Member, Membership, Status};
use crate::node::stop::Stop;
use crate::NodeId;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Value};

/// Longest probe timeout accepted, in milliseconds.
pub const MAX_PROBE_TIMEOUT_MS: u64 = 60_000;

/// Most owners `/cluster/ring` returns.
pub const MAX_RING_REPLICAS: usize = 1000;

/// Shortest admin token accepted, in bytes: a short one can be guessed.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The admin API's bearer token, read from `admin_token_file` as the node starts. An
/// unreadable file or a token that is too short or not visible ASCII is an error naming the
/// key.
pub(crate) fn load_token(path: &std::path::Path) -> Result<Arc<str>, crate::error::ConfigError> {
    let invalid = |message: String| crate::error::ConfigError::invalid("admin_token_file", message);
    let text = std::fs::read_to_string(path)
        .map_err(|err| invalid(format!("cannot read {}: {err}", path.display())))?;
    let token = text.trim();
    if token.len() < MIN_ADMIN_TOKEN_LEN {
        return Err(invalid(format!(
            "the token in {} is shorter than {MIN_ADMIN_TOKEN_LEN} bytes",
            path.display()
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(format!(
            "the token in {} holds characters other than visible ASCII",
            path.display()
        )));
    }
    Ok(Arc::from(token))
}

/// The warning a node logs as it starts when its admin API, bound to `addr`, can be reached
/// from beyond its host without a token.
pub(crate) fn exposure(addr: SocketAddr, has_token: bool) -> Option<&'static str> {
    (!addr.ip().is_loopback() && !has_token).then_some(
        "the admin API is reachable beyond this host and has no token: anyone who reaches it \
         can make the node leave; set admin_token_file",
    )
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// The node's membership.
    pub membership: Membership,
    /// The node's forwarder.
    pub forwarder: Forwarder,
    /// The default timeout of probes.
    pub ack_timeout: Duration,
    /// The recorder whose output `/metrics` serves, if any.
    pub prometheus: Option<PrometheusHandle>,
    /// Where `POST /cluster/leave` asks the node to leave.
    pub stop: Arc<Stop>,
    /// The bearer token the routes that change or probe anything need, if any.
    pub token: Option<Arc<str>>,
    /// The host names requests may be sent to.
    pub hosts: Arc<Hosts>,
}

/// What the `Host` header of a request may name: any IP address (a name the page's author
/// controls is what DNS rebinding needs), `localhost` when the API binds loopback (or every
/// address), and the names an operator allowed.
pub(crate) struct Hosts {
    localhost: bool,
    allowed: Vec<String>,
}

impl Hosts {
    /// The hosts of an API bound to `bound`, with the names of `admin_allowed_hosts`.
    pub(crate) fn new(bound: SocketAddr, allowed: &[String]) -> Hosts {
        Hosts {
            localhost: bound.ip().is_loopback() || bound.ip().is_unspecified(),
            allowed: allowed.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a request sent to `host` (a `Host` header: a name or address, with or without
    /// a port) is served.
    fn serves(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // [v6] or [v6]:port
            Some(rest) => {
                return rest
                    .split_once(']')
                    .is_some_and(|(ip, _)| ip.parse::<IpAddr>().is_ok())
            }
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = name.to_ascii_lowercase();
        (self.localhost && name == "localhost") || self.allowed.contains(&name)
    }
}

/// The admin API's routes, and an embedder's (`extra`).
pub(crate) fn router(state: AdminState, extra: Option<Router>) -> Router {
    let guarded = Router::new()
        .route("/cluster/leave", post(leave))
        .route("/cluster/probe", post(probe))
        .route("/cluster/broadcast", post(broadcast))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route_layer(middleware::from_fn_with_state(state.clone(), json_only));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/cluster/members", get(members))
        .route("/cluster/ring", get(ring))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .merge(guarded)
        .merge(extra.unwrap_or_default().with_state(()))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), same_origin))
        .with_state(state)
}

/// Refuses a request of a web page: one sent to a host name the API does not answer to, or
/// from another origin.
async fn same_origin(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(host) = host {
        if !state.hosts.serves(host) {
            return refused(
                &state,
                "host",
                format!("this API does not answer to the host `{host}`; see admin_allowed_hosts"),
            );
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = host.map(|host| format!("http://{host}"));
        if own.as_deref().map(str::as_bytes) != Some(origin.as_bytes()) {
            return refused(&state, "origin", "requests from other origins are refused");
        }
    }
    next.run(request).await
}

/// Lets through a request whose body is declared JSON: a web form cannot send that type.
async fn json_only(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if json {
        return next.run(request).await;
    }
    refused(
        &state,
        "content_type",
        "this route needs `content-type: application/json`",
    )
}

/// A refusal of a request a web page could have sent, counted by `reason`.
fn refused(state: &AdminState, reason: &'static str, detail: impl Into<String>) -> Response {
    metrics::counter!(
        crate::metrics::ADMIN_REFUSED,
        "node" => state.membership.node_id().to_string(),
        "reason" => reason
    )
    .increment(1);
    match reason {
        "content_type" => error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            detail,
        ),
        _ => error(StatusCode::FORBIDDEN, "forbidden", detail),
    }
}

/// Lets a request through when no token is set or when it carries the token.
async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    if bearer(request.headers()).is_some_and(|given| same(given.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    metrics::counter!(
        crate::metrics::ADMIN_UNAUTHORIZED,
        "node" => state.membership.node_id().to_string()
    )
    .increment(1);
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this route needs `Authorization: Bearer <token>`, the token of admin_token_file",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

/// The token of an `Authorization: Bearer …` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn error(status: StatusCode, name: &str, detail: impl Into<String>) -> Response {
    let body = json!({ "error": name, "detail": detail.into() });
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn health(State(state): State<AdminState>) -> Json<Value> {
    Json(json!({ "status": "ok", "node_id": state.membership.node_id() }))
}

async fn ready(State(state): State<AdminState>) -> Response {
    let view = state.membership.view();
    let status = view.self_member().map_or(Status::Joining, |m| m.status);
    let ready = status == Status::Ready && !state.membership.is_stopped();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "ready": ready, "status": status }))).into_response()
}

fn member_json(m: &Member) -> Value {
    json!({
        "node_id": m.node_id,
        "generation": m.generation.to_string(),
        "gossip_addr": m.gossip_addr.to_string(),
        "forward_addr": m.forward_addr.map(|a| a.to_string()),
        "status": m.status,
        "live": m.live,
        "reachable": m.reachable,
        "labels": m.labels,
    })
}

async fn members(State(state): State<AdminState>) -> Json<Value> {
    let view = state.membership.view();
    let members: Vec<Value> = view.members().iter().map(member_json).collect();
    Json(json!({ "self": view.self_id(), "members": members }))
}

#[derive(Deserialize)]
struct RingQuery {
    key: Option<String>,
    replicas: Option<String>,
}

async fn ring(
    State(state): State<AdminState>,
    query: Result<Query<RingQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(err) => return error(StatusCode::BAD_REQUEST, "bad_request", err.body_text()),
    };
    let Some(key) = query.key else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "missing query parameter `key`",
        );
    };
    let replicas = match query.replicas.as_deref().map(str::parse::<usize>) {
        None => 1,
        Some(Ok(n)) if (1..=MAX_RING_REPLICAS).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`replicas` must be an integer from 1 to {MAX_RING_REPLICAS}"),
            )
        }
    };
    let owners = state.membership.view().ring().owners(&key, replicas);
    Json(json!({ "key": key, "owners": owners })).into_response()
}

async fn leave(State(state): State<AdminState>) -> Response {
    // The node carries the leave out itself, so that it happens whether or not the embedding
    // program watches; the program learns of it from `NodeHandle::stopped`.
    state.stop.ask(crate::node::stop::Request::AdminLeave);
    (StatusCode::OK, Json(json!({ "status": "leaving" }))).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    match &state.prometheus {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node exports no metrics",
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeRequest {
    node: String,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BroadcastRequest {
    timeout_ms: Option<u64>,
}

/// The timeout of a probe request: the default, or the given one if it is in range.
fn probe_timeout(state: &AdminState, timeout_ms: Option<u64>) -> Result<Duration, String> {
    match timeout_ms {
        None => Ok(state.ack_timeout),
        Some(ms) if (1..=MAX_PROBE_TIMEOUT_MS).contains(&ms) => Ok(Duration::from_millis(ms)),
        Some(_) => Err(format!(
            "`timeout_ms` must be from 1 to {MAX_PROBE_TIMEOUT_MS}"
        )),
    }
}

async fn probe(
    State(state): State<AdminState>,
    request: Result<Json<ProbeRequest>, JsonRejection>,
) -> Response {
    let request = match request {
        Ok(Json(request)) => request,
        Err(err) => return error(StatusCode::BAD_REQUEST, "bad_request", err.body_text()),
    };
    let timeout = match probe_timeout(&state, request.timeout_ms) {
        Ok(timeout) => timeout,
        Err(detail) => return error(StatusCode::BAD_REQUEST, "bad_request", detail),
    };
    let node = NodeId::from(request.node);
    let answer = match state.forwarder.probe(&node, timeout).await {
        Ok(rtt) => json!({ "ok": true, "rtt_us": rtt.as_micros() as u64 }),
        Err(err) => json!({ "ok": false, "error": err.name(), "detail": err.to_string() }),
    };
    Json(answer).into_response()
}

async fn broadcast(State(state): State<AdminState>, body: axum::body::Bytes) -> Response {
    // An empty body means the defaults.
    let request = match body.is_empty() {
        true => Ok(BroadcastRequest::default()),
        false => serde_json::from_slice::<BroadcastRequest>(&body),
    };
    let request = match request {
        Ok(request) => request,
        Err(err) => return error(StatusCode::BAD_REQUEST, "bad_request", err.to_string()),
    };
    let timeout = match probe_timeout(&state, request.timeout_ms) {
        Ok(timeout) => timeout,
        Err(detail) => return error(StatusCode::BAD_REQUEST, "bad_request", detail),
    };
    let view = state.membership.view();
    let others: Vec<&Member> = view
        .members()
        .iter()
        .filter(|m| m.node_id != *view.self_id())
        .collect();
    let probes = others.iter().map(|m| {
        let forwarder = state.forwarder.clone();
        let node = m.node_id.clone();
        let live = m.live;
        async move {
            if !live {
                return (node, Err(("down", "gossip holds it down".to_string())));
            }
            let result = forwarder.probe(&node, timeout).await;
            (node, result.map_err(|e| (e.name(), e.to_string())))
        }
    });
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (node, result) in futures_util::future::join_all(probes).await {
        match result {
            Ok(_) => good.push(node),
            Err((name, detail)) => {
                bad.push(json!({ "node": node, "error": name, "detail": detail }))
            }
        }
    }
    Json(json!({ "good": good, "bad": bad })).into_response()
}

async fn stats(State(state): State<AdminState>) -> Json<Value> {
    let peers = state.forwarder.stats();
    Json(json!({ "node": state.membership.node_id(), "peers": peers }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_open_beyond_loopback_without_a_token_is_warned_about() {
        let at = |addr: &str| addr.parse::<SocketAddr>().unwrap();
        assert!(exposure(at("0.0.0.0:8080"), false).is_some());
        assert!(exposure(at("10.0.0.5:8080"), false).is_some());
        assert!(exposure(at("[::]:8080"), false).is_some());
        assert!(exposure(at("0.0.0.0:8080"), true).is_none());
        assert!(exposure(at("127.0.0.1:8080"), false).is_none());
        assert!(exposure(at("[::1]:8080"), false).is_none());
    }

    #[test]
    fn hosts_served_are_addresses_localhost_on_loopback_and_allowed_names() {
        let loopback = Hosts::new(
            "127.0.0.1:8080".parse().unwrap(),
            &["Admin.Internal".into()],
        );
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "10.1.2.3:9",
            "[::1]:8080",
            "[::1]",
            "localhost:8080",
            "LOCALHOST",
            "admin.internal:8080",
        ] {
            assert!(loopback.serves(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "[nope]",
            "",
        ] {
            assert!(!loopback.serves(host), "{host}");
        }
        let open = Hosts::new("0.0.0.0:8080".parse().unwrap(), &[]);
        assert!(open.serves("localhost:8080"), "loopback is bound too");
        assert!(open.serves("10.0.0.5:8080"));
        let one = Hosts::new("10.0.0.5:8080".parse().unwrap(), &[]);
        assert!(!one.serves("localhost:8080"), "not bound to loopback");
    }

    #[test]
    fn the_token_is_read_from_its_file_and_a_bad_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        for (text, why) in [
            (None, "cannot read"),
            (Some("short\n"), "shorter than 16"),
            (Some("sixteen or more but with spaces"), "visible ASCII"),
            (Some("token-\u{e9}-with-an-accent"), "visible ASCII"),
        ] {
            let _ = std::fs::remove_file(&file);
            if let Some(text) = text {
                std::fs::write(&file, text).unwrap();
            }
            let err = load_token(&file).unwrap_err().to_string();
            assert!(
                err.contains("admin_token_file") && err.contains(why),
                "{err}"
            );
        }
        std::fs::write(&file, "\n  0123456789abcdef-token \n").unwrap();
        assert_eq!(&*load_token(&file).unwrap(), "0123456789abcdef-token");
    }
}
