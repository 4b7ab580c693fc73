//! The sealer (maintain role): every `integrity.seal_interval` it seals the rows stored since
//! the previous seal.
//!
//! # Coverage without gaps
//!
//! Every row gets `seal_seq = nextval('audit_events_seal_seq')` from the column default (the
//! sequence has `CACHE 1`, so values are handed out in order and `last_value` is the highest
//! value any session has drawn). Every write transaction of the sink first takes
//! `pg_advisory_xact_lock_shared(SEAL_WRITE_LOCK)` and keeps it until it commits or aborts.
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
//! Only one sealer works at a time: a pass holds the session lock [`SEALER_LOCK`]; another
//! maintainer skips its pass.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::TryStreamExt as _;
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::attest::SealCheck;
use super::encoding::{SELECT_LIST, StoredRow, micros, row_hash};
use super::publish::Publisher;
use super::seal::{
    Leaf, MAX_LEAVES, MAX_SEAL_BYTES, RetentionRecord, Seal, SignedSeal, Signer, seal_hash,
};
use super::{IntegrityError, SEAL_WRITE_LOCK, SEALER_LOCK, fault_point};

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
struct Tip {
    seal_no: u64,
    hash: [u8; 32],
    hi: i64,
}

async fn tip(conn: &mut PgConnection) -> Result<Option<Tip>, IntegrityError> {
    let row: Option<(Vec<u8>,)> =
        sqlx::query_as("SELECT bytes FROM audit_seals ORDER BY seal_no DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await
            .map_err(IntegrityError::db("reading the newest seal"))?;
    let Some((bytes,)) = row else { return Ok(None) };
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
    }))
}

/// Takes the write lock exclusively and returns `(S, now)`: every row with `seal_seq <= S` is
/// visible and no later commit can add one (see the module documentation).
pub async fn watermark(conn: &mut PgConnection) -> Result<(i64, i64), IntegrityError> {
    let err = IntegrityError::db("taking the seal watermark");
    let mut tx = conn.begin().await.map_err(err)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SEAL_WRITE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(IntegrityError::db("taking the seal watermark"))?;
    fault_point("watermark_locked");
    let (last, called, now): (i64, bool, chrono::DateTime<Utc>) = sqlx::query_as(
        "SELECT last_value, is_called, clock_timestamp() FROM audit_events_seal_seq",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(IntegrityError::db("reading audit_events_seal_seq"))?;
    tx.commit()
        .await
        .map_err(IntegrityError::db("taking the seal watermark"))?;
    Ok((if called { last } else { last - 1 }, micros(now)))
}

async fn pending_retention(
    conn: &mut PgConnection,
) -> Result<(Vec<i64>, Vec<RetentionRecord>), IntegrityError> {
    let rows: Vec<(i64, String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT id, partition,
                COALESCE((extract(epoch FROM lower_bound) * 1000000)::int8, -9223372036854775808),
                COALESCE((extract(epoch FROM upper_bound) * 1000000)::int8, 9223372036854775807),
                (extract(epoch FROM dropped_at) * 1000000)::int8, rows, sealed_rows
           FROM audit_retention_log WHERE sealed_in IS NULL ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(IntegrityError::db("reading audit_retention_log"))?;
    Ok(rows
        .into_iter()
        .map(
            |(id, partition, lower_us, upper_us, dropped_at_us, rows, sealed_rows)| {
                (
                    id,
                    RetentionRecord {
                        partition,
                        lower_us,
                        upper_us,
                        dropped_at_us,
                        rows,
                        sealed_rows,
                    },
                )
            },
        )
        .unzip())
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
    let sql = format!(
        "SELECT {SELECT_LIST} FROM audit_events WHERE seal_seq > $1 AND seal_seq <= $2 \
         ORDER BY seal_seq"
    );
    // Each row is hashed as it arrives and only its leaf is kept: a window of rows is never
    // held whole (measured: sealing raised the sink+maintain peak by 20–27 MiB when it was).
    let mut rows = sqlx::query_as::<_, StoredRow>(&sql)
        .bind(after)
        .bind(window_hi)
        .fetch(&mut *conn);
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
    sqlx::query(
        "INSERT INTO audit_seals (seal_no, bytes, hash, signature, key_id, created_at, lo_seq,
             hi_seq, leaves, retention_records)
         VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000000), $7, $8, $9, $10)",
    )
    .bind(signed.seal_no as i64)
    .bind(&signed.bytes)
    .bind(&signed.hash[..])
    .bind(&signed.signature[..])
    .bind(hex::encode(signed.key_id))
    .bind(seal.created_at_us as f64)
    .bind(seal.lo)
    .bind(seal.hi)
    .bind(seal.leaves.len() as i32)
    .bind(seal.retention.len() as i32)
    .execute(&mut *tx)
    .await
    .map_err(err())?;
    if !retention_ids.is_empty() {
        sqlx::query("UPDATE audit_retention_log SET sealed_in = $1 WHERE id = ANY($2)")
            .bind(signed.seal_no as i64)
            .bind(retention_ids)
            .execute(&mut *tx)
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
/// (in as many seals as the size bounds need), publish them.
pub async fn seal_pass(
    conn: &mut PgConnection,
    signer: &Signer,
    publisher: Option<&Publisher>,
) -> Result<PassReport, IntegrityError> {
    seal_pass_checked(conn, signer, publisher, None).await
}

/// [`seal_pass`], sealing only rows `check` admits (writer attestation) when given.
pub async fn seal_pass_checked(
    conn: &mut PgConnection,
    signer: &Signer,
    publisher: Option<&Publisher>,
    check: Option<&mut SealCheck>,
) -> Result<PassReport, IntegrityError> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SEALER_LOCK)
        .fetch_one(&mut *conn)
        .await
        .map_err(IntegrityError::db("taking the sealer lock"))?;
    if !locked {
        return Ok(PassReport::default());
    }
    let result = seal_locked(conn, signer, publisher, check).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SEALER_LOCK)
        .execute(&mut *conn)
        .await;
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
    mut check: Option<&mut SealCheck>,
) -> Result<PassReport, IntegrityError> {
    let mut report = PassReport {
        locked: true,
        ..PassReport::default()
    };
    fault_point("pass_start");
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
    // The next seal covers (lo, hi]; rows are read from `cursor` on (lo < cursor only after
    // windows holding nothing but gaps).
    let (mut seal_no, mut prev_hash, mut lo) = match &tip {
        Some(t) => (t.seal_no + 1, t.hash, t.hi),
        None => (1, [0u8; 32], 0),
    };
    let mut cursor = lo;
    let (mut retention_ids, mut retention) = pending_retention(conn).await?;
    while cursor < upto || !retention.is_empty() {
        let (leaves, hi) = read_leaves(conn, cursor, upto, check.as_deref_mut()).await?;
        let hi = hi.max(cursor);
        fault_point("rows_read");
        if leaves.is_empty() && retention.is_empty() {
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
        };
        let signed = signer.sign(&seal);
        fault_point("seal_signed");
        insert_seal(conn, &signed, &seal, &std::mem::take(&mut retention_ids)).await?;
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

/// Publishes every seal whose `published_at` is NULL, oldest first, marking each once the
/// broker acknowledged it. Returns how many were published.
pub async fn publish_pending(
    conn: &mut PgConnection,
    publisher: &Publisher,
) -> Result<u64, IntegrityError> {
    let rows: Vec<(i64, Vec<u8>, Vec<u8>, String)> = sqlx::query_as(
        "SELECT seal_no, bytes, signature, key_id FROM audit_seals
          WHERE published_at IS NULL ORDER BY seal_no",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(IntegrityError::db("reading unpublished seals"))?;
    let mut n = 0;
    for (seal_no, bytes, signature, key_id) in rows {
        let line = super::SealLine::new(seal_no as u64, &bytes, &signature, &key_id);
        publisher.publish(&line).await?;
        fault_point("published");
        sqlx::query("UPDATE audit_seals SET published_at = now() WHERE seal_no = $1")
            .bind(seal_no)
            .execute(&mut *conn)
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
    let newest: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT bytes, hash, signature FROM audit_seals ORDER BY seal_no DESC LIMIT 1",
    )
    .fetch_optional(pool)
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
    let sql = format!(
        "SELECT {SELECT_LIST} FROM audit_events WHERE seal_seq > $1 AND seal_seq <= $2 \
         ORDER BY seal_seq"
    );
    // The seal's leaves by `seal_seq` (one number per row); each stored row is checked against
    // its leaf as it arrives (rows are not held). A leaf without a row (dropped by retention
    // since) is no mismatch; a row without a leaf, or with another id, time or hash, is.
    let mut sealed: std::collections::HashMap<i64, &Leaf> =
        seal.leaves.iter().map(|l| (l.seal_seq, l)).collect();
    let mut rows = sqlx::query_as::<_, StoredRow>(&sql)
        .bind(seal.lo)
        .bind(seal.hi)
        .fetch(pool);
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
                    && row_hash(&r).is_ok_and(|h| h == l.row_hash)
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

/// Age of the oldest row no seal covers yet, and how many seals are unpublished.
///
/// "Oldest" is the unsealed row with the lowest `seal_seq`, read through the index: one row,
/// where `min(ingested_at)` read every unsealed row (about 100 ms per 100 000 waiting rows, at
/// every pass, on the cores the sink writes with). Numbers are drawn in order, so this row's
/// transaction drew first; another could only be older by the time its transaction spent
/// before drawing (waiting for the write lock), far below any lag worth an alert.
pub async fn observe(pool: &PgPool) -> Result<(f64, u64), IntegrityError> {
    let (lag, unpublished): (Option<f64>, i64) = sqlx::query_as(
        "SELECT (SELECT extract(epoch FROM now() - ingested_at)::float8
                   FROM audit_events
                  WHERE seal_seq > COALESCE((SELECT hi_seq FROM audit_seals
                                              ORDER BY seal_no DESC LIMIT 1), 0)
                  ORDER BY seal_seq LIMIT 1),
                (SELECT count(*) FROM audit_seals WHERE published_at IS NULL)",
    )
    .fetch_one(pool)
    .await
    .map_err(IntegrityError::db("measuring the seal lag"))?;
    Ok((lag.unwrap_or(0.0).max(0.0), unpublished.max(0) as u64))
}

/// Runs a pass every `interval` until `token` is cancelled. Each pass uses its own connection
/// (closed afterwards, so a session lock never outlives a failed pass).
pub fn spawn(
    pool: PgPool,
    signer: Signer,
    publisher: Option<Publisher>,
    check: Option<SealCheck>,
    interval: Duration,
    state: SealerState,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let check = tokio::sync::Mutex::new(check);
        crate::maintain::schedule(interval, token, || async {
            let outcome = async {
                let mut conn = pool
                    .acquire()
                    .await
                    .map_err(IntegrityError::db("connecting for the sealer"))?
                    .detach();
                let mut check = check.lock().await;
                let r =
                    seal_pass_checked(&mut conn, &signer, publisher.as_ref(), check.as_mut()).await;
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
                    crate::maintain::PassOutcome::Done
                }
                Err(e) if e.is_schema_missing() => {
                    // The maintain loop creates the database and schema at start.
                    tracing::debug!(error = %e, "sealer waiting for the schema");
                    crate::maintain::PassOutcome::Failed
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sealing failed; will retry");
                    s.error = Some(e.to_string());
                    crate::maintain::PassOutcome::Failed
                }
            }
        })
        .await;
    })
}
