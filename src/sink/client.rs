//! Kafka clients of the sink: the group consumer (manual offset commits, rebalance tracking,
//! lag statistics) and the dead-letter producer.

use std::collections::HashSet;
use std::sync::Mutex;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::config::KafkaConfig;

/// Consumer properties the sink's guarantees rest on; `kafka.consumer` cannot override them.
const FIXED_CONSUMER: &[(&str, &str)] = &[
    // Offsets move only when the sink commits them, after the database commit.
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// Consumer properties with defaults that `kafka.consumer` may override.
const DEFAULT_CONSUMER: &[(&str, &str)] = &[
    // A new group starts at the oldest record: an audit event is never skipped by default.
    ("auto.offset.reset", "earliest"),
    // Feeds the consumer-lag gauge.
    ("statistics.interval.ms", "5000"),
    // Prefetch at most 16 MiB (librdkafka's default is 64 MiB): several batches ahead of the
    // database. A full prefetch queue pauses fetching for `fetch.queue.backoff.ms`; the default
    // 1 s then starves the sink (measured: -15% rows/s), 100 ms does not. The bound is checked
    // before each fetch, so one fetch response (`fetch.max.bytes`, 50 MiB) can overshoot it: a
    // heap profile under batch load found 25 MiB of decompressed fetch buffers. 8 MiB and a
    // 4 MiB `fetch.max.bytes` took ~12 MiB off the peak but cost the sink 10-20 % of its rows/s
    // (BENCHMARKS.md, "Memory and the lean path"), so they are left to `kafka.consumer`.
    ("queued.max.messages.kbytes", "16384"),
    ("fetch.queue.backoff.ms", "100"),
];

/// The sink's group consumer configuration.
pub fn consumer_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", &kafka.client_id)
        .set("group.id", group);
    for (k, v) in DEFAULT_CONSUMER {
        c.set(*k, *v);
    }
    for (k, v) in &kafka.consumer {
        c.set(k, v);
    }
    for (k, v) in FIXED_CONSUMER {
        if kafka.consumer.get(*k).is_some_and(|set| set != v) {
            tracing::warn!(
                property = k,
                "kafka.consumer.{k} is ignored: the sink needs {v}"
            );
        }
        c.set(*k, *v);
    }
    c
}

/// The configuration of the sink's producers (`role`: "dead-letter", "dlq replay"): the
/// operator's `kafka.producer`, with `enable.idempotence=true` and `acks=all` forced as for every
/// producer of the service ([`crate::forward::producer_client`]). A dead letter's source offset
/// is committed on its acknowledgement, so it must be on every in-sync replica by then.
pub fn producer_config(kafka: &KafkaConfig, role: &str) -> ClientConfig {
    crate::forward::producer_client(role, kafka, Default::default())
}

/// Records partitions revoked by rebalances, so the loop can drop their uncommitted records:
/// the new owner starts from the last committed offset and delivers them again.
#[derive(Default)]
pub struct SinkContext {
    revoked: Mutex<HashSet<(String, i32)>>,
}

impl SinkContext {
    /// Partitions revoked since the last call.
    pub fn take_revoked(&self) -> HashSet<(String, i32)> {
        self.revoked
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

impl ClientContext for SinkContext {
    /// Connection-level trouble, with what to set when TLS or SASL is the cause.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let hint = crate::forward::connection_hint(reason)
            .unwrap_or("check kafka.bootstrap_servers, the network and the brokers");
        tracing::warn!(%error, "Kafka consumer error: {reason}; {hint}");
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // -1 = unknown (not assigned here); the internal partition is -1 too.
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(
                        "audit_sink_consumer_lag",
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = partitions(tpl);
                tracing::info!(partitions = ?parts, "partitions revoked");
                if let Ok(mut r) = self.revoked.lock() {
                    r.extend(parts);
                }
            }
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = ?partitions(tpl), "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // The rows are stored; the records will be redelivered and collapse as duplicates.
            tracing::warn!(
                error = %e, offsets = ?partitions(offsets),
                "offset commit failed; the records will be delivered again (no data is lost)"
            );
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}
