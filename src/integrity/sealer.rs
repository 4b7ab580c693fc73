//! The sealer (maintain role): every `integrity.seal_interval` it seals the rows stored since
//! the previous seal.
//!
//! # Coverage without gaps
//!
//! Every row gets `seal_seq = nextval('audit_events_seal_seq')` from the column default (the
//! sequence has `CACHE 1`, so values are handed out in order and `last_value` is the highest
//! value any session has drawn). Every write transaction of the sink first takes
//! `pg_advisory_xact_lock_shared` of [`AdvisoryLock::SealWrite`] and keeps it until it commits
//! or aborts.
//! The sealer takes the same lock exclusively, reads the sequence's `last_value` S and lets go
//! at once. When the exclusive lock is granted, no writer holds the shared one: every
//! transaction that drew a value ≤ S has committed (its rows are visible) or aborted (its
//! values are gaps), and every later writer draws a value > S. So the rows with
//! `seal_seq` in `(previous hi, S]` are final and can be sealed: a transaction that committed
//! late cannot fall between two seals.
//!
//! # Crash safety
//!
//! The state of the sealer is the newest row of `audit_seals`: a seal (and the retention
//! records it takes in) is inserted in one transaction, so a crash anywhere leaves either the
//! seal or nothing, and the next pass continues from the newest seal's `hi`. Publishing to
//! `integrity.seal_topic` happens after the commit and is retried for every seal whose
//! `published_at` is NULL, at start and before every new seal; a duplicate on the topic is
//! harmless (verify keys seals by number).
//!
//! Only one sealer works at a time: a pass holds the session lock [`AdvisoryLock::Sealer`]; another
//! maintainer skips its pass.
//!
//! # Never a second chain over the same rows
//!
//! The newest seal in `audit_seals` is where the next seal continues, but whoever can write
//! the database can delete seals, change the rows they covered, and let the sealer seal the
//! changed rows afresh. So the sealer also knows the newest seal from outside the database
//! ([`OffDatabase`]): from `integrity.seal_dir`, from the end of `integrity.seal_topic`, and
//! from what it sealed or checked itself since it started. When the database's chain does not
//! hold that seal (fewer seals, or another seal under its number) the pass refuses to seal
//! ([`IntegrityError::TipMismatch`]): the maintain role turns DOWN and says so.
//!
//! # Retention records
//!
//! A record of `audit_retention_log` is signed only when its `dropped_at` is not after the
//! pass's watermark (so no signed record postdates the seal that signs it) and no row it
//! claims dropped is still stored ([`super::retention_contradiction`]); any other record is
//! left unsigned, which verify reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::TryStreamExt as _;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::IntegrityError;
use super::attest::SealCheck;
use super::encoding::{RowEncoding, micros, row_hash, row_hash_as};
use super::publish::{Publisher, SealDir};
use super::seal::{
    Leaf, LegacyBoundary, MAX_LEAVES, MAX_SEAL_BYTES, RetentionRecord, Seal, SignedSeal, Signer,
    from_micros, seal_hash,
};
use crate::fault::fault_point;
use crate::store::locks::{self, AdvisoryLock};
use crate::store::seals::{self, NewSeal};
use crate::store::{retention, rows};

/// What the sealer reports for `/health` and metrics.
#[derive(Debug, Clone, Default)]
pub struct SealerStatus {
    /// Age in seconds of the oldest stored row no seal covers yet (0 when none).
    pub lag_seconds: f64,
    /// Seals not yet on `integrity.seal_topic`.
    pub unpublished: u64,
    /// The last pass's error, if it failed.
    pub error: Option<String>,
    /// The newest seal number.
    pub last_seal: Option<u64>,
    /// What the last self-check of the newest seal found wrong, if anything.
    pub selfcheck: Option<String>,
    /// Set while the database's seals disagree with the off-database copy: the sealer
    /// refuses to seal (the maintain role is DOWN).
    pub tip_mismatch: Option<String>,
    /// Writer attestation is checked before sealing (`integrity.writer_public_key_files`).
    pub attestation: bool,
    /// Sealing waits for the first valid writer attestation (see `attest.rs`).
    pub attestation_waiting: bool,
    /// Rows refused since start for want of a valid writer attestation.
    pub unattested: u64,
}

/// Shared view of the sealer.
pub type SealerState = Arc<Mutex<SealerStatus>>;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Seal numbers written in this pass.
    pub sealed: Vec<u64>,
    /// Rows covered by them.
    pub rows: u64,
    /// Seals published in this pass.
    pub published: u64,
    /// `false` when another sealer held the lock (nothing done).
    pub locked: bool,
}

/// The newest seal as stored (parsed from its bytes, not from the helper columns).
pub struct Tip {
    seal_no: u64,
    hash: [u8; 32],
    hi: i64,
    format: u8,
}

async fn tip(conn: &mut PgConnection) -> Result<Option<Tip>, IntegrityError> {
    let newest = seals::newest_bytes(conn)
        .await
        .map_err(IntegrityError::db("reading the newest seal"))?;
    let Some(bytes) = newest else { return Ok(None) };
    let seal = Seal::from_bytes(&bytes).map_err(|e| {
        IntegrityError::Corrupt(format!(
            "the newest seal in audit_seals cannot be read ({e}); run `audit-manager verify` and \
         investigate before sealing again"
        ))
    })?;
    Ok(Some(Tip {
        seal_no: seal.seal_no,
        hash: seal_hash(&bytes),
        hi: seal.hi,
        format: seal.format(),
    }))
}

/// Takes the write lock exclusively and returns `(S, now)`: every row with `seal_seq <= S` is
/// visible and no later commit can add one (see the module documentation).
pub async fn watermark(conn: &mut PgConnection) -> Result<(i64, i64), IntegrityError> {
    let err = IntegrityError::db("taking the seal watermark");
    let mut tx = conn.begin().await.map_err(err)?;
    locks::lock_for_transaction(&mut tx, AdvisoryLock::SealWrite)
        .await
        .map_err(IntegrityError::db("taking the seal watermark"))?;
    fault_point("watermark_locked");
    let (last, called, now) = seals::sequence_position(&mut tx)
        .await
        .map_err(IntegrityError::db("reading audit_events_seal_seq"))?;
    tx.commit()
        .await
        .map_err(IntegrityError::db("taking the seal watermark"))?;
    Ok((if called { last } else { last - 1 }, micros(now)))
}

/// What a pass takes in besides rows, read in one snapshot: the retention records to sign,
/// and (for the chain's first format-2 seal) the legacy boundary.
struct Intake {
    retention_ids: Vec<i64>,
    retention: Vec<RetentionRecord>,
    legacy: Option<LegacyBoundary>,
}

/// Reads the retention records to sign and, when `want_legacy`, the legacy boundary, in one
/// repeatable-read snapshot (a drop committing in between cannot be counted twice or not at
/// all). A record is signed only when its `dropped_at` is not after `watermark_at_us` and no
/// row with `seal_seq <= sealed_upto` in its bounds is still stored; others stay unsigned
/// (logged; verify reports them).
async fn intake(
    conn: &mut PgConnection,
    watermark_at_us: i64,
    sealed_upto: i64,
    want_legacy: bool,
) -> Result<Intake, IntegrityError> {
    let err = || IntegrityError::db("reading audit_retention_log");
    let mut tx = conn.begin().await.map_err(err())?;
    crate::store::repeatable_read_only(&mut tx)
        .await
        .map_err(err())?;
    let unsigned = retention::unsigned(&mut tx, from_micros(watermark_at_us))
        .await
        .map_err(err())?;
    let mut out = Intake {
        retention_ids: Vec::new(),
        retention: Vec::new(),
        legacy: None,
    };
    for logged in unsigned {
        let id = logged.id;
        let record = RetentionRecord::from(logged);
        let contradiction = super::retention_contradiction(&mut tx, &record, sealed_upto)
            .await
            .map_err(err())?;
        if let Some((row_id, at, exists)) = contradiction {
            tracing::error!(
                partition = %record.partition, row_id = %row_id, occurred_at = %at,
                partition_exists = exists,
                "not signing a retention record: rows it claims were dropped are still stored \
                 (a forged record?); run `audit-manager verify`"
            );
            metrics::counter!("audit_seal_retention_refused_total").increment(1);
            continue;
        }
        out.retention_ids.push(id);
        out.retention.push(record);
    }
    if want_legacy {
        let (rows, newest) = rows::unnumbered_summary(&mut tx)
            .await
            .map_err(IntegrityError::db("counting rows without seal_seq"))?;
        out.legacy = Some(LegacyBoundary {
            rows,
            newest_ingested_at_us: newest.unwrap_or(i64::MIN),
        });
    }
    tx.commit().await.map_err(err())?;
    Ok(out)
}

/// Reads the rows with `seal_seq` in `(after, min(upto, after + MAX_LEAVES)]` as leaves,
/// stopping before [`MAX_SEAL_BYTES`]. Returns the leaves and the `hi` they cover.
///
/// The window is bounded by `seal_seq` values rather than by `LIMIT`: with a large backlog
/// PostgreSQL plans `ORDER BY seal_seq LIMIT n` over the whole range as a scan and a sort of
/// every waiting row, once per seal (measured: 8 000 rows/s sealed); a window of at most
/// `MAX_LEAVES` numbers is an index range scan of at most `MAX_LEAVES` rows.
async fn read_leaves(
    conn: &mut PgConnection,
    after: i64,
    upto: i64,
    mut check: Option<&mut SealCheck>,
) -> Result<(Vec<Leaf>, i64), IntegrityError> {
    let window_hi = upto.min(after.saturating_add(MAX_LEAVES as i64));
    if let Some(c) = check.as_deref_mut() {
        c.load(conn, after, window_hi).await?;
    }
    // Each row is hashed as it arrives and only its leaf is kept: a window of rows is never
    // held whole (measured: sealing raised the sink+maintain peak by 20–27 MiB when it was).
    let mut rows = rows::numbered_in(&mut *conn, after, window_hi);
    let mut leaves = Vec::new();
    let mut bytes = 256;
    while let Some(r) = rows
        .try_next()
        .await
        .map_err(IntegrityError::db("reading rows to seal"))?
    {
        // A row without a valid writer attestation is left out (and reported by the check).
        if let Some(c) = check.as_deref_mut()
            && !c.admits(&r)
        {
            continue;
        }
        let leaf = Leaf {
            seal_seq: r.seal_seq.unwrap_or_default(),
            occurred_at_us: micros(r.occurred_at),
            row_hash: row_hash(&r).map_err(|e| {
                IntegrityError::Corrupt(format!(
                    "row id={} occurred_at={} cannot be encoded: {e}",
                    r.id, r.occurred_at
                ))
            })?,
            id: r.id,
        };
        bytes += leaf.encoded_len();
        if bytes > MAX_SEAL_BYTES
            && let Some(last) = leaves.last().map(|l: &Leaf| l.seal_seq)
            && last < leaf.seal_seq
        {
            // Close the seal after the last complete seal_seq.
            return Ok((leaves, last));
        }
        leaves.push(leaf);
    }
    Ok((leaves, window_hi))
}

async fn insert_seal(
    conn: &mut PgConnection,
    signed: &SignedSeal,
    seal: &Seal,
    retention_ids: &[i64],
) -> Result<(), IntegrityError> {
    let err = || IntegrityError::db(format!("storing seal {}", signed.seal_no));
    let mut tx = conn.begin().await.map_err(err())?;
    let key_id = hex::encode(signed.key_id);
    let new = NewSeal {
        seal_no: signed.seal_no as i64,
        bytes: &signed.bytes,
        hash: &signed.hash[..],
        signature: &signed.signature[..],
        key_id: &key_id,
        created_at_us: seal.created_at_us,
        lo_seq: seal.lo,
        hi_seq: seal.hi,
        leaves: seal.leaves.len() as i32,
        retention_records: seal.retention.len() as i32,
    };
    seals::insert(&mut tx, &new).await.map_err(err())?;
    if !retention_ids.is_empty() {
        retention::mark_sealed(&mut tx, signed.seal_no as i64, retention_ids)
            .await
            .map_err(err())?;
    }
    fault_point("seal_inserted");
    tx.commit().await.map_err(err())?;
    fault_point("seal_committed");
    metrics::counter!("audit_seals_written_total").increment(1);
    Ok(())
}

/// One sealing pass on `conn`: publish what is unpublished, take the watermark, seal up to it
/// (in as many seals as the size bounds need), publish them. Without an off-database copy to
/// check the database's newest seal against: see [`seal_pass_checked`].
pub async fn seal_pass(
    conn: &mut PgConnection,
    signer: &Signer,
    publisher: Option<&Publisher>,
) -> Result<PassReport, IntegrityError> {
    seal_pass_checked(conn, signer, publisher, None, None).await
}

/// [`seal_pass`], refusing to seal when the database's newest seal disagrees with what `off`
/// knows from outside the database, copying every new seal to `integrity.seal_dir`, and sealing
/// only rows `check` admits (writer attestation) when given.
pub async fn seal_pass_checked(
    conn: &mut PgConnection,
    signer: &Signer,
    publisher: Option<&Publisher>,
    off: Option<&mut OffDatabase>,
    check: Option<&mut SealCheck>,
) -> Result<PassReport, IntegrityError> {
    let locked = locks::try_lock_for_session(conn, AdvisoryLock::Sealer)
        .await
        .map_err(IntegrityError::db("taking the sealer lock"))?;
    if !locked {
        return Ok(PassReport::default());
    }
    let result = seal_locked(conn, signer, publisher, off, check).await;
    let unlocked = locks::unlock_session(conn, AdvisoryLock::Sealer).await;
    if let Err(e) = unlocked {
        // The caller closes the connection, which releases the lock for sure.
        return Err(IntegrityError::db("releasing the sealer lock")(e));
    }
    result
}

async fn seal_locked(
    conn: &mut PgConnection,
    signer: &Signer,
    publisher: Option<&Publisher>,
    mut off: Option<&mut OffDatabase>,
    mut check: Option<&mut SealCheck>,
) -> Result<PassReport, IntegrityError> {
    let mut report = PassReport {
        locked: true,
        ..PassReport::default()
    };
    fault_point("pass_start");
    if let Some(o) = off.as_deref_mut() {
        o.learn().await?;
    }
    // Kafka being down must not stop sealing: the seals wait in audit_seals (published_at
    // NULL, counted in /health) and go out on a later pass.
    let mut publisher = publisher;
    if let Some(p) = publisher {
        match publish_pending(conn, p).await {
            Ok(n) => report.published += n,
            Err(e) => {
                tracing::warn!(error = %e, "publishing seals failed; sealing continues");
                publisher = None;
            }
        }
    }
    let (upto, watermark_at_us) = watermark(conn).await?;
    fault_point("after_watermark");
    if let Some(c) = check.as_deref_mut()
        && !c.begin_pass(conn).await?
    {
        // No valid writer attestation yet: which rows are legacy is not known (see attest.rs).
        return Ok(report);
    }
    let tip = tip(conn).await?;
    if let Some(o) = off.as_deref_mut() {
        o.check(conn, tip.as_ref()).await?;
        o.copy_to_dir(conn).await;
    }
    // The chain's first format-2 seal records the legacy boundary: seal 1, or the first seal
    // after seals of an earlier release.
    let want_legacy = tip.as_ref().is_none_or(|t| t.format == 1);
    // The next seal covers (lo, hi]; rows are read from `cursor` on (lo < cursor only after
    // windows holding nothing but gaps).
    let (mut seal_no, mut prev_hash, mut lo) = match &tip {
        Some(t) => (t.seal_no + 1, t.hash, t.hi),
        None => (1, [0u8; 32], 0),
    };
    let mut cursor = lo;
    let Intake {
        mut retention_ids,
        mut retention,
        mut legacy,
    } = intake(conn, watermark_at_us, lo, want_legacy).await?;
    while cursor < upto || !retention.is_empty() || legacy.is_some() {
        let (leaves, hi) = read_leaves(conn, cursor, upto, check.as_deref_mut()).await?;
        let hi = hi.max(cursor);
        fault_point("rows_read");
        if leaves.is_empty() && retention.is_empty() && legacy.is_none() {
            if hi < upto {
                // A window of gaps only (aborted inserts): look further.
                cursor = hi;
                continue;
            }
            // Only gaps up to the watermark: nothing to seal.
            break;
        }
        let seal = Seal {
            seal_no,
            key_id: signer.key_id(),
            created_at_us: micros(Utc::now()),
            watermark_at_us,
            lo,
            hi,
            prev_hash,
            leaves,
            retention: std::mem::take(&mut retention),
            row_encoding: RowEncoding::CURRENT,
            legacy: legacy.take(),
        };
        let signed = signer.sign(&seal);
        fault_point("seal_signed");
        insert_seal(conn, &signed, &seal, &std::mem::take(&mut retention_ids)).await?;
        if let Some(o) = off.as_deref_mut() {
            o.sealed(&signed);
            o.copy_to_dir(conn).await;
        }
        report.rows += seal.leaves.len() as u64;
        report.sealed.push(seal_no);
        tracing::debug!(
            seal_no,
            lo = seal.lo,
            hi,
            leaves = seal.leaves.len(),
            "sealed"
        );
        if let Some(p) = publisher {
            fault_point("before_publish");
            match publish_pending(conn, p).await {
                Ok(n) => report.published += n,
                Err(e) => {
                    tracing::warn!(error = %e, "publishing seals failed; sealing continues");
                    publisher = None;
                }
            }
        }
        prev_hash = signed.hash;
        seal_no += 1;
        lo = hi;
        cursor = hi;
    }
    Ok(report)
}

/// The newest seal as known from outside the database.
#[derive(Debug, Clone)]
struct KnownSeal {
    seal_no: u64,
    hash: [u8; 32],
    /// Where it is known from, for the operator.
    from: String,
}

/// What the sealer knows about the chain without trusting the database: the newest seal of
/// `integrity.seal_dir` and of `integrity.seal_topic` (read once, at the first pass that can),
/// then every seal it made or found in order itself. Also keeps `integrity.seal_dir` filled.
pub struct OffDatabase {
    dir: Option<SealDir>,
    topic: Option<(crate::config::KafkaConfig, String)>,
    known: Option<KnownSeal>,
    /// The highest seal number with a file in `dir` (once listed).
    dir_newest: Option<Option<u64>>,
    /// Why the topic's end could not be read yet (`None` once it was, or without a topic).
    topic_unread: Option<String>,
}

/// How long the sealer waits for the end of the seal topic.
const TOPIC_TAIL_TIMEOUT: Duration = Duration::from_secs(10);

impl OffDatabase {
    /// `dir`: `integrity.seal_dir`; `topic`: the Kafka settings and `integrity.seal_topic`.
    /// With neither, only what this process sealed itself is known (a restarted sealer over a
    /// truncated `audit_seals` would start a new chain: warned at start).
    pub fn new(
        dir: Option<std::path::PathBuf>,
        topic: Option<(crate::config::KafkaConfig, String)>,
    ) -> OffDatabase {
        let topic_unread = topic.as_ref().map(|_| "not read yet".to_string());
        OffDatabase {
            dir: dir.map(SealDir::new),
            topic,
            known: None,
            dir_newest: None,
            topic_unread,
        }
    }

    fn merge(&mut self, seal_no: u64, hash: [u8; 32], from: String) -> Result<(), IntegrityError> {
        match &self.known {
            Some(k) if k.seal_no == seal_no && k.hash != hash => {
                Err(IntegrityError::TipMismatch(format!(
                    "seal {seal_no} of {from} differs from seal {seal_no} of {}: the \
                     off-database copies disagree. Compare them with `audit-manager verify \
                     --seals-from-dir` / `--seals-from-topic`; sealing stays off until they \
                     agree",
                    k.from
                )))
            }
            Some(k) if k.seal_no >= seal_no => Ok(()),
            _ => {
                self.known = Some(KnownSeal {
                    seal_no,
                    hash,
                    from,
                });
                Ok(())
            }
        }
    }

    fn merge_line(&mut self, line: &super::SealLine, from: String) -> Result<(), IntegrityError> {
        // The hash is recomputed from the bytes: the copy's own `hash` field is not trusted.
        let bytes = line.decoded().ok_or_else(|| {
            IntegrityError::Corrupt(format!("seal {} of {from} is not base64", line.seal_no))
        })?;
        self.merge(line.seal_no, seal_hash(&bytes), from)
    }

    /// Reads the newest seal of each copy not read yet.
    async fn learn(&mut self) -> Result<(), IntegrityError> {
        if let (Some(dir), None) = (&self.dir, &self.dir_newest) {
            let d = dir.clone();
            let newest = tokio::task::spawn_blocking(move || d.newest())
                .await
                .map_err(|e| IntegrityError::Publish(e.to_string()))??;
            let from = format!("integrity.seal_dir {}", dir.path().display());
            self.dir_newest = Some(newest.as_ref().map(|l| l.seal_no));
            if let Some(line) = newest {
                self.merge_line(&line, from)?;
            }
        }
        if let (Some((kafka, topic)), Some(_)) = (&self.topic, &self.topic_unread) {
            let (k, t) = (kafka.clone(), topic.clone());
            let read = tokio::task::spawn_blocking(move || {
                super::publish::read_tail(&k, &t, TOPIC_TAIL_TIMEOUT)
            })
            .await
            .map_err(|e| IntegrityError::Publish(e.to_string()));
            let from = format!("integrity.seal_topic {topic}");
            match read.and_then(|r| r) {
                Ok(newest) => {
                    self.topic_unread = None;
                    if let Some(line) = newest {
                        self.merge_line(&line, from)?;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the end of the seal topic yet");
                    self.topic_unread = Some(e.to_string());
                }
            }
        }
        Ok(())
    }

    /// Refuses (`TipMismatch`) when the database's chain does not hold the newest seal known
    /// from outside it; refuses (`Publish`) to begin a chain while the seal topic, which may
    /// hold an earlier chain, cannot be read.
    async fn check(
        &mut self,
        conn: &mut PgConnection,
        db: Option<&Tip>,
    ) -> Result<(), IntegrityError> {
        let advice = "Seals were deleted or replaced in audit_seals, and sealing again would \
                      cover changed rows with a new chain. Find out what changed with \
                      `audit-manager verify --seals-from-dir DIR` (or `--seals-from-topic`), \
                      then restore audit_seals (from a backup of the database) so that it \
                      holds that seal again; sealing stays off until it does";
        let Some(k) = self.known.clone() else {
            if db.is_none()
                && let Some(why) = &self.topic_unread
            {
                return Err(IntegrityError::Publish(format!(
                    "not beginning a chain of seals while the seal topic cannot be read ({why}): \
                     it may hold the seals of an earlier chain; check kafka.* and \
                     integrity.seal_topic"
                )));
            }
            return Ok(());
        };
        let found = match db {
            None => None,
            Some(t) if t.seal_no < k.seal_no => None,
            Some(t) if t.seal_no == k.seal_no => Some(t.hash),
            Some(_) => {
                let bytes = seals::bytes_of(conn, k.seal_no as i64)
                    .await
                    .map_err(IntegrityError::db("reading a seal"))?;
                bytes.map(|b| seal_hash(&b))
            }
        };
        match found {
            Some(h) if h == k.hash => {}
            Some(_) => {
                return Err(IntegrityError::TipMismatch(format!(
                    "seal {} in audit_seals is not the seal {} of {}. {advice}",
                    k.seal_no, k.seal_no, k.from
                )));
            }
            None => {
                let newest = db.map_or("none".to_string(), |t| t.seal_no.to_string());
                return Err(IntegrityError::TipMismatch(format!(
                    "audit_seals lacks seal {} (its newest seal: {newest}), which {} holds. \
                     {advice}",
                    k.seal_no, k.from
                )));
            }
        }
        if let Some(t) = db {
            self.merge(t.seal_no, t.hash, "this sealer".to_string())?;
        }
        Ok(())
    }

    /// Remembers a seal this sealer committed.
    fn sealed(&mut self, signed: &SignedSeal) {
        self.known = Some(KnownSeal {
            seal_no: signed.seal_no,
            hash: signed.hash,
            from: "this sealer".to_string(),
        });
    }

    /// Writes a file for every seal above the newest one in `integrity.seal_dir` (after a
    /// crash between a commit and its file, or on a new directory, several). A failure is
    /// logged and retried on the next pass: the seals wait in `audit_seals`.
    async fn copy_to_dir(&mut self, conn: &mut PgConnection) {
        let Some(dir) = self.dir.clone() else { return };
        let after = self.dir_newest.flatten().unwrap_or(0);
        let copied = async {
            let mut rows = seals::copies_after(conn, after as i64);
            let mut newest = None;
            let mut batch = Vec::new();
            loop {
                let next = rows
                    .try_next()
                    .await
                    .map_err(IntegrityError::db("reading seals to copy"))?;
                if let Some(s) = &next {
                    batch.push(super::SealLine::new(
                        s.seal_no as u64,
                        &s.bytes,
                        &s.signature,
                        &s.key_id,
                    ));
                }
                if batch.len() >= 256 || (next.is_none() && !batch.is_empty()) {
                    let d = dir.clone();
                    let lines = std::mem::take(&mut batch);
                    let last = lines.last().map(|l| l.seal_no);
                    tokio::task::spawn_blocking(move || d.write(&lines))
                        .await
                        .map_err(|e| IntegrityError::Publish(e.to_string()))??;
                    newest = last;
                }
                if next.is_none() {
                    return Ok::<_, IntegrityError>(newest);
                }
            }
        }
        .await;
        match copied {
            Ok(Some(n)) => self.dir_newest = Some(Some(n)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "copying seals to integrity.seal_dir failed; will retry")
            }
        }
    }
}

/// Publishes every seal whose `published_at` is NULL, oldest first, marking each once the
/// broker acknowledged it. Returns how many were published.
pub async fn publish_pending(
    conn: &mut PgConnection,
    publisher: &Publisher,
) -> Result<u64, IntegrityError> {
    let unpublished = seals::unpublished(conn)
        .await
        .map_err(IntegrityError::db("reading unpublished seals"))?;
    let mut n = 0;
    for s in unpublished {
        let line = super::SealLine::new(s.seal_no as u64, &s.bytes, &s.signature, &s.key_id);
        publisher.publish(&line).await?;
        fault_point("published");
        seals::mark_published(conn, s.seal_no)
            .await
            .map_err(IntegrityError::db("marking a seal published"))?;
        fault_point("marked_published");
        n += 1;
    }
    Ok(n)
}

/// Re-verifies the newest seal: its hash, its signature under this sealer's key, and every
/// row it covers against its leaf. `Ok(None)` when it checks out (or there is no seal yet),
/// `Ok(Some(problem))` when it does not.
pub async fn selfcheck(pool: &PgPool, signer: &Signer) -> Result<Option<String>, IntegrityError> {
    let newest = seals::newest_signed(pool)
        .await
        .map_err(IntegrityError::db("reading the newest seal"))?;
    let Some((bytes, stored_hash, signature)) = newest else {
        return Ok(None);
    };
    let hash = seal_hash(&bytes);
    let seal = match Seal::from_bytes(&bytes) {
        Ok(s) => s,
        Err(e) => return Ok(Some(format!("the newest seal cannot be read: {e}"))),
    };
    let no = seal.seal_no;
    if stored_hash != hash {
        return Ok(Some(format!("seal {no}: its bytes do not match its hash")));
    }
    if seal.key_id == signer.key_id()
        && !super::seal::signature_valid(&signer.verifying_key(), &hash, &signature)
    {
        return Ok(Some(format!("seal {no}: its signature does not verify")));
    }
    // The seal's leaves by `seal_seq` (one number per row); each stored row is checked against
    // its leaf as it arrives (rows are not held). A leaf without a row (dropped by retention
    // since) is no mismatch; a row without a leaf, or with another id, time or hash, is.
    let mut sealed: std::collections::HashMap<i64, &Leaf> =
        seal.leaves.iter().map(|l| (l.seal_seq, l)).collect();
    let mut rows = rows::numbered_in(pool, seal.lo, seal.hi);
    let mut bad = 0usize;
    while let Some(r) = rows
        .try_next()
        .await
        .map_err(IntegrityError::db("reading the rows of the newest seal"))?
    {
        let matches = sealed
            .remove(&r.seal_seq.unwrap_or_default())
            .is_some_and(|l| {
                l.id == r.id
                    && l.occurred_at_us == micros(r.occurred_at)
                    && row_hash_as(seal.row_encoding, &r).is_ok_and(|h| h == l.row_hash)
            });
        if !matches {
            bad += 1;
        }
    }
    Ok((bad > 0).then(|| {
        format!(
            "seal {no}: {bad} row(s) differ from what it sealed; run `audit-manager verify` \
             for the details"
        )
    }))
}

/// Age of the oldest row no seal covers yet, and how many seals are unpublished. The newest
/// seal's `hi` is read from its signed bytes (offset 62, in both formats), not from the
/// editable `hi_seq` column.
///
/// "Oldest" is the unsealed row with the lowest `seal_seq`, read through the index: one row,
/// where `min(ingested_at)` read every unsealed row (about 100 ms per 100 000 waiting rows, at
/// every pass, on the cores the sink writes with). Numbers are drawn in order, so this row's
/// transaction drew first; another could only be older by the time its transaction spent
/// before drawing (waiting for the write lock), far below any lag worth an alert.
pub async fn observe(pool: &PgPool) -> Result<(f64, u64), IntegrityError> {
    let (lag, unpublished) = seals::lag_and_unpublished(pool)
        .await
        .map_err(IntegrityError::db("measuring the seal lag"))?;
    Ok((lag.unwrap_or(0.0).max(0.0), unpublished.max(0) as u64))
}

/// What the sealer works with; the maintain role builds it from the configuration
/// (`crate::maintain::sealing`).
pub struct Sealer {
    pub signer: Signer,
    /// Publishes every seal to `integrity.seal_topic`, when set.
    pub publisher: Option<Publisher>,
    /// The off-database copy of the seals (`integrity.seal_dir`, `integrity.seal_topic`).
    pub off: OffDatabase,
    /// Writer attestation is checked before sealing, when writer keys are configured.
    pub check: Option<SealCheck>,
    /// `integrity.seal_interval`.
    pub interval: Duration,
}

impl Sealer {
    /// Runs a pass every `interval` until `token` is cancelled, reporting into `state`. Each
    /// pass uses its own connection (closed afterwards, so a session lock never outlives a
    /// failed pass).
    pub async fn run(self, pool: PgPool, state: SealerState, token: CancellationToken) {
        let Sealer {
            signer,
            publisher,
            off,
            check,
            interval,
        } = self;
        let off = Arc::new(tokio::sync::Mutex::new(off));
        let check = tokio::sync::Mutex::new(check);
        crate::schedule::schedule(interval, token, || async {
            let outcome = async {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(IntegrityError::db("connecting for the sealer"))?
                    .detach();
                let mut off = off.lock().await;
                let mut check = check.lock().await;
                let r = seal_pass_checked(
                    &mut conn,
                    &signer,
                    publisher.as_ref(),
                    Some(&mut off),
                    check.as_mut(),
                )
                .await;
                let _ = conn.close().await;
                let attestation = check.as_ref().map(|c| (c.waiting(), c.refused()));
                r.map(|r| (r, attestation))
            }
            .await;
            let observed = observe(&pool).await;
            let checked = selfcheck(&pool, &signer).await;
            let result = match &checked {
                Ok(None) => "ok",
                Ok(Some(problem)) => {
                    tracing::error!(%problem, "seal self-check failed: stored rows or seals changed");
                    "mismatch"
                }
                Err(_) => "error",
            };
            metrics::counter!("audit_seal_selfcheck_total", "result" => result).increment(1);
            let mut s = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Ok((lag, unpublished)) = observed {
                s.lag_seconds = lag;
                s.unpublished = unpublished;
                metrics::gauge!("audit_seal_lag_seconds").set(lag);
            }
            if let Ok(problem) = checked {
                s.selfcheck = problem;
            }
            let mismatch = match &outcome {
                Err(IntegrityError::TipMismatch(m)) => Some(m.clone()),
                _ => None,
            };
            metrics::gauge!("audit_seal_tip_mismatch").set(if mismatch.is_some() { 1.0 } else { 0.0 });
            if let Some(m) = &mismatch {
                tracing::error!(problem = %m, "refusing to seal: audit_seals disagrees with the off-database copy of the seals");
            }
            s.tip_mismatch = mismatch;
            match outcome {
                Ok((report, attestation)) => {
                    s.attestation = attestation.is_some();
                    if let Some((waiting, refused)) = attestation {
                        s.attestation_waiting = waiting;
                        s.unattested = refused;
                    }
                    s.error = None;
                    if let Some(&n) = report.sealed.last() {
                        s.last_seal = Some(n);
                    }
                    crate::schedule::PassOutcome::Done
                }
                Err(e) if e.is_schema_missing() => {
                    // The maintain loop creates the database and schema at start.
                    tracing::debug!(error = %e, "sealer waiting for the schema");
                    crate::schedule::PassOutcome::Failed
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sealing failed; will retry");
                    s.error = Some(e.to_string());
                    crate::schedule::PassOutcome::Failed
                }
            }
        })
        .await;
    }
}
