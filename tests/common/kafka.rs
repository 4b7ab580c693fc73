//! Kafka for tests: librdkafka's in-process mock cluster, a topic reader, forwarder settings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use audit_manager::config::{Config, Role};
use audit_manager::forward::ForwardSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

pub const TOPIC: &str = "openg2p.audit.events";
pub const DLQ_TOPIC: &str = "openg2p.audit.dlq";

/// A mock cluster owned by the test (so the test can take its brokers down).
pub struct MockKafka {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
    pub brokers: i32,
}

impl MockKafka {
    pub fn new(brokers: i32, partitions: i32) -> MockKafka {
        let cluster = MockCluster::new(brokers).expect("mock cluster");
        for t in [TOPIC, DLQ_TOPIC] {
            cluster
                .create_topic(t, partitions, brokers.min(3))
                .expect("create topic");
        }
        let bootstrap = cluster.bootstrap_servers();
        MockKafka {
            cluster,
            bootstrap,
            brokers,
        }
    }

    /// Takes every broker down (connections cut, new ones refused). Broker ids start at 1.
    pub fn all_down(&self) {
        for b in 1..=self.brokers {
            self.cluster.broker_down(b).expect("broker down");
        }
    }

    pub fn all_up(&self) {
        for b in 1..=self.brokers {
            self.cluster.broker_up(b).expect("broker up");
        }
    }
}

/// Short timings so outages and retries play out within a test's budget.
pub fn fast_settings() -> ForwardSettings {
    ForwardSettings {
        retry_backoff_min: Duration::from_millis(50),
        retry_backoff_max: Duration::from_millis(500),
        flush_timeout: Duration::from_secs(2),
        message_timeout: Duration::from_secs(3),
        ..ForwardSettings::default()
    }
}

/// Config tweak: ingest + forward against `bootstrap`.
pub fn forwarding(c: &mut Config, bootstrap: &str) {
    c.roles = vec![Role::Ingest, Role::Forward];
    c.kafka.bootstrap_servers = bootstrap.to_string();
    c.kafka.topic_partitions = 3;
}

/// One record read back from the topic.
#[derive(Debug, Clone)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub content_type: Option<String>,
    pub value: Value,
}

impl Consumed {
    pub fn id(&self) -> &str {
        self.value["id"].as_str().unwrap_or("")
    }
}

/// Reads a topic from the beginning on a background thread, collecting every record.
pub struct TopicTail {
    msgs: Arc<Mutex<Vec<Consumed>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TopicTail {
    pub fn start(bootstrap: &str, topic: &str) -> TopicTail {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "test-tail")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("consumer");
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let msgs: Arc<Mutex<Vec<Consumed>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (msgs.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Some(r) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                // Transient consumer errors (e.g. during a broker outage) are retried by
                // librdkafka itself.
                let Ok(msg) = r else { continue };
                let content_type = msg.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == "content-type")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                let value = msg
                    .payload()
                    .and_then(|p| serde_json::from_slice(p).ok())
                    .unwrap_or(Value::Null);
                let c = Consumed {
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    content_type,
                    value,
                };
                m.lock().unwrap().push(c);
            }
        });
        TopicTail {
            msgs,
            stop,
            thread: Some(thread),
        }
    }

    pub fn snapshot(&self) -> Vec<Consumed> {
        self.msgs.lock().unwrap().clone()
    }

    /// Polls until `done` holds for what was read, or panics naming `what` after `deadline`.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        what: &str,
        done: impl Fn(&[Consumed]) -> bool,
    ) -> Vec<Consumed> {
        let until = Instant::now() + deadline;
        loop {
            let msgs = self.snapshot();
            if done(&msgs) {
                return msgs;
            }
            assert!(
                Instant::now() < until,
                "timed out after {deadline:?} waiting for {what}; read {} records",
                msgs.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TopicTail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `probe` until it returns `Some`, or panics naming `what` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `audit-manager dev-kafka` as a child process: the broker outlives the agents a test kills.
pub struct DevKafka {
    pub child: std::process::Child,
    pub bootstrap: String,
}

impl DevKafka {
    /// Starts it and reads the bootstrap address it prints on stdout.
    pub fn spawn(partitions: u32, bootstrap_file: &std::path::Path) -> DevKafka {
        use std::io::BufRead as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_audit-manager"))
            .arg("dev-kafka")
            .arg("--partitions")
            .arg(partitions.to_string())
            .arg("--bootstrap-file")
            .arg(bootstrap_file)
            .env("RUST_LOG", "error")
            .env_remove("CONFIG_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn audit-manager dev-kafka");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read bootstrap address");
        let bootstrap = line.trim().to_string();
        assert!(
            bootstrap.contains(':'),
            "dev-kafka printed {line:?} instead of host:port"
        );
        DevKafka { child, bootstrap }
    }

    /// Sends SIGTERM and waits; returns the exit code and what it printed on stderr.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        use std::io::Read as _;
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait dev-kafka");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status.code(), err)
    }
}

impl Drop for DevKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
