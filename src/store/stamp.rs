//! Sealing stamps: what the sink stores with each row besides its columns, so the sealer need
//! not read the row back to hash it.
//!
//! A row's hash (`integrity::encoding`) covers two values PostgreSQL used to fill in from column
//! defaults: `ingested_at` (`now()`, the transaction's start) and `seal_seq`
//! (`nextval('audit_events_seal_seq')`). The sink asks for both in the write transaction, right
//! after it took the seal write lock shared, so they are exactly what the defaults would have
//! given and the sealer's coverage argument is unchanged: every number is drawn under the
//! lock, by the transaction that stores it. With both known before the row is sent, the sink
//! hashes the row as it will be stored and stores the hash in `row_hash`; the sealer reads
//! `(seal_seq, id, occurred_at, row_hash)` through the `seal_seq` index instead of every column.
//!
//! The sealer never takes `row_hash` on trust for more than it can be: a row whose `row_hash`
//! is NULL (stored by another program, or whose `details` this encoder refuses) is read back and
//! hashed as before; `verify` and the sealer's self-check always recompute from the columns,
//! so a `row_hash` that does not match its row is reported as that row having changed.

use chrono::{DateTime, Utc};

use crate::event::Row;
use crate::integrity::encoding::{RowFields, fields_hash, micros};

/// The stamps of one write transaction's rows, in the rows' order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamps {
    /// `now()` of the transaction: what the `ingested_at` default gives every row of it.
    pub ingested_at: DateTime<Utc>,
    /// One `nextval('audit_events_seal_seq')` per row.
    pub seal_seq: Vec<i64>,
    /// Each row's hash as stored with these stamps; `None` when it cannot be encoded (the
    /// sealer then reads that row back and reports what is wrong with it).
    pub row_hash: Vec<Option<[u8; 32]>>,
}

/// Draws the stamps for `rows` in `tx`, which must already hold the seal write lock shared.
pub async fn draw(tx: &mut sqlx::PgConnection, rows: &[&Row]) -> Result<Stamps, sqlx::Error> {
    let n = i32::try_from(rows.len()).unwrap_or(i32::MAX);
    let (ingested_at, seal_seq): (DateTime<Utc>, Vec<i64>) = sqlx::query_as(
        "SELECT now(), array(SELECT nextval('audit_events_seal_seq') FROM generate_series(1, $1))",
    )
    .bind(n)
    .fetch_one(&mut *tx)
    .await?;
    if seal_seq.len() != rows.len() {
        return Err(sqlx::Error::Protocol(format!(
            "asked PostgreSQL for {} seal_seq values and got {}",
            rows.len(),
            seal_seq.len()
        )));
    }
    let row_hash = hashes(rows, micros(ingested_at), &seal_seq);
    Ok(Stamps {
        ingested_at,
        seal_seq,
        row_hash,
    })
}

/// The row hash of each row stored with `ingested_at_us` and its `seal_seq`.
pub fn hashes(rows: &[&Row], ingested_at_us: i64, seal_seq: &[i64]) -> Vec<Option<[u8; 32]>> {
    let mut scratch = Vec::with_capacity(1024);
    rows.iter()
        .zip(seal_seq)
        .map(|(r, &seq)| fields_hash(&fields(r, ingested_at_us, seq), &mut scratch).ok())
        .collect()
}

/// `occurred_at` as PostgreSQL stores it: whole microseconds, rounded down (what `COPY`'s
/// text and the bound value both carry, see `insert`).
pub fn stored_time(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros(t)).unwrap_or(t)
}

/// The columns of `row` as stored with these stamps.
fn fields<'a>(row: &'a Row, ingested_at_us: i64, seal_seq: i64) -> RowFields<'a> {
    RowFields {
        id: &row.id,
        occurred_at_us: micros(row.occurred_at),
        ingested_at_us,
        source: &row.source,
        r#type: &row.r#type,
        subject: row.subject.as_deref(),
        actor_type: &row.actor_type,
        actor_id: &row.actor_id,
        resource_type: row.resource_type.as_deref(),
        resource_id: row.resource_id.as_deref(),
        action: &row.action,
        outcome: &row.outcome,
        reason: row.reason.as_deref(),
        trace_id: row.trace_id.as_deref(),
        details: row.details.as_deref(),
        auth_type: row.auth_type.as_deref(),
        auth_id: row.auth_id.as_deref(),
        seal_seq: Some(seal_seq),
    }
}
