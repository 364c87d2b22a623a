use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::error::ConfigError;
use crate::security::Secret;

fn valid() -> Config {
    Config::new("node-1")
}

fn refusal(config: &Config) -> String {
    config.validate().unwrap_err().to_string()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_defaults_with_a_node_id_are_valid() {
    valid().validate().unwrap();
}

#[test]
fn a_missing_node_id_is_refused_by_name() {
    let err = Config::default().validate().unwrap_err().to_string();
    assert!(err.contains("node_id"), "{err}");
}

#[test]
fn durations_are_read_and_written_in_the_unit_their_key_names() {
    let config = Config::from_toml(
        "node_id = \"n\"\n[gossip]\ninterval_ms = 150\ndead_node_grace_period_secs = 60\n",
    )
    .unwrap();
    assert_eq!(config.gossip.interval_ms, Duration::from_millis(150));
    assert_eq!(
        config.gossip.dead_node_grace_period_secs,
        Duration::from_secs(60)
    );
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("interval_ms = 150"), "{text}");
    assert!(text.contains("dead_node_grace_period_secs = 60"), "{text}");
    assert_eq!(Config::from_toml(&text).unwrap(), config);
}

#[test]
fn the_cluster_secret_comes_from_the_environment_is_kept_and_is_never_shown() {
    let layers = Layers::new()
        .env(env(&[
            ("WAMP_CLUSTER_NODE_ID", "n"),
            (SECRET_ENV, "from-the-environment-123"),
        ]))
        .unwrap();
    let mut config = layers.config().unwrap();
    assert_eq!(
        config.cluster_secret.as_ref().map(Secret::expose),
        Some("from-the-environment-123")
    );
    // Setting another key keeps it.
    config.set("gossip.interval_ms", "300").unwrap();
    assert!(config.cluster_secret.is_some());
    assert!(!format!("{config:?}").contains("from-the-environment"));
    config.set("cluster_secret_file", "/somewhere").unwrap();
    assert!(refusal(&config).contains("one way"), "{}", refusal(&config));
    let mut window = valid();
    window.set("gossip.replay_window_ms", "10").unwrap();
    assert!(refusal(&window).contains("gossip.replay_window_ms"));
}

#[test]
fn tls_files_are_set_together_and_need_a_node_id_a_certificate_can_name() {
    let mut config = valid();
    assert!(config.tls.require_client_cert);
    config.set("tls.require_client_cert", "false").unwrap();
    config.validate().unwrap();
    assert!(config.set("tls.require_client_cert", "maybe").is_err());
    config.set("tls.key_file", "key.pem").unwrap();
    assert!(refusal(&config).contains("`tls.cert_file`"));
    config.set("tls.cert_file", "cert.pem").unwrap();
    assert!(refusal(&config).contains("`tls.ca_file`"));
    config.set("tls.ca_file", "ca.pem").unwrap();
    config.set("tls.key_file", "").unwrap();
    assert!(refusal(&config).contains("`tls.key_file`"));
    config.set("tls.key_file", "key.pem").unwrap();
    // Validation reads no file: these do not exist.
    config.validate().unwrap();
    config.set("node_id", "10.0.0.1").unwrap();
    assert!(
        refusal(&config).contains("`node_id`"),
        "{}",
        refusal(&config)
    );
}

#[test]
fn limits_are_set_from_the_environment_and_bad_ones_refused_by_name() {
    let config = Layers::new()
        .env(env(&[
            ("WAMP_CLUSTER_NODE_ID", "n"),
            ("WAMP_CLUSTER_LIMITS__HANDSHAKE_TIMEOUT_MS", "750"),
        ]))
        .unwrap()
        .config()
        .unwrap();
    assert_eq!(
        config.limits.handshake_timeout_ms,
        Duration::from_millis(750)
    );
    for (key, value) in [
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
    // Zero is no count: refused as the value is set.
    let err = config
        .clone()
        .set("limits.max_inbound_connections", "0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.max_inbound_connections"), "{err}");
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
    assert_eq!(config.gossip.interval_ms, Duration::from_millis(100));
    assert_eq!(config.gossip.phi_threshold, 8.0);
}

#[test]
fn an_unknown_key_or_a_bad_value_in_the_file_is_refused_by_name() {
    let err = Config::from_toml("gossip_adr = \"127.0.0.1:1\"").unwrap_err();
    assert!(err.to_string().contains("gossip_adr"), "{err}");
    let err = Config::from_toml("[forward]\nqueue_capacity = 0\n").unwrap_err();
    assert!(err.to_string().contains("forward.queue_capacity"), "{err}");
    let err = Config::from_toml("[gossip]\ninterval_ms = \"soon\"\n").unwrap_err();
    assert!(err.to_string().contains("gossip.interval_ms"), "{err}");
}

#[test]
fn environment_variables_override_the_file_and_name_the_key_and_variable_when_bad() {
    let layers = Layers::new()
        .toml(
            "node_id = \"from-file\"\n[gossip]\ninterval_ms = 300\n",
            "node.toml",
        )
        .unwrap()
        .env(env(&[
            ("WAMP_CLUSTER_GOSSIP__INTERVAL_MS", "100"),
            ("WAMP_CLUSTER_SEEDS", "a:1, b:2"),
            ("WAMP_CLUSTER_LABELS", "zone=a,rack=r1"),
            ("WAMP_CLUSTER_NODE_ID", "123"),
            ("PATH", "/bin"),
        ]))
        .unwrap();
    let config = layers.config().unwrap();
    assert_eq!(config.gossip.interval_ms, Duration::from_millis(100));
    assert_eq!(config.seeds, ["a:1", "b:2"]);
    assert_eq!(config.labels["rack"], "r1");
    assert_eq!(config.node_id, "123");

    let err = Layers::new()
        .env(env(&[("WAMP_CLUSTER_GOSSIP__INTERVAL_MS", "soon")]))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("gossip.interval_ms"), "{err}");
    assert!(err.contains("WAMP_CLUSTER_GOSSIP__INTERVAL_MS"), "{err}");

    // A value that is not UTF-8 is refused by its variable's name (no panic, as
    // `std::env::vars()` would).
    use std::os::unix::ffi::OsStringExt;
    let err = Layers::new()
        .env([(
            std::ffi::OsString::from("WAMP_CLUSTER_NODE_ID"),
            std::ffi::OsString::from_vec(vec![0x6e, 0xff]),
        )])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("WAMP_CLUSTER_NODE_ID") && err.contains("UTF-8"),
        "{err}"
    );

    let err = Layers::new()
        .env(env(&[("WAMP_CLUSTER_GOSIP__INTERVAL_MS", "1")]))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("WAMP_CLUSTER_GOSIP__INTERVAL_MS"), "{err}");
}

#[test]
fn a_value_that_fails_validation_is_named_with_the_layer_it_came_from() {
    let mut layers = Layers::new()
        .toml("node_id = \"n\"\n[gossip]\ninterval_ms = 5\n", "node.toml")
        .unwrap();
    let err = layers.config().unwrap_err().to_string();
    assert!(err.contains("`gossip.interval_ms` (in node.toml)"), "{err}");
    layers
        .set(
            "gossip.interval_ms",
            "7",
            Origin::Flag("gossip-interval-ms".into()),
        )
        .unwrap();
    let err = layers.config().unwrap_err().to_string();
    assert!(
        err.contains("`gossip.interval_ms` (from --gossip-interval-ms)"),
        "{err}"
    );
}

#[test]
fn every_key_of_the_file_has_a_variable_and_a_flag_and_no_other_does() {
    let layers = Layers::new();
    let names: Vec<&str> = layers.keys().iter().map(|k| k.name.as_str()).collect();
    // Every key of a configuration with every optional key set, as the file writes it.
    let mut config = valid();
    config.gossip_advertise_addr = Some(config.gossip_addr);
    config.forward_advertise_addr = Some(config.forward_addr);
    config.admin_token_file = Some("t".into());
    config.cluster_secret_file = Some("s".into());
    config.tls.cert_file = Some("c".into());
    config.tls.key_file = Some("k".into());
    config.tls.ca_file = Some("a".into());
    let table = toml::Table::try_from(&config).unwrap();
    let mut written = Vec::new();
    super::layers::leaf_keys(layers.keys(), "", &table, &mut written);
    written.sort();
    let mut listed: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(written, listed);
    let key = layers
        .keys()
        .iter()
        .find(|k| k.name == "limits.idle_timeout_ms")
        .unwrap();
    assert_eq!(key.env_var(), "WAMP_CLUSTER_LIMITS__IDLE_TIMEOUT_MS");
    assert_eq!(key.flag(), "limits-idle-timeout-ms");
}

#[test]
fn a_programs_section_takes_part_in_every_layer() {
    crate::settings! {
        /// A section of a program.
        pub struct Extra {
            /// An address.
            pub addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 1)),
            /// A timeout.
            #[serde(with = "crate::config::ms")]
            pub wait_ms: Duration = Duration::from_millis(10),
            /// Tables of the file only.
            pub items: Vec<Item> = Vec::new(),
        }
    }
    crate::settings! {
        /// One item.
        pub struct Item {
            /// Its name.
            pub name: String = String::new(),
        }
    }
    impl Section for Extra {
        const NAME: &'static str = "extra";
        fn validate(&self) -> Result<(), ConfigError> {
            if self.wait_ms.is_zero() {
                return Err(ConfigError::invalid("extra.wait_ms", "must not be 0"));
            }
            Ok(())
        }
    }
    let text = "node_id = \"n\"\n[extra]\nwait_ms = 20\n[[extra.items]]\nname = \"a\"\n";
    // Without the section, the file's `[extra]` is an unknown key.
    assert!(Layers::new().toml(text, "f").is_err());
    let mut layers = Layers::new()
        .section::<Extra>()
        .toml(text, "f")
        .unwrap()
        .env(env(&[("WAMP_CLUSTER_EXTRA__ADDR", "127.0.0.1:2")]))
        .unwrap();
    let extra: Extra = layers.get().unwrap();
    assert_eq!(extra.addr, SocketAddr::from(([127, 0, 0, 1], 2)));
    assert_eq!(extra.wait_ms, Duration::from_millis(20));
    assert_eq!(extra.items[0].name, "a");
    assert!(!layers
        .keys()
        .iter()
        .any(|k| k.name.starts_with("extra.items")));
    layers.config().unwrap();
    let err = layers
        .set("extra.addr", "nowhere", Origin::Flag("extra-addr".into()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("`extra.addr` (from --extra-addr)"), "{err}");
    // A refused value is not kept.
    let extra: Extra = layers.get().unwrap();
    assert_eq!(extra.addr, SocketAddr::from(([127, 0, 0, 1], 2)));
    layers
        .set(
            "extra.wait_ms",
            "0",
            Origin::Env("WAMP_CLUSTER_EXTRA__WAIT_MS".into()),
        )
        .unwrap();
    let err = layers.get::<Extra>().unwrap_err().to_string();
    assert!(
        err.contains("`extra.wait_ms` (from WAMP_CLUSTER_EXTRA__WAIT_MS)"),
        "{err}"
    );
    let err = Layers::new()
        .section::<Extra>()
        .toml("[extra]\nwait = 1\n", "f")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("wait") && err.contains("[extra]"), "{err}");
    // A section given as a plain value is refused, not read as its defaults.
    let err = Layers::new()
        .section::<Extra>()
        .toml("node_id = \"n\"\nextra = 5\n", "f")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("`extra` must be a section"), "{err}");
    // A section whose name is taken is the program's mistake, found as it starts.
    let taken = std::panic::catch_unwind(|| Layers::new().section::<Extra>().section::<Extra>());
    assert!(taken.is_err());
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
        ("forward.ack_timeout_ms", "0"),
        ("forward.max_frame_bytes", "100"),
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
    for (key, raw) in [
        ("admin_addr", "nowhere"),
        ("gossip.leave_rounds", "0"),
        ("forward.queue_capacity", "0"),
    ] {
        let err = valid().set(key, raw).unwrap_err().to_string();
        assert!(err.contains(key), "{key}={raw}: {err}");
    }
}

/// Every numeric key has an upper bound: a value far past any sane one is refused with the
/// key's name, by `set` or by `validate`, never accepted to fail later (a grace period near
/// `i64::MAX` seconds used to panic inside chitchat at the first death).
#[test]
fn every_numeric_key_refuses_a_value_past_its_upper_bound() {
    let layers = Layers::new();
    let defaults = toml::Table::try_from(valid()).unwrap();
    let mut numeric = 0;
    for key in layers.keys() {
        let (path, leaf) = key.name.rsplit_once('.').unwrap_or(("", &key.name));
        let section = match path {
            "" => Some(&defaults),
            path => defaults.get(path).and_then(toml::Value::as_table),
        };
        let found = section.and_then(|t| t.get(leaf));
        let huge = match found {
            Some(toml::Value::Integer(_)) => i64::MAX.to_string(),
            Some(toml::Value::Float(_)) => "1e300".to_string(),
            _ => continue,
        };
        numeric += 1;
        let mut config = valid();
        let err = match config.set(&key.name, &huge) {
            Err(err) => err.to_string(),
            Ok(()) => match config.validate() {
                Err(err) => err.to_string(),
                Ok(()) => panic!("{}={huge} is accepted", key.name),
            },
        };
        assert!(err.contains(&key.name), "{}={huge}: {err}", key.name);
    }
    assert_eq!(
        numeric, 22,
        "a numeric key was added or lost: list its bound in the test below"
    );
}

/// The upper bounds themselves are accepted, all at once.
#[test]
fn every_numeric_key_at_its_upper_bound_is_valid() {
    let mut config = valid();
    for (key, max) in [
        ("stop_timeout_ms", "600000"),
        ("gossip.interval_ms", "60000"),
        ("gossip.phi_threshold", "1000"),
        ("gossip.dead_node_grace_period_secs", "2592000"),
        ("gossip.join_timeout_ms", "600000"),
        ("gossip.leave_rounds", "100"),
        ("gossip.replay_window_ms", "3600000"),
        ("forward.ack_timeout_ms", "3600000"),
        ("forward.max_frame_bytes", "67108864"),
        ("forward.queue_capacity", "16777216"),
        ("forward.queue_capacity_bytes", "4294967296"),
        ("forward.connect_timeout_ms", "600000"),
        ("forward.max_redial_backoff_ms", "600000"),
        ("forward.max_clock_skew_ms", "3600000"),
        ("limits.max_inbound_connections", "65536"),
        ("limits.max_unproven_connections", "65536"),
        ("limits.max_inbound_buffered_bytes", "8589934592"),
        ("limits.handshake_timeout_ms", "600000"),
        ("limits.keepalive_interval_ms", "600000"),
        ("limits.idle_timeout_ms", "3600000"),
        ("limits.max_pending_acks_per_peer", "16777216"),
        ("limits.max_inbound_frames_per_sec_per_peer", "1000000000"),
    ] {
        config.set(key, max).unwrap();
    }
    config.validate().unwrap();
}
