//! The array form of a message, `[16, 239714735, {}, "com.myapp.topic", ["Hello"]]`, that
//! every client serializer shares: [`from_items`] builds a message from the decoded items and
//! checks its shape (field types, id ranges, trailing payload) and the options and details
//! whose types the spec fixes (PUBLISH and SUBSCRIBE options, EVENT details); [`ArrayForm`]
//! writes a message as that array, through any serde serializer, without copying its values.

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use super::dynamic::{Dyn, DynDict, DynList};
use super::{code, name_of, Dict, Id, Payload, Value, WampMessage, MAX_ID};

/// Bytes that are not a valid WAMP message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// Not the serializer's format at all.
    #[error("not {serializer}: {detail}")]
    Syntax {
        /// The serializer that read the bytes (`json`).
        serializer: &'static str,
        /// What the format's decoder said.
        detail: String,
    },
    /// Well-formed, but not a valid message: the text names the field.
    #[error("protocol violation: {0}")]
    ProtocolViolation(String),
}

fn violation(message: impl Into<String>) -> DecodeError {
    DecodeError::ProtocolViolation(message.into())
}

/// Builds a message from the items of its array form (the type code first), checking each
/// field's type and range.
pub(crate) fn from_items(items: Vec<Value>) -> Result<WampMessage, DecodeError> {
    let mut items = items.into_iter();
    let code = match items.next() {
        Some(Value::Integer(n)) => u64::try_from(n).ok(),
        _ => None,
    }
    .ok_or_else(|| violation("the first element must be the message type code"))?;
    let name = name_of(code).ok_or_else(|| violation(format!("unknown message type {code}")))?;
    let mut f = Fields { items, name };
    use WampMessage as M;
    let message = match code {
        code::HELLO => M::Hello {
            realm: f.string("Realm")?,
            details: f.dict("Details")?,
        },
        code::WELCOME => M::Welcome {
            session: f.id("Session")?,
            details: f.dict("Details")?,
        },
        code::ABORT => M::Abort {
            details: f.dict("Details")?,
            reason: f.string("Reason")?,
        },
        code::CHALLENGE => M::Challenge {
            auth_method: f.string("AuthMethod")?,
            extra: f.dict("Extra")?,
        },
        code::AUTHENTICATE => M::Authenticate {
            signature: f.string("Signature")?,
            extra: f.dict("Extra")?,
        },
        code::GOODBYE => M::Goodbye {
            details: f.dict("Details")?,
            reason: f.string("Reason")?,
        },
        code::ERROR => {
            let request_type = f.int("REQUEST.Type")?;
            let request = f.id("REQUEST.Request")?;
            let details = f.dict("Details")?;
            M::Error {
                request_type,
                request,
                error: f.string("Error")?,
                payload: f.payload(&details)?,
                details,
            }
        }
        code::PUBLISH => {
            let request = f.id("Request")?;
            let options = f.checked_dict("Options", PUBLISH_OPTIONS)?;
            M::Publish {
                request,
                topic: f.string("Topic")?,
                payload: f.payload(&options)?,
                options,
            }
        }
        code::PUBLISHED => M::Published {
            request: f.id("PUBLISH.Request")?,
            publication: f.id("Publication")?,
        },
        code::SUBSCRIBE => M::Subscribe {
            request: f.id("Request")?,
            options: f.checked_dict("Options", SUBSCRIBE_OPTIONS)?,
            topic: f.string("Topic")?,
        },
        code::SUBSCRIBED => M::Subscribed {
            request: f.id("SUBSCRIBE.Request")?,
            subscription: f.id("Subscription")?,
        },
        code::UNSUBSCRIBE => M::Unsubscribe {
            request: f.id("Request")?,
            subscription: f.id("SUBSCRIBED.Subscription")?,
        },
        code::UNSUBSCRIBED => M::Unsubscribed {
            request: f.id("UNSUBSCRIBE.Request")?,
        },
        code::EVENT => {
            let subscription = f.id("SUBSCRIBED.Subscription")?;
            let publication = f.id("PUBLISHED.Publication")?;
            let details = f.checked_dict("Details", EVENT_DETAILS)?;
            M::Event {
                subscription,
                publication,
                payload: f.payload(&details)?,
                details,
            }
        }
        code::CALL => {
            let request = f.id("Request")?;
            let options = f.dict("Options")?;
            M::Call {
                request,
                procedure: f.string("Procedure")?,
                payload: f.payload(&options)?,
                options,
            }
        }
        code::CANCEL => M::Cancel {
            request: f.id("CALL.Request")?,
            options: f.dict("Options")?,
        },
        code::RESULT => {
            let request = f.id("CALL.Request")?;
            let details = f.dict("Details")?;
            M::Result {
                request,
                payload: f.payload(&details)?,
                details,
            }
        }
        code::REGISTER => M::Register {
            request: f.id("Request")?,
            options: f.dict("Options")?,
            procedure: f.string("Procedure")?,
        },
        code::REGISTERED => M::Registered {
            request: f.id("REGISTER.Request")?,
            registration: f.id("Registration")?,
        },
        code::UNREGISTER => M::Unregister {
            request: f.id("Request")?,
            registration: f.id("REGISTERED.Registration")?,
        },
        code::UNREGISTERED => M::Unregistered {
            request: f.id("UNREGISTER.Request")?,
        },
        code::INVOCATION => {
            let request = f.id("Request")?;
            let registration = f.id("REGISTERED.Registration")?;
            let details = f.dict("Details")?;
            M::Invocation {
                request,
                registration,
                payload: f.payload(&details)?,
                details,
            }
        }
        code::INTERRUPT => M::Interrupt {
            request: f.id("INVOCATION.Request")?,
            options: f.dict("Options")?,
        },
        code::YIELD => {
            let request = f.id("INVOCATION.Request")?;
            let options = f.dict("Options")?;
            M::Yield {
                request,
                payload: f.payload(&options)?,
                options,
            }
        }
        _ => unreachable!("name_of knows only the codes matched above"),
    };
    f.end()?;
    Ok(message)
}

/// The fields of one message, read in order.
struct Fields {
    items: std::vec::IntoIter<Value>,
    name: &'static str,
}

impl Fields {
    fn next(&mut self, field: &str) -> Result<Value, DecodeError> {
        self.items
            .next()
            .ok_or_else(|| violation(format!("{}: {field} is missing", self.name)))
    }

    fn int(&mut self, field: &str) -> Result<u64, DecodeError> {
        match self.next(field)? {
            Value::Integer(i) if i >= 0 => Ok(i as u64),
            _ => Err(violation(format!(
                "{}: {field} must be an integer",
                self.name
            ))),
        }
    }

    fn id(&mut self, field: &str) -> Result<Id, DecodeError> {
        match self.next(field)? {
            Value::Integer(id) if (0..=MAX_ID as i64).contains(&id) => Ok(id as u64),
            _ => Err(violation(format!(
                "{}: {field} must be an integer from 0 to 2^53",
                self.name
            ))),
        }
    }

    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        match self.next(field)? {
            Value::String(s) => Ok(s),
            _ => Err(violation(format!(
                "{}: {field} must be a string",
                self.name
            ))),
        }
    }

    fn dict(&mut self, field: &str) -> Result<Dict, DecodeError> {
        match self.next(field)? {
            Value::Dict(dict) => Ok(dict),
            _ => Err(violation(format!("{}: {field} must be a dict", self.name))),
        }
    }

    /// A dict whose listed keys must have the listed types.
    fn checked_dict(&mut self, field: &str, rules: &[(&str, Rule)]) -> Result<Dict, DecodeError> {
        let dict = self.dict(field)?;
        for (key, rule) in rules {
            if let Some(value) = dict.get(*key) {
                if !rule.accepts(value) {
                    return Err(violation(format!(
                        "{}: {field}.{key} must be {}",
                        self.name,
                        rule.describe()
                    )));
                }
            }
        }
        Ok(dict)
    }

    /// The trailing payload: nothing, `Arguments`, `Arguments` and `ArgumentsKw`, or one
    /// transparent payload when `options_or_details` carry `enc_algo`.
    fn payload(&mut self, options_or_details: &Dict) -> Result<Payload, DecodeError> {
        let Some(first) = self.items.next() else {
            return Ok(Payload::Empty);
        };
        if options_or_details.contains_key("enc_algo") {
            return Ok(Payload::Transparent(first));
        }
        let Value::List(args) = first else {
            return Err(violation(format!(
                "{}: Arguments must be a list",
                self.name
            )));
        };
        match self.items.next() {
            None => Ok(Payload::Args(args)),
            Some(Value::Dict(kwargs)) => Ok(Payload::ArgsKw(args, kwargs)),
            Some(_) => Err(violation(format!(
                "{}: ArgumentsKw must be a dict",
                self.name
            ))),
        }
    }

    fn end(mut self) -> Result<(), DecodeError> {
        match self.items.next() {
            None => Ok(()),
            Some(_) => Err(violation(format!(
                "{}: more elements than the message has",
                self.name
            ))),
        }
    }
}

/// The type the spec gives an option or detail.
#[derive(Clone, Copy)]
enum Rule {
    Bool,
    Str,
    Id,
    IdList,
    StrList,
    DictList,
    OneOf(&'static [&'static str]),
    EncAlgo,
}

impl Rule {
    fn accepts(self, value: &Value) -> bool {
        let is_id = |v: &Value| matches!(v, Value::Integer(i) if (0..=MAX_ID as i64).contains(i));
        let all = |v: &Value, f: &dyn Fn(&Value) -> bool| match v {
            Value::List(items) => items.iter().all(f),
            _ => false,
        };
        match self {
            Rule::Bool => matches!(value, Value::Bool(_)),
            Rule::Str => matches!(value, Value::String(_)),
            Rule::Id => is_id(value),
            Rule::IdList => all(value, &is_id),
            Rule::StrList => all(value, &|v| matches!(v, Value::String(_))),
            Rule::DictList => all(value, &|v| matches!(v, Value::Dict(_))),
            Rule::OneOf(choices) => {
                matches!(value, Value::String(s) if choices.contains(&s.as_str()))
            }
            Rule::EncAlgo => matches!(value, Value::String(s)
                if matches!(s.as_str(), "cryptobox" | "mqtt" | "xbr") || s.starts_with("x_")),
        }
    }

    fn describe(self) -> String {
        match self {
            Rule::Bool => "a boolean".into(),
            Rule::Str => "a string".into(),
            Rule::Id => "an id".into(),
            Rule::IdList => "a list of ids".into(),
            Rule::StrList => "a list of strings".into(),
            Rule::DictList => "a list of dicts".into(),
            Rule::OneOf(choices) => format!("one of {choices:?}"),
            Rule::EncAlgo => "cryptobox, mqtt, xbr or x_…".into(),
        }
    }
}

const FORWARD_FOR: (&str, Rule) = ("forward_for", Rule::DictList);
const ENC_ALGO: (&str, Rule) = ("enc_algo", Rule::EncAlgo);
const ENC_SERIALIZER: (&str, Rule) = ("enc_serializer", Rule::Str);
const TRANSACTION_HASH: (&str, Rule) = ("transaction_hash", Rule::Str);

const PUBLISH_OPTIONS: &[(&str, Rule)] = &[
    ("acknowledge", Rule::Bool),
    ("exclude_me", Rule::Bool),
    ("exclude", Rule::IdList),
    ("exclude_authid", Rule::StrList),
    ("exclude_authrole", Rule::StrList),
    ("eligible", Rule::IdList),
    ("eligible_authid", Rule::StrList),
    ("eligible_authrole", Rule::StrList),
    ("retain", Rule::Bool),
    TRANSACTION_HASH,
    FORWARD_FOR,
    ENC_ALGO,
    ENC_SERIALIZER,
];

const SUBSCRIBE_OPTIONS: &[(&str, Rule)] = &[
    ("match", Rule::OneOf(&["exact", "prefix", "wildcard"])),
    ("get_retained", Rule::Bool),
    FORWARD_FOR,
];

const EVENT_DETAILS: &[(&str, Rule)] = &[
    ("publisher", Rule::Id),
    ("publisher_authid", Rule::Str),
    ("publisher_authrole", Rule::Str),
    ("topic", Rule::Str),
    ("retained", Rule::Bool),
    TRANSACTION_HASH,
    ("x_acknowledged_delivery", Rule::Bool),
    FORWARD_FOR,
    ENC_ALGO,
    ENC_SERIALIZER,
];

/// A message written as its array form; `json` writes bytes as `\u0000` + base64.
pub(crate) struct ArrayForm<'a> {
    pub(crate) message: &'a WampMessage,
    pub(crate) json: bool,
}

/// One item of the array form.
enum Item<'a> {
    Int(u64),
    Str(&'a str),
    Dict(&'a Dict),
    List(&'a [Value]),
    Value(&'a Value),
}

impl<'a> ArrayForm<'a> {
    /// The items after the type code, the payload's included.
    fn items(&self) -> ([Option<Item<'a>>; 6], usize) {
        use WampMessage as M;
        let mut items: [Option<Item<'a>>; 6] = Default::default();
        let mut n = 0;
        let mut push = |item: Item<'a>| {
            items[n] = Some(item);
            n += 1;
        };
        let message: &'a WampMessage = self.message;
        let payload = match message {
            M::Hello { realm, details } => {
                push(Item::Str(realm));
                push(Item::Dict(details));
                None
            }
            M::Welcome { session, details } => {
                push(Item::Int(*session));
                push(Item::Dict(details));
                None
            }
            M::Abort { details, reason } | M::Goodbye { details, reason } => {
                push(Item::Dict(details));
                push(Item::Str(reason));
                None
            }
            M::Challenge { auth_method, extra } => {
                push(Item::Str(auth_method));
                push(Item::Dict(extra));
                None
            }
            M::Authenticate { signature, extra } => {
                push(Item::Str(signature));
                push(Item::Dict(extra));
                None
            }
            M::Error {
                request_type,
                request,
                details,
                error,
                payload,
            } => {
                push(Item::Int(*request_type));
                push(Item::Int(*request));
                push(Item::Dict(details));
                push(Item::Str(error));
                Some(payload)
            }
            M::Publish {
                request,
                options,
                topic,
                payload,
            } => {
                push(Item::Int(*request));
                push(Item::Dict(options));
                push(Item::Str(topic));
                Some(payload)
            }
            M::Published {
                request,
                publication,
            } => {
                push(Item::Int(*request));
                push(Item::Int(*publication));
                None
            }
            M::Subscribe {
                request,
                options,
                topic,
            } => {
                push(Item::Int(*request));
                push(Item::Dict(options));
                push(Item::Str(topic));
                None
            }
            M::Subscribed {
                request,
                subscription,
            }
            | M::Unsubscribe {
                request,
                subscription,
            } => {
                push(Item::Int(*request));
                push(Item::Int(*subscription));
                None
            }
            M::Unsubscribed { request } | M::Unregistered { request } => {
                push(Item::Int(*request));
                None
            }
            M::Event {
                subscription,
                publication,
                details,
                payload,
            } => {
                push(Item::Int(*subscription));
                push(Item::Int(*publication));
                push(Item::Dict(details));
                Some(payload)
            }
            M::Call {
                request,
                options,
                procedure,
                payload,
            } => {
                push(Item::Int(*request));
                push(Item::Dict(options));
                push(Item::Str(procedure));
                Some(payload)
            }
            M::Cancel { request, options } | M::Interrupt { request, options } => {
                push(Item::Int(*request));
                push(Item::Dict(options));
                None
            }
            M::Result {
                request,
                details,
                payload,
            } => {
                push(Item::Int(*request));
                push(Item::Dict(details));
                Some(payload)
            }
            M::Register {
                request,
                options,
                procedure,
            } => {
                push(Item::Int(*request));
                push(Item::Dict(options));
                push(Item::Str(procedure));
                None
            }
            M::Registered {
                request,
                registration,
            }
            | M::Unregister {
                request,
                registration,
            } => {
                push(Item::Int(*request));
                push(Item::Int(*registration));
                None
            }
            M::Invocation {
                request,
                registration,
                details,
                payload,
            } => {
                push(Item::Int(*request));
                push(Item::Int(*registration));
                push(Item::Dict(details));
                Some(payload)
            }
            M::Yield {
                request,
                options,
                payload,
            } => {
                push(Item::Int(*request));
                push(Item::Dict(options));
                Some(payload)
            }
        };
        match payload {
            None | Some(Payload::Empty) => {}
            Some(Payload::Args(args)) => push(Item::List(args)),
            Some(Payload::ArgsKw(args, kwargs)) => {
                push(Item::List(args));
                push(Item::Dict(kwargs));
            }
            Some(Payload::Transparent(value)) => push(Item::Value(value)),
        }
        (items, n)
    }
}

impl Serialize for ArrayForm<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = self.json;
        let (items, n) = self.items();
        let mut seq = serializer.serialize_seq(Some(n + 1))?;
        seq.serialize_element(&self.message.code())?;
        for item in items.iter().flatten() {
            match item {
                Item::Int(i) => seq.serialize_element(i)?,
                Item::Str(s) => seq.serialize_element(s)?,
                Item::Dict(dict) => seq.serialize_element(&DynDict { dict, json })?,
                Item::List(items) => seq.serialize_element(&DynList { items, json })?,
                Item::Value(value) => seq.serialize_element(&Dyn { value, json })?,
            }
        }
        seq.end()
    }
}
