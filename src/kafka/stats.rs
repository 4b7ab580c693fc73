//! librdkafka's own statistics as gauges: the bytes its queues hold inside the process, which
//! the service's own gauges cannot see. Reported every `statistics.interval.ms` (5 s by default
//! for the forward producer and the sink's consumer).
//!
//! - `audit_kafka_producer_queue_bytes`: records handed to the producer and not yet
//!   acknowledged (librdkafka's `msg_size`), whatever stage they are in (queued, batched,
//!   compressed, in flight to the broker). The forwarder's window bounds it.
//! - `audit_kafka_consumer_fetch_queue_bytes`: records fetched ahead of the sink (the sum of
//!   every partition's `fetchq_size`); `queued.max.messages.kbytes` plus one fetch response
//!   (`fetch.max.bytes`) bounds it.

use rdkafka::Statistics;

/// Sets the producer's gauge from one statistics report.
pub fn record_producer(s: &Statistics) {
    metrics::gauge!("audit_kafka_producer_queue_bytes").set(s.msg_size as f64);
}

/// Sets the consumer's gauge from one statistics report.
pub fn record_consumer(s: &Statistics) {
    metrics::gauge!("audit_kafka_consumer_fetch_queue_bytes").set(fetch_queue_bytes(s) as f64);
}

/// Bytes in the fetch queues of every partition (the internal partition -1 holds none).
pub fn fetch_queue_bytes(s: &Statistics) -> u64 {
    s.topics
        .values()
        .flat_map(|t| t.partitions.values())
        .map(|p| p.fetchq_size)
        .sum()
}
