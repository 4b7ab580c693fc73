//! librdkafka's own statistics as gauges: the bytes its queues hold inside the process, which
//! the service's own gauges cannot see. Reported every `statistics.interval.ms` (5 s by default
//! for the forward producer and the sink's consumer).
//!
//! - `audit_kafka_producer_queue_bytes`: records handed to the producer and not yet
//!   acknowledged (librdkafka's `msg_size`), whatever stage they are in (queued, batched,
//!   compressed, in flight to the broker). The forwarder's window bounds it.
//! - `audit_kafka_consumer_fetch_queue_bytes`: records fetched ahead of the sink (the one
//!   consumer queue every partition's fetch queue forwards to); `queued.max.messages.kbytes`
//!   plus one fetch response (`fetch.max.bytes`) bounds it.

use rdkafka::Statistics;

/// Sets the producer's gauge from one statistics report.
pub fn record_producer(s: &Statistics) {
    metrics::gauge!("audit_kafka_producer_queue_bytes").set(s.msg_size as f64);
}

/// Sets the consumer's gauge from one statistics report.
pub fn record_consumer(s: &Statistics) {
    metrics::gauge!("audit_kafka_consumer_fetch_queue_bytes").set(fetch_queue_bytes(s) as f64);
}

/// Bytes fetched ahead and not yet taken. The sink's consumer forwards every partition's fetch
/// queue to its one consumer queue, and librdkafka reports each partition's `fetchq_size` as
/// the size of the queue it forwards to: every partition reports the same total, so it is the
/// largest of them, not their sum (the sum counted the queue once per partition).
pub fn fetch_queue_bytes(s: &Statistics) -> u64 {
    s.topics
        .values()
        .flat_map(|t| t.partitions.values())
        .map(|p| p.fetchq_size)
        .max()
        .unwrap_or(0)
}
