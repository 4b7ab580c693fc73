use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml_ng::Value;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn yaml(y: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str(y, &[])
}

fn with_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_yaml_str("", &env(pairs))
}

#[test]
fn defaults_match_the_table() {
    let c = Config::default();
    assert_eq!(
        c.roles,
        vec![Role::Ingest, Role::Forward, Role::Sink, Role::Maintain]
    );
    assert_eq!(c.http.listen, "0.0.0.0:8000".parse::<SocketAddr>().unwrap());
    assert_eq!(c.http.max_body_bytes, 4_194_304);
    assert_eq!(c.ingest.max_batch_size, 500);
    assert_eq!(c.ingest.max_future_skew, Duration::from_secs(3600));
    assert_eq!(c.ingest.max_event_bytes, 1_048_576);
    assert_eq!(c.spool.path, PathBuf::from("./data/spool"));
    assert_eq!(c.spool.max_bytes, 1_073_741_824);
    assert_eq!(c.spool.max_pending_appends, 4096);
    assert_eq!(c.spool.max_pending_bytes, 64 * 1024 * 1024);
    assert_eq!(c.spool.retry_after, Duration::from_secs(1));
    assert_eq!(c.kafka.bootstrap_servers, "kafka:9092");
    assert_eq!(c.kafka.topic, "openg2p.audit.events");
    assert_eq!(c.kafka.dlq_topic, "openg2p.audit.dlq");
    assert_eq!(c.kafka.consumer_group, "openg2p-audit-consumer");
    assert_eq!(c.kafka.client_id, "openg2p-audit-manager");
    assert_eq!(c.kafka.topic_partitions, 12);
    assert_eq!(c.kafka.topic_replication, 1);
    assert!(c.kafka.producer.is_empty() && c.kafka.consumer.is_empty());
    assert_eq!(c.sink.batch_max_records, 5000);
    assert_eq!(c.sink.flush_interval, Duration::from_millis(200));
    assert_eq!(
        c.database.url,
        "postgres://postgres@localhost:5432/auditmanager"
    );
    assert_eq!(c.database.partition_pre_create_months, 3);
    assert_eq!(c.database.partition_retention_months, 84);
    assert_eq!(
        c.database.partition_check_interval,
        Duration::from_secs(3600)
    );
    c.validate().unwrap();
    // Empty inputs give the defaults.
    assert_eq!(yaml("").unwrap(), c);
    assert_eq!(yaml("# only a comment\n").unwrap(), c);
    assert_eq!(yaml("audit_manager:\n").unwrap(), c);
    assert_eq!(yaml("audit_manager:\n  http:\n  spool: ~\n").unwrap(), c);
    assert_eq!(Config::load_from(None, &[]).unwrap(), c);
}

#[test]
fn default_yaml_matches_defaults_field_by_field() {
    let from_file = yaml(include_str!("../../config/default.yaml")).unwrap();
    let d = Config::default();
    assert_eq!(from_file.roles, d.roles);
    assert_eq!(from_file.http, d.http);
    assert_eq!(from_file.ingest, d.ingest);
    assert_eq!(from_file.spool, d.spool);
    assert_eq!(from_file.kafka, d.kafka);
    assert_eq!(from_file.sink, d.sink);
    assert_eq!(from_file.database, d.database);
    assert_eq!(from_file, d);
}

/// Every key of the config appears in default.yaml (it documents every key).
#[test]
fn default_yaml_documents_every_key() {
    fn json_keys(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let p = format!("{prefix}.{k}");
                out.push(p.clone());
                json_keys(&p, v, out);
            }
        }
    }
    fn yaml_keys(prefix: &str, v: &Value, out: &mut Vec<String>) {
        if let Value::Mapping(m) = v {
            for (k, v) in m {
                let p = format!("{prefix}.{}", k.as_str().unwrap());
                out.push(p.clone());
                yaml_keys(&p, v, out);
            }
        }
    }
    let doc: Value = serde_yaml_ng::from_str(include_str!("../../config/default.yaml")).unwrap();
    let mut in_yaml = Vec::new();
    yaml_keys(ROOT_KEY, &doc[ROOT_KEY], &mut in_yaml);
    let mut in_cfg = Vec::new();
    json_keys(ROOT_KEY, &Config::default().redacted_json(), &mut in_cfg);
    // The reference service's spellings are shown in GET /config but documented as comments.
    in_cfg.retain(|k| {
        !reference::ALIAS_KEYS
            .iter()
            .any(|a| k == &format!("{ROOT_KEY}.{a}"))
    });
    in_yaml.sort();
    in_cfg.sort();
    assert_eq!(in_yaml, in_cfg);
    assert!(in_cfg.len() > 25, "{in_cfg:?}");
}

#[test]
fn yaml_overrides() {
    let c = yaml(
        r#"
audit_manager:
  roles: [sink]
  http:
    listen: "127.0.0.1:9000"
    max_body_bytes: 2MiB
  ingest:
    max_batch_size: 10
    max_future_skew: 5m
  spool:
    path: /var/spool/am
    max_bytes: 1000
    retry_after: 1500ms
  kafka:
    topic: t1
    dlq_topic: t1.dlq
    topic_replication: -1
    producer:
      acks: all
      linger.ms: 5
      enable.idempotence: true
  database:
    url: postgres://u:p@db:5433/x
    partition_retention_months: 0
"#,
    )
    .unwrap();
    assert_eq!(c.roles, vec![Role::Sink]);
    assert_eq!(
        c.http.listen,
        "127.0.0.1:9000".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.http.max_body_bytes, 2 * 1024 * 1024);
    assert_eq!(c.ingest.max_batch_size, 10);
    assert_eq!(c.ingest.max_future_skew, Duration::from_secs(300));
    assert_eq!(
        c.ingest.max_event_bytes, 1_048_576,
        "untouched key keeps default"
    );
    assert_eq!(c.spool.path, PathBuf::from("/var/spool/am"));
    assert_eq!(c.spool.max_bytes, 1000);
    assert_eq!(c.spool.retry_after, Duration::from_millis(1500));
    assert_eq!(c.spool.retry_after_secs(), 2);
    assert_eq!(c.kafka.topic, "t1");
    assert_eq!(c.kafka.topic_replication, -1);
    assert_eq!(c.kafka.bootstrap_servers, "kafka:9092");
    assert_eq!(c.kafka.producer["acks"], "all");
    assert_eq!(c.kafka.producer["linger.ms"], "5");
    assert_eq!(c.kafka.producer["enable.idempotence"], "true");
    assert_eq!(c.database.url, "postgres://u:p@db:5433/x");
    assert_eq!(c.database.partition_retention_months, 0);
    assert!(!c.has_role(Role::Ingest) && c.has_role(Role::Sink));
}

#[test]
fn env_overrides_yaml_with_nesting_and_property_maps() {
    let y = "audit_manager:\n  ingest:\n    max_batch_size: 10\n  kafka:\n    producer:\n      acks: all\n";
    let c = Config::from_yaml_str(
        y,
        &env(&[
            ("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE", "20"),
            ("AUDIT_MANAGER__HTTP__LISTEN", "[::1]:8080"),
            ("AUDIT_MANAGER__KAFKA__PRODUCER__MESSAGE_MAX_BYTES", "2000"),
            (
                "AUDIT_MANAGER__KAFKA__CONSUMER__AUTO_OFFSET_RESET",
                "earliest",
            ),
            ("AUDIT_MANAGER__SPOOL__MAX_BYTES", "512KiB"),
            ("AUDIT_MANAGER__SINK__FLUSH_INTERVAL", "1s"),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.ingest.max_batch_size, 20);
    assert_eq!(c.http.listen, "[::1]:8080".parse::<SocketAddr>().unwrap());
    assert_eq!(
        c.kafka
            .producer
            .get("message.max.bytes")
            .map(String::as_str),
        Some("2000")
    );
    assert_eq!(c.kafka.producer["acks"], "all", "YAML map entries are kept");
    assert_eq!(c.kafka.consumer["auto.offset.reset"], "earliest");
    assert_eq!(c.spool.max_bytes, 512 * 1024);
    assert_eq!(c.sink.flush_interval, Duration::from_secs(1));
}

#[test]
fn boolean_env_strings_are_accepted_and_others_named() {
    let c = with_env(&[("AUDIT_MANAGER__QUERY__ALLOW_ANONYMOUS", "true")]).unwrap();
    assert!(c.query.allow_anonymous);
    let c = Config::from_yaml_str(
        "audit_manager:\n  query:\n    allow_anonymous: true\n",
        &env(&[]),
    )
    .unwrap();
    assert!(c.query.allow_anonymous);
    let e = with_env(&[("AUDIT_MANAGER__QUERY__ALLOW_ANONYMOUS", "yes please")]).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("allow_anonymous") && msg.contains("true or false"),
        "{msg}"
    );
}

#[test]
fn numeric_env_strings_are_accepted() {
    let c = with_env(&[
        ("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE", "10"),
        ("AUDIT_MANAGER__KAFKA__TOPIC_PARTITIONS", " 3 "),
        ("AUDIT_MANAGER__KAFKA__TOPIC_REPLICATION", "-1"),
        ("AUDIT_MANAGER__DATABASE__PARTITION_RETENTION_MONTHS", "0"),
        ("AUDIT_MANAGER__HTTP__MAX_BODY_BYTES", "1234"),
    ])
    .unwrap();
    assert_eq!(c.ingest.max_batch_size, 10);
    assert_eq!(c.kafka.topic_partitions, 3);
    assert_eq!(c.kafka.topic_replication, -1);
    assert_eq!(c.database.partition_retention_months, 0);
    assert_eq!(c.http.max_body_bytes, 1234);

    let e = with_env(&[("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE", "ten")]).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. }
        if key == "audit_manager.ingest.max_batch_size"),
        "{msg}"
    );
    assert!(
        msg.contains("AUDIT_MANAGER__INGEST__MAX_BATCH_SIZE"),
        "{msg}"
    );
    let e = yaml("audit_manager:\n  database:\n    partition_retention_months: -1\n").unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = yaml("audit_manager:\n  kafka:\n    topic: 123\n").unwrap_err();
    assert!(e.to_string().contains("quote the value"), "{e}");
    let e = yaml("audit_manager:\n  kafka:\n    topic_partitions: 1.5\n").unwrap_err();
    assert!(
        e.to_string()
            .contains("audit_manager.kafka.topic_partitions"),
        "{e}"
    );
}

#[test]
fn string_fields_stay_strings_with_numeric_env() {
    let c = with_env(&[
        ("AUDIT_MANAGER__KAFKA__TOPIC", "123"),
        ("AUDIT_MANAGER__KAFKA__CLIENT_ID", "1e3"),
        ("AUDIT_MANAGER__KAFKA__CONSUMER_GROUP", "true"),
        ("AUDIT_MANAGER__SPOOL__PATH", "0755"),
    ])
    .unwrap();
    assert_eq!(c.kafka.topic, "123");
    assert_eq!(c.kafka.client_id, "1e3");
    assert_eq!(c.kafka.consumer_group, "true");
    assert_eq!(c.spool.path, PathBuf::from("0755"));
}

#[test]
fn unknown_key_in_yaml_names_full_path() {
    let e = Config::from_yaml_str("audit_manager:\n  spool:\n    max_byte: 5\n", &[]).unwrap_err();
    match &e {
        ConfigError::UnknownKey {
            key,
            expected,
            origin,
        } => {
            assert_eq!(key, "audit_manager.spool.max_byte");
            assert_eq!(
                expected,
                "path, max_bytes, cache_bytes, max_pending_appends, max_pending_bytes, retry_after"
            );
            assert_eq!(origin, "YAML input");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "unknown key audit_manager.spool.max_byte in YAML input; valid keys here: path, \
         max_bytes, cache_bytes, max_pending_appends, max_pending_bytes, retry_after"
    );
    let e = yaml("audit_manager:\n  nope: 1\n").unwrap_err();
    assert!(
        e.to_string().starts_with("unknown key audit_manager.nope "),
        "{e}"
    );
    assert!(e.to_string().contains("roles, http, ingest"), "{e}");
}

#[test]
fn unknown_key_in_file_names_the_file() {
    let dir = std::env::temp_dir().join(format!("cfgtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("x.yaml");
    std::fs::write(&p, "audit_manager:\n  sink:\n    batch_max: 1\n").unwrap();
    let e = Config::load_from(Some(&p), &[]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("audit_manager.sink.batch_max"), "{msg}");
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    // CONFIG_PATH is used when no path is given.
    std::fs::write(&p, "audit_manager:\n  sink:\n    batch_max_records: 7\n").unwrap();
    let c = Config::load_from(None, &env(&[("CONFIG_PATH", p.to_str().unwrap())])).unwrap();
    assert_eq!(c.sink.batch_max_records, 7);
    std::fs::remove_dir_all(&dir).unwrap();
    let e = Config::load_from(Some(&dir.join("missing.yaml")), &[]).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    assert!(e.to_string().starts_with("cannot read config file "), "{e}");
}

#[test]
fn unknown_key_in_env_names_full_path_and_variable() {
    let e = with_env(&[("AUDIT_MANAGER__NOPE", "1")]).unwrap_err();
    match &e {
        ConfigError::UnknownKey { key, origin, .. } => {
            assert_eq!(key, "audit_manager.nope");
            assert_eq!(origin, "environment variable AUDIT_MANAGER__NOPE");
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = with_env(&[("AUDIT_MANAGER__SPOOL__MAX_BYTE", "1")]).unwrap_err();
    assert!(
        matches!(e, ConfigError::UnknownKey { ref key, .. }
        if key == "audit_manager.spool.max_byte"),
        "{e:?}"
    );
    let e = with_env(&[("AUDIT_MANAGER__HTTP____LISTEN", "1")]).unwrap_err();
    assert!(matches!(e, ConfigError::Env { .. }), "{e:?}");
}

#[test]
fn missing_or_wrong_root_is_an_error() {
    let e = yaml("spool:\n  path: /x\n").unwrap_err();
    assert!(
        matches!(e, ConfigError::UnknownKey { ref key, .. } if key == "spool"),
        "{e:?}"
    );
    assert!(e.to_string().contains("audit_manager"), "{e}");
    let e = yaml("audit_manager: {}\nother: 1\n").unwrap_err();
    assert!(e.to_string().contains("unknown key other"), "{e}");
    let e = yaml("- a\n- b\n").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    let e = yaml("audit_manager: 5\n").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    let e = yaml("audit_manager:\n  http: [\n").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
}

#[test]
fn byte_sizes() {
    assert_eq!(parse_byte_size("0"), Ok(0));
    assert_eq!(parse_byte_size("123"), Ok(123));
    assert_eq!(parse_byte_size("10B"), Ok(10));
    assert_eq!(parse_byte_size("512KiB"), Ok(524_288));
    assert_eq!(parse_byte_size("4MiB"), Ok(4_194_304));
    assert_eq!(parse_byte_size("1GiB"), Ok(1_073_741_824));
    assert_eq!(parse_byte_size("1GB"), Ok(1_000_000_000));
    assert_eq!(parse_byte_size("2 kb"), Ok(2_000));
    assert_eq!(parse_byte_size("1MB"), Ok(1_000_000));
    assert_eq!(parse_byte_size("1.5KiB"), Ok(1536));
    assert!(parse_byte_size("1.1KiB").is_err());
    assert!(parse_byte_size("4 MiBs").is_err());
    assert!(parse_byte_size("MiB").is_err());
    assert!(parse_byte_size("").is_err());
    assert!(parse_byte_size("-1").is_err());
    assert!(parse_byte_size("1.2.3").is_err());
    assert!(parse_byte_size("99999999999TiB").is_err());
    assert_eq!(parse_byte_size("16777215TiB"), Ok(16_777_215u64 << 40));
    let e = yaml("audit_manager:\n  http:\n    max_body_bytes: 4XB\n").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("audit_manager.http.max_body_bytes") && msg.contains("4XB"),
        "{msg}"
    );
    let e = yaml("audit_manager:\n  http:\n    max_body_bytes: -5\n").unwrap_err();
    assert!(e.to_string().contains("negative"), "{e}");
}

#[test]
fn durations() {
    let c = yaml(
        "audit_manager:\n  sink:\n    flush_interval: 250ms\n  database:\n    \
         partition_check_interval: 1h 30m\n",
    )
    .unwrap();
    assert_eq!(c.sink.flush_interval, Duration::from_millis(250));
    assert_eq!(
        c.database.partition_check_interval,
        Duration::from_secs(5400)
    );
    let e = yaml("audit_manager:\n  sink:\n    flush_interval: 5\n").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("audit_manager.sink.flush_interval") && msg.contains("unit"),
        "{msg}"
    );
    let e = with_env(&[("AUDIT_MANAGER__SPOOL__RETRY_AFTER", "soon")]).unwrap_err();
    assert!(
        e.to_string().contains("AUDIT_MANAGER__SPOOL__RETRY_AFTER"),
        "{e}"
    );
    let s = SpoolConfig {
        retry_after: Duration::from_secs(3),
        ..SpoolConfig::default()
    };
    assert_eq!(s.retry_after_secs(), 3);
}

#[test]
fn roles_list_and_comma_string() {
    let c = yaml("audit_manager:\n  roles: [forward, ingest, forward]\n").unwrap();
    assert_eq!(c.roles, vec![Role::Forward, Role::Ingest]);
    let c = with_env(&[("AUDIT_MANAGER__ROLES", "ingest, forward,ingest")]).unwrap();
    assert_eq!(c.roles, vec![Role::Ingest, Role::Forward]);
    let c = yaml("audit_manager:\n  roles: sink,maintain\n").unwrap();
    assert_eq!(c.roles, vec![Role::Sink, Role::Maintain]);
    let e = with_env(&[("AUDIT_MANAGER__ROLES", "")]).unwrap_err();
    assert!(matches!(e, ConfigError::Invalid { ref key, .. } if key == "audit_manager.roles"));
    let e = yaml("audit_manager:\n  roles: []\n").unwrap_err();
    assert!(e.to_string().contains("at least one role"), "{e}");
    let e = yaml("audit_manager:\n  roles: [ingest, sinks]\n").unwrap_err();
    assert!(e.to_string().contains("unknown role `sinks`"), "{e}");
    assert_eq!("Maintain".parse::<Role>(), Ok(Role::Maintain));
    assert!("x".parse::<Role>().is_err());
    assert_eq!(Role::Forward.to_string(), "forward");
}

#[test]
fn database_env_precedence_and_encoding() {
    let y =
        "audit_manager:\n  database:\n    url: postgres://yu:yp@yhost:6000/ydb?sslmode=require\n";
    // DB_* compose from the YAML url's missing parts.
    let c = Config::from_yaml_str(
        y,
        &env(&[
            ("DB_USER", "a@b"),
            ("DB_PASSWORD", "p:/?# ü"),
            ("DB_HOST", "h"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.database.url,
        "postgres://a%40b:p%3A%2F%3F%23%20%C3%BC@h:6000/ydb?sslmode=require"
    );
    // Without a YAML url: the built-in defaults; no password unless given.
    let c = with_env(&[("DB_NAME", "other")]).unwrap();
    assert_eq!(c.database.url, "postgres://postgres@localhost:5432/other");
    let c = with_env(&[("DB_PORT", "6432"), ("DB_PASSWORD", "s3cret")]).unwrap();
    assert_eq!(
        c.database.url,
        "postgres://postgres:s3cret@localhost:6432/auditmanager"
    );
    // DATABASE_URL beats DB_*.
    let c = Config::from_yaml_str(
        y,
        &env(&[("DB_HOST", "h"), ("DATABASE_URL", "postgres://d@dh/dd")]),
    )
    .unwrap();
    assert_eq!(c.database.url, "postgres://d@dh/dd");
    // AUDIT_MANAGER__DATABASE__URL beats everything.
    let c = Config::from_yaml_str(
        y,
        &env(&[
            ("AUDIT_MANAGER__DATABASE__URL", "postgres://top@t/t"),
            ("DB_HOST", "h"),
            ("DATABASE_URL", "postgres://d@dh/dd"),
        ]),
    )
    .unwrap();
    assert_eq!(c.database.url, "postgres://top@t/t");
    // Without any: YAML.
    assert_eq!(
        yaml(y).unwrap().database.url,
        "postgres://yu:yp@yhost:6000/ydb?sslmode=require"
    );
    let e = with_env(&[("DB_PORT", "abc")]).unwrap_err();
    assert!(
        matches!(e, ConfigError::Env { ref name, .. } if name == "DB_PORT"),
        "{e:?}"
    );
    let c = with_env(&[("DB_HOST", "::1")]).unwrap();
    assert_eq!(
        c.database.url,
        "postgres://postgres@[::1]:5432/auditmanager"
    );
}

#[test]
fn pg_url_parsing() {
    // DB_* replace single parts of the lower layers' URL and keep the rest (IPv6 host, query).
    let y = "audit_manager:\n  database:\n    url: postgresql://u:p@[::1]:5433/db?x=1\n";
    let c = Config::from_yaml_str(y, &env(&[("DB_NAME", "other")])).unwrap();
    assert_eq!(c.database.url, "postgresql://u:p@[::1]:5433/other?x=1");
    let y = "audit_manager:\n  database:\n    url: postgres://h\n";
    let c = Config::from_yaml_str(y, &env(&[("DB_USER", "x")])).unwrap();
    assert_eq!(c.database.url, "postgres://x@h:5432/auditmanager");
    // A URL that does not parse contributes nothing: the built-in parts are used.
    let y = "audit_manager:\n  database:\n    url: garbage\n";
    let c = Config::from_yaml_str(y, &env(&[("DB_PASSWORD", "pw")])).unwrap();
    assert_eq!(
        c.database.url,
        "postgres://postgres:pw@localhost:5432/auditmanager"
    );
}

#[test]
fn redacted_json_hides_secrets() {
    let c = Config::from_yaml_str(
        r#"
audit_manager:
  database:
    url: "postgres://user:hunter2@db:5432/x?sslmode=require&password=hunter3"
  kafka:
    producer:
      sasl.password: hunter4
      sasl.oauthbearer.config: "principal=hunter5"
      ssl.key.location: /k
      ssl.key.pem: "-----BEGIN PRIVATE KEY-----hunter8"
      ssl.keystore.password: hunter9
      acks: all
    consumer:
      sasl.password: hunter6
      ssl.key.password: hunter7
"#,
        &[],
    )
    .unwrap();
    let j = c.redacted_json();
    let text = j.to_string();
    for s in [
        "hunter2", "hunter3", "hunter4", "hunter5", "hunter6", "hunter7", "hunter8", "hunter9",
        "/k",
    ] {
        assert!(!text.contains(s), "{s} leaked: {text}");
    }
    assert_eq!(
        j["database"]["url"],
        "postgres://user:***@db:5432/x?sslmode=require&password=***"
    );
    assert_eq!(j["kafka"]["producer"]["acks"], "all");
    assert_eq!(j["kafka"]["producer"]["sasl.password"], "***");
    assert_eq!(j["http"]["max_body_bytes"], 4_194_304);
    assert_eq!(j["spool"]["retry_after"], "1s");
    assert_eq!(j["sink"]["flush_interval"], "200ms");
    assert_eq!(
        j["roles"],
        serde_json::json!(["ingest", "forward", "sink", "maintain"])
    );
    assert_eq!(j["http"]["listen"], "0.0.0.0:8000");
}

#[test]
fn redact_url_forms() {
    assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
    assert_eq!(redact_url("postgres://u:p@h/d"), "postgres://u:***@h/d");
    assert_eq!(redact_url("postgres://u:p/@x@h/d"), "postgres://u:***@h/d");
    assert_eq!(
        redact_url("postgres://h/d?sslmode=disable"),
        "postgres://h/d?sslmode=disable"
    );
    // libpq's settings are shown, anything else is masked (a misspelt password too).
    assert_eq!(
        redact_url(
            "postgres://h/d?sslmode=verify-full&sslrootcert=/tls/ca.pem&sslpassword=a&pasword=b"
        ),
        "postgres://h/d?sslmode=verify-full&sslrootcert=/tls/ca.pem&sslpassword=***&pasword=***"
    );
    assert_eq!(
        redact_url("host=h password=pw user=u"),
        "host=h password=*** user=u"
    );
}

#[test]
fn debug_hides_password() {
    let mut c = Config::default();
    c.database.url = "postgres://user:topsecret@db/x".into();
    c.kafka
        .producer
        .insert("sasl.password".into(), "kafkasecret".into());
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("topsecret") && !dbg.contains("kafkasecret"),
        "{dbg}"
    );
    assert!(dbg.contains("postgres://user:***@db/x"), "{dbg}");
    assert!(format!("{:#?}", c.database).contains("partition_retention_months"));
}

#[test]
fn validate_errors() {
    fn check(mutate: impl FnOnce(&mut Config), key: &str) {
        let mut c = Config::default();
        mutate(&mut c);
        match c.validate() {
            Err(ConfigError::Invalid { key: k, message }) => {
                assert_eq!(k, key, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("expected error for {key}, got {other:?}"),
        }
    }
    check(|c| c.roles.clear(), "audit_manager.roles");
    check(
        |c| c.ingest.max_batch_size = 0,
        "audit_manager.ingest.max_batch_size",
    );
    check(
        |c| c.http.max_body_bytes = 0,
        "audit_manager.http.max_body_bytes",
    );
    check(
        |c| c.ingest.max_event_bytes = 0,
        "audit_manager.ingest.max_event_bytes",
    );
    check(|c| c.spool.max_bytes = 0, "audit_manager.spool.max_bytes");
    check(
        |c| c.spool.max_pending_appends = 0,
        "audit_manager.spool.max_pending_appends",
    );
    check(|c| c.kafka.topic = " ".into(), "audit_manager.kafka.topic");
    check(
        |c| c.kafka.dlq_topic.clear(),
        "audit_manager.kafka.dlq_topic",
    );
    check(
        |c| c.kafka.dlq_topic = c.kafka.topic.clone(),
        "audit_manager.kafka.dlq_topic",
    );
    check(
        |c| c.kafka.topic_partitions = 0,
        "audit_manager.kafka.topic_partitions",
    );
    check(
        |c| c.kafka.topic_replication = 0,
        "audit_manager.kafka.topic_replication",
    );
    check(
        |c| c.sink.batch_max_records = 0,
        "audit_manager.sink.batch_max_records",
    );
    check(
        |c| c.database.partition_pre_create_months = 0,
        "audit_manager.database.partition_pre_create_months",
    );
    // load* validates too.
    let e = with_env(&[("AUDIT_MANAGER__SINK__BATCH_MAX_RECORDS", "0")]).unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The reference service's configuration
// ---------------------------------------------------------------------------------------------

const REFERENCE_YAML: &str = include_str!("../../tests/fixtures/reference-default.yaml");

fn notice<'a>(notices: &'a [Notice], key: &str) -> &'a Notice {
    notices
        .iter()
        .find(|n| n.key == key)
        .unwrap_or_else(|| panic!("no notice for {key}: {notices:?}"))
}

#[test]
fn reference_default_yaml_loads_and_maps_to_our_keys() {
    let (c, notices) = build(REFERENCE_YAML, "reference.yaml", &[]).unwrap();
    assert_eq!(c.service_id, "openg2p.auditmanager");
    assert_eq!(c.api_version, "1.0");
    assert_eq!(c.kafka.topic, "openg2p.audit.events");
    assert_eq!(c.kafka.consumer_group, "openg2p-audit-consumer");
    // Producer: underscores become librdkafka's dots; acks kept at all.
    assert_eq!(c.kafka.producer["acks"], "all");
    assert_eq!(c.kafka.producer["linger.ms"], "5");
    assert_eq!(c.kafka.producer["compression.type"], "gzip");
    assert_eq!(c.kafka.producer["batch.size"], "16384");
    assert_eq!(c.kafka.producer.len(), 4, "{:?}", c.kafka.producer);
    // Consumer: batching goes to the sink, auto commit stays off.
    assert_eq!(c.kafka.consumer["auto.offset.reset"], "earliest");
    assert_eq!(c.kafka.consumer.len(), 1, "{:?}", c.kafka.consumer);
    assert_eq!(c.sink.batch_max_records, 500);
    assert_eq!(c.sink.flush_interval, Duration::from_secs(1));
    assert_eq!(c.spool.max_pending_appends, 10_000);
    assert_eq!(
        c.database.partition_check_interval,
        Duration::from_secs(3600)
    );
    assert_eq!(
        c.database.url,
        "postgresql://postgres:postgres@localhost:5432/auditmanager"
    );

    let acks = notice(&notices, "audit_manager.kafka.producer.acks");
    assert!(acks.warning);
    assert!(
        acks.message
            .contains(r#"= "1" (in reference.yaml) is kept at "all""#)
            && acks.message.contains("in-sync replica"),
        "{}",
        acks.message
    );
    let commit = notice(&notices, "audit_manager.kafka.consumer.enable_auto_commit");
    assert!(commit.warning);
    assert!(
        commit.message.contains("kept false") && commit.message.contains("database commit"),
        "{}",
        commit.message
    );
    let queue = notice(&notices, "audit_manager.ingest.queue_max_size");
    assert!(!queue.warning);
    assert!(
        queue.message.contains("spool.max_pending_appends"),
        "{}",
        queue.message
    );
    // Only the two deliberate differences are warnings.
    assert_eq!(
        notices.iter().filter(|n| n.warning).count(),
        2,
        "{notices:?}"
    );
}

#[test]
fn reference_keys_from_the_environment_name_the_variable() {
    let (c, notices) = build(
        "",
        "built-in defaults",
        &env(&[
            ("AUDIT_MANAGER__SERVICE_ID", "my.audit"),
            ("AUDIT_MANAGER__API_VERSION", "2.1"),
            ("AUDIT_MANAGER__KAFKA__PRODUCER__ACKS", "1"),
            ("AUDIT_MANAGER__KAFKA__PRODUCER__LINGER_MS", "20"),
            ("AUDIT_MANAGER__KAFKA__PRODUCER__MAX_BATCH_SIZE", "100"),
            ("AUDIT_MANAGER__KAFKA__CONSUMER__ENABLE_AUTO_COMMIT", "True"),
            ("AUDIT_MANAGER__KAFKA__CONSUMER__BATCH_MAX_RECORDS", "42"),
            ("AUDIT_MANAGER__KAFKA__CONSUMER__FLUSH_INTERVAL_MS", "250"),
            ("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE", "7"),
            (
                "AUDIT_MANAGER__DATABASE__PARTITION_CHECK_INTERVAL_SECONDS",
                "60",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(
        (c.service_id.as_str(), c.api_version.as_str()),
        ("my.audit", "2.1")
    );
    assert_eq!(c.kafka.producer["acks"], "all");
    assert_eq!(c.kafka.producer["linger.ms"], "20");
    assert_eq!(c.kafka.producer["batch.size"], "100");
    assert!(c.kafka.consumer.is_empty(), "{:?}", c.kafka.consumer);
    assert_eq!(c.sink.batch_max_records, 42);
    assert_eq!(c.sink.flush_interval, Duration::from_millis(250));
    assert_eq!(c.spool.max_pending_appends, 7);
    assert_eq!(c.database.partition_check_interval, Duration::from_secs(60));
    let acks = notice(&notices, "audit_manager.kafka.producer.acks");
    assert!(
        acks.message
            .contains("set by environment variable AUDIT_MANAGER__KAFKA__PRODUCER__ACKS"),
        "{}",
        acks.message
    );
    let commit = notice(&notices, "audit_manager.kafka.consumer.enable_auto_commit");
    assert!(
        commit.message.contains(
            "set by environment variable AUDIT_MANAGER__KAFKA__CONSUMER__ENABLE_AUTO_COMMIT"
        ),
        "{}",
        commit.message
    );
    // Safe values give no warning.
    let (_, notices) = build(
        "audit_manager:\n  kafka:\n    producer: {acks: all}\n    consumer: \
         {enable_auto_commit: false}\n",
        "YAML input",
        &[],
    )
    .unwrap();
    assert!(notices.iter().all(|n| !n.warning), "{notices:?}");
}

#[test]
fn our_key_wins_over_the_reference_spelling_with_a_warning() {
    let (c, notices) = build(
        "audit_manager:\n  ingest:\n    queue_max_size: 5\n  spool:\n    \
         max_pending_appends: 9\n  sink:\n    flush_interval: 2s\n  kafka:\n    consumer:\n      \
         flush_interval_ms: 10\n",
        "YAML input",
        &env(&[(
            "AUDIT_MANAGER__DATABASE__PARTITION_CHECK_INTERVAL_SECONDS",
            "60",
        )]),
    )
    .unwrap();
    assert_eq!(c.spool.max_pending_appends, 9);
    assert_eq!(c.sink.flush_interval, Duration::from_secs(2));
    assert_eq!(c.database.partition_check_interval, Duration::from_secs(60));
    let n = notice(&notices, "audit_manager.ingest.queue_max_size");
    assert!(n.warning && n.message.contains("spool.max_pending_appends is used"));
    let n = notice(&notices, "audit_manager.kafka.consumer.flush_interval_ms");
    assert!(n.warning && n.message.contains("sink.flush_interval is used"));
}

#[test]
fn reference_key_errors_name_the_key_and_its_origin() {
    let e = with_env(&[("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE", "lots")]).unwrap_err();
    match &e {
        ConfigError::Invalid { key, message } => {
            assert_eq!(key, "audit_manager.ingest.queue_max_size");
            assert!(
                message.contains("whole number")
                    && message.contains("AUDIT_MANAGER__INGEST__QUEUE_MAX_SIZE"),
                "{message}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let e = yaml("audit_manager:\n  database:\n    partition_check_interval_seconds: -5\n")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("audit_manager.database.partition_check_interval_seconds")
            && e.to_string().contains("out of range"),
        "{e}"
    );
    let e = yaml("audit_manager:\n  kafka:\n    consumer:\n      flush_interval_ms: soon\n")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("audit_manager.kafka.consumer.flush_interval_ms")
            && e.to_string().contains("milliseconds")
            && e.to_string().contains("YAML input"),
        "{e}"
    );
}

#[test]
fn typos_of_reference_keys_are_still_errors() {
    let e = yaml("audit_manager:\n  service_idd: x\n").unwrap_err();
    assert!(
        matches!(e, ConfigError::UnknownKey { ref key, ref expected, .. }
            if key == "audit_manager.service_idd" && expected.contains("service_id")),
        "{e:?}"
    );
    let e = yaml("audit_manager:\n  ingest:\n    queue_max_sizes: 5\n").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("unknown key audit_manager.ingest.queue_max_sizes in YAML input"),
        "{e}"
    );
    let e = with_env(&[(
        "AUDIT_MANAGER__DATABASE__PARTITION_CHECK_INTERVAL_SECOND",
        "5",
    )])
    .unwrap_err();
    assert!(
        matches!(e, ConfigError::UnknownKey { ref origin, .. }
            if origin == "environment variable \
                AUDIT_MANAGER__DATABASE__PARTITION_CHECK_INTERVAL_SECOND"),
        "{e:?}"
    );
}

#[test]
fn uvicorn_host_and_port_set_the_listener_when_nothing_else_does() {
    let uv = [("UVICORN_HOST", "127.0.0.1"), ("UVICORN_PORT", "9001")];
    let c = with_env(&uv).unwrap();
    assert_eq!(
        c.http.listen,
        "127.0.0.1:9001".parse::<SocketAddr>().unwrap()
    );
    let c = with_env(&[("UVICORN_PORT", "9002")]).unwrap();
    assert_eq!(c.http.listen, "0.0.0.0:9002".parse::<SocketAddr>().unwrap());
    let c = with_env(&[("UVICORN_HOST", "::1")]).unwrap();
    assert_eq!(c.http.listen, "[::1]:8000".parse::<SocketAddr>().unwrap());
    let c = Config::from_yaml_str(
        "audit_manager:\n  http:\n    listen: 127.0.0.1:7000\n",
        &env(&uv),
    )
    .unwrap();
    assert_eq!(c.http.listen.port(), 7000, "the file wins");
    let mut both = env(&uv);
    both.push((
        "AUDIT_MANAGER__HTTP__LISTEN".into(),
        "127.0.0.1:7001".into(),
    ));
    assert_eq!(with_env_vec(&both).unwrap().http.listen.port(), 7001);
    let e = with_env(&[("UVICORN_PORT", "http")]).unwrap_err();
    assert!(
        e.to_string().contains("audit_manager.http.listen")
            && e.to_string().contains("UVICORN_HOST/UVICORN_PORT"),
        "{e}"
    );
}

fn with_env_vec(env: &[(String, String)]) -> Result<Config, ConfigError> {
    Config::from_yaml_str("", env)
}

#[test]
fn redacted_json_shows_the_reference_keys_with_effective_values() {
    let c = with_env(&[
        ("AUDIT_MANAGER__SPOOL__MAX_PENDING_APPENDS", "123"),
        ("AUDIT_MANAGER__DATABASE__PARTITION_CHECK_INTERVAL", "90s"),
        ("AUDIT_MANAGER__SERVICE_ID", "x.audit"),
    ])
    .unwrap();
    let j = c.redacted_json();
    assert_eq!(j["service_id"], "x.audit");
    assert_eq!(j["api_version"], "1.0");
    assert_eq!(j["ingest"]["queue_max_size"], 123);
    assert_eq!(j["database"]["partition_check_interval_seconds"], 90);
    assert_eq!(j["database"]["partition_check_interval"], "1m 30s");
}

#[test]
fn build_identity_and_driver_suffix_from_the_reference_environment() {
    let c = with_env(&[
        ("GIT_COMMIT", "abc123"),
        ("BUILD_TIME", "2026-01-01T00:00:00Z"),
    ])
    .unwrap();
    assert_eq!(c.build_info.git_commit.as_deref(), Some("abc123"));
    assert_eq!(
        c.build_info.build_time.as_deref(),
        Some("2026-01-01T00:00:00Z")
    );
    assert_eq!(Config::default().build_info, BuildInfo::default());
    let (c, notices) = build(
        "",
        "x",
        &env(&[("DATABASE_URL", "postgresql+asyncpg://u:pw@db:5432/audit")]),
    )
    .unwrap();
    assert_eq!(c.database.url, "postgresql://u:pw@db:5432/audit");
    assert!(
        !notice(&notices, "audit_manager.database.url")
            .message
            .contains("pw")
    );
    let e = with_env(&[("DATABASE_URL", "mysql://db/x")]).unwrap_err();
    assert!(
        matches!(e, ConfigError::Invalid { ref key, .. } if key == "audit_manager.database.url"),
        "{e:?}"
    );
}

#[test]
fn auth_and_tls_validation_names_what_to_set() {
    fn err(y: &str) -> String {
        match yaml(y) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected an error for {y}"),
        }
    }
    let e = err("audit_manager:\n  auth:\n    mode: token\n");
    assert!(e.contains("auth.tokens_file"), "{e}");
    let e = err("audit_manager:\n  auth:\n    mode: mtls\n    tokens_file: /t.yaml\n");
    assert!(e.contains("http.tls.cert_file"), "{e}");
    let e = err(
        "audit_manager:\n  auth:\n    mode: mtls\n    tokens_file: /t.yaml\n  http:\n    tls:\n      \
         cert_file: /c.pem\n      key_file: /k.pem\n",
    );
    assert!(e.contains("http.tls.client_ca_file"), "{e}");
    let e = err("audit_manager:\n  http:\n    tls:\n      cert_file: /c.pem\n");
    assert!(e.contains("http.tls.key_file"), "{e}");
    let e = err(
        "audit_manager:\n  http:\n    tls:\n      cert_file: /c.pem\n      key_file: /k.pem\n      \
         client_ca_file: /ca.pem\n",
    );
    assert!(e.contains("auth.mode: mtls"), "{e}");
    let e = err("audit_manager:\n  auth:\n    mode: tokens\n");
    assert!(e.contains("auth.mode"), "{e}");
    let e = err("audit_manager:\n  auth:\n    token_file: /t.yaml\n");
    assert!(e.contains("audit_manager.auth.token_file"), "{e}");
    let c = yaml(
        "audit_manager:\n  auth:\n    mode: mtls\n    tokens_file: /t.yaml\n  http:\n    tls:\n      \
         cert_file: /c.pem\n      key_file: /k.pem\n      client_ca_file: /ca.pem\n",
    )
    .unwrap();
    assert_eq!(c.auth.mode, AuthMode::Mtls);
    let c = with_env(&[
        ("AUDIT_MANAGER__AUTH__MODE", "token"),
        ("AUDIT_MANAGER__AUTH__TOKENS_FILE", "/etc/audit/tokens.yaml"),
    ])
    .unwrap();
    assert_eq!(c.auth.mode, AuthMode::Token);
    assert_eq!(
        c.auth.tokens_file.as_deref(),
        Some(Path::new("/etc/audit/tokens.yaml"))
    );
}

#[test]
fn http_listener_bounds_defaults_overrides_and_refusals() {
    let d = HttpConfig::default();
    assert_eq!(d.header_timeout, Duration::from_secs(10));
    assert_eq!(d.body_timeout, Duration::from_secs(30));
    assert_eq!(d.max_connections, 10_000);
    assert_eq!(d.shutdown_grace, Duration::from_secs(20));
    let c = with_env(&[
        ("AUDIT_MANAGER__HTTP__HEADER_TIMEOUT", "2s"),
        ("AUDIT_MANAGER__HTTP__BODY_TIMEOUT", "1m"),
        ("AUDIT_MANAGER__HTTP__MAX_CONNECTIONS", "64"),
        ("AUDIT_MANAGER__HTTP__SHUTDOWN_GRACE", "0s"),
    ])
    .unwrap();
    assert_eq!(c.http.header_timeout, Duration::from_secs(2));
    assert_eq!(c.http.body_timeout, Duration::from_secs(60));
    assert_eq!(c.http.max_connections, 64);
    // No grace: cut at once.
    assert_eq!(c.http.shutdown_grace, Duration::ZERO);
    for (var, zero, key, why) in [
        (
            "AUDIT_MANAGER__HTTP__HEADER_TIMEOUT",
            "0s",
            "http.header_timeout",
            "longer than 0s",
        ),
        (
            "AUDIT_MANAGER__HTTP__BODY_TIMEOUT",
            "0s",
            "http.body_timeout",
            "longer than 0s",
        ),
        (
            "AUDIT_MANAGER__HTTP__MAX_CONNECTIONS",
            "0",
            "http.max_connections",
            "at least 1",
        ),
    ] {
        let e = with_env(&[(var, zero)]).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(why), "{e}");
    }
}

#[test]
fn loaded_secret_values_are_masked_in_any_text() {
    Config::from_yaml_str(
        r#"
audit_manager:
  database:
    url: "postgres://u:pa%24%24word-1@db:5432/x?sslmode=require&password=query-secret-2"
  kafka:
    producer:
      security.protocol: sasl_ssl
      sasl.mechanism: OAUTHBEARER
      sasl.oauthbearer.config: "principal=audit extension_x=oauth\"secret-3"
      enable.sasl.oauthbearer.unsecure.jwt: "false"
      ssl.key.location: /etc/tls/client.key
"#,
        &[],
    )
    .unwrap();
    let text = "pw pa$$word-1 raw pa%24%24word-1 query query-secret-2 \
                quoted at: extension_x=oauth\"secret-3 json x=oauth\\\"secret-3 flag false \
                path /etc/tls/client.key";
    let scrubbed = redact::scrub(text);
    for secret in [
        "pa$$word-1",
        "pa%24%24word-1",
        "query-secret-2",
        "oauth\"secret-3",
        "oauth\\\"secret-3",
    ] {
        assert!(!scrubbed.contains(secret), "{secret}: {scrubbed}");
    }
    // Choices and file paths are not secrets: the log keeps them.
    for kept in ["flag false", "path /etc/tls/client.key", "extension_x="] {
        assert!(scrubbed.contains(kept), "{kept}: {scrubbed}");
    }
}

#[test]
fn target_postgres_drops_the_sink_from_the_default_roles_and_refuses_it_when_listed() {
    let c = yaml("audit_manager:\n  forward:\n    target: postgres\n").unwrap();
    assert_eq!(c.forward.target, ForwardTarget::Postgres);
    assert_eq!(c.roles, [Role::Ingest, Role::Forward, Role::Maintain]);
    let c = with_env(&[("AUDIT_MANAGER__FORWARD__TARGET", "postgres")]).unwrap();
    assert_eq!(c.roles, [Role::Ingest, Role::Forward, Role::Maintain]);
    let e = yaml(
        "audit_manager:\n  roles: [ingest, forward, sink]\n  forward:\n    target: postgres\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Remove `sink` from roles"), "{e}");
    let e = yaml("audit_manager:\n  forward:\n    target: postgress\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("postgress"), "{e}");
    assert_eq!(Config::default().forward.target, ForwardTarget::Kafka);
}

#[test]
fn privacy_rules_are_checked_at_load_naming_the_rule() {
    fn refused(rules: &str, keys: &str) -> (String, String) {
        let text = format!("audit_manager:\n  privacy:\n{keys}    rules:\n{rules}");
        match yaml(&text) {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("expected the rule refused, got {other:?}"),
        }
    }
    let hmac = "    hmac_key_file: /k/hmac\n";
    let (key, message) = refused(
        "      - {name: phone, select: \"$.data[?@.x==\", action: drop}\n",
        "",
    );
    assert_eq!(key, "audit_manager.privacy.rules[0].select");
    assert!(
        message.contains("\"phone\"") && message.contains("RFC 9535"),
        "{message}"
    );
    let (key, message) = refused(
        "      - {select: $.data.a, action: drop}\n      - {select: $.data.b, action: encrypt, subject: $.data.id}\n",
        hmac,
    );
    assert_eq!(key, "audit_manager.privacy.rules[1].action");
    assert!(
        message.contains("rule-1") && message.contains("keeper"),
        "{message}"
    );
    let (key, _) = refused(
        "      - {select: $.data.a, action: encrypt, subject: \"$[\"}\n",
        "    hmac_key_file: /k/hmac\n    keeper_public_key_file: /k/keeper.pub\n",
    );
    assert_eq!(key, "audit_manager.privacy.rules[0].subject");
    let (key, _) = refused("      - {select: $.data.a, action: mask}\n", "");
    assert_eq!(key, "audit_manager.privacy.rules[0].keep_last");
    let (key, _) = refused("      - {select: $.data.a, action: pseudonymise}\n", "");
    assert_eq!(key, "audit_manager.privacy.rules[0].action");
    let (key, _) = refused(
        "      - {name: a, select: $.data.a, action: drop}\n      - {name: a, select: $.data.b, action: drop}\n",
        "",
    );
    assert_eq!(key, "audit_manager.privacy.rules[1].name");
    // Well-formed rules load without the key files being read (that happens at startup).
    yaml(&format!(
        "audit_manager:\n  privacy:\n{hmac}    keeper_public_key_file: /k/keeper.pub\n    rules:\n      - {{select: $.data.a, action: encrypt, subject: $.data.id}}\n"
    ))
    .unwrap();
}
