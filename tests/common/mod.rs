//! Shared harness for integration tests: in-process servers, child processes, event builders.
#![allow(dead_code)]

pub mod kafka;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use audit_manager::config::{Config, Role};
use audit_manager::serve::{self, Running, StartOptions};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const BASE: &str = "/v1/auditmanager";

/// A service started in this test process on a random port with a fresh spool.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
}

impl TestApp {
    /// Ingest only, defaults otherwise.
    pub async fn start() -> TestApp {
        TestApp::start_with(|_| {}, StartOptions::default()).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config), opts: StartOptions) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        TestApp::start_in(dir, tweak, opts).await
    }

    /// Starts on the spool under `dir` (reused across restarts).
    pub async fn start_in(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
        opts: StartOptions,
    ) -> TestApp {
        let mut config = Config {
            roles: vec![Role::Ingest],
            ..Config::default()
        };
        config.http.listen = "127.0.0.1:0".parse().expect("addr");
        config.spool.path = dir.path().join("spool");
        config.spool.retry_after = Duration::from_secs(1);
        tweak(&mut config);
        let running = serve::start(config, CancellationToken::new(), opts)
            .await
            .expect("service starts");
        TestApp {
            addr: running.addr,
            client: reqwest::Client::new(),
            dir,
            running: Some(running),
        }
    }

    /// Ingest + forward against the Kafka at `bootstrap`, with short retry timings.
    pub async fn with_kafka(bootstrap: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let opts = StartOptions {
            forward: Some(kafka::fast_settings()),
            ..StartOptions::default()
        };
        TestApp::start_with(
            |c| {
                kafka::forwarding(c, bootstrap);
                tweak(c);
            },
            opts,
        )
        .await
    }

    /// `GET /health`'s per-role report (`response.roles.<role>`).
    pub async fn role_health(&self, role: &str) -> Value {
        let (_, body) = self.get("/health").await;
        body["response"]["roles"][role].clone()
    }

    /// Live events in the spool, from the ingest role's health detail.
    pub async fn spool_events(&self) -> u64 {
        let ingest = self.role_health("ingest").await;
        ingest["spool"]["events"]
            .as_u64()
            .expect("ingest health reports spool.events")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{BASE}{path}", self.addr)
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, "application/json", body.to_string().into_bytes())
            .await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent");
        read(resp).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(self.url(path)).send().await.expect("get");
        read(resp).await
    }

    /// `GET` returning the raw body (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self.client.get(self.url(path)).send().await.expect("get");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// Stops the service, draining it.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }

    /// Stops the service and hands back its directory for a restart.
    pub async fn shutdown(mut self) -> tempfile::TempDir {
        self.stop().await;
        self.dir
    }
}

pub async fn read(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&bytes) }));
    (status, value)
}

/// The first error code of an envelope.
pub fn code(body: &Value) -> &str {
    body["errors"][0]["errorCode"].as_str().unwrap_or("")
}

/// A valid audit event with the given id.
pub fn event(id: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "urn:openg2p:registry",
        "type": "org.openg2p.beneficiary.updated",
        "subject": format!("beneficiary/{id}"),
        "time": "2026-11-01T10:00:00.000Z",
        "data": {
            "actor": {"type": "user", "id": "user-42", "name": "Alice", "roles": ["officer"]},
            "action": "beneficiary.update",
            "outcome": "success",
            "resource": {"type": "beneficiary", "id": "123"},
            "changes": [{"field": "phone", "old": "1", "new": "2"}]
        }
    })
}

/// Runs `audit-manager` with the given arguments and environment; returns (code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_audit-manager"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("CONFIG_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("run audit-manager");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Ids of the events `spool export` prints for the spool in `dir`.
pub fn exported_ids(spool_dir: &Path) -> Vec<String> {
    let dir = spool_dir.to_string_lossy();
    let (code, stdout, stderr) = run_cli(
        &["spool", "export"],
        &[("AUDIT_MANAGER__SPOOL__PATH", dir.as_ref())],
    );
    assert_eq!(code, 0, "spool export failed: {stderr}");
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("export line is JSON");
            v["id"].as_str().expect("id").to_owned()
        })
        .collect()
}

/// `audit-manager serve` as a child process (for kill -9 and SIGTERM tests).
///
/// The child binds port 0 itself and the harness reads the address it got from its
/// "audit-manager listening" log line (`LOG_FORMAT=json`), so no port is ever picked by the
/// test and then raced for. Every line the child writes on stderr is kept ([`ChildServer::log`])
/// and echoed to the test's stderr.
pub struct ChildServer {
    pub child: Child,
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// How long a child may take to open its spool and listen.
const LISTEN_DEADLINE: Duration = Duration::from_secs(60);

impl ChildServer {
    pub fn spawn(spool_dir: &Path, extra_env: &[(&str, &str)]) -> ChildServer {
        ChildServer::spawn_args(&["serve"], spool_dir, extra_env)
    }

    /// [`ChildServer::spawn`] with a configuration file (`--config FILE`).
    pub fn spawn_with_config(
        config: &Path,
        spool_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> ChildServer {
        let config = config.to_string_lossy();
        ChildServer::spawn_args(
            &["--config", config.as_ref(), "serve"],
            spool_dir,
            extra_env,
        )
    }

    fn spawn_args(args: &[&str], spool_dir: &Path, extra_env: &[(&str, &str)]) -> ChildServer {
        use std::io::BufRead as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_audit-manager"))
            .args(args)
            .env("AUDIT_MANAGER__HTTP__LISTEN", "127.0.0.1:0")
            .env("AUDIT_MANAGER__SPOOL__PATH", spool_dir)
            .env("AUDIT_MANAGER__ROLES", "ingest")
            // Warnings, plus the info line that names the bound address.
            .env("RUST_LOG", "warn,audit_manager::serve=info")
            .env("LOG_FORMAT", "json")
            .envs(extra_env.iter().copied())
            .env_remove("CONFIG_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn audit-manager serve");
        let stderr = child.stderr.take().expect("child stderr");
        let log: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let lines = log.clone();
        // Reads until the child closes stderr (it exited), so the pipe never fills up.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[audit-manager {}] {line}", log_level(&line));
                if let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let until = Instant::now() + LISTEN_DEADLINE;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait audit-manager");
                    panic!(
                        "audit-manager exited ({status}) before listening:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
            if Instant::now() >= until {
                let _ = child.kill();
                panic!("audit-manager did not report its address within {LISTEN_DEADLINE:?}");
            }
        };
        ChildServer { child, addr, log }
    }

    /// Waits until `/health` answers, or panics after `deadline`.
    pub async fn wait_ready(&mut self, deadline: Duration) {
        let url = format!("http://{}{BASE}/health", self.addr);
        // Each probe is bounded too, so the deadline holds even if a connection stalls.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("HTTP client");
        let until = Instant::now() + deadline;
        loop {
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("audit-manager exited before becoming ready: {status}");
            }
            assert!(
                Instant::now() < until,
                "audit-manager not ready after {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill9(&mut self) {
        // SIGKILL: no destructor, no flush, no graceful anything.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (the orchestrator's "please stop"); the process drains and exits.
    pub fn terminate(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// Waits for the process to exit and returns its exit code (`None`: killed by a signal),
    /// or panics after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < until,
                "audit-manager still running {deadline:?} after it was asked to stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every line the child has written on stderr so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// The bound address from the "audit-manager listening" JSON log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: Value = serde_json::from_str(line).ok()?;
    if v["message"] != "audit-manager listening" {
        return None;
    }
    v["addr"].as_str()?.parse().ok()
}

/// A short tag for echoed log lines: the level, when the line is JSON.
fn log_level(line: &str) -> String {
    serde_json::from_str::<Value>(line)
        .ok()
        .and_then(|v| v["level"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL, Kafka (mock broker) and a chaos proxy
// ---------------------------------------------------------------------------------------------

/// The test server's admin URL (trust auth on 127.0.0.1:5432 unless $TEST_PG_URL says else).
pub fn pg_admin_url() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh database `audit_test_<random>`, dropped (with its connections) when this is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        use sqlx::{Connection, Executor};
        let name = format!("audit_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg_admin_url()))
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (start it: pg_ctlcluster ... main start)");
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let _ = admin.close().await;
        TestDb {
            url: format!("{}/{name}", pg_admin_url()),
            name,
        }
    }

    /// A name and URL for a database that does not exist yet (dropped at the end if created).
    pub fn unborn() -> TestDb {
        let name = format!("audit_test_{}", uuid::Uuid::new_v4().simple());
        TestDb {
            url: format!("{}/{name}", pg_admin_url()),
            name,
        }
    }

    /// The same database reached through `addr` (e.g. a chaos proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect test db")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::{Connection, Executor};
                if let Ok(mut admin) =
                    sqlx::PgConnection::connect(&format!("{}/postgres", pg_admin_url())).await
                {
                    let _ = admin
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// An in-memory Kafka broker (librdkafka's mock cluster) with the two topics created.
pub struct TestKafka {
    pub cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub bootstrap: String,
}

/// A DLQ record: value and headers (name, value as text).
pub type DlqRecord = (Vec<u8>, Vec<(String, String)>);

#[allow(unused_imports)] // each test binary uses a different subset
pub use kafka::{DLQ_TOPIC, TOPIC, eventually};

impl TestKafka {
    pub fn new(partitions: i32) -> TestKafka {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        cluster
            .create_topic(TOPIC, partitions, 1)
            .expect("create topic");
        cluster.create_topic(DLQ_TOPIC, 1, 1).expect("create dlq");
        let bootstrap = cluster.bootstrap_servers();
        TestKafka { cluster, bootstrap }
    }

    pub fn producer(&self) -> rdkafka::producer::FutureProducer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("enable.idempotence", "true")
            .create()
            .expect("producer")
    }

    /// Produces `value` with `key` to `topic` and waits for the acknowledgement.
    pub async fn produce(
        &self,
        p: &rdkafka::producer::FutureProducer,
        topic: &str,
        key: &str,
        value: &[u8],
    ) {
        let rec = rdkafka::producer::FutureRecord::to(topic)
            .key(key)
            .payload(value);
        p.send(rec, Duration::from_secs(10)).await.expect("produce");
    }

    /// Records of the DLQ topic (value, headers) from its beginning, read by a consumer that
    /// assigns itself every partition (no group join to wait for): returns once `expect` were
    /// read, or what was read by `deadline`.
    pub fn dlq_records(&self, expect: usize, deadline: Duration) -> Vec<DlqRecord> {
        use rdkafka::Message;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Headers;
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "dlq-reader")
            .set("enable.auto.commit", "false")
            .create()
            .expect("dlq consumer");
        let md = c
            .fetch_metadata(Some(DLQ_TOPIC), Duration::from_secs(10))
            .expect("dlq metadata");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(DLQ_TOPIC, p.id(), rdkafka::Offset::Beginning)
                .expect("dlq partition");
        }
        c.assign(&tpl).expect("assign dlq");
        let until = Instant::now() + deadline;
        let mut out = Vec::new();
        while out.len() < expect && Instant::now() < until {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((m.payload().unwrap_or_default().to_vec(), headers));
            }
        }
        out
    }

    /// Records in the DLQ topic now, from its partitions' watermarks (high - low): exact, no
    /// waiting for a consumer to catch up.
    pub fn dlq_len(&self) -> i64 {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("watermark client");
        let md = c
            .fetch_metadata(Some(DLQ_TOPIC), Duration::from_secs(10))
            .expect("dlq metadata");
        md.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let (low, high) = c
                    .fetch_watermarks(DLQ_TOPIC, p.id(), Duration::from_secs(10))
                    .expect("dlq watermarks");
                high - low
            })
            .sum()
    }
}

/// Config for sink/maintain roles against `kafka` and `db_url`, fast batching for tests.
pub fn sink_config(kafka: &TestKafka, db_url: &str, roles: &[Role]) -> Config {
    let mut c = Config {
        roles: roles.to_vec(),
        ..Config::default()
    };
    c.http.listen = "127.0.0.1:0".parse().expect("addr");
    c.kafka.bootstrap_servers = kafka.bootstrap.clone();
    c.kafka
        .consumer
        .insert("session.timeout.ms".into(), "6000".into());
    c.kafka
        .consumer
        .insert("heartbeat.interval.ms".into(), "500".into());
    c.sink.flush_interval = Duration::from_millis(50);
    c.database.url = db_url.into();
    c
}

/// Number of rows in audit_events.
pub async fn count_rows(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

/// Waits up to `deadline` until every id in `acked` is in audit_events, then returns every
/// stored id, having checked that none is stored twice (the guarantee after any crash).
pub async fn every_acked_stored_once(
    pool: &sqlx::PgPool,
    acked: &std::collections::HashSet<String>,
    deadline: Duration,
) -> Vec<String> {
    use std::collections::HashSet;
    let stored: Vec<String> = eventually(deadline, "every acknowledged event stored", || async {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM audit_events")
            .fetch_all(pool)
            .await
            .ok()?;
        let have: HashSet<&str> = ids.iter().map(String::as_str).collect();
        acked
            .iter()
            .all(|id| have.contains(id.as_str()))
            .then_some(ids)
    })
    .await;
    let distinct: HashSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), stored.len(), "an event stored twice");
    stored
}

/// A TCP forwarder that can cut every connection and refuse new ones, then restore service.
pub struct ChaosProxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ChaosProxy {
    pub async fn start(target: SocketAddr) -> ChaosProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if *watch.borrow() {
                    drop(client); // refused while cut
                    continue;
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        ChaosProxy { addr, cut, task }
    }

    /// Closes every proxied connection and refuses new ones.
    pub fn cut(&self) {
        let _ = self.cut.send(true);
    }

    pub fn restore(&self) {
        let _ = self.cut.send(false);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A valid event with the given id and time (RFC 3339).
pub fn event_at(id: &str, time: &str) -> Value {
    let mut e = event(id);
    e["time"] = json!(time);
    e
}

/// Starts `clients` tasks that post 10-event batches (ids `r{round}-c{c}-n{n}-{k}`) to the
/// service at `url` until `stop` is set or the connection dies (the process was killed: that
/// request's outcome is unknown, so it is not counted). Every id answered 202 goes to `acked`;
/// any status other than 202 or 503 fails the test.
pub fn spawn_batch_clients(
    url: &str,
    round: u64,
    clients: usize,
    acked: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    spawn_paced_batch_clients(url, round, clients, Duration::ZERO, acked, stop)
}

/// [`spawn_batch_clients`], each client starting at most one batch of 10 per `every` (none
/// waits when `every` is zero): a load whose rate does not depend on how fast the machine is.
pub fn spawn_paced_batch_clients(
    url: &str,
    round: u64,
    clients: usize,
    every: Duration,
    acked: &std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (url, acked, stop) = (url.to_owned(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut pace = (!every.is_zero()).then(|| {
                    let mut i = tokio::time::interval(every);
                    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    i
                });
                for n in 0.. {
                    if let Some(pace) = pace.as_mut() {
                        pace.tick().await;
                    }
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let ids: Vec<String> =
                        (0..10).map(|k| format!("r{round}-c{c}-n{n}-{k}")).collect();
                    let events: Vec<_> = ids.iter().map(|i| event(i)).collect();
                    let resp = client
                        .post(format!("{url}/events/batch"))
                        .json(&json!({ "events": events }))
                        .send()
                        .await;
                    match resp {
                        Ok(r) if r.status().as_u16() == 202 => acked.lock().unwrap().extend(ids),
                        Ok(r) => assert_eq!(r.status().as_u16(), 503, "unexpected status"),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Systemic failures: a database role of its own, the DLQ's size without a consumer group.

/// A login role of its own that owns the test database (so it can create the schema as the
/// service does), for tests that take privileges away from it. Dropped with what it owns.
pub struct TestRole {
    pub name: String,
    /// `db`'s URL with this role as the user.
    pub url: String,
    db: String,
}

impl TestRole {
    pub async fn new(db: &TestDb) -> TestRole {
        let name = format!("audit_role_{}", uuid::Uuid::new_v4().simple());
        let pool = db.pool().await;
        for stmt in [
            format!("CREATE ROLE {name} LOGIN"),
            format!("ALTER DATABASE {} OWNER TO {name}", db.name),
        ] {
            sqlx::query(&stmt).execute(&pool).await.expect(&stmt);
        }
        pool.close().await;
        let mut url = reqwest::Url::parse(&pg_admin_url()).expect("TEST_PG_URL is a URL");
        url.set_username(&name).expect("user in URL");
        url.set_password(None).expect("no password");
        url.set_path(&db.name);
        TestRole {
            url: url.to_string(),
            name,
            db: db.name.clone(),
        }
    }

    /// Runs `sql` on the role's database as the admin (e.g. a REVOKE or GRANT).
    pub async fn admin(&self, sql: &str) {
        use sqlx::{Connection, Executor};
        let mut c = sqlx::PgConnection::connect(&format!("{}/{}", pg_admin_url(), self.db))
            .await
            .expect("admin connection");
        c.execute(sql).await.expect(sql);
        let _ = c.close().await;
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let (name, db) = (self.name.clone(), self.db.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::{Connection, Executor};
                let admin = format!("{}/postgres", pg_admin_url());
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = c
                        .execute(format!("ALTER DATABASE {db} OWNER TO CURRENT_USER").as_str())
                        .await;
                    let _ = c.close().await;
                }
                if let Ok(mut c) =
                    sqlx::PgConnection::connect(&format!("{}/{db}", pg_admin_url())).await
                {
                    let _ = c
                        .execute(format!("REASSIGN OWNED BY {name} TO CURRENT_USER").as_str())
                        .await;
                    let _ = c.execute(format!("DROP OWNED BY {name}").as_str()).await;
                    let _ = c.close().await;
                }
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = c
                        .execute(format!("DROP ROLE IF EXISTS {name}").as_str())
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}
