//! One realm on this node: its sessions, dealer and broker under one lock, its users and
//! roles, and what a joined session's messages do.
//!
//! Every message of a session is handled at once on the connection's task, under the realm's
//! lock (a `std` mutex, never held across an `.await`): the lookups and the queueing of the
//! messages it causes, nothing that waits. The deadlines of calls are kept by one task per
//! realm ([`Realm::run_deadlines`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::auth::{Action, Authenticator, Authorizer};
use super::broker::Broker;
use super::config::RealmConfig;
use super::dealer::Dealer;
use super::meta;
use super::metrics::RealmMetrics;
use super::request::Refusal;
use super::session::{Joined, SessionId, SessionInfo, Sessions};
pub use super::state::RealmState;
use super::uri::reason;
use crate::wamp::{code, Dict, Value, WampMessage};
use crate::ConfigError;

/// Removes a session: its registrations and subscriptions go, its calls end, and the
/// meta events say so.
pub fn remove(state: &mut RealmState, session: SessionId) {
    let Some(joined) = state.sessions.get(session).cloned() else {
        return;
    };
    // Its testaments go out as its own publications, before it leaves the tables.
    for testament in state.testaments.remove(&session).unwrap_or_default() {
        let RealmState {
            sessions, broker, ..
        } = &mut *state;
        let _ = broker.publish(
            sessions,
            &joined.info,
            &testament.options,
            &testament.topic,
            &testament.payload,
        );
    }
    let registrations = state.dealer.session_left(&state.sessions, session);
    let subscriptions = state.broker.session_left(session);
    state.sessions.remove(session);
    state
        .sessions
        .metrics()
        .sessions
        .set(state.sessions.len() as f64);
    meta::registration_events(state, &registrations);
    meta::subscription_events(state, &subscriptions);
    let info = &joined.info;
    meta::publish(
        state,
        "wamp.session.on_leave",
        vec![
            Value::Integer(info.id as i64),
            Value::String(info.authid.clone()),
            Value::String(info.authrole.clone()),
        ],
    );
}

/// Closes sessions the meta API killed: GOODBYE with the reason, then the connection.
fn kill(state: &mut RealmState, targets: &[SessionId], reason: &str, message: &str) {
    for &target in targets {
        let Some(joined) = state.sessions.get(target).cloned() else {
            continue;
        };
        let mut details = Dict::new();
        if !message.is_empty() {
            details.insert("message".into(), Value::String(message.to_owned()));
        }
        let _ = joined.outbox.send(&WampMessage::Goodbye {
            details,
            reason: reason.to_owned(),
        });
        joined.outbox.kill();
        remove(state, target);
    }
}

/// A realm on this node.
#[derive(Debug)]
pub struct Realm {
    name: String,
    authenticator: Authenticator,
    authorizer: Authorizer,
    state: Mutex<RealmState>,
    deadlines: Notify,
}

impl Realm {
    /// The realm of a configuration; `key` names it in errors (`router.realms[0]`).
    pub fn new(
        config: &RealmConfig,
        key: &str,
        node: &str,
        max_retained: usize,
    ) -> Result<Realm, ConfigError> {
        let metrics = Arc::new(RealmMetrics::new(node, &config.name));
        Ok(Realm {
            name: config.name.clone(),
            authenticator: Authenticator::new(config, key)?,
            authorizer: Authorizer::new(config),
            state: Mutex::new(RealmState {
                sessions: Sessions::new(metrics),
                dealer: Dealer::default(),
                broker: Broker::new(max_retained),
                testaments: Default::default(),
            }),
            deadlines: Notify::new(),
        })
    }

    /// The realm URI.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who may join, and how they prove it.
    pub fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// The routing state, locked. Hold it briefly, never across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, RealmState> {
        // A panic under the lock leaves the state as it was at that point; routing goes on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a joined session; its WELCOME must be queued first.
    pub fn join(&self, joined: Joined) {
        let mut state = self.lock();
        let details = meta::session_details(&joined.info);
        state.sessions.insert(joined);
        state
            .sessions
            .metrics()
            .sessions
            .set(state.sessions.len() as f64);
        meta::publish(&state, "wamp.session.on_join", vec![Value::Dict(details)]);
    }

    /// Removes a session: its registrations and subscriptions go, its calls end.
    pub fn leave(&self, session: SessionId) {
        remove(&mut self.lock(), session);
    }

    /// Handles a message of a joined session. `Err` is a protocol violation: the caller ends
    /// the session with ABORT.
    pub fn handle(&self, session: &SessionInfo, message: WampMessage) -> Result<(), String> {
        use WampMessage as M;
        let now = Instant::now();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.sessions.metrics().message_in(message.code());
        if let M::Call {
            request,
            procedure,
            payload,
            ..
        } = &message
        {
            if procedure.starts_with("wamp.") {
                self.meta_call(state, session, *request, procedure, payload);
                return Ok(());
            }
        }
        let RealmState {
            sessions,
            dealer,
            broker,
            ..
        } = state;
        let refuse = |sessions: &Sessions, request_type: u64, request, refusal: Refusal| {
            sessions.send(session.id, &refusal.to_error(request_type, request));
        };
        let denied = |action: &str, uri: &str| {
            Refusal::new(
                reason::NOT_AUTHORIZED,
                format!("role {} may not {action} {uri}", session.authrole),
            )
        };
        match message {
            M::Register {
                request,
                options,
                procedure,
            } => {
                if !self
                    .authorizer
                    .allows(&session.authrole, Action::Register, &procedure)
                {
                    refuse(
                        sessions,
                        code::REGISTER,
                        request,
                        denied("register", &procedure),
                    );
                    return Ok(());
                }
                match dealer.register(session, &options, &procedure) {
                    Ok((registration, changes)) => {
                        sessions.send(
                            session.id,
                            &M::Registered {
                                request,
                                registration,
                            },
                        );
                        meta::registration_events(state, &changes);
                    }
                    Err(refusal) => refuse(sessions, code::REGISTER, request, refusal),
                }
            }
            M::Unregister {
                request,
                registration,
            } => match dealer.unregister(sessions, session.id, registration) {
                Ok(changes) => {
                    sessions.send(session.id, &M::Unregistered { request });
                    meta::registration_events(state, &changes);
                }
                Err(refusal) => refuse(sessions, code::UNREGISTER, request, refusal),
            },
            M::Call {
                request,
                options,
                procedure,
                payload,
            } => {
                if !self
                    .authorizer
                    .allows(&session.authrole, Action::Call, &procedure)
                {
                    refuse(sessions, code::CALL, request, denied("call", &procedure));
                    return Ok(());
                }
                let before = dealer.next_deadline();
                let options = self.disclosing(session, &procedure, options);
                if let Err(refusal) = dealer.call(
                    sessions, session, request, &options, &procedure, &payload, now,
                ) {
                    refuse(sessions, code::CALL, request, refusal);
                }
                if dealer.next_deadline() != before {
                    self.deadlines.notify_one();
                }
            }
            M::Cancel { request, options } => {
                if let Err(refusal) = dealer.cancel(sessions, session.id, request, &options) {
                    refuse(sessions, code::CANCEL, request, refusal);
                }
            }
            M::Yield {
                request,
                options,
                payload,
            } => dealer.yield_(sessions, session.id, request, &options, &payload),
            M::Error {
                request_type: code::INVOCATION,
                request,
                details,
                error,
                payload,
            } => dealer.callee_error(sessions, session.id, request, &details, &error, &payload),
            M::Subscribe {
                request,
                options,
                topic,
            } => {
                if !self
                    .authorizer
                    .allows(&session.authrole, Action::Subscribe, &topic)
                {
                    refuse(
                        sessions,
                        code::SUBSCRIBE,
                        request,
                        denied("subscribe to", &topic),
                    );
                    return Ok(());
                }
                match broker.subscribe(session.id, &options, &topic) {
                    Ok((subscription, changes)) => {
                        sessions.send(
                            session.id,
                            &M::Subscribed {
                                request,
                                subscription,
                            },
                        );
                        if matches!(options.get("get_retained"), Some(Value::Bool(true))) {
                            broker.send_retained(sessions, session.id, subscription);
                        }
                        meta::subscription_events(state, &changes);
                    }
                    Err(refusal) => refuse(sessions, code::SUBSCRIBE, request, refusal),
                }
            }
            M::Unsubscribe {
                request,
                subscription,
            } => match broker.unsubscribe(session.id, subscription) {
                Ok(changes) => {
                    sessions.send(session.id, &M::Unsubscribed { request });
                    meta::subscription_events(state, &changes);
                }
                Err(refusal) => refuse(sessions, code::UNSUBSCRIBE, request, refusal),
            },
            M::Publish {
                request,
                options,
                topic,
                payload,
            } => {
                let acknowledge = matches!(options.get("acknowledge"), Some(Value::Bool(true)));
                let options = self.disclosing(session, &topic, options);
                let result = if self
                    .authorizer
                    .allows(&session.authrole, Action::Publish, &topic)
                {
                    broker.publish(sessions, session, &options, &topic, &payload)
                } else {
                    Err(denied("publish to", &topic))
                };
                match result {
                    Ok(publication) if acknowledge => {
                        sessions.send(
                            session.id,
                            &M::Published {
                                request,
                                publication,
                            },
                        );
                    }
                    Err(refusal) if acknowledge => {
                        refuse(sessions, code::PUBLISH, request, refusal)
                    }
                    _ => {}
                }
            }
            other => {
                return Err(format!(
                    "{} is not a message a client sends in a session",
                    other.name()
                ))
            }
        }
        Ok(())
    }

    /// The options of a call or publication, with `disclose_me` when the session's role
    /// discloses it on this URI.
    fn disclosing(&self, session: &SessionInfo, uri: &str, mut options: Dict) -> Dict {
        if self.authorizer.discloses(&session.authrole, uri) {
            options.insert("disclose_me".into(), Value::Bool(true));
        }
        options
    }

    /// A call of a `wamp.` procedure: the meta API answers it.
    fn meta_call(
        &self,
        state: &mut RealmState,
        session: &SessionInfo,
        request: u64,
        procedure: &str,
        payload: &crate::wamp::Payload,
    ) {
        let refuse = |state: &RealmState, refusal: Refusal| {
            state
                .sessions
                .send(session.id, &refusal.to_error(code::CALL, request));
        };
        if !self
            .authorizer
            .allows(&session.authrole, Action::Call, procedure)
        {
            let message = format!("role {} may not call {procedure}", session.authrole);
            return refuse(state, Refusal::new(reason::NOT_AUTHORIZED, message));
        }
        match meta::call(state, session, procedure, payload) {
            None => refuse(
                state,
                Refusal::new(
                    reason::NO_SUCH_PROCEDURE,
                    format!("the router has no procedure {procedure}"),
                ),
            ),
            Some(Err(refusal)) => refuse(state, refusal),
            Some(Ok((payload, effect))) => {
                state.sessions.send(
                    session.id,
                    &WampMessage::Result {
                        request,
                        details: Dict::new(),
                        payload,
                    },
                );
                if let meta::Effect::Kill(targets, reason, message) = effect {
                    kill(state, &targets, &reason, &message);
                }
            }
        }
    }

    /// Ends calls whose deadline passed, until `stop`.
    pub async fn run_deadlines(self: Arc<Self>, stop: CancellationToken) {
        // Without a deadline, look again at least this often (a cheap check).
        const IDLE: Duration = Duration::from_secs(1);
        loop {
            let next = {
                let mut state = self.lock();
                let RealmState {
                    sessions, dealer, ..
                } = &mut *state;
                // The gauges are set at least once a second, so that an idle realm's series
                // stay (the exporter drops series not updated for a while).
                let metrics = sessions.metrics();
                metrics.sessions.set(sessions.len() as f64);
                metrics.calls_in_flight.set(dealer.calls_in_flight() as f64);
                dealer.expire(sessions, Instant::now())
            };
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(IDLE),
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = sleep => {}
                () = self.deadlines.notified() => {}
            }
        }
    }

    /// The WELCOME details' `roles` of the router: what it really does.
    pub fn router_roles() -> Dict {
        let features = crate::wamp::role;
        let mut roles = Dict::new();
        roles.insert(
            "broker".into(),
            features(&[
                "publisher_identification",
                "publisher_exclusion",
                "subscriber_blackwhite_listing",
                "pattern_based_subscription",
                "event_retention",
                "session_meta_api",
                "subscription_meta_api",
                "testament_meta_api",
                "payload_passthru_mode",
            ]),
        );
        roles.insert(
            "dealer".into(),
            features(&[
                "caller_identification",
                "progressive_call_results",
                "call_canceling",
                "call_timeout",
                "pattern_based_registration",
                "shared_registration",
                "session_meta_api",
                "registration_meta_api",
                "testament_meta_api",
                "payload_passthru_mode",
            ]),
        );
        roles
    }
}
