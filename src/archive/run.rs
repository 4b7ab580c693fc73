//! `archive run` and the maintain role's archive pass.
//!
//! A part is written in this order, each step safe to crash after:
//!
//! 1. its intent is recorded in `audit_archives` (month, part, the `seal_seq` range it holds,
//!    its creation time) — nothing is dropped on an intent;
//! 2. its rows are streamed from PostgreSQL into Parquet files of bounded size, each uploaded
//!    never-overwrite as soon as it is full, then the seals naming the rows;
//! 3. every object is read back and its size and SHA-256 compared with what was written;
//! 4. the signed manifest is uploaded (never-overwrite) and read back;
//! 5. the record is marked verified with the manifest's hash: only now may retention drop
//!    the month (`store::archives::unarchived_reason`).
//!
//! A pass first finishes any intent a crash left, with the same bounds and time: the same
//! rows write the same bytes, so an object an earlier attempt uploaded is found equal and kept
//! (an object with other content is never overwritten: the pass stops and says so).

use std::collections::BTreeSet;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::TryStreamExt as _;
use sha2::{Digest as _, Sha256};

use super::manifest::{self, FileEntry, Manifest, SealRange};
use super::objects::Objects;
use super::parquet::FileWriter;
use super::{ArchiveError, layout};
use crate::config::Config;
use crate::fault::fault_point;
use crate::integrity::SealLine;
use crate::integrity::seal::{self, Signer};
use crate::store::archives::{self, ArchiveRecord};
use crate::store::{AdvisoryLock, Month, Store, locks};

/// A seals file is closed (and the next begun) at this many bytes.
pub const SEALS_FILE_BYTES: usize = 16 * 1024 * 1024;

/// The archiver: the database, the object store and the signing key.
pub struct Archiver {
    store: Store,
    objects: Objects,
    signer: Signer,
    after_months: u32,
}

/// One part written (or finished) by a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDone {
    pub sequence: i64,
    pub month: String,
    pub part: i32,
    pub rows: u64,
    /// An intent a crash had left, finished now.
    pub resumed: bool,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// False when another archiver held the lock (nothing was done).
    pub locked: bool,
    pub parts: Vec<PartDone>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Archiver {
    /// The archiver of `config` (`None` without `archive.url`). Needs
    /// `integrity.signing_key_file`: manifests are signed with it.
    pub fn from_config(config: &Config, store: Store) -> Result<Option<Archiver>, ArchiveError> {
        let Some(url) = &config.archive.url else {
            return Ok(None);
        };
        let Some(key) = &config.integrity.signing_key_file else {
            return Err(ArchiveError::Config(
                "archive.url is set but integrity.signing_key_file is not: archives are \
                 verified with the seals and signed with that key; set it (audit-manager keygen)"
                    .into(),
            ));
        };
        let signer = Signer::new(seal::load_signing_key(key)?);
        Ok(Some(Archiver::new(
            store,
            Objects::open(url)?,
            signer,
            config.archive.after_months,
        )))
    }

    pub fn new(store: Store, objects: Objects, signer: Signer, after_months: u32) -> Archiver {
        Archiver {
            store,
            objects,
            signer,
            after_months,
        }
    }

    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    /// One pass: finish what a crash left, then archive every month that ended
    /// `archive.after_months` ago (or only `month`) with rows in no part yet. Holds
    /// [`AdvisoryLock::Archive`] (of several archivers, one works at a time).
    pub async fn pass(
        &self,
        now: DateTime<Utc>,
        only: Option<Month>,
    ) -> Result<PassReport, ArchiveError> {
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(ArchiveError::db("connecting"))?;
        let locked = locks::try_lock_for_session(&mut conn, AdvisoryLock::Archive)
            .await
            .map_err(ArchiveError::db("taking the archive lock"))?;
        if !locked {
            return Ok(PassReport::default());
        }
        let r = self.pass_locked(now, only).await;
        if locks::unlock_session(&mut conn, AdvisoryLock::Archive)
            .await
            .is_err()
        {
            conn.detach();
        }
        r.map(|parts| PassReport {
            locked: true,
            parts,
        })
    }

    async fn pass_locked(
        &self,
        now: DateTime<Utc>,
        only: Option<Month>,
    ) -> Result<Vec<PartDone>, ArchiveError> {
        let pool = self.store.pool();
        let mut done = Vec::new();
        let mut records = archives::records(pool)
            .await
            .map_err(ArchiveError::db("reading audit_archives"))?;
        for r in records.iter().filter(|r| r.manifest_hash.is_none()) {
            let previous = previous_hash(&records, r.sequence)?;
            let rows = self.write_part(r, previous).await?;
            done.push(PartDone {
                sequence: r.sequence,
                month: r.month.clone(),
                part: r.part,
                rows,
                resumed: true,
            });
        }
        if !done.is_empty() {
            records = archives::records(pool)
                .await
                .map_err(ArchiveError::db("reading audit_archives"))?;
        }
        let months: Vec<Month> = match only {
            Some(m) => {
                if m.plus(1).start().is_none_or(|end| end > now) {
                    return Err(ArchiveError::Config(format!(
                        "{m} has not ended yet: only a closed month can be archived"
                    )));
                }
                vec![m]
            }
            None => {
                let cutoff = Month::of(now).plus(-i64::from(self.after_months)).start();
                let parts = self
                    .store
                    .list_partitions()
                    .await
                    .map_err(|e| ArchiveError::Other(e.to_string()))?;
                let set: BTreeSet<Month> = parts
                    .iter()
                    .filter(|p| matches!((p.upper, cutoff), (Some(u), Some(c)) if u <= c))
                    .filter_map(|p| p.lower.map(Month::of))
                    .collect();
                set.into_iter().collect()
            }
        };
        let upto = self.sealed_upto().await?;
        for month in months {
            let (Some(lower), Some(upper)) = (month.start(), month.plus(1).start()) else {
                continue;
            };
            let name = month.to_string();
            let mine: Vec<&ArchiveRecord> = records.iter().filter(|r| r.month == name).collect();
            let after = mine.iter().map(|r| r.seal_upto).max().unwrap_or(0);
            let legacy = mine.is_empty();
            if upto <= after && !legacy {
                continue;
            }
            let n = archives::count_part(pool, lower, upper, after, upto.max(after), legacy)
                .await
                .map_err(ArchiveError::db(format!("counting the rows of {name}")))?;
            if n == 0 {
                continue;
            }
            let part = mine.iter().map(|r| r.part).max().unwrap_or(0) + 1;
            let sequence = records.iter().map(|r| r.sequence).max().unwrap_or(0) + 1;
            let created_at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
            let record = ArchiveRecord {
                sequence,
                month: name.clone(),
                part,
                seal_after: after,
                seal_upto: upto.max(after),
                legacy,
                created_at,
                manifest_path: layout::manifest_file(month, part),
                rows: None,
                manifest_hash: None,
                verified_at: None,
            };
            archives::insert_intent(pool, &record)
                .await
                .map_err(ArchiveError::db(format!("recording the archive of {name}")))?;
            let previous = previous_hash(&records, sequence)?;
            let rows = self.write_part(&record, previous).await?;
            tracing::info!(month = %name, part, rows, sequence, "archived");
            metrics::counter!("audit_archive_rows_total").increment(rows);
            metrics::counter!("audit_archive_parts_total").increment(1);
            done.push(PartDone {
                sequence,
                month: name,
                part,
                rows,
                resumed: false,
            });
            records = archives::records(pool)
                .await
                .map_err(ArchiveError::db("reading audit_archives"))?;
        }
        Ok(done)
    }

    /// `hi` of the newest seal, from its signed bytes (0 without seals): rows numbered up to
    /// it are sealed.
    async fn sealed_upto(&self) -> Result<i64, ArchiveError> {
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(ArchiveError::db("connecting"))?;
        let bytes = crate::store::seals::newest_bytes(&mut conn)
            .await
            .map_err(ArchiveError::db("reading the newest seal"))?;
        let Some(bytes) = bytes else { return Ok(0) };
        let s = seal::Seal::from_bytes(&bytes)
            .map_err(|e| ArchiveError::Other(format!("the newest seal {e}; run verify")))?;
        Ok(s.hi)
    }

    /// Writes, reads back and records part `r`; returns its rows.
    async fn write_part(
        &self,
        r: &ArchiveRecord,
        previous: Option<[u8; 32]>,
    ) -> Result<u64, ArchiveError> {
        let month = layout::parse_month(&r.month)
            .ok_or_else(|| ArchiveError::Other(format!("audit_archives: bad month {}", r.month)))?;
        let (Some(lower), Some(upper)) = (month.start(), month.plus(1).start()) else {
            return Err(ArchiveError::Other(format!("month {month} out of range")));
        };
        let pool = self.store.pool();
        let mut conn = pool
            .acquire()
            .await
            .map_err(ArchiveError::db("connecting"))?;
        let mut files: Vec<FileEntry> = Vec::new();
        let mut stats = Stats::default();
        {
            let mut rows =
                archives::part_rows(&mut conn, lower, upper, r.seal_after, r.seal_upto, r.legacy);
            let mut writer = FileWriter::new()?;
            while let Some(row) = rows
                .try_next()
                .await
                .map_err(ArchiveError::db(format!("reading the rows of {month}")))?
            {
                stats.add(&row)?;
                writer.push(row)?;
                if writer.full() {
                    let full = std::mem::replace(&mut writer, FileWriter::new()?);
                    self.upload_parquet(month, r.part, full, &mut files).await?;
                }
            }
            if writer.rows() > 0 || files.is_empty() {
                self.upload_parquet(month, r.part, writer, &mut files)
                    .await?;
            }
        }
        let mut seals = None;
        let mut key_ids = BTreeSet::new();
        if let (Some(first), Some(last)) = (stats.seq_min, stats.seq_max) {
            let mut stream = archives::seals_holding(&mut conn, first, last);
            let mut buf: Vec<u8> = Vec::new();
            let (mut count, mut range): (u64, Option<(u64, u64)>) = (0, None);
            let mut n = 0;
            while let Some(s) = stream
                .try_next()
                .await
                .map_err(ArchiveError::db("reading the seals"))?
            {
                let no = u64::try_from(s.seal_no).unwrap_or(0);
                range = match range {
                    None => Some((no, no)),
                    Some((a, b)) if b + 1 == no => Some((a, no)),
                    Some((_, b)) => {
                        return Err(ArchiveError::Other(format!(
                            "seals {} to {} are missing from audit_seals; run audit-manager \
                             verify before archiving",
                            b + 1,
                            no - 1
                        )));
                    }
                };
                key_ids.insert(s.key_id.clone());
                let line = SealLine::new(no, &s.bytes, &s.signature, &s.key_id);
                serde_json::to_writer(&mut buf, &line)
                    .map_err(|e| ArchiveError::Other(e.to_string()))?;
                buf.push(b'\n');
                count += 1;
                if buf.len() >= SEALS_FILE_BYTES {
                    n += 1;
                    let path = layout::seals_file(month, r.part, n);
                    self.upload(&path, "seals", std::mem::take(&mut buf), count, &mut files)
                        .await?;
                    count = 0;
                }
            }
            if count > 0 {
                n += 1;
                let path = layout::seals_file(month, r.part, n);
                self.upload(&path, "seals", buf, count, &mut files).await?;
            }
            seals = range.map(|(first, last)| SealRange { first, last });
        }
        drop(conn);
        fault_point("archive-before-readback");
        for f in &files {
            let (size, sha) = self.objects.digest(&f.path).await?;
            if size != f.bytes || hex::encode(sha) != f.sha256 {
                return Err(ArchiveError::ReadBack(format!(
                    "{} reads back as {size} bytes with SHA-256 {} but {} bytes with {} were \
                     written; the part is not recorded (the next pass tries again)",
                    f.path,
                    hex::encode(sha),
                    f.bytes,
                    f.sha256
                )));
            }
        }
        let m = Manifest {
            format: manifest::FORMAT,
            sequence: r.sequence,
            previous: previous.map(hex::encode),
            month: r.month.clone(),
            part: r.part,
            created_at: rfc3339(r.created_at),
            rows: stats.rows,
            legacy_rows: stats.legacy,
            occurred_at_min: stats.occurred_min.map(rfc3339),
            occurred_at_max: stats.occurred_max.map(rfc3339),
            seal_after: r.seal_after,
            seal_upto: r.seal_upto,
            seals,
            seal_key_ids: key_ids.into_iter().collect(),
            files,
        };
        let (bytes, hash) = manifest::sign(&m, &self.signer).map_err(ArchiveError::Other)?;
        self.objects
            .create(&r.manifest_path, Bytes::from(bytes.clone()))
            .await?;
        let back = self.objects.read(&r.manifest_path).await?;
        if back.as_deref() != Some(&bytes[..]) {
            return Err(ArchiveError::ReadBack(format!(
                "{} does not read back as written; the part is not recorded",
                r.manifest_path
            )));
        }
        fault_point("archive-before-record");
        archives::mark_verified(pool, r.sequence, stats.rows as i64, &hash)
            .await
            .map_err(ArchiveError::db("recording the verified archive"))?;
        Ok(stats.rows)
    }

    async fn upload_parquet(
        &self,
        month: Month,
        part: i32,
        writer: FileWriter,
        files: &mut Vec<FileEntry>,
    ) -> Result<(), ArchiveError> {
        let rows = writer.rows() as u64;
        let bytes = writer.finish()?;
        let path = layout::parquet_file(month, part, files.len() + 1);
        self.upload(&path, "parquet", bytes, rows, files).await?;
        fault_point("archive-after-parquet-upload");
        Ok(())
    }

    async fn upload(
        &self,
        path: &str,
        kind: &str,
        bytes: impl Into<Bytes>,
        count: u64,
        files: &mut Vec<FileEntry>,
    ) -> Result<(), ArchiveError> {
        let bytes: Bytes = bytes.into();
        files.push(FileEntry {
            path: path.to_string(),
            kind: kind.to_string(),
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            count,
        });
        self.objects.create(path, bytes).await?;
        Ok(())
    }
}

/// The manifest hash of part `sequence - 1`, which must be verified (`None` for the first).
fn previous_hash(
    records: &[ArchiveRecord],
    sequence: i64,
) -> Result<Option<[u8; 32]>, ArchiveError> {
    if sequence <= 1 {
        return Ok(None);
    }
    let prev = records
        .iter()
        .find(|r| r.sequence == sequence - 1)
        .and_then(|r| r.manifest_hash.as_deref())
        .and_then(|h| <[u8; 32]>::try_from(h).ok());
    prev.map(Some).ok_or_else(|| {
        ArchiveError::Other(format!(
            "archive part {} has no verified record, so part {sequence} cannot chain to it",
            sequence - 1
        ))
    })
}

/// What a part's rows amount to.
#[derive(Default)]
struct Stats {
    rows: u64,
    legacy: u64,
    occurred_min: Option<DateTime<Utc>>,
    occurred_max: Option<DateTime<Utc>>,
    seq_min: Option<i64>,
    seq_max: Option<i64>,
}

impl Stats {
    fn add(&mut self, row: &crate::store::StoredRow) -> Result<(), ArchiveError> {
        self.rows += 1;
        let t = row.occurred_at;
        self.occurred_min = Some(self.occurred_min.map_or(t, |m| m.min(t)));
        self.occurred_max = Some(self.occurred_max.map_or(t, |m| m.max(t)));
        match row.seal_seq {
            None => self.legacy += 1,
            Some(s) => {
                if self.seq_max.is_some_and(|m| s <= m) {
                    return Err(ArchiveError::Other(format!(
                        "rows out of seal_seq order at {s} (row {})",
                        row.id
                    )));
                }
                self.seq_min.get_or_insert(s);
                self.seq_max = Some(s);
            }
        }
        Ok(())
    }
}
