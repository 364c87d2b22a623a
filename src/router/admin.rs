//! The router's routes on the node's admin API: `GET /router/sessions`,
//! `GET /router/registrations` and `GET /router/subscriptions`, each per realm, each an answer
//! from this node.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value as JsonValue};

use super::connection::Realms;
use super::realm::Realm;
use super::session::timestamp;

/// The routes, over these realms.
pub fn routes(realms: Arc<Realms>) -> Router {
    Router::new()
        .route("/router/sessions", get(sessions))
        .route("/router/registrations", get(registrations))
        .route("/router/subscriptions", get(subscriptions))
        .with_state(realms)
}

/// Per realm (sorted by name), what `list` says of it.
fn per_realm(realms: &Realms, list: impl Fn(&Realm) -> JsonValue) -> Json<JsonValue> {
    let mut names: Vec<&String> = realms.map.keys().collect();
    names.sort();
    let answer: Vec<JsonValue> = names
        .into_iter()
        .map(|name| json!({"realm": name, "entries": list(&realms.map[name])}))
        .collect();
    Json(json!({"node": realms.node, "realms": answer}))
}

async fn sessions(State(realms): State<Arc<Realms>>) -> Json<JsonValue> {
    per_realm(&realms, |realm| {
        let state = realm.lock();
        let mut list: Vec<JsonValue> = state
            .sessions
            .iter()
            .map(|j| {
                let i = &j.info;
                json!({
                    "session": i.id,
                    "authid": i.authid,
                    "authrole": i.authrole,
                    "authmethod": i.authmethod,
                    "transport": i.transport.as_str(),
                    "serializer": i.serializer.name(),
                    "peer": i.peer.to_string(),
                    "joined": timestamp(i.joined),
                })
            })
            .collect();
        list.sort_by_key(|v| v["session"].as_u64());
        JsonValue::Array(list)
    })
}

async fn registrations(State(realms): State<Arc<Realms>>) -> Json<JsonValue> {
    per_realm(&realms, |realm| {
        let state = realm.lock();
        let mut list: Vec<JsonValue> = state
            .dealer
            .registrations()
            .map(|r| {
                json!({
                    "id": r.id,
                    "uri": r.uri,
                    "match": r.policy.as_str(),
                    "invoke": r.invoke.as_str(),
                    "created": timestamp(r.created),
                    "callees": r.callees.iter().map(|c| c.session).collect::<Vec<_>>(),
                })
            })
            .collect();
        list.sort_by(|a, b| a["uri"].as_str().cmp(&b["uri"].as_str()));
        JsonValue::Array(list)
    })
}

async fn subscriptions(State(realms): State<Arc<Realms>>) -> Json<JsonValue> {
    per_realm(&realms, |realm| {
        let state = realm.lock();
        let mut list: Vec<JsonValue> = state
            .broker
            .subscriptions()
            .map(|s| {
                json!({
                    "id": s.id,
                    "uri": s.uri,
                    "match": s.policy.as_str(),
                    "created": timestamp(s.created),
                    "subscribers": s.subscribers,
                })
            })
            .collect();
        list.sort_by(|a, b| a["uri"].as_str().cmp(&b["uri"].as_str()));
        JsonValue::Array(list)
    })
}
