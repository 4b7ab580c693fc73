//! Every Kafka client of the service is built here, so the properties the delivery guarantees
//! rest on are set in one place and no role can forget them:
//!
//! - [`producer`]: the idempotent, `acks=all` producer configuration every producer shares
//!   (forwarder, dead letters, `dlq replay`, seals), and the producers built from it;
//! - [`consumer`]: the consumer configuration (manual commits) of the sink's group consumer
//!   and of the readers of assigned partitions (`dlq replay`, the seal topic);
//! - [`admin`]: topic creation, best effort at the forwarder's start and strict in `topics
//!   ensure`;
//! - [`error`]: what a Kafka error says about the system (one record's fault, or an outage
//!   every record would hit), with the operator's remedy;
//! - [`dev`]: librdkafka's in-memory mock cluster, the development broker;
//! - [`stats`]: librdkafka's statistics of its queues as gauges.
//!
//! The properties themselves come from the configuration (`kafka.*`, see
//! [`crate::config::KafkaConfig`]); the roles ask this module for clients and never build one.

pub mod admin;
pub mod consumer;
pub mod dev;
pub mod error;
pub mod producer;
pub mod stats;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Text that builds a Kafka client (or a broker) in any file that contains it.
    const BUILDS_ANYWHERE: &[&str] = &[
        "ClientConfig::new",
        "create_native_config",
        ".create_with_context(",
        ".create::<",
        "MockCluster",
        "rdkafka::mocking",
        "AdminClient",
        "rdkafka::admin",
    ];

    /// `config/kafka.rs` asks librdkafka to read `kafka.producer` / `kafka.consumer` when the
    /// configuration loads (a typo stops the start there): it makes a client configuration and
    /// reads it, and builds no client. Only these findings are allowed there.
    const READS_PROPERTIES: (&str, &[&str]) = (
        "config/kafka.rs",
        &["ClientConfig::new", "create_native_config", "ClientConfig"],
    );

    /// Where a file outside `src/kafka/` builds a client: `(line, what)` for each line of code
    /// (comments aside) that does. `.create()` and the client configuration type count only in
    /// a file that uses rdkafka, and `KafkaError::ClientConfig` (an error variant) not at all.
    fn client_building(source: &str) -> Vec<(usize, String)> {
        let uses_rdkafka = source.contains("rdkafka");
        let mut found = Vec::new();
        for (n, line) in source.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for pattern in BUILDS_ANYWHERE {
                if code.contains(pattern) {
                    found.push((n + 1, (*pattern).to_string()));
                }
            }
            if !uses_rdkafka {
                continue;
            }
            if code.contains(".create()") {
                found.push((n + 1, ".create()".to_string()));
            }
            let names_the_config = code.match_indices("ClientConfig").any(|(at, _)| {
                let before = &code[..at];
                let word_starts = !before.ends_with(|c: char| c.is_alphanumeric() || c == '_');
                word_starts && !before.ends_with("KafkaError::") && !before.ends_with("rustls::")
            });
            if names_the_config {
                found.push((n + 1, "ClientConfig".to_string()));
            }
        }
        found
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("src/ is readable").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Only this module builds Kafka clients: a client built elsewhere would miss the
    /// properties the delivery guarantees rest on (idempotence, acks=all, manual commits).
    #[test]
    fn no_kafka_client_is_built_outside_this_module() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let kafka = src.join("kafka");
        let outside: Vec<&PathBuf> = files.iter().filter(|p| !p.starts_with(&kafka)).collect();
        assert!(
            outside.len() > 20 && outside.len() < files.len(),
            "the walk found {} files, {} outside src/kafka/",
            files.len(),
            outside.len()
        );
        let mut offences = Vec::new();
        for path in outside {
            let source = std::fs::read_to_string(path).expect("a source file is readable");
            let relative = path.strip_prefix(&src).unwrap_or(path);
            for (line, what) in client_building(&source) {
                let (reader, allowed) = READS_PROPERTIES;
                if relative == Path::new(reader) && allowed.contains(&what.as_str()) {
                    continue;
                }
                offences.push(format!("src/{}:{line}: {what}", relative.display()));
            }
        }
        assert!(
            offences.is_empty(),
            "Kafka clients are built in src/kafka/ only; ask crate::kafka for one instead:\n{}",
            offences.join("\n")
        );
    }

    #[test]
    fn the_check_tells_building_from_using() {
        let building = [
            "let mut cc = rdkafka::ClientConfig::new();",
            "let c: BaseConsumer = cc.create()?; // rdkafka",
            "use rdkafka::{ClientConfig, Message};",
            "fn f(c: &ClientConfig) {} // rdkafka",
            "let a: AdminClient<DefaultClientContext> = x;",
            "let p = config.create_with_context(ctx)?;",
            "let cluster = MockCluster::new(1)?;",
        ];
        for line in building {
            assert!(!client_building(line).is_empty(), "{line}");
        }
        let using = [
            "use rdkafka::producer::{BaseRecord, FutureProducer, FutureRecord};",
            "use rdkafka::{Message as _, Offset, TopicPartitionList};",
            "Err(KafkaError::ClientConfig(_, desc, key, _)) => {} // rdkafka",
            "let tls = rustls::ClientConfig::builder(); // rdkafka",
            "let consumer = crate::kafka::consumer::reader(kafka, &group)?; // rdkafka",
            "std::fs::File::create(&path)?;",
            "// Comments may name ClientConfig::new and MockCluster.",
        ];
        for line in using {
            assert_eq!(client_building(line), [], "{line}");
        }
    }
}
