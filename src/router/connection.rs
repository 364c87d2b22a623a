//! One client connection's session, whatever its transport: HELLO → (CHALLENGE →
//! AUTHENTICATE) → WELCOME → messages → GOODBYE, as a state machine fed with decoded bytes.
//!
//! Anything a client sends out of turn (a message before HELLO, a second HELLO, a message only
//! a router sends, bytes that do not decode, a message over `router.max_message_bytes`) ends
//! the session with ABORT `wamp.error.protocol_violation` and a message that says what was
//! wrong; the connection then closes. Nothing a client sends can stop the node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use metrics::counter;
use tracing::{debug, info};

use super::auth::{Authenticator, Identity, Pending, Step};
use super::metrics::CONNECTIONS_REFUSED;
use super::realm::Realm;
use super::session::{random_id, Joined, Outbox, SessionId, SessionInfo, TransportKind};
use super::uri::reason;
use crate::wamp::serializer::Serializer;
use crate::wamp::{Dict, Value, WampMessage};

/// What the transport does after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read on.
    Continue,
    /// Stop reading; the outbox closes the connection once what is queued is written.
    Close,
}

/// The realms of this node, by name, and what every connection shares.
#[derive(Debug)]
pub struct Realms {
    /// This node's id, for metrics and logs.
    pub node: String,
    /// The realms.
    pub map: HashMap<String, Arc<Realm>>,
    /// The largest message a client may send.
    pub max_message_bytes: usize,
}

impl Realms {
    /// Counts a connection closed before or instead of a session.
    pub fn refused(&self, reason: &'static str) {
        counter!(CONNECTIONS_REFUSED, "node" => self.node.clone(), "reason" => reason).increment(1);
    }
}

enum Phase {
    Hello,
    Challenged {
        realm: Arc<Realm>,
        session: SessionId,
        roles: Dict,
        pending: Box<Pending>,
    },
    Joined {
        realm: Arc<Realm>,
        info: Arc<SessionInfo>,
    },
    Closed,
}

/// The session of one connection.
pub struct Connection {
    realms: Arc<Realms>,
    outbox: Arc<Outbox>,
    transport: TransportKind,
    peer: SocketAddr,
    phase: Phase,
}

impl Connection {
    /// A connection that has not said HELLO yet.
    pub fn new(
        realms: Arc<Realms>,
        outbox: Arc<Outbox>,
        transport: TransportKind,
        peer: SocketAddr,
    ) -> Connection {
        Connection {
            realms,
            outbox,
            transport,
            peer,
            phase: Phase::Hello,
        }
    }

    /// Whether the session is open (WELCOME sent).
    pub fn joined(&self) -> Option<&Arc<SessionInfo>> {
        match &self.phase {
            Phase::Joined { info, .. } => Some(info),
            _ => None,
        }
    }

    fn serializer(&self) -> Serializer {
        self.outbox.serializer()
    }

    /// One message's bytes, as the transport framed them.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Flow {
        if bytes.len() > self.realms.max_message_bytes {
            return self.too_large(bytes.len());
        }
        match self.serializer().decode(bytes) {
            Ok(message) => self.on_message(message),
            Err(err) => self.violation(err.to_string()),
        }
    }

    /// A message longer than `router.max_message_bytes` arrived (or was announced).
    pub fn too_large(&mut self, len: usize) -> Flow {
        self.realms.refused("too_large");
        let max = self.realms.max_message_bytes;
        self.abort(
            reason::PROTOCOL_VIOLATION,
            format!("a message of {len} bytes exceeds router.max_message_bytes ({max})"),
        )
    }

    /// Ends the session with ABORT `wamp.error.protocol_violation`.
    pub fn violation(&mut self, message: String) -> Flow {
        self.realms.refused("protocol_violation");
        debug!(peer = %self.peer, %message, "protocol violation");
        self.abort(reason::PROTOCOL_VIOLATION, message)
    }

    fn abort(&mut self, reason: &str, message: String) -> Flow {
        let mut details = Dict::new();
        details.insert("message".into(), Value::String(message));
        let _ = self.outbox.send(&WampMessage::Abort {
            details,
            reason: reason.to_owned(),
        });
        self.leave();
        self.outbox.close();
        Flow::Close
    }

    /// A decoded message.
    pub fn on_message(&mut self, message: WampMessage) -> Flow {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Hello => match message {
                WampMessage::Hello { realm, details } => self.hello(&realm, &details),
                other => self.violation(format!("{} before HELLO", other.name())),
            },
            Phase::Challenged {
                realm,
                session,
                roles,
                pending,
            } => match message {
                WampMessage::Authenticate { signature, .. } => {
                    match Authenticator::authenticate(&pending, &signature) {
                        Some(identity) => self.welcome(realm, session, identity, roles),
                        None => {
                            self.realms.refused("authentication_failed");
                            info!(peer = %self.peer, realm = realm.name(), "authentication failed");
                            self.abort(
                                reason::AUTHENTICATION_FAILED,
                                "the signature does not answer the challenge".into(),
                            )
                        }
                    }
                }
                WampMessage::Abort { .. } => self.close_quietly(),
                other => self.violation(format!("{} instead of AUTHENTICATE", other.name())),
            },
            Phase::Joined { realm, info } => {
                self.phase = Phase::Joined {
                    realm: realm.clone(),
                    info: info.clone(),
                };
                match message {
                    WampMessage::Goodbye { .. } => {
                        let _ = self.outbox.send(&WampMessage::Goodbye {
                            details: Dict::new(),
                            reason: reason::GOODBYE_AND_OUT.into(),
                        });
                        self.leave();
                        self.outbox.close();
                        Flow::Close
                    }
                    WampMessage::Abort { .. } => self.close_quietly(),
                    WampMessage::Hello { .. } => self.violation("HELLO in an open session".into()),
                    message => match realm.handle(&info, message) {
                        Ok(()) => Flow::Continue,
                        Err(why) => self.violation(why),
                    },
                }
            }
            Phase::Closed => Flow::Close,
        }
    }

    fn close_quietly(&mut self) -> Flow {
        self.leave();
        self.outbox.close();
        Flow::Close
    }

    fn hello(&mut self, realm_name: &str, details: &Dict) -> Flow {
        let Some(realm) = self.realms.map.get(realm_name).cloned() else {
            self.realms.refused("no_such_realm");
            return self.abort(
                reason::NO_SUCH_REALM,
                format!("this router serves no realm {realm_name}"),
            );
        };
        let roles = match details.get("roles") {
            Some(Value::Dict(roles)) if !roles.is_empty() => roles.clone(),
            _ => {
                return self
                    .violation("HELLO.Details.roles must be a dict of the client's roles".into())
            }
        };
        let mut session = random_id();
        while realm.lock().sessions.contains(session) {
            session = random_id();
        }
        match realm.authenticator().hello(details, realm_name, session) {
            Step::Welcome(identity) => self.welcome(realm, session, identity, roles),
            Step::Challenge(method, extra, pending) => {
                let _ = self.outbox.send(&WampMessage::Challenge {
                    auth_method: method,
                    extra,
                });
                self.phase = Phase::Challenged {
                    realm,
                    session,
                    roles,
                    pending,
                };
                Flow::Continue
            }
            Step::Refuse(reason, message) => {
                self.realms.refused("authentication_failed");
                info!(peer = %self.peer, realm = realm_name, %message, "session refused");
                self.abort(reason, message)
            }
        }
    }

    fn welcome(
        &mut self,
        realm: Arc<Realm>,
        session: SessionId,
        id: Identity,
        roles: Dict,
    ) -> Flow {
        let info = Arc::new(SessionInfo {
            id: session,
            realm: realm.name().to_owned(),
            authid: id.authid,
            authrole: id.authrole,
            authmethod: id.authmethod,
            authprovider: "static".into(),
            serializer: self.serializer(),
            transport: self.transport,
            peer: self.peer,
            roles,
            joined: SystemTime::now(),
        });
        let mut details = Dict::new();
        let s = |v: &str| Value::String(v.to_owned());
        details.insert("realm".into(), s(realm.name()));
        details.insert("authid".into(), s(&info.authid));
        details.insert("authrole".into(), s(&info.authrole));
        details.insert("authmethod".into(), s(&info.authmethod));
        details.insert("authprovider".into(), s(&info.authprovider));
        details.insert("roles".into(), Value::Dict(Realm::router_roles()));
        details.insert("x_cluster_node".into(), s(&self.realms.node));
        let _ = self.outbox.send(&WampMessage::Welcome { session, details });
        realm.join(Joined {
            info: info.clone(),
            outbox: self.outbox.clone(),
        });
        info!(
            session,
            realm = realm.name(),
            authid = %info.authid,
            authrole = %info.authrole,
            authmethod = %info.authmethod,
            serializer = %info.serializer,
            transport = info.transport.as_str(),
            peer = %self.peer,
            "session joined"
        );
        self.phase = Phase::Joined { realm, info };
        Flow::Continue
    }

    /// Leaves the realm, if joined.
    pub fn leave(&mut self) {
        if let Phase::Joined { realm, info } = std::mem::replace(&mut self.phase, Phase::Closed) {
            realm.leave(info.id);
            info!(session = info.id, realm = realm.name(), "session left");
        }
    }

    /// The router is shutting down: GOODBYE `wamp.close.system_shutdown` to an open session.
    pub fn shutdown(&mut self) {
        if self.joined().is_some() {
            let _ = self.outbox.send(&WampMessage::Goodbye {
                details: Dict::new(),
                reason: reason::SYSTEM_SHUTDOWN.into(),
            });
        }
        self.leave();
        self.outbox.close();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::router::config::RouterConfig;
    use crate::router::session::{OutboxReader, Outgoing};
    use crate::wamp::json;

    fn realms() -> Arc<Realms> {
        let config = RouterConfig::default().effective_realms().remove(0);
        let realm = Realm::new(&config, "router.realms[0]", "n", 10).unwrap();
        Arc::new(Realms {
            node: "n".into(),
            map: [("realm1".to_owned(), Arc::new(realm))]
                .into_iter()
                .collect(),
            max_message_bytes: 1024,
        })
    }

    fn connection(realms: &Arc<Realms>) -> (Connection, OutboxReader) {
        let (outbox, reader) = Outbox::new(Serializer::Json, 64, 1 << 20, CancellationToken::new());
        let peer = ([127, 0, 0, 1], 1).into();
        (
            Connection::new(realms.clone(), outbox, TransportKind::WebSocket, peer),
            reader,
        )
    }

    /// What the connection sent, as JSON texts, and whether it asked to close.
    fn sent(reader: &mut OutboxReader) -> (Vec<String>, bool) {
        let mut texts = Vec::new();
        let mut close = false;
        while let Ok(item) = reader.rx.try_recv() {
            match item {
                Outgoing::Message(b) => texts.push(String::from_utf8(b.to_vec()).unwrap()),
                Outgoing::Close => close = true,
                _ => {}
            }
        }
        (texts, close)
    }

    const HELLO: &str = r#"[1,"realm1",{"roles":{"caller":{}}}]"#;

    #[test]
    fn hello_opens_a_session_and_goodbye_closes_it() {
        let realms = realms();
        let (mut c, mut out) = connection(&realms);
        assert_eq!(c.on_bytes(HELLO.as_bytes()), Flow::Continue);
        let (texts, close) = sent(&mut out);
        assert!(texts[0].starts_with("[2,") && texts[0].contains("\"authrole\":\"anonymous\""));
        assert!(!close);
        let id = c.joined().unwrap().id;
        assert!(realms.map["realm1"].lock().sessions.contains(id));
        assert_eq!(
            c.on_bytes(br#"[6,{},"wamp.close.close_realm"]"#),
            Flow::Close
        );
        let (texts, close) = sent(&mut out);
        assert_eq!(texts, [r#"[6,{},"wamp.close.goodbye_and_out"]"#]);
        assert!(close);
        assert!(
            !realms.map["realm1"].lock().sessions.contains(id),
            "left the realm"
        );
    }

    #[test]
    fn every_message_out_of_turn_ends_the_session_with_a_protocol_violation() {
        let realms = realms();
        let cases: &[&[&str]] = &[
            &[r#"[48,1,{},"a.b"]"#],
            &[HELLO, HELLO],
            &[HELLO, r#"[65,1,2]"#],
            &[HELLO, r#"[5,"sig",{}]"#],
            &[r#"[5,"sig",{}]"#],
            &["[1]"],
            &["{}"],
            &["\u{0}garbage"],
        ];
        for messages in cases {
            let (mut c, mut out) = connection(&realms);
            let mut flow = Flow::Continue;
            for m in *messages {
                flow = c.on_bytes(m.as_bytes());
            }
            let (texts, close) = sent(&mut out);
            assert_eq!(flow, Flow::Close, "{messages:?}");
            assert!(close, "{messages:?}");
            let last = texts.last().unwrap();
            assert!(
                last.starts_with(r#"[3,{"message":"#)
                    && last.ends_with(r#""wamp.error.protocol_violation"]"#),
                "{messages:?}: {last}"
            );
            assert_eq!(
                realms.map["realm1"].lock().sessions.len(),
                0,
                "{messages:?}"
            );
            // Nothing after the end is read.
            assert_eq!(c.on_bytes(HELLO.as_bytes()), Flow::Close);
        }
    }

    #[test]
    fn a_message_over_the_limit_and_an_unknown_realm_are_aborted_with_their_reasons() {
        let realms = realms();
        let (mut c, mut out) = connection(&realms);
        assert_eq!(c.on_bytes(&[b' '; 2000]), Flow::Close);
        let (texts, _) = sent(&mut out);
        assert!(
            texts[0].contains("router.max_message_bytes (1024)"),
            "{texts:?}"
        );
        let (mut c, mut out) = connection(&realms);
        assert_eq!(
            c.on_bytes(br#"[1,"nowhere",{"roles":{"caller":{}}}]"#),
            Flow::Close
        );
        let (texts, _) = sent(&mut out);
        let abort = json::decode(&texts[0]).unwrap();
        assert!(
            matches!(abort, WampMessage::Abort { ref reason, .. } if reason == "wamp.error.no_such_realm")
        );
    }

    #[test]
    fn an_abort_from_the_client_or_the_end_of_the_connection_leaves_the_realm() {
        let realms = realms();
        let (mut c, _out) = connection(&realms);
        c.on_bytes(HELLO.as_bytes());
        assert_eq!(
            c.on_bytes(br#"[3,{},"wamp.close.system_shutdown"]"#),
            Flow::Close
        );
        assert_eq!(realms.map["realm1"].lock().sessions.len(), 0);
        let (mut c, _out) = connection(&realms);
        c.on_bytes(HELLO.as_bytes());
        assert_eq!(realms.map["realm1"].lock().sessions.len(), 1);
        drop(c);
        assert_eq!(
            realms.map["realm1"].lock().sessions.len(),
            0,
            "dropped: left"
        );
    }
}
