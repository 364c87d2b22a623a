//! The layering of a configuration: defaults, then the TOML file, then `WAMP_CLUSTER_*`
//! environment variables, then flags; each later layer wins. Every layer sets the keys that
//! [`Setting`] lists, so the three agree by construction; a program adds its own sections
//! ([`Layers::section`]) to the same layering.
//!
//! A value is checked as it is set, so an error names the key and the layer it came from (the
//! file, with the line for a syntax error; the variable; the flag); [`Layers::config`] then
//! validates the whole. Add a program's sections first ([`Layers::section`]), then the layers
//! in order: [`Layers::file`], [`Layers::env`], then [`Layers::set`] for each flag.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use super::sections::Config;
use super::setting::{join, Key, Section, Setting, ENV_PREFIX};
use crate::error::ConfigError;
use crate::security::{Secret, SECRET_ENV};

/// Where a key's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file (its name).
    File(String),
    /// An environment variable (its name).
    Env(String),
    /// A flag (its name, without the dashes).
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(file) => write!(f, "in {file}"),
            Origin::Env(var) => write!(f, "from {var}"),
            Origin::Flag(flag) => write!(f, "from --{flag}"),
        }
    }
}

/// One part of the file: the node's keys (`name` empty), or a program's section.
struct Part {
    name: &'static str,
    /// Whether `table` (the part's own table) reads as the part's type.
    check: fn(toml::Table) -> Result<(), toml::de::Error>,
}

/// A configuration being put together from its layers.
pub struct Layers {
    table: toml::Table,
    keys: Vec<Key>,
    parts: Vec<Part>,
    origins: BTreeMap<String, Origin>,
    secret: Option<Secret>,
}

impl Default for Layers {
    fn default() -> Self {
        Self::new()
    }
}

fn reads_as<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<(), toml::de::Error> {
    table.try_into::<T>().map(drop)
}

/// A configuration that does not read as its types (after the layers checked each value, a
/// fault of the program's own types).
fn unreadable(err: impl fmt::Display) -> ConfigError {
    ConfigError::Parse {
        source_name: "config".into(),
        message: err.to_string(),
    }
}

/// `err` with where its key's value came from, unless it says already.
fn from_origin(err: ConfigError, found: Option<&Origin>) -> ConfigError {
    match err {
        ConfigError::Invalid {
            key,
            message,
            origin: None,
        } => ConfigError::Invalid {
            key,
            message,
            origin: found.map(Origin::to_string),
        },
        other => other,
    }
}

/// toml's message without the line it adds to name the key (the caller names it).
fn message(err: &toml::de::Error) -> String {
    let text = err.message().trim();
    match text.rsplit_once("\nin `") {
        Some((message, _)) => message.trim().to_string(),
        None => text.to_string(),
    }
}

impl Layers {
    /// The node's keys at their defaults.
    pub fn new() -> Layers {
        let mut keys = Vec::new();
        Config::keys("", &mut keys);
        Layers {
            table: toml::Table::new(),
            keys,
            parts: vec![Part {
                name: "",
                check: reads_as::<Config>,
            }],
            origins: BTreeMap::new(),
            secret: None,
        }
    }

    /// Adds a program's section (`[router]`): its keys are read from the file, variables
    /// (`WAMP_CLUSTER_ROUTER__…`) and flags (`--router-…`) like the node's. Call it before
    /// reading any layer: until then, the section's keys are unknown keys.
    ///
    /// # Panics
    ///
    /// When the section's name is taken (by a node's key or section, or an added section), or
    /// two keys would have the same flag: the program's own mistake, found as it starts.
    pub fn section<S: Section>(mut self) -> Layers {
        let taken = |name: &str| name == S::NAME || name.starts_with(&format!("{}.", S::NAME));
        assert!(
            !self.keys.iter().any(|k| taken(&k.name)),
            "the configuration section `{}` is taken",
            S::NAME
        );
        S::keys(S::NAME, &mut self.keys);
        for (i, key) in self.keys.iter().enumerate() {
            assert!(
                !self.keys[..i].iter().any(|k| k.flag() == key.flag()),
                "`{}` would have the flag --{} of another key",
                key.name,
                key.flag()
            );
        }
        self.parts.push(Part {
            name: S::NAME,
            check: reads_as::<S>,
        });
        self
    }

    /// Every key a variable or a flag may set, the node's and the added sections'.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Reads a TOML file over the defaults. Unknown keys are refused.
    pub fn file(self, path: &Path) -> Result<Layers, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.toml(&text, &path.display().to_string())
    }

    /// Reads TOML text over the defaults; `source` names it in errors. Unknown keys are
    /// refused.
    pub fn toml(mut self, text: &str, source: &str) -> Result<Layers, ConfigError> {
        let parse = |message: String| ConfigError::Parse {
            source_name: source.to_string(),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|err| parse(err.to_string()))?;
        for part in &self.parts[1..] {
            if table.get(part.name).is_some_and(|value| !value.is_table()) {
                return Err(parse(format!("`{}` must be a section", part.name)));
            }
        }
        let mut leaves = Vec::new();
        leaf_keys(&self.keys, "", &table, &mut leaves);
        for key in leaves {
            self.origins.insert(key, Origin::File(source.to_string()));
        }
        self.table = table;
        for part in &self.parts {
            let table = self.part_table(part);
            // toml's message names the key, within the part.
            (part.check)(table).map_err(|err| {
                let message = err.to_string().trim().to_string();
                match part.name {
                    "" => parse(message),
                    section => parse(format!("[{section}]: {message}")),
                }
            })?;
        }
        Ok(self)
    }

    /// Applies every `WAMP_CLUSTER_*` variable of `vars` (usually `std::env::vars_os()`, which
    /// unlike `vars()` does not panic on a variable that is not UTF-8). A variable with the
    /// prefix that names no key, or whose value is not UTF-8, is refused, so that a typo cannot
    /// go unnoticed. `WAMP_CLUSTER_SECRET` is not a key: it holds the cluster secret itself.
    pub fn env<N: Into<OsString>, V: Into<OsString>>(
        mut self,
        vars: impl IntoIterator<Item = (N, V)>,
    ) -> Result<Layers, ConfigError> {
        for (name, value) in vars {
            let Some(name) = name.into().into_string().ok() else {
                continue;
            };
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            let value = value.into().into_string().map_err(|_| ConfigError::Parse {
                source_name: name.clone(),
                message: "its value is not valid UTF-8".into(),
            })?;
            if name == SECRET_ENV {
                self.secret = Some(Secret::new(value));
                continue;
            }
            let Some(key) = self.keys.iter().find(|k| k.env_var() == name).cloned() else {
                return Err(ConfigError::UnknownEnv { name });
            };
            self.set(&key.name, &value, Origin::Env(name))?;
        }
        Ok(self)
    }

    /// Sets one key (`gossip.interval_ms`) from its text, as a variable or a flag gives it:
    /// lists are comma-separated, maps `k=v,k=v`, and an empty text unsets an optional key.
    pub fn set(&mut self, name: &str, raw: &str, origin: Origin) -> Result<(), ConfigError> {
        self.set_value(name, raw)
            .map_err(|err| from_origin(err, Some(&origin)))?;
        self.origins.insert(name.to_string(), origin);
        Ok(())
    }

    /// Sets one key from its text; an error names the key alone, and changes nothing.
    pub(super) fn set_value(&mut self, name: &str, raw: &str) -> Result<(), ConfigError> {
        let Some(key) = self.keys.iter().find(|k| k.name == name).cloned() else {
            return Err(ConfigError::UnknownKey { key: name.into() });
        };
        let invalid = |message: String| ConfigError::invalid(name, message);
        let mut table = self.table.clone();
        put(&mut table, &key, raw.trim()).map_err(invalid)?;
        let before = std::mem::replace(&mut self.table, table);
        let part = self.part_of(name);
        if let Err(err) = (part.check)(self.part_table(part)) {
            self.table = before;
            return Err(invalid(message(&err)));
        }
        Ok(())
    }

    /// Layers whose first layer is `config`'s values.
    pub(super) fn from_config(config: &Config) -> Result<Layers, ConfigError> {
        let mut layers = Layers::new();
        layers.table = toml::Table::try_from(config).map_err(unreadable)?;
        layers.secret = config.cluster_secret.clone();
        Ok(layers)
    }

    /// The node's configuration as the layers give it, not validated.
    pub(super) fn unvalidated(&self) -> Result<Config, ConfigError> {
        let mut config: Config = self.read(&self.parts[0])?;
        config.cluster_secret = self.secret.clone();
        Ok(config)
    }

    /// The node's configuration, validated; an error names the key and where its value came
    /// from.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let config = self.unvalidated()?;
        config.validate().map_err(|err| self.locate(err))?;
        Ok(config)
    }

    /// A program's section, validated. Its `validate` names keys in full (`router.realm`),
    /// or by their name in the section (`realm`).
    pub fn get<S: Section>(&self) -> Result<S, ConfigError> {
        let section: S = self.read(&Part {
            name: S::NAME,
            check: reads_as::<S>,
        })?;
        section.validate().map_err(|err| match err {
            ConfigError::Invalid {
                key,
                message,
                origin,
            } if !key.starts_with(&format!("{}.", S::NAME)) => self.locate(ConfigError::Invalid {
                key: join(S::NAME, &key),
                message,
                origin,
            }),
            err => self.locate(err),
        })?;
        Ok(section)
    }

    fn read<T: serde::de::DeserializeOwned>(&self, part: &Part) -> Result<T, ConfigError> {
        self.part_table(part).try_into().map_err(unreadable)
    }

    /// The part a key belongs to: the section named by its first segment, else the node.
    fn part_of(&self, name: &str) -> &Part {
        let first = name.split('.').next().unwrap_or_default();
        self.parts
            .iter()
            .find(|p| !p.name.is_empty() && p.name == first)
            .unwrap_or(&self.parts[0])
    }

    /// The part's own table: a section's, or the node's without the sections.
    fn part_table(&self, part: &Part) -> toml::Table {
        if part.name.is_empty() {
            let mut table = self.table.clone();
            for section in &self.parts[1..] {
                table.remove(section.name);
            }
            table
        } else {
            match self.table.get(part.name) {
                Some(toml::Value::Table(table)) => table.clone(),
                _ => toml::Table::new(),
            }
        }
    }

    /// Adds where the value of the key an error names came from: for the errors of
    /// [`Layers::config`] and [`Layers::get`], and of the files the node reads as it starts.
    pub fn locate(&self, err: ConfigError) -> ConfigError {
        let found = match &err {
            ConfigError::Invalid { key, .. } => self.origins.get(key),
            _ => None,
        };
        from_origin(err, found)
    }
}

/// Sets `key` in `table` from its text (an empty text unsets an optional key).
fn put(table: &mut toml::Table, key: &Key, raw: &str) -> Result<(), String> {
    let path: Vec<&str> = key.name.split('.').collect();
    let (leaf, sections) = path.split_last().unwrap_or((&"", &[]));
    let unset = key.optional && raw.is_empty();
    let mut target = table;
    for section in sections {
        if unset && !target.contains_key(*section) {
            // Nothing to unset: a missing section is not made for it.
            return Ok(());
        }
        let entry = target
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(table) = entry.as_table_mut() else {
            return Err(format!("`{section}` is not a section"));
        };
        target = table;
    }
    if unset {
        target.remove(*leaf);
    } else {
        target.insert(leaf.to_string(), (key.parse)(raw)?);
    }
    Ok(())
}

/// The dotted names of the values in `table`: a table is a section unless it is the value of
/// one of `keys` (the labels); a list of tables counts as one.
pub(super) fn leaf_keys(keys: &[Key], prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (name, value) in table {
        let key = join(prefix, name);
        match value {
            toml::Value::Table(inner) if !keys.iter().any(|k| k.name == key) => {
                leaf_keys(keys, &key, inner, out)
            }
            _ => out.push(key),
        }
    }
}

/// Reading and setting a configuration by the same layering.
impl Config {
    /// Reads a TOML file over the defaults (not validated). Unknown keys are refused.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Layers::new().file(path).and_then(|l| l.unvalidated())
    }

    /// Parses TOML text over the defaults (not validated). Unknown keys are refused.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Layers::new()
            .toml(text, "config")
            .and_then(|l| l.unvalidated())
    }

    /// Sets one key (`gossip.interval_ms`) from its text form, as an environment variable or
    /// a flag gives it: lists are comma-separated, maps are `k=v,k=v`, an empty text unsets an
    /// optional key.
    pub fn set(&mut self, key: &str, raw: &str) -> Result<(), ConfigError> {
        let mut layers = Layers::from_config(self)?;
        layers.set_value(key, raw)?;
        *self = layers.unvalidated()?;
        Ok(())
    }
}
