//! The node's sections of the configuration, their defaults and units, and validation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;
use crate::security::{Secret, SECRET_ENV};
use crate::wire::FRAME_LIMIT;

pub use crate::node_id::MAX_ID_LEN;

/// Largest size of the labels once encoded for gossip, in bytes. Labels travel in every gossip
/// exchange, so they must stay small.
pub const MAX_LABELS_BYTES: usize = 1024;

/// The longest `gossip.dead_node_grace_period_secs`: 30 days.
pub const MAX_GRACE_PERIOD_SECS: u64 = 30 * 24 * 3600;

/// The largest `forward.queue_capacity`, in messages.
pub const MAX_QUEUE_CAPACITY: usize = 16 * 1024 * 1024;

/// The largest `forward.queue_capacity_bytes`: 4 GiB.
pub const MAX_QUEUE_BYTES: usize = 4 * 1024 * 1024 * 1024;

/// The largest `limits.max_inbound_buffered_bytes`: 8 GiB. With the read buffers of 65,536
/// connections (8 GiB), inbound frames never take more than 16 GiB.
pub const MAX_INBOUND_BUFFERED_BYTES: usize = 8 * 1024 * 1024 * 1024;

crate::settings! {
    /// The whole configuration of a node. See `config/node.toml` for an annotated example.
    pub struct Config {
        /// Unique and stable name of this node across restarts: letters, digits, `.`, `_`, `-`.
        pub node_id: String = String::new(),
        /// Nodes gossiping with another cluster id are ignored.
        pub cluster_id: String = "default".into(),
        /// UDP address chitchat binds for gossip. Port 0 is refused: the address is part of the
        /// node's gossip identity and must be known before binding.
        pub gossip_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7946)),
        /// Gossip address other nodes use to reach this one, when it differs from
        /// `gossip_addr` (NAT, containers). Required when `gossip_addr` is an unspecified
        /// address (`0.0.0.0`).
        pub gossip_advertise_addr: Option<SocketAddr> = None,
        /// TCP address the forwarder listens on; published to the other nodes.
        pub forward_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 7947)),
        /// Forward address other nodes dial, when it differs from `forward_addr`. Required when
        /// `forward_addr` is an unspecified address.
        pub forward_advertise_addr: Option<SocketAddr> = None,
        /// HTTP admin API and `/metrics`. Port 0 binds a free port (the bound address is
        /// gossiped). Loopback by default: whoever reaches it can read the cluster's state.
        pub admin_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
        /// A file holding the admin API's bearer token (at least 16 visible ASCII characters;
        /// surrounding whitespace is ignored). When set, the routes that change or probe
        /// anything (`POST /cluster/leave`, `/cluster/probe`, `/cluster/broadcast`) need
        /// `Authorization: Bearer <token>`; the read-only routes stay open. Read at start.
        pub admin_token_file: Option<PathBuf> = None,
        /// Host names the admin API answers to besides an IP address (and `localhost` when it
        /// binds loopback or every address): a request whose `Host` names anything else is
        /// refused (403), so a web page cannot reach the API through a name that it rebinds to
        /// the node's address.
        pub admin_allowed_hosts: Vec<String> = Vec::new(),
        /// A file holding the cluster secret: one or more secrets separated by whitespace (one
        /// a line), each at least 16 visible ASCII characters. When set, the forwarding
        /// handshake proves both sides know a secret and gossip datagrams are sealed; the first
        /// secret seals and proves, every one is accepted (see "Changing the secret" in
        /// `docs/SECURITY.md`). `WAMP_CLUSTER_SECRET` gives the secret itself instead; not
        /// both. Read at start.
        pub cluster_secret_file: Option<PathBuf> = None,
        /// The cluster secret itself, from `WAMP_CLUSTER_SECRET` (or set by an embedding
        /// program); never read from or written to a file.
        #[serde(skip)]
        pub cluster_secret: Option<Secret> = None,
        /// Gossip addresses (`IP:port`) or names (`host:port`) of existing nodes to join
        /// through. Names are resolved again periodically, so nodes behind one DNS name are
        /// found.
        pub seeds: Vec<String> = Vec::new(),
        /// Free-form labels, gossiped and shown in `/cluster/members`.
        pub labels: BTreeMap<String, String> = BTreeMap::new(),
        /// How long stopping waits for each part of the node in turn: the handler's drain of
        /// what it accepted, on a leave the answers to the messages this node sent, the
        /// forwarder's tasks, the admin API's open requests; 1 ms to 10 minutes.
        #[serde(with = "crate::config::ms")]
        pub stop_timeout_ms: Duration = Duration::from_millis(5000),
        /// Gossip and failure detection.
        pub gossip: GossipConfig = GossipConfig::lan(),
        /// Forwarding between nodes.
        pub forward: ForwardConfig = ForwardConfig::default(),
        /// Limits against peers that misbehave.
        pub limits: LimitsConfig = LimitsConfig::default(),
        /// TLS on the forwarding connections.
        pub tls: TlsConfig = TlsConfig::default(),
    }
}

crate::settings! {
    /// Gossip timings (the `[gossip]` section).
    pub struct GossipConfig {
        /// Between gossip rounds, 10 ms to 60 s; also the failure detector's initial heartbeat
        /// interval, so a freshly joined node's crash is detected as fast as an old one's.
        #[serde(with = "crate::config::ms")]
        pub interval_ms: Duration = Duration::from_millis(200),
        /// Phi-accrual threshold above which a silent node is declared down, 1 to 1000. With
        /// the defaults a node is declared down after about 1–2 s of silence.
        pub phi_threshold: f64 = 8.0,
        /// How long a dead node stays in the member list before it is forgotten, 1 s to 30 days.
        #[serde(with = "crate::config::secs")]
        pub dead_node_grace_period_secs: Duration = Duration::from_secs(3600),
        /// How long a starting node waits to hear from another node before it declares itself
        /// `ready` anyway (it may be the first node of its cluster), at most 10 minutes.
        #[serde(with = "crate::config::ms")]
        pub join_timeout_ms: Duration = Duration::from_millis(2000),
        /// Gossip rounds a leaving node keeps gossiping with `status=leaving` before it stops,
        /// so that its peers see it leave rather than fail; at most 100.
        pub leave_rounds: NonZeroU32 = (const { NonZeroU32::new(5).unwrap() }),
        /// With a cluster secret: how far a sealed gossip datagram's send time may be from the
        /// receiver's clock (the nodes' clocks must agree within it), 1 s to 1 h. Older ones
        /// are dropped; a datagram opened once is never opened again.
        #[serde(with = "crate::config::ms")]
        pub replay_window_ms: Duration = Duration::from_millis(30_000),
    }
}

crate::settings! {
    /// Forwarding settings (the `[forward]` section).
    pub struct ForwardConfig {
        /// How long a forward waits for its ack unless the call says otherwise, 1 ms to 1 h.
        #[serde(with = "crate::config::ms")]
        pub ack_timeout_ms: Duration = Duration::from_millis(5000),
        /// Largest encoded frame, sent or received, in bytes; 1024 to 64 MiB.
        pub max_frame_bytes: usize = 16 * 1024 * 1024,
        /// Messages queued per peer before `forward` waits (or fails with `QueueFull`); at most
        /// 16,777,216.
        pub queue_capacity: NonZeroUsize = (const { NonZeroUsize::new(65_536).unwrap() }),
        /// Bytes queued per peer before `forward` waits (or fails with `QueueFull`); at least
        /// `max_frame_bytes`, at most 4 GiB.
        pub queue_capacity_bytes: usize = 64 * 1024 * 1024,
        /// How long connecting to a peer and the handshake may take, 1 ms to 10 minutes; also
        /// the timeout of background probes.
        #[serde(with = "crate::config::ms")]
        pub connect_timeout_ms: Duration = Duration::from_millis(1000),
        /// Longest pause between two dials of a peer that does not answer, 50 ms to 10
        /// minutes; the pause starts at 50 ms and doubles, with jitter.
        #[serde(with = "crate::config::ms")]
        pub max_redial_backoff_ms: Duration = Duration::from_millis(2000),
        /// How far a dialer's wall clock may be from this node's, 1 ms to 1 h; a dialer
        /// further off is refused (`clock_skew`). A forwarded message carries its sender's
        /// deadline by the sender's clock and is not delivered once this node's clock has
        /// passed it, so a message reaches a handler at most this long after its sender gave
        /// up (however long it waited in buffers). Keep the clocks in step (NTP) and this low.
        #[serde(with = "crate::config::ms")]
        pub max_clock_skew_ms: Duration = Duration::from_millis(1000),
    }
}

crate::settings! {
    /// Limits against peers that misbehave (the `[limits]` section). The frame size limit is
    /// `forward.max_frame_bytes`. All nodes of a cluster should use the same values: a node's
    /// keepalive must come more often than its peers' idle timeout.
    pub struct LimitsConfig {
        /// Inbound forwarding connections served at once, at most 65536 (each peer holds
        /// one). A connection beyond it closes one that a newer connection from the same node
        /// superseded, else the oldest from a node id that is not a member, else the oldest
        /// still in its handshake; it is refused only when every connection is a member's.
        pub max_inbound_connections: NonZeroUsize = (const { NonZeroUsize::new(1024).unwrap() }),
        /// Inbound connections still in their handshake at once, at most 65536 (more than
        /// `limits.max_inbound_connections` counts as that many); a connection beyond it closes
        /// the oldest one still in its handshake.
        pub max_unproven_connections: NonZeroUsize = (const { NonZeroUsize::new(256).unwrap() }),
        /// Bytes of inbound frames longer than a connection's 64 KiB read buffer that all
        /// connections of the node hold at once, from `forward.max_frame_bytes` to 8 GiB; a
        /// connection whose frame finds them taken reads nothing more until there is room.
        /// With the read buffers, inbound frames take at most this plus 128 KiB per connection.
        pub max_inbound_buffered_bytes: usize = 256 * 1024 * 1024,
        /// How long an inbound connection has to complete its handshake, 10 ms to 10 minutes.
        #[serde(with = "crate::config::ms")]
        pub handshake_timeout_ms: Duration = Duration::from_millis(2000),
        /// How long an inbound connection may go without a complete frame, and a write to a
        /// peer may stall, before the connection is closed; at least 3 ×
        /// `limits.keepalive_interval_ms`, at most 1 h.
        #[serde(with = "crate::config::ms")]
        pub idle_timeout_ms: Duration = Duration::from_millis(60_000),
        /// How long a link may stay silent: when it has written nothing for this long it sends
        /// a ping, so that its peer's idle timeout does not close a healthy connection; 10 ms
        /// to 10 minutes.
        #[serde(with = "crate::config::ms")]
        pub keepalive_interval_ms: Duration = Duration::from_millis(5000),
        /// Messages to one peer that may wait for their outcome at once (not acked yet, or
        /// acked and not taken), at most 16777216; a send beyond that fails at once with
        /// `TooManyPending`.
        pub max_pending_acks_per_peer: NonZeroUsize = (const { NonZeroUsize::new(262_144).unwrap() }),
        /// Frames a second read from one inbound connection, as many at once, at most 10⁹; a
        /// peer that sends faster finds its connection read more slowly (its writes back up),
        /// never dropped.
        pub max_inbound_frames_per_sec_per_peer: NonZeroU64 = (const { NonZeroU64::new(5_000_000).unwrap() }),
    }
}

crate::settings! {
    /// TLS on the forwarding connections (the `[tls]` section). Off unless `cert_file` is set.
    /// Each node's certificate names its node id as a DNS subject alternative name; a dialer
    /// checks the listener's certificate against the node id it means to reach, and a
    /// listener checks a client certificate against the node id its hello gives. The files
    /// are read when the node starts.
    pub struct TlsConfig {
        /// PEM certificate chain of this node, its own certificate first.
        pub cert_file: Option<PathBuf> = None,
        /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
        pub key_file: Option<PathBuf> = None,
        /// PEM certificates of the authorities that sign the nodes' certificates.
        pub ca_file: Option<PathBuf> = None,
        /// Whether a dialer must present a certificate signed by `ca_file` (mutual TLS; the
        /// default). Every node presents its certificate when it dials; `false` lets in dialers
        /// without one (a listener still checks one that is presented), which leaves who may
        /// dial to the cluster secret alone: without a secret, anyone could claim any node id.
        pub require_client_cert: bool = true,
    }
}

impl GossipConfig {
    /// Timings for a LAN: gossip every 200 ms, failure detected in about 2 s.
    pub fn lan() -> Self {
        Self::default()
    }

    /// Slower detection (about 10 s of silence), for tests that share a loaded machine and do
    /// not test failure detection: a busy CPU cannot make a node look dead.
    pub fn tolerant() -> Self {
        Self {
            phi_threshold: 40.0,
            ..Self::lan()
        }
    }

    /// How long a graceful leave keeps gossiping before it stops.
    pub fn leave_duration(&self) -> Duration {
        self.interval_ms * self.leave_rounds.get()
    }
}

impl Config {
    /// A configuration with defaults and the given node id.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            ..Self::default()
        }
    }

    /// Checks every value without reading any file; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| Err(ConfigError::invalid(key, message));
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
        for host in &self.admin_allowed_hosts {
            let valid = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'));
            if !valid {
                return invalid(
                    "admin_allowed_hosts",
                    &format!("`{host}` is not a host name (letters, digits, '.' and '-')"),
                );
            }
        }
        if self.cluster_secret_file.is_some() && self.cluster_secret.is_some() {
            return invalid(
                "cluster_secret_file",
                &format!("{SECRET_ENV} is set too: give the secret one way"),
            );
        }
        self.validate_tls()?;
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
        // Durations are written in milliseconds.
        let within = |key: &str, value: Duration, min: Duration, max: Duration| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                let (min, max) = (min.as_millis(), max.as_millis());
                invalid(key, &format!("must be between {min} and {max}"))
            }
        };
        let (ms, secs) = (Duration::from_millis, Duration::from_secs);
        within("stop_timeout_ms", self.stop_timeout_ms, ms(1), ms(600_000))?;
        let g = &self.gossip;
        within("gossip.interval_ms", g.interval_ms, ms(10), ms(60_000))?;
        if !g.phi_threshold.is_finite() || !(1.0..=1000.0).contains(&g.phi_threshold) {
            return invalid("gossip.phi_threshold", "must be between 1 and 1000");
        }
        if !(secs(1)..=secs(MAX_GRACE_PERIOD_SECS)).contains(&g.dead_node_grace_period_secs) {
            return invalid(
                "gossip.dead_node_grace_period_secs",
                &format!("must be between 1 and {MAX_GRACE_PERIOD_SECS} (30 days)"),
            );
        }
        if g.join_timeout_ms > ms(600_000) {
            return invalid("gossip.join_timeout_ms", "must be at most 600000");
        }
        if g.leave_rounds.get() > 100 {
            return invalid(
                "gossip.leave_rounds",
                "must be between 1 and 100: peers must see the leave",
            );
        }
        within(
            "gossip.replay_window_ms",
            g.replay_window_ms,
            ms(1000),
            ms(3_600_000),
        )?;
        let f = &self.forward;
        within(
            "forward.ack_timeout_ms",
            f.ack_timeout_ms,
            ms(1),
            ms(3_600_000),
        )?;
        if !(1024..=FRAME_LIMIT).contains(&f.max_frame_bytes) {
            return invalid(
                "forward.max_frame_bytes",
                &format!("must be between 1024 and {FRAME_LIMIT}"),
            );
        }
        if f.queue_capacity.get() > MAX_QUEUE_CAPACITY {
            return invalid(
                "forward.queue_capacity",
                &format!("must be between 1 and {MAX_QUEUE_CAPACITY}"),
            );
        }
        if f.queue_capacity_bytes < f.max_frame_bytes || f.queue_capacity_bytes > MAX_QUEUE_BYTES {
            return invalid(
                "forward.queue_capacity_bytes",
                &format!("must be at least forward.max_frame_bytes and at most {MAX_QUEUE_BYTES}"),
            );
        }
        within(
            "forward.connect_timeout_ms",
            f.connect_timeout_ms,
            ms(1),
            ms(600_000),
        )?;
        within(
            "forward.max_redial_backoff_ms",
            f.max_redial_backoff_ms,
            ms(50),
            ms(600_000),
        )?;
        within(
            "forward.max_clock_skew_ms",
            f.max_clock_skew_ms,
            ms(1),
            ms(3_600_000),
        )?;
        let l = &self.limits;
        if l.max_inbound_connections.get() > 65_536 {
            return invalid(
                "limits.max_inbound_connections",
                "must be between 1 and 65536",
            );
        }
        if l.max_unproven_connections.get() > 65_536 {
            return invalid(
                "limits.max_unproven_connections",
                "must be between 1 and 65536",
            );
        }
        if l.max_inbound_buffered_bytes < f.max_frame_bytes
            || l.max_inbound_buffered_bytes > MAX_INBOUND_BUFFERED_BYTES
        {
            return invalid(
                "limits.max_inbound_buffered_bytes",
                &format!(
                    "must be at least forward.max_frame_bytes and at most \
                     {MAX_INBOUND_BUFFERED_BYTES}"
                ),
            );
        }
        within(
            "limits.handshake_timeout_ms",
            l.handshake_timeout_ms,
            ms(10),
            ms(600_000),
        )?;
        within(
            "limits.keepalive_interval_ms",
            l.keepalive_interval_ms,
            ms(10),
            ms(600_000),
        )?;
        if l.idle_timeout_ms > ms(3_600_000) || l.idle_timeout_ms < 3 * l.keepalive_interval_ms {
            return invalid(
                "limits.idle_timeout_ms",
                "must be at least 3 × limits.keepalive_interval_ms and at most 3600000",
            );
        }
        if l.max_pending_acks_per_peer.get() > 16_777_216 {
            return invalid(
                "limits.max_pending_acks_per_peer",
                "must be between 1 and 16777216",
            );
        }
        if l.max_inbound_frames_per_sec_per_peer.get() > 1_000_000_000 {
            return invalid(
                "limits.max_inbound_frames_per_sec_per_peer",
                "must be between 1 and 1000000000",
            );
        }
        Ok(())
    }

    /// The TLS files are set together, and the node id can be named by a certificate.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let t = &self.tls;
        let missing = |key: &str, with: &str| {
            Err(ConfigError::invalid(
                key,
                format!("must be set with {with}"),
            ))
        };
        match (&t.cert_file, &t.key_file, &t.ca_file) {
            (None, None, None) => return Ok(()),
            (Some(_), Some(_), Some(_)) => {}
            (None, ..) => return missing("tls.cert_file", "tls.key_file and tls.ca_file"),
            (_, None, _) => return missing("tls.key_file", "tls.cert_file"),
            (.., None) => return missing("tls.ca_file", "tls.cert_file"),
        }
        crate::node_id::dns_name(&self.node_id)
            .map(drop)
            .map_err(|message| ConfigError::invalid("node_id", message))
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
    crate::node_id::check(id).map_err(|message| ConfigError::invalid(key, message))
}

fn validate_advertise(
    (bind_key, bind): (&str, SocketAddr),
    (adv_key, advertise): (&str, Option<SocketAddr>),
) -> Result<(), ConfigError> {
    match advertise {
        None if bind.ip().is_unspecified() => Err(ConfigError::invalid(
            adv_key,
            format!(
                "must be set when {bind_key} is the unspecified address {bind}: \
                 other nodes cannot dial it"
            ),
        )),
        Some(addr) if addr.ip().is_unspecified() || addr.port() == 0 => Err(ConfigError::invalid(
            adv_key,
            format!("{addr} cannot be dialled by other nodes"),
        )),
        _ => Ok(()),
    }
}
