//! The `[router]` section: the client listeners, the session limits and timeouts (scalar keys,
//! each with a `WAMP_CLUSTER_ROUTER__…` variable and a `--router-…` flag), and the realms with
//! their roles and users (from the file only).
//!
//! With no realm configured the router serves `realm1` to anonymous clients with every
//! permission; its listeners bind loopback by default, so that is loopback only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Section;
use crate::ConfigError;

crate::settings! {
    /// The `[router]` section of a node's configuration.
    pub struct RouterConfig {
        /// Where WebSocket clients connect (paths `/` and `/ws`; subprotocols `wamp.2.json`,
        /// `wamp.2.msgpack`, `wamp.2.cbor`). Port 0 binds a free port.
        pub ws_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8090)),
        /// Where WAMP RawSocket clients connect (json, msgpack, cbor); none by default.
        pub rawsocket_addr: Option<SocketAddr> = None,
        /// Serve both listeners over TLS with the node's `[tls]` certificate (wss://,
        /// RawSocket over TLS). Needs `[tls]`.
        pub tls: bool = false,
        /// The router pings each client this often (WebSocket ping, RawSocket ping), 100 ms
        /// to 1 h.
        #[serde(with = "crate::config::ms")]
        pub ping_interval_ms: Duration = Duration::from_millis(30_000),
        /// A connection that sends nothing, not even a pong, for this long is closed; 100 ms
        /// to 1 h, and longer than `ping_interval_ms`.
        #[serde(with = "crate::config::ms")]
        pub idle_timeout_ms: Duration = Duration::from_millis(90_000),
        /// A connection has this long to open its session (transport handshake, HELLO and
        /// authentication), 100 ms to 10 minutes.
        #[serde(with = "crate::config::ms")]
        pub hello_timeout_ms: Duration = Duration::from_millis(10_000),
        /// The largest message a client may send or be sent, in bytes; 1 KiB to 64 MiB. A
        /// larger one closes the session (ABORT with a reason).
        pub max_message_bytes: usize = 16 * 1024 * 1024,
        /// Messages queued for one client before the router decides that it does not read
        /// (a slow consumer) and closes it; 16 to 1,048,576.
        pub session_queue_messages: usize = 65_536,
        /// Bytes queued for one client before it counts as a slow consumer; at least
        /// `max_message_bytes`, at most 4 GiB.
        pub session_queue_bytes: usize = 64 * 1024 * 1024,
        /// Connections open at once, sessions and handshakes together, 1 to 1,000,000; one
        /// more is closed at once (counted).
        pub max_connections: usize = 100_000,
        /// Events kept per realm for subscribers that ask for them (PUBLISH with `retain`,
        /// SUBSCRIBE with `get_retained`): the last one per topic, at most this many topics
        /// (the oldest topic's goes first); 0 to 1,000,000, 0 retains nothing.
        pub max_retained_events: usize = 10_000,
        /// The realms, each with its roles and users (file only).
        pub realms: Vec<RealmConfig> = Vec::new(),
    }
}

crate::settings! {
    /// One realm (`[[router.realms]]`).
    pub struct RealmConfig {
        /// The realm URI.
        pub name: String = String::new(),
        /// The role of anonymous sessions; absent: anonymous sessions are refused.
        pub anonymous_role: Option<String> = None,
        /// The roles.
        pub roles: Vec<RoleConfig> = Vec::new(),
        /// The users that authenticate.
        pub users: Vec<UserConfig> = Vec::new(),
    }
}

crate::settings! {
    /// A role (`[[router.realms.roles]]`): what its sessions may do.
    pub struct RoleConfig {
        /// Its name (the `authrole`).
        pub name: String = String::new(),
        /// Its rules; for a URI, an `exact` rule wins over any prefix rule, and the longest
        /// prefix over shorter ones. No rule: refused.
        pub permissions: Vec<PermissionConfig> = Vec::new(),
    }
}

crate::settings! {
    /// One rule of a role.
    pub struct PermissionConfig {
        /// The URI, or the prefix (`""` covers every URI).
        pub uri: String = String::new(),
        /// `exact` or `prefix`.
        #[serde(rename = "match")]
        pub match_policy: String = "prefix".into(),
        /// May call the procedures it covers.
        pub call: bool = false,
        /// May register them.
        pub register: bool = false,
        /// May publish to the topics it covers.
        pub publish: bool = false,
        /// May subscribe to them.
        pub subscribe: bool = false,
        /// Disclose the identity of this role's sessions (session, authid, authrole) to the
        /// callees of its calls and the subscribers of its publications on these URIs, as if
        /// each asked with `disclose_me` (autobahn-python has no `disclose_me` for
        /// publications).
        pub disclose: bool = false,
    }
}

crate::settings! {
    /// A user (`[[router.realms.users]]`) and how it authenticates: a ticket, a WAMP-CRA
    /// secret (optionally salted), or ed25519 public keys (cryptosign). Secrets are read from
    /// files at start and never logged.
    pub struct UserConfig {
        /// The `authid` it presents.
        pub authid: String = String::new(),
        /// Its role.
        pub role: String = String::new(),
        /// A file that holds its ticket (method `ticket`; surrounding whitespace ignored).
        pub ticket_file: Option<PathBuf> = None,
        /// A file that holds its WAMP-CRA secret (method `wampcra`).
        pub secret_file: Option<PathBuf> = None,
        /// WAMP-CRA salt: with it the key is derived with PBKDF2-SHA256.
        pub salt: Option<String> = None,
        /// PBKDF2 iterations for a salted secret, 1 to 10,000,000.
        pub iterations: u32 = 1000,
        /// PBKDF2 key length in bytes for a salted secret, 16 to 1024.
        pub keylen: u32 = 32,
        /// Its ed25519 public keys, 64 hex digits each (method `cryptosign`).
        pub pubkeys: Vec<String> = Vec::new(),
    }
}

impl Section for RouterConfig {
    const NAME: &'static str = "router";

    fn validate(&self) -> Result<(), ConfigError> {
        let within = |key: &str, value: Duration, min_ms: u64, max_ms: u64| {
            let ms = value.as_millis();
            if ms < u128::from(min_ms) || ms > u128::from(max_ms) {
                Err(ConfigError::invalid(
                    key,
                    format!("must be from {min_ms} to {max_ms} milliseconds"),
                ))
            } else {
                Ok(())
            }
        };
        within("ping_interval_ms", self.ping_interval_ms, 100, 3_600_000)?;
        within("idle_timeout_ms", self.idle_timeout_ms, 100, 3_600_000)?;
        within("hello_timeout_ms", self.hello_timeout_ms, 100, 600_000)?;
        if self.idle_timeout_ms <= self.ping_interval_ms {
            return Err(ConfigError::invalid(
                "idle_timeout_ms",
                "must be longer than ping_interval_ms",
            ));
        }
        let count = |key: &str, value: usize, min: usize, max: usize| {
            if value < min || value > max {
                Err(ConfigError::invalid(
                    key,
                    format!("must be from {min} to {max}"),
                ))
            } else {
                Ok(())
            }
        };
        count("max_message_bytes", self.max_message_bytes, 1024, 64 << 20)?;
        count(
            "session_queue_messages",
            self.session_queue_messages,
            16,
            1 << 20,
        )?;
        count(
            "session_queue_bytes",
            self.session_queue_bytes,
            self.max_message_bytes,
            4 << 30,
        )?;
        count("max_connections", self.max_connections, 1, 1_000_000)?;
        count(
            "max_retained_events",
            self.max_retained_events,
            0,
            1_000_000,
        )?;
        let mut names = std::collections::HashSet::new();
        for (i, realm) in self.realms.iter().enumerate() {
            let key = |field: &str| format!("realms[{i}].{field}");
            if !super::uri::check(&realm.name, super::uri::Match::Exact) {
                return Err(ConfigError::invalid(key("name"), "must be a valid URI"));
            }
            if !names.insert(&realm.name) {
                return Err(ConfigError::invalid(
                    key("name"),
                    format!("{} is configured twice", realm.name),
                ));
            }
            let role_names: Vec<&str> = realm.roles.iter().map(|r| r.name.as_str()).collect();
            if let Some(role) = &realm.anonymous_role {
                if !role_names.contains(&role.as_str()) {
                    return Err(ConfigError::invalid(
                        key("anonymous_role"),
                        format!("names no role of the realm: {role}"),
                    ));
                }
            }
            for (j, role) in realm.roles.iter().enumerate() {
                for (k, rule) in role.permissions.iter().enumerate() {
                    if !matches!(rule.match_policy.as_str(), "exact" | "prefix") {
                        return Err(ConfigError::invalid(
                            key(&format!("roles[{j}].permissions[{k}].match")),
                            "must be exact or prefix",
                        ));
                    }
                }
            }
            for (j, user) in realm.users.iter().enumerate() {
                let ukey = |field: &str| key(&format!("users[{j}].{field}"));
                if user.authid.is_empty() {
                    return Err(ConfigError::invalid(ukey("authid"), "must not be empty"));
                }
                if !role_names.contains(&user.role.as_str()) {
                    return Err(ConfigError::invalid(
                        ukey("role"),
                        format!("names no role of the realm: {}", user.role),
                    ));
                }
                if !(1..=10_000_000).contains(&user.iterations) {
                    return Err(ConfigError::invalid(
                        ukey("iterations"),
                        "must be from 1 to 10000000",
                    ));
                }
                if !(16..=1024).contains(&user.keylen) {
                    return Err(ConfigError::invalid(
                        ukey("keylen"),
                        "must be from 16 to 1024",
                    ));
                }
                for key in &user.pubkeys {
                    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(ConfigError::invalid(
                            ukey("pubkeys"),
                            "each key must be 64 hex digits (an ed25519 public key)",
                        ));
                    }
                }
                let methods = usize::from(user.ticket_file.is_some())
                    + usize::from(user.secret_file.is_some())
                    + usize::from(!user.pubkeys.is_empty());
                if methods == 0 {
                    return Err(ConfigError::invalid(
                        ukey("authid"),
                        "needs ticket_file, secret_file or pubkeys",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl RouterConfig {
    /// The realms to serve: the configured ones, or `realm1` open to anonymous clients.
    pub fn effective_realms(&self) -> Vec<RealmConfig> {
        if !self.realms.is_empty() {
            return self.realms.clone();
        }
        vec![RealmConfig {
            name: "realm1".into(),
            anonymous_role: Some("anonymous".into()),
            roles: vec![RoleConfig {
                name: "anonymous".into(),
                permissions: vec![PermissionConfig {
                    uri: String::new(),
                    match_policy: "prefix".into(),
                    call: true,
                    register: true,
                    publish: true,
                    subscribe: true,
                    disclose: false,
                }],
            }],
            users: Vec::new(),
        }]
    }
}
