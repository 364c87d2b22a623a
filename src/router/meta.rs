//! The meta API of a realm: procedures (`wamp.session.*`, `wamp.registration.*`,
//! `wamp.subscription.*`) that the router answers itself, and the meta events it publishes
//! when sessions join and leave and registrations and subscriptions change.
//!
//! Every answer here covers this node. With the cluster, the registration and subscription
//! answers (`list`, `lookup`, `match`, `get`, `list_callees`, `count_callees`,
//! `list_subscribers`, `count_subscribers`) and `wamp.session.count` become cluster-wide; the
//! session answers (`list`, `get`, `kill*`) stay per node.

use super::broker::{Audience, Subscription};
use super::dealer::Registration;
use super::request::Refusal;
use super::session::{random_id, timestamp, SessionId, SessionInfo};
use super::state::RealmState;
use super::uri::{reason, Change, Match};
use crate::wamp::{Dict, Payload, Value};

/// What a meta procedure asks of the realm besides an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Nothing.
    None,
    /// Close these sessions with this reason and message.
    Kill(Vec<SessionId>, String, String),
}

fn id(v: u64) -> Value {
    Value::Integer(v as i64)
}

fn s(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn args(payload: &Payload) -> &[Value] {
    match payload {
        Payload::Args(a) | Payload::ArgsKw(a, _) => a,
        _ => &[],
    }
}

fn kwargs(payload: &Payload) -> Option<&Dict> {
    match payload {
        Payload::ArgsKw(_, k) => Some(k),
        _ => None,
    }
}

fn arg_id(payload: &Payload, i: usize, what: &str) -> Result<u64, Refusal> {
    match args(payload).get(i) {
        Some(Value::Integer(v)) if *v >= 0 => Ok(*v as u64),
        _ => Err(Refusal::new(
            reason::INVALID_ARGUMENT,
            format!("argument {i} must be the {what} id"),
        )),
    }
}

fn arg_str<'a>(payload: &'a Payload, i: usize, what: &str) -> Result<&'a str, Refusal> {
    match args(payload).get(i) {
        Some(Value::String(v)) => Ok(v),
        _ => Err(Refusal::new(
            reason::INVALID_ARGUMENT,
            format!("argument {i} must be the {what}"),
        )),
    }
}

/// The `match` of a lookup's options (argument 1), default exact.
fn arg_match(payload: &Payload) -> Result<Match, Refusal> {
    match args(payload).get(1) {
        Some(Value::Dict(options)) => super::request::match_option(options),
        _ => Ok(Match::Exact),
    }
}

/// The details of a session, as `wamp.session.get` and `on_join` show them.
pub fn session_details(info: &SessionInfo) -> Dict {
    let mut transport = Dict::new();
    transport.insert("type".into(), s(info.transport.as_str()));
    transport.insert("serializer".into(), s(info.serializer.name()));
    transport.insert("peer".into(), s(&info.peer.to_string()));
    let mut d = Dict::new();
    d.insert("session".into(), id(info.id));
    d.insert("authid".into(), s(&info.authid));
    d.insert("authrole".into(), s(&info.authrole));
    d.insert("authmethod".into(), s(&info.authmethod));
    d.insert("authprovider".into(), s(&info.authprovider));
    d.insert("transport".into(), Value::Dict(transport));
    d
}

/// The authroles a `count`/`list` filters by (argument 0), if any.
fn roles_filter(payload: &Payload) -> Option<Vec<String>> {
    match args(payload).first() {
        Some(Value::List(roles)) => Some(
            roles
                .iter()
                .filter_map(|r| match r {
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn by_policy(entries: impl Iterator<Item = (Match, u64)>) -> Payload {
    let mut lists: [Vec<Value>; 3] = Default::default();
    for (policy, i) in entries {
        lists[policy as usize].push(id(i));
    }
    let mut d = Dict::new();
    for (policy, list) in [Match::Exact, Match::Prefix, Match::Wildcard]
        .into_iter()
        .zip(lists)
    {
        d.insert(policy.as_str().into(), Value::List(list));
    }
    Payload::Args(vec![Value::Dict(d)])
}

fn one(v: Value) -> Payload {
    Payload::Args(vec![v])
}

/// Answers a call of a meta procedure by `caller`; `None` when the router has no such
/// procedure.
pub fn call(
    state: &mut RealmState,
    caller: &SessionInfo,
    procedure: &str,
    payload: &Payload,
) -> Option<Result<(Payload, Effect), Refusal>> {
    let none = |p: Payload| Ok((p, Effect::None));
    match procedure {
        "wamp.session.add_testament" => return Some(add_testament(state, caller, payload)),
        "wamp.session.flush_testaments" => {
            let n = state.testaments.remove(&caller.id).map_or(0, |t| t.len());
            return Some(none(one(id(n as u64))));
        }
        _ => {}
    }
    let sessions = &state.sessions;
    let dealer = &state.dealer;
    let broker = &state.broker;
    let answer = match procedure {
        "wamp.session.count" => {
            let roles = roles_filter(payload);
            let n = sessions
                .iter()
                .filter(|j| roles.as_ref().is_none_or(|r| r.contains(&j.info.authrole)))
                .count();
            none(one(id(n as u64)))
        }
        "wamp.session.list" => {
            let roles = roles_filter(payload);
            let mut ids: Vec<u64> = sessions
                .iter()
                .filter(|j| roles.as_ref().is_none_or(|r| r.contains(&j.info.authrole)))
                .map(|j| j.info.id)
                .collect();
            ids.sort_unstable();
            none(one(Value::List(ids.into_iter().map(id).collect())))
        }
        "wamp.session.get" => {
            arg_id(payload, 0, "session").and_then(|target| match sessions.get(target) {
                Some(j) => none(one(Value::Dict(session_details(&j.info)))),
                None => Err(Refusal::new(
                    reason::NO_SUCH_SESSION,
                    format!("no session {target}"),
                )),
            })
        }
        "wamp.session.kill" | "wamp.session.kill_by_authid" | "wamp.session.kill_by_authrole" => {
            let (reason, message) = kill_reason(payload);
            let targets: Result<Vec<SessionId>, Refusal> = match procedure {
                "wamp.session.kill" => arg_id(payload, 0, "session").and_then(|target| {
                    if target == caller.id {
                        Err(Refusal::new(
                            reason::NO_SUCH_SESSION,
                            "a session cannot kill itself",
                        ))
                    } else if sessions.contains(target) {
                        Ok(vec![target])
                    } else {
                        Err(Refusal::new(
                            reason::NO_SUCH_SESSION,
                            format!("no session {target}"),
                        ))
                    }
                }),
                "wamp.session.kill_by_authid" => arg_str(payload, 0, "authid").map(|authid| {
                    sessions
                        .iter()
                        .filter(|j| j.info.authid == authid && j.info.id != caller.id)
                        .map(|j| j.info.id)
                        .collect()
                }),
                _ => arg_str(payload, 0, "authrole").map(|role| {
                    sessions
                        .iter()
                        .filter(|j| j.info.authrole == role && j.info.id != caller.id)
                        .map(|j| j.info.id)
                        .collect()
                }),
            };
            targets.map(|targets| {
                let answer = if procedure == "wamp.session.kill" {
                    Payload::Empty
                } else {
                    one(id(targets.len() as u64))
                };
                (answer, Effect::Kill(targets, reason, message))
            })
        }
        "wamp.registration.list" => {
            none(by_policy(dealer.registrations().map(|r| (r.policy, r.id))))
        }
        "wamp.registration.lookup" => arg_str(payload, 0, "procedure URI").and_then(|uri| {
            let policy = arg_match(payload)?;
            none(one(dealer
                .lookup(policy, uri)
                .map_or(Value::Null, |r| id(r.id))))
        }),
        "wamp.registration.match" => arg_str(payload, 0, "procedure URI").and_then(|uri| {
            none(one(dealer
                .best_match(uri)
                .map_or(Value::Null, |r| id(r.id))))
        }),
        "wamp.registration.get" => {
            arg_id(payload, 0, "registration").and_then(|rid| match dealer.registration(rid) {
                Some(r) => none(one(Value::Dict(registration_details(r)))),
                None => Err(no_registration(rid)),
            })
        }
        "wamp.registration.list_callees" | "wamp.registration.count_callees" => {
            arg_id(payload, 0, "registration").and_then(|rid| match dealer.registration(rid) {
                Some(r) if procedure.ends_with("count_callees") => {
                    none(one(id(r.callees.len() as u64)))
                }
                Some(r) => none(one(Value::List(
                    r.callees.iter().map(|c| id(c.session)).collect(),
                ))),
                None => Err(no_registration(rid)),
            })
        }
        "wamp.subscription.list" => {
            none(by_policy(broker.subscriptions().map(|s| (s.policy, s.id))))
        }
        "wamp.subscription.lookup" => arg_str(payload, 0, "topic URI").and_then(|uri| {
            let policy = arg_match(payload)?;
            none(one(broker
                .lookup(policy, uri)
                .map_or(Value::Null, |s| id(s.id))))
        }),
        "wamp.subscription.match" => arg_str(payload, 0, "topic URI").and_then(|uri| {
            let ids: Vec<Value> = broker.matching(uri).map(|s| id(s.id)).collect();
            none(one(if ids.is_empty() {
                Value::Null
            } else {
                Value::List(ids)
            }))
        }),
        "wamp.subscription.get" => {
            arg_id(payload, 0, "subscription").and_then(|sid| match broker.subscription(sid) {
                Some(sub) => none(one(Value::Dict(subscription_details(sub)))),
                None => Err(no_subscription(sid)),
            })
        }
        "wamp.subscription.list_subscribers" | "wamp.subscription.count_subscribers" => {
            arg_id(payload, 0, "subscription").and_then(|sid| match broker.subscription(sid) {
                Some(sub) if procedure.ends_with("count_subscribers") => {
                    none(one(id(sub.subscribers.len() as u64)))
                }
                Some(sub) => none(one(Value::List(
                    sub.subscribers.iter().map(|&x| id(x)).collect(),
                ))),
                None => Err(no_subscription(sid)),
            })
        }
        _ => return None,
    };
    Some(answer)
}

/// `wamp.session.add_testament(topic, args, kwargs)` with keyword arguments
/// `publish_options` and `scope` (`destroyed` or `detached`: sessions here do not resume, so
/// both are published when the session ends, however it ends).
fn add_testament(
    state: &mut RealmState,
    caller: &SessionInfo,
    payload: &Payload,
) -> Result<(Payload, Effect), Refusal> {
    let topic = arg_str(payload, 0, "topic")?.to_owned();
    if !super::uri::check(&topic, Match::Exact) || topic.starts_with("wamp.") {
        return Err(Refusal::new(
            reason::INVALID_URI,
            format!("{topic:?} is not a valid topic URI"),
        ));
    }
    let list = |v: Option<&Value>| match v {
        Some(Value::List(l)) => Ok(l.clone()),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(_) => Err(Refusal::new(
            reason::INVALID_ARGUMENT,
            "argument 1 must be a list",
        )),
    };
    let arguments = list(args(payload).get(1))?;
    let keywords = match args(payload).get(2) {
        Some(Value::Dict(d)) => d.clone(),
        None | Some(Value::Null) => Dict::new(),
        Some(_) => {
            return Err(Refusal::new(
                reason::INVALID_ARGUMENT,
                "argument 2 must be a dict",
            ))
        }
    };
    let kw = kwargs(payload);
    let options = match kw.and_then(|k| k.get("publish_options")) {
        Some(Value::Dict(d)) => d.clone(),
        None => Dict::new(),
        Some(_) => {
            return Err(Refusal::new(
                reason::INVALID_ARGUMENT,
                "publish_options must be a dict",
            ))
        }
    };
    match kw.and_then(|k| k.get("scope")) {
        None | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(Refusal::new(
                reason::INVALID_ARGUMENT,
                "scope must be destroyed or detached",
            ))
        }
    }
    let testaments = state.testaments.entry(caller.id).or_default();
    if testaments.len() >= super::state::MAX_TESTAMENTS_PER_SESSION {
        return Err(Refusal::new(
            reason::INVALID_ARGUMENT,
            format!(
                "a session may leave at most {} testaments",
                super::state::MAX_TESTAMENTS_PER_SESSION
            ),
        ));
    }
    testaments.push(super::state::Testament {
        topic,
        options,
        payload: Payload::ArgsKw(arguments, keywords),
    });
    Ok((Payload::Empty, Effect::None))
}

fn kill_reason(payload: &Payload) -> (String, String) {
    let k = kwargs(payload);
    let get = |key: &str| match k.and_then(|k| k.get(key)) {
        Some(Value::String(v)) => Some(v.clone()),
        _ => None,
    };
    (
        get("reason").unwrap_or_else(|| reason::KILLED.to_owned()),
        get("message").unwrap_or_default(),
    )
}

fn no_registration(rid: u64) -> Refusal {
    Refusal::new(
        reason::NO_SUCH_REGISTRATION,
        format!("no registration {rid}"),
    )
}

fn no_subscription(sid: u64) -> Refusal {
    Refusal::new(
        reason::NO_SUCH_SUBSCRIPTION,
        format!("no subscription {sid}"),
    )
}

/// Publishes a meta event to this realm's subscribers of `topic`.
pub fn publish(state: &RealmState, topic: &str, arguments: Vec<Value>) {
    if state.broker.matching(topic).next().is_none() {
        return;
    }
    state.broker.deliver(
        &state.sessions,
        random_id(),
        None,
        &Audience::default(),
        &Dict::new(),
        topic,
        &Payload::Args(arguments),
    );
}

/// The meta events of registration changes.
pub fn registration_events(state: &RealmState, changes: &[Change]) {
    let details = |rid| state.dealer.registration(rid).map(registration_details);
    table_events(
        state,
        "wamp.registration",
        ["on_register", "on_unregister"],
        changes,
        details,
    );
}

/// The meta events of subscription changes.
pub fn subscription_events(state: &RealmState, changes: &[Change]) {
    let details = |sid| state.broker.subscription(sid).map(subscription_details);
    table_events(
        state,
        "wamp.subscription",
        ["on_subscribe", "on_unsubscribe"],
        changes,
        details,
    );
}

/// `<prefix>.on_create` (session, details), `.on_<added>`, `.on_<removed>`, `.on_delete`
/// (session, id).
fn table_events(
    state: &RealmState,
    prefix: &str,
    [added, removed]: [&str; 2],
    changes: &[Change],
    details: impl Fn(u64) -> Option<Dict>,
) {
    for change in changes {
        let (event, session, entry) = match *change {
            Change::Created(session, entry) => {
                let Some(d) = details(entry) else { continue };
                publish(
                    state,
                    &format!("{prefix}.on_create"),
                    vec![id(session), Value::Dict(d)],
                );
                continue;
            }
            Change::Added(session, entry) => (added, session, entry),
            Change::Removed(session, entry) => (removed, session, entry),
            Change::Deleted(session, entry) => ("on_delete", session, entry),
        };
        publish(
            state,
            &format!("{prefix}.{event}"),
            vec![id(session), id(entry)],
        );
    }
}

/// A registration as `wamp.registration.get` and `on_create` show it.
fn registration_details(r: &Registration) -> Dict {
    let mut d = Dict::new();
    d.insert("id".into(), id(r.id));
    d.insert("created".into(), s(&timestamp(r.created)));
    d.insert("uri".into(), s(&r.uri));
    d.insert("match".into(), s(r.policy.as_str()));
    d.insert("invoke".into(), s(r.invoke.as_str()));
    d
}

/// A subscription as `wamp.subscription.get` and `on_create` show it.
fn subscription_details(sub: &Subscription) -> Dict {
    let mut d = Dict::new();
    d.insert("id".into(), id(sub.id));
    d.insert("created".into(), s(&timestamp(sub.created)));
    d.insert("uri".into(), s(&sub.uri));
    d.insert("match".into(), s(sub.policy.as_str()));
    d
}
