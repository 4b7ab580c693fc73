//! The direct writer: `forward.target: postgres`, spool → `audit_events` with no broker between
//! (Kafka-less mode, docs/kafka-less.md).
//!
//! ```text
//!   reader (blocking pool)                          writer
//!   spool.read_from(cursor) ──decode──▶ Batch ──▶ write::store_rows ──▶ audit_events (committed)
//!                             │        (≤ PREFETCH      └─ refused rows ─┐
//!                             │         waiting)                         │
//!                             └─ undecodable ────────────────────────────┴▶ audit_dead_letters
//!                                                                           (committed)
//!                                                        then spool.ack(those seqs)
//! ```
//!
//! The reader decodes the next batch while the writer stores the current one and the spool
//! deletes the one before: the three overlap, and batches are stored and deleted in spool
//! order, one at a time.
//!
//! # Invariants
//!
//! - A record leaves the spool only after the transactions that stored its row, or its dead
//!   letter, committed. A crash anywhere leaves it in the spool; the next start writes it
//!   again and the copy collapses on `(id, occurred_at)` (a dead letter on its payload digest).
//! - A batch that fails is retried as it is, with backoff, while it fails: nothing behind it is
//!   written first, nothing is skipped. Only a record the database refuses for its own data
//!   (bisection isolates it; see [`crate::write`]) becomes a dead letter, so a failure that
//!   hits every record alike (a revoked privilege, a missing column, bad credentials, an
//!   outage) never fills `audit_dead_letters`: it stalls the writer and shows on `/health`
//!   while the spool absorbs the events (ingest answers 503 AUD-004 once it is full).
//! - Several processes may write one database at once (one per node): the store's inserts take
//!   the seal write lock shared, as the sink's do, so seals stay valid.
//!
//! # Metrics
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `audit_forward_rows_inserted_total` | counter | new rows written to `audit_events` |
//! | `audit_forward_duplicates_total` | counter | rows that were stored already (a retry, a restart) |
//! | `audit_forward_batch_events` | histogram | records per written batch |
//! | `audit_forward_decode_duration_seconds` | histogram | spool read + decode of a batch (the reader, overlapping the writes) |
//! | `audit_forward_batch_duration_seconds` | histogram | insert + dead letters of a batch, retries included |
//! | `audit_forward_batch_failures_total` | counter | batch attempts that failed and were retried |
//! | `audit_dead_letters_total{reason}` | counter | records put into `audit_dead_letters`, by reason kind |
//! | `audit_dead_letters` | gauge | dead letters waiting in the table |
//! | `audit_forward_oldest_event_age_seconds` | gauge | age of the oldest record not yet stored |

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ForwardSettings};
use crate::event::{Row, ValidationMode};
use crate::health::{Check, RoleReport, Status};
use crate::spool::{Spool, SpoolError, Stored, now_ms};
use crate::store::dead_letters::NewDeadLetter;
use crate::store::{Inserted, Store, StoreError, retention_cutoff};
use crate::write::{self, DeadReason};

/// Wait before retrying a failed spool operation (read, ack, quarantine).
const SPOOL_RETRY: Duration = Duration::from_secs(1);
/// Decoded batches the reader may hold ready beyond the one being written.
const PREFETCH: usize = 1;
/// How often the writer recounts `audit_dead_letters` (a replay empties it from outside).
const RECOUNT_INTERVAL: Duration = Duration::from_secs(10);

/// The writer's tuning, from the configuration (and the forward loop's timings).
#[derive(Debug, Clone)]
pub struct DirectSettings {
    /// Most records written in one batch (`sink.batch_max_records`).
    pub batch_max_records: usize,
    /// Most spooled bytes in one batch (`sink.batch_max_bytes`).
    pub batch_max_bytes: usize,
    /// How often an idle writer looks for new records.
    pub idle_poll: Duration,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    pub retention_months: u32,
    pub validation: ValidationMode,
}

impl DirectSettings {
    pub fn new(config: &Config, timings: &ForwardSettings) -> DirectSettings {
        DirectSettings {
            batch_max_records: config.sink.batch_max_records,
            batch_max_bytes: usize::try_from(config.sink.batch_max_bytes).unwrap_or(usize::MAX),
            idle_poll: timings.idle_poll,
            retry_backoff_min: timings.retry_backoff_min,
            retry_backoff_max: timings.retry_backoff_max,
            retention_months: config.database.partition_retention_months,
            validation: config.ingest.validation,
        }
    }

    /// Doubling from `retry_backoff_min` per consecutive failure, with jitter, within
    /// [`retry_backoff_min`, `retry_backoff_max`].
    fn backoff(&self, attempt: u32) -> Duration {
        use backon::{BackoffBuilder as _, ExponentialBuilder};
        ExponentialBuilder::new()
            .with_min_delay(self.retry_backoff_min)
            .with_max_delay(self.retry_backoff_max / 2)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempt.min(16) as usize)
            .map_or(self.retry_backoff_max, |d| {
                d.clamp(self.retry_backoff_min, self.retry_backoff_max)
            })
    }
}

/// What the writer is doing, shared with `/health`.
#[derive(Debug, Default)]
pub struct DirectState {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    stored: u64,
    last_store_ms: u64,
    /// Rows of `audit_dead_letters` when last counted (`None`: not counted yet).
    dead_letters: Option<i64>,
    /// A problem of the writer's own (the spool), beside the database's.
    problem: Option<String>,
}

impl DirectState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `forward` entry of `/health`: DEGRADED (not DOWN) while PostgreSQL is unreachable or
    /// refuses the writes, because ingest keeps accepting into the spool meanwhile.
    pub fn report(&self, spool: &Spool, store: &Store) -> RoleReport {
        let s = self.lock();
        let st = spool.stats();
        let mut detail = serde_json::Map::new();
        detail.insert("target".into(), json!("postgres"));
        detail.insert(
            "postgres".into(),
            json!({
                "stored_events": s.stored,
                "last_store_ms": s.last_store_ms,
            }),
        );
        detail.insert(
            "backlog".into(),
            json!({
                "events": st.live_events,
                "bytes": st.live_bytes,
                "oldest_event_age_seconds": st.oldest_age_secs(now_ms()),
            }),
        );
        if let Some(n) = s.dead_letters.filter(|n| *n > 0) {
            detail.insert(
                "dead_letters".into(),
                json!({
                    "count": n,
                    "what_to_do": "records PostgreSQL can never store as they are wait in table \
                                   audit_dead_letters with the reason (columns reason, detail); \
                                   fix the cause, then run `audit-manager dlq replay`",
                }),
            );
        }
        let mut report = RoleReport::up(detail);
        let problem = store.state().error.or_else(|| s.problem.clone());
        if let Some(p) = problem {
            report.status = Status::Degraded;
            report.code = Some("AUD-006");
            report.reason = Some(format!(
                "{p}; events stay in the spool and are written again, nothing is skipped; \
                 ingest keeps accepting until spool.max_bytes, then answers 503 AUD-004"
            ));
        }
        report
    }
}

/// The direct writer, ready to run.
pub struct DirectWriter {
    spool: Spool,
    store: Store,
    settings: DirectSettings,
    state: Arc<DirectState>,
    /// The writer's half of the privacy rules (see [`crate::write::decode`]).
    privacy: Arc<crate::privacy::Privacy>,
}

/// One batch read from the spool: what to store, what to dead-letter, what to delete after.
struct Batch {
    seqs: Vec<u64>,
    /// The spooled bytes and event `id` of each record of `seqs` (a dead letter keeps them).
    values: Vec<(Vec<u8>, String)>,
    rows: Vec<Row>,
    /// Index into `seqs` of the record of `rows[i]`.
    row_src: Vec<usize>,
    /// Records that can never be stored, by index into `seqs`.
    dead: Vec<(usize, DeadReason)>,
}

impl DirectWriter {
    pub fn new(spool: Spool, store: Store, settings: DirectSettings) -> DirectWriter {
        DirectWriter {
            spool,
            store,
            settings,
            state: Arc::default(),
            privacy: Arc::new(crate::privacy::Privacy::none()),
        }
    }

    /// Applies `privacy` (the writer's half of `privacy.*`) to every record before storing it.
    pub fn with_privacy(mut self, privacy: Arc<crate::privacy::Privacy>) -> DirectWriter {
        self.privacy = privacy;
        self
    }

    /// The `/health` check of the forward role in this mode.
    pub fn health_check(&self) -> Check {
        let (state, spool, store) = (self.state.clone(), self.spool.clone(), self.store.clone());
        Arc::new(move || state.report(&spool, &store))
    }

    /// Writes until `token` is cancelled; returns once the batch in hand is stored (if the
    /// database answers) and its records deleted from the spool.
    ///
    /// Two stages overlap: a reader reads the spool from its cursor and decodes the next batch
    /// (on the blocking pool: validation is CPU work) while this loop writes the current one
    /// and deletes the one before from the spool. The reader runs at most [`PREFETCH`] batches
    /// ahead; batches are written, and deleted, in spool order, one at a time, so a batch that
    /// fails holds back everything behind it as before.
    pub async fn run(self, token: CancellationToken) {
        if !self.prepare(&token).await {
            return;
        }
        tracing::info!("forwarding the spool straight into PostgreSQL (forward.target: postgres)");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(PREFETCH);
        let reader = tokio::spawn(read_loop(self.reader(), tx, token.clone()));
        let mut acking: Option<JoinHandle<()>> = None;
        let mut next_count = Instant::now();
        loop {
            if Instant::now() >= next_count {
                self.count_dead_letters().await;
                next_count = Instant::now() + RECOUNT_INTERVAL;
            }
            self.publish();
            let batch = tokio::select! {
                b = rx.recv() => match b {
                    Some(b) => b,
                    None => break, // the reader stopped: cancelled
                },
                _ = token.cancelled() => break,
                // Idle: wakes up to keep the age gauge and the dead-letter count fresh.
                _ = tokio::time::sleep(self.settings.idle_poll) => continue,
            };
            if !self.write(&batch, &token).await {
                break; // cancelled: the batch stays in the spool
            }
            // One delete in flight at a time, overlapping the next batch's write.
            if let Some(h) = acking.take() {
                let _ = h.await;
            }
            acking = Some(self.spawn_ack(batch.seqs));
        }
        // Batches read ahead and not written stay in the spool.
        drop(rx);
        let _ = reader.await;
        if let Some(h) = acking.take() {
            let _ = h.await;
        }
        tracing::info!("direct writer stopped");
    }

    fn reader(&self) -> Reader {
        Reader {
            spool: self.spool.clone(),
            settings: self.settings.clone(),
            state: self.state.clone(),
            privacy: self.privacy.clone(),
        }
    }

    /// Waits until the schema (with `audit_dead_letters`) is in place. False if cancelled.
    async fn prepare(&self, token: &CancellationToken) -> bool {
        let mut attempt = 0;
        loop {
            match self.store.prepare().await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "direct writer waiting for the database");
                    if !sleep_or_cancel(self.settings.backoff(attempt), token).await {
                        return false;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Stores `b` (rows, then dead letters), retrying with backoff until done. False when
    /// cancelled first (nothing of it is then deleted from the spool).
    async fn write(&self, b: &Batch, token: &CancellationToken) -> bool {
        let started = std::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            match self.attempt(b).await {
                Ok(done) => {
                    metrics::counter!("audit_forward_rows_inserted_total").increment(done.rows);
                    metrics::counter!("audit_forward_duplicates_total").increment(done.duplicates);
                    metrics::histogram!("audit_forward_batch_events").record(b.seqs.len() as f64);
                    metrics::histogram!("audit_forward_batch_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    let mut s = self.state.lock();
                    s.stored += b.rows.len() as u64;
                    s.last_store_ms = now_ms();
                    s.problem = None;
                    return true;
                }
                Err(e) => {
                    metrics::counter!("audit_forward_batch_failures_total").increment(1);
                    tracing::warn!(
                        error = %e, attempt, records = b.seqs.len(),
                        "batch not stored; retrying the same records (they stay in the spool)"
                    );
                }
            }
            // A shutdown does not wait for an outage to end: the spool keeps the batch.
            if token.is_cancelled() || !sleep_or_cancel(self.settings.backoff(attempt), token).await
            {
                return false;
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// One try at the whole batch. Idempotent: rows collapse on their key, dead letters on
    /// their digest.
    async fn attempt(&self, b: &Batch) -> Result<Inserted, StoreError> {
        let (done, refused) = if b.rows.is_empty() {
            (Inserted::default(), Vec::new())
        } else {
            write::store_rows(&self.store, &b.rows).await?
        };
        if b.dead.is_empty() && refused.is_empty() {
            return Ok(done);
        }
        let refused: Vec<(usize, DeadReason)> = refused
            .into_iter()
            .map(|(i, reason)| (b.row_src[i], reason))
            .collect();
        // Text columns cannot hold NUL, and a message may quote what the emitter sent.
        let texts: Vec<(String, String)> = b
            .dead
            .iter()
            .chain(&refused)
            .map(|(i, reason)| {
                (
                    crate::logging::escape_controls(&reason.message).into_owned(),
                    crate::logging::escape_controls(&b.values[*i].1).into_owned(),
                )
            })
            .collect();
        let letters: Vec<NewDeadLetter<'_>> = b
            .dead
            .iter()
            .chain(&refused)
            .zip(&texts)
            .map(|((i, reason), (detail, id))| NewDeadLetter {
                payload: &b.values[*i].0,
                reason: reason.kind,
                detail,
                event_id: Some(id),
            })
            .collect();
        self.store.insert_dead_letters(&letters).await?;
        let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (i, reason) in b.dead.iter().chain(&refused) {
            tracing::warn!(
                id = %crate::logging::escape_controls(&b.values[*i].1),
                reason = %crate::logging::escape_controls(&reason.header()),
                "event put into audit_dead_letters: PostgreSQL can never store it as it is"
            );
            *by_reason.entry(reason.kind).or_default() += 1;
        }
        for (reason, n) in by_reason {
            metrics::counter!("audit_dead_letters_total", "reason" => reason).increment(n);
        }
        self.count_dead_letters().await;
        Ok(done)
    }

    fn spawn_ack(&self, seqs: Vec<u64>) -> JoinHandle<()> {
        let spool = self.spool.clone();
        tokio::spawn(async move {
            loop {
                match spool.ack(seqs.clone()).await {
                    Ok(()) => return,
                    Err(SpoolError::Closed) => return,
                    Err(e) => {
                        tracing::error!(
                            error = %e, events = seqs.len(),
                            "cannot delete stored events from the spool; retrying (they are \
                             written again if the service stops first; the copies collapse)"
                        );
                        tokio::time::sleep(SPOOL_RETRY).await;
                    }
                }
            }
        })
    }

    async fn count_dead_letters(&self) {
        if let Ok(n) = self.store.count_dead_letters().await {
            metrics::gauge!("audit_dead_letters").set(n as f64);
            self.state.lock().dead_letters = Some(n);
        }
    }

    fn publish(&self) {
        let age = self.spool.stats().oldest_age_secs(now_ms());
        metrics::gauge!("audit_forward_oldest_event_age_seconds").set(age);
    }
}

/// What one read of the spool gave: the batch, the last sequence number read, and the records
/// damaged in the spool among them (with why).
struct Read {
    batch: Batch,
    last: u64,
    damaged: Vec<(u64, String)>,
}

/// The reading half of the writer: spool → decoded [`Batch`]es, in spool order.
struct Reader {
    spool: Spool,
    settings: DirectSettings,
    state: Arc<DirectState>,
    privacy: Arc<crate::privacy::Privacy>,
}

impl Reader {
    /// The next batch at or after `cursor` (`None`: the spool holds nothing there yet), and the
    /// records damaged in the spool among them. Runs on the blocking pool.
    fn next(&self, cursor: u64) -> Result<Option<Read>, SpoolError> {
        let started = std::time::Instant::now();
        let stored = self.spool.read_from(
            cursor,
            self.settings.batch_max_records,
            self.settings.batch_max_bytes,
        )?;
        let Some(last) = stored.last().map(Stored::seq) else {
            return Ok(None);
        };
        let (batch, damaged) = self.decode(stored);
        metrics::histogram!("audit_forward_decode_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(Some(Read {
            batch,
            last,
            damaged,
        }))
    }

    /// Splits spooled records into rows and dead letters, and returns the records damaged in
    /// the spool (with why) apart: they are quarantined there (as the Kafka forwarder does), not
    /// dead-lettered, since their bytes are not an event.
    fn decode(&self, stored: Vec<Stored>) -> (Batch, Vec<(u64, String)>) {
        let now = Utc::now();
        let cutoff = retention_cutoff(now, self.settings.retention_months);
        let mut b = Batch {
            seqs: Vec::with_capacity(stored.len()),
            values: Vec::with_capacity(stored.len()),
            rows: Vec::with_capacity(stored.len()),
            row_src: Vec::with_capacity(stored.len()),
            dead: Vec::new(),
        };
        let mut damaged = Vec::new();
        for s in stored {
            match s {
                Stored::Live { seq, record, .. } => {
                    let i = b.seqs.len();
                    match write::decode(
                        Some(&record.value),
                        now,
                        cutoff,
                        self.settings.validation,
                        &self.privacy,
                    ) {
                        Ok(row) => {
                            b.row_src.push(i);
                            b.rows.push(row);
                        }
                        Err(reason) => b.dead.push((i, reason)),
                    }
                    b.seqs.push(seq);
                    b.values.push((record.value, record.id));
                }
                Stored::Damaged { seq, error, .. } => {
                    damaged.push((seq, format!("damaged in spool: {error}")));
                }
            }
        }
        (b, damaged)
    }

    fn quarantine(&self, damaged: Vec<(u64, String)>) {
        for (seq, reason) in damaged {
            let spool = self.spool.clone();
            tokio::spawn(async move {
                match spool.quarantine(seq, reason.clone()).await {
                    Ok(()) => {
                        metrics::counter!("audit_forward_quarantined_total").increment(1);
                        tracing::error!(
                            seq, %reason,
                            "event quarantined: inspect it with `audit-manager spool \
                             export --quarantine`"
                        );
                    }
                    Err(e) => tracing::error!(seq, error = %e, "cannot quarantine"),
                }
            });
        }
    }
}

/// Reads and decodes batches from the start of the spool into `tx` until `token` is cancelled
/// or the writer stops taking them. The cursor moves past a batch once it is handed over: the
/// writer retries a batch itself until it is stored, so nothing is read twice while running
/// (a restart reads from the start again; what is left in the spool was not stored).
async fn read_loop(reader: Reader, tx: tokio::sync::mpsc::Sender<Batch>, token: CancellationToken) {
    let reader = Arc::new(reader);
    let mut cursor = 0u64;
    loop {
        if token.is_cancelled() {
            return;
        }
        let r = reader.clone();
        let read = tokio::task::spawn_blocking(move || r.next(cursor)).await;
        let next = match read {
            Ok(Ok(next)) => next,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the spool; retrying");
                reader.state.lock().problem = Some(format!("cannot read the spool: {e}"));
                if !sleep_or_cancel(SPOOL_RETRY, &token).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the spool failed; retrying");
                if !sleep_or_cancel(SPOOL_RETRY, &token).await {
                    return;
                }
                continue;
            }
        };
        let Some(Read {
            batch,
            last,
            damaged,
        }) = next
        else {
            if !sleep_or_cancel(reader.settings.idle_poll, &token).await {
                return;
            }
            continue;
        };
        reader.quarantine(damaged);
        cursor = last + 1;
        if batch.seqs.is_empty() {
            continue; // every record of it was damaged
        }
        tokio::select! {
            sent = tx.send(batch) => if sent.is_err() { return },
            _ = token.cancelled() => return,
        }
    }
}

/// Sleeps `d`; false if `token` was cancelled first.
async fn sleep_or_cancel(d: Duration, token: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = token.cancelled() => false,
    }
}

/// What a replay of `audit_dead_letters` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Dead letters whose row is now stored (and that left the table).
    pub stored: u64,
    /// Dead letters refused again (kept, with the new reason).
    pub refused: u64,
}

/// `dlq replay` in Kafka-less mode: writes the dead letters of `audit_dead_letters` (oldest
/// first, at most `limit`) through the same path as the direct writer. A stored one leaves the
/// table (after its row committed; a crash in between replays it again, and the copy
/// collapses); one refused again stays, with the new reason. A failure that hits every record
/// stops the replay with an error and changes nothing.
pub async fn replay(
    config: &Config,
    store: &Store,
    limit: Option<u64>,
    progress: &mut (dyn Write + Send),
) -> anyhow::Result<Replayed> {
    store.prepare().await?;
    let total = store.count_dead_letters().await?;
    writeln!(
        progress,
        "{total} dead letter(s) in audit_dead_letters to replay into audit_events"
    )?;
    let privacy = crate::privacy::writer(config).map_err(anyhow::Error::msg)?;
    let now = Utc::now();
    let cutoff = retention_cutoff(now, config.database.partition_retention_months);
    let mut done = Replayed::default();
    let mut after = 0i64;
    const PAGE: u64 = 500;
    loop {
        let left = limit.map_or(PAGE, |l| l.saturating_sub(done.stored + done.refused));
        if left == 0 {
            break;
        }
        let page = store
            .dead_letters_after(after, i64::try_from(left.min(PAGE)).unwrap_or(500))
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let mut rows = Vec::new();
        let mut row_src = Vec::new();
        for (i, d) in page.iter().enumerate() {
            match write::decode(
                Some(&d.payload),
                now,
                cutoff,
                config.ingest.validation,
                &privacy,
            ) {
                Ok(row) => {
                    rows.push(row);
                    row_src.push(i);
                }
                Err(reason) => {
                    store
                        .update_dead_letter(
                            d.id,
                            reason.kind,
                            &crate::logging::escape_controls(&reason.message),
                        )
                        .await?;
                    done.refused += 1;
                }
            }
        }
        let (_, refused) = write::store_rows(store, &rows).await?;
        let mut refused_idx = Vec::new();
        for (i, reason) in &refused {
            let d = &page[row_src[*i]];
            store
                .update_dead_letter(
                    d.id,
                    reason.kind,
                    &crate::logging::escape_controls(&reason.message),
                )
                .await?;
            refused_idx.push(*i);
            done.refused += 1;
        }
        let stored: Vec<i64> = row_src
            .iter()
            .enumerate()
            .filter(|(i, _)| !refused_idx.contains(i))
            .map(|(_, src)| page[*src].id)
            .collect();
        store.delete_dead_letters(&stored).await?;
        done.stored += stored.len() as u64;
        writeln!(
            progress,
            "stored {} of {total}, {} refused again",
            done.stored, done.refused
        )?;
    }
    writeln!(
        progress,
        "replayed: {} stored, {} refused again (still in audit_dead_letters with the reason)",
        done.stored, done.refused
    )?;
    Ok(done)
}
