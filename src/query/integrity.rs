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

use ed25519_dalek::VerifyingKey;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::integrity::encoding::{SELECT_LIST, StoredRow, micros, row_hash};
use crate::integrity::seal::{Seal, key_id, seal_hash, signature_valid};

/// The highest `seal_seq` any seal covers (0 when there is no seal or no seal table). Seals
/// cover consecutive ranges, so that is the newest seal's `hi_seq`: read through the primary
/// key, one row, however many seals there are (this runs for every page).
pub async fn sealed_up_to(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT hi_seq FROM audit_seals ORDER BY seal_no DESC LIMIT 1")
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
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
pub async fn check_row(
    pool: &PgPool,
    keys: &[VerifyingKey],
    id: &str,
    occurred_at_us: i64,
) -> Value {
    match check(pool, keys, id, occurred_at_us).await {
        Ok((status, detail)) => json!({ "status": status, "detail": detail }),
        Err(e) => json!({ "status": "unknown", "detail": format!("could not check: {e}") }),
    }
}

/// `(seal_no, bytes, hash, signature)` of a row of `audit_seals`.
type StoredSeal = (i64, Vec<u8>, Vec<u8>, Vec<u8>);

async fn check(
    pool: &PgPool,
    keys: &[VerifyingKey],
    id: &str,
    occurred_at_us: i64,
) -> Result<(&'static str, String), sqlx::Error> {
    let Some(at) = chrono::DateTime::from_timestamp_micros(occurred_at_us) else {
        return Ok(("unknown", "the row's time is out of range".into()));
    };
    let sql = format!("SELECT {SELECT_LIST} FROM audit_events WHERE id = $1 AND occurred_at = $2");
    let Some(row): Option<StoredRow> = sqlx::query_as(&sql)
        .bind(id)
        .bind(at)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(("unknown", "the row is gone".into()));
    };
    let Some(seq) = row.seal_seq else {
        return Ok((
            "legacy",
            "stored before sealing existed: not covered by any seal".into(),
        ));
    };
    let seal: Option<StoredSeal> = sqlx::query_as(
        "SELECT seal_no, bytes, hash, signature FROM audit_seals \
         WHERE lo_seq < $1 AND hi_seq >= $1 ORDER BY seal_no LIMIT 1",
    )
    .bind(seq)
    .fetch_optional(pool)
    .await?;
    let Some((no, bytes, stored_hash, signature)) = seal else {
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
    match row_hash(&row) {
        Ok(h) if h == leaf.row_hash => Ok((
            "verified",
            format!(
                "sealed in seal {no}, signed by key {}",
                hex::encode(seal.key_id)
            ),
        )),
        Ok(_) => Ok((
            "failed",
            format!("the row differs from what seal {no} sealed (changed after sealing)"),
        )),
        Err(e) => Ok(("failed", format!("the row cannot be encoded: {e}"))),
    }
}
