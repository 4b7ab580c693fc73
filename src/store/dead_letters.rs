//! `audit_dead_letters`: the records the direct writer (`forward.target: postgres`) can never
//! store, kept with the reason where an operator can see them (`/health`, the table itself) and
//! replay them once fixed (`audit-manager dlq replay`). The Kafka-less counterpart of the DLQ
//! topic.
//!
//! A dead letter holds the original spooled bytes (`payload`), the reason kind (`reason`, the
//! label of `audit_dead_letters_total`) and its message (`detail`). `digest` (SHA-256 of the
//! payload) is unique: the same record dead-lettered again (a crash between the insert and the
//! spool's delete, a failed replay) stays one dead letter.

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use super::{Store, StoreError};

/// The table, created with the schema ([`Store::prepare`]).
pub const DDL: &str = "CREATE TABLE IF NOT EXISTS audit_dead_letters (
        id         bigserial   PRIMARY KEY,
        payload    bytea       NOT NULL,
        reason     text        NOT NULL,
        detail     text        NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        event_id   text,
        digest     bytea       NOT NULL UNIQUE
    )";

/// A record to dead-letter.
#[derive(Debug, Clone, Copy)]
pub struct NewDeadLetter<'a> {
    pub payload: &'a [u8],
    /// The reason kind (`unstorable`, `schema-invalid`, ...).
    pub reason: &'a str,
    pub detail: &'a str,
    /// The event's `id`, when known (the spool keeps it beside the bytes).
    pub event_id: Option<&'a str>,
}

/// A stored dead letter.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub payload: Vec<u8>,
    pub reason: String,
    pub detail: String,
    pub created_at: DateTime<Utc>,
    pub event_id: Option<String>,
}

/// SHA-256 of `payload`: the dead letter's identity.
pub fn digest(payload: &[u8]) -> Vec<u8> {
    Sha256::digest(payload).to_vec()
}

impl Store {
    /// Inserts `letters` in one transaction; a letter already present (same payload) is kept
    /// as it is. Returns how many are new.
    pub async fn insert_dead_letters(
        &self,
        letters: &[NewDeadLetter<'_>],
    ) -> Result<u64, StoreError> {
        if letters.is_empty() {
            return Ok(0);
        }
        let payloads: Vec<&[u8]> = letters.iter().map(|l| l.payload).collect();
        let digests: Vec<Vec<u8>> = letters.iter().map(|l| digest(l.payload)).collect();
        let reasons: Vec<&str> = letters.iter().map(|l| l.reason).collect();
        let details: Vec<&str> = letters.iter().map(|l| l.detail).collect();
        let ids: Vec<Option<&str>> = letters.iter().map(|l| l.event_id).collect();
        let r = sqlx::query(
            "INSERT INTO audit_dead_letters (payload, reason, detail, event_id, digest)
             SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::bytea[])
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(&payloads)
        .bind(&reasons)
        .bind(&details)
        .bind(&ids)
        .bind(&digests)
        .execute(self.pool())
        .await
        .map(|done| done.rows_affected())
        .map_err(|e| StoreError::new(format!("inserting {} dead letters", letters.len()), e));
        self.observe_as(super::Operation::Write, &r);
        r
    }

    /// How many dead letters wait in `audit_dead_letters`.
    pub async fn count_dead_letters(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT count(*) FROM audit_dead_letters")
            .fetch_one(self.pool())
            .await
            .map_err(|e| StoreError::new("counting dead letters", e))
    }

    /// The oldest `limit` dead letters numbered above `after`, oldest first.
    pub async fn dead_letters_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        sqlx::query_as(
            "SELECT id, payload, reason, detail, created_at, event_id FROM audit_dead_letters
              WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(|e| StoreError::new("reading dead letters", e))
    }

    /// Deletes the dead letters `ids` (replayed: their rows are stored).
    pub async fn delete_dead_letters(&self, ids: &[i64]) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM audit_dead_letters WHERE id = ANY($1)")
            .bind(ids)
            .execute(self.pool())
            .await
            .map(|done| done.rows_affected())
            .map_err(|e| StoreError::new("deleting replayed dead letters", e))
    }

    /// Records why dead letter `id` was refused again.
    pub async fn update_dead_letter(
        &self,
        id: i64,
        reason: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE audit_dead_letters SET reason = $2, detail = $3 WHERE id = $1")
            .bind(id)
            .bind(reason)
            .bind(detail)
            .execute(self.pool())
            .await
            .map(|_| ())
            .map_err(|e| StoreError::new("updating a dead letter's reason", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_payloads_sha256() {
        assert_eq!(
            hex::encode(digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
