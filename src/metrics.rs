//! Prometheus metrics. Every queue has a depth gauge; every stage counts what it did.
//!
//! Names (all prefixed `audit_`):
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `audit_http_requests_total{route,status}` | counter | HTTP requests answered |
//! | `audit_http_request_duration_seconds{route}` | histogram | time to answer |
//! | `audit_http_body_bytes_in_flight` | gauge | request-body bytes held by ingest requests (bounded by `http.max_in_flight_bytes`) |
//! | `audit_http_body_budget_refused_total` | counter | requests answered 503 AUD-004 because that bound was reached |
//! | `audit_http_timeouts_total{phase}` | counter | connections closed by `http.header_timeout` (`header`: headers or TLS handshake not done in time, idle keep-alive connections included) and requests answered 408 by `http.body_timeout` (`body`) |
//! | `audit_http_connections_open` | gauge | connections being served (bounded by `http.max_connections`) |
//! | `audit_http_connections_cut_total` | counter | connections cut with a request in flight, `http.shutdown_grace` after SIGTERM |
//! | `audit_events_accepted_total` | counter | events answered 202 (durable) |
//! | `audit_events_rejected_total{code}` | counter | events refused, by error code |
//! | `audit_events_normalized_total{rule}` | counter | `compatible`-mode rules applied (docs/validation.md) |
//! | `audit_suspicious_source_total{reason}` | counter | events accepted (`compatible`) whose `source` has a dot-segment (`dot_segment`) or a bidi control (`bidi_control`) |
//! | `audit_spool_events` / `audit_spool_bytes` | gauge | live spool depth |
//! | `audit_spool_oldest_event_age_seconds` | gauge | age of the oldest undelivered event |
//! | `audit_spool_quarantined_events` | gauge | records in the quarantine table |
//! | `audit_spool_quarantined_bytes` | gauge | bytes of quarantined records (they count toward `spool.max_bytes`) |
//! | `audit_spool_quarantined_total` | counter | records moved to quarantine |
//! | `audit_spool_pending_bytes` | gauge | bytes of appends waiting for the group commit (bounded by `spool.max_pending_bytes`) |
//! | `audit_spool_commit_batch_events` | histogram | events per group commit |
//! | `audit_spool_commit_duration_seconds` | histogram | write transaction + fsync time |
//! | `audit_spool_commit_failures_total` | counter | commits that failed (AUD-009) |
//! | `audit_forward_events_produced_total` | counter | records Kafka acknowledged |
//! | `audit_forward_delivery_errors_total{kind}` | counter | failed deliveries by librdkafka code |
//! | `audit_forward_quarantined_total` | counter | records quarantined on permanent rejection |
//! | `audit_forward_in_flight_events` | gauge | records handed to the producer, no report yet |
//! | `audit_forward_in_flight_bytes` | gauge | their bytes (bounded by `forward.max_in_flight_bytes`) |
//! | `audit_forward_oldest_event_age_seconds` | gauge | age of the oldest undelivered record |
//! | `audit_forward_rows_inserted_total` | counter | `forward.target: postgres`: new rows written to `audit_events` |
//! | `audit_forward_duplicates_total` | counter | `forward.target: postgres`: rows that were stored already |
//! | `audit_forward_batch_events` | histogram | `forward.target: postgres`: records per written batch |
//! | `audit_forward_batch_duration_seconds` | histogram | `forward.target: postgres`: decode + insert + dead letters of a batch |
//! | `audit_forward_batch_failures_total` | counter | `forward.target: postgres`: batch attempts that failed and were retried |
//! | `audit_dead_letters_total{reason}` | counter | `forward.target: postgres`: records put into `audit_dead_letters`, by reason kind |
//! | `audit_dead_letters` | gauge | `forward.target: postgres`: dead letters waiting in `audit_dead_letters` |
//! | `audit_sink_rows_inserted_total` | counter | new rows written to `audit_events` |
//! | `audit_sink_duplicates_total` | counter | redelivered events collapsed on the primary key |
//! | `audit_sink_batch_events` | histogram | records per sink batch |
//! | `audit_sink_batch_bytes` | gauge | bytes of the batch being written, 0 between batches (bounded by `sink.batch_max_bytes`) |
//! | `audit_sink_carried_bytes` | gauge | bytes consumed ahead while a batch is written (same bound) |
//! | `audit_sink_batch_duration_seconds` | histogram | decode + DLQ + insert time of a batch |
//! | `audit_sink_batch_failures_total` | counter | batch attempts that failed and were retried |
//! | `audit_sink_dead_letters_total{reason}` | counter | records sent to the DLQ, by reason kind |
//! | `audit_sink_consumer_lag{topic,partition}` | gauge | records behind the high watermark |
//! | `audit_kafka_consumer_fetch_queue_bytes` | gauge | records the sink's consumer fetched ahead, in librdkafka's queues (its statistics, every 5 s) |
//! | `audit_kafka_producer_queue_bytes` | gauge | records handed to the forward producer and not yet acknowledged, in librdkafka's queues (its statistics, every 5 s) |
//! | `audit_partitions_created_total` | counter | monthly partitions created |
//! | `audit_partitions_dropped_total` | counter | partitions dropped past retention |
//! | `audit_retention_blocked_total` | counter | expired partitions kept because not all their rows are in a verified archive (`archive.require_before_drop`) |
//! | `audit_archive_parts_total` | counter | archive parts written and verified |
//! | `audit_archive_rows_total` | counter | rows in those parts |
//! | `audit_archive_failures_total` | counter | archive passes that failed (the object store unreachable or refusing, a conflict) |
//! | `audit_auth_rejected_total{code,principal}` | counter | requests refused by authentication (AUD-010/011/012); `principal` is a name from `auth.tokens_file` or `unknown` |
//! | `audit_auth_reloads_total{outcome}` | counter | re-reads of a changed `auth.tokens_file` (`ok`, `failed`: the previous principals stay) |
//! | `audit_tls_reloads_total{outcome}` | counter | re-reads of changed `http.tls.*` files (`ok`, `failed`: the previous certificate stays) |
//! | `audit_tls_handshake_failures_total` | counter | TLS handshakes that failed or timed out (e.g. a client certificate of another CA) |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0,
];

/// Installs the global recorder once per process and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_events".into()), BATCH_BUCKETS)
                })
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; ours then stays unused.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}

/// Counts each `compatible`-mode rule an event (or request) needed in
/// `audit_events_normalized_total{rule}`; the label set is [`Rule::ALL`](crate::event::Rule).
/// The suspicious-`source` rules count in `audit_suspicious_source_total{reason}` too.
pub fn count_normalizations(rules: crate::event::Normalizations) {
    if rules.is_empty() {
        return;
    }
    for rule in rules.iter() {
        metrics::counter!("audit_events_normalized_total", "rule" => rule.label()).increment(1);
        // Also on its own, to alert on: a `source` that reads as another than it is.
        if let Some(reason) = rule.suspicious_source() {
            metrics::counter!("audit_suspicious_source_total", "reason" => reason).increment(1);
        }
    }
}

/// Folds histogram samples into their buckets every few seconds. The exporter keeps raw samples
/// until then, so without this the memory of every histogram would grow with traffic.
pub fn spawn_upkeep(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                _ = shutdown.cancelled() => return,
            }
        }
    });
}
