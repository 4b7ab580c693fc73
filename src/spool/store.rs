//! The synchronous spool store: the redb file, its tables, opening with recovery, reads.
//!
//! Only the group-commit writer (`writer.rs`) writes while the service runs; readers (the
//! forwarder, `/health`, the offline CLI) use read transactions, which redb runs concurrently
//! with the writer. Table layout and invariants are documented in `spool-format.md`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use redb::{
    Builder, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError, Table,
    TableDefinition, WriteTransaction,
};

use super::record::{
    BATCH_VERSION, BatchIndex, FRAME_VERSION, FrameError, QuarantineEntry, Record, Removed,
    check_frame,
};
use super::{SpoolError, now_ms};

/// Live events: sequence number → a record frame (version 1, one event with that number) or a
/// batch frame (version 2, the events numbered from the key on, one per record).
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Records taken out of circulation: original sequence number → framed [`QuarantineEntry`].
pub const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");
/// Bookkeeping: `format_version`, `next_seq`.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Batches some of whose records are gone (acknowledged or quarantined): batch key → [`Removed`].
pub const REMOVED: TableDefinition<u64, &[u8]> = TableDefinition::new("removed");

/// The spool format version this build writes: set in the commit that stores the first batch
/// frame. It reads [`OLDEST_FORMAT_VERSION`] too.
pub const FORMAT_VERSION: u64 = 2;
/// The oldest format version this build reads (and drains).
pub const OLDEST_FORMAT_VERSION: u64 = 1;
/// The file inside `spool.path`.
pub const FILE_NAME: &str = "spool.redb";

/// redb's page cache by default (`spool.cache_bytes`). The spool is written once and read once
/// per record (by the forwarder, shortly after the append), so a large cache buys nothing and
/// would count against the process's memory budget; redb's own default is 1 GiB.
pub const CACHE_BYTES: usize = 16 << 20;

/// A redb builder with the spool's settings.
pub fn builder() -> Builder {
    builder_with_cache(CACHE_BYTES)
}

/// [`builder`] with a page cache of `cache_bytes`.
pub fn builder_with_cache(cache_bytes: usize) -> Builder {
    let mut b = Builder::new();
    b.set_cache_size(cache_bytes);
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
    /// `meta.format_version` (1 until the first batch frame was written).
    pub format_version: u64,
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
    file_opener_with_cache(dir, CACHE_BYTES)
}

/// [`file_opener`] with a page cache of `cache_bytes` (`spool.cache_bytes`).
pub fn file_opener_with_cache(dir: &Path, cache_bytes: usize) -> Result<Opener, SpoolError> {
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
        Ok(_) => builder_with_cache(cache_bytes).open(&file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_new(&file, cache_bytes),
        Err(e) => Err(e.into()),
    }))
}

/// Creates an empty spool at `file` atomically: initialized as `<file>.new`, then renamed.
fn create_new(file: &Path, cache_bytes: usize) -> Result<Database, DatabaseError> {
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
    builder_with_cache(cache_bytes).open(file)
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
    let format_version = init_tables(db, file)?;
    let mut out = Recovered {
        format_version,
        ..Recovered::default()
    };
    {
        let txn = db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let removed = txn.open_table(REMOVED)?;
        let mut last_end = 0;
        for entry in events.iter()? {
            let (key, frame) = entry?;
            let (key, frame) = (key.value(), frame.value());
            // Version and CRC only: the scan runs before the first 202 after a restart, and a
            // full decode of every record would double its time. A frame whose CRC matches but
            // whose body does not decode (a writer bug, not damage) is caught when the forwarder
            // reads it. The first live record is decoded for its acceptance time.
            let count = |seq: u64, record: &[u8], out: &mut Recovered| {
                let checked = if out.live_events == 0 {
                    Record::decode(record).map(|r| out.oldest_accepted_ms = r.accepted_at_ms)
                } else {
                    check_frame(record).map(|_| ())
                };
                match checked {
                    Ok(()) => {
                        out.live_events += 1;
                        out.live_bytes += record.len() as u64;
                    }
                    Err(error) => out.damaged.push(Damaged { seq, error }),
                }
            };
            let slot = Slot::of(frame);
            last_end = key + slot.span();
            match slot {
                Slot::Record => count(key, frame, &mut out),
                Slot::Batch(index) => {
                    let gone = removed_of(&removed, key, index.len())?;
                    for i in (0..index.len()).filter(|&i| !gone.contains(i)) {
                        count(key + i as u64, index.record(frame, i), &mut out);
                    }
                }
                Slot::Unreadable(error) => out.damaged.push(Damaged { seq: key, error }),
            }
        }
        let meta = txn.open_table(META)?;
        let stored_next = meta.get("next_seq")?.map(|v| v.value()).unwrap_or(0);
        // Sequence numbers are never reused, even after the spool drained completely.
        out.next_seq = last_end.max(stored_next);
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
            let mut removed = txn.open_table(REMOVED)?;
            let mut quarantine = txn.open_table(QUARANTINE)?;
            for d in &out.damaged {
                let Some(taken) = take(&mut events, &mut removed, &[d.seq], true)?.pop() else {
                    continue;
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
                    raw: taken.raw.unwrap_or_default(),
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

/// What one value of the events table is.
pub(crate) enum Slot {
    /// A record frame: one event, numbered by its key.
    Record,
    /// A batch frame: `index.len()` events, numbered from its key on.
    Batch(BatchIndex),
    /// Neither: its version byte is unknown, or it is a batch whose index copies are both
    /// damaged. It stands for one damaged event under its key (how many events it held is
    /// unknown).
    Unreadable(FrameError),
}

impl Slot {
    pub(crate) fn of(frame: &[u8]) -> Slot {
        match frame.first() {
            // A record frame is checked (CRC) when it is read.
            Some(&FRAME_VERSION) => Slot::Record,
            // Not only version 2: the version byte lies outside every CRC, and a batch whose
            // version byte flipped still has an index that proves what it is.
            _ => match BatchIndex::read(frame) {
                Ok(index) => Slot::Batch(index),
                Err(e) => Slot::Unreadable(match frame.first() {
                    Some(&BATCH_VERSION) => e,
                    Some(&v) => FrameError::UnknownVersion(v),
                    None => FrameError::Truncated(0),
                }),
            },
        }
    }

    /// How many sequence numbers the value holds.
    pub(crate) fn span(&self) -> u64 {
        match self {
            Slot::Batch(index) => index.len() as u64,
            Slot::Record | Slot::Unreadable(_) => 1,
        }
    }
}

/// The removed-records set of the batch under `key` with `n` records. A damaged entry counts
/// as "nothing removed": its records are served again (the sink collapses duplicates), none is
/// hidden.
fn removed_of(
    table: &impl ReadableTable<u64, &'static [u8]>,
    key: u64,
    n: usize,
) -> Result<Removed, SpoolError> {
    Ok(match table.get(key)? {
        None => Removed::none(n),
        Some(v) => Removed::decode(v.value(), n).unwrap_or_else(|e| {
            tracing::error!(
                key,
                error = %e,
                "damaged removed-records entry of a spool batch; its records are sent again"
            );
            Removed::none(n)
        }),
    })
}

/// The value holding sequence number `seq`: its key and what it is. `None` when no value holds
/// it (delivered, quarantined, or never written).
pub(crate) fn locate(
    events: &impl ReadableTable<u64, &'static [u8]>,
    seq: u64,
) -> Result<Option<(u64, Slot)>, SpoolError> {
    let Some(entry) = events.range(..=seq)?.next_back() else {
        return Ok(None);
    };
    let (key, frame) = entry?;
    let key = key.value();
    let slot = Slot::of(frame.value());
    Ok((seq < key + slot.span()).then_some((key, slot)))
}

/// One event taken out of the events table by [`take`].
pub(crate) struct Taken {
    /// What it counted toward the live bytes: its record frame's length (for an unreadable
    /// value, the value's length).
    pub bytes: u64,
    /// Its record frame (or the unreadable value), when asked for.
    pub raw: Option<Vec<u8>>,
}

/// Takes the events `seqs` (ascending) out of circulation: a record frame is deleted; a record
/// of a batch is marked in [`REMOVED`], and the batch deleted with its mark once all of its
/// records are gone. Sequence numbers no value holds (already gone) are skipped.
pub(crate) fn take(
    events: &mut Table<u64, &'static [u8]>,
    removed: &mut Table<u64, &'static [u8]>,
    seqs: &[u64],
    keep_raw: bool,
) -> Result<Vec<Taken>, SpoolError> {
    let mut out = Vec::with_capacity(seqs.len());
    let mut i = 0;
    while i < seqs.len() {
        let seq = seqs[i];
        let Some((key, slot)) = locate(events, seq)? else {
            i += 1;
            continue;
        };
        match slot {
            Slot::Record | Slot::Unreadable(_) => {
                if let Some(v) = events.remove(key)? {
                    let raw = v.value();
                    out.push(Taken {
                        bytes: raw.len() as u64,
                        raw: keep_raw.then(|| raw.to_vec()),
                    });
                }
                i += 1;
            }
            Slot::Batch(index) => {
                let end = key + index.len() as u64;
                let mut gone = removed_of(removed, key, index.len())?;
                {
                    // The record frames are only needed when they are kept (quarantine).
                    let frame = if keep_raw { events.get(key)? } else { None };
                    let frame = frame.as_ref().map(|f| f.value()).unwrap_or_default();
                    while i < seqs.len() && seqs[i] < end {
                        let at = (seqs[i] - key) as usize;
                        if gone.insert(at) {
                            out.push(Taken {
                                bytes: index.record_len(at),
                                raw: keep_raw.then(|| index.record(frame, at).to_vec()),
                            });
                        }
                        i += 1;
                    }
                }
                if gone.is_full() {
                    events.remove(key)?;
                    removed.remove(key)?;
                } else {
                    removed.insert(key, gone.encode().as_slice())?;
                }
            }
        }
    }
    Ok(out)
}

/// Puts a quarantined record back under its original sequence number. When the batch it came
/// from is still there (its siblings are not all gone), the record is still inside it and only
/// its mark is cleared; otherwise `raw` is stored as a value of its own. Returns the live bytes
/// it adds, or `None` when it was live already.
pub(crate) fn put_back(
    events: &mut Table<u64, &'static [u8]>,
    removed: &mut Table<u64, &'static [u8]>,
    seq: u64,
    raw: &[u8],
) -> Result<Option<u64>, SpoolError> {
    match locate(events, seq)? {
        Some((key, Slot::Batch(index))) => {
            let mut gone = removed_of(removed, key, index.len())?;
            let at = (seq - key) as usize;
            if !gone.remove(at) {
                return Ok(None);
            }
            if gone.is_clear() {
                removed.remove(key)?;
            } else {
                removed.insert(key, gone.encode().as_slice())?;
            }
            Ok(Some(index.record_len(at)))
        }
        Some(_) => Ok(None),
        None => {
            events.insert(seq, raw)?;
            Ok(Some(raw.len() as u64))
        }
    }
}

/// `accepted_at_ms` of the oldest live event (`now` when it is damaged); 0 when there is none.
pub(crate) fn oldest_accepted_ms(
    events: &impl ReadableTable<u64, &'static [u8]>,
    removed: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<u64, SpoolError> {
    let Some((key, frame)) = events.first()? else {
        return Ok(0);
    };
    let frame = frame.value();
    let record = match Slot::of(frame) {
        Slot::Record => Record::decode(frame),
        Slot::Batch(index) => {
            let gone = removed_of(removed, key.value(), index.len())?;
            match (0..index.len()).find(|&i| !gone.contains(i)) {
                Some(i) => Record::decode(index.record(frame, i)),
                None => return Ok(now_ms()),
            }
        }
        Slot::Unreadable(e) => Err(e),
    };
    Ok(record
        .map(|r| r.accepted_at_ms)
        .unwrap_or_else(|_| now_ms()))
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
        None => Ok(()),
        Some(v) if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&v) => Ok(()),
        Some(found) => Err(SpoolError::FormatVersion {
            file: file.to_path_buf(),
            found,
        }),
    }
}

/// Creates missing tables and returns the file's format version. A new file starts at version 1
/// (it holds no batch yet, so a release that reads only version 1 can still open it); the commit
/// that writes the first batch frame sets version 2.
fn init_tables(db: &Database, file: &Path) -> Result<u64, SpoolError> {
    let txn = begin_write(db)?;
    let version = {
        let mut meta = txn.open_table(META)?;
        txn.open_table(EVENTS)?;
        txn.open_table(QUARANTINE)?;
        txn.open_table(REMOVED)?;
        let version = meta.get("format_version")?.map(|v| v.value());
        match version {
            None => {
                meta.insert("format_version", OLDEST_FORMAT_VERSION)?;
                OLDEST_FORMAT_VERSION
            }
            Some(v) if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&v) => v,
            Some(other) => {
                return Err(SpoolError::FormatVersion {
                    file: file.to_path_buf(),
                    found: other,
                });
            }
        }
    };
    txn.commit()?;
    Ok(version)
}

/// Reads up to `max_events` live events with `seq >= from`, stopping early once `max_bytes`
/// of record frames were read (at least one event is returned if any exists). The events of a
/// batch come one by one, each with its own sequence number; a batch may be read in parts.
pub fn read_from(
    db: &Database,
    from: u64,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<Stored>, SpoolError> {
    let txn = db.begin_read()?;
    let events = txn.open_table(EVENTS)?;
    // A file written before batches existed may lack the table until the service opened it.
    let removed = match txn.open_table(REMOVED) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    // The batch holding `from` starts before it.
    let start = match locate(&events, from)? {
        Some((key, _)) => key,
        None => from,
    };
    let full = |out: &Vec<Stored>, bytes: usize| {
        out.len() >= max_events || (bytes >= max_bytes && !out.is_empty())
    };
    for entry in events.range(start..)? {
        if full(&out, bytes) {
            break;
        }
        let (key, frame) = entry?;
        let (key, frame) = (key.value(), frame.value());
        match Slot::of(frame) {
            Slot::Record => {
                bytes += frame.len();
                out.push(stored(key, frame));
            }
            Slot::Unreadable(error) => {
                bytes += frame.len();
                out.push(Stored::Damaged {
                    seq: key,
                    error,
                    raw: frame.to_vec(),
                });
            }
            Slot::Batch(index) => {
                let gone = match &removed {
                    Some(t) => removed_of(t, key, index.len())?,
                    None => Removed::none(index.len()),
                };
                let first = from.saturating_sub(key) as usize;
                for i in (first..index.len()).filter(|&i| !gone.contains(i)) {
                    if full(&out, bytes) {
                        break;
                    }
                    let record = index.record(frame, i);
                    bytes += record.len();
                    out.push(stored(key + i as u64, record));
                }
            }
        }
    }
    Ok(out)
}

/// One record frame as the readers see it.
fn stored(seq: u64, record: &[u8]) -> Stored {
    match Record::decode(record) {
        Ok(decoded) => Stored::Live {
            seq,
            record: decoded,
            size: record.len(),
        },
        Err(error) => Stored::Damaged {
            seq,
            error,
            raw: record.to_vec(),
        },
    }
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
