//! The dead-letter topic: records the sink can never store, with the reason, so an operator
//! can see them, fix the emitter and replay them (`audit-manager dlq replay`).
//!
//! A dead letter keeps the original key and value and carries the headers of the contract (docs/contract.md):
//! `x-audit-error` (`kind: message`), `x-audit-source-topic`, `x-audit-source-partition`,
//! `x-audit-source-offset`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::batch::{DeadReason, Record};
use crate::config::KafkaConfig;

pub const HEADER_ERROR: &str = "x-audit-error";
pub const HEADER_TOPIC: &str = "x-audit-source-topic";
pub const HEADER_PARTITION: &str = "x-audit-source-partition";
pub const HEADER_OFFSET: &str = "x-audit-source-offset";
/// How long one produce may wait for the broker's acknowledgement.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error(
        "cannot produce to the dead-letter topic {topic}: {source} (check that Kafka is reachable \
         and the topic exists and accepts writes)"
    )]
    Produce {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka client error during DLQ replay: {0} (check kafka.bootstrap_servers)")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot write progress: {0}")]
    Io(#[from] std::io::Error),
}

/// Produces dead letters and waits for their acknowledgement.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    pub fn new(producer: FutureProducer, topic: String) -> DeadLetters {
        DeadLetters { producer, topic }
    }

    /// Sends every dead letter concurrently; `Ok` only when all were acknowledged.
    pub async fn send_all(&self, letters: &[(&Record, &DeadReason)]) -> Result<(), DlqError> {
        let sends = letters
            .iter()
            .map(|(record, reason)| self.send(record, reason));
        for r in futures_util::future::join_all(sends).await {
            r?;
        }
        Ok(())
    }

    async fn send(&self, record: &Record, reason: &DeadReason) -> Result<(), DlqError> {
        let error = reason_text(reason);
        let partition = record.partition.to_string();
        let offset = record.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_ERROR,
                value: Some(&error),
            })
            .insert(Header {
                key: HEADER_TOPIC,
                value: Some(&record.topic),
            })
            .insert(Header {
                key: HEADER_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: HEADER_OFFSET,
                value: Some(&offset),
            });
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(k) = record.key.as_deref() {
            fr = fr.key(k);
        }
        if let Some(v) = record.value.as_deref() {
            fr = fr.payload(v);
        }
        match self.producer.send(fr, PRODUCE_TIMEOUT).await {
            Ok(_) => {
                metrics::counter!("audit_sink_dead_letters_total", "reason" => reason.kind)
                    .increment(1);
                tracing::warn!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    reason = %error, "record sent to the dead-letter topic"
                );
                Ok(())
            }
            Err((source, _)) => Err(DlqError::Produce {
                topic: self.topic.clone(),
                source,
            }),
        }
    }
}

/// The reason as the `x-audit-error` header and the log line carry it: `kind: message`, with
/// control characters escaped. The message can quote what the emitter sent (a key name in a
/// field path), so a raw newline or terminal escape would reach whoever reads the header or
/// the log.
fn reason_text(reason: &DeadReason) -> String {
    crate::logging::escape_controls(&reason.header()).into_owned()
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub records: u64,
}

/// Re-produces dead letters to `kafka.topic` (original key and value, `content-type` header),
/// oldest first, and commits the DLQ position of the replay group after each acknowledged
/// record, so a second replay continues where the first stopped. Stops after `limit` records
/// or at the end of the DLQ as it was when the replay started. Progress goes to `progress`.
pub async fn replay(
    kafka: &KafkaConfig,
    limit: Option<u64>,
    progress: &mut (dyn Write + Send),
) -> Result<Replayed, DlqError> {
    let group = replay_group(kafka);
    let consumer = crate::kafka::consumer::reader(kafka, &group)?;
    let producer =
        crate::kafka::producer::future_producer("dlq replay", kafka, Default::default())?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(&kafka.dlq_topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    // Where each partition ends now; records arriving during the replay wait for the next one.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (_, high) = consumer.fetch_watermarks(&kafka.dlq_topic, p, timeout)?;
        ends.insert(p, high);
        tpl.add_partition_offset(&kafka.dlq_topic, p, Offset::Stored)?;
    }
    let committed = consumer.committed_offsets(tpl.clone(), timeout)?;
    let total: i64 = ends
        .iter()
        .map(|(p, high)| {
            let start = committed
                .find_partition(&kafka.dlq_topic, *p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
                .unwrap_or(0);
            (high - start).max(0)
        })
        .sum();
    writeln!(
        progress,
        "{total} dead letter(s) to replay to {}",
        kafka.topic
    )?;
    ends.retain(|p, high| {
        let start = committed
            .find_partition(&kafka.dlq_topic, *p)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(0);
        start < *high
    });
    consumer.assign(&tpl)?;
    let mut done = Replayed::default();
    let mut last_report = Instant::now();
    while !ends.is_empty() && limit.is_none_or(|l| done.records < l) {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg?;
        let (p, off) = (msg.partition(), msg.offset());
        let Some(&end) = ends.get(&p) else { continue };
        if off >= end {
            ends.remove(&p);
            continue;
        }
        let mut headers = OwnedHeaders::new();
        if let Some(h) = msg.headers() {
            for header in h.iter().filter(|h| !h.key.starts_with("x-audit-")) {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let mut fr: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&kafka.topic).headers(headers);
        if let Some(k) = msg.key() {
            fr = fr.key(k);
        }
        if let Some(v) = msg.payload() {
            fr = fr.payload(v);
        }
        producer
            .send(fr, PRODUCE_TIMEOUT)
            .await
            .map_err(|(source, _)| DlqError::Produce {
                topic: kafka.topic.clone(),
                source,
            })?;
        let mut pos = TopicPartitionList::new();
        pos.add_partition_offset(&kafka.dlq_topic, p, Offset::Offset(off + 1))?;
        consumer.commit(&pos, rdkafka::consumer::CommitMode::Sync)?;
        done.records += 1;
        if off + 1 >= end {
            ends.remove(&p);
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            writeln!(progress, "replayed {} of {total}", done.records)?;
            last_report = Instant::now();
        }
    }
    writeln!(progress, "replayed {} dead letter(s)", done.records)?;
    Ok(done)
}

/// The consumer group whose committed DLQ offsets remember how far replays got.
pub fn replay_group(kafka: &KafkaConfig) -> String {
    format!("{}-dlq-replay", kafka.consumer_group)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::event::ValidationMode;

    #[test]
    fn the_reason_does_not_carry_an_emitters_control_characters() {
        // A key an emitter chose, sent twice so the record is dead-lettered with its path.
        let key = "k\n2026-12-07T10:00:00.000000Z  INFO audit_manager: forged\u{1b}[31m";
        let value = format!(
            r#"{{"specversion":"1.0","id":"a","source":"s","type":"t","time":"2026-11-01T00:00:00Z",
                "data":{{"actor":{{"id":"u"}},"action":"a","outcome":"success","{k}":1,"{k}":2}}}}"#,
            k = key.replace('\n', "\\n").replace('\u{1b}', "\\u001b")
        );
        let record = Record {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            value: Some(value.into_bytes()),
        };
        let reason = super::super::batch::decode(
            &record,
            Utc::now(),
            None,
            ValidationMode::Strict,
            &crate::privacy::Privacy::none(),
        )
        .expect_err("a duplicated key is dead-lettered");
        assert!(reason.header().contains(key), "{}", reason.header());
        let text = reason_text(&reason);
        assert!(!text.contains(['\n', '\u{1b}']), "{text}");
        assert!(
            text.contains(
                r"data.k\n2026-12-07T10:00:00.000000Z  INFO audit_manager: forged\u{1b}[31m"
            ),
            "{text}"
        );
    }
}
