//! Node configuration: the keys of the TOML file, their defaults and units, and validation.
//!
//! - [`setting`]: how a section declares its keys once ([`crate::settings!`]), so that the file,
//!   the `WAMP_CLUSTER_*` variables and the flags know the same keys.
//! - [`sections`]: the node's sections ([`Config`] and the `[gossip]`, `[forward]`,
//!   `[limits]` and `[tls]` sections), their defaults and [`Config::validate`].
//! - [`layers`]: defaults, then the file, then the environment, then flags; each later layer
//!   wins, and an error names the key and the layer its value came from.
//!
//! Durations are [`std::time::Duration`]s, written in files in the unit their key names
//! (`_ms`, `_secs`); counts that cannot be zero are `NonZero*`. [`Config::validate`] is a pure
//! function: the files a configuration names (TLS certificates, the secret, the admin token)
//! are read when the node starts.

pub mod layers;
pub mod sections;
pub mod setting;

pub use crate::security::{Secret, SECRET_ENV};
pub use layers::{Layers, Origin};
pub use sections::{
    Config, ForwardConfig, GossipConfig, LimitsConfig, TlsConfig, MAX_GRACE_PERIOD_SECS,
    MAX_ID_LEN, MAX_INBOUND_BUFFERED_BYTES, MAX_LABELS_BYTES, MAX_QUEUE_BYTES, MAX_QUEUE_CAPACITY,
};
pub use setting::{join, ms, secs, Key, Section, Setting, Table, ENV_PREFIX};

#[cfg(test)]
mod tests;
