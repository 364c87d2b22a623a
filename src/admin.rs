//! The HTTP admin API (JSON unless said otherwise), bound to `admin_addr`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | `{"status":"ok","node_id":…}` while the process serves |
//! | `GET /ready` | 200 once the node has joined and is `ready`, 503 before and while leaving |
//! | `GET /cluster/members` | every member gossip knows, self included |
//! | `GET /cluster/ring?key=K&replicas=N` | `{"key":K,"owners":[…]}` |
//! | `POST /cluster/leave` | `{"status":"leaving"}`, then graceful leave; the program exits |
//! | `GET /metrics` | Prometheus text format |
//!
//! Errors are `{"error":"snake_case_name","detail":"…"}` with status 400 (bad request) or 404.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::membership::{Member, Membership, Status};

/// Most owners `/cluster/ring` returns.
pub const MAX_RING_REPLICAS: usize = 1000;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// The node's membership.
    pub membership: Membership,
    /// The recorder whose output `/metrics` serves, if any.
    pub prometheus: Option<PrometheusHandle>,
    /// Cancelled by `POST /cluster/leave`.
    pub leave_requested: CancellationToken,
}

/// The admin API's routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/cluster/members", get(members))
        .route("/cluster/ring", get(ring))
        .route("/cluster/leave", post(leave))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
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
    // The leave starts here, so that it happens even if the embedding program does not watch
    // for the request; the program learns of it through the token and waits for the end.
    let membership = state.membership.clone();
    tokio::spawn(async move {
        if let Err(err) = membership.leave().await {
            tracing::warn!(error = %err, "leave asked through the admin API failed");
        }
    });
    state.leave_requested.cancel();
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
