//! The forward loop: read the spool in sequence order, produce, ack what was delivered.
//!
//! ```text
//!   cursor ──read_from──▶ producer.send ──(librdkafka)──▶ Outcome
//!                                                         ├─ ok        → delivered → spool.ack (batched)
//!                                                         ├─ record    → spool.quarantine(reason)
//!                                                         └─ outage    → stop sending, purge queue,
//!                                                             wait for every report, back off,
//!                                                             cursor := 0 (oldest live record)
//! ```
//!
//! `record` and `outage` are [`crate::kafka::error::classify`]'s verdicts: only a fault of the record
//! itself (too large, invalid) quarantines it; a refusal that would hit every record (ACLs,
//! authentication, a missing topic, a broker policy) is an outage, shown on `/health`.
//!
//! Rewinding to the oldest live record instead of tracking individual failures keeps the
//! bookkeeping trivially correct: whatever is still in the spool is exactly what has not been
//! delivered (acks and quarantines are the only deletions), and reading it again only ever
//! produces duplicates, which the sink collapses on `(id, occurred_at)`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{Outcome, Producer};
use super::{ForwardError, ForwardSettings, ForwardState};
use crate::kafka::error::{describe_outage, error_kind, is_permanent, outage_hint};
use crate::kafka::producer::ProducerConfig;
use crate::spool::{Spool, SpoolError, Stored, now_ms};

/// How long a health probe (metadata request) may take while the forwarder is idle.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often an idle forwarder with a recorded problem checks whether Kafka is back.
const PROBE_INTERVAL: Duration = Duration::from_secs(3);
/// Wait before retrying a failed spool operation (ack, quarantine, read).
const SPOOL_RETRY: Duration = Duration::from_secs(1);

pub(super) struct Runner {
    spool: Spool,
    settings: ForwardSettings,
    client_config: ProducerConfig,
    topic: String,
    state: Arc<ForwardState>,
    producer: Producer,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
}

/// Per-run bookkeeping.
struct Loop {
    /// Next sequence number to read.
    cursor: u64,
    in_flight_events: usize,
    in_flight_bytes: usize,
    /// Delivered, not yet acknowledged in the spool.
    delivered: Vec<u64>,
    acking: Option<AckTask>,
    ack_not_before: Option<Instant>,
    /// Permanently rejected records waiting to be quarantined.
    rejected: Vec<(u64, String)>,
    /// Set after a retriable failure: no new sends until every report is in and `retry_at`.
    failing: Option<Failure>,
    /// Consecutive failed attempts (reset by a successful delivery), for the backoff.
    attempt: u32,
    /// Set once shutdown began: the time by which outstanding reports must be in.
    stop_by: Option<Instant>,
    next_probe: Instant,
}

/// A running `spool.ack`; hands its sequence numbers back so a failed ack can be retried.
type AckTask = JoinHandle<(Vec<u64>, Result<(), SpoolError>)>;

struct Failure {
    retry_at: Instant,
    /// The producer reported a fatal error and must be replaced before retrying.
    replace_producer: bool,
}

/// What one attempt to fill the window did.
enum Fill {
    /// Sent (or quarantined) this many records; the window may have room for more.
    Progress,
    /// Nothing to read right now.
    Empty,
    /// The window (or librdkafka's queue) is full; wait for reports.
    Full,
    /// Sending failed; the loop is in failure mode.
    Failed,
}

impl Runner {
    pub(super) fn new(
        spool: Spool,
        settings: ForwardSettings,
        client_config: ProducerConfig,
        topic: String,
        state: Arc<ForwardState>,
    ) -> Result<Runner, ForwardError> {
        let (producer, outcomes) =
            Producer::new(&client_config, &topic, state.clone()).map_err(ForwardError::Producer)?;
        Ok(Runner {
            spool,
            settings,
            client_config,
            topic,
            state,
            producer,
            outcomes,
        })
    }

    pub(super) async fn run(mut self, token: CancellationToken) {
        tracing::info!(topic = %self.topic, "forwarder started");
        let mut l = Loop {
            cursor: 0,
            in_flight_events: 0,
            in_flight_bytes: 0,
            delivered: Vec::new(),
            acking: None,
            ack_not_before: None,
            rejected: Vec::new(),
            failing: None,
            attempt: 0,
            stop_by: None,
            next_probe: Instant::now(),
        };
        loop {
            let fill = if l.stop_by.is_none() && l.failing.is_none() {
                self.fill(&mut l).await
            } else {
                Fill::Full
            };
            self.quarantine_rejected(&mut l).await;
            self.start_ack(&mut l);
            let rewound = self.maybe_rewind(&mut l);
            self.publish(&l);
            if l.stop_by.is_some() && l.quiescent() {
                break;
            }
            if matches!(fill, Fill::Empty) && l.in_flight_events == 0 {
                self.maybe_probe(&mut l).await;
            }

            let now = Instant::now();
            let mut wake = now + Duration::from_secs(1);
            match fill {
                _ if rewound => wake = now,
                Fill::Progress => wake = now,
                Fill::Empty => wake = wake.min(now + self.settings.idle_poll),
                Fill::Full | Fill::Failed => {}
            }
            if let Some(f) = &l.failing {
                wake = wake.min(f.retry_at);
            }
            if let Some(t) = l.ack_not_before {
                wake = wake.min(t);
            }
            if let Some(t) = l.stop_by {
                wake = wake.min(t);
            }

            tokio::select! {
                biased;
                Some(o) = self.outcomes.recv() => {
                    self.on_outcome(&mut l, o);
                    // Take every report already waiting: they become one ack.
                    while let Ok(o) = self.outcomes.try_recv() {
                        self.on_outcome(&mut l, o);
                    }
                }
                joined = async {
                    match l.acking.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                }, if l.acking.is_some() => {
                    l.acking = None;
                    match joined {
                        Ok((seqs, Ok(()))) => self.state.delivered(seqs.len() as u64),
                        Ok((seqs, Err(e))) => {
                            tracing::error!(
                                error = %e,
                                events = seqs.len(),
                                "cannot delete delivered events from the spool; retrying (they \
                                 are sent again if the service stops before that succeeds)"
                            );
                            l.delivered.extend(seqs);
                            l.ack_not_before = Some(Instant::now() + SPOOL_RETRY);
                            if matches!(e, SpoolError::Closed) {
                                break;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "spool ack task failed"),
                    }
                }
                _ = token.cancelled(), if l.stop_by.is_none() => {
                    tracing::info!(
                        in_flight = l.in_flight_events,
                        "forwarder stopping: waiting for outstanding delivery reports"
                    );
                    l.stop_by = Some(Instant::now() + self.settings.flush_timeout);
                }
                _ = tokio::time::sleep_until(wake) => {
                    if l.stop_by.is_some_and(|t| Instant::now() >= t) {
                        break;
                    }
                }
            }
        }
        self.finish(l).await;
    }

    /// Reads the next records and hands them to the producer while the window has room.
    async fn fill(&mut self, l: &mut Loop) -> Fill {
        let s = &self.settings;
        let room_events = s.max_in_flight_events.saturating_sub(l.in_flight_events);
        let room_bytes = s.max_in_flight_bytes.saturating_sub(l.in_flight_bytes);
        let max_bytes = s.max_in_flight_bytes;
        if room_events == 0 || room_bytes == 0 {
            return Fill::Full;
        }
        let batch =
            match self
                .spool
                .read_from(l.cursor, room_events.min(s.read_batch_events), room_bytes)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the spool; retrying");
                    self.fail(l, format!("cannot read the spool: {e}"), false, SPOOL_RETRY);
                    return Fill::Failed;
                }
            };
        if batch.is_empty() {
            return Fill::Empty;
        }
        for stored in batch {
            match stored {
                // The window is bytes handed over: a record that would overflow it waits (the
                // cursor stays) unless nothing is out, so the largest event always fits.
                Stored::Live { ref record, .. }
                    if l.in_flight_bytes > 0
                        && l.in_flight_bytes + super::client::produced_bytes(record)
                            > max_bytes =>
                {
                    return Fill::Full;
                }
                Stored::Live { seq, record, .. } => match self.producer.send(seq, &record) {
                    Ok(bytes) => {
                        l.in_flight_events += 1;
                        l.in_flight_bytes += bytes;
                        l.cursor = seq + 1;
                    }
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) => {
                        // The cursor stays: this record is read again once reports drained.
                        return Fill::Full;
                    }
                    Err(e) if is_permanent(&e) => {
                        count_error(&e);
                        l.rejected
                            .push((seq, format!("Kafka refused the event: {e}")));
                        l.cursor = seq + 1;
                    }
                    Err(e) => {
                        count_error(&e);
                        let fatal = self.producer.fatal_error();
                        let reason = format!("cannot hand events to the Kafka producer: {e}");
                        let reason = match outage_hint(&e) {
                            Some(hint) => format!("{reason} ({hint})"),
                            None => reason,
                        };
                        let backoff = self.backoff(l);
                        self.fail(l, reason, fatal.is_some(), backoff);
                        return Fill::Failed;
                    }
                },
                Stored::Damaged { seq, error, .. } => {
                    l.rejected.push((seq, format!("damaged in spool: {error}")));
                    l.cursor = seq + 1;
                }
            }
        }
        Fill::Progress
    }

    fn on_outcome(&mut self, l: &mut Loop, o: Outcome) {
        l.in_flight_events = l.in_flight_events.saturating_sub(1);
        l.in_flight_bytes = l.in_flight_bytes.saturating_sub(o.bytes);
        match o.result {
            Ok(()) => {
                metrics::counter!("audit_forward_events_produced_total").increment(1);
                l.delivered.push(o.seq);
                l.attempt = 0;
                self.state.clear_problem();
            }
            Err(e) if is_permanent(&e) => {
                count_error(&e);
                l.rejected
                    .push((o.seq, format!("Kafka refused the event: {e}")));
            }
            // Our own purge after an earlier failure, or at shutdown: not news.
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight,
            )) => {}
            Err(e) => {
                count_error(&e);
                if l.failing.is_none() {
                    tracing::warn!(
                        reason = %describe_outage(&e),
                        in_flight = l.in_flight_events,
                        "Kafka delivery failed; the event stays in the spool and is sent again \
                         after the outstanding reports are in"
                    );
                }
                let fatal = self.producer.fatal_error();
                let backoff = self.backoff(l);
                self.fail(l, describe_outage(&e), fatal.is_some(), backoff);
            }
        }
    }

    /// Enters (or stays in) failure mode.
    fn fail(&mut self, l: &mut Loop, reason: String, fatal: bool, backoff: Duration) {
        self.state.set_problem(reason);
        match &mut l.failing {
            Some(f) => f.replace_producer |= fatal,
            None => {
                // Later records of the same partition must not overtake the failed one.
                self.producer.purge_queued();
                l.attempt = l.attempt.saturating_add(1);
                l.failing = Some(Failure {
                    retry_at: Instant::now() + backoff,
                    replace_producer: fatal,
                });
            }
        }
    }

    /// Doubling from `retry_backoff_min` per consecutive failure, with jitter. backon's jitter
    /// adds up to the delay again, so the delay doubles up to half of `retry_backoff_max`:
    /// every wait lies within [`retry_backoff_min`, `retry_backoff_max`].
    fn backoff(&self, l: &Loop) -> Duration {
        use backon::{BackoffBuilder as _, ExponentialBuilder};
        let s = &self.settings;
        ExponentialBuilder::new()
            .with_min_delay(s.retry_backoff_min)
            .with_max_delay(s.retry_backoff_max / 2)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(l.attempt.min(16) as usize)
            .map_or(s.retry_backoff_max, |d| {
                d.max(s.retry_backoff_min).min(s.retry_backoff_max)
            })
    }

    /// Once a failure's reports are all in and its backoff passed: read again from the oldest
    /// live record (with a new producer if the old one failed fatally).
    fn maybe_rewind(&mut self, l: &mut Loop) -> bool {
        let Some(f) = &l.failing else { return false };
        if !l.quiescent() || Instant::now() < f.retry_at || l.stop_by.is_some() {
            return false;
        }
        if f.replace_producer {
            match Producer::new(&self.client_config, &self.topic, self.state.clone()) {
                Ok((p, rx)) => {
                    tracing::warn!(
                        "replaced the Kafka producer after a fatal error; resending from the \
                         oldest undelivered event"
                    );
                    self.producer = p;
                    self.outcomes = rx;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot create a new Kafka producer; retrying");
                    let backoff = self.backoff(l);
                    if let Some(f) = &mut l.failing {
                        f.retry_at = Instant::now() + backoff;
                    }
                    return false;
                }
            }
        }
        l.failing = None;
        l.cursor = 0;
        true
    }

    fn start_ack(&self, l: &mut Loop) {
        if l.acking.is_some() || l.delivered.is_empty() {
            return;
        }
        if l.ack_not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        l.ack_not_before = None;
        let seqs = std::mem::take(&mut l.delivered);
        let spool = self.spool.clone();
        l.acking = Some(tokio::spawn(async move {
            let r = spool.ack(seqs.clone()).await;
            (seqs, r)
        }));
    }

    async fn quarantine_rejected(&mut self, l: &mut Loop) {
        for (seq, reason) in std::mem::take(&mut l.rejected) {
            match self.spool.quarantine(seq, reason.clone()).await {
                Ok(()) => {
                    tracing::error!(
                        seq,
                        %reason,
                        "event quarantined: it can never be delivered as it is. Inspect it with \
                         `audit-manager spool export --quarantine`; after fixing the cause \
                         (e.g. the topic's max.message.bytes or ACLs) run `audit-manager spool \
                         requeue`"
                    );
                    metrics::counter!("audit_forward_quarantined_total").increment(1);
                    self.state.quarantined();
                }
                Err(e) => {
                    // It stays live; the rewind after this failure reads it again.
                    tracing::error!(seq, error = %e, "cannot quarantine a rejected event");
                    self.fail(l, format!("cannot quarantine: {e}"), false, SPOOL_RETRY);
                }
            }
        }
    }

    /// While idle with a recorded problem, asks Kafka for metadata so `/health` recovers
    /// without waiting for the next event.
    async fn maybe_probe(&mut self, l: &mut Loop) {
        if !self.state.has_problem() || Instant::now() < l.next_probe || l.failing.is_some() {
            return;
        }
        l.next_probe = Instant::now() + PROBE_INTERVAL;
        let p = self.producer.clone();
        if let Ok(Ok(())) = tokio::task::spawn_blocking(move || p.probe(PROBE_TIMEOUT)).await {
            self.state.clear_problem();
        }
    }

    fn publish(&self, l: &Loop) {
        self.state.set_in_flight(l.in_flight_events);
        metrics::gauge!("audit_forward_in_flight_events").set(l.in_flight_events as f64);
        metrics::gauge!("audit_forward_in_flight_bytes").set(l.in_flight_bytes as f64);
        let age = self.spool.stats().oldest_age_secs(now_ms());
        metrics::gauge!("audit_forward_oldest_event_age_seconds").set(age);
    }

    /// Shutdown: gives up on reports still missing (those records stay in the spool), and
    /// commits the acks of everything delivered.
    async fn finish(mut self, mut l: Loop) {
        if l.in_flight_events > 0 {
            tracing::warn!(
                in_flight = l.in_flight_events,
                "no delivery report within the flush timeout; these events stay in the spool \
                 and are sent again after the restart"
            );
            self.producer.purge_all();
        }
        while let Ok(o) = self.outcomes.try_recv() {
            self.on_outcome(&mut l, o);
        }
        self.quarantine_rejected(&mut l).await;
        if let Some(h) = l.acking.take()
            && let Ok((seqs, r)) = h.await
        {
            match r {
                Ok(()) => self.state.delivered(seqs.len() as u64),
                Err(_) => l.delivered.extend(seqs),
            }
        }
        if !l.delivered.is_empty() {
            let n = l.delivered.len();
            if let Err(e) = self.spool.ack(std::mem::take(&mut l.delivered)).await {
                tracing::warn!(
                    error = %e,
                    events = n,
                    "cannot delete delivered events at shutdown; they are sent again after the \
                     restart (duplicates collapse downstream)"
                );
            }
        }
        metrics::gauge!("audit_forward_in_flight_events").set(0.0);
        tracing::info!("forwarder stopped");
    }
}

impl Loop {
    /// Nothing outstanding: no reports missing, no acks or quarantines pending.
    fn quiescent(&self) -> bool {
        self.in_flight_events == 0
            && self.acking.is_none()
            && self.delivered.is_empty()
            && self.rejected.is_empty()
    }
}

fn count_error(e: &KafkaError) {
    metrics::counter!("audit_forward_delivery_errors_total", "kind" => error_kind(e)).increment(1);
}
