//! WAMP messages: the Basic Profile plus CANCEL and INTERRUPT, with the spec's type codes and
//! fields, and the values they carry.
//!
//! - [`WampMessage`]: one variant per message type; `Serialize`/`Deserialize` derive a compact
//!   encoding for non self-describing formats such as bincode (the node-to-node wire).
//! - [`Value`] and [`Dict`]: application values; dicts keep their insertion order.
//! - [`Payload`]: the optional trailing `Arguments`/`ArgumentsKw`, or a transparent payload
//!   (payload passthrough mode, as end-to-end encryption uses) carried untouched.
//! - [`serializer::Serializer`]: the array form (`[16, 239714735, {}, "com.topic", […]]`) in JSON,
//!   msgpack and CBOR, as clients speak it; [`json`] is its JSON form as text, compact and
//!   order-preserving.

mod dynamic;
mod form;
pub mod json;
pub mod serializer;
mod value;

pub(crate) use value::PREALLOCATE;
pub use value::{Dict, Payload, Value, MAX_DEPTH};

use serde::{Deserialize, Serialize};

/// A WAMP id (request, session, publication, subscription, registration): an integer from 0
/// to 2^53.
pub type Id = u64;

/// The largest WAMP id, 2^53.
pub const MAX_ID: Id = 1 << 53;

/// A WAMP message. Field names follow the spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // the fields are the spec's, named as it names them
pub enum WampMessage {
    /// `[1, Realm|uri, Details|dict]`
    Hello {
        #[serde(deserialize_with = "value::string")]
        realm: String,
        #[serde(deserialize_with = "value::dict")]
        details: Dict,
    },
    /// `[2, Session|id, Details|dict]`
    Welcome {
        session: Id,
        #[serde(deserialize_with = "value::dict")]
        details: Dict,
    },
    /// `[3, Details|dict, Reason|uri]`
    Abort {
        #[serde(deserialize_with = "value::dict")]
        details: Dict,
        reason: String,
    },
    /// `[4, AuthMethod|string, Extra|dict]`
    Challenge {
        #[serde(deserialize_with = "value::string")]
        auth_method: String,
        #[serde(deserialize_with = "value::dict")]
        extra: Dict,
    },
    /// `[5, Signature|string, Extra|dict]`
    Authenticate {
        #[serde(deserialize_with = "value::string")]
        signature: String,
        #[serde(deserialize_with = "value::dict")]
        extra: Dict,
    },
    /// `[6, Details|dict, Reason|uri]`
    Goodbye {
        #[serde(deserialize_with = "value::dict")]
        details: Dict,
        reason: String,
    },
    /// `[8, REQUEST.Type|int, REQUEST.Request|id, Details|dict, Error|uri, Arguments?, ArgumentsKw?]`
    Error {
        request_type: u64,
        request: Id,
        #[serde(deserialize_with = "value::dict")]
        details: Dict,
        #[serde(deserialize_with = "value::string")]
        error: String,
        payload: Payload,
    },
    /// `[16, Request|id, Options|dict, Topic|uri, Arguments?, ArgumentsKw?]`
    Publish {
        request: Id,
        #[serde(deserialize_with = "value::dict")]
        options: Dict,
        #[serde(deserialize_with = "value::string")]
        topic: String,
        payload: Payload,
    },
    /// `[17, PUBLISH.Request|id, Publication|id]`
    Published { request: Id, publication: Id },
    /// `[32, Request|id, Options|dict, Topic|uri]`
    Subscribe {
        request: Id,
        #[serde(deserialize_with = "value::dict")]
        options: Dict,
        #[serde(deserialize_with = "value::string")]
        topic: String,
    },
    /// `[33, SUBSCRIBE.Request|id, Subscription|id]`
    Subscribed { request: Id, subscription: Id },
    /// `[34, Request|id, SUBSCRIBED.Subscription|id]`
    Unsubscribe { request: Id, subscription: Id },
    /// `[35, UNSUBSCRIBE.Request|id]`
    Unsubscribed { request: Id },
    /// `[36, SUBSCRIBED.Subscription|id, PUBLISHED.Publication|id, Details|dict, Arguments?, ArgumentsKw?]`
    Event {
        subscription: Id,
        publication: Id,
        #[serde(deserialize_with = "value::dict")]
        details: Dict,
        payload: Payload,
    },
    /// `[48, Request|id, Options|dict, Procedure|uri, Arguments?, ArgumentsKw?]`
    Call {
        request: Id,
        #[serde(deserialize_with = "value::dict")]
        options: Dict,
        #[serde(deserialize_with = "value::string")]
        procedure: String,
        payload: Payload,
    },
    /// `[49, CALL.Request|id, Options|dict]`
    Cancel {
        request: Id,
        #[serde(deserialize_with = "value::dict")]
        options: Dict,
    },
    /// `[50, CALL.Request|id, Details|dict, Arguments?, ArgumentsKw?]`
    Result {
        request: Id,
        #[serde(deserialize_with = "value::dict")]
        details: Dict,
        payload: Payload,
    },
    /// `[64, Request|id, Options|dict, Procedure|uri]`
    Register {
        request: Id,
        #[serde(deserialize_with = "value::dict")]
        options: Dict,
        #[serde(deserialize_with = "value::string")]
        procedure: String,
    },
    /// `[65, REGISTER.Request|id, Registration|id]`
    Registered { request: Id, registration: Id },
    /// `[66, Request|id, REGISTERED.Registration|id]`
    Unregister { request: Id, registration: Id },
    /// `[67, UNREGISTER.Request|id]`
    Unregistered { request: Id },
    /// `[68, Request|id, REGISTERED.Registration|id, Details|dict, Arguments?, ArgumentsKw?]`
    Invocation {
        request: Id,
        registration: Id,
        #[serde(deserialize_with = "value::dict")]
        details: Dict,
        payload: Payload,
    },
    /// `[69, INVOCATION.Request|id, Options|dict]`
    Interrupt {
        request: Id,
        #[serde(deserialize_with = "value::dict")]
        options: Dict,
    },
    /// `[70, INVOCATION.Request|id, Options|dict, Arguments?, ArgumentsKw?]`
    Yield {
        request: Id,
        #[serde(deserialize_with = "value::dict")]
        options: Dict,
        payload: Payload,
    },
}

/// The spec's type codes.
pub mod code {
    #![allow(missing_docs)]
    pub const HELLO: u64 = 1;
    pub const WELCOME: u64 = 2;
    pub const ABORT: u64 = 3;
    pub const CHALLENGE: u64 = 4;
    pub const AUTHENTICATE: u64 = 5;
    pub const GOODBYE: u64 = 6;
    pub const ERROR: u64 = 8;
    pub const PUBLISH: u64 = 16;
    pub const PUBLISHED: u64 = 17;
    pub const SUBSCRIBE: u64 = 32;
    pub const SUBSCRIBED: u64 = 33;
    pub const UNSUBSCRIBE: u64 = 34;
    pub const UNSUBSCRIBED: u64 = 35;
    pub const EVENT: u64 = 36;
    pub const CALL: u64 = 48;
    pub const CANCEL: u64 = 49;
    pub const RESULT: u64 = 50;
    pub const REGISTER: u64 = 64;
    pub const REGISTERED: u64 = 65;
    pub const UNREGISTER: u64 = 66;
    pub const UNREGISTERED: u64 = 67;
    pub const INVOCATION: u64 = 68;
    pub const INTERRUPT: u64 = 69;
    pub const YIELD: u64 = 70;
}

impl WampMessage {
    /// The message's type code (`PUBLISH` is 16).
    pub fn code(&self) -> u64 {
        use WampMessage::*;
        match self {
            Hello { .. } => code::HELLO,
            Welcome { .. } => code::WELCOME,
            Abort { .. } => code::ABORT,
            Challenge { .. } => code::CHALLENGE,
            Authenticate { .. } => code::AUTHENTICATE,
            Goodbye { .. } => code::GOODBYE,
            Error { .. } => code::ERROR,
            Publish { .. } => code::PUBLISH,
            Published { .. } => code::PUBLISHED,
            Subscribe { .. } => code::SUBSCRIBE,
            Subscribed { .. } => code::SUBSCRIBED,
            Unsubscribe { .. } => code::UNSUBSCRIBE,
            Unsubscribed { .. } => code::UNSUBSCRIBED,
            Event { .. } => code::EVENT,
            Call { .. } => code::CALL,
            Cancel { .. } => code::CANCEL,
            Result { .. } => code::RESULT,
            Register { .. } => code::REGISTER,
            Registered { .. } => code::REGISTERED,
            Unregister { .. } => code::UNREGISTER,
            Unregistered { .. } => code::UNREGISTERED,
            Invocation { .. } => code::INVOCATION,
            Interrupt { .. } => code::INTERRUPT,
            Yield { .. } => code::YIELD,
        }
    }

    /// The message's type name in capitals (`PUBLISH`).
    pub fn name(&self) -> &'static str {
        name_of(self.code()).unwrap_or("UNKNOWN")
    }

    /// The message's request id, for the messages that have one.
    pub fn request_id(&self) -> Option<Id> {
        use WampMessage::*;
        match self {
            Error { request, .. }
            | Publish { request, .. }
            | Published { request, .. }
            | Subscribe { request, .. }
            | Subscribed { request, .. }
            | Unsubscribe { request, .. }
            | Unsubscribed { request }
            | Call { request, .. }
            | Cancel { request, .. }
            | Result { request, .. }
            | Register { request, .. }
            | Registered { request, .. }
            | Unregister { request, .. }
            | Unregistered { request }
            | Invocation { request, .. }
            | Interrupt { request, .. }
            | Yield { request, .. } => Some(*request),
            Hello { .. }
            | Welcome { .. }
            | Abort { .. }
            | Challenge { .. }
            | Authenticate { .. }
            | Goodbye { .. }
            | Event { .. } => None,
        }
    }

    /// Whether a node forwards this message to another node: PUBLISH, ERROR, INTERRUPT,
    /// INVOCATION and RESULT only, as in Bondy.
    pub fn is_forwardable(&self) -> bool {
        matches!(
            self,
            WampMessage::Publish { .. }
                | WampMessage::Error { .. }
                | WampMessage::Interrupt { .. }
                | WampMessage::Invocation { .. }
                | WampMessage::Result { .. }
        )
    }
}

/// A role's entry in the `roles` of HELLO or WELCOME: `{"features": {name: true, …}}`.
pub fn role(features: &[&str]) -> Value {
    let features: Dict = features
        .iter()
        .map(|name| ((*name).to_owned(), Value::Bool(true)))
        .collect();
    let mut role = Dict::new();
    role.insert("features".into(), Value::Dict(features));
    Value::Dict(role)
}

/// The name of a message type code, for the codes this crate models.
pub fn name_of(code: u64) -> Option<&'static str> {
    Some(match code {
        code::HELLO => "HELLO",
        code::WELCOME => "WELCOME",
        code::ABORT => "ABORT",
        code::CHALLENGE => "CHALLENGE",
        code::AUTHENTICATE => "AUTHENTICATE",
        code::GOODBYE => "GOODBYE",
        code::ERROR => "ERROR",
        code::PUBLISH => "PUBLISH",
        code::PUBLISHED => "PUBLISHED",
        code::SUBSCRIBE => "SUBSCRIBE",
        code::SUBSCRIBED => "SUBSCRIBED",
        code::UNSUBSCRIBE => "UNSUBSCRIBE",
        code::UNSUBSCRIBED => "UNSUBSCRIBED",
        code::EVENT => "EVENT",
        code::CALL => "CALL",
        code::CANCEL => "CANCEL",
        code::RESULT => "RESULT",
        code::REGISTER => "REGISTER",
        code::REGISTERED => "REGISTERED",
        code::UNREGISTER => "UNREGISTER",
        code::UNREGISTERED => "UNREGISTERED",
        code::INVOCATION => "INVOCATION",
        code::INTERRUPT => "INTERRUPT",
        code::YIELD => "YIELD",
        _ => return None,
    })
}

/// One message of every type, with every kind of value and payload.
#[cfg(test)]
pub(crate) fn samples() -> Vec<WampMessage> {
    use WampMessage as M;
    let dict = |pairs: &[(&str, Value)]| -> Dict {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let values = vec![
        Value::Null,
        Value::Bool(true),
        Value::Integer(-42),
        Value::Unsigned(u64::MAX),
        Value::Float(1.5),
        Value::String("héllo".into()),
        Value::Bytes(vec![0, 1, 254, 255]),
        Value::List(vec![Value::Integer(1), Value::String("two".into())]),
        Value::Dict(dict(&[("z", Value::Integer(1)), ("a", Value::Null)])),
    ];
    let kwargs = dict(&[("b", Value::Integer(2)), ("a", Value::Bool(false))]);
    let opts = dict(&[("acknowledge", Value::Bool(true))]);
    vec![
        M::Hello {
            realm: "realm1".into(),
            details: dict(&[("roles", Value::Dict(Dict::new()))]),
        },
        M::Welcome {
            session: 9129137332,
            details: Dict::new(),
        },
        M::Abort {
            details: Dict::new(),
            reason: "wamp.error.no_such_realm".into(),
        },
        M::Challenge {
            auth_method: "wampcra".into(),
            extra: Dict::new(),
        },
        M::Authenticate {
            signature: "sig".into(),
            extra: Dict::new(),
        },
        M::Goodbye {
            details: Dict::new(),
            reason: "wamp.close.normal".into(),
        },
        M::Error {
            request_type: code::CALL,
            request: 1,
            details: Dict::new(),
            error: "com.example.error".into(),
            payload: Payload::ArgsKw(values.clone(), kwargs.clone()),
        },
        M::Publish {
            request: 2,
            options: opts.clone(),
            topic: "com.example.topic".into(),
            payload: Payload::Args(values.clone()),
        },
        M::Published {
            request: 2,
            publication: 3,
        },
        M::Subscribe {
            request: 4,
            options: Dict::new(),
            topic: "com.example.topic".into(),
        },
        M::Subscribed {
            request: 4,
            subscription: 5,
        },
        M::Unsubscribe {
            request: 6,
            subscription: 5,
        },
        M::Unsubscribed { request: 6 },
        M::Event {
            subscription: 5,
            publication: 3,
            details: dict(&[("enc_algo", Value::String("cryptobox".into()))]),
            payload: Payload::Transparent(Value::Bytes(vec![9, 8, 7])),
        },
        M::Call {
            request: 7,
            options: Dict::new(),
            procedure: "com.example.add".into(),
            payload: Payload::Args(vec![Value::Integer(1), Value::Integer(2)]),
        },
        M::Cancel {
            request: 7,
            options: Dict::new(),
        },
        M::Result {
            request: 7,
            details: Dict::new(),
            payload: Payload::Args(vec![Value::Integer(3)]),
        },
        M::Register {
            request: 8,
            options: Dict::new(),
            procedure: "com.example.add".into(),
        },
        M::Registered {
            request: 8,
            registration: 9,
        },
        M::Unregister {
            request: 10,
            registration: 9,
        },
        M::Unregistered { request: 10 },
        M::Invocation {
            request: 11,
            registration: 9,
            details: Dict::new(),
            payload: Payload::ArgsKw(vec![], kwargs),
        },
        M::Interrupt {
            request: 11,
            options: dict(&[("mode", Value::String("kill".into()))]),
        },
        M::Yield {
            request: 11,
            options: Dict::new(),
            payload: Payload::Empty,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_publish_error_interrupt_invocation_and_result_are_forwardable() {
        let forwardable: Vec<&str> = samples()
            .into_iter()
            .filter(|m| m.is_forwardable())
            .map(|m| m.name())
            .collect();
        assert_eq!(
            forwardable,
            ["ERROR", "PUBLISH", "RESULT", "INVOCATION", "INTERRUPT"]
        );
        assert_eq!(samples().len(), 24, "one sample per message type");
    }
}
