//! Every consumer the service builds: the sink's group consumer and the readers of assigned
//! partitions (`dlq replay`, the seal-topic reader of `verify` and the sealer). Their properties
//! come in three layers: the defaults below, then the operator's `kafka.consumer` (the operator
//! wins), then the properties the sink's guarantee rests on, forced back with a warning.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;

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
    // (docs/benchmark-history.md, "Memory and the lean path"), so they are left to
    // `kafka.consumer`.
    ("queued.max.messages.kbytes", "16384"),
    // librdkafka fetches until the queue holds `queued.min.messages` records *or* the bytes
    // above: with its default of 100 000 records a real broker (tansu) filled the queue to 34 MB
    // whatever the byte bound said. 10 000 records (about 5 MB of audit events) is two of the
    // sink's largest batches ahead; against tansu it took the end-to-end peak from 160 to
    // 138 MiB with no loss of rows/s (BENCHMARKS.md).
    ("queued.min.messages", QUEUED_MIN_MESSAGES),
    ("fetch.queue.backoff.ms", "100"),
    // One fetch response at most 8 MiB across all partitions (librdkafka's default is 50 MiB).
    // librdkafka's mock broker returns one record batch per partition per fetch, so it never
    // came near; a real broker returns up to `max.partition.fetch.bytes` (1 MiB) per partition,
    // and some (tansu 0.6) fill the whole `fetch.max.bytes` from one partition: against tansu
    // the sink held 250-350 MiB of fetched records and their decompressed copies under a
    // backlog (docs/memory.md, "Against a real broker").
    ("fetch.max.bytes", FETCH_MAX_BYTES),
];

/// The sink consumer's default `fetch.max.bytes` (see [`DEFAULT_CONSUMER`]).
pub const FETCH_MAX_BYTES: &str = "8388608";

/// The sink consumer's default `queued.min.messages` (see [`DEFAULT_CONSUMER`]).
pub const QUEUED_MIN_MESSAGES: &str = "10000";

/// The configuration of a consumer in `group`: `bootstrap.servers`, `client.id`, the defaults,
/// the operator's `kafka.consumer`, then the fixed properties (each ignored operator value
/// logged as a warning).
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

/// The sink's group consumer: subscribes, and reports rebalances, commits and statistics to
/// `context`.
pub fn stream_consumer<C: ConsumerContext + 'static>(
    kafka: &KafkaConfig,
    group: &str,
    context: C,
) -> KafkaResult<StreamConsumer<C>> {
    consumer_config(kafka, group).create_with_context(context)
}

/// A consumer of partitions it is assigned by hand, committing (if at all) as `group`: `dlq
/// replay`, and the seal-topic reader, which never commits. Nothing reads its statistics, so
/// librdkafka is not asked for them.
pub fn reader(kafka: &KafkaConfig, group: &str) -> KafkaResult<BaseConsumer> {
    consumer_config(kafka, group)
        .set("statistics.interval.ms", "0")
        .create()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_operator_tunes_the_defaults_but_not_the_commit_properties() {
        let mut kafka = Config::default().kafka;
        for (k, v) in [
            ("enable.auto.commit", "true"),
            ("queued.max.messages.kbytes", "8192"),
        ] {
            kafka.consumer.insert(k.into(), v.into());
        }
        let c = consumer_config(&kafka, "g");
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("8192"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("client.id"), Some(kafka.client_id.as_str()));
    }

    /// A fetch response is bounded across partitions by default, and an operator's
    /// `kafka.consumer` still decides.
    #[test]
    fn one_fetch_is_bounded_by_default_and_the_operator_may_change_it() {
        let mut kafka = Config::default().kafka;
        let c = consumer_config(&kafka, "g");
        let fetch: u64 = c
            .get("fetch.max.bytes")
            .unwrap_or("")
            .parse()
            .unwrap_or(u64::MAX);
        let queued: u64 = c
            .get("queued.max.messages.kbytes")
            .unwrap_or("")
            .parse()
            .unwrap_or(u64::MAX);
        assert!(fetch <= 8 << 20, "fetch.max.bytes {fetch}");
        // Fetched ahead is also bounded in records (librdkafka stops at whichever comes first).
        let records: u64 = c
            .get("queued.min.messages")
            .unwrap_or("")
            .parse()
            .unwrap_or(u64::MAX);
        assert!(records <= 10_000, "queued.min.messages {records}");
        assert!(
            queued * 1024 + fetch <= 24 << 20,
            "prefetch bound {queued} KiB + {fetch}"
        );
        kafka
            .consumer
            .insert("fetch.max.bytes".into(), "1048576".into());
        assert_eq!(
            consumer_config(&kafka, "g").get("fetch.max.bytes"),
            Some("1048576")
        );
    }
}
