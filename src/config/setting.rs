//! How a configuration section declares its keys once: the [`settings!`](crate::settings)
//! macro writes the struct (whose serde derive reads the file), its `Default`, and its
//! [`Setting`] impl, which lists every key that an environment variable or a flag may set and
//! how its text becomes a value. File, environment and flags therefore know the same keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "WAMP_CLUSTER_";

/// A key that an environment variable or a flag may set.
#[derive(Debug, Clone)]
pub struct Key {
    /// The key, sections joined by `.` (`gossip.interval_ms`).
    pub name: String,
    /// Turns the text of a variable or flag into the key's TOML value, or says why not.
    pub parse: fn(&str) -> Result<toml::Value, String>,
    /// An empty text unsets the key (it is optional).
    pub optional: bool,
    /// A comma-separated list: a flag may be repeated.
    pub list: bool,
}

impl Key {
    /// The environment variable that sets this key: `WAMP_CLUSTER_` and the key in capitals,
    /// sections joined by `__`.
    pub fn env_var(&self) -> String {
        format!(
            "{}{}",
            ENV_PREFIX,
            self.name.replace('.', "__").to_ascii_uppercase()
        )
    }

    /// The long flag that sets this key: the key with `.` and `_` as `-`
    /// (`--gossip-interval-ms`).
    pub fn flag(&self) -> String {
        self.name.replace(['.', '_'], "-")
    }
}

/// A type a configuration key can have, or a section of keys.
pub trait Setting {
    /// Adds the keys of a value of this type named `name` (a section adds one per field).
    fn keys(name: &str, keys: &mut Vec<Key>);
}

/// `section.key`, or `key` at the top.
pub fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

fn key(name: &str, parse: fn(&str) -> Result<toml::Value, String>) -> Key {
    Key {
        name: name.to_string(),
        parse,
        optional: false,
        list: false,
    }
}

fn integer(raw: &str) -> Result<toml::Value, String> {
    let n: u64 = raw
        .parse()
        .map_err(|_| format!("`{raw}` is not a non-negative integer"))?;
    i64::try_from(n)
        .map(toml::Value::Integer)
        .map_err(|_| format!("`{raw}` is too large"))
}

macro_rules! scalar {
    ($($ty:ty => $parse:expr),* $(,)?) => {
        $(impl Setting for $ty {
            fn keys(name: &str, keys: &mut Vec<Key>) {
                keys.push(key(name, $parse));
            }
        })*
    };
}

scalar! {
    String => |raw| Ok(toml::Value::String(raw.into())),
    PathBuf => |raw| Ok(toml::Value::String(raw.into())),
    SocketAddr => |raw| raw
        .parse::<SocketAddr>()
        .map(|addr| toml::Value::String(addr.to_string()))
        .map_err(|_| format!("`{raw}` is not an IP:port address")),
    bool => |raw| raw
        .parse()
        .map(toml::Value::Boolean)
        .map_err(|_| format!("`{raw}` is not true or false")),
    f64 => |raw| raw
        .parse()
        .map(toml::Value::Float)
        .map_err(|_| format!("`{raw}` is not a number")),
    u32 => integer,
    u64 => integer,
    usize => integer,
    NonZeroU32 => integer,
    NonZeroU64 => integer,
    NonZeroUsize => integer,
    // In the unit its key names (`_ms`, `_secs`).
    Duration => integer,
}

/// Set by `WAMP_CLUSTER_SECRET` alone, never by a key.
impl Setting for crate::security::Secret {
    fn keys(_: &str, _: &mut Vec<Key>) {}
}

impl<T: Setting> Setting for Option<T> {
    fn keys(name: &str, keys: &mut Vec<Key>) {
        let start = keys.len();
        T::keys(name, keys);
        for key in &mut keys[start..] {
            key.optional = true;
        }
    }
}

impl Setting for Vec<String> {
    fn keys(name: &str, keys: &mut Vec<Key>) {
        keys.push(Key {
            list: true,
            ..key(name, |raw| {
                Ok(toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.into()))
                        .collect(),
                ))
            })
        });
    }
}

impl Setting for BTreeMap<String, String> {
    fn keys(name: &str, keys: &mut Vec<Key>) {
        keys.push(key(name, |raw| {
            let mut table = toml::Table::new();
            for pair in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("`{pair}` is not k=v"))?;
                table.insert(k.trim().into(), toml::Value::String(v.trim().into()));
            }
            Ok(toml::Value::Table(table))
        }));
    }
}

/// A struct declared with [`settings!`](crate::settings): one table of keys.
pub trait Table: Setting {}

/// A list of tables (`[[router.realms]]`) is set in the file only: no variable or flag.
impl<T: Table> Setting for Vec<T> {
    fn keys(_: &str, _: &mut Vec<Key>) {}
}

/// A section of the configuration file that a program adds to the node's (`[router]`): its
/// keys take part in the same layering of file, environment and flags, with the same errors.
/// Declare it with [`settings!`](crate::settings) and implement this.
pub trait Section:
    Setting + serde::Serialize + serde::de::DeserializeOwned + Default + 'static
{
    /// The section's name in the file (`router` for `[router]`).
    const NAME: &'static str;

    /// Checks the values; the error names the first bad key.
    fn validate(&self) -> Result<(), crate::error::ConfigError> {
        Ok(())
    }
}

/// Declares a configuration section once: the struct with its fields (each field's name is its
/// key; serde attributes such as `#[serde(with = "wamp_cluster::config::ms")]` pass through),
/// its `Default` from the values given, and its [`Setting`] impl listing the keys. The struct
/// derives `Debug, Clone, PartialEq, Serialize, Deserialize` and refuses unknown keys.
///
/// ```
/// use std::time::Duration;
///
/// wamp_cluster::settings! {
///     /// The `[router]` section.
///     pub struct RouterConfig {
///         /// Where WebSocket clients connect.
///         pub ws_addr: std::net::SocketAddr = ([127, 0, 0, 1], 8090).into(),
///         /// Pings every this many milliseconds.
///         #[serde(with = "wamp_cluster::config::ms")]
///         pub ping_interval_ms: Duration = Duration::from_secs(30),
///     }
/// }
///
/// impl wamp_cluster::config::Section for RouterConfig {
///     const NAME: &'static str = "router";
/// }
/// ```
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident : $ty:ty = $default:expr
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        $vis struct $name {
            $(
                $(#[$field_meta])*
                $field_vis $field: $ty,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $($field: $default,)*
                }
            }
        }

        impl $crate::config::Table for $name {}

        impl $crate::config::Setting for $name {
            fn keys(prefix: &str, keys: &mut Vec<$crate::config::Key>) {
                $(
                    <$ty as $crate::config::Setting>::keys(
                        &$crate::config::join(prefix, stringify!($field)),
                        keys,
                    );
                )*
            }
        }
    };
}

/// Serde for a [`Duration`] written as whole milliseconds (`interval_ms = 200`).
pub mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration in milliseconds.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// Serde for a [`Duration`] written as whole seconds (`dead_node_grace_period_secs = 3600`).
pub mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the duration in seconds.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_secs())
    }

    /// Reads seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_secs)
    }
}
