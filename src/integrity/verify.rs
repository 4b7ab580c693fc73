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
//! - **row changed**: a sealed row whose hash differs from its leaf; **row missing**: a leaf
//!   without its row, unless a signed retention record covers its `occurred_at` (then it is
//!   counted as dropped by retention, which is not a finding);
//! - **row unsealed**: a row whose `seal_seq` lies inside a sealed range but which no leaf of
//!   that seal names; a row with a `seal_seq` above the newest seal, or with none, whose
//!   `ingested_at` is older than the *previous* seal pass's watermark (a row stored by the
//!   sink in time for that pass is always covered by the newest one, see `sealer.rs`); a row
//!   without `seal_seq` stored after the first seal's watermark;
//! - **retention early**: a retention record of a partition that was not yet past
//!   `database.partition_retention_months` when it was dropped (the command line passes the
//!   configured value);
//! - with `--seals-from-topic`: a seal on the topic that the database lacks (the newest seals
//!   deleted: truncation), a seal that differs from its published copy, or a seal marked
//!   published that the topic lacks.
//!
//! Rows without `seal_seq` stored before sealing began are legacy: counted, not findings.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;

use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sqlx::PgPool;

use super::encoding::{SELECT_LIST, StoredRow, micros, row_hash};
use super::seal::{RetentionRecord, Seal, from_micros, seal_hash, signature_valid};
use super::{IntegrityError, SealLine};

/// What to check.
#[derive(Debug, Default)]
pub struct VerifyOptions {
    /// Only rows (and leaves) with `occurred_at >= from`.
    pub from: Option<DateTime<Utc>>,
    /// Only rows (and leaves) with `occurred_at < to`.
    pub to: Option<DateTime<Utc>>,
    /// The published copies of the seals (`--seals-from-topic`), by seal number.
    pub topic: Option<BTreeMap<u64, Vec<SealLine>>>,
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
    /// Stable kind: `row-changed`, `row-missing`, `row-unsealed`, `seal-missing`,
    /// `seal-changed`, `signature-invalid`, `unknown-key`, `chain-broken`, `seal-truncated`,
    /// `retention-early`.
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

    /// Hash, signature and format of one seal; `None` when its bytes cannot be read.
    fn check_seal(
        &mut self,
        no: u64,
        bytes: &[u8],
        stored_hash: &[u8],
        sig: &[u8],
    ) -> Option<Seal> {
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
        match self.keys.get(&seal.key_id) {
            None => self.find(
                "unknown-key",
                format!(
                    "seal {no}: signed by key {}, which is not in integrity.public_key_files",
                    hex::encode(seal.key_id)
                ),
            ),
            Some(key) if !signature_valid(key, &hash, sig) => self.find(
                "signature-invalid",
                format!(
                    "seal {no}: the signature does not verify under key {}",
                    hex::encode(seal.key_id)
                ),
            ),
            Some(_) => {}
        }
        Some(seal)
    }
}

fn in_range(opts: &VerifyOptions, occurred_us: i64) -> bool {
    opts.from.is_none_or(|f| occurred_us >= micros(f))
        && opts.to.is_none_or(|t| occurred_us < micros(t))
}

fn range_sql(opts: &VerifyOptions) -> String {
    let mut s = String::new();
    if let Some(f) = opts.from {
        s.push_str(&format!(" AND occurred_at >= '{}'", f.to_rfc3339()));
    }
    if let Some(t) = opts.to {
        s.push_str(&format!(" AND occurred_at < '{}'", t.to_rfc3339()));
    }
    s
}

type SealRow = (i64, Vec<u8>, Vec<u8>, Vec<u8>, Option<DateTime<Utc>>);

/// Retention records of the seals that carry any, from seals whose hash and signature check
/// out (a record is only believed when a trusted key signed it).
async fn trusted_retention(
    pool: &PgPool,
    keys: &BTreeMap<[u8; 8], VerifyingKey>,
) -> Result<Vec<RetentionRecord>, IntegrityError> {
    let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT bytes, signature FROM audit_seals WHERE retention_records > 0 ORDER BY seal_no",
    )
    .fetch_all(pool)
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
        if trusted {
            out.extend(seal.retention);
        }
    }
    // Drops recorded since the newest seal: the next seal takes them in.
    let pending: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT partition,
                COALESCE((extract(epoch FROM lower_bound) * 1000000)::int8, -9223372036854775808),
                COALESCE((extract(epoch FROM upper_bound) * 1000000)::int8, 9223372036854775807),
                (extract(epoch FROM dropped_at) * 1000000)::int8, rows, sealed_rows
           FROM audit_retention_log WHERE sealed_in IS NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .map_err(IntegrityError::db("reading audit_retention_log"))?;
    out.extend(pending.into_iter().map(
        |(partition, lower_us, upper_us, dropped_at_us, rows, sealed_rows)| RetentionRecord {
            partition,
            lower_us,
            upper_us,
            dropped_at_us,
            rows,
            sealed_rows,
        },
    ));
    Ok(out)
}

/// Checks every seal and every sealed row; writes one line per finding to `out`.
pub async fn verify(
    pool: &PgPool,
    keys: &BTreeMap<[u8; 8], VerifyingKey>,
    opts: &VerifyOptions,
    out: &mut impl Write,
) -> Result<Report, IntegrityError> {
    let retention = trusted_retention(pool, keys).await?;
    let mut retained_by: Vec<u64> = vec![0; retention.len()];
    let mut run = Run {
        keys,
        report: Report::default(),
        out,
    };
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
    let mut seals = sqlx::query_as::<_, SealRow>(
        "SELECT seal_no, bytes, hash, signature, published_at FROM audit_seals ORDER BY seal_no",
    )
    .fetch(&mut *seal_conn);
    let row_sql = format!(
        "SELECT {SELECT_LIST} FROM audit_events WHERE seal_seq IS NOT NULL{} ORDER BY seal_seq",
        range_sql(opts)
    );
    let mut rows = sqlx::query_as::<_, StoredRow>(&row_sql)
        .fetch(&mut *row_conn)
        .peekable();

    let mut expected_no: u64 = 1;
    let mut prev: Option<([u8; 32], i64)> = None;
    let mut first_watermark: Option<i64> = None;
    // The two newest distinct watermarks (newest first).
    let mut watermarks: (Option<i64>, Option<i64>) = (None, None);
    let mut max_no: u64 = 0;

    while let Some(seal_row) = seals
        .try_next()
        .await
        .map_err(IntegrityError::db("reading audit_seals"))?
    {
        let (no, bytes, stored_hash, sig, published_at) = seal_row;
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
            let hash = hex::encode(seal_hash(&bytes));
            match topic.get(&no) {
                Some(copies)
                    if copies
                        .iter()
                        .any(|c| c.hash != hash || c.decoded().as_deref() != Some(&bytes[..])) =>
                {
                    run.find(
                        "seal-changed",
                        format!("seal {no}: differs from its published copy on the seal topic"),
                    )
                }
                None if published_at.is_some() => run.find(
                    "seal-changed",
                    format!("seal {no}: marked published but absent from the seal topic"),
                ),
                _ => {}
            }
        }
        let hash = seal_hash(&bytes);
        let Some(seal) = run.check_seal(no, &bytes, &stored_hash, &sig) else {
            prev = None;
            continue;
        };
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
                    match row_hash(&row) {
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
                r.lower_us <= leaf.occurred_at_us && leaf.occurred_at_us < r.upper_us
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

    // Rows above the newest seal: pending, unless older than the previous pass's watermark.
    let horizon = watermarks.1;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(IntegrityError::db("reading audit_events"))?
    {
        progress.inc(1);
        let ingested = micros(row.ingested_at);
        match horizon {
            Some(h) if ingested < h => run.find(
                "row-unsealed",
                format!(
                    "id={} occurred_at={}: seal_seq {} is above the newest seal although the row was stored at {}, before the previous seal pass (inserted behind the sealer's back, or the newest seals were deleted)",
                    row.id,
                    ts(micros(row.occurred_at)),
                    row.seal_seq.unwrap_or_default(),
                    ts(ingested)
                ),
            ),
            _ => run.report.pending_rows += 1,
        }
    }
    drop(rows);
    progress.finish_and_clear();

    // Rows without seal_seq: legacy before the first seal's watermark, findings after it.
    let legacy_sql = format!(
        "SELECT {SELECT_LIST} FROM audit_events WHERE seal_seq IS NULL{}",
        range_sql(opts)
    );
    let mut nulls = sqlx::query_as::<_, StoredRow>(&legacy_sql).fetch(&mut *row_conn);
    while let Some(row) = nulls.next().await {
        let row = row.map_err(IntegrityError::db("reading rows without seal_seq"))?;
        match first_watermark {
            Some(w) if micros(row.ingested_at) >= w => run.find(
                "row-unsealed",
                format!(
                    "id={} occurred_at={}: has no seal_seq but was stored at {}, after sealing began",
                    row.id,
                    ts(micros(row.occurred_at)),
                    ts(micros(row.ingested_at))
                ),
            ),
            _ => run.report.legacy_rows += 1,
        }
    }
    drop(nulls);

    if let Some(topic) = &opts.topic {
        for (&no, _) in topic.range(max_no + 1..) {
            run.find(
                "seal-truncated",
                format!("seal {no}: on the seal topic but absent from audit_seals (newest seals deleted)"),
            );
        }
    }
    if let Some(months) = opts.retention_months {
        for r in &retention {
            let cutoff = from_micros(r.dropped_at_us)
                .and_then(|at| crate::store::retention_cutoff(at, months));
            let expired = cutoff.is_some_and(|c| r.upper_us <= micros(c));
            if !expired {
                run.find(
                    "retention-early",
                    format!(
                        "partition {} [{}, {}) was dropped at {} although \
                         database.partition_retention_months ({months}) kept it (deleted, not \
                         expired)",
                        r.partition,
                        ts(r.lower_us),
                        ts(r.upper_us),
                        ts(r.dropped_at_us)
                    ),
                );
            }
        }
    }
    for (r, n) in retention.iter().zip(retained_by) {
        let _ = writeln!(
            run.out,
            "info: retention dropped partition {} [{}, {}) at {} ({} rows, {} sealed); {n} sealed rows checked as dropped",
            r.partition,
            ts(r.lower_us),
            ts(r.upper_us),
            ts(r.dropped_at_us),
            r.rows,
            r.sealed_rows
        );
    }
    if !opts.writer_keys.is_empty() {
        super::attest::verify_rows(
            pool,
            &opts.writer_keys,
            opts.from,
            opts.to,
            &mut run.report,
            run.out,
        )
        .await?;
    }
    Ok(run.report)
}
