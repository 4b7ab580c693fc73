//! The group-commit writer: one thread owns every write transaction of the spool.
//!
//! It blocks for the first command, then takes every command already waiting (up to a bound),
//! applies them all in ONE write transaction and commits it durably (redb's
//! `Durability::Immediate`: the commit returns after fsync). Only then does it answer each
//! waiter. So a 202 is sent only for events whose commit is on disk, and one fsync is shared by
//! every request that was waiting at that moment; forwarder acknowledgements ride in the same
//! transactions.
//!
//! A failed commit answers every waiter of that batch with an error (never success), drops the
//! database handle and reopens the file before the next batch: after an I/O error redb refuses
//! further use of the handle, and reopening repairs the file from its last durable commit.

use std::sync::Arc;
use std::time::Instant;

use redb::{Database, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use super::record::{Batch, QuarantineEntry};
use super::store::{self, EVENTS, META, OnDamage, Opener, QUARANTINE, REMOVED};
use super::{AppendError, Counters, Reservation, Shared, SpoolError, now_ms};

/// Upper bounds for one transaction, so a commit's latency stays bounded under a flood.
const MAX_EVENTS_PER_COMMIT: usize = 20_000;
const MAX_BYTES_PER_COMMIT: u64 = 32 << 20;

pub(super) enum Command {
    Append {
        batch: Batch,
        /// Its share of `spool.max_pending_bytes`, given back once it was answered.
        reservation: Reservation,
        reply: oneshot::Sender<Result<Vec<u64>, AppendError>>,
    },
    Ack {
        seqs: Vec<u64>,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Quarantine {
        seq: u64,
        reason: String,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    Requeue {
        reply: oneshot::Sender<Result<u64, SpoolError>>,
    },
    Shutdown,
}

impl Command {
    fn weight(&self) -> (usize, u64) {
        match self {
            Command::Append { batch, .. } => (batch.events as usize, batch.frame.len() as u64),
            Command::Ack { seqs, .. } => (seqs.len(), 0),
            _ => (1, 0),
        }
    }
}

pub(super) struct Writer {
    pub shared: Arc<Shared>,
    pub opener: Opener,
    pub db: Option<Arc<Database>>,
    pub next_seq: u64,
    pub counters: Counters,
    pub max_bytes: u64,
    /// `meta.format_version` of the open file: 1 until the first batch frame is committed.
    pub format_version: u64,
    /// Set when redb panicked inside a transaction (an inconsistent page in a file that passed
    /// the open-time scan, e.g. damaged allocator state): the next open runs redb's integrity
    /// check and repair before trusting the file again.
    pub suspect: bool,
}

/// What one transaction decided, applied to the counters only after the commit succeeded.
#[derive(Default)]
struct Outcome {
    appended_events: u64,
    appended_bytes: u64,
    deleted_events: u64,
    deleted_bytes: u64,
    quarantined: u64,
    quarantined_bytes: u64,
    requeued: u64,
    requeued_bytes: u64,
    oldest_accepted_ms: u64,
    next_seq: u64,
    format_version: u64,
}

/// The reply owed to each command of a batch once the commit's fate is known.
enum Pending {
    Appended(
        oneshot::Sender<Result<Vec<u64>, AppendError>>,
        Vec<u64>,
        Reservation,
    ),
    Refused(
        oneshot::Sender<Result<Vec<u64>, AppendError>>,
        AppendError,
        Reservation,
    ),
    Done(oneshot::Sender<Result<(), SpoolError>>),
    Requeued(oneshot::Sender<Result<u64, SpoolError>>),
}

impl Writer {
    pub fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut stop = false;
        while !stop {
            let Some(first) = rx.blocking_recv() else {
                break;
            };
            let (mut events, mut bytes) = first.weight();
            let mut batch = vec![first];
            while events < MAX_EVENTS_PER_COMMIT && bytes < MAX_BYTES_PER_COMMIT {
                match rx.try_recv() {
                    Ok(cmd) => {
                        let (e, b) = cmd.weight();
                        events += e;
                        bytes += b;
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            stop = batch.iter().any(|c| matches!(c, Command::Shutdown));
            self.process(batch);
        }
        // Answer whatever raced with shutdown instead of leaving it hanging.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            fail(cmd, || SpoolError::Closed);
        }
        self.shared.set_db(None);
        tracing::info!(file = %self.shared.file.display(), "spool writer stopped");
    }

    fn process(&mut self, batch: Vec<Command>) {
        let db = match self.ensure_open() {
            Ok(db) => db,
            Err(e) => {
                let msg = e.to_string();
                self.shared.set_error(Some(msg.clone()));
                for cmd in batch {
                    fail(cmd, || SpoolError::Unavailable(msg.clone()));
                }
                return;
            }
        };
        let started = Instant::now();
        let mut pending = Vec::with_capacity(batch.len());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.transact(&db, batch, &mut pending)
        }))
        .unwrap_or_else(|_| {
            self.suspect = true;
            Err(SpoolError::Commit(format!(
                "redb stopped on an inconsistent page of {} while committing; the file is \
                 reopened with redb's full integrity check and repair before the next commit",
                self.shared.file.display()
            )))
        });
        match result {
            Ok(outcome) => {
                let elapsed = started.elapsed();
                self.apply(&outcome);
                metrics::histogram!("audit_spool_commit_duration_seconds")
                    .record(elapsed.as_secs_f64());
                metrics::histogram!("audit_spool_commit_batch_events")
                    .record(outcome.appended_events as f64);
                self.shared.set_error(None);
                // A reservation is given back before its answer: an appender that has its answer
                // never sees its bytes still counted as pending.
                for p in pending {
                    match p {
                        Pending::Appended(tx, seqs, r) => {
                            drop(r);
                            drop(tx.send(Ok(seqs)))
                        }
                        Pending::Refused(tx, e, r) => {
                            drop(r);
                            drop(tx.send(Err(e)))
                        }
                        Pending::Done(tx) => drop(tx.send(Ok(()))),
                        Pending::Requeued(tx) => drop(tx.send(Ok(outcome.requeued))),
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                metrics::counter!("audit_spool_commit_failures_total").increment(1);
                tracing::error!(
                    error = %msg,
                    file = %self.shared.file.display(),
                    "spool commit failed; answering 503 AUD-009 to its requests and reopening \
                     the spool (check disk space and I/O errors in the kernel log)"
                );
                self.shared.set_error(Some(msg.clone()));
                // redb refuses further use of a handle after an I/O error: reopen next time.
                self.db = None;
                self.shared.set_db(None);
                // After a panic inside redb its handle may panic again when dropped (poisoned
                // locks); that must not take the writer thread down with it.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db))).is_err()
                {
                    self.suspect = true;
                }
                for p in pending {
                    let err = || SpoolError::Commit(msg.clone());
                    match p {
                        Pending::Appended(tx, _, r) | Pending::Refused(tx, _, r) => {
                            drop(r);
                            drop(tx.send(Err(AppendError::Storage(msg.clone()))))
                        }
                        Pending::Done(tx) => drop(tx.send(Err(err()))),
                        Pending::Requeued(tx) => drop(tx.send(Err(err()))),
                    }
                }
            }
        }
    }

    fn ensure_open(&mut self) -> Result<Arc<Database>, SpoolError> {
        if let Some(db) = &self.db {
            return Ok(db.clone());
        }
        let file = &self.shared.file;
        let (db, rec) = store::guard(file, || {
            let mut db = store::open_database(&self.opener, file)?;
            if self.suspect {
                // Verifies every page's checksum and rebuilds the allocator state.
                let intact = db.check_integrity().map_err(|source| SpoolError::Open {
                    file: file.clone(),
                    source,
                })?;
                tracing::warn!(file = %file.display(), intact, "spool integrity check done");
            }
            let rec = store::recover(&db, file, OnDamage::Quarantine)?;
            Ok::<_, SpoolError>((db, rec))
        })?;
        self.suspect = false;
        self.next_seq = rec.next_seq;
        self.format_version = rec.format_version;
        self.counters = Counters::from(&rec);
        self.shared.publish(&self.counters);
        let db = Arc::new(db);
        self.db = Some(db.clone());
        self.shared.set_db(Some(db.clone()));
        tracing::info!(file = %self.shared.file.display(), "spool reopened");
        Ok(db)
    }

    /// Applies every command in one write transaction. Acknowledgements go first so the room
    /// they free is available to the appends of the same batch.
    fn transact(
        &self,
        db: &Database,
        mut batch: Vec<Command>,
        pending: &mut Vec<Pending>,
    ) -> Result<Outcome, SpoolError> {
        batch.sort_by_key(|c| !matches!(c, Command::Ack { .. }));
        let txn = store::begin_write(db)?;
        let mut out = Outcome {
            next_seq: self.next_seq,
            format_version: self.format_version,
            ..Outcome::default()
        };
        {
            let mut events = txn.open_table(EVENTS)?;
            let mut removed = txn.open_table(REMOVED)?;
            let mut quarantine = txn.open_table(QUARANTINE)?;
            let mut meta = txn.open_table(META)?;
            for cmd in batch {
                match cmd {
                    Command::Ack { mut seqs, reply } => {
                        seqs.sort_unstable();
                        seqs.dedup();
                        for t in store::take(&mut events, &mut removed, &seqs, false)? {
                            out.deleted_events += 1;
                            out.deleted_bytes += t.bytes;
                        }
                        pending.push(Pending::Done(reply));
                    }
                    Command::Append {
                        batch,
                        reservation,
                        reply,
                    } => {
                        // Quarantined records count toward the bound: a quarantine flood must
                        // end in 503 AUD-004, not in a full disk.
                        let c = &self.counters;
                        let live =
                            (c.live_bytes + out.appended_bytes).saturating_sub(out.deleted_bytes);
                        let held = (c.quarantined_bytes + out.quarantined_bytes)
                            .saturating_sub(out.requeued_bytes);
                        if live + held + batch.record_bytes > self.max_bytes {
                            let e = AppendError::Full {
                                live_bytes: live,
                                quarantined_bytes: held,
                                max_bytes: self.max_bytes,
                            };
                            pending.push(Pending::Refused(reply, e, reservation));
                            continue;
                        }
                        // The whole request is one value, keyed by its first sequence number.
                        events.insert(out.next_seq, batch.frame.as_slice())?;
                        if out.format_version < store::FORMAT_VERSION {
                            // In the same commit as the first batch frame: a release that reads
                            // only version 1 refuses the file from now on, never misreads it.
                            meta.insert("format_version", store::FORMAT_VERSION)?;
                            out.format_version = store::FORMAT_VERSION;
                        }
                        let seqs: Vec<u64> = (out.next_seq..out.next_seq + batch.events).collect();
                        out.next_seq += batch.events;
                        out.appended_events += batch.events;
                        out.appended_bytes += batch.record_bytes;
                        pending.push(Pending::Appended(reply, seqs, reservation));
                    }
                    Command::Quarantine { seq, reason, reply } => {
                        let taken = store::take(&mut events, &mut removed, &[seq], true)?;
                        if let Some(t) = taken.into_iter().next() {
                            out.deleted_events += 1;
                            out.deleted_bytes += t.bytes;
                            let entry = QuarantineEntry {
                                quarantined_at_ms: now_ms(),
                                reason,
                                raw: t.raw.unwrap_or_default(),
                            };
                            let frame = entry.encode();
                            quarantine.insert(seq, frame.as_slice())?;
                            out.quarantined += 1;
                            out.quarantined_bytes += frame.len() as u64;
                        }
                        pending.push(Pending::Done(reply));
                    }
                    Command::Requeue { reply } => {
                        // Quarantined records go back under their original sequence numbers
                        // (into their batch when it is still there). An entry whose own frame is
                        // damaged stays: its contents cannot be trusted to be the record that
                        // was quarantined.
                        let mut back = Vec::new();
                        for entry in quarantine.iter()? {
                            let (seq, frame) = entry?;
                            let frame = frame.value();
                            if let Ok(q) = QuarantineEntry::decode(frame) {
                                back.push((seq.value(), frame.len() as u64, q.raw));
                            }
                        }
                        for (seq, frame_len, raw) in back {
                            quarantine.remove(seq)?;
                            out.requeued_bytes += frame_len;
                            out.requeued += 1;
                            if let Some(bytes) =
                                store::put_back(&mut events, &mut removed, seq, &raw)?
                            {
                                out.appended_bytes += bytes;
                                out.appended_events += 1;
                            }
                        }
                        pending.push(Pending::Requeued(reply));
                    }
                    Command::Shutdown => {}
                }
            }
            out.oldest_accepted_ms = store::oldest_accepted_ms(&events, &removed)?;
            meta.insert("next_seq", out.next_seq)?;
        }
        txn.commit()?;
        Ok(out)
    }

    /// Saturating: the figures are exact while the file is intact (`spool-format.md`,
    /// invariant 5); a batch whose index is damaged while the service runs is taken out as one
    /// unreadable value, and the next open recounts from the file.
    fn apply(&mut self, o: &Outcome) {
        self.next_seq = o.next_seq;
        self.format_version = o.format_version;
        let c = &mut self.counters;
        c.live_events = (c.live_events + o.appended_events).saturating_sub(o.deleted_events);
        c.live_bytes = (c.live_bytes + o.appended_bytes).saturating_sub(o.deleted_bytes);
        c.quarantined = (c.quarantined + o.quarantined).saturating_sub(o.requeued);
        c.quarantined_bytes =
            (c.quarantined_bytes + o.quarantined_bytes).saturating_sub(o.requeued_bytes);
        c.oldest_accepted_ms = o.oldest_accepted_ms;
        self.shared.publish(c);
    }
}

fn fail(cmd: Command, err: impl Fn() -> SpoolError) {
    match cmd {
        Command::Append { reply, .. } => {
            drop(reply.send(Err(AppendError::from_spool(err()))));
        }
        Command::Ack { reply, .. } | Command::Quarantine { reply, .. } => {
            drop(reply.send(Err(err())));
        }
        Command::Requeue { reply } => drop(reply.send(Err(err()))),
        Command::Shutdown => {}
    }
}
