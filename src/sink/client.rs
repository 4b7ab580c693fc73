//! What the sink's group consumer reports: rebalances (so revoked partitions' records are
//! dropped), failed commits and lag statistics. The consumer itself (manual offset commits) is
//! built by [`crate::kafka::consumer`].

use std::collections::HashSet;
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

/// The sink's consumer configuration, where it used to live.
pub use crate::kafka::consumer::consumer_config;

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
        let hint = crate::kafka::error::connection_hint(reason)
            .unwrap_or("check kafka.bootstrap_servers, the network and the brokers");
        tracing::warn!(%error, "Kafka consumer error: {reason}; {hint}");
    }

    fn stats(&self, statistics: Statistics) {
        crate::kafka::stats::record_consumer(&statistics);
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
