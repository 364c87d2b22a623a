//! Authentication and authorization of one realm.
//!
//! - [`Authenticator`]: the methods of the HELLO (`authmethods`), tried in the client's order:
//!   `anonymous` (when the realm has an anonymous role), `ticket`, `wampcra` (HMAC-SHA256 over
//!   the challenge; with a salt, the key is PBKDF2-SHA256 of the secret, base64-encoded, as
//!   autobahn derives it) and `cryptosign` (an ed25519 signature of a random 32-byte
//!   challenge). Secrets are read from files once, kept in memory, never logged.
//! - [`Authorizer`]: per role, URI rules (exact or prefix) for call, register, publish and
//!   subscribe; an exact rule wins over prefixes, the longest prefix over shorter ones.

use std::collections::HashMap;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::{RealmConfig, UserConfig};
use super::session::{random_id, timestamp};
use crate::wamp::{Dict, Value};
use crate::ConfigError;

/// What a session may do with a URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// CALL.
    Call,
    /// REGISTER.
    Register,
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
}

#[derive(Debug, Clone, Copy, Default)]
struct Rights {
    call: bool,
    register: bool,
    publish: bool,
    subscribe: bool,
    disclose: bool,
}

impl Rights {
    fn allows(self, action: Action) -> bool {
        match action {
            Action::Call => self.call,
            Action::Register => self.register,
            Action::Publish => self.publish,
            Action::Subscribe => self.subscribe,
        }
    }
}

#[derive(Debug, Default)]
struct Role {
    exact: HashMap<String, Rights>,
    prefix: Vec<(String, Rights)>,
}

/// The roles of a realm and their rules.
#[derive(Debug, Default)]
pub struct Authorizer {
    roles: HashMap<String, Role>,
}

impl Authorizer {
    /// The roles of a realm's configuration.
    pub fn new(realm: &RealmConfig) -> Authorizer {
        let mut roles = HashMap::new();
        for role in &realm.roles {
            let mut r = Role::default();
            for rule in &role.permissions {
                let rights = Rights {
                    call: rule.call,
                    register: rule.register,
                    publish: rule.publish,
                    subscribe: rule.subscribe,
                    disclose: rule.disclose,
                };
                if rule.match_policy == "exact" {
                    r.exact.insert(rule.uri.clone(), rights);
                } else {
                    r.prefix.push((rule.uri.clone(), rights));
                }
            }
            // Longest prefix first.
            r.prefix.sort_by_key(|rule| std::cmp::Reverse(rule.0.len()));
            roles.insert(role.name.clone(), r);
        }
        Authorizer { roles }
    }

    /// The rule of `role` that covers `uri`.
    fn rights(&self, role: &str, uri: &str) -> Option<Rights> {
        let role = self.roles.get(role)?;
        if let Some(rights) = role.exact.get(uri) {
            return Some(*rights);
        }
        role.prefix
            .iter()
            .find(|(prefix, _)| uri.starts_with(prefix.as_str()))
            .map(|(_, rights)| *rights)
    }

    /// Whether `role` may do `action` on `uri`.
    pub fn allows(&self, role: &str, action: Action, uri: &str) -> bool {
        self.rights(role, uri).is_some_and(|r| r.allows(action))
    }

    /// Whether the identity of `role`'s sessions is disclosed on `uri`.
    pub fn discloses(&self, role: &str, uri: &str) -> bool {
        self.rights(role, uri).is_some_and(|r| r.disclose)
    }
}

/// A user's credentials, read from its files. Its `Debug` shows which methods it has, never a
/// secret.
struct User {
    role: String,
    ticket: Option<String>,
    /// The HMAC key: the secret, or the base64 of its PBKDF2 derivation.
    cra_key: Option<Vec<u8>>,
    salt: Option<(String, u32, u32)>,
    pubkeys: Vec<VerifyingKey>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("role", &self.role)
            .field("ticket", &self.ticket.as_ref().map(|_| "<secret>"))
            .field("wampcra", &self.cra_key.as_ref().map(|_| "<secret>"))
            .field("salted", &self.salt.is_some())
            .field("pubkeys", &self.pubkeys.len())
            .finish()
    }
}

/// Who a session is once authenticated.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// Its authid.
    pub authid: String,
    /// Its role.
    pub authrole: String,
    /// The method that proved it.
    pub authmethod: String,
}

/// A challenge sent, waiting for its AUTHENTICATE.
#[derive(Debug, Clone)]
pub struct Pending {
    identity: Identity,
    expected: Expected,
}

#[derive(Clone)]
enum Expected {
    Ticket(String),
    /// The base64 HMAC of the challenge string.
    Cra(String),
    Cryptosign {
        key: VerifyingKey,
        challenge: [u8; 32],
    },
}

impl std::fmt::Debug for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The expected answer is as good as the secret: never shown.
        f.write_str(match self {
            Expected::Ticket(_) => "Ticket(<secret>)",
            Expected::Cra(_) => "Cra(<secret>)",
            Expected::Cryptosign { .. } => "Cryptosign(<challenge>)",
        })
    }
}

/// What a HELLO leads to.
#[derive(Debug)]
pub enum Step {
    /// Welcome at once.
    Welcome(Identity),
    /// Send this CHALLENGE (method, extra) and wait.
    Challenge(String, Dict, Box<Pending>),
    /// ABORT with this reason and message.
    Refuse(&'static str, String),
}

/// The users of a realm and how they prove who they are.
#[derive(Debug, Default)]
pub struct Authenticator {
    anonymous_role: Option<String>,
    users: HashMap<String, User>,
}

fn read_secret(path: &std::path::Path, key: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        return Err(ConfigError::invalid(
            key,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(secret)
}

/// The WAMP-CRA key of a secret: itself, or with a salt the base64 of its PBKDF2-SHA256
/// derivation (as autobahn's `derive_key`).
pub fn cra_key(secret: &str, salt: Option<(&str, u32, u32)>) -> Vec<u8> {
    match salt {
        None => secret.as_bytes().to_vec(),
        Some((salt, iterations, keylen)) => {
            let mut key = vec![0u8; keylen as usize];
            pbkdf2::pbkdf2_hmac::<Sha256>(secret.as_bytes(), salt.as_bytes(), iterations, &mut key);
            BASE64.encode(key).into_bytes()
        }
    }
}

/// The WAMP-CRA signature of a challenge: base64 of HMAC-SHA256(key, challenge).
pub fn cra_sign(key: &[u8], challenge: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(challenge.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// Compares two secrets in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mac = |data: &[u8]| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(b"compare")
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        m.update(data);
        m.finalize()
    };
    // `CtOutput` compares in constant time.
    mac(a) == mac(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Authenticator {
    /// The users of a realm's configuration, their secrets read from their files; `key`
    /// names the realm in errors (`router.realms[0]`).
    pub fn new(realm: &RealmConfig, key: &str) -> Result<Authenticator, ConfigError> {
        let mut users = HashMap::new();
        for (i, user) in realm.users.iter().enumerate() {
            let ukey = |field: &str| format!("{key}.users[{i}].{field}");
            users.insert(user.authid.clone(), Self::user(user, &ukey)?);
        }
        Ok(Authenticator {
            anonymous_role: realm.anonymous_role.clone(),
            users,
        })
    }

    fn user(user: &UserConfig, ukey: &dyn Fn(&str) -> String) -> Result<User, ConfigError> {
        let ticket = match &user.ticket_file {
            Some(path) => Some(read_secret(path, &ukey("ticket_file"))?),
            None => None,
        };
        let salt = user
            .salt
            .as_ref()
            .map(|s| (s.clone(), user.iterations, user.keylen));
        let cra_key = match &user.secret_file {
            Some(path) => {
                let secret = read_secret(path, &ukey("secret_file"))?;
                Some(cra_key(
                    &secret,
                    salt.as_ref().map(|(s, i, k)| (s.as_str(), *i, *k)),
                ))
            }
            None => None,
        };
        let pubkeys = user
            .pubkeys
            .iter()
            .map(|hex_key| {
                let bytes: [u8; 32] = unhex(hex_key)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| ConfigError::invalid(ukey("pubkeys"), "64 hex digits"))?;
                VerifyingKey::from_bytes(&bytes).map_err(|_| {
                    ConfigError::invalid(ukey("pubkeys"), "not a valid ed25519 public key")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(User {
            role: user.role.clone(),
            ticket,
            cra_key,
            salt,
            pubkeys,
        })
    }

    /// What a HELLO with these details leads to, for a session that will get `session` as
    /// its id.
    pub fn hello(&self, details: &Dict, realm: &str, session: u64) -> Step {
        let methods: Vec<&str> = match details.get("authmethods") {
            Some(Value::List(list)) => list
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => vec!["anonymous"],
        };
        let authid = match details.get("authid") {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        };
        let user = authid.and_then(|id| Some((id, self.users.get(id)?)));
        for method in &methods {
            match (*method, user) {
                ("anonymous", _) => {
                    if let Some(role) = &self.anonymous_role {
                        return Step::Welcome(Identity {
                            authid: format!("anonymous-{}", random_id()),
                            authrole: role.clone(),
                            authmethod: "anonymous".into(),
                        });
                    }
                }
                ("ticket", Some((authid, user))) if user.ticket.is_some() => {
                    let pending = Pending {
                        identity: identity(authid, user, "ticket"),
                        expected: Expected::Ticket(user.ticket.clone().unwrap_or_default()),
                    };
                    return Step::Challenge("ticket".into(), Dict::new(), Box::new(pending));
                }
                ("wampcra", Some((authid, user))) if user.cra_key.is_some() => {
                    let challenge = serde_json::json!({
                        "authid": authid,
                        "authrole": user.role,
                        "authmethod": "wampcra",
                        "authprovider": "static",
                        "nonce": hex(&random_id().to_le_bytes()),
                        "timestamp": timestamp(SystemTime::now()),
                        "session": session,
                    })
                    .to_string();
                    let key = user.cra_key.as_deref().unwrap_or_default();
                    let mut extra = Dict::new();
                    extra.insert("challenge".into(), Value::String(challenge.clone()));
                    if let Some((salt, iterations, keylen)) = &user.salt {
                        extra.insert("salt".into(), Value::String(salt.clone()));
                        extra.insert("iterations".into(), Value::Integer((*iterations).into()));
                        extra.insert("keylen".into(), Value::Integer((*keylen).into()));
                    }
                    let pending = Pending {
                        identity: identity(authid, user, "wampcra"),
                        expected: Expected::Cra(cra_sign(key, &challenge)),
                    };
                    return Step::Challenge("wampcra".into(), extra, Box::new(pending));
                }
                ("cryptosign", Some((authid, user))) if !user.pubkeys.is_empty() => {
                    let presented = match details.get("authextra") {
                        Some(Value::Dict(extra)) => match extra.get("pubkey") {
                            Some(Value::String(k)) => unhex(k),
                            _ => None,
                        },
                        _ => None,
                    };
                    let Some(key) = presented
                        .and_then(|k| user.pubkeys.iter().find(|p| p.as_bytes()[..] == k[..]))
                    else {
                        return Step::Refuse(
                            super::uri::reason::AUTHENTICATION_FAILED,
                            "cryptosign: authextra.pubkey is not a key of this user".into(),
                        );
                    };
                    let mut challenge = [0u8; 32];
                    for (i, chunk) in challenge.chunks_mut(8).enumerate() {
                        chunk.copy_from_slice(&(random_id() ^ (i as u64) << 56).to_le_bytes());
                    }
                    let mut extra = Dict::new();
                    extra.insert("challenge".into(), Value::String(hex(&challenge)));
                    extra.insert("channel_binding".into(), Value::Null);
                    let pending = Pending {
                        identity: identity(authid, user, "cryptosign"),
                        expected: Expected::Cryptosign {
                            key: *key,
                            challenge,
                        },
                    };
                    return Step::Challenge("cryptosign".into(), extra, Box::new(pending));
                }
                _ => {}
            }
        }
        if methods.iter().any(|m| *m != "anonymous") && user.is_none() {
            return Step::Refuse(
                super::uri::reason::AUTHENTICATION_FAILED,
                format!(
                    "no user {:?} in realm {realm} with the methods {methods:?}",
                    authid.unwrap_or_default()
                ),
            );
        }
        Step::Refuse(
            super::uri::reason::NO_AUTH_METHOD,
            format!("realm {realm} accepts none of the methods {methods:?}"),
        )
    }

    /// Whether an AUTHENTICATE answers the challenge.
    pub fn authenticate(pending: &Pending, signature: &str) -> Option<Identity> {
        let ok = match &pending.expected {
            Expected::Ticket(ticket) => same(ticket.as_bytes(), signature.as_bytes()),
            Expected::Cra(expected) => same(expected.as_bytes(), signature.as_bytes()),
            Expected::Cryptosign { key, challenge } => {
                // 64 signature bytes, optionally followed by the challenge (autobahn sends
                // both).
                match unhex(signature) {
                    Some(bytes) if bytes.len() == 64 || bytes.len() == 96 => {
                        let signed_challenge = bytes.len() == 64 || bytes[64..] == challenge[..];
                        let sig: Option<[u8; 64]> = bytes[..64].try_into().ok();
                        signed_challenge
                            && sig.is_some_and(|s| {
                                key.verify(challenge, &Signature::from_bytes(&s)).is_ok()
                            })
                    }
                    _ => false,
                }
            }
        };
        ok.then(|| pending.identity.clone())
    }
}

fn identity(authid: &str, user: &User, method: &str) -> Identity {
    Identity {
        authid: authid.to_owned(),
        authrole: user.role.clone(),
        authmethod: method.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use crate::router::config::{PermissionConfig, RoleConfig};

    /// The salted key is base64 of PBKDF2-HMAC-SHA256, as autobahn's `derive_key` makes it
    /// (the expected value from Python's `hashlib.pbkdf2_hmac`); the signature is HMAC-SHA256.
    #[test]
    fn wampcra_derives_and_signs_as_autobahn_does() {
        assert_eq!(
            cra_key("L3L1YUE8Txlw", Some(("salt123", 1000, 32))),
            b"qzcdsr9uu/L5hnss3kjNTRe490ETgA70ZBaB5rvnJ5Y=".to_vec()
        );
        assert_eq!(cra_key("secret", None), b"secret".to_vec());
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let sig = cra_sign(b"Jefe", "what do ya want for nothing?");
        assert_eq!(
            BASE64.decode(sig).unwrap(),
            unhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843").unwrap()
        );
    }

    fn realm(dir: &std::path::Path) -> RealmConfig {
        std::fs::write(dir.join("ticket"), "t0ps3cret\n").unwrap();
        std::fs::write(dir.join("secret"), "s3cret").unwrap();
        let signing = SigningKey::from_bytes(&[7; 32]);
        RealmConfig {
            name: "realm1".into(),
            anonymous_role: None,
            roles: vec![RoleConfig {
                name: "backend".into(),
                permissions: vec![
                    PermissionConfig {
                        uri: "com.".into(),
                        match_policy: "prefix".into(),
                        call: true,
                        ..PermissionConfig::default()
                    },
                    PermissionConfig {
                        uri: "com.admin".into(),
                        match_policy: "prefix".into(),
                        ..PermissionConfig::default()
                    },
                    PermissionConfig {
                        uri: "com.admin.ping".into(),
                        match_policy: "exact".into(),
                        call: true,
                        ..PermissionConfig::default()
                    },
                ],
            }],
            users: vec![
                UserConfig {
                    authid: "t".into(),
                    role: "backend".into(),
                    ticket_file: Some(dir.join("ticket")),
                    ..UserConfig::default()
                },
                UserConfig {
                    authid: "c".into(),
                    role: "backend".into(),
                    secret_file: Some(dir.join("secret")),
                    ..UserConfig::default()
                },
                UserConfig {
                    authid: "k".into(),
                    role: "backend".into(),
                    pubkeys: vec![hex(signing.verifying_key().as_bytes())],
                    ..UserConfig::default()
                },
            ],
        }
    }

    fn hello(pairs: &[(&str, Value)]) -> Dict {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn methods(m: &str) -> Value {
        Value::List(vec![Value::String(m.into())])
    }

    #[test]
    fn each_method_accepts_the_right_answer_and_refuses_a_wrong_one() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(&realm(dir.path()), "router.realms[0]").unwrap();
        let challenge = |method: &str, authid: &str, extra: Option<Value>| {
            let mut details = hello(&[
                ("authmethods", methods(method)),
                ("authid", Value::String(authid.into())),
            ]);
            if let Some(extra) = extra {
                details.insert("authextra".into(), extra);
            }
            match auth.hello(&details, "realm1", 1) {
                Step::Challenge(m, extra, pending) => (m, extra, pending),
                other => panic!("{method}: {other:?}"),
            }
        };
        let (_, _, pending) = challenge("ticket", "t", None);
        assert!(Authenticator::authenticate(&pending, "t0ps3cret").is_some());
        assert!(Authenticator::authenticate(&pending, "t0ps3cre").is_none());

        let (_, extra, pending) = challenge("wampcra", "c", None);
        let Some(Value::String(text)) = extra.get("challenge") else {
            panic!("{extra:?}")
        };
        let good = cra_sign(b"s3cret", text);
        assert!(Authenticator::authenticate(&pending, &good).is_some());
        assert!(Authenticator::authenticate(&pending, &cra_sign(b"other", text)).is_none());

        let signing = SigningKey::from_bytes(&[7; 32]);
        let pubkey = Value::Dict(hello(&[(
            "pubkey",
            Value::String(hex(signing.verifying_key().as_bytes())),
        )]));
        let (_, extra, pending) = challenge("cryptosign", "k", Some(pubkey));
        let Some(Value::String(text)) = extra.get("challenge") else {
            panic!("{extra:?}")
        };
        let bytes = unhex(text).unwrap();
        let signature = signing.sign(&bytes).to_bytes();
        let identity = Authenticator::authenticate(&pending, &(hex(&signature) + text)).unwrap();
        assert_eq!(identity.authmethod, "cryptosign");
        assert!(Authenticator::authenticate(&pending, &hex(&signature)).is_some());
        let other = SigningKey::from_bytes(&[8; 32]).sign(&bytes).to_bytes();
        assert!(Authenticator::authenticate(&pending, &hex(&other)).is_none());
    }

    #[test]
    fn unknown_users_and_anonymous_without_a_role_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(&realm(dir.path()), "r").unwrap();
        let step = auth.hello(&Dict::new(), "realm1", 1);
        assert!(
            matches!(
                step,
                Step::Refuse(super::super::uri::reason::NO_AUTH_METHOD, _)
            ),
            "{step:?}"
        );
        let details = hello(&[
            ("authmethods", methods("ticket")),
            ("authid", Value::String("nobody".into())),
        ]);
        let step = auth.hello(&details, "realm1", 1);
        assert!(
            matches!(
                step,
                Step::Refuse(super::super::uri::reason::AUTHENTICATION_FAILED, _)
            ),
            "{step:?}"
        );
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Authenticator::new(&realm(dir.path()), "r").unwrap();
        let shown = format!("{auth:?}");
        assert!(
            !shown.contains("t0ps3cret") && !shown.contains("s3cret"),
            "{shown}"
        );
        let details = hello(&[
            ("authmethods", methods("ticket")),
            ("authid", Value::String("t".into())),
        ]);
        let Step::Challenge(_, _, pending) = auth.hello(&details, "realm1", 1) else {
            panic!()
        };
        assert!(!format!("{pending:?}").contains("t0ps3cret"));
    }

    #[test]
    fn an_exact_rule_wins_over_prefixes_and_the_longest_prefix_over_shorter_ones() {
        let dir = tempfile::tempdir().unwrap();
        let authz = Authorizer::new(&realm(dir.path()));
        assert!(authz.allows("backend", Action::Call, "com.example.add"));
        assert!(!authz.allows("backend", Action::Register, "com.example.add"));
        assert!(!authz.allows("backend", Action::Call, "com.admin.reset"));
        assert!(authz.allows("backend", Action::Call, "com.admin.ping"));
        assert!(!authz.allows("backend", Action::Call, "org.example"));
        assert!(!authz.allows("nobody", Action::Call, "com.example.add"));
    }
}
