//! Each row's integrity status as the query role reports it.
//!
//! - On a page (`GET /events`), cheaply: `sealed` when a seal covers the row's `seal_seq`,
//!   `unsealed` when none does yet, `legacy` for a row stored before sealing existed. One
//!   statement per page (the highest sealed `seal_seq`).
//! - For one event (`GET /events/{id}`), fully: the row is re-encoded and hashed, its leaf in
//!   the covering seal compared, the seal's bytes against its hash, and its signature against
//!   the public keys of `integrity.public_key_files` (never keys from the database):
//!   `verified`, `failed` (with what failed), `unverifiable` (no configured key for the seal's
//!   key id), `unsealed` or `legacy`. `audit-manager verify` remains the complete check
//!   (chain, missing rows, truncation).
//!
//! Seals are located by their signed bytes, never by the helper columns `lo_seq`/`hi_seq`
//! (whoever can write the database can edit those): a binary search over the seal number
//! reads each probed seal's first 70 bytes. A seal whose columns disagree with its bytes fails
//! the check. A row no seal covers is
//! `failed`, not `unsealed`, once it is older than 3 × `integrity.seal_interval` (or dated in
//! the future), so deleting seals cannot turn "failed" into "not sealed yet".

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::integrity::encoding::{StoredRow, micros, row_hash_as};
use crate::integrity::seal::{SEAL_DOMAIN, Seal, key_id, seal_hash, signature_valid};
use crate::store::rows;
use crate::store::seals::{self, SealWithRange};

/// `(lo, hi)` from a seal's signed header, `substring(bytes from 1 for 70)`, if it is long
/// enough. Formats 1 and 2 share the header (domain 22 bytes, seal_no 8, key_id 8,
/// created_at 8, watermark_at 8, lo 8, hi 8).
fn range_of(header: &[u8]) -> Option<(i64, i64)> {
    let lo = header.get(54..62)?.try_into().ok()?;
    let hi = header.get(62..70)?.try_into().ok()?;
    Some((i64::from_be_bytes(lo), i64::from_be_bytes(hi)))
}

/// The highest `seal_seq` any seal covers (0 when there is no seal or no seal table): the
/// newest seal's `hi` as its signed bytes say (not the editable `hi_seq` column). Read through
/// the primary key and the first bytes of the seal only, one row, however many seals there
/// are (this runs for every page).
pub async fn sealed_up_to(pool: &PgPool) -> i64 {
    seals::newest_header(pool)
        .await
        .ok()
        .flatten()
        .and_then(|h| range_of(&h))
        .map_or(0, |(_, hi)| hi)
}

/// The cheap status of a row object (its `seal_seq` against `sealed_up_to`).
pub fn page_status(row: &Value, sealed_up_to: i64) -> &'static str {
    match row.get("seal_seq").and_then(Value::as_i64) {
        None => "legacy",
        Some(seq) if seq <= sealed_up_to => "sealed",
        Some(_) => "unsealed",
    }
}

/// The full check of the row `(id, occurred_at)` with `seal_seq`: `{"status", "detail"}`.
/// `seal_interval` is `integrity.seal_interval`: a row no seal covers 3 intervals after it was
/// stored fails.
pub async fn check_row(
    pool: &PgPool,
    keys: &[VerifyingKey],
    seal_interval: Duration,
    id: &str,
    occurred_at_us: i64,
) -> Value {
    match check(pool, keys, seal_interval, id, occurred_at_us).await {
        Ok((status, detail)) => json!({ "status": status, "detail": detail }),
        Err(e) => json!({ "status": "unknown", "detail": format!("could not check: {e}") }),
    }
}

/// The first seal numbered `n` or more: its number and signed header.
async fn probe(pool: &PgPool, n: i64) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
    seals::first_header_from(pool, n).await
}

/// The lowest-numbered seal, among `1..=newest`, whose signed header satisfies `pred`, which
/// must hold for `newest` and be monotone in the seal number (as a seal's `hi` and format
/// are along a chain). Binary search over the primary key: about log2(seals) one-row reads.
async fn first_seal_where(
    pool: &PgPool,
    newest: i64,
    pred: impl Fn(&[u8]) -> bool,
) -> Result<i64, sqlx::Error> {
    let (mut lo, mut hi) = (1i64, newest);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match probe(pool, mid).await? {
            Some((_, header)) if pred(&header) => hi = mid,
            Some((found, _)) if found <= hi => lo = found.max(mid) + 1,
            _ => hi = mid,
        }
    }
    Ok(probe(pool, lo).await?.map_or(newest, |(n, _)| n))
}

/// The seal whose signed range covers `seq`, `Ok(None)` when none does: a binary search
/// over the seal number by the seals' signed `hi` (the `lo_seq`/`hi_seq` columns are not used
/// to find it, and have no index anyway).
async fn covering_seal(
    pool: &PgPool,
    newest: i64,
    seq: i64,
) -> Result<Option<SealWithRange>, sqlx::Error> {
    let no = first_seal_where(pool, newest, |h| {
        range_of(h).is_none_or(|(_, hi)| hi >= seq)
    })
    .await?;
    let found = seals::by_no(pool, no).await?;
    Ok(found.filter(|s| range_of(&s.1).is_none_or(|(lo, hi)| lo < seq && seq <= hi)))
}

async fn check(
    pool: &PgPool,
    keys: &[VerifyingKey],
    seal_interval: Duration,
    id: &str,
    occurred_at_us: i64,
) -> Result<(&'static str, String), sqlx::Error> {
    let Some(at) = chrono::DateTime::from_timestamp_micros(occurred_at_us) else {
        return Ok(("unknown", "the row's time is out of range".into()));
    };
    let Some(row) = rows::by_key(pool, id, at).await? else {
        return Ok(("unknown", "the row is gone".into()));
    };
    // The newest seal by number, its signed range, and the database's clock (which wrote
    // every ingested_at).
    let (now, newest) = seals::time_and_newest_no(pool).await?;
    let Some(seq) = row.seal_seq else {
        return check_legacy(pool, keys, newest, &row).await;
    };
    let newest_hi = match newest {
        Some(n) => probe(pool, n)
            .await?
            .and_then(|(_, h)| range_of(&h))
            .map(|(_, hi)| hi),
        None => None,
    };
    let covered = match (newest, newest_hi) {
        (Some(n), Some(hi)) if seq <= hi => covering_seal(pool, n, seq).await?,
        _ => None,
    };
    let Some((no, bytes, stored_hash, signature, lo_col, hi_col)) = covered else {
        if newest_hi.is_some_and(|hi| seq <= hi) {
            return Ok((
                "failed",
                format!(
                    "seal_seq {seq} lies inside the sealed ranges but no seal covers it (seals deleted or changed)"
                ),
            ));
        }
        let window = chrono::Duration::from_std(seal_interval).unwrap_or(chrono::Duration::MAX);
        let stored = row.ingested_at;
        if !keys.is_empty() && stored < now - window * 3 {
            return Ok((
                "failed",
                format!(
                    "stored at {} and still covered by no seal, more than 3 x integrity.seal_interval later: the seals that covered it may have been deleted (run `audit-manager verify`)",
                    stored.to_rfc3339()
                ),
            ));
        }
        if !keys.is_empty() && stored > now + window {
            return Ok((
                "failed",
                format!(
                    "its ingested_at {} lies in the future (set by hand?)",
                    stored.to_rfc3339()
                ),
            ));
        }
        return Ok((
            "unsealed",
            "not sealed yet (the next seal will cover it)".into(),
        ));
    };
    let hash = seal_hash(&bytes);
    if stored_hash != hash {
        return Ok((
            "failed",
            format!("seal {no}: its bytes do not match its hash"),
        ));
    }
    let seal = match Seal::from_bytes(&bytes) {
        Ok(s) => s,
        Err(e) => return Ok(("failed", format!("seal {no} cannot be read: {e}"))),
    };
    let Some(key) = keys.iter().find(|k| key_id(k) == seal.key_id) else {
        return Ok((
            "unverifiable",
            format!(
                "seal {no} is signed by key {}, which is not in integrity.public_key_files",
                hex::encode(seal.key_id)
            ),
        ));
    };
    if !signature_valid(key, &hash, &signature) {
        return Ok((
            "failed",
            format!("seal {no}: its signature does not verify"),
        ));
    }
    let Some(leaf) = seal.leaves.iter().find(|l| {
        l.seal_seq == seq && l.id == row.id && l.occurred_at_us == micros(row.occurred_at)
    }) else {
        return Ok((
            "failed",
            format!(
                "seal {no} covers this row's position but does not list it (inserted afterwards?)"
            ),
        ));
    };
    match row_hash_as(seal.row_encoding, &row) {
        Ok(h) if h != leaf.row_hash => Ok((
            "failed",
            format!("the row differs from what seal {no} sealed (changed after sealing)"),
        )),
        Err(e) => Ok(("failed", format!("the row cannot be encoded: {e}"))),
        Ok(_) if (lo_col, hi_col) != (seal.lo, seal.hi) => Ok((
            "failed",
            format!(
                "seal {no}: its columns lo_seq/hi_seq ({lo_col}, {hi_col}) do not match its signed range ({}, {}]: the seal's row was edited",
                seal.lo, seal.hi
            ),
        )),
        Ok(_) => Ok((
            "verified",
            format!(
                "sealed in seal {no}, signed by key {}",
                hex::encode(seal.key_id)
            ),
        )),
    }
}

/// Above this many legacy rows the page does not count them (verify does).
const PAGE_LEGACY_COUNT_LIMIT: i64 = 100_000;

/// A row without `seal_seq`: `legacy` while it fits the legacy boundary signed in the chain's
/// first format-2 seal; `failed` when it was stored after it, or when more such rows are
/// stored than the boundary counted (one bounded count: it stops one row past the boundary).
async fn check_legacy(
    pool: &PgPool,
    keys: &[VerifyingKey],
    newest: Option<i64>,
    row: &StoredRow,
) -> Result<(&'static str, String), sqlx::Error> {
    let legacy = || {
        Ok((
            "legacy",
            "stored before sealing existed: not covered by any seal".to_string(),
        ))
    };
    let Some(newest) = newest else {
        return legacy();
    };
    let is_v2 = |h: &[u8]| h.starts_with(SEAL_DOMAIN);
    if !probe(pool, newest).await?.is_some_and(|(_, h)| is_v2(&h)) {
        return legacy();
    }
    let no = first_seal_where(pool, newest, is_v2).await?;
    let Some((_, bytes, _, signature, _, _)) = seals::by_no(pool, no).await? else {
        return legacy();
    };
    let Ok(seal) = Seal::from_bytes(&bytes) else {
        return Ok(("failed", format!("seal {no} cannot be read")));
    };
    let trusted = keys
        .iter()
        .find(|k| key_id(k) == seal.key_id)
        .is_some_and(|k| signature_valid(k, &seal_hash(&bytes), &signature));
    let Some(b) = seal.legacy.filter(|_| trusted) else {
        return legacy();
    };
    if micros(row.ingested_at) > b.newest_ingested_at_us {
        return Ok((
            "failed",
            format!(
                "has no seal_seq but was stored at {}, after the legacy boundary seal {no} signed: added by hand",
                row.ingested_at.to_rfc3339()
            ),
        ));
    }
    if b.rows > PAGE_LEGACY_COUNT_LIMIT {
        // Counting an adopted table's millions of legacy rows would take the page seconds;
        // `audit-manager verify` counts them.
        return legacy();
    }
    let count = rows::count_unnumbered_upto(pool, b.rows.saturating_add(1)).await?;
    if count > b.rows {
        return Ok((
            "failed",
            format!(
                "more rows without seal_seq are stored than the {} seal {no} counted when sealing began: rows were added by hand, and this may be one (run `audit-manager verify`)",
                b.rows
            ),
        ));
    }
    legacy()
}
