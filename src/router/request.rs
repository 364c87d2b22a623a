//! What a client's request may carry and how it is refused: typed reads of options
//! ([`string_option`], [`bool_option`], [`match_option`]) and [`Refusal`], the ERROR that
//! answers a request the router cannot serve.

use super::uri::{reason, Match};
use crate::wamp::{Dict, Id, Payload, Value, WampMessage};

/// An answer to a client's request that is an ERROR: its URI and arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The error URI.
    pub uri: &'static str,
    /// What went wrong, for a human (the ERROR's first argument).
    pub message: String,
}

impl Refusal {
    /// A refusal with a message.
    pub fn new(uri: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            uri,
            message: message.into(),
        }
    }

    /// The ERROR message that answers request `request` of type `request_type`.
    pub fn to_error(&self, request_type: u64, request: Id) -> WampMessage {
        WampMessage::Error {
            request_type,
            request,
            details: Dict::new(),
            error: self.uri.to_owned(),
            payload: Payload::Args(vec![Value::String(self.message.clone())]),
        }
    }
}

/// A string option, if present.
pub fn string_option<'a>(options: &'a Dict, key: &str) -> Result<Option<&'a str>, Refusal> {
    match options.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Refusal::new(
            reason::INVALID_ARGUMENT,
            format!("option {key} must be a string"),
        )),
    }
}

/// A boolean option (absent: false).
pub fn bool_option(options: &Dict, key: &str) -> Result<bool, Refusal> {
    match options.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(Refusal::new(
            reason::INVALID_ARGUMENT,
            format!("option {key} must be a boolean"),
        )),
    }
}

/// The match policy of REGISTER or SUBSCRIBE options (default `exact`).
pub fn match_option(options: &Dict) -> Result<Match, Refusal> {
    match string_option(options, "match")? {
        None => Ok(Match::Exact),
        Some(s) => s
            .parse()
            .map_err(|e: String| Refusal::new(reason::INVALID_ARGUMENT, e)),
    }
}
