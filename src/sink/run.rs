//! The sink loop: consume → batch → dead-letter / insert → commit offsets.
//!
//! Invariants:
//! - an offset is committed only after every record below it is either in `audit_events`
//!   (database commit done) or acknowledged by the DLQ broker;
//! - a failed batch is retried as is, with backoff, while its partitions are paused; it is
//!   never skipped. Only a rebalance that revokes its partitions drops (part of) it, because
//!   the new owner starts again from the last committed offset;
//! - the consumer keeps being polled while retrying, so the group does not evict it and
//!   rebalances are served.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::{self, Consumed, DeadReason, Queue, Record};
use super::client::SinkContext;
use super::dlq::DeadLetters;
use crate::config::Config;
use crate::event::Row;
use crate::store::{Inserted, Store, StoreError, retention_cutoff};

/// First and longest wait between two attempts at a failed batch.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Doubling backoff, capped, with jitter (sinks that failed together do not retry in step).
/// backon's jitter adds up to the delay again, so the delay doubles up to half of the longest
/// wait: every wait lies within [`BACKOFF_MIN`, `BACKOFF_MAX`].
pub fn backoff(attempt: u32) -> Duration {
    use backon::{BackoffBuilder as _, ExponentialBuilder};
    ExponentialBuilder::new()
        .with_min_delay(BACKOFF_MIN)
        .with_max_delay(BACKOFF_MAX / 2)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempt.min(16) as usize)
        .map_or(BACKOFF_MAX, |d| d.clamp(BACKOFF_MIN, BACKOFF_MAX))
}

/// Settings of the loop, from the configuration.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub topic: String,
    pub batch_max_records: usize,
    /// `sink.batch_max_bytes`: a batch is flushed once it holds this many bytes, and no more than
    /// this is consumed ahead while a batch is being written.
    pub batch_max_bytes: usize,
    pub flush_interval: Duration,
    pub retention_months: u32,
    /// `ingest.validation`: records are decoded with the ingest's rule set.
    pub validation: crate::event::ValidationMode,
    /// `privacy.*`: applied to each record before it becomes a row.
    pub privacy: Arc<crate::privacy::Privacy>,
}

impl SinkSettings {
    pub fn from_config(c: &Config) -> SinkSettings {
        SinkSettings {
            topic: c.kafka.topic.clone(),
            batch_max_records: c.sink.batch_max_records,
            batch_max_bytes: usize::try_from(c.sink.batch_max_bytes).unwrap_or(usize::MAX),
            flush_interval: c.sink.flush_interval,
            retention_months: c.database.partition_retention_months,
            validation: c.ingest.validation,
            privacy: Arc::new(crate::privacy::Privacy::none()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dlq(#[from] super::dlq::DlqError),
}

pub struct SinkLoop {
    pub consumer: Arc<StreamConsumer<SinkContext>>,
    pub dead_letters: DeadLetters,
    pub store: Store,
    pub settings: SinkSettings,
}

/// Work left on a batch between attempts.
struct Pending {
    records: Vec<Record>,
    rows: Vec<Row>,
    row_src: Vec<usize>,
    /// Dead letters not yet acknowledged.
    dead: Vec<(usize, DeadReason)>,
}

impl SinkLoop {
    /// Runs until `token` is cancelled. Returns only then (or if the consumer cannot
    /// subscribe at all).
    pub async fn run(self, token: CancellationToken) -> Result<(), rdkafka::error::KafkaError> {
        // The schema must exist before the first insert; the database may still be starting.
        let mut attempt = 0;
        loop {
            match self.store.prepare().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "sink waiting for the database");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(attempt)) => {}
                        _ = token.cancelled() => return Ok(()),
                    }
                    attempt += 1;
                }
            }
        }
        self.consumer.subscribe(&[&self.settings.topic])?;
        tracing::info!(topic = %self.settings.topic, "sink consuming");
        let (max_records, max_bytes) = (
            self.settings.batch_max_records,
            self.settings.batch_max_bytes,
        );
        let mut batch = Queue::default();
        let mut carry = Queue::gauged(metrics::gauge!("audit_sink_carried_bytes"));
        let mut deadline: Option<Instant> = None;
        loop {
            while batch.has_room(max_records, max_bytes)
                && let Some(r) = carry.pop()
            {
                batch.push(r);
            }
            if !batch.is_empty() && deadline.is_none() {
                deadline = Some(Instant::now() + self.settings.flush_interval);
            }
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            if !batch.has_room(max_records, max_bytes) || (due && !batch.is_empty()) {
                self.forget_revoked(&mut batch, &mut carry);
                let records = batch.take();
                deadline = None;
                if !self
                    .flush(records, &mut carry, &token, CommitMode::Async)
                    .await
                {
                    break;
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                m = self.consumer.recv() => match m {
                    Ok(m) => {
                        let c = self.decode(&m);
                        drop(m);
                        self.forget_revoked(&mut batch, &mut carry);
                        batch.push(c);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error (retrying)");
                        tokio::time::sleep(BACKOFF_MIN).await;
                    }
                },
                _ = sleep_until_opt(deadline) => {}
            }
        }
        // Shutdown: store what we hold if the database answers at once, commit, and leave.
        if !batch.is_empty() {
            let records = batch.take();
            let stop_now = CancellationToken::new();
            stop_now.cancel();
            // Synchronous: the commit must reach the broker before the consumer leaves.
            self.flush(records, &mut carry, &stop_now, CommitMode::Sync)
                .await;
        }
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Copies a consumed message out of librdkafka and decodes it (see [`Consumed`]).
    fn decode<M: rdkafka::Message>(&self, m: &M) -> Consumed {
        let now = Utc::now();
        Consumed::new(
            Record::from_message(m),
            now,
            retention_cutoff(now, self.settings.retention_months),
            self.settings.validation,
            &self.settings.privacy,
        )
    }

    fn forget_revoked(&self, batch: &mut Queue, carry: &mut Queue) {
        let revoked = self.consumer.context().take_revoked();
        if revoked.is_empty() {
            return;
        }
        let dropped = batch.drop_revoked(&revoked) + carry.drop_revoked(&revoked);
        if dropped > 0 {
            tracing::info!(
                dropped,
                "dropped uncommitted records of revoked partitions; their new owner re-reads them"
            );
        }
    }

    /// Stores or dead-letters `records` and commits their offsets. Retries (pausing the
    /// partitions) until done, the partitions are revoked, or `token` is cancelled. Returns
    /// false when cancelled with the batch unfinished (nothing committed).
    async fn flush(
        &self,
        batch: Vec<Consumed>,
        carry: &mut Queue,
        token: &CancellationToken,
        mode: CommitMode,
    ) -> bool {
        let started = std::time::Instant::now();
        let _writing = Writing::start(batch.iter().map(Consumed::bytes).sum());
        let (records, plan) = batch::assemble(batch);
        let mut p = Pending {
            records,
            rows: plan.rows,
            row_src: plan.row_src,
            dead: plan.dead,
        };
        let mut attempt: u32 = 0;
        let mut paused: Option<TopicPartitionList> = None;
        let mut total = Inserted::default();
        let finished = loop {
            let mut revoked = HashSet::new();
            let r = self
                .attempt_while_consuming(&mut p, &mut total, carry, &mut revoked)
                .await;
            if !revoked.is_empty() {
                self.drop_revoked_from_pending(&mut p, &revoked);
            }
            match r {
                Ok(()) => break true,
                Err(e) => {
                    tracing::warn!(
                        error = %e, attempt, records = p.records.len(),
                        "batch not stored; retrying the same records (offsets not committed)"
                    );
                    metrics::counter!("audit_sink_batch_failures_total").increment(1);
                }
            }
            if token.is_cancelled() {
                break false;
            }
            if paused.is_none()
                && let Ok(assignment) = self.consumer.assignment()
                && self.consumer.pause(&assignment).is_ok()
            {
                paused = Some(assignment);
            }
            let mut revoked = HashSet::new();
            let waited = self
                .wait_polling(backoff(attempt), carry, &mut revoked, token)
                .await;
            // Revoked after the last carried record: those records are theirs too.
            let late = self.consumer.context().take_revoked();
            carry.drop_revoked(&late);
            revoked.extend(late);
            if !revoked.is_empty() {
                self.drop_revoked_from_pending(&mut p, &revoked);
            }
            if !waited {
                break false;
            }
            attempt += 1;
        };
        if let Some(tpl) = paused {
            // Partitions revoked meanwhile are not ours to resume; that error is expected.
            let _ = self.consumer.resume(&tpl);
        }
        if !finished {
            return false;
        }
        self.commit(&p.records, mode);
        metrics::counter!("audit_sink_rows_inserted_total").increment(total.rows);
        metrics::counter!("audit_sink_duplicates_total").increment(total.duplicates);
        metrics::histogram!("audit_sink_batch_events").record(p.records.len() as f64);
        metrics::histogram!("audit_sink_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        true
    }

    /// [`Self::attempt`], while the next records are consumed and decoded into `carry` (up to one
    /// batch of them): the sink's own work overlaps the database's.
    /// Partitions revoked meanwhile are added to `revoked`, for the caller to drop from the
    /// batch in flight.
    async fn attempt_while_consuming(
        &self,
        p: &mut Pending,
        total: &mut Inserted,
        carry: &mut Queue,
        revoked: &mut HashSet<(String, i32)>,
    ) -> Result<(), AttemptError> {
        let (max_records, max_bytes) = (
            self.settings.batch_max_records,
            self.settings.batch_max_bytes,
        );
        let attempt = self.attempt(p, total);
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                biased;
                r = &mut attempt => return r,
                m = self.consumer.recv(), if carry.has_room(max_records, max_bytes) => {
                    match m {
                        Ok(m) => self.carry_message(&m, carry, revoked),
                        Err(e) => tracing::debug!(error = %e, "Kafka consumer error (retrying)"),
                    }
                }
            }
        }
    }

    /// Appends `m` to `carry`. Partitions revoked before `m` arrived are first dropped from
    /// `carry` and noted in `revoked`: in this order, a partition revoked and assigned again
    /// keeps the records its new assignment delivers.
    fn carry_message<M: rdkafka::Message>(
        &self,
        m: &M,
        carry: &mut Queue,
        revoked: &mut HashSet<(String, i32)>,
    ) {
        let now_revoked = self.consumer.context().take_revoked();
        if !now_revoked.is_empty() {
            carry.drop_revoked(&now_revoked);
            revoked.extend(now_revoked);
        }
        carry.push(self.decode(m));
    }

    /// One try at the whole batch: unacknowledged dead letters, then the rows. Idempotent.
    async fn attempt(&self, p: &mut Pending, total: &mut Inserted) -> Result<(), AttemptError> {
        self.send_dead(p).await?;
        if !p.rows.is_empty() {
            let (inserted, unstorable) = insert_bisecting(&self.store, &p.rows).await?;
            *total = inserted;
            if !unstorable.is_empty() {
                // Keep these out of the rows for any further attempt, and dead-letter them.
                let mut keep = vec![true; p.rows.len()];
                for (i, e) in unstorable {
                    keep[i] = false;
                    p.dead.push((
                        p.row_src[i],
                        DeadReason {
                            kind: "unstorable",
                            message: e.to_string(),
                        },
                    ));
                }
                let mut k = keep.iter();
                p.rows.retain(|_| k.next().copied().unwrap_or(true));
                let mut k = keep.iter();
                p.row_src.retain(|_| k.next().copied().unwrap_or(true));
                self.send_dead(p).await?;
            }
        }
        Ok(())
    }

    async fn send_dead(&self, p: &mut Pending) -> Result<(), AttemptError> {
        if p.dead.is_empty() {
            return Ok(());
        }
        let letters: Vec<_> = p
            .dead
            .iter()
            .map(|(i, reason)| (&p.records[*i], reason))
            .collect();
        self.dead_letters.send_all(&letters).await?;
        p.dead.clear();
        Ok(())
    }

    fn drop_revoked_from_pending(&self, p: &mut Pending, revoked: &HashSet<(String, i32)>) {
        let is_revoked = |r: &Record| batch::is_revoked(r, revoked);
        let keep_row: Vec<bool> = p
            .row_src
            .iter()
            .map(|&i| !is_revoked(&p.records[i]))
            .collect();
        let mut k = keep_row.iter();
        p.rows.retain(|_| k.next().copied().unwrap_or(true));
        let mut k = keep_row.iter();
        p.row_src.retain(|_| k.next().copied().unwrap_or(true));
        p.dead.retain(|(i, _)| !is_revoked(&p.records[*i]));
        // Indices stay valid: records are only marked, then dropped from the commit below.
        let before = p.records.len();
        let remaining = p.records.iter().filter(|r| !is_revoked(r)).count();
        tracing::info!(
            dropped = before - remaining,
            "partitions revoked while their batch was in flight: their records are left to the new owner"
        );
        // Replace revoked records by offset-less markers so they are not committed.
        for r in p.records.iter_mut().filter(|r| is_revoked(r)) {
            r.offset = -1;
        }
    }

    /// Sleeps `d` while polling the consumer (group liveness, rebalances). Records that still
    /// arrive go to `carry`. False if cancelled.
    async fn wait_polling(
        &self,
        d: Duration,
        carry: &mut Queue,
        revoked: &mut HashSet<(String, i32)>,
        token: &CancellationToken,
    ) -> bool {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                biased;
                _ = token.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                m = self.consumer.recv() => {
                    if let Ok(m) = m {
                        self.carry_message(&m, carry, revoked);
                    }
                    // Newly assigned partitions start unpaused; keep everything paused.
                    if let Ok(a) = self.consumer.assignment() {
                        let _ = self.consumer.pause(&a);
                    }
                }
            }
        }
    }

    fn commit(&self, records: &[Record], mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in batch::commit_offsets(records) {
            if next <= 0 {
                continue; // only revoked markers
            }
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                tracing::warn!(error = %e, "cannot build the offset commit");
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = self.consumer.commit(&tpl, mode) {
            tracing::warn!(
                error = %e,
                "offset commit not sent; the records will be delivered again (no data is lost)"
            );
        }
    }
}

pub use crate::write::insert_bisecting;

/// `audit_sink_batch_bytes`: the bytes of the batch being written, 0 once it is done.
struct Writing(metrics::Gauge);

impl Writing {
    fn start(bytes: usize) -> Writing {
        let gauge = metrics::gauge!("audit_sink_batch_bytes");
        gauge.set(bytes as f64);
        Writing(gauge)
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.set(0.0);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_within_its_bounds() {
        // Jitter adds up to the delay again (and f32 arithmetic a hair more).
        let within = |attempt: u32, low: Duration, high: Duration| {
            for _ in 0..200 {
                let d = backoff(attempt);
                assert!(d >= low && d <= high, "attempt {attempt}: {d:?}");
            }
        };
        let ms = Duration::from_millis;
        within(0, BACKOFF_MIN, ms(201));
        within(1, ms(199), ms(401));
        within(4, ms(1599), ms(3201));
        within(5, ms(2499), BACKOFF_MAX);
        within(40, ms(2499), BACKOFF_MAX);
    }
}
