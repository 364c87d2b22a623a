//! The broker: subscriptions (SUBSCRIBE, UNSUBSCRIBE) and publications (PUBLISH → EVENT).
//!
//! Subscriptions live in one [`PatternMap`] by (match, URI), each with its subscribers. A
//! publication reaches every matching subscription; each subscription's EVENT is built once
//! and encoded once per serializer, whatever its number of subscribers. Events leave in the
//! order the publications arrive, and each session's queue keeps that order, so a subscriber
//! sees each publisher's events in publish order.
//!
//! [`Broker::deliver`] builds the events of a publication for this node's subscribers from
//! its id, publisher and options: a PUBLISH made here and a publication forwarded by another
//! node take the same path.

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use indexmap::IndexMap;

use super::request::{bool_option, match_option, Refusal};
use super::session::{random_id, SessionId, SessionInfo, Sessions};
use super::uri::{
    check, reason, wildcard_matches, Change as SubscriptionChange, Match, PatternMap,
};
use crate::wamp::serializer::Serializer;
use crate::wamp::{code, Dict, Id, Payload, Value, WampMessage};

/// A subscription id.
pub type SubscriptionId = Id;

/// A subscription: its pattern and subscribers.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Its id.
    pub id: SubscriptionId,
    /// The topic URI or pattern.
    pub uri: String,
    /// How it matches.
    pub policy: Match,
    /// When it was created.
    pub created: SystemTime,
    /// Its subscribers on this node, in the order they subscribed.
    pub subscribers: Vec<SessionId>,
}

/// Who published, as the events disclose it.
#[derive(Debug, Clone, PartialEq)]
pub struct Publisher {
    /// The publisher's session.
    pub session: SessionId,
    /// Its authid.
    pub authid: String,
    /// Its authrole.
    pub authrole: String,
}

impl Publisher {
    /// The publisher a session is.
    pub fn of(info: &SessionInfo) -> Publisher {
        Publisher {
            session: info.id,
            authid: info.authid.clone(),
            authrole: info.authrole.clone(),
        }
    }
}

/// Who may receive a publication: the PUBLISH options `exclude_me`, `exclude`,
/// `exclude_authid`, `exclude_authrole`, `eligible`, `eligible_authid`, `eligible_authrole`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Audience {
    exclude: Vec<Id>,
    exclude_authid: Vec<String>,
    exclude_authrole: Vec<String>,
    eligible: Option<Vec<Id>>,
    eligible_authid: Option<Vec<String>>,
    eligible_authrole: Option<Vec<String>>,
}

fn ids(options: &Dict, key: &str) -> Result<Option<Vec<Id>>, Refusal> {
    let bad = || {
        Refusal::new(
            reason::INVALID_ARGUMENT,
            format!("option {key} must be a list of ids"),
        )
    };
    match options.get(key) {
        None => Ok(None),
        Some(Value::List(items)) => items
            .iter()
            .map(|v| match v {
                Value::Integer(i) if *i >= 0 => Ok(*i as Id),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

fn strings(options: &Dict, key: &str) -> Result<Option<Vec<String>>, Refusal> {
    let bad = || {
        Refusal::new(
            reason::INVALID_ARGUMENT,
            format!("option {key} must be a list of strings"),
        )
    };
    match options.get(key) {
        None => Ok(None),
        Some(Value::List(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

impl Audience {
    /// Reads the options of a PUBLISH from `publisher`.
    pub fn from_options(options: &Dict, publisher: SessionId) -> Result<Audience, Refusal> {
        let mut exclude = ids(options, "exclude")?.unwrap_or_default();
        let exclude_me = match options.get("exclude_me") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(Refusal::new(
                    reason::INVALID_ARGUMENT,
                    "option exclude_me must be a boolean",
                ))
            }
        };
        if exclude_me {
            exclude.push(publisher);
        }
        Ok(Audience {
            exclude,
            exclude_authid: strings(options, "exclude_authid")?.unwrap_or_default(),
            exclude_authrole: strings(options, "exclude_authrole")?.unwrap_or_default(),
            eligible: ids(options, "eligible")?,
            eligible_authid: strings(options, "eligible_authid")?,
            eligible_authrole: strings(options, "eligible_authrole")?,
        })
    }

    /// Whether a session receives the publication.
    pub fn admits(&self, session: &SessionInfo) -> bool {
        let listed = |list: &Option<Vec<String>>, value: &String| {
            list.as_ref().is_none_or(|l| l.contains(value))
        };
        !self.exclude.contains(&session.id)
            && !self.exclude_authid.contains(&session.authid)
            && !self.exclude_authrole.contains(&session.authrole)
            && self
                .eligible
                .as_ref()
                .is_none_or(|l| l.contains(&session.id))
            && listed(&self.eligible_authid, &session.authid)
            && listed(&self.eligible_authrole, &session.authrole)
    }
}

/// The last event published with `retain` on a topic.
#[derive(Debug, Clone)]
struct Retained {
    publication: Id,
    disclose: Option<Publisher>,
    audience: Audience,
    options: Dict,
    payload: Payload,
}

/// The details of an EVENT: the topic for a pattern subscription, the publisher when
/// disclosed, the payload passthrough keys.
fn event_details(policy: Match, topic: &str, disclose: Option<&Publisher>, options: &Dict) -> Dict {
    let mut details = Dict::new();
    if policy != Match::Exact {
        details.insert("topic".into(), Value::String(topic.to_owned()));
    }
    if let Some(p) = disclose {
        details.insert("publisher".into(), Value::Integer(p.session as i64));
        details.insert("publisher_authid".into(), Value::String(p.authid.clone()));
        details.insert(
            "publisher_authrole".into(),
            Value::String(p.authrole.clone()),
        );
    }
    details.extend(passthrough(options));
    details
}

/// The options of a publication its events carry as details (payload passthrough mode).
fn passthrough(options: &Dict) -> Dict {
    ["enc_algo", "enc_key", "enc_serializer"]
        .into_iter()
        .filter_map(|key| Some((key.to_owned(), options.get(key)?.clone())))
        .collect()
}

/// The broker of one realm on this node.
#[derive(Debug, Default)]
pub struct Broker {
    topics: PatternMap<SubscriptionId>,
    subscriptions: HashMap<SubscriptionId, Subscription>,
    /// Retained events by topic, oldest first; at most `max_retained`.
    retained: IndexMap<String, Retained>,
    max_retained: usize,
}

impl Broker {
    /// A broker that retains at most `max_retained` events (one per topic, the oldest topic's
    /// goes first).
    pub fn new(max_retained: usize) -> Broker {
        Broker {
            max_retained,
            ..Broker::default()
        }
    }

    /// The subscription with this id.
    pub fn subscription(&self, id: SubscriptionId) -> Option<&Subscription> {
        self.subscriptions.get(&id)
    }

    /// Every subscription.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.values()
    }

    /// The subscription of exactly this pattern.
    pub fn lookup(&self, policy: Match, uri: &str) -> Option<&Subscription> {
        self.topics
            .get(policy, uri)
            .and_then(|id| self.subscriptions.get(id))
    }

    /// The subscriptions an event on `uri` reaches.
    pub fn matching<'a>(&'a self, uri: &'a str) -> impl Iterator<Item = &'a Subscription> + 'a {
        self.topics
            .all(uri)
            .filter_map(|(_, _, id)| self.subscriptions.get(id))
    }

    /// SUBSCRIBE from `session`. Subscribing twice to the same pattern gives the same id.
    pub fn subscribe(
        &mut self,
        session: SessionId,
        options: &Dict,
        topic: &str,
    ) -> Result<(SubscriptionId, Vec<SubscriptionChange>), Refusal> {
        let policy = match_option(options)?;
        if !check(topic, policy) {
            return Err(Refusal::new(
                reason::INVALID_URI,
                format!("{topic:?} is not a valid {policy} topic URI"),
            ));
        }
        if let Some(&id) = self.topics.get(policy, topic) {
            let Some(subscription) = self.subscriptions.get_mut(&id) else {
                unreachable!("a pattern's subscription is in the table");
            };
            if subscription.subscribers.contains(&session) {
                return Ok((id, Vec::new()));
            }
            subscription.subscribers.push(session);
            return Ok((id, vec![SubscriptionChange::Added(session, id)]));
        }
        let mut id = random_id();
        while self.subscriptions.contains_key(&id) {
            id = random_id();
        }
        self.topics.insert(policy, topic, id);
        self.subscriptions.insert(
            id,
            Subscription {
                id,
                uri: topic.to_owned(),
                policy,
                created: SystemTime::now(),
                subscribers: vec![session],
            },
        );
        Ok((
            id,
            vec![
                SubscriptionChange::Created(session, id),
                SubscriptionChange::Added(session, id),
            ],
        ))
    }

    /// UNSUBSCRIBE from `session`.
    pub fn unsubscribe(
        &mut self,
        session: SessionId,
        id: SubscriptionId,
    ) -> Result<Vec<SubscriptionChange>, Refusal> {
        let subscribed = self
            .subscriptions
            .get(&id)
            .is_some_and(|s| s.subscribers.contains(&session));
        if !subscribed {
            return Err(Refusal::new(
                reason::NO_SUCH_SUBSCRIPTION,
                format!("no subscription {id} of this session"),
            ));
        }
        Ok(self.remove_subscriber(session, id))
    }

    fn remove_subscriber(
        &mut self,
        session: SessionId,
        id: SubscriptionId,
    ) -> Vec<SubscriptionChange> {
        let mut changes = vec![SubscriptionChange::Removed(session, id)];
        if let Some(s) = self.subscriptions.get_mut(&id) {
            s.subscribers.retain(|&x| x != session);
            if s.subscribers.is_empty() {
                let (policy, uri) = (s.policy, s.uri.clone());
                self.subscriptions.remove(&id);
                self.topics.remove(policy, &uri);
                changes.push(SubscriptionChange::Deleted(session, id));
            }
        }
        changes
    }

    /// A session left: its subscriptions go.
    pub fn session_left(&mut self, session: SessionId) -> Vec<SubscriptionChange> {
        let ids: Vec<SubscriptionId> = self
            .subscriptions
            .values()
            .filter(|s| s.subscribers.contains(&session))
            .map(|s| s.id)
            .collect();
        ids.into_iter()
            .flat_map(|id| self.remove_subscriber(session, id))
            .collect()
    }

    /// PUBLISH from `publisher`: checks it and delivers it to this node's subscribers;
    /// returns the publication id.
    pub fn publish(
        &mut self,
        sessions: &Sessions,
        publisher: &SessionInfo,
        options: &Dict,
        topic: &str,
        payload: &Payload,
    ) -> Result<Id, Refusal> {
        if !check(topic, Match::Exact) {
            return Err(Refusal::new(
                reason::INVALID_URI,
                format!("{topic:?} is not a valid topic URI"),
            ));
        }
        if topic.starts_with("wamp.") {
            // The meta events are the router's: a client cannot forge them.
            return Err(Refusal::new(
                reason::INVALID_URI,
                "the wamp. namespace is the router's",
            ));
        }
        let audience = Audience::from_options(options, publisher.id)?;
        let disclose = bool_option(options, "disclose_me")?.then(|| Publisher::of(publisher));
        let retain = bool_option(options, "retain")?;
        let publication = random_id();
        self.deliver(
            sessions,
            publication,
            disclose.as_ref(),
            &audience,
            options,
            topic,
            payload,
        );
        if retain && self.max_retained > 0 {
            self.retained.shift_remove(topic);
            if self.retained.len() >= self.max_retained {
                self.retained.shift_remove_index(0);
            }
            self.retained.insert(
                topic.to_owned(),
                Retained {
                    publication,
                    disclose,
                    audience,
                    options: passthrough(options),
                    payload: payload.clone(),
                },
            );
        }
        Ok(publication)
    }

    /// Sends `session` the retained events its new subscription matches (SUBSCRIBE with
    /// `get_retained`), each with `details.retained`.
    pub fn send_retained(
        &self,
        sessions: &Sessions,
        session: SessionId,
        subscription: SubscriptionId,
    ) {
        let (Some(sub), Some(joined)) =
            (self.subscriptions.get(&subscription), sessions.get(session))
        else {
            return;
        };
        for (topic, retained) in &self.retained {
            let matches = match sub.policy {
                Match::Exact => *topic == sub.uri,
                Match::Prefix => topic.starts_with(&sub.uri),
                Match::Wildcard => wildcard_matches(&sub.uri, topic),
            };
            if !matches || !retained.audience.admits(&joined.info) {
                continue;
            }
            let mut details = event_details(
                sub.policy,
                topic,
                retained.disclose.as_ref(),
                &retained.options,
            );
            details.insert("retained".into(), Value::Bool(true));
            sessions.send_to(
                joined,
                &WampMessage::Event {
                    subscription,
                    publication: retained.publication,
                    details,
                    payload: retained.payload.clone(),
                },
            );
        }
    }

    /// Sends the EVENTs of a publication to this node's subscribers; returns how many.
    #[allow(clippy::too_many_arguments)]
    pub fn deliver(
        &self,
        sessions: &Sessions,
        publication: Id,
        disclose: Option<&Publisher>,
        audience: &Audience,
        options: &Dict,
        topic: &str,
        payload: &Payload,
    ) -> usize {
        let mut sent = 0;
        for (policy, _, id) in self.topics.all(topic) {
            let Some(subscription) = self.subscriptions.get(id) else {
                continue;
            };
            let details = event_details(policy, topic, disclose, options);
            let event = WampMessage::Event {
                subscription: subscription.id,
                publication,
                details,
                payload: payload.clone(),
            };
            // One encoding per serializer for every subscriber of this subscription.
            let mut encoded: [Option<Bytes>; 3] = Default::default();
            for &session in &subscription.subscribers {
                let Some(joined) = sessions.get(session) else {
                    continue;
                };
                if !audience.admits(&joined.info) {
                    continue;
                }
                let serializer = joined.outbox.serializer();
                let slot = &mut encoded[Serializer::ALL
                    .iter()
                    .position(|s| *s == serializer)
                    .unwrap_or(0)];
                let bytes = slot
                    .get_or_insert_with(|| Bytes::from(serializer.encode(&event)))
                    .clone();
                if sessions.send_encoded(joined, code::EVENT, bytes) {
                    sent += 1;
                }
            }
        }
        sent
    }
}
