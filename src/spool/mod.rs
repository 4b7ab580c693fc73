//! The durable spool: every accepted event lives here, fsynced, until Kafka acknowledged it.
//!
//! - `record.rs`: the frame codecs (record frames, batch frames, the removed-records set);
//! - `store.rs`: the redb file, its tables, open-time recovery, reads;
//! - `writer.rs`: the single group-commit writer thread;
//! - `cli.rs`: the offline `spool stats|verify|export|requeue` commands.
//!
//! [`Spool`] is the cheap-to-clone handle the rest of the service uses. The on-disk format is
//! documented byte for byte in `spool-format.md` at the repository root.

pub mod cli;
pub mod record;
pub mod store;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use redb::Database;
use tokio::sync::{mpsc, oneshot};

pub use record::{QuarantineEntry, Record};
pub use store::{Opener, Stored};

/// Errors of the spool's storage layer.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "cannot open spool file {file}: {source}. The file was left untouched. Run \
         `audit-manager spool verify` for details; restore the file from a backup, or move it \
         aside (e.g. `mv {file} {file}.damaged`) to start with an empty spool, keeping the old \
         file for recovery"
    )]
    Open {
        file: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "spool file {file} is damaged or unreadable: {detail}. Its records were left as they \
         were. Options: run `audit-manager spool verify` (with the service stopped) to see what \
         is readable; \
         restore the file from a backup; or move it aside (e.g. `mv {file} {file}.damaged`) to \
         start with an empty spool, keeping the old file for recovery"
    )]
    Damaged { file: PathBuf, detail: String },
    #[error(
        "spool file {file} is in use by another process (is another audit-manager running on \
         this spool.path?). Stop it first; the offline `spool` commands need the service stopped"
    )]
    InUse { file: PathBuf },
    #[error("cannot create spool directory {dir}: {source}. Check spool.path and its permissions")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spool file {file} has format version {found}, this build reads versions {} to {}; \
         run the audit-manager release that wrote it to drain the spool first",
        store::OLDEST_FORMAT_VERSION,
        store::FORMAT_VERSION
    )]
    FormatVersion { file: PathBuf, found: u64 },
    #[error("spool storage error: {0}")]
    Db(#[from] redb::Error),
    #[error("spool commit failed: {0}")]
    Commit(String),
    #[error("spool is unavailable: {0}")]
    Unavailable(String),
    #[error("the spool writer has stopped (the service is shutting down)")]
    Closed,
}

impl SpoolError {
    /// A storage error met while reading `file` at open: name the file and the options.
    pub(crate) fn reading(self, file: &Path) -> SpoolError {
        match self {
            SpoolError::Db(e) => SpoolError::Damaged {
                file: file.to_path_buf(),
                detail: e.to_string(),
            },
            other => other,
        }
    }

    fn open(file: &Path, source: redb::DatabaseError) -> SpoolError {
        match source {
            redb::DatabaseError::DatabaseAlreadyOpen => SpoolError::InUse {
                file: file.to_path_buf(),
            },
            source => SpoolError::Open {
                file: file.to_path_buf(),
                source,
            },
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for SpoolError {
            fn from(e: $t) -> Self {
                SpoolError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Why an append was not made durable. None of these ever yields a 202.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error(
        "spool is full: {live_bytes} bytes of events not yet delivered to Kafka and \
         {quarantined_bytes} bytes of quarantined records use the {max_bytes}-byte bound \
         (spool.max_bytes){}",
        if *quarantined_bytes > 0 { QUARANTINE_HINT } else { "" }
    )]
    Full {
        live_bytes: u64,
        quarantined_bytes: u64,
        max_bytes: u64,
    },
    #[error(
        "too many requests are waiting for the spool writer (spool.max_pending_appends or \
         spool.max_pending_bytes)"
    )]
    Overloaded,
    #[error("spool write failed: {0}")]
    Storage(String),
    #[error("the service is shutting down")]
    Closed,
}

/// Appended to [`AppendError::Full`] when quarantined records take part of the bound.
const QUARANTINE_HINT: &str = "; quarantined records count toward the bound until an operator \
     handles them: inspect them with `audit-manager spool export --quarantine`, and \
     `audit-manager spool requeue` them once the cause is fixed";

impl AppendError {
    fn from_spool(e: SpoolError) -> AppendError {
        match e {
            SpoolError::Closed => AppendError::Closed,
            other => AppendError::Storage(other.to_string()),
        }
    }
}

/// Point-in-time figures, updated after every commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SpoolStats {
    pub live_events: u64,
    pub live_bytes: u64,
    pub max_bytes: u64,
    /// Unix milliseconds of the oldest live event's acceptance; 0 when empty.
    pub oldest_accepted_ms: u64,
    /// Records in the quarantine table.
    pub quarantined: u64,
    /// Bytes of quarantine frames; they count toward `max_bytes` (see [`SpoolStats::used_bytes`]).
    pub quarantined_bytes: u64,
}

impl SpoolStats {
    /// What the `spool.max_bytes` bound is checked against: live events plus quarantined records.
    /// A quarantine that keeps growing therefore ends in 503 AUD-004 at ingest, never in a full
    /// disk.
    pub fn used_bytes(&self) -> u64 {
        self.live_bytes.saturating_add(self.quarantined_bytes)
    }

    /// True when an append of `bytes` more would exceed the bound.
    pub fn is_full_for(&self, bytes: u64) -> bool {
        self.used_bytes().saturating_add(bytes) > self.max_bytes
    }

    /// How full the spool is, judged once for `/health` and `/ready` (ingest).
    ///
    /// [`Room::Full`] when the free room is smaller than one event of the largest allowed size
    /// (`max_event_bytes`, `ingest.max_event_bytes`) or a tenth of the bound, whichever is
    /// smaller: most requests would be refused with AUD-004, so `/ready` says not ready.
    /// [`Room::Low`] from 90% of the bound on: `/health` warns (DEGRADED) before that happens.
    /// Full implies at least 90% used, so a full spool is reported by both.
    pub fn room(&self, max_event_bytes: u64) -> Room {
        let used = self.used_bytes();
        let headroom = max_event_bytes.min(self.max_bytes / 10).max(1);
        if self.max_bytes.saturating_sub(used) < headroom {
            Room::Full
        } else if used.saturating_mul(10) >= self.max_bytes.saturating_mul(9) {
            Room::Low
        } else {
            Room::Ample
        }
    }

    /// Age of the oldest live event in seconds (0 when empty).
    pub fn oldest_age_secs(&self, now_ms: u64) -> f64 {
        if self.oldest_accepted_ms == 0 {
            0.0
        } else {
            now_ms.saturating_sub(self.oldest_accepted_ms) as f64 / 1000.0
        }
    }
}

/// How full the spool is ([`SpoolStats::room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Room {
    /// Less than 90% of `spool.max_bytes` used.
    Ample,
    /// At least 90% used: a warning on `/health`.
    Low,
    /// Less room than one large event: `/ready` answers AUD-004.
    Full,
}

/// Options for [`Spool::open`].
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
    pub max_pending_appends: usize,
}

/// Default of `spool.max_pending_bytes`; see [`Spool::with_max_pending_bytes`].
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 64 << 20;

/// An append's share of the bytes waiting for the writer. Given back when dropped, which the
/// writer does just before answering the append (or the queue, when the append never got in).
pub(crate) struct Reservation {
    shared: Arc<Shared>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.shared
            .pending_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        self.shared.pending_gauge.decrement(self.bytes as f64);
    }
}

pub(crate) struct Shared {
    file: PathBuf,
    max_bytes: u64,
    db: RwLock<Option<Arc<Database>>>,
    live_events: AtomicU64,
    live_bytes: AtomicU64,
    oldest_accepted_ms: AtomicU64,
    quarantined: AtomicU64,
    quarantined_bytes: AtomicU64,
    /// Bytes of encoded appends handed to the writer and not yet answered.
    pending_bytes: AtomicU64,
    /// `spool.max_pending_bytes`.
    max_pending_bytes: AtomicU64,
    /// `audit_spool_pending_bytes`, looked up once.
    pending_gauge: metrics::Gauge,
    last_error: Mutex<Option<String>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    /// Takes `bytes` of the pending-bytes bound, or refuses. An append larger than the whole
    /// bound is let through when nothing else waits, so a request that is legal by its size is
    /// never refused forever; the bound is exceeded by that one append only.
    fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation, AppendError> {
        let max = self.max_pending_bytes.load(Ordering::Relaxed);
        let mut current = self.pending_bytes.load(Ordering::Acquire);
        loop {
            let next = current.saturating_add(bytes);
            if next > max && current > 0 {
                return Err(AppendError::Overloaded);
            }
            match self.pending_bytes.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.pending_gauge.increment(bytes as f64);
        Ok(Reservation {
            shared: self.clone(),
            bytes,
        })
    }

    fn set_db(&self, db: Option<Arc<Database>>) {
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = db;
    }

    fn db(&self) -> Result<Arc<Database>, SpoolError> {
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        guard.clone().ok_or_else(|| {
            SpoolError::Unavailable(self.last_error().unwrap_or_else(|| "closed".into()))
        })
    }

    fn set_error(&self, e: Option<String>) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e;
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, c: &Counters) {
        self.live_events.store(c.live_events, Ordering::Relaxed);
        self.live_bytes.store(c.live_bytes, Ordering::Relaxed);
        self.oldest_accepted_ms
            .store(c.oldest_accepted_ms, Ordering::Relaxed);
        self.quarantined.store(c.quarantined, Ordering::Relaxed);
        self.quarantined_bytes
            .store(c.quarantined_bytes, Ordering::Relaxed);
        metrics::gauge!("audit_spool_events").set(c.live_events as f64);
        metrics::gauge!("audit_spool_bytes").set(c.live_bytes as f64);
        metrics::gauge!("audit_spool_quarantined_events").set(c.quarantined as f64);
        metrics::gauge!("audit_spool_quarantined_bytes").set(c.quarantined_bytes as f64);
    }
}

/// The figures the writer keeps and publishes after every commit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub live_events: u64,
    pub live_bytes: u64,
    pub oldest_accepted_ms: u64,
    pub quarantined: u64,
    pub quarantined_bytes: u64,
}

impl From<&store::Recovered> for Counters {
    fn from(r: &store::Recovered) -> Counters {
        Counters {
            live_events: r.live_events,
            live_bytes: r.live_bytes,
            oldest_accepted_ms: r.oldest_accepted_ms,
            quarantined: r.quarantined,
            quarantined_bytes: r.quarantined_bytes,
        }
    }
}

/// Handle to the running spool: appends and acknowledgements go to the writer thread; reads run
/// on the caller's thread in their own read transaction.
#[derive(Clone)]
pub struct Spool {
    shared: Arc<Shared>,
    tx: mpsc::Sender<writer::Command>,
}

impl Spool {
    /// Opens the spool file under `opts.dir` (creating it if missing), recovers its counters,
    /// quarantines damaged records and starts the writer thread.
    pub fn open(opts: &SpoolOptions) -> Result<Spool, SpoolError> {
        let opener = store::file_opener(&opts.dir)?;
        Spool::open_with(opener, store::file_path(&opts.dir), opts)
    }

    /// Like [`Spool::open`] with a custom opener (tests inject failing storage this way).
    pub fn open_with(
        opener: Opener,
        file: PathBuf,
        opts: &SpoolOptions,
    ) -> Result<Spool, SpoolError> {
        let (db, rec) = store::guard(&file, || {
            let db = store::open_database(&opener, &file)?;
            let rec = store::recover(&db, &file, store::OnDamage::Quarantine)?;
            Ok::<_, SpoolError>((db, rec))
        })?;
        if !rec.damaged.is_empty() {
            metrics::counter!("audit_spool_quarantined_total").increment(rec.damaged.len() as u64);
        }
        tracing::info!(
            file = %file.display(),
            events = rec.live_events,
            bytes = rec.live_bytes,
            quarantined = rec.quarantined,
            quarantined_bytes = rec.quarantined_bytes,
            damaged_now = rec.damaged.len(),
            "spool opened"
        );
        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            file,
            max_bytes: opts.max_bytes,
            db: RwLock::new(Some(db.clone())),
            live_events: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            oldest_accepted_ms: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            quarantined_bytes: AtomicU64::new(0),
            pending_bytes: AtomicU64::new(0),
            max_pending_bytes: AtomicU64::new(DEFAULT_MAX_PENDING_BYTES),
            pending_gauge: metrics::gauge!("audit_spool_pending_bytes"),
            last_error: Mutex::new(None),
            thread: Mutex::new(None),
        });
        let counters = Counters::from(&rec);
        shared.publish(&counters);
        let (tx, rx) = mpsc::channel(opts.max_pending_appends.max(1));
        let w = writer::Writer {
            shared: shared.clone(),
            opener,
            db: Some(db),
            next_seq: rec.next_seq,
            counters,
            max_bytes: opts.max_bytes,
            format_version: rec.format_version,
            suspect: false,
        };
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| SpoolError::Unavailable(format!("cannot start writer thread: {e}")))?;
        *shared.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        Ok(Spool { shared, tx })
    }

    /// Bounds the bytes of encoded appends waiting for the writer (`spool.max_pending_bytes`,
    /// default [`DEFAULT_MAX_PENDING_BYTES`]); appends beyond it get [`AppendError::Overloaded`].
    /// `spool.max_pending_appends` bounds their number; this bounds their memory, which a count
    /// cannot (a 500-event batch is ~400 KB).
    pub fn with_max_pending_bytes(self, bytes: u64) -> Spool {
        self.shared
            .max_pending_bytes
            .store(bytes.max(1), Ordering::Relaxed);
        self
    }

    /// Bytes of encoded appends handed to the writer and not yet answered (the gauge
    /// `audit_spool_pending_bytes`).
    pub fn pending_bytes(&self) -> u64 {
        self.shared.pending_bytes.load(Ordering::Acquire)
    }

    /// Makes `records` durable in one commit, all or none, as one value of the events table (a
    /// batch frame). Returns their sequence numbers, consecutive, once the commit holding them
    /// has been fsynced.
    pub async fn append(&self, records: &[Record]) -> Result<Vec<u64>, AppendError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let batch = record::encode_batch(records);
        // Refused here, without a commit, when the last published figures already leave no room:
        // a flood of appends against a full spool costs no fsyncs and writes nothing. The writer
        // checks again against its exact figures.
        let stats = self.stats();
        if stats.is_full_for(batch.record_bytes) {
            return Err(AppendError::Full {
                live_bytes: stats.live_bytes,
                quarantined_bytes: stats.quarantined_bytes,
                max_bytes: stats.max_bytes,
            });
        }
        let reservation = self.shared.reserve(batch.frame.len() as u64)?;
        let (reply, rx) = oneshot::channel();
        let cmd = writer::Command::Append {
            batch,
            reservation,
            reply,
        };
        // A refused command is dropped here, and its reservation with it.
        self.tx.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AppendError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => AppendError::Closed,
        })?;
        rx.await.unwrap_or(Err(AppendError::Closed))
    }

    /// Deletes delivered records; durable once this returns.
    pub async fn ack(&self, seqs: Vec<u64>) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Command::Ack { seqs, reply }).await?;
        rx.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// Moves a live record to the quarantine table with `reason`.
    pub async fn quarantine(&self, seq: u64, reason: String) -> Result<(), SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Command::Quarantine { seq, reason, reply })
            .await?;
        rx.await.unwrap_or(Err(SpoolError::Closed))
    }

    /// Moves every quarantined record back into circulation; returns how many.
    pub async fn requeue(&self) -> Result<u64, SpoolError> {
        let (reply, rx) = oneshot::channel();
        self.send(writer::Command::Requeue { reply }).await?;
        rx.await.unwrap_or(Err(SpoolError::Closed))
    }

    async fn send(&self, cmd: writer::Command) -> Result<(), SpoolError> {
        self.tx.send(cmd).await.map_err(|_| SpoolError::Closed)
    }

    /// Reads live records with `seq >= from` (see [`store::read_from`]).
    pub fn read_from(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Stored>, SpoolError> {
        let db = self.shared.db()?;
        store::read_from(&db, from, max_events, max_bytes)
    }

    pub fn stats(&self) -> SpoolStats {
        let s = &self.shared;
        SpoolStats {
            live_events: s.live_events.load(Ordering::Relaxed),
            live_bytes: s.live_bytes.load(Ordering::Relaxed),
            max_bytes: s.max_bytes,
            oldest_accepted_ms: s.oldest_accepted_ms.load(Ordering::Relaxed),
            quarantined: s.quarantined.load(Ordering::Relaxed),
            quarantined_bytes: s.quarantined_bytes.load(Ordering::Relaxed),
        }
    }

    /// `Err(reason)` while the last commit attempt failed (cleared by the next good commit).
    pub fn health(&self) -> Result<(), String> {
        match self.shared.last_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn file(&self) -> &Path {
        &self.shared.file
    }

    /// Stops the writer after every command queued before this call, and waits for it.
    pub async fn close(&self) {
        // A full queue only delays this; the writer is draining it.
        let _ = self.tx.send(writer::Command::Shutdown).await;
        let handle = self
            .shared
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
