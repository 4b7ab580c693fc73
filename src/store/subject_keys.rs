//! `audit_subject_keys`: each data subject's key, wrapped to the keeper key and named by the
//! subject's pseudonym only (`docs/privacy.md`). The table may live in its own database
//! (`privacy.keys_database_url`), so that backups of the audit data never carry the keys.
//!
//! A forgotten subject keeps a row without a key (`forgotten_at` set): events of it that arrive
//! later are stored erased, not under a new key, until an operator re-admits it.

use sqlx::{PgPool, Row as _};

use super::StoreError;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS audit_subject_keys (
    pseudonym    TEXT PRIMARY KEY,
    key_id       TEXT UNIQUE,
    wrapped_key  TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    forgotten_at TIMESTAMPTZ,
    CHECK ((wrapped_key IS NULL) = (forgotten_at IS NOT NULL))
)";

/// Creates the table when missing.
pub async fn prepare(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query(SCHEMA)
        .execute(pool)
        .await
        .map_err(|e| StoreError::new("create audit_subject_keys", e))?;
    Ok(())
}

/// What the table says about one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRow {
    /// `(key_id, wrapped_key)`.
    Live(String, String),
    Forgotten,
}

/// The subject's key, inserting `(new_id, new_wrapped)` when it has none (whoever inserts
/// first wins; the loser reads the winner's key).
pub async fn get_or_create(
    pool: &PgPool,
    pseudonym: &str,
    new_id: &str,
    new_wrapped: &str,
) -> Result<KeyRow, StoreError> {
    sqlx::query(
        "INSERT INTO audit_subject_keys (pseudonym, key_id, wrapped_key) VALUES ($1, $2, $3)
         ON CONFLICT (pseudonym) DO NOTHING",
    )
    .bind(pseudonym)
    .bind(new_id)
    .bind(new_wrapped)
    .execute(pool)
    .await
    .map_err(|e| StoreError::new("insert a subject key", e))?;
    let row =
        sqlx::query("SELECT key_id, wrapped_key FROM audit_subject_keys WHERE pseudonym = $1")
            .bind(pseudonym)
            .fetch_one(pool)
            .await
            .map_err(|e| StoreError::new("read a subject key", e))?;
    let id: Option<String> = row.get(0);
    let wrapped: Option<String> = row.get(1);
    Ok(match (id, wrapped) {
        (Some(id), Some(w)) => KeyRow::Live(id, w),
        _ => KeyRow::Forgotten,
    })
}

/// The wrapped key with this id, `None` when destroyed or unknown.
pub async fn by_id(pool: &PgPool, key_id: &str) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT wrapped_key FROM audit_subject_keys WHERE key_id = $1")
        .bind(key_id)
        .fetch_optional(pool)
        .await
        .map_err(|e| StoreError::new("read a subject key", e))?;
    Ok(row.and_then(|r| r.get::<Option<String>, _>(0)))
}

/// The ids of the live keys of these pseudonyms (what a forget will destroy).
pub async fn live_ids(pool: &PgPool, pseudonyms: &[String]) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(
        "SELECT key_id FROM audit_subject_keys
         WHERE pseudonym = ANY($1) AND wrapped_key IS NOT NULL ORDER BY key_id",
    )
    .bind(pseudonyms)
    .fetch_all(pool)
    .await
    .map_err(|e| StoreError::new("read subject keys", e))?;
    Ok(rows.iter().filter_map(|r| r.get(0)).collect())
}

/// Destroys the keys of these pseudonyms and marks them forgotten (a subject without a key yet
/// gets the mark too). Returns how many keys were destroyed. Idempotent.
pub async fn forget(pool: &PgPool, pseudonyms: &[String]) -> Result<u64, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| StoreError::new("forget a subject", e))?;
    let destroyed = sqlx::query(
        "UPDATE audit_subject_keys SET wrapped_key = NULL, forgotten_at = now()
         WHERE pseudonym = ANY($1) AND wrapped_key IS NOT NULL",
    )
    .bind(pseudonyms)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::new("forget a subject", e))?
    .rows_affected();
    sqlx::query(
        "INSERT INTO audit_subject_keys (pseudonym, key_id, wrapped_key, forgotten_at)
         SELECT p, NULL, NULL, now() FROM unnest($1::text[]) AS p
         ON CONFLICT (pseudonym) DO NOTHING",
    )
    .bind(pseudonyms)
    .execute(&mut *tx)
    .await
    .map_err(|e| StoreError::new("forget a subject", e))?;
    tx.commit()
        .await
        .map_err(|e| StoreError::new("forget a subject", e))?;
    // The destroyed keys' old row versions stay in the table file until vacuumed.
    sqlx::query("VACUUM audit_subject_keys")
        .execute(pool)
        .await
        .map_err(|e| StoreError::new("vacuum audit_subject_keys", e))?;
    Ok(destroyed)
}

/// Lets a forgotten subject be keyed again (its old values stay unreadable).
pub async fn readmit(pool: &PgPool, pseudonyms: &[String]) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM audit_subject_keys WHERE pseudonym = ANY($1) AND forgotten_at IS NOT NULL",
    )
    .bind(pseudonyms)
    .execute(pool)
    .await
    .map_err(|e| StoreError::new("re-admit a subject", e))?
    .rows_affected())
}

/// `(subjects keyed, subjects forgotten)`.
pub async fn counts(pool: &PgPool) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE wrapped_key IS NOT NULL),
                count(*) FILTER (WHERE forgotten_at IS NOT NULL)
         FROM audit_subject_keys",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| StoreError::new("count subject keys", e))?;
    Ok((row.get(0), row.get(1)))
}

/// Stored values that name one of `key_ids` (`enc:v1:<id>:`) in `details` or the columns a
/// rule may encrypt.
pub async fn count_values(pool: &PgPool, key_ids: &[String]) -> Result<i64, StoreError> {
    if key_ids.is_empty() {
        return Ok(0);
    }
    let patterns: Vec<String> = key_ids.iter().map(|id| format!("%enc:v1:{id}:%")).collect();
    let row = sqlx::query(
        "SELECT count(*) FROM audit_events
         WHERE details::text LIKE ANY($1) OR actor_id LIKE ANY($1)
            OR resource_id LIKE ANY($1) OR subject LIKE ANY($1)",
    )
    .bind(&patterns)
    .fetch_one(pool)
    .await
    .map_err(|e| StoreError::new("count encrypted values", e))?;
    Ok(row.get(0))
}

/// The newest stored event of `event_type` about `subject` (its `occurred_at`).
pub async fn latest_event_about(
    pool: &PgPool,
    event_type: &str,
    subject: &str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
    let row =
        sqlx::query("SELECT max(occurred_at) FROM audit_events WHERE type = $1 AND subject = $2")
            .bind(event_type)
            .bind(subject)
            .fetch_one(pool)
            .await
            .map_err(|e| StoreError::new("read forget events", e))?;
    Ok(row.get(0))
}

/// When the newest live key of these pseudonyms was made (`None` without one).
pub async fn newest_key_at(
    pool: &PgPool,
    pseudonyms: &[String],
) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
    let row = sqlx::query(
        "SELECT max(created_at) FROM audit_subject_keys
         WHERE pseudonym = ANY($1) AND wrapped_key IS NOT NULL",
    )
    .bind(pseudonyms)
    .fetch_one(pool)
    .await
    .map_err(|e| StoreError::new("read subject keys", e))?;
    Ok(row.get(0))
}

/// Whether any of these pseudonyms is marked forgotten.
pub async fn is_forgotten(pool: &PgPool, pseudonyms: &[String]) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT count(*) FROM audit_subject_keys
         WHERE pseudonym = ANY($1) AND forgotten_at IS NOT NULL",
    )
    .bind(pseudonyms)
    .fetch_one(pool)
    .await
    .map_err(|e| StoreError::new("read subject keys", e))?;
    Ok(row.get::<i64, _>(0) > 0)
}

/// Stored rows per rule named in their marker (`details._privacy.rules`).
pub async fn rule_counts(pool: &PgPool) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT r, count(*) FROM audit_events,
                jsonb_array_elements_text(COALESCE(details->'_privacy'->'rules', '[]'::jsonb)) AS r
         GROUP BY r ORDER BY r",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| StoreError::new("count rows per privacy rule", e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
