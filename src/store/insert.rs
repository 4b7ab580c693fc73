//! Batched, idempotent inserts: no event ever becomes a second row for its key
//! `(id, occurred_at)`, whether it is redelivered (a Kafka replay, a retry after a lost commit
//! acknowledgement) or POSTed twice. Duplicates inside one batch collapse too.
//!
//! Three ways to ship a batch, each one round trip of data and atomic:
//! - [`InsertMethod::CopyFirst`] (the default): `COPY` (text format) straight into
//!   `audit_events`, PostgreSQL's bulk path. `COPY` cannot skip conflicts: a batch holding a
//!   stored key fails as a whole (`23505`, nothing written) and is written again with `UNNEST`.
//!   Redeliveries are rare, so nearly every batch takes the fast path;
//! - [`InsertMethod::Unnest`]: one `INSERT … SELECT FROM UNNEST($1::text[], …) ON CONFLICT DO
//!   NOTHING` with 16 array parameters;
//! - [`InsertMethod::Copy`]: `COPY` into a per-session temporary table, then `INSERT … SELECT
//!   … ON CONFLICT DO NOTHING` from it, in one transaction.
//!
//! Every write runs in a transaction that first takes the seal write lock shared
//! (`pg_advisory_xact_lock_shared`, see `integrity::sealer`), so the sealer can find a point
//! where no write is in flight and no committed row can fall between two seals. With a writer
//! key ([`Store::with_attestor`]) the same statement reads the transaction's `now()` and the
//! sequence's position, and the transaction ends by storing its signed attestation (see
//! `integrity::attest`): one more statement per transaction, no more per row.
//!
//! `docs/benchmark-history.md` ("PostgreSQL sink") has the measurements that chose the default.

use std::fmt::Write as _;
use std::sync::LazyLock;

use chrono::{DateTime, SubsecRound as _, Utc};
use sqlx::Connection as _;

use super::attestations::{self, RowDigest, WriteStamp};
use super::columns::{self, Sent};
use super::locks::{self, AdvisoryLock};
use super::{Month, Operation, Store, StoreError};
use crate::event::Row;

/// How a batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InsertMethod {
    Unnest,
    Copy,
    /// `COPY` straight into `audit_events` (PostgreSQL's bulk path: no executor per row,
    /// buffered heap inserts). `COPY` cannot skip conflicts, so a group holding an already
    /// stored key (a redelivery) fails as a whole with `23505` and is written again with
    /// [`InsertMethod::Unnest`], which skips it.
    #[default]
    CopyFirst,
}

/// What one batch insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Inserted {
    /// New rows.
    pub rows: u64,
    /// Rows whose key already existed (or repeated within the batch).
    pub duplicates: u64,
}

/// `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING`: one array parameter per sent
/// column, bound by [`unnest_query`].
static UNNEST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO audit_events ({columns}) SELECT {values} FROM UNNEST({params}) \
         AS t({columns}) ON CONFLICT DO NOTHING",
        columns = columns::sent_list(),
        values = columns::sent_write_list(),
        params = columns::sent_array_params(),
    )
});

/// The per-session load table of [`InsertMethod::Copy`].
static LOAD_TABLE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS audit_events_load ({}) ON COMMIT DELETE ROWS",
        columns::sent_wire_definitions()
    )
});

/// Moves the load table's rows into `audit_events`, skipping stored keys.
static FROM_LOAD_TABLE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO audit_events ({}) SELECT {} FROM audit_events_load ON CONFLICT DO NOTHING",
        columns::sent_list(),
        columns::sent_write_list()
    )
});

/// Begins a write transaction of `audit_events`: every one holds the seal write lock shared
/// until it ends, which is what lets the sealer find a gap-free watermark (see
/// `integrity::sealer`). With `stamp`, the same statement also returns the [`WriteStamp`] an
/// attestation signs.
async fn begin_write(
    conn: &mut sqlx::PgConnection,
    stamp: bool,
) -> Result<(sqlx::Transaction<'_, sqlx::Postgres>, Option<WriteStamp>), sqlx::Error> {
    let mut tx = conn.begin().await?;
    if !stamp {
        locks::share_for_transaction(&mut tx, AdvisoryLock::SealWrite).await?;
        return Ok((tx, None));
    }
    let stamp = attestations::stamp(&mut tx).await?;
    Ok((tx, Some(stamp)))
}

/// Batches smaller than this are written by one statement even when parallelism allows more.
const MIN_PARALLEL_CHUNK: usize = 500;

/// Splits `rows` into `n` groups by a hash of `id`: every copy of one event lands in the same
/// group, so concurrent statements never wait on each other's keys (no deadlock).
fn split_by_id(rows: &[Row], n: usize) -> Vec<Vec<&Row>> {
    use std::hash::{Hash, Hasher};
    let mut groups: Vec<Vec<&Row>> = (0..n)
        .map(|_| Vec::with_capacity(rows.len() / n + 1))
        .collect();
    for r in rows {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        r.id.hash(&mut h);
        let i = usize::try_from(h.finish() % n as u64).unwrap_or(0);
        groups[i].push(r);
    }
    groups.retain(|g| !g.is_empty());
    // Key order: consecutive rows touch neighbouring primary-key pages.
    for g in &mut groups {
        g.sort_unstable_by(|a, b| (&a.id, a.occurred_at).cmp(&(&b.id, b.occurred_at)));
    }
    groups
}

impl Store {
    /// Makes sure the partitions of the rows' months exist, then inserts the rows: one
    /// statement per group of [`split_by_id`], the groups concurrently on separate connections
    /// (PostgreSQL spends one core per statement; index maintenance is the bottleneck). Each
    /// statement is atomic; on error some groups may be stored and others not, which a retry of
    /// the whole batch makes good (inserts are idempotent).
    pub async fn insert(&self, rows: &[Row]) -> Result<Inserted, StoreError> {
        if rows.is_empty() {
            return Ok(Inserted::default());
        }
        let months: std::collections::BTreeSet<Month> =
            rows.iter().map(|r| Month::of(r.occurred_at)).collect();
        let r = match self.ensure_months(months).await {
            Ok(_) => {
                let n = self.parallelism.min(rows.len() / MIN_PARALLEL_CHUNK).max(1);
                let groups = split_by_id(rows, n);
                let writes = groups.iter().map(|g| async move {
                    // Before the transaction: no lock is held while rows are hashed.
                    let digests = self.attestor.as_ref().map(|a| a.digests(g));
                    let d = digests.as_deref();
                    match self.method {
                        InsertMethod::Unnest => self.insert_unnest(g, d).await,
                        InsertMethod::Copy => self.insert_copy(g, d).await,
                        InsertMethod::CopyFirst => self.insert_copy_first(g, d).await,
                    }
                });
                futures_util::future::try_join_all(writes)
                    .await
                    .map(|done| {
                        done.into_iter().fold(Inserted::default(), |a, b| Inserted {
                            rows: a.rows + b.rows,
                            duplicates: a.duplicates + b.duplicates,
                        })
                    })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &r
            && matches!(e.code().as_deref(), Some("23514" | "42P01"))
        {
            // A partition was dropped (or never existed) behind the cache's back.
            self.forget_partitions();
        }
        self.observe_as(Operation::Write, &r);
        r
    }

    /// Inserts one neutral row of `like`'s month and rolls it back: does the table accept any
    /// row at all? When every row of a batch fails with a data error, this tells a table that
    /// rejects rows of this shape (a column added as NOT NULL, a type changed, a trigger) from
    /// rows that are really bad. Nothing is stored either way.
    pub async fn probe_insert(&self, like: &Row) -> Result<(), StoreError> {
        let probe = Row {
            id: "audit-manager-insert-probe".into(),
            source: "audit-manager".into(),
            r#type: "audit-manager.probe".into(),
            subject: None,
            actor_type: "system".into(),
            actor_id: "audit-manager".into(),
            resource_type: None,
            resource_id: None,
            action: "probe".into(),
            outcome: "success".into(),
            reason: None,
            trace_id: None,
            details: None,
            auth_type: None,
            auth_id: None,
            ..like.clone()
        };
        let err = |e| StoreError::new("inserting a probe row (rolled back)", e);
        let mut conn = self.pool.acquire().await.map_err(err)?;
        let (mut tx, _) = begin_write(&mut conn, false).await.map_err(err)?;
        unnest_query(&[&probe])
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.rollback().await.map_err(err)
    }

    /// Stores the attestation of a transaction that stored `stored` rows (nothing when there is
    /// no writer key or nothing was stored).
    async fn attest(
        &self,
        tx: &mut sqlx::PgConnection,
        stamp: Option<WriteStamp>,
        digests: Option<&[RowDigest]>,
        stored: u64,
    ) -> Result<(), sqlx::Error> {
        match (&self.attestor, stamp, digests) {
            (Some(a), Some(stamp), Some(d)) if stored > 0 => {
                attestations::record(tx, &stamp, d.len(), a.sign(&stamp, d)).await
            }
            _ => Ok(()),
        }
    }

    async fn insert_unnest(
        &self,
        rows: &[&Row],
        digests: Option<&[RowDigest]>,
    ) -> Result<Inserted, StoreError> {
        let result = async {
            let mut conn = self.pool.acquire().await?;
            let (mut tx, stamp) = begin_write(&mut conn, digests.is_some()).await?;
            let r = unnest_query(rows).execute(&mut *tx).await?;
            self.attest(&mut tx, stamp, digests, r.rows_affected())
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(r)
        }
        .await
        .map_err(|e| StoreError::new(format!("inserting {} rows", rows.len()), e))?;
        Ok(counted(rows.len(), result.rows_affected()))
    }

    async fn insert_copy(
        &self,
        rows: &[&Row],
        digests: Option<&[RowDigest]>,
    ) -> Result<Inserted, StoreError> {
        let what = || format!("copying {} rows", rows.len());
        let err = |e| StoreError::new(what(), e);
        let mut conn = self.pool.acquire().await.map_err(err)?;
        let (mut tx, stamp) = begin_write(&mut conn, digests.is_some())
            .await
            .map_err(err)?;
        sqlx::query(&LOAD_TABLE_SQL)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        copy_in(&mut tx, "audit_events_load", rows)
            .await
            .map_err(err)?;
        let result = sqlx::query(&FROM_LOAD_TABLE_SQL)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        self.attest(&mut tx, stamp, digests, result.rows_affected())
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(counted(rows.len(), result.rows_affected()))
    }

    /// `COPY` into `audit_events` itself; a group holding a stored key (`23505`, nothing
    /// written) goes again through [`Self::insert_unnest`], which skips that key.
    async fn insert_copy_first(
        &self,
        rows: &[&Row],
        digests: Option<&[RowDigest]>,
    ) -> Result<Inserted, StoreError> {
        let copied = async {
            let mut conn = self.pool.acquire().await?;
            let (mut tx, stamp) = begin_write(&mut conn, digests.is_some()).await?;
            let n = copy_in(&mut tx, "audit_events", rows).await?;
            self.attest(&mut tx, stamp, digests, n).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(n)
        }
        .await
        .map_err(|e| StoreError::new(format!("copying {} rows", rows.len()), e));
        match copied {
            Ok(n) => Ok(counted(rows.len(), n)),
            Err(e) if e.code().as_deref() == Some("23505") => {
                self.insert_unnest(rows, digests).await
            }
            Err(e) => Err(e),
        }
    }
}

/// The `UNNEST` insert of `rows`, bound: one array per sent column, in the list's order.
fn unnest_query<'q>(
    rows: &[&'q Row],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut q = sqlx::query(&UNNEST_SQL);
    for (_, sent) in columns::sent() {
        q = match sent {
            Sent::Text(f) => q.bind(rows.iter().map(|r| f(r)).collect::<Vec<_>>()),
            // To the microsecond PostgreSQL keeps, truncated as `COPY`'s text is: bound as is,
            // a time before 2000 with a sub-microsecond part would be rounded the other way.
            Sent::Time(f) => q.bind(
                rows.iter()
                    .map(|r| f(r).trunc_subsecs(6))
                    .collect::<Vec<_>>(),
            ),
        };
    }
    q
}

/// Streams `rows` into `table` with `COPY … FROM STDIN` (text format); returns the row count.
async fn copy_in(
    conn: &mut sqlx::PgConnection,
    table: &str,
    rows: &[&Row],
) -> Result<u64, sqlx::Error> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({}) FROM STDIN",
            columns::sent_list()
        ))
        .await?;
    copy.send(copy_text(rows).into_bytes()).await?;
    copy.finish().await
}

fn counted(batch: usize, inserted: u64) -> Inserted {
    Inserted {
        rows: inserted,
        duplicates: (batch as u64).saturating_sub(inserted),
    }
}

/// The rows in `COPY … FROM STDIN` text format: tab-separated, `\N` for NULL, backslash
/// escapes for backslash, tab, newline and carriage return.
pub fn copy_text(rows: &[&Row]) -> String {
    let mut out = String::with_capacity(rows.len() * 512);
    for r in rows {
        for (i, (_, sent)) in columns::sent().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            match sent {
                Sent::Time(f) => write_time(&mut out, f(r)),
                Sent::Text(f) => match f(r) {
                    None => out.push_str("\\N"),
                    Some(s) => escape_into(&mut out, s),
                },
            }
        }
        out.push('\n');
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS.ffffff+00`, what `COPY` reads for a `timestamptz` in UTC, written
/// digit by digit: chrono's `format` parses its pattern again for every value, and this runs
/// twice per row on the writers' hot path. Years outside 0..=9999 (which `Row`s never hold
/// after validation) take chrono's path, which writes them as PostgreSQL reads them.
fn write_time(out: &mut String, t: DateTime<Utc>) {
    use chrono::{Datelike as _, Timelike as _};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Writing to a String cannot fail.
        let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f+00"));
        return;
    }
    // Truncated to the microsecond, as `%.6f` does (and PostgreSQL keeps no more).
    let micros = (t.nanosecond() % 1_000_000_000) / 1000;
    let mut buf = *b"0000-00-00 00:00:00.000000+00";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.unsigned_abs());
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    // A leap second (nanosecond >= 1e9) is written as second 60, as chrono's `%S` does.
    put(
        17,
        2,
        t.second() + u32::from(t.nanosecond() >= 1_000_000_000),
    );
    put(20, 6, micros);
    // Only ASCII digits were written into an ASCII template.
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// Appends `s` with `COPY`'s text escapes: runs without a character to escape are copied whole.
fn escape_into(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(i) = rest
        .bytes()
        .position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            _ => "\\r",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_are_written_as_chrono_formats_them() {
        let chrono_way = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string();
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .unwrap()
            .and_utc();
        let times = [
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            Utc.timestamp_opt(1_765_000_000, 999_999_999).unwrap(),
            Utc.timestamp_opt(946_684_799, 123_456_789).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(12, 6, 7, 8, 9, 10).unwrap(),
            Utc.with_ymd_and_hms(-44, 3, 15, 12, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            leap,
        ];
        for t in times {
            let mut out = String::new();
            write_time(&mut out, t);
            assert_eq!(out, chrono_way(t), "{t:?}");
        }
    }

    #[test]
    fn escaping_copies_runs_and_keeps_multibyte_characters() {
        let mut out = String::new();
        escape_into(&mut out, "é\\ü\tx\n\r€");
        assert_eq!(out, "é\\\\ü\\tx\\n\\r€");
        out.clear();
        escape_into(&mut out, "plain");
        assert_eq!(out, "plain");
    }

    #[test]
    fn copy_text_escapes_and_marks_nulls() {
        let row = Row {
            id: "a\tb".into(),
            occurred_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            source: "s\\x".into(),
            r#type: "t".into(),
            subject: None,
            actor_type: "user".into(),
            actor_id: "u\n1".into(),
            resource_type: None,
            resource_id: None,
            action: "a".into(),
            outcome: "success".into(),
            reason: Some("r\r".into()),
            trace_id: None,
            details: Some(r#"{"k":"v\\n"}"#.into()),
            auth_type: Some("api_key".into()),
            auth_id: None,
        };
        assert_eq!(
            copy_text(&[&row]),
            "a\\tb\t2026-01-02 03:04:05.000000+00\ts\\\\x\tt\t\\N\tuser\tu\\n1\t\\N\t\\N\ta\t\
             success\tr\\r\t\\N\t{\"k\":\"v\\\\\\\\n\"}\tapi_key\t\\N\n",
            "JSON's own backslash is doubled again for COPY"
        );
    }
}
