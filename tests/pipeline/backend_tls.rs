//! TLS from the service to its backends: PostgreSQL (`sslmode` in `database.url`, against the
//! local server's own certificate) and Kafka (`security.protocol: ssl`, against a loopback TLS
//! listener that reads the client's first Kafka request), and secrets kept out of the logs.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use audit_manager::config::{Config, KafkaConfig};
use audit_manager::store::{ErrorClass, Store};
use common::{ChildServer, TestApp, TestDb, eventually, run_cli};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A server certificate for `names`, PEM (cert, key).
    fn issue(&self, names: &[&str]) -> (String, String) {
        self.issue_for(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A certificate for `names` and `usage`, PEM (cert, key).
    fn issue_for(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate to `dir/name` and returns its path.
    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

/// The certificate file the local server presents (Debian: the snakeoil certificate, issued to
/// `localhost`); the tests need the server to have TLS on.
async fn server_certificate(db: &TestDb) -> PathBuf {
    let pool = db.pool().await;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        ssl, "on",
        "the test PostgreSQL must have ssl = on (Debian's default, with its snakeoil certificate)"
    );
    let file: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    PathBuf::from(file)
}

/// `db`'s URL on `host` with `query` appended.
fn url_on(db: &TestDb, host: &str, query: &str) -> String {
    format!("postgres://postgres@{host}:5432/{}?{query}", db.name)
}

/// Whether the session of a connection from `store` is encrypted, as the server sees it.
async fn session_is_tls(store: &Store) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .expect("pg_stat_ssl")
}

#[tokio::test]
async fn sslmode_require_encrypts_every_kind_of_connection() {
    let db = TestDb::new().await;
    server_certificate(&db).await;
    let url = url_on(&db, "127.0.0.1", "sslmode=require");

    let store = Store::connect_lazy(&url, 2).unwrap();
    store.prepare().await.expect("schema over TLS");
    assert!(session_is_tls(&store).await, "the write pool is not TLS");
    store.close().await;

    let reader = Store::connect_read_only(&url, 1, Duration::from_secs(5)).unwrap();
    assert!(
        session_is_tls(&reader).await,
        "the read-only pool is not TLS"
    );
    reader.close().await;

    // Without TLS the server says so: the check above can fail.
    let plain = Store::connect_lazy(&url_on(&db, "127.0.0.1", "sslmode=disable"), 1).unwrap();
    assert!(!session_is_tls(&plain).await);
    plain.close().await;

    // The commands go through the same options.
    let (code, stdout, stderr) = run_cli(&["partitions", "list"], &[("DATABASE_URL", &url)]);
    assert_eq!(code, 0, "partitions list over TLS failed: {stderr}");
    assert!(stdout.starts_with("partition"), "{stdout}");
}

/// `partitions list` against `url` in its own process, where the system's CAs are replaced by
/// `system_ca` (`SSL_CERT_FILE`): Debian counts its snakeoil certificate among them, which would
/// make any server certificate check pass. Returns (exit code, stderr).
fn partitions_list(url: &str, system_ca: &Path) -> (i32, String) {
    let ca = system_ca.to_string_lossy();
    let (code, _, stderr) = run_cli(
        &["partitions", "list"],
        &[
            ("DATABASE_URL", url),
            ("SSL_CERT_FILE", ca.as_ref()),
            ("SSL_CERT_DIR", ""),
        ],
    );
    (code, stderr)
}

#[tokio::test]
async fn verify_full_trusts_sslrootcert_and_explains_every_refusal() {
    let db = TestDb::new().await;
    let cert = server_certificate(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let unrelated = Ca::new("unrelated CA").write(dir.path(), "unrelated.pem");
    // The server's certificate is self-signed for localhost: it is its own CA.
    let root = cert.to_string_lossy();
    let verify_full = |host: &str, root: &str| {
        url_on(
            &db,
            host,
            &format!("sslmode=verify-full&sslrootcert={root}"),
        )
    };

    let (code, stderr) = partitions_list(&verify_full("localhost", &root), &unrelated);
    assert_eq!(code, 0, "verify-full with the server's CA failed: {stderr}");

    let untrusted = "the server's certificate is not trusted: set sslrootcert=";
    let no_root = url_on(&db, "localhost", "sslmode=verify-full");
    let (code, stderr) = partitions_list(&no_root, &unrelated);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(untrusted), "{stderr}");

    let other_ca = verify_full("localhost", &unrelated.to_string_lossy());
    let (code, stderr) = partitions_list(&other_ca, &unrelated);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(untrusted), "{stderr}");

    let (code, stderr) = partitions_list(&verify_full("127.0.0.1", &root), &unrelated);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not name the host"), "{stderr}");

    let (code, stderr) =
        partitions_list(&verify_full("localhost", "/nonexistent/ca.pem"), &unrelated);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("sslrootcert, sslcert, sslkey) is missing"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_refused_server_certificate_is_a_systemic_error_on_health() {
    let db = TestDb::new().await;
    let cert = server_certificate(&db).await;
    // Trusted (its own CA), but issued to localhost, not 127.0.0.1.
    let url = url_on(
        &db,
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={}", cert.display()),
    );
    let store = Store::connect_lazy(&url, 1).unwrap();
    let err = store.ping().await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Systemic, "{err}");
    let health = store.state().error.unwrap_or_default();
    assert!(health.contains("does not name the host"), "{health}");
    assert!(health.contains("retried until this is fixed"), "{health}");
}

// ---------------------------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------------------------

/// What the loopback TLS listener saw on one connection.
#[derive(Debug)]
enum Seen {
    /// The handshake completed and the client sent this Kafka request.
    Request { api_key: i16, client_id: String },
    /// The handshake failed on the server's side.
    HandshakeFailed(String),
}

/// A TLS listener on 127.0.0.1 with a certificate from `ca`, reading the first Kafka request
/// frame of every connection (size, api_key, api_version, correlation_id, client_id).
async fn tls_listener(ca: &Ca) -> (String, mpsc::UnboundedReceiver<Seen>) {
    tls_listener_with(ca, None).await
}

/// [`tls_listener`] that also requires a client certificate from `client_ca` when given.
async fn tls_listener_with(
    ca: &Ca,
    client_ca: Option<&Ca>,
) -> (String, mpsc::UnboundedReceiver<Seen>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;

    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(client_ca.cert.der().clone()).unwrap();
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(Seen::HandshakeFailed(e.to_string()));
                        return;
                    }
                };
                let Ok(size) = tls.read_i32().await else {
                    return;
                };
                let mut frame = vec![0u8; size.clamp(0, 1 << 20) as usize];
                if tls.read_exact(&mut frame).await.is_err() || frame.len() < 10 {
                    return;
                }
                let api_key = i16::from_be_bytes([frame[0], frame[1]]);
                let id_len = i16::from_be_bytes([frame[8], frame[9]]).max(0) as usize;
                let client_id = frame
                    .get(10..10 + id_len)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let _ = tx.send(Seen::Request { api_key, client_id });
                // Never answers; holds the connection until the client gives up.
                let mut sink = [0u8; 1024];
                while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (format!("127.0.0.1:{}", addr.port()), rx)
}

/// The first request a client sent over a completed handshake (librdkafka starts every
/// connection with ApiVersions, api_key 18).
async fn first_request(seen: &mut mpsc::UnboundedReceiver<Seen>) -> (i16, String) {
    match tokio::time::timeout(WAIT, seen.recv()).await {
        Ok(Some(Seen::Request { api_key, client_id })) => (api_key, client_id),
        Ok(Some(Seen::HandshakeFailed(e))) => panic!("the TLS handshake failed: {e}"),
        Ok(None) | Err(_) => panic!("no Kafka request over TLS within {WAIT:?}"),
    }
}

const API_VERSIONS: i16 = 18;

fn tls_properties(kafka: &mut KafkaConfig, ca: &Path, protocol: &str) {
    for map in [&mut kafka.producer, &mut kafka.consumer] {
        map.insert("security.protocol".into(), protocol.into());
        map.insert("ssl.ca.location".into(), ca.to_string_lossy().into_owned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_completes_a_tls_handshake_and_speaks_kafka_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("kafka test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (bootstrap, mut seen) = tls_listener(&ca).await;

    let app = TestApp::with_kafka(&bootstrap, |c| {
        tls_properties(&mut c.kafka, &ca_file, "ssl");
        c.kafka.client_id = "tls-forwarder".into();
    })
    .await;
    let (api_key, client_id) = first_request(&mut seen).await;
    assert_eq!(api_key, API_VERSIONS);
    assert_eq!(client_id, "tls-forwarder");
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_consumer_and_sasl_ssl_complete_a_tls_handshake() {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("kafka test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");

    for (protocol, sasl) in [("ssl", false), ("sasl_ssl", true)] {
        let (bootstrap, mut seen) = tls_listener(&ca).await;
        let mut config = Config::default();
        config.kafka.bootstrap_servers = bootstrap;
        config.kafka.client_id = format!("tls-sink-{protocol}");
        tls_properties(&mut config.kafka, &ca_file, protocol);
        if sasl {
            for (k, v) in [
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "audit"),
                ("sasl.password", "scram-secret"),
            ] {
                config.kafka.consumer.insert(k.into(), v.into());
                config.kafka.producer.insert(k.into(), v.into());
            }
        }
        config.validate().expect("TLS and SASL settings are valid");
        let consumer: BaseConsumer =
            audit_manager::sink::client::consumer_config(&config.kafka, "tls-test")
                .create()
                .expect("consumer with TLS settings");
        // Makes the client connect; the listener never answers, so this times out.
        let probe = tokio::task::spawn_blocking(move || {
            let _ = consumer.fetch_metadata(None, Duration::from_secs(5));
        });
        let (api_key, client_id) = first_request(&mut seen).await;
        assert_eq!(api_key, API_VERSIONS, "{protocol}");
        assert_eq!(client_id, format!("tls-sink-{protocol}"));
        probe.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_pass_through_to_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("kafka test CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let clients = Ca::new("kafka clients CA");
    let (cert, key) = clients.issue_for(&["audit-manager"], ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(dir.path().join("client.pem"), cert).unwrap();
    std::fs::write(dir.path().join("client.key"), key).unwrap();
    let (bootstrap, mut seen) = tls_listener_with(&ca, Some(&clients)).await;

    let app = TestApp::with_kafka(&bootstrap, |c| {
        tls_properties(&mut c.kafka, &ca_file, "ssl");
        let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        c.kafka
            .producer
            .insert("ssl.certificate.location".into(), file("client.pem"));
        c.kafka
            .producer
            .insert("ssl.key.location".into(), file("client.key"));
        c.kafka.client_id = "mtls-forwarder".into();
    })
    .await;
    // The listener refuses handshakes without a certificate from `clients`.
    let (api_key, client_id) = first_request(&mut seen).await;
    assert_eq!(api_key, API_VERSIONS);
    assert_eq!(client_id, "mtls-forwarder");
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_reported_as_untrusted() {
    let dir = tempfile::tempdir().unwrap();
    let broker_ca = Ca::new("the broker's CA");
    let wrong = Ca::new("some other CA").write(dir.path(), "wrong-ca.pem");
    let (bootstrap, mut seen) = tls_listener(&broker_ca).await;

    let app = TestApp::with_kafka(&bootstrap, |c| {
        tls_properties(&mut c.kafka, &wrong, "ssl");
    })
    .await;
    // The client refuses the handshake ...
    match tokio::time::timeout(WAIT, seen.recv()).await {
        Ok(Some(Seen::HandshakeFailed(_))) => {}
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    // ... and /health says why and what to set.
    let reason = eventually(
        WAIT,
        "forward DEGRADED with the certificate error",
        || async {
            let forward = app.role_health("forward").await;
            let reason = forward["reason"].as_str().unwrap_or_default().to_string();
            reason.contains("certificate").then_some(reason)
        },
    )
    .await;
    assert!(reason.contains("certificate verify failed"), "{reason}");
    assert!(
        reason.contains("the broker's certificate is not trusted: set ssl.ca.location"),
        "{reason}"
    );
    while let Ok(s) = seen.try_recv() {
        assert!(
            !matches!(s, Seen::Request { .. }),
            "a request passed an untrusted handshake"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets in logs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_the_configuration_never_reach_the_log() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let oauth = "oauth-config-Secret-1";
    let sasl = "sasl-Secret-2";
    let key_password = "key-Secret-3";
    let db_password = "db-Secret-4";
    let typo = "typo-Secret-5";
    let url = format!(
        "postgres://postgres:{db_password}@127.0.0.1:5432/{}?sslmode=require&pasword={typo}",
        db.name
    );
    // OAUTHBEARER with the built-in (unsecured) token handler: librdkafka parses
    // sasl.oauthbearer.config when it fetches a token and quotes what it cannot parse.
    let config = format!("principal=audit unknown={oauth}");
    let env: Vec<(&str, &str)> = vec![
        ("AUDIT_MANAGER__ROLES", "ingest,forward,maintain"),
        ("DATABASE_URL", &url),
        ("AUDIT_MANAGER__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9"),
        (
            "AUDIT_MANAGER__KAFKA__PRODUCER__SECURITY_PROTOCOL",
            "sasl_plaintext",
        ),
        (
            "AUDIT_MANAGER__KAFKA__PRODUCER__SASL_MECHANISM",
            "OAUTHBEARER",
        ),
        (
            "AUDIT_MANAGER__KAFKA__PRODUCER__ENABLE_SASL_OAUTHBEARER_UNSECURE_JWT",
            "true",
        ),
        (
            "AUDIT_MANAGER__KAFKA__PRODUCER__SASL_OAUTHBEARER_CONFIG",
            &config,
        ),
        ("AUDIT_MANAGER__KAFKA__PRODUCER__SASL_PASSWORD", sasl),
        (
            "AUDIT_MANAGER__KAFKA__PRODUCER__SSL_KEY_PASSWORD",
            key_password,
        ),
        ("RUST_LOG", "info"),
    ];
    let secrets = [oauth, sasl, key_password, db_password, typo];
    let child = ChildServer::spawn(&dir.path().join("spool"), &env);

    // Wait for the lines that would carry the secrets: librdkafka's complaint about the
    // OAUTHBEARER configuration, and the note about the misspelt URL parameter.
    let lines = eventually(WAIT, "the OAUTHBEARER error and the URL warning", || {
        let log = child.log();
        async move {
            let oauth_error = log.iter().any(|l| l.contains("sasl.oauthbearer.config"));
            let url_warning = log.iter().any(|l| l.contains("`pasword` is not supported"));
            (oauth_error && url_warning).then_some(log)
        }
    })
    .await;
    // GET /config masks them too.
    let body = reqwest::get(format!("http://{}{}/config", child.addr, common::BASE))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for secret in secrets {
        for line in &lines {
            assert!(!line.contains(secret), "{secret} in the log: {line}");
        }
        assert!(!body.contains(secret), "{secret} in GET /config: {body}");
    }
    assert!(
        lines.iter().any(|l| l.contains("***")),
        "the OAUTHBEARER error is logged, masked: {lines:#?}"
    );
    drop(child);

    // A configuration refused at start: the error names the parameter, not its value.
    let refused = [
        (
            "DATABASE_URL",
            format!("{url}&sslkey=/k.pem&sslpassword={key_password}"),
            "sslpassword is not supported",
        ),
        (
            "AUDIT_MANAGER__KAFKA__PRODUCER__SASL_PASWORD",
            sasl.to_string(),
            "kafka.producer.sasl.pasword",
        ),
    ];
    for (name, value, expected) in refused {
        let (code, _, stderr) = run_cli(&["partitions", "list"], &[(name, &value)]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        for secret in secrets {
            assert!(!stderr.contains(secret), "{secret} in: {stderr}");
        }
    }
}
