//! `audit-manager verify`: recomputes every sealed row's hash and checks the seals.
//!
//! Seals are read in seal-number order and rows in `seal_seq` order, both streamed, and merged
//! seal by seal, so memory stays bounded by one seal. What counts as a finding (exit 1):
//!
//! - **seal missing**: a seal number is absent between two present ones; **seal changed**: its
//!   stored hash does not match its bytes, or its bytes cannot be read, or they name another
//!   seal number; **signature invalid**; **unknown key**: signed by a key that is not in
//!   `integrity.public_key_files` (keys in the database are never trusted); **chain broken**:
//!   its `prev_hash` is not the previous seal's hash, or its range does not continue the
//!   previous seal's;
//! - **row changed**: a sealed row whose hash differs from its leaf (hashed in the row
//!   encoding the seal names); **row missing**: a leaf without its row, unless a believed
//!   retention record covers its `occurred_at` (then it is counted as dropped by retention,
//!   which is not a finding);
//! - **row unsealed**: a row whose `seal_seq` lies inside a sealed range but which no leaf of
//!   that seal names; a row with a `seal_seq` above the newest seal whose `ingested_at` is
//!   older than the *previous* seal pass's watermark (a row stored by the sink in time for
//!   that pass is always covered by the newest one, see `sealer.rs`), or (with
//!   `seal_interval`) more than 3 seal intervals before verify ran, or more than one interval
//!   in the future; a row without `seal_seq` stored after the legacy boundary (or the first
//!   seal's watermark);
//! - **legacy count**: the rows without `seal_seq` are not the ones the legacy boundary
//!   counted (less those retention dropped since);
//! - **retention unsigned**: a record of `audit_retention_log` that no seal signed although a
//!   seal pass has run since it was dropped, or that claims a drop in the future (it is not
//!   believed either way); **retention invalid**: a signed record whose `dropped_at` postdates
//!   the seal that signed it, or whose partition still holds rows it claims dropped (not
//!   believed); **retention early**: a believed record of a partition that was not yet past
//!   `database.partition_retention_months` at the signing seal's time (the command line
//!   passes the configured value);
//! - with `--seals-from-topic` / `--seals-from-dir`: a seal in the copy that the database
//!   lacks (the newest seals deleted: truncation), a seal that differs from its copy, a seal
//!   marked published that the topic lacks, or one missing from the directory below its newest
//!   file; a seal whose helper columns (`lo_seq`, `hi_seq`, `leaves`, `retention_records`) do
//!   not match its bytes.
//!
//! Rows without `seal_seq` within the legacy boundary are legacy: counted, not findings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sqlx::PgPool;

use super::encoding::{micros, row_hash_as};
use super::seal::{LegacyBoundary, RetentionRecord, Seal, from_micros, seal_hash, signature_valid};
use super::{IntegrityError, SealLine};
use crate::store::rows::{self, RowScan};
use crate::store::{retention as retention_log, seals as stored_seals};

/// What to check.
#[derive(Debug, Default)]
pub struct VerifyOptions {
    /// Only rows (and leaves) with `occurred_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// Only rows (and leaves) with `occurred_at < to`.
    pub to: Option<DateTime<Utc>>,
    /// The published copies of the seals (`--seals-from-topic`), by seal number.
    pub topic: Option<BTreeMap<u64, Vec<SealLine>>>,
    /// The seal files of `integrity.seal_dir` (`--seals-from-dir`), by seal number.
    pub dir: Option<BTreeMap<u64, Vec<SealLine>>>,
    /// `integrity.seal_interval`: a row no seal covers that was stored more than 3 intervals
    /// before verify ran, or claims to be stored more than one interval after, is a finding.
    /// `None`: only the signed watermarks date rows.
    pub seal_interval: Option<Duration>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// `database.partition_retention_months`: a retention record of a partition that was not
    /// yet expired when it was dropped is a finding (`0` = nothing may be dropped).
    pub retention_months: Option<u32>,
    /// `integrity.writer_public_key_files`: with keys, every numbered row must carry a valid
    /// writer attestation (`row-unattested`, see `attest.rs`); empty: not checked.
    pub writer_keys: super::attest::WriterKeys,
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Stable kind: `row-changed`, `row-missing`, `row-unsealed`, `legacy-count`,
    /// `seal-missing`, `seal-changed`, `signature-invalid`, `unknown-key`, `chain-broken`,
    /// `seal-truncated`, `retention-early`, `retention-unsigned`, `retention-invalid`.
    pub kind: &'static str,
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub seals: u64,
    /// Rows whose hash was recomputed and matched.
    pub rows_ok: u64,
    /// Rows stored before sealing began (no `seal_seq`).
    pub legacy_rows: u64,
    /// Rows newer than the newest seal, within the grace described above.
    pub pending_rows: u64,
    /// Sealed rows absent because their partition was dropped by retention.
    pub retained_rows: u64,
    /// Whether writer attestation was checked (writer keys configured).
    pub attestation_checked: bool,
    /// Rows with a valid writer attestation.
    pub attested_rows: u64,
    /// Rows stored before writer attestation began (at or below its boundary), unattested.
    pub unattested_legacy_rows: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }
}

fn ts(us: i64) -> String {
    from_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("{us}µs"))
}

struct Run<'a, W: Write> {
    keys: &'a BTreeMap<[u8; 8], VerifyingKey>,
    report: Report,
    out: &'a mut W,
}

impl<W: Write> Run<'_, W> {
    fn find(&mut self, kind: &'static str, detail: String) {
        let f = Finding { kind, detail };
        let _ = writeln!(self.out, "{f}");
        self.report.findings.push(f);
    }

    /// Hash, signature and format of one seal; `None` when its bytes cannot be read, else the
    /// seal and whether a trusted key signed it.
    fn check_seal(
        &mut self,
        no: u64,
        bytes: &[u8],
        stored_hash: &[u8],
        sig: &[u8],
    ) -> Option<(Seal, bool)> {
        let hash = seal_hash(bytes);
        if stored_hash != hash {
            self.find(
                "seal-changed",
                format!("seal {no}: its bytes do not match its stored hash (seal modified)"),
            );
        }
        let seal = match Seal::from_bytes(bytes) {
            Ok(s) => s,
            Err(e) => {
                self.find("seal-changed", format!("seal {no}: unreadable bytes ({e})"));
                return None;
            }
        };
        if seal.seal_no != no {
            self.find(
                "seal-changed",
                format!(
                    "seal {no}: its bytes are those of seal {} (reordered or replaced)",
                    seal.seal_no
                ),
            );
        }
        let trusted = match self.keys.get(&seal.key_id) {
            None => {
                self.find(
                    "unknown-key",
                    format!(
                        "seal {no}: signed by key {}, which is not in integrity.public_key_files",
                        hex::encode(seal.key_id)
                    ),
                );
                false
            }
            Some(key) if !signature_valid(key, &hash, sig) => {
                self.find(
                    "signature-invalid",
                    format!(
                        "seal {no}: the signature does not verify under key {}",
                        hex::encode(seal.key_id)
                    ),
                );
                false
            }
            Some(_) => stored_hash == hash,
        };
        Some((seal, trusted))
    }

    /// Compares seal `no` with its copies in `copies` (`where_` names them). `absent`: the
    /// finding when the copy lacks the seal although it should hold it (`None`: it need not).
    fn compare_copy(
        &mut self,
        no: u64,
        bytes: &[u8],
        copies: &BTreeMap<u64, Vec<SealLine>>,
        where_: &str,
        absent: Option<&str>,
    ) {
        let hash = hex::encode(seal_hash(bytes));
        match copies.get(&no) {
            Some(c)
                if c.iter()
                    .any(|c| c.hash != hash || c.decoded().as_deref() != Some(bytes)) =>
            {
                self.find(
                    "seal-changed",
                    format!("seal {no}: differs from its copy in {where_}"),
                )
            }
            None => {
                if let Some(why) = absent {
                    self.find("seal-changed", format!("seal {no}: {why}"));
                }
            }
            _ => {}
        }
    }
}

fn in_range(opts: &VerifyOptions, occurred_us: i64) -> bool {
    opts.from.is_none_or(|f| occurred_us >= micros(f))
        && opts.to.is_none_or(|t| occurred_us < micros(t))
}

/// A retention record as signed, with the seal that signed it.
struct SignedRecord {
    record: RetentionRecord,
    seal_no: u64,
    /// The signing seal's `lo`: rows at or below it were committed before the drop.
    seal_lo: i64,
    /// The signing seal's own time: its watermark (format 2; a record is signed only when
    /// dropped by then) or its creation time (format 1).
    signed_at_us: i64,
    /// `false` when the record contradicts that seal or the stored rows (not believed).
    believed: bool,
}

/// Retention records of the seals that carry any, from seals whose hash and signature check
/// out (a record is only believed when a trusted key signed it). `retention_records > 0`
/// only narrows the read: a seal whose column hides its records is reported by the main pass
/// (its columns do not match its bytes).
async fn signed_retention(
    pool: &PgPool,
    keys: &BTreeMap<[u8; 8], VerifyingKey>,
) -> Result<Vec<SignedRecord>, IntegrityError> {
    let rows = stored_seals::with_retention(pool)
        .await
        .map_err(IntegrityError::db("reading retention records"))?;
    let mut out = Vec::new();
    for (bytes, sig) in rows {
        let Ok(seal) = Seal::from_bytes(&bytes) else {
            continue;
        };
        let trusted = keys
            .get(&seal.key_id)
            .is_some_and(|k| signature_valid(k, &seal_hash(&bytes), &sig));
        if !trusted {
            continue;
        }
        let signed_at_us = if seal.format() == 1 {
            seal.created_at_us
        } else {
            seal.watermark_at_us
        };
        out.extend(seal.retention.into_iter().map(|record| SignedRecord {
            record,
            seal_no: seal.seal_no,
            seal_lo: seal.lo,
            signed_at_us,
            believed: true,
        }));
    }
    Ok(out)
}

/// Every record of `audit_retention_log` as stored (signed or not).
async fn logged_retention(pool: &PgPool) -> Result<Vec<RetentionRecord>, IntegrityError> {
    let rows = retention_log::all(pool)
        .await
        .map_err(IntegrityError::db("reading audit_retention_log"))?;
    Ok(rows.into_iter().map(RetentionRecord::from).collect())
}

/// Judges each signed record (`retention-invalid` when it postdates its seal or its partition
/// still holds rows it claims dropped) and marks the ones not to believe.
async fn judge_retention<W: Write>(
    pool: &PgPool,
    run: &mut Run<'_, W>,
    records: &mut [SignedRecord],
) -> Result<(), IntegrityError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(IntegrityError::db("connecting"))?;
    for r in records.iter_mut() {
        let rec = &r.record;
        let what = format!(
            "partition {} [{}, {}) recorded dropped at {} and signed by seal {}",
            rec.partition,
            ts(rec.lower_us),
            ts(rec.upper_us),
            ts(rec.dropped_at_us),
            r.seal_no
        );
        if rec.dropped_at_us > r.signed_at_us {
            run.find(
                "retention-invalid",
                format!(
                    "{what}: the drop postdates the seal that signed it ({}); not believed",
                    ts(r.signed_at_us)
                ),
            );
            r.believed = false;
            continue;
        }
        let contradiction = super::retention_contradiction(&mut conn, rec, r.seal_lo)
            .await
            .map_err(IntegrityError::db("checking a retention record"))?;
        if let Some((id, at, exists)) = contradiction {
            run.find(
                "retention-invalid",
                format!(
                    "{what}: row id={id} occurred_at={}, stored before that drop, is still stored{}; the partition was not dropped, the record is not believed",
                    ts(micros(at)),
                    if exists { " and the partition still exists" } else { "" }
                ),
            );
            r.believed = false;
        }
    }
    Ok(())
}

/// Checks every seal and every sealed row; writes one line per finding to `out`.
pub async fn verify(
    pool: &PgPool,
    keys: &BTreeMap<[u8; 8], VerifyingKey>,
    opts: &VerifyOptions,
    out: &mut impl Write,
) -> Result<Report, IntegrityError> {
    let mut run = Run {
        keys,
        report: Report::default(),
        out,
    };
    // The database's clock, which wrote every ingested_at.
    let now_us: i64 = micros(
        rows::database_time(pool)
            .await
            .map_err(IntegrityError::db("reading the time"))?,
    );
    let mut retention = signed_retention(pool, keys).await?;
    judge_retention(pool, &mut run, &mut retention).await?;
    let mut retained_by: Vec<u64> = vec![0; retention.len()];
    let progress = if opts.progress {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos} rows checked ({per_sec}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };

    let mut seal_conn = pool
        .acquire()
        .await
        .map_err(IntegrityError::db("connecting"))?;
    let mut row_conn = pool
        .acquire()
        .await
        .map_err(IntegrityError::db("connecting"))?;
    let mut seals = stored_seals::all(&mut seal_conn);
    let numbered = RowScan::numbered(opts.from, opts.to);
    let mut rows = numbered.fetch(&mut row_conn).peekable();

    let mut expected_no: u64 = 1;
    let mut prev: Option<([u8; 32], i64)> = None;
    let mut first_watermark: Option<i64> = None;
    // The two newest distinct watermarks (newest first).
    let mut watermarks: (Option<i64>, Option<i64>) = (None, None);
    let mut max_no: u64 = 0;
    // The first signed legacy boundary of the chain, with its seal's number.
    let mut boundary: Option<(LegacyBoundary, u64)> = None;
    let dir_newest = opts
        .dir
        .as_ref()
        .and_then(|d| d.keys().next_back().copied());

    while let Some(seal_row) = seals
        .try_next()
        .await
        .map_err(IntegrityError::db("reading audit_seals"))?
    {
        let stored_seals::StoredSeal {
            seal_no: no,
            bytes,
            hash: stored_hash,
            signature: sig,
            published_at,
            lo_seq: lo_col,
            hi_seq: hi_col,
            leaves: leaves_col,
            retention_records: ret_col,
        } = seal_row;
        let no = no as u64;
        run.report.seals += 1;
        max_no = no;
        if no > expected_no {
            let what = if no - expected_no == 1 {
                format!("seal {expected_no}")
            } else {
                format!("seals {expected_no}..={}", no - 1)
            };
            run.find(
                "seal-missing",
                format!("{what}: absent from audit_seals (deleted)"),
            );
            prev = None;
        }
        expected_no = no + 1;
        if let Some(topic) = &opts.topic {
            run.compare_copy(
                no,
                &bytes,
                topic,
                "the seal topic",
                published_at
                    .is_some()
                    .then_some("marked published but absent from the seal topic"),
            );
        }
        if let Some(dir) = &opts.dir {
            run.compare_copy(
                no,
                &bytes,
                dir,
                "the seal directory",
                dir_newest
                    .is_some_and(|n| no < n)
                    .then_some("absent from the seal directory, which holds later seals"),
            );
        }
        let hash = seal_hash(&bytes);
        let Some((seal, trusted)) = run.check_seal(no, &bytes, &stored_hash, &sig) else {
            prev = None;
            continue;
        };
        if (lo_col, hi_col, leaves_col as i64, ret_col as i64)
            != (
                seal.lo,
                seal.hi,
                seal.leaves.len() as i64,
                seal.retention.len() as i64,
            )
        {
            run.find(
                "seal-changed",
                format!(
                    "seal {no}: its columns lo_seq, hi_seq, leaves, retention_records ({lo_col}, {hi_col}, {leaves_col}, {ret_col}) do not match its signed bytes ({}, {}, {}, {}): the row of audit_seals was edited",
                    seal.lo,
                    seal.hi,
                    seal.leaves.len(),
                    seal.retention.len()
                ),
            );
        }
        if trusted
            && boundary.is_none()
            && let Some(b) = seal.legacy
        {
            boundary = Some((b, no));
        }
        match prev {
            Some((prev_hash, prev_hi)) => {
                if seal.prev_hash != prev_hash {
                    run.find(
                        "chain-broken",
                        format!(
                            "seal {no}: its prev_hash is not the hash of seal {}",
                            no - 1
                        ),
                    );
                }
                if seal.lo != prev_hi {
                    run.find(
                        "chain-broken",
                        format!(
                            "seal {no}: covers seal_seq ({}, {}] but seal {} ended at {prev_hi}",
                            seal.lo,
                            seal.hi,
                            no - 1
                        ),
                    );
                }
            }
            None if no == 1 && seal.prev_hash != [0u8; 32] => run.find(
                "chain-broken",
                "seal 1: its prev_hash is not 32 zero bytes".to_string(),
            ),
            None => {}
        }
        if !seal
            .leaves
            .windows(2)
            .all(|w| w[0].seal_seq <= w[1].seal_seq)
            || seal
                .leaves
                .iter()
                .any(|l| l.seal_seq <= seal.lo || l.seal_seq > seal.hi)
        {
            run.find(
                "seal-changed",
                format!("seal {no}: its leaves are out of order or outside its range"),
            );
        }
        first_watermark.get_or_insert(seal.watermark_at_us);
        if watermarks.0 != Some(seal.watermark_at_us) {
            watermarks = (Some(seal.watermark_at_us), watermarks.0);
        }

        // Leaves of this seal, by what names a row.
        let mut leaves: HashMap<(i64, i64), Vec<usize>> = HashMap::with_capacity(seal.leaves.len());
        let mut seen = vec![false; seal.leaves.len()];
        for (i, l) in seal.leaves.iter().enumerate() {
            if in_range(opts, l.occurred_at_us) {
                leaves
                    .entry((l.seal_seq, l.occurred_at_us))
                    .or_default()
                    .push(i);
            } else {
                seen[i] = true;
            }
        }
        loop {
            let next_seq = match std::pin::Pin::new(&mut rows).peek().await {
                Some(Ok(r)) => r.seal_seq.unwrap_or(i64::MIN),
                Some(Err(_)) => i64::MIN,
                None => break,
            };
            if next_seq > seal.hi {
                break;
            }
            let Some(row) = rows
                .try_next()
                .await
                .map_err(IntegrityError::db("reading audit_events"))?
            else {
                break;
            };
            progress.inc(1);
            let seq = row.seal_seq.unwrap_or_default();
            let occ = micros(row.occurred_at);
            if seq <= seal.lo {
                run.find(
                    "row-unsealed",
                    format!(
                        "id={} occurred_at={}: seal_seq {seq} lies before seal {no}'s range and no present seal names it",
                        row.id, ts(occ)
                    ),
                );
                continue;
            }
            let found = leaves.get(&(seq, occ)).and_then(|c| {
                c.iter()
                    .copied()
                    .find(|&i| !seen[i] && seal.leaves[i].id == row.id)
            });
            match found {
                Some(i) => {
                    seen[i] = true;
                    let leaf = &seal.leaves[i];
                    match row_hash_as(seal.row_encoding, &row) {
                        Ok(h) if h == leaf.row_hash => run.report.rows_ok += 1,
                        _ => run.find(
                            "row-changed",
                            format!(
                                "id={} occurred_at={}: differs from what seal {no} sealed (seal_seq {seq})",
                                row.id, ts(occ)
                            ),
                        ),
                    }
                }
                None => run.find(
                    "row-unsealed",
                    format!(
                        "id={} occurred_at={}: seal_seq {seq} is inside seal {no}'s range but the seal does not name this row (inserted or re-keyed after sealing)",
                        row.id, ts(occ)
                    ),
                ),
            }
        }
        for i in (0..seal.leaves.len()).filter(|&i| !seen[i]) {
            let leaf = &seal.leaves[i];
            let dropped = retention.iter().position(|r| {
                r.believed
                    && r.record.lower_us <= leaf.occurred_at_us
                    && leaf.occurred_at_us < r.record.upper_us
            });
            match dropped {
                Some(r) => {
                    retained_by[r] += 1;
                    run.report.retained_rows += 1;
                }
                None => run.find(
                    "row-missing",
                    format!(
                        "id={} occurred_at={}: sealed by seal {no} (seal_seq {}) but no longer stored (deleted)",
                        leaf.id, ts(leaf.occurred_at_us), leaf.seal_seq
                    ),
                ),
            }
        }
        prev = Some((hash, seal.hi));
    }
    drop(seals);

    // Rows above the newest seal: pending, unless older than the previous pass's watermark or
    // (with a seal interval) than 3 intervals, or dated in the future.
    let horizon = watermarks.1;
    let window = opts.seal_interval.map(|i| i.as_micros() as i64);
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(IntegrityError::db("reading audit_events"))?
    {
        progress.inc(1);
        let ingested = micros(row.ingested_at);
        let name = format!(
            "id={} occurred_at={}: seal_seq {} is above the newest seal",
            row.id,
            ts(micros(row.occurred_at)),
            row.seal_seq.unwrap_or_default(),
        );
        if horizon.is_some_and(|h| ingested < h) {
            run.find(
                "row-unsealed",
                format!(
                    "{name} although the row was stored at {}, before the previous seal pass (inserted behind the sealer's back, or the newest seals were deleted)",
                    ts(ingested)
                ),
            );
        } else if window.is_some_and(|w| ingested < now_us.saturating_sub(w.saturating_mul(3))) {
            run.find(
                "row-unsealed",
                format!(
                    "{name} although the row was stored at {}, more than 3 x integrity.seal_interval ago (the seals that covered it were deleted, or the sealer is not running)",
                    ts(ingested)
                ),
            );
        } else if window.is_some_and(|w| ingested > now_us.saturating_add(w)) {
            run.find(
                "row-unsealed",
                format!(
                    "{name} and its ingested_at {} lies in the future (set by hand to look pending)",
                    ts(ingested)
                ),
            );
        } else {
            run.report.pending_rows += 1;
        }
    }
    drop(rows);
    progress.finish_and_clear();

    // Rows without seal_seq: legacy within the boundary (or before the first seal's
    // watermark), findings after it.
    let unnumbered = RowScan::unnumbered(opts.from, opts.to);
    let mut nulls = unnumbered.fetch(&mut row_conn);
    while let Some(row) = nulls.next().await {
        let row = row.map_err(IntegrityError::db("reading rows without seal_seq"))?;
        let ingested = micros(row.ingested_at);
        let after = match (&boundary, first_watermark) {
            (Some((b, no)), _) if ingested > b.newest_ingested_at_us => Some(format!(
                "the legacy boundary signed in seal {no} ({})",
                if b.rows == 0 {
                    "no such row".to_string()
                } else {
                    format!("newest {}", ts(b.newest_ingested_at_us))
                }
            )),
            (_, Some(w)) if ingested >= w => Some("sealing began".to_string()),
            _ => None,
        };
        match after {
            Some(after) => run.find(
                "row-unsealed",
                format!(
                    "id={} occurred_at={}: has no seal_seq but was stored at {}, after {after}",
                    row.id,
                    ts(micros(row.occurred_at)),
                    ts(ingested)
                ),
            ),
            None => run.report.legacy_rows += 1,
        }
    }
    drop(nulls);
    if let Some((b, no)) = boundary
        && opts.from.is_none()
        && opts.to.is_none()
    {
        // Retention dropped partitions since: their rows without seal_seq are gone too.
        let dropped: i64 = retention
            .iter()
            .filter(|r| r.believed && r.seal_no > no)
            .map(|r| r.record.rows - r.record.sealed_rows)
            .sum();
        let expected = b.rows - dropped;
        let found = run.report.legacy_rows as i64;
        if found != expected {
            run.find(
                "legacy-count",
                format!(
                    "{found} rows without seal_seq are stored within the legacy boundary, but seal {no} counted {} when sealing began{}: rows without seal_seq were {} (they are not protected, so they cannot be named)",
                    b.rows,
                    if dropped > 0 { format!(" and retention dropped {dropped} since") } else { String::new() },
                    if found > expected { "added" } else { "deleted" }
                ),
            );
        }
    }

    for (copies, where_) in [
        (&opts.topic, "on the seal topic"),
        (&opts.dir, "in the seal directory"),
    ] {
        if let Some(copies) = copies {
            for (&no, _) in copies.range(max_no + 1..) {
                run.find(
                    "seal-truncated",
                    format!(
                        "seal {no}: {where_} but absent from audit_seals (newest seals deleted)"
                    ),
                );
            }
        }
    }

    // Records nobody signed are never believed; they are findings once a pass should have
    // signed them (or when they claim a drop in the future).
    let logged = logged_retention(pool).await?;
    for rec in logged
        .iter()
        .filter(|l| !retention.iter().any(|r| &r.record == *l))
    {
        let what = format!(
            "partition {} [{}, {}) recorded dropped at {}",
            rec.partition,
            ts(rec.lower_us),
            ts(rec.upper_us),
            ts(rec.dropped_at_us)
        );
        if rec.dropped_at_us > now_us {
            run.find(
                "retention-unsigned",
                format!("{what}: no seal signed it and its drop lies in the future (forged); not believed"),
            );
        } else if horizon.is_some_and(|h| rec.dropped_at_us < h) {
            run.find(
                "retention-unsigned",
                format!("{what}: no seal signed it although seal passes ran since (the sealer refused it, or it was written by hand); not believed"),
            );
        } else {
            let _ = writeln!(
                run.out,
                "info: {what}: not signed yet (the next seal signs it); until then its rows count as missing"
            );
        }
    }
    if let Some(months) = opts.retention_months {
        for r in retention.iter().filter(|r| r.believed) {
            let rec = &r.record;
            let cutoff = from_micros(r.signed_at_us)
                .and_then(|at| crate::store::retention_cutoff(at, months));
            let expired = cutoff.is_some_and(|c| rec.upper_us <= micros(c));
            if !expired {
                run.find(
                    "retention-early",
                    format!(
                        "partition {} [{}, {}) was dropped (signed by seal {} at {}) although \
                         database.partition_retention_months ({months}) kept it (deleted, not \
                         expired)",
                        rec.partition,
                        ts(rec.lower_us),
                        ts(rec.upper_us),
                        r.seal_no,
                        ts(r.signed_at_us)
                    ),
                );
            }
        }
    }
    // Where the dropped months' rows went (`audit_archives`; absent before archiving existed).
    let archived = crate::store::archives::records(pool)
        .await
        .unwrap_or_default();
    for (r, n) in retention.iter().zip(retained_by) {
        let rec = &r.record;
        let month =
            super::seal::from_micros(rec.lower_us).map(|t| crate::store::Month::of(t).to_string());
        let parts: Vec<_> = archived
            .iter()
            .filter(|a| Some(&a.month) == month.as_ref() && a.manifest_hash.is_some())
            .collect();
        let archive = if parts.is_empty() {
            String::new()
        } else {
            format!(
                "; archived: {} row(s) in {} verified archive part(s) (check them offline: \
                 audit-manager archive verify)",
                parts.iter().filter_map(|a| a.rows).sum::<i64>(),
                parts.len()
            )
        };
        let _ = writeln!(
            run.out,
            "info: retention dropped partition {} [{}, {}) at {} ({} rows, {} sealed){}; {n} sealed rows checked as dropped{archive}",
            rec.partition,
            ts(rec.lower_us),
            ts(rec.upper_us),
            ts(rec.dropped_at_us),
            rec.rows,
            rec.sealed_rows,
            if r.believed { "" } else { ", NOT BELIEVED" }
        );
    }
    if !opts.writer_keys.is_empty() {
        let checked =
            super::attest::verify_rows(pool, &opts.writer_keys, opts.from, opts.to).await?;
        for detail in checked.unattested {
            run.find("row-unattested", detail);
        }
        run.report.attestation_checked = true;
        run.report.attested_rows = checked.attested;
        run.report.unattested_legacy_rows = checked.legacy;
        let legacy = checked.legacy;
        match checked.boundary {
            Some(b) if legacy > 0 => {
                let _ = writeln!(
                    run.out,
                    "info: {legacy} row(s) numbered at or below seal_seq {b} were stored before \
                     writer attestation began (unattested-legacy)"
                );
            }
            Some(_) => {}
            None => {
                let _ = writeln!(
                    run.out,
                    "info: no attestation signed by a key in integrity.writer_public_key_files \
                     exists: every numbered row is reported"
                );
            }
        }
    }
    Ok(run.report)
}
