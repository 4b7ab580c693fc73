//! Seals on `integrity.seal_topic`: the off-database copy `verify --seals-from-topic` compares
//! with `audit_seals`. Each message is one [`SealLine`] as JSON, keyed by the seal number.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

use super::{IntegrityError, SealLine};
use crate::config::KafkaConfig;

/// How long one seal may wait for the broker's acknowledgement.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The seal producer (idempotent, `acks=all`, like every producer of the service).
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl Publisher {
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Publisher, IntegrityError> {
        let defaults = BTreeMap::from([(
            "message.timeout.ms".to_string(),
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )]);
        let producer = crate::forward::producer_client("seal", kafka, defaults)
            .create()
            .map_err(|e| {
                IntegrityError::Publish(format!(
                    "cannot create the seal producer (check kafka.producer): {}",
                    crate::forward::error_text(&e)
                ))
            })?;
        Ok(Publisher {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Sends one seal and waits for the broker's acknowledgement.
    pub async fn publish(&self, line: &SealLine) -> Result<(), IntegrityError> {
        let value = serde_json::to_vec(line)
            .map_err(|e| IntegrityError::Publish(format!("cannot encode seal: {e}")))?;
        let key = line.seal_no.to_string();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&value),
                DELIVERY_TIMEOUT,
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                IntegrityError::Publish(format!(
                    "cannot publish seal {} to {}: {e}; it stays unpublished and is sent again \
                     on the next pass",
                    line.seal_no, self.topic
                ))
            })
    }
}

/// Every seal on `topic`, read from the beginning to the end as it is now. A seal number seen
/// more than once keeps every distinct version (the caller reports disagreeing copies).
pub fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<u64, Vec<SealLine>>, IntegrityError> {
    let err = |what: &str| {
        let what = what.to_string();
        let topic = topic.to_string();
        move |e: rdkafka::error::KafkaError| {
            IntegrityError::Publish(format!("{what} of seal topic {topic}: {e}"))
        }
    };
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", "audit-manager-verify")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (k, v) in &kafka.consumer {
        cc.set(k, v);
    }
    let consumer: BaseConsumer = cc.create().map_err(err("creating a consumer"))?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(err("reading the metadata"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(err("reading the offsets"))?;
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(err("assigning"))?;
        }
    }
    let mut out: BTreeMap<u64, Vec<SealLine>> = BTreeMap::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(err("assigning"))?;
    let until = std::time::Instant::now() + timeout;
    while !ends.is_empty() {
        if std::time::Instant::now() > until {
            return Err(IntegrityError::Publish(format!(
                "timed out reading seal topic {topic} to its end"
            )));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.map_err(err("reading"))?;
        if msg.offset() + 1 >= ends.get(&msg.partition()).copied().unwrap_or(0) {
            ends.remove(&msg.partition());
        }
        let Some(payload) = msg.payload() else {
            continue;
        };
        match serde_json::from_slice::<SealLine>(payload) {
            Ok(line) => {
                let copies = out.entry(line.seal_no).or_default();
                if !copies.contains(&line) {
                    copies.push(line);
                }
            }
            Err(e) => tracing::warn!(
                partition = msg.partition(),
                offset = msg.offset(),
                error = %e,
                "a message on the seal topic is not a seal; ignored"
            ),
        }
    }
    Ok(out)
}
