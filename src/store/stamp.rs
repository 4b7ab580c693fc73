//! Sealing stamps: what the sink stores with each row besides its columns, so the sealer need
//! not read the row back to hash it.
//!
//! A row's hash (`integrity::encoding`) covers two values PostgreSQL used to fill in from column
//! defaults: `ingested_at` (`now()`, the transaction's start) and `seal_seq`
//! (`nextval('audit_events_seal_seq')`). The sink asks for both in the write transaction, right
//! after it took the seal write lock shared, so they are exactly what the defaults would have
//! given and the sealer's coverage argument is unchanged: every number is drawn under the
//! lock, by the transaction that stores it. (`ingested_at` is then still left to its default:
//! `now()` is the same all through a transaction.) With both known before the row is sent, the
//! sink hashes the row as it will be stored and stores the hash in `row_hash`; the sealer reads
//! `(seal_seq, id, occurred_at, row_hash)` through the `seal_seq` index instead of every column.
//!
//! The sealer never takes `row_hash` on trust for more than it can be: a row whose `row_hash`
//! is NULL (stored by another program, or whose `details` this encoder refuses) is read back and
//! hashed as before; `verify` and the sealer's self-check always recompute from the columns,
//! so a `row_hash` that does not match its row is reported as that row having changed.

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};

use crate::event::Row;
use crate::integrity::encoding::{
    ROW_DOMAIN, RowFields, encode_into, ingested_at_value_offset, micros,
};

/// The stamps of one write transaction's rows, in the rows' order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamps {
    /// One `nextval('audit_events_seal_seq')` per row.
    pub seal_seq: Vec<i64>,
    /// Each row's hash as stored with these stamps; `None` when it cannot be encoded (the
    /// sealer then reads that row back and reports what is wrong with it).
    pub row_hash: Vec<Option<[u8; 32]>>,
}

/// One row's place in [`Encoded::bytes`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    /// Where `ingested_at`'s value starts; `seal_seq`'s is the span's last 8 bytes.
    ingested_at: usize,
    end: usize,
}

/// Rows in their canonical encoding (`ROW_DOMAIN` first), made before their stamps are known,
/// with room for the stamps. Canonicalising `details` is most of a row hash's cost and needs no
/// stamp, so it is done before the write transaction, and for a batch's groups in parallel
/// ([`encode_groups`]); once the stamps are drawn, each row costs two 8-byte writes and a
/// SHA-256.
#[derive(Debug, Default)]
pub struct Encoded {
    bytes: Vec<u8>,
    /// `None` for a row that cannot be encoded.
    spans: Vec<Option<Span>>,
}

impl Encoded {
    /// Encodes `rows` with both stamps zero.
    pub fn new(rows: &[&Row]) -> Encoded {
        let mut e = Encoded {
            bytes: Vec::with_capacity(rows.len() * 512),
            spans: Vec::with_capacity(rows.len()),
        };
        for r in rows {
            let start = e.bytes.len();
            e.bytes.extend_from_slice(ROW_DOMAIN);
            match encode_into(&mut e.bytes, &fields(r, 0, 0)) {
                Ok(()) => e.spans.push(Some(Span {
                    start,
                    ingested_at: start + ingested_at_value_offset(&r.id),
                    end: e.bytes.len(),
                })),
                Err(_) => {
                    e.bytes.truncate(start);
                    e.spans.push(None);
                }
            }
        }
        e
    }

    /// Each row's hash with `ingested_at_us` and its `seal_seq`.
    pub fn hashes(&mut self, ingested_at_us: i64, seal_seq: &[i64]) -> Vec<Option<[u8; 32]>> {
        self.spans
            .iter()
            .zip(seal_seq)
            .map(|(span, &seq)| {
                let span = (*span)?;
                let row = &mut self.bytes[span.start..span.end];
                let at = span.ingested_at - span.start;
                row[at..at + 8].copy_from_slice(&ingested_at_us.to_be_bytes());
                let len = row.len();
                row[len - 8..].copy_from_slice(&seq.to_be_bytes());
                Some(Sha256::digest(row).into())
            })
            .collect()
    }
}

/// [`Encoded::new`] of every group, the groups on threads of their own. On a multi-threaded
/// runtime the calling worker hands its other tasks over while it waits
/// (`block_in_place`).
pub fn encode_groups(groups: &[Vec<&Row>]) -> Vec<Encoded> {
    let work = || {
        if groups.len() < 2 {
            return groups.iter().map(|g| Encoded::new(g)).collect();
        }
        std::thread::scope(|s| {
            let threads: Vec<_> = groups
                .iter()
                .map(|g| s.spawn(move || Encoded::new(g)))
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Draws the stamps for the rows of `encoded` in `tx`, which must already hold the seal write
/// lock shared, and hashes the rows with them.
pub async fn draw(
    tx: &mut sqlx::PgConnection,
    encoded: &mut Encoded,
) -> Result<Stamps, sqlx::Error> {
    let rows = encoded.spans.len();
    let n = i32::try_from(rows).unwrap_or(i32::MAX);
    let (ingested_at, seal_seq): (DateTime<Utc>, Vec<i64>) = sqlx::query_as(
        "SELECT now(), array(SELECT nextval('audit_events_seal_seq') FROM generate_series(1, $1))",
    )
    .bind(n)
    .fetch_one(&mut *tx)
    .await?;
    if seal_seq.len() != rows {
        return Err(sqlx::Error::Protocol(format!(
            "asked PostgreSQL for {rows} seal_seq values and got {}",
            seal_seq.len()
        )));
    }
    // `ingested_at` is left to its column default, `now()`: the same value in this
    // transaction.
    let row_hash = encoded.hashes(micros(ingested_at), &seal_seq);
    Ok(Stamps { seal_seq, row_hash })
}

/// The row hash of each row stored with `ingested_at_us` and its `seal_seq`.
pub fn hashes(rows: &[&Row], ingested_at_us: i64, seal_seq: &[i64]) -> Vec<Option<[u8; 32]>> {
    Encoded::new(rows).hashes(ingested_at_us, seal_seq)
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
