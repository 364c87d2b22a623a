//! Node configuration: the keys of the TOML file, their defaults, validation, and the layering
//! of file, environment (`WAMP_CLUSTER_…`) and flags.
//!
//! Every key can be set in all three places. Later layers win: defaults, then the file, then the
//! environment, then flags. [`Config::validate`] refuses a bad value with a message that names
//! the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::security::{ClusterKeys, Secret};

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "WAMP_CLUSTER_";

/// Longest node id or cluster id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Largest size of the labels once encoded for gossip, in bytes. Labels travel in every gossip
/// exchange, so they must stay small.
pub const MAX_LABELS_BYTES: usize = 1024;

/// The environment variable holding the cluster secret itself (the alternative to
/// `cluster_secret_file`, for containers).
pub const SECRET_ENV: &str = "WAMP_CLUSTER_SECRET";

/// Shortest admin token accepted, in bytes: a short one can be guessed.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The whole configuration of a node. See `config/node.toml` for an annotated example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Unique and stable name of this node across restarts: letters, digits, `.`, `_`, `-`.
    pub node_id: String,
    /// Nodes gossiping with another cluster id are ignored.
    pub cluster_id: String,
    /// UDP address chitchat binds for gossip. Port 0 is refused: the address is part of the
    /// node's gossip identity and must be known before binding.
    pub gossip_addr: SocketAddr,
    /// Gossip address other nodes use to reach this one, when it differs from `gossip_addr`
    /// (NAT, containers). Required when `gossip_addr` is an unspecified address (`0.0.0.0`).
    pub gossip_advertise_addr: Option<SocketAddr>,
    /// TCP address the forwarder listens on; published to the other nodes.
    pub forward_addr: SocketAddr,
    /// Forward address other nodes dial, when it differs from `forward_addr`. Required when
    /// `forward_addr` is an unspecified address.
    pub forward_advertise_addr: Option<SocketAddr>,
    /// HTTP admin API and `/metrics`. Port 0 binds a free port (the bound address is gossiped).
    /// Loopback by default: whoever reaches it can read the cluster's state.
    pub admin_addr: SocketAddr,
    /// A file holding the admin API's bearer token (at least 16 visible ASCII characters;
    /// surrounding whitespace is ignored). When set, the routes that change or probe anything
    /// (`POST /cluster/leave`, `/cluster/probe`, `/cluster/broadcast`) need
    /// `Authorization: Bearer <token>`; the read-only routes stay open.
    pub admin_token_file: Option<PathBuf>,
    /// A file holding the cluster secret: one or more secrets separated by whitespace (one a
    /// line), each at least 16 visible ASCII characters. When set, the forwarding handshake
    /// proves both sides know a secret and gossip datagrams are sealed; the first secret seals
    /// and proves, every one is accepted (see "Changing the secret" in `docs/SECURITY.md`).
    /// `WAMP_CLUSTER_SECRET` gives the secret itself instead; not both.
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster secret itself, from `WAMP_CLUSTER_SECRET` (or set by an embedding program);
    /// never read from or written to a file.
    #[serde(skip)]
    pub cluster_secret: Option<Secret>,
    /// Gossip addresses (`IP:port`) or names (`host:port`) of existing nodes to join through.
    /// Names are resolved again periodically, so nodes behind one DNS name are found.
    pub seeds: Vec<String>,
    /// Free-form labels, gossiped and shown in `/cluster/members`.
    pub labels: BTreeMap<String, String>,
    /// Gossip and failure detection.
    pub gossip: GossipConfig,
    /// Forwarding between nodes.
    pub forward: ForwardConfig,
    /// Limits against peers that misbehave.
    pub limits: LimitsConfig,
    /// TLS on the forwarding connections.
    pub tls: TlsConfig,
}

/// TLS on the forwarding connections (the `[tls]` section). Off unless `cert_file` is set.
/// Each node's certificate names its node id as a DNS subject alternative name; a dialer
/// checks the listener's certificate against the node id it means to reach, and a listener
/// checks a client certificate against the node id its hello gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of this node, its own certificate first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM certificates of the authorities that sign the nodes' certificates.
    pub ca_file: Option<PathBuf>,
    /// Whether a dialer must present a certificate signed by `ca_file` (mutual TLS; the
    /// default). Every node presents its certificate when it dials; `false` lets in dialers
    /// without one (a listener still checks one that is presented), which leaves who may dial
    /// to the cluster secret alone: without a secret, anyone could claim any node id.
    pub require_client_cert: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            ca_file: None,
            require_client_cert: true,
        }
    }
}

/// Limits against peers that misbehave (the `[limits]` section). The frame size limit is
/// `forward.max_frame_bytes`. All nodes of a cluster should use the same values: a node's
/// keepalive must come more often than its peers' idle timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Inbound forwarding connections served at once; more are closed at once and counted
    /// (each peer holds one).
    pub max_inbound_connections: usize,
    /// Milliseconds an inbound connection has to complete its handshake.
    pub handshake_timeout_ms: u64,
    /// Milliseconds an inbound connection may go without a complete frame, and a write to a
    /// peer may stall, before the connection is closed. At least 3 ×
    /// `limits.keepalive_interval_ms`.
    pub idle_timeout_ms: u64,
    /// Milliseconds a link may stay silent: when it has written nothing for this long it sends
    /// a ping, so that its peer's idle timeout does not close a healthy connection.
    pub keepalive_interval_ms: u64,
    /// Messages to one peer that may wait for their outcome at once (not acked yet, or acked
    /// and not taken); a send beyond that fails at once with `TooManyPending`.
    pub max_pending_acks_per_peer: usize,
    /// Frames a second read from one inbound connection, as many at once; a peer that sends
    /// faster finds its connection read more slowly (its writes back up), never dropped.
    pub max_inbound_frames_per_sec_per_peer: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_inbound_connections: 1024,
            handshake_timeout_ms: 2000,
            idle_timeout_ms: 60_000,
            keepalive_interval_ms: 5000,
            max_pending_acks_per_peer: 262_144,
            max_inbound_frames_per_sec_per_peer: 5_000_000,
        }
    }
}

impl LimitsConfig {
    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    /// The keepalive interval.
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }
}

/// Forwarding settings (the `[forward]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Milliseconds a forward waits for its ack unless the call says otherwise.
    pub ack_timeout_ms: u64,
    /// Largest encoded frame, sent or received, in bytes; at most 64 MiB.
    pub max_frame_bytes: usize,
    /// Messages queued per peer before `forward` waits (or fails with `QueueFull`).
    pub queue_capacity: usize,
    /// Bytes queued per peer before `forward` waits (or fails with `QueueFull`); at least
    /// `max_frame_bytes`.
    pub queue_capacity_bytes: usize,
    /// Milliseconds to connect and complete the handshake with a peer.
    pub connect_timeout_ms: u64,
    /// Longest pause, in milliseconds, between two dials of a peer that does not answer; the
    /// pause starts at 50 ms and doubles, with jitter.
    pub max_redial_backoff_ms: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            ack_timeout_ms: 5000,
            max_frame_bytes: 16 * 1024 * 1024,
            queue_capacity: 65536,
            queue_capacity_bytes: 64 * 1024 * 1024,
            connect_timeout_ms: 1000,
            max_redial_backoff_ms: 2000,
        }
    }
}

impl ForwardConfig {
    /// The default ack timeout.
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// The connect and handshake timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The longest pause between dials.
    pub fn max_redial_backoff(&self) -> Duration {
        Duration::from_millis(self.max_redial_backoff_ms)
    }
}

/// Gossip timings (the `[gossip]` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipConfig {
    /// Milliseconds between gossip rounds; also the failure detector's initial heartbeat
    /// interval, so a freshly joined node's crash is detected as fast as an old one's.
    pub interval_ms: u64,
    /// Phi-accrual threshold above which a silent node is declared down. With the defaults a
    /// node is declared down after about 1–2 s of silence.
    pub phi_threshold: f64,
    /// Seconds a dead node stays in the member list before it is forgotten.
    pub dead_node_grace_period_secs: u64,
    /// Milliseconds a starting node waits to hear from another node before it declares itself
    /// `ready` anyway (it may be the first node of its cluster).
    pub join_timeout_ms: u64,
    /// Gossip rounds a leaving node keeps gossiping with `status=leaving` before it stops, so
    /// that its peers see it leave rather than fail.
    pub leave_rounds: u32,
    /// With a cluster secret: milliseconds a sealed gossip datagram stays valid before or
    /// after its sender's clock (the nodes' clocks must agree within it). Older ones are
    /// dropped; a datagram opened once is never opened again.
    pub replay_window_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            cluster_id: "default".into(),
            gossip_addr: SocketAddr::from(([127, 0, 0, 1], 7946)),
            gossip_advertise_addr: None,
            forward_addr: SocketAddr::from(([127, 0, 0, 1], 7947)),
            forward_advertise_addr: None,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_token_file: None,
            seeds: Vec::new(),
            labels: BTreeMap::new(),
            gossip: GossipConfig::default(),
            forward: ForwardConfig::default(),
            limits: LimitsConfig::default(),
            cluster_secret_file: None,
            cluster_secret: None,
            tls: TlsConfig::default(),
        }
    }
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self::lan()
    }
}

impl GossipConfig {
    /// Timings for a LAN: gossip every 200 ms, failure detected in about 2 s.
    pub fn lan() -> Self {
        Self {
            interval_ms: 200,
            phi_threshold: 8.0,
            dead_node_grace_period_secs: 3600,
            join_timeout_ms: 2000,
            leave_rounds: 5,
            replay_window_ms: 30_000,
        }
    }

    /// Slower detection (about 10 s of silence), for tests that share a loaded machine and do not
    /// test failure detection: a busy CPU cannot make a node look dead.
    pub fn tolerant() -> Self {
        Self {
            phi_threshold: 40.0,
            ..Self::lan()
        }
    }

    /// The gossip interval.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// How long a graceful leave keeps gossiping before it stops.
    pub fn leave_duration(&self) -> Duration {
        self.interval() * self.leave_rounds
    }
}

/// The type of a key, for parsing its value from an environment variable or a flag.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Addr,
    OptAddr,
    OptPath,
    List,
    Map,
    U64,
    U32,
    F64,
    Bool,
}

/// Every key and its type, in the order of the documentation. Sections are joined with `.`.
const KEYS: &[(&str, Kind)] = &[
    ("node_id", Kind::Str),
    ("cluster_id", Kind::Str),
    ("gossip_addr", Kind::Addr),
    ("gossip_advertise_addr", Kind::OptAddr),
    ("forward_addr", Kind::Addr),
    ("forward_advertise_addr", Kind::OptAddr),
    ("admin_addr", Kind::Addr),
    ("admin_token_file", Kind::OptPath),
    ("cluster_secret_file", Kind::OptPath),
    ("seeds", Kind::List),
    ("labels", Kind::Map),
    ("gossip.interval_ms", Kind::U64),
    ("gossip.phi_threshold", Kind::F64),
    ("gossip.dead_node_grace_period_secs", Kind::U64),
    ("gossip.join_timeout_ms", Kind::U64),
    ("gossip.leave_rounds", Kind::U32),
    ("gossip.replay_window_ms", Kind::U64),
    ("forward.ack_timeout_ms", Kind::U64),
    ("forward.max_frame_bytes", Kind::U64),
    ("forward.queue_capacity", Kind::U64),
    ("forward.queue_capacity_bytes", Kind::U64),
    ("forward.connect_timeout_ms", Kind::U64),
    ("forward.max_redial_backoff_ms", Kind::U64),
    ("limits.max_inbound_connections", Kind::U64),
    ("limits.handshake_timeout_ms", Kind::U64),
    ("limits.idle_timeout_ms", Kind::U64),
    ("limits.keepalive_interval_ms", Kind::U64),
    ("limits.max_pending_acks_per_peer", Kind::U64),
    ("limits.max_inbound_frames_per_sec_per_peer", Kind::U64),
    ("tls.cert_file", Kind::OptPath),
    ("tls.key_file", Kind::OptPath),
    ("tls.ca_file", Kind::OptPath),
    ("tls.require_client_cert", Kind::Bool),
];

impl Config {
    /// A configuration with defaults and the given node id.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            ..Self::default()
        }
    }

    /// Reads a TOML file over the defaults. Unknown keys are refused.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                source_name: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text over the defaults. Unknown keys are refused.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            source_name: "config".into(),
            message: err.to_string(),
        })
    }

    /// Applies every `WAMP_CLUSTER_*` variable from `vars` (usually `std::env::vars()`): the key
    /// in capitals, sections joined by `__` (`WAMP_CLUSTER_GOSSIP__INTERVAL_MS`). A variable with
    /// the prefix that names no key is refused, so a typo does not go unnoticed.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == SECRET_ENV {
                self.cluster_secret = Some(Secret::new(value));
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            self.set(&key, &value).map_err(|err| match err {
                ConfigError::UnknownKey { .. } => ConfigError::UnknownEnv { name: name.clone() },
                ConfigError::Invalid { key, message } => ConfigError::Invalid {
                    key: format!("{key} (from {name})"),
                    message,
                },
                other => other,
            })?;
        }
        Ok(())
    }

    /// Sets one key (`gossip.interval_ms`) from its text form, as an environment variable or a
    /// flag gives it: lists are comma-separated, maps are `k=v,k=v`.
    pub fn set(&mut self, key: &str, raw: &str) -> Result<(), ConfigError> {
        let Some(&(key, kind)) = KEYS.iter().find(|(name, _)| *name == key) else {
            return Err(ConfigError::UnknownKey { key: key.into() });
        };
        let invalid = |message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        let raw = raw.trim();
        let value = match kind {
            Kind::Str | Kind::OptPath => toml::Value::String(raw.into()),
            Kind::Addr | Kind::OptAddr => {
                let addr: SocketAddr = raw
                    .parse()
                    .map_err(|_| invalid(format!("`{raw}` is not an IP:port address")))?;
                toml::Value::String(addr.to_string())
            }
            Kind::List => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.into()))
                    .collect(),
            ),
            Kind::Map => {
                let mut table = toml::Table::new();
                for pair in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| invalid(format!("`{pair}` is not k=v")))?;
                    table.insert(k.trim().into(), toml::Value::String(v.trim().into()));
                }
                toml::Value::Table(table)
            }
            Kind::U64 | Kind::U32 => {
                let n: u64 = raw
                    .parse()
                    .map_err(|_| invalid(format!("`{raw}` is not a non-negative integer")))?;
                if matches!(kind, Kind::U32) && n > u64::from(u32::MAX) {
                    return Err(invalid(format!("`{raw}` is too large")));
                }
                let n = i64::try_from(n).map_err(|_| invalid(format!("`{raw}` is too large")))?;
                toml::Value::Integer(n)
            }
            Kind::F64 => toml::Value::Float(
                raw.parse()
                    .map_err(|_| invalid(format!("`{raw}` is not a number")))?,
            ),
            Kind::Bool => toml::Value::Boolean(
                raw.parse()
                    .map_err(|_| invalid(format!("`{raw}` is not true or false")))?,
            ),
        };
        // Round-trip through TOML so that each key is set by the same serde code as the file.
        let mut table = toml::Table::try_from(&*self).map_err(|err| invalid(err.to_string()))?;
        let (section, leaf) = match key.split_once('.') {
            Some((section, leaf)) => (Some(section), leaf),
            None => (None, key),
        };
        let target = match section {
            Some(section) => table
                .get_mut(section)
                .and_then(toml::Value::as_table_mut)
                .ok_or_else(|| invalid("section missing".into()))?,
            None => &mut table,
        };
        if matches!(kind, Kind::OptPath) && raw.is_empty() {
            // Empty: unset.
            target.remove(leaf);
        } else {
            target.insert(leaf.into(), value);
        }
        let secret = self.cluster_secret.take();
        *self = table
            .try_into()
            .map_err(|err: toml::de::Error| invalid(err.message().to_string()))?;
        self.cluster_secret = secret;
        Ok(())
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        validate_id("node_id", &self.node_id)?;
        validate_id("cluster_id", &self.cluster_id)?;
        if self.gossip_addr.port() == 0 {
            return invalid(
                "gossip_addr",
                "port 0 is not allowed: the gossip address is part of the node's identity",
            );
        }
        if self.forward_addr.port() == 0 {
            return invalid("forward_addr", "port 0 is not allowed: pick a port");
        }
        validate_advertise(
            ("gossip_addr", self.gossip_addr),
            ("gossip_advertise_addr", self.gossip_advertise_addr),
        )?;
        validate_advertise(
            ("forward_addr", self.forward_addr),
            ("forward_advertise_addr", self.forward_advertise_addr),
        )?;
        for seed in &self.seeds {
            if seed
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return invalid("seeds", &format!("`{seed}` is not IP:port or host:port"));
            }
        }
        self.admin_token()?;
        self.cluster_keys()?;
        if !(1000..=3_600_000).contains(&self.gossip.replay_window_ms) {
            return invalid(
                "gossip.replay_window_ms",
                "must be between 1000 and 3600000",
            );
        }
        if crate::tls::Tls::load(&self.tls)?.is_some() {
            if let Err(message) = crate::tls::server_name(&self.node_id) {
                return invalid("node_id", &message);
            }
        }
        if self.labels.keys().any(|k| k.is_empty()) {
            return invalid("labels", "a label name is empty");
        }
        let labels_len = serde_json::to_string(&self.labels).map_or(usize::MAX, |s| s.len());
        if labels_len > MAX_LABELS_BYTES {
            return invalid(
                "labels",
                &format!("{labels_len} bytes once encoded, more than {MAX_LABELS_BYTES}"),
            );
        }
        let g = &self.gossip;
        if !(10..=60_000).contains(&g.interval_ms) {
            return invalid("gossip.interval_ms", "must be between 10 and 60000");
        }
        if !g.phi_threshold.is_finite() || !(1.0..=1000.0).contains(&g.phi_threshold) {
            return invalid("gossip.phi_threshold", "must be between 1 and 1000");
        }
        if g.dead_node_grace_period_secs == 0 {
            return invalid("gossip.dead_node_grace_period_secs", "must be at least 1");
        }
        if g.join_timeout_ms > 600_000 {
            return invalid("gossip.join_timeout_ms", "must be at most 600000");
        }
        let f = &self.forward;
        if !(1..=3_600_000).contains(&f.ack_timeout_ms) {
            return invalid("forward.ack_timeout_ms", "must be between 1 and 3600000");
        }
        if !(1024..=crate::wire::FRAME_LIMIT).contains(&f.max_frame_bytes) {
            return invalid(
                "forward.max_frame_bytes",
                &format!("must be between 1024 and {}", crate::wire::FRAME_LIMIT),
            );
        }
        if f.queue_capacity == 0 {
            return invalid("forward.queue_capacity", "must be at least 1");
        }
        if f.queue_capacity_bytes < f.max_frame_bytes {
            return invalid(
                "forward.queue_capacity_bytes",
                "must be at least forward.max_frame_bytes",
            );
        }
        if !(1..=600_000).contains(&f.connect_timeout_ms) {
            return invalid("forward.connect_timeout_ms", "must be between 1 and 600000");
        }
        if !(50..=600_000).contains(&f.max_redial_backoff_ms) {
            return invalid(
                "forward.max_redial_backoff_ms",
                "must be between 50 and 600000",
            );
        }
        let l = &self.limits;
        if !(1..=65_536).contains(&l.max_inbound_connections) {
            return invalid(
                "limits.max_inbound_connections",
                "must be between 1 and 65536",
            );
        }
        if !(10..=600_000).contains(&l.handshake_timeout_ms) {
            return invalid(
                "limits.handshake_timeout_ms",
                "must be between 10 and 600000",
            );
        }
        if !(10..=600_000).contains(&l.keepalive_interval_ms) {
            return invalid(
                "limits.keepalive_interval_ms",
                "must be between 10 and 600000",
            );
        }
        if l.idle_timeout_ms > 3_600_000 || l.idle_timeout_ms < 3 * l.keepalive_interval_ms {
            return invalid(
                "limits.idle_timeout_ms",
                "must be at least 3 × limits.keepalive_interval_ms and at most 3600000",
            );
        }
        if !(1..=16_777_216).contains(&l.max_pending_acks_per_peer) {
            return invalid(
                "limits.max_pending_acks_per_peer",
                "must be between 1 and 16777216",
            );
        }
        if !(1..=1_000_000_000).contains(&l.max_inbound_frames_per_sec_per_peer) {
            return invalid(
                "limits.max_inbound_frames_per_sec_per_peer",
                "must be between 1 and 1000000000",
            );
        }
        if !(1..=100).contains(&g.leave_rounds) {
            return invalid(
                "gossip.leave_rounds",
                "must be between 1 and 100: peers must see the leave",
            );
        }
        Ok(())
    }

    /// The admin API's bearer token, read from `admin_token_file`; `None` when the key is not
    /// set. An unreadable file or a token that is too short or not visible ASCII is an error
    /// naming the key.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let invalid = |message: String| ConfigError::Invalid {
            key: "admin_token_file".into(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|err| invalid(format!("cannot read {}: {err}", path.display())))?;
        let token = text.trim();
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(invalid(format!(
                "the token in {} is shorter than {MIN_ADMIN_TOKEN_LEN} bytes",
                path.display()
            )));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(format!(
                "the token in {} holds characters other than visible ASCII",
                path.display()
            )));
        }
        Ok(Some(token.to_string()))
    }

    /// The keys of the cluster secret, from `cluster_secret_file` or `WAMP_CLUSTER_SECRET`;
    /// `None` when neither is set. An unreadable file, a bad secret or both set is an error
    /// naming the key (and never quoting a secret).
    pub fn cluster_keys(&self) -> Result<Option<ClusterKeys>, ConfigError> {
        let (key, text) = match (&self.cluster_secret_file, &self.cluster_secret) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "cluster_secret_file".into(),
                    message: format!("{SECRET_ENV} is set too: give the secret one way"),
                })
            }
            (Some(path), None) => (
                "cluster_secret_file".to_string(),
                std::fs::read_to_string(path).map_err(|err| ConfigError::Invalid {
                    key: "cluster_secret_file".into(),
                    message: format!("cannot read {}: {err}", path.display()),
                })?,
            ),
            (None, Some(secret)) => (SECRET_ENV.to_string(), secret.expose().to_string()),
        };
        let secrets = crate::security::parse_secrets(&text)
            .map_err(|message| ConfigError::Invalid { key, message })?;
        Ok(Some(ClusterKeys::new(secrets, &self.cluster_id)))
    }

    /// The gossip address other nodes use.
    pub fn gossip_public_addr(&self) -> SocketAddr {
        self.gossip_advertise_addr.unwrap_or(self.gossip_addr)
    }

    /// The forward address other nodes dial.
    pub fn forward_public_addr(&self) -> SocketAddr {
        self.forward_advertise_addr.unwrap_or(self.forward_addr)
    }
}

fn validate_id(key: &str, id: &str) -> Result<(), ConfigError> {
    let message = if id.is_empty() {
        "must be set".to_string()
    } else if id.len() > MAX_ID_LEN {
        format!("longer than {MAX_ID_LEN} bytes")
    } else if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        format!("`{id}` contains {c:?}; use letters, digits, '.', '_' and '-'")
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid {
        key: key.into(),
        message,
    })
}

fn validate_advertise(
    (bind_key, bind): (&str, SocketAddr),
    (adv_key, advertise): (&str, Option<SocketAddr>),
) -> Result<(), ConfigError> {
    match advertise {
        None if bind.ip().is_unspecified() => Err(ConfigError::Invalid {
            key: adv_key.into(),
            message: format!(
                "must be set when {bind_key} is the unspecified address {bind}: \
                 other nodes cannot dial it"
            ),
        }),
        Some(addr) if addr.ip().is_unspecified() || addr.port() == 0 => Err(ConfigError::Invalid {
            key: adv_key.into(),
            message: format!("{addr} cannot be dialled by other nodes"),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        Config::new("node-1")
    }

    #[test]
    fn the_defaults_with_a_node_id_are_valid() {
        valid().validate().unwrap();
    }

    fn refusal(config: &Config) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn the_cluster_secret_comes_from_a_file_or_the_environment_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let mut config = valid();
        assert!(config.cluster_keys().unwrap().is_none());
        config
            .apply_env([(SECRET_ENV.into(), "from-the-environment-123".into())])
            .unwrap();
        // Setting another key keeps it.
        config.set("gossip.interval_ms", "300").unwrap();
        assert_eq!(config.cluster_keys().unwrap().map(|k| k.len()), Some(1));
        assert!(!format!("{config:?}").contains("from-the-environment"));
        config
            .set("cluster_secret_file", &file.display().to_string())
            .unwrap();
        assert!(refusal(&config).contains("one way"), "{}", refusal(&config));
        config.cluster_secret = None;
        let unreadable = refusal(&config);
        assert!(unreadable.contains("`cluster_secret_file`") && unreadable.contains("cannot read"));
        std::fs::write(
            &file,
            "first-secret-0123456789
short
",
        )
        .unwrap();
        let short = refusal(&config);
        assert!(
            short.contains("`cluster_secret_file`") && short.contains("secret 2"),
            "{short}"
        );
        assert!(!short.contains("first-secret"), "{short}");
        std::fs::write(
            &file,
            "first-secret-0123456789
second-secret-0123456789
",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.cluster_keys().unwrap().map(|k| k.len()), Some(2));
        let mut from_env = valid();
        from_env
            .apply_env([(SECRET_ENV.into(), "short".into())])
            .unwrap();
        assert!(refusal(&from_env).contains(SECRET_ENV));
        let mut window = valid();
        window.set("gossip.replay_window_ms", "10").unwrap();
        assert!(refusal(&window).contains("gossip.replay_window_ms"));
    }

    #[test]
    fn tls_files_are_read_at_validation_and_a_missing_or_bad_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut config = valid();
        assert!(config.tls.require_client_cert);
        config.set("tls.require_client_cert", "false").unwrap();
        config.validate().unwrap();
        assert!(config.set("tls.require_client_cert", "maybe").is_err());
        config.set("tls.key_file", &path("key.pem")).unwrap();
        assert!(refusal(&config).contains("`tls.cert_file`"));
        config.set("tls.cert_file", &path("cert.pem")).unwrap();
        assert!(refusal(&config).contains("`tls.ca_file`"));
        config.set("tls.ca_file", &path("ca.pem")).unwrap();
        config.set("tls.key_file", "").unwrap();
        assert!(refusal(&config).contains("`tls.key_file`"));
        config.set("tls.key_file", &path("key.pem")).unwrap();
        config.set("tls.ca_file", &path("ca.pem")).unwrap();
        let missing = refusal(&config);
        assert!(missing.contains("`tls.cert_file`") && missing.contains("cannot read"));
        std::fs::write(path("cert.pem"), "not a certificate").unwrap();
        let empty = refusal(&config);
        assert!(
            empty.contains("`tls.cert_file`") && empty.contains("no PEM"),
            "{empty}"
        );
    }

    #[test]
    fn the_admin_token_is_read_from_its_file_and_a_bad_one_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("wamp-cluster-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        let mut config = valid();
        assert_eq!(config.admin_token().unwrap(), None);
        config
            .set("admin_token_file", &file.display().to_string())
            .unwrap();
        assert_eq!(config.admin_token_file.as_deref(), Some(file.as_path()));
        for (text, why) in [
            (None, "cannot read"),
            (Some("short\n"), "shorter than 16"),
            (Some("sixteen or more but with spaces"), "visible ASCII"),
            (Some("token-\u{e9}-with-an-accent"), "visible ASCII"),
        ] {
            let _ = std::fs::remove_file(&file);
            if let Some(text) = text {
                std::fs::write(&file, text).unwrap();
            }
            let err = config.validate().unwrap_err().to_string();
            assert!(
                err.contains("admin_token_file") && err.contains(why),
                "{err}"
            );
        }
        std::fs::write(&file, "\n  0123456789abcdef-token \n").unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.admin_token().unwrap().as_deref(),
            Some("0123456789abcdef-token")
        );
        // An empty value unsets the key.
        config.set("admin_token_file", "").unwrap();
        assert_eq!(config.admin_token_file, None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn limits_are_set_from_the_environment_and_bad_ones_refused_by_name() {
        let mut config = valid();
        config
            .apply_env([(
                "WAMP_CLUSTER_LIMITS__HANDSHAKE_TIMEOUT_MS".to_string(),
                "750".to_string(),
            )])
            .unwrap();
        assert_eq!(config.limits.handshake_timeout_ms, 750);
        config.validate().unwrap();
        for (key, value) in [
            ("limits.max_inbound_connections", "0"),
            ("limits.handshake_timeout_ms", "1"),
            ("limits.keepalive_interval_ms", "0"),
            // Less than three keepalive intervals (5000 ms by default).
            ("limits.idle_timeout_ms", "14999"),
        ] {
            let mut bad = config.clone();
            bad.set(key, value).unwrap();
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_missing_node_id_is_refused_by_name() {
        let err = Config::default().validate().unwrap_err().to_string();
        assert!(err.contains("node_id"), "{err}");
    }

    #[test]
    fn the_file_is_read_over_the_defaults() {
        let config = Config::from_toml(
            r#"
            node_id = "n1"
            seeds = ["127.0.0.1:1", "localhost:2"]
            labels = { zone = "a" }
            [gossip]
            interval_ms = 100
            "#,
        )
        .unwrap();
        assert_eq!(config.node_id, "n1");
        assert_eq!(config.seeds.len(), 2);
        assert_eq!(config.labels["zone"], "a");
        assert_eq!(config.gossip.interval_ms, 100);
        assert_eq!(config.gossip.phi_threshold, 8.0);
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused_by_name() {
        let err = Config::from_toml("gossip_adr = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("gossip_adr"), "{err}");
    }

    #[test]
    fn environment_variables_override_the_file_and_name_the_key_when_bad() {
        let mut config = valid();
        config
            .apply_env([
                ("WAMP_CLUSTER_GOSSIP__INTERVAL_MS".into(), "100".into()),
                ("WAMP_CLUSTER_SEEDS".into(), "a:1, b:2".into()),
                ("WAMP_CLUSTER_LABELS".into(), "zone=a,rack=r1".into()),
                ("WAMP_CLUSTER_NODE_ID".into(), "123".into()),
                ("PATH".into(), "/bin".into()),
            ])
            .unwrap();
        assert_eq!(config.gossip.interval_ms, 100);
        assert_eq!(config.seeds, ["a:1", "b:2"]);
        assert_eq!(config.labels["rack"], "r1");
        assert_eq!(config.node_id, "123");

        let err = config
            .apply_env([("WAMP_CLUSTER_GOSSIP__INTERVAL_MS".into(), "soon".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("gossip.interval_ms"), "{err}");
        assert!(err.contains("WAMP_CLUSTER_GOSSIP__INTERVAL_MS"), "{err}");

        let err = config
            .apply_env([("WAMP_CLUSTER_GOSIP__INTERVAL_MS".into(), "1".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("WAMP_CLUSTER_GOSIP__INTERVAL_MS"), "{err}");
    }

    #[test]
    fn binding_an_unspecified_address_needs_an_advertise_address() {
        let mut config = valid();
        config.set("gossip_addr", "0.0.0.0:7946").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("gossip_advertise_addr"), "{err}");
        config
            .set("gossip_advertise_addr", "10.0.0.5:7946")
            .unwrap();
        config.validate().unwrap();
        assert_eq!(config.gossip_public_addr().to_string(), "10.0.0.5:7946");

        config.set("forward_addr", "0.0.0.0:7947").unwrap();
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("forward_advertise_addr"), "{err}");
    }

    #[test]
    fn each_bad_value_is_refused_with_its_key() {
        let cases = [
            ("node_id", "has space"),
            ("cluster_id", ""),
            ("gossip_addr", "127.0.0.1:0"),
            ("gossip.interval_ms", "0"),
            ("gossip.phi_threshold", "0"),
            ("gossip.dead_node_grace_period_secs", "0"),
            ("gossip.leave_rounds", "1000"),
            ("gossip.leave_rounds", "0"),
            ("forward.ack_timeout_ms", "0"),
            ("forward.max_frame_bytes", "100"),
            ("forward.queue_capacity", "0"),
            ("forward.queue_capacity_bytes", "1"),
            ("forward.connect_timeout_ms", "0"),
            ("forward.max_redial_backoff_ms", "1"),
            ("seeds", "no-port"),
        ];
        for (key, raw) in cases {
            let mut config = valid();
            config.set(key, raw).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}={raw}: {err}");
        }
        let err = valid()
            .set("admin_addr", "nowhere")
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin_addr"), "{err}");
    }
}
