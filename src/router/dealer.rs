//! The dealer: registrations (REGISTER, UNREGISTER), calls (CALL → INVOCATION, YIELD →
//! RESULT, ERROR), their cancellation (CANCEL, INTERRUPT) and their deadlines.
//!
//! Registrations live in one [`PatternMap`] by (match, URI); each holds its callees and its
//! invocation policy. A call picks its callee with [`pick`], a pure function over weighted
//! candidates: a session on this node weighs 1, and a node of the cluster will weigh its number
//! of callees, so the same function picks over the whole cluster.
//!
//! A call in flight is keyed by (callee session, INVOCATION request id), the id the callee
//! answers with, and indexed by (caller session, CALL request id) for CANCEL and by deadline
//! for the call timeout. Every call ends exactly once: RESULT, the callee's ERROR, or the
//! router's ERROR (`wamp.error.canceled` when the callee leaves or the caller cancels,
//! `wamp.error.timeout` when its deadline passes).

use std::collections::{BTreeSet, HashMap};
use std::time::{Instant, SystemTime};

use super::request::{bool_option, match_option, string_option, Refusal};
use super::session::{random_id, SessionId, SessionInfo, Sessions};
use super::uri::{check, reason, Change as RegistrationChange, Match, PatternMap};
use crate::wamp::{code, Dict, Id, Payload, Value, WampMessage};

/// A registration id.
pub type RegistrationId = Id;

/// How a shared registration picks the callee of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invoke {
    /// One callee only; a second REGISTER is refused.
    Single,
    /// The callees in turn.
    RoundRobin,
    /// A callee at random.
    Random,
    /// The callee that registered first.
    First,
    /// The callee that registered last.
    Last,
}

impl Invoke {
    /// The option's value in REGISTER (`roundrobin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Invoke::Single => "single",
            Invoke::RoundRobin => "roundrobin",
            Invoke::Random => "random",
            Invoke::First => "first",
            Invoke::Last => "last",
        }
    }

    fn parse(s: &str) -> Option<Invoke> {
        [
            Invoke::Single,
            Invoke::RoundRobin,
            Invoke::Random,
            Invoke::First,
            Invoke::Last,
        ]
        .into_iter()
        .find(|i| i.as_str() == s)
    }
}

/// One candidate callee of a call: a session here (weight 1), or a node of the cluster with
/// its number of callees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// How many callees it stands for.
    pub weight: usize,
    /// When it (its earliest callee, for a node) registered: `first` and `last` order by it.
    pub registered: SystemTime,
}

/// Picks the candidate of a call by the policy; `cursor` is the registration's round-robin
/// position, `random` a random number. `None` only when there is no candidate.
pub fn pick(
    invoke: Invoke,
    candidates: &[Candidate],
    cursor: &mut u64,
    random: u64,
) -> Option<usize> {
    let total: u64 = candidates.iter().map(|c| c.weight as u64).sum();
    if total == 0 {
        return None;
    }
    let slot = |mut n: u64| {
        candidates.iter().position(|c| {
            if n < c.weight as u64 {
                true
            } else {
                n -= c.weight as u64;
                false
            }
        })
    };
    match invoke {
        Invoke::Single => slot(0),
        Invoke::RoundRobin => {
            let n = *cursor % total;
            *cursor = cursor.wrapping_add(1);
            slot(n)
        }
        Invoke::Random => slot(random % total),
        // Ties go to the earlier position (the order of registration here).
        Invoke::First => (0..candidates.len())
            .filter(|&i| candidates[i].weight > 0)
            .min_by_key(|&i| candidates[i].registered),
        Invoke::Last => (0..candidates.len())
            .filter(|&i| candidates[i].weight > 0)
            // max_by_key keeps the last of equals: the later position.
            .max_by_key(|&i| candidates[i].registered),
    }
}

/// A callee of a registration on this node.
#[derive(Debug, Clone)]
pub struct Callee {
    /// Its session.
    pub session: SessionId,
    /// When it registered.
    pub registered: SystemTime,
}

/// A procedure registration: its pattern, policy and callees.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Its id.
    pub id: RegistrationId,
    /// The procedure URI or pattern.
    pub uri: String,
    /// How it matches.
    pub policy: Match,
    /// How it picks a callee.
    pub invoke: Invoke,
    /// When it was created.
    pub created: SystemTime,
    /// Its callees on this node, in the order they registered.
    pub callees: Vec<Callee>,
    /// Whether its callees asked for the caller's identity on every call.
    pub disclose_caller: bool,
    cursor: u64,
}

/// How a CANCEL ends a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelMode {
    /// ERROR to the caller at once; the callee is not told.
    Skip,
    /// INTERRUPT to the callee; the caller's ERROR waits for the callee's answer.
    Kill,
    /// INTERRUPT to the callee and ERROR to the caller at once.
    KillNoWait,
}

impl CancelMode {
    fn parse(s: &str) -> Option<CancelMode> {
        match s {
            "skip" => Some(CancelMode::Skip),
            "kill" => Some(CancelMode::Kill),
            "killnowait" => Some(CancelMode::KillNoWait),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            CancelMode::Skip => "skip",
            CancelMode::Kill => "kill",
            CancelMode::KillNoWait => "killnowait",
        }
    }
}

/// (callee session, INVOCATION request id).
type CallKey = (SessionId, Id);

/// A call in flight.
#[derive(Debug)]
struct Call {
    caller: SessionId,
    caller_request: Id,
    registration: RegistrationId,
    deadline: Option<Instant>,
    /// The caller asked for progressive results.
    receive_progress: bool,
    /// A CANCEL `kill` was sent as INTERRUPT: the callee's answer ends the call.
    killing: bool,
    started: Instant,
}

/// The dealer of one realm on this node.
#[derive(Debug, Default)]
pub struct Dealer {
    procedures: PatternMap<RegistrationId>,
    registrations: HashMap<RegistrationId, Registration>,
    calls: HashMap<CallKey, Call>,
    by_caller: HashMap<(SessionId, Id), CallKey>,
    deadlines: BTreeSet<(Instant, CallKey)>,
}

impl Dealer {
    /// The registration with this id.
    pub fn registration(&self, id: RegistrationId) -> Option<&Registration> {
        self.registrations.get(&id)
    }

    /// Every registration.
    pub fn registrations(&self) -> impl Iterator<Item = &Registration> {
        self.registrations.values()
    }

    /// The registration of exactly this pattern.
    pub fn lookup(&self, policy: Match, uri: &str) -> Option<&Registration> {
        self.procedures
            .get(policy, uri)
            .and_then(|id| self.registrations.get(id))
    }

    /// The registration a call of `uri` would go to.
    pub fn best_match(&self, uri: &str) -> Option<&Registration> {
        self.procedures
            .best(uri)
            .and_then(|(_, _, id)| self.registrations.get(id))
    }

    /// Calls in flight.
    pub fn calls_in_flight(&self) -> usize {
        self.calls.len()
    }

    /// REGISTER from `callee`.
    pub fn register(
        &mut self,
        callee: &SessionInfo,
        options: &Dict,
        procedure: &str,
    ) -> Result<(RegistrationId, Vec<RegistrationChange>), Refusal> {
        let policy = match_option(options)?;
        let invoke = match string_option(options, "invoke")? {
            None => Invoke::Single,
            Some(s) => Invoke::parse(s).ok_or_else(|| {
                Refusal::new(
                    reason::INVALID_ARGUMENT,
                    format!("unknown invocation policy {s:?}"),
                )
            })?,
        };
        let disclose_caller = bool_option(options, "disclose_caller")?;
        if !check(procedure, policy) {
            return Err(Refusal::new(
                reason::INVALID_URI,
                format!("{procedure:?} is not a valid {policy} procedure URI"),
            ));
        }
        if procedure.starts_with("wamp.") {
            return Err(Refusal::new(
                reason::INVALID_URI,
                "the wamp. namespace is the router's",
            ));
        }
        let now = SystemTime::now();
        let callee_entry = Callee {
            session: callee.id,
            registered: now,
        };
        if let Some(&id) = self.procedures.get(policy, procedure) {
            let Some(registration) = self.registrations.get_mut(&id) else {
                unreachable!("a pattern's registration is in the table");
            };
            if registration.invoke == Invoke::Single || registration.invoke != invoke {
                return Err(Refusal::new(
                    reason::PROCEDURE_ALREADY_EXISTS,
                    format!(
                        "{procedure} is registered with invoke={}",
                        registration.invoke.as_str()
                    ),
                ));
            }
            if registration.callees.iter().any(|c| c.session == callee.id) {
                return Err(Refusal::new(
                    reason::PROCEDURE_ALREADY_EXISTS,
                    format!("this session registered {procedure} already"),
                ));
            }
            registration.callees.push(callee_entry);
            registration.disclose_caller |= disclose_caller;
            return Ok((id, vec![RegistrationChange::Added(callee.id, id)]));
        }
        let mut id = random_id();
        while self.registrations.contains_key(&id) {
            id = random_id();
        }
        self.procedures.insert(policy, procedure, id);
        self.registrations.insert(
            id,
            Registration {
                id,
                uri: procedure.to_owned(),
                policy,
                invoke,
                created: now,
                callees: vec![callee_entry],
                disclose_caller,
                cursor: 0,
            },
        );
        Ok((
            id,
            vec![
                RegistrationChange::Created(callee.id, id),
                RegistrationChange::Added(callee.id, id),
            ],
        ))
    }

    /// UNREGISTER from `callee`.
    pub fn unregister(
        &mut self,
        sessions: &Sessions,
        callee: SessionId,
        registration: RegistrationId,
    ) -> Result<Vec<RegistrationChange>, Refusal> {
        let registered = self
            .registrations
            .get(&registration)
            .is_some_and(|r| r.callees.iter().any(|c| c.session == callee));
        if !registered {
            return Err(Refusal::new(
                reason::NO_SUCH_REGISTRATION,
                format!("no registration {registration} of this session"),
            ));
        }
        Ok(self.remove_callee(sessions, callee, registration))
    }

    /// Takes `callee` out of a registration; its calls in flight through it end with
    /// `wamp.error.canceled`.
    fn remove_callee(
        &mut self,
        sessions: &Sessions,
        callee: SessionId,
        registration: RegistrationId,
    ) -> Vec<RegistrationChange> {
        let mut changes = vec![RegistrationChange::Removed(callee, registration)];
        if let Some(r) = self.registrations.get_mut(&registration) {
            r.callees.retain(|c| c.session != callee);
            if r.callees.is_empty() {
                let (policy, uri) = (r.policy, r.uri.clone());
                self.registrations.remove(&registration);
                self.procedures.remove(policy, &uri);
                changes.push(RegistrationChange::Deleted(callee, registration));
            }
        }
        let keys: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|((s, _), call)| *s == callee && call.registration == registration)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.fail(sessions, key, reason::CANCELED, "the callee unregistered");
        }
        changes
    }

    /// CALL from `caller`: an INVOCATION to the callee, or an ERROR to the caller.
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &mut self,
        sessions: &mut Sessions,
        caller: &SessionInfo,
        request: Id,
        options: &Dict,
        procedure: &str,
        payload: &Payload,
        now: Instant,
    ) -> Result<(), Refusal> {
        if !check(procedure, Match::Exact) {
            return Err(Refusal::new(
                reason::INVALID_URI,
                format!("{procedure:?} is not a valid procedure URI"),
            ));
        }
        // Milliseconds, as the spec says; a float (autobahn-python passes its own number
        // through) is rounded.
        let timeout = match options.get("timeout") {
            None | Some(Value::Integer(0)) => None,
            Some(Value::Integer(ms)) if *ms > 0 => {
                Some(std::time::Duration::from_millis(*ms as u64))
            }
            Some(Value::Float(ms)) if ms.is_finite() && *ms >= 0.0 && *ms < 1e15 => {
                Some(std::time::Duration::from_millis(ms.round() as u64)).filter(|d| !d.is_zero())
            }
            Some(_) => {
                return Err(Refusal::new(
                    reason::INVALID_ARGUMENT,
                    "option timeout must be a number of milliseconds, 0 or more",
                ))
            }
        };
        let receive_progress = bool_option(options, "receive_progress")?;
        let disclose_me = bool_option(options, "disclose_me")?;
        if self.by_caller.contains_key(&(caller.id, request)) {
            return Err(Refusal::new(
                reason::INVALID_ARGUMENT,
                format!("request {request} of this session is a call in flight already"),
            ));
        }
        let Some((policy, _, &id)) = self.procedures.best(procedure) else {
            return Err(Refusal::new(
                reason::NO_SUCH_PROCEDURE,
                format!("no callee registered {procedure}"),
            ));
        };
        let Some(registration) = self.registrations.get_mut(&id) else {
            unreachable!("a pattern's registration is in the table");
        };
        let candidates: Vec<Candidate> = registration
            .callees
            .iter()
            .map(|c| Candidate {
                weight: 1,
                registered: c.registered,
            })
            .collect();
        let Some(i) = pick(
            registration.invoke,
            &candidates,
            &mut registration.cursor,
            random_id(),
        ) else {
            return Err(Refusal::new(
                reason::NO_SUCH_PROCEDURE,
                format!("no callee registered {procedure}"),
            ));
        };
        let callee = registration.callees[i].session;
        let Some(callee_info) = sessions.get(callee).map(|j| j.info.clone()) else {
            return Err(Refusal::new(
                reason::NO_SUCH_PROCEDURE,
                format!("the callee of {procedure} left"),
            ));
        };
        let mut details = Dict::new();
        if policy != Match::Exact {
            details.insert("procedure".into(), Value::String(procedure.to_owned()));
        }
        let progress =
            receive_progress && callee_info.has_feature("callee", "progressive_call_results");
        if progress {
            details.insert("receive_progress".into(), Value::Bool(true));
        }
        if disclose_me || registration.disclose_caller {
            details.insert("caller".into(), Value::Integer(caller.id as i64));
            details.insert("caller_authid".into(), Value::String(caller.authid.clone()));
            details.insert(
                "caller_authrole".into(),
                Value::String(caller.authrole.clone()),
            );
        }
        if let Some(timeout) = timeout {
            details.insert("timeout".into(), Value::Integer(timeout.as_millis() as i64));
        }
        let Some(invocation) = sessions.next_request(callee) else {
            unreachable!("the callee's session was found above");
        };
        let message = WampMessage::Invocation {
            request: invocation,
            registration: id,
            details,
            payload: payload.clone(),
        };
        let key = (callee, invocation);
        let deadline = timeout.map(|t| now + t);
        if let Some(deadline) = deadline {
            self.deadlines.insert((deadline, key));
        }
        self.calls.insert(
            key,
            Call {
                caller: caller.id,
                caller_request: request,
                registration: id,
                deadline,
                receive_progress,
                killing: false,
                started: now,
            },
        );
        self.by_caller.insert((caller.id, request), key);
        sessions
            .metrics()
            .calls_in_flight
            .set(self.calls.len() as f64);
        if !sessions.send(callee, &message) {
            // The callee was just closed for not reading: the call ends here.
            self.fail(sessions, key, reason::CANCELED, "the callee is gone");
        }
        Ok(())
    }

    /// Ends a call with an ERROR from the router to its caller; INTERRUPTs the callee unless
    /// `skip`.
    fn fail(&mut self, sessions: &Sessions, key: CallKey, uri: &'static str, message: &str) {
        let Some(call) = self.end(sessions, key) else {
            return;
        };
        sessions.send(
            call.caller,
            &Refusal::new(uri, message).to_error(code::CALL, call.caller_request),
        );
    }

    /// Removes a call from every index.
    fn end(&mut self, sessions: &Sessions, key: CallKey) -> Option<Call> {
        let call = self.calls.remove(&key)?;
        self.by_caller.remove(&(call.caller, call.caller_request));
        if let Some(deadline) = call.deadline {
            self.deadlines.remove(&(deadline, key));
        }
        let metrics = sessions.metrics();
        metrics.calls_in_flight.set(self.calls.len() as f64);
        metrics
            .call_latency
            .record(call.started.elapsed().as_secs_f64());
        Some(call)
    }

    fn interrupt(sessions: &Sessions, key: CallKey, mode: CancelMode, why: &'static str) {
        let (callee, invocation) = key;
        let supports = sessions
            .get(callee)
            .is_some_and(|j| j.info.has_feature("callee", "call_canceling"));
        if supports {
            let mut options = Dict::new();
            options.insert("mode".into(), Value::String(mode.as_str().into()));
            options.insert("reason".into(), Value::String(why.into()));
            sessions.send(
                callee,
                &WampMessage::Interrupt {
                    request: invocation,
                    options,
                },
            );
        }
    }

    /// YIELD from `callee`: a RESULT to the caller (progressive ones keep the call open).
    pub fn yield_(
        &mut self,
        sessions: &Sessions,
        callee: SessionId,
        request: Id,
        options: &Dict,
        payload: &Payload,
    ) {
        let key = (callee, request);
        let Some(call) = self.calls.get(&key) else {
            // The call ended already (canceled, timed out): its late answers are dropped.
            return;
        };
        let progress = matches!(options.get("progress"), Some(Value::Bool(true)));
        if progress && !call.receive_progress {
            return;
        }
        let mut details = Dict::new();
        if progress {
            details.insert("progress".into(), Value::Bool(true));
        }
        let (caller, caller_request) = (call.caller, call.caller_request);
        if !progress {
            self.end(sessions, key);
        }
        sessions.send(
            caller,
            &WampMessage::Result {
                request: caller_request,
                details,
                payload: payload.clone(),
            },
        );
    }

    /// ERROR from `callee` for an INVOCATION: the same error to the caller, arguments
    /// untouched.
    pub fn callee_error(
        &mut self,
        sessions: &Sessions,
        callee: SessionId,
        request: Id,
        details: &Dict,
        error: &str,
        payload: &Payload,
    ) {
        let Some(call) = self.end(sessions, (callee, request)) else {
            return;
        };
        sessions.send(
            call.caller,
            &WampMessage::Error {
                request_type: code::CALL,
                request: call.caller_request,
                details: details.clone(),
                error: error.to_owned(),
                payload: payload.clone(),
            },
        );
    }

    /// CANCEL from `caller`.
    pub fn cancel(
        &mut self,
        sessions: &Sessions,
        caller: SessionId,
        request: Id,
        options: &Dict,
    ) -> Result<(), Refusal> {
        let mode = match string_option(options, "mode")? {
            None => CancelMode::KillNoWait,
            Some(s) => CancelMode::parse(s).ok_or_else(|| {
                Refusal::new(
                    reason::INVALID_ARGUMENT,
                    format!("unknown cancel mode {s:?}: skip, kill or killnowait"),
                )
            })?,
        };
        let Some(&key) = self.by_caller.get(&(caller, request)) else {
            // Ended already: nothing to cancel, and its answer was sent.
            return Ok(());
        };
        let callee_cancels = sessions
            .get(key.0)
            .is_some_and(|j| j.info.has_feature("callee", "call_canceling"));
        match mode {
            CancelMode::Kill if callee_cancels => {
                if let Some(call) = self.calls.get_mut(&key) {
                    if !call.killing {
                        call.killing = true;
                        Self::interrupt(sessions, key, mode, reason::CANCELED);
                    }
                }
            }
            CancelMode::Skip | CancelMode::Kill => {
                self.fail(
                    sessions,
                    key,
                    reason::CANCELED,
                    "the caller canceled the call",
                );
            }
            CancelMode::KillNoWait => {
                Self::interrupt(sessions, key, mode, reason::CANCELED);
                self.fail(
                    sessions,
                    key,
                    reason::CANCELED,
                    "the caller canceled the call",
                );
            }
        }
        Ok(())
    }

    /// Ends the calls whose deadline passed: `wamp.error.timeout` to the caller, INTERRUPT
    /// to the callee. Returns the next deadline.
    pub fn expire(&mut self, sessions: &Sessions, now: Instant) -> Option<Instant> {
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline > now {
                return Some(deadline);
            }
            Self::interrupt(sessions, key, CancelMode::KillNoWait, reason::TIMEOUT);
            self.fail(sessions, key, reason::TIMEOUT, "the call's timeout passed");
        }
        None
    }

    /// The earliest deadline of a call in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// A session left: its registrations go, the calls it was serving end with
    /// `wamp.error.canceled`, and the calls it made are interrupted.
    pub fn session_left(
        &mut self,
        sessions: &Sessions,
        session: SessionId,
    ) -> Vec<RegistrationChange> {
        let registrations: Vec<RegistrationId> = self
            .registrations
            .values()
            .filter(|r| r.callees.iter().any(|c| c.session == session))
            .map(|r| r.id)
            .collect();
        let mut changes = Vec::new();
        for id in registrations {
            changes.extend(self.remove_callee(sessions, session, id));
        }
        let served: Vec<CallKey> = self
            .calls
            .keys()
            .filter(|(s, _)| *s == session)
            .copied()
            .collect();
        for key in served {
            self.fail(sessions, key, reason::CANCELED, "the callee left");
        }
        let made: Vec<CallKey> = self
            .calls
            .iter()
            .filter(|(_, call)| call.caller == session)
            .map(|(k, _)| *k)
            .collect();
        for key in made {
            Self::interrupt(sessions, key, CancelMode::KillNoWait, reason::CANCELED);
            self.end(sessions, key);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn local(secs: u64) -> Candidate {
        Candidate {
            weight: 1,
            registered: at(secs),
        }
    }

    #[test]
    fn roundrobin_takes_each_callee_in_turn_and_a_node_by_its_weight() {
        let candidates = [local(1), local(2), local(3)];
        let mut cursor = 0;
        let picks: Vec<usize> = (0..6)
            .map(|_| pick(Invoke::RoundRobin, &candidates, &mut cursor, 0).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let node = Candidate {
            weight: 2,
            registered: at(0),
        };
        let candidates = [local(1), node];
        let picks: Vec<usize> = (0..6)
            .map(|_| pick(Invoke::RoundRobin, &candidates, &mut cursor, 0).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 4);
    }

    #[test]
    fn first_and_last_go_by_registration_time() {
        let candidates = [local(5), local(1), local(9)];
        let mut cursor = 0;
        assert_eq!(pick(Invoke::First, &candidates, &mut cursor, 0), Some(1));
        assert_eq!(pick(Invoke::Last, &candidates, &mut cursor, 0), Some(2));
        assert_eq!(pick(Invoke::Single, &candidates, &mut cursor, 0), Some(0));
        let tie = [local(1), local(1)];
        assert_eq!(pick(Invoke::First, &tie, &mut cursor, 0), Some(0));
        assert_eq!(pick(Invoke::Last, &tie, &mut cursor, 0), Some(1));
    }

    #[test]
    fn random_spreads_by_weight_and_nothing_is_picked_from_nothing() {
        let candidates = [local(1), local(2)];
        let mut cursor = 0;
        let mut counts = [0; 2];
        for r in 0..1000 {
            counts[pick(Invoke::Random, &candidates, &mut cursor, r).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 500]);
        assert_eq!(pick(Invoke::Random, &[], &mut cursor, 3), None);
        let empty_node = [Candidate {
            weight: 0,
            registered: at(0),
        }];
        assert_eq!(pick(Invoke::First, &empty_node, &mut cursor, 3), None);
    }
}
