//! The synchronous spool store: the redb file, its tables, opening with recovery, reads.
//!
//! Only the group-commit writer (`writer.rs`) writes while the service runs; readers (the
//! forwarder, `/health`, the offline CLI) use read transactions, which redb runs concurrently
//! with the writer. Table layout and invariants are documented in `spool-format.md`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError,
    TableDefinition, WriteTransaction,
};

use super::record::{FrameError, QuarantineEntry, Record, check_frame};
use super::{SpoolError, now_ms};

/// Live events: sequence number → framed [`Record`].
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Records taken out of circulation: original sequence number → framed [`QuarantineEntry`].
pub const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");
/// Bookkeeping: `format_version`, `next_seq`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The spool format version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// The file inside `spool.path`.
pub const FILE_NAME: &str = "spool.redb";

/// redb's page cache. The spool is written once and read once per record (by the forwarder,
/// shortly after the append), so a large cache buys nothing and would count against the
/// process's memory budget; redb's default is 1 GiB.
pub const CACHE_BYTES: usize = 32 << 20;

/// A redb builder with the spool's settings.
pub fn builder() -> Builder {
    let mut b = Builder::new();
    b.set_cache_size(CACHE_BYTES);
    b
}

/// Environment variable choosing how commits prepare for crash recovery: `full` (the default)
/// or `quick`. See "Restart after a crash" in `spool-format.md`; it exists to compare the two
/// (`bench/spool-restart.sh`), not as a tuning knob.
pub const REPAIR_ENV: &str = "AUDIT_MANAGER_SPOOL_REPAIR";

/// True when commits use redb's quick-repair mode: each commit also saves the allocator state
/// and commits in two phases (two fsyncs), so reopening after a crash or power cut skips the walk
/// over the whole file. Off by default: measured side by side, the second fsync cost ~10% of the
/// single-event ingest rate, while the full repair after a SIGKILL still restarts in 1.3–3.1 s
/// with a million events spooled ("Restart after a crash" in `spool-format.md`).
pub fn quick_repair() -> bool {
    static MODE: OnceLock<bool> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var(REPAIR_ENV) {
        Err(_) => false,
        Ok(v) if v == "quick" => true,
        Ok(v) if v == "full" => false,
        Ok(v) => {
            tracing::warn!("{REPAIR_ENV}={v:?} is neither `quick` nor `full`; using `full`");
            false
        }
    })
}

/// Begins a write transaction with the spool's commit settings (durable, see [`quick_repair`]).
pub fn begin_write(db: &Database) -> Result<WriteTransaction, SpoolError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(quick_repair());
    Ok(txn)
}

/// Opens (or creates) the redb database. Boxed so tests can inject a failing storage backend.
pub type Opener = Arc<dyn Fn() -> Result<Database, DatabaseError> + Send + Sync>;

/// What the open-time scan does with a record whose frame does not check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDamage {
    /// Move it to the quarantine table (the service does this: it must not stall on one record).
    Quarantine,
    /// Leave the file as it is and only report (offline inspection: `spool verify`, `export`).
    Report,
}

/// A damaged live record found by a scan.
#[derive(Debug, Clone)]
pub struct Damaged {
    pub seq: u64,
    pub error: FrameError,
}

/// What the open-time scan found.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub live_events: u64,
    pub live_bytes: u64,
    /// `accepted_at_ms` of the first live record; 0 when the spool is empty.
    pub oldest_accepted_ms: u64,
    pub next_seq: u64,
    pub quarantined: u64,
    /// Sum of the quarantine frames' lengths (they count toward `spool.max_bytes`).
    pub quarantined_bytes: u64,
    /// Damaged records found (and, with [`OnDamage::Quarantine`], moved) by this scan.
    pub damaged: Vec<Damaged>,
}

/// One entry read from the events table.
#[derive(Debug, Clone)]
pub enum Stored {
    Live {
        seq: u64,
        record: Record,
        size: usize,
    },
    Damaged {
        seq: u64,
        error: FrameError,
        raw: Vec<u8>,
    },
}

impl Stored {
    pub fn seq(&self) -> u64 {
        match self {
            Stored::Live { seq, .. } | Stored::Damaged { seq, .. } => *seq,
        }
    }
}

/// Path of the spool file inside `spool.path`.
pub fn file_path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// The default opener: the file under `dir`, created if missing.
///
/// A new spool is initialized under a temporary name and renamed into place, so an existing
/// `spool.redb` is always a file redb finished creating. An empty or unreadable one is damage
/// (a truncation, a botched copy): it is refused, never silently replaced by a new spool.
pub fn file_opener(dir: &Path) -> Result<Opener, SpoolError> {
    std::fs::create_dir_all(dir).map_err(|source| SpoolError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let file = file_path(dir);
    Ok(Arc::new(move || match std::fs::metadata(&file) {
        Ok(m) if m.len() == 0 => Err(DatabaseError::Storage(StorageError::Corrupted(
            "the file is empty (0 bytes): it was truncated or replaced, nothing in it can be \
             recovered"
                .into(),
        ))),
        Ok(_) => builder().open(&file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_new(&file),
        Err(e) => Err(e.into()),
    }))
}

/// Creates an empty spool at `file` atomically: initialized as `<file>.new`, then renamed.
fn create_new(file: &Path) -> Result<Database, DatabaseError> {
    let tmp = file.with_extension("redb.new");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    builder().create(&tmp)?.close()?;
    std::fs::rename(&tmp, file)?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    builder().open(file)
}

/// Runs `f`, turning a panic into [`SpoolError::Damaged`] for `file`.
///
/// redb trusts a cleanly closed file: a page altered behind its back (a flipped bit on the
/// medium, a truncated copy) can make it panic instead of returning an error. The open-time scan
/// walks every page of the spool's tables, so damage of that kind shows up here, where it stops
/// startup with the file named, instead of later in a thread serving requests.
pub fn guard<T, E: From<SpoolError>>(
    file: &Path,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("redb stopped on an inconsistent page");
            Err(SpoolError::Damaged {
                file: file.to_path_buf(),
                detail: format!("reading it failed ({detail})"),
            }
            .into())
        }
    }
}

/// Opens the database through `opener`, explaining failures in operator terms.
pub fn open_database(opener: &Opener, file: &Path) -> Result<Database, SpoolError> {
    opener().map_err(|source| SpoolError::open(file, source))
}

/// Creates missing tables, checks the format version, scans every live record.
pub fn recover(db: &Database, file: &Path, on_damage: OnDamage) -> Result<Recovered, SpoolError> {
    scan(db, file, on_damage).map_err(|e| e.reading(file))
}

fn scan(db: &Database, file: &Path, on_damage: OnDamage) -> Result<Recovered, SpoolError> {
    init_tables(db, file)?;
    let mut out = Recovered::default();
    {
        let txn = db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        for entry in events.iter()? {
            let (seq, frame) = entry?;
            let (seq, frame) = (seq.value(), frame.value());
            // Version and CRC only: the scan runs before the first 202 after a restart, and a
            // full decode of every record would double its time. A frame whose CRC matches but
            // whose body does not decode (a writer bug, not damage) is caught when the forwarder
            // reads it. The first live record is decoded for its acceptance time.
            let checked = if out.live_events == 0 {
                Record::decode(frame).map(|r| out.oldest_accepted_ms = r.accepted_at_ms)
            } else {
                check_frame(frame).map(|_| ())
            };
            match checked {
                Ok(()) => {
                    out.live_events += 1;
                    out.live_bytes += frame.len() as u64;
                }
                Err(error) => out.damaged.push(Damaged { seq, error }),
            }
        }
        let meta = txn.open_table(META)?;
        let last_seq = events.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
        let stored_next = meta.get("next_seq")?.map(|v| v.value()).unwrap_or(0);
        // Sequence numbers are never reused, even after the spool drained completely.
        out.next_seq = last_seq.max(stored_next);
        for entry in txn.open_table(QUARANTINE)?.iter()? {
            let (_, frame) = entry?;
            out.quarantined += 1;
            out.quarantined_bytes += frame.value().len() as u64;
        }
    }
    if on_damage == OnDamage::Quarantine && !out.damaged.is_empty() {
        let txn = begin_write(db)?;
        {
            let mut events = txn.open_table(EVENTS)?;
            let mut quarantine = txn.open_table(QUARANTINE)?;
            for d in &out.damaged {
                let raw = match events.remove(d.seq)? {
                    Some(v) => v.value().to_vec(),
                    None => continue,
                };
                tracing::error!(
                    seq = d.seq,
                    error = %d.error,
                    file = %file.display(),
                    "damaged spool record moved to quarantine; inspect it with \
                     `audit-manager spool export --quarantine`"
                );
                let entry = QuarantineEntry {
                    quarantined_at_ms: now_ms(),
                    reason: format!("damaged in spool: {}", d.error),
                    raw,
                };
                let frame = entry.encode();
                quarantine.insert(d.seq, frame.as_slice())?;
                out.quarantined += 1;
                out.quarantined_bytes += frame.len() as u64;
            }
        }
        txn.commit()?;
    }
    Ok(out)
}

/// Refuses a file whose `meta.format_version` this build does not know, without writing (the
/// offline commands use this; the service checks in [`recover`]).
pub fn check_format_version(db: &Database, file: &Path) -> Result<(), SpoolError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        // Not initialized yet: the service writes the version on its first start.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    match meta.get("format_version")?.map(|v| v.value()) {
        None | Some(FORMAT_VERSION) => Ok(()),
        Some(found) => Err(SpoolError::FormatVersion {
            file: file.to_path_buf(),
            found,
        }),
    }
}

fn init_tables(db: &Database, file: &Path) -> Result<(), SpoolError> {
    let txn = begin_write(db)?;
    {
        let mut meta = txn.open_table(META)?;
        txn.open_table(EVENTS)?;
        txn.open_table(QUARANTINE)?;
        let version = meta.get("format_version")?.map(|v| v.value());
        match version {
            None => {
                meta.insert("format_version", FORMAT_VERSION)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(SpoolError::FormatVersion {
                    file: file.to_path_buf(),
                    found: other,
                });
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Reads up to `max_events` live entries with `seq >= from`, stopping early once `max_bytes`
/// of frames were read (at least one entry is returned if any exists).
pub fn read_from(
    db: &Database,
    from: u64,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<Stored>, SpoolError> {
    let txn = db.begin_read()?;
    let events = txn.open_table(EVENTS)?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for entry in events.range(from..)? {
        if out.len() >= max_events || (bytes >= max_bytes && !out.is_empty()) {
            break;
        }
        let (seq, frame) = entry?;
        let (seq, frame) = (seq.value(), frame.value());
        bytes += frame.len();
        out.push(match Record::decode(frame) {
            Ok(record) => Stored::Live {
                seq,
                record,
                size: frame.len(),
            },
            Err(error) => Stored::Damaged {
                seq,
                error,
                raw: frame.to_vec(),
            },
        });
    }
    Ok(out)
}

/// Every quarantined entry, in sequence order. An entry whose own frame is damaged is returned
/// with a reason saying so and its raw bytes.
pub fn read_quarantine(db: &Database) -> Result<Vec<(u64, QuarantineEntry)>, SpoolError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(QUARANTINE)?;
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (seq, frame) = entry?;
        let frame = frame.value();
        let q = QuarantineEntry::decode(frame).unwrap_or_else(|e| QuarantineEntry {
            quarantined_at_ms: 0,
            reason: format!("quarantine entry itself is damaged: {e}"),
            raw: frame.to_vec(),
        });
        out.push((seq.value(), q));
    }
    Ok(out)
}
