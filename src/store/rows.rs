//! Whole `audit_events` rows ([`StoredRow`], every column of the list) for the sealer,
//! `verify` and the query role's integrity check, streamed in `seal_seq` order where many are
//! read.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use sqlx::{PgConnection, PgExecutor, PgPool};

use super::columns::{self, StoredRow};

/// Rows numbered in `(after, upto]`, by `seal_seq`.
static NUMBERED_IN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM audit_events WHERE seal_seq > $1 AND seal_seq <= $2 ORDER BY seal_seq",
        columns::select_list()
    )
});

/// Every numbered row with `occurred_at` in `[$1, $2)` (either bound NULL: open), by
/// `seal_seq`.
static NUMBERED_BETWEEN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM audit_events WHERE seal_seq IS NOT NULL \
           AND ($1::timestamptz IS NULL OR occurred_at >= $1) \
           AND ($2::timestamptz IS NULL OR occurred_at < $2) ORDER BY seal_seq",
        columns::select_list()
    )
});

/// The row with key `(id, occurred_at)`.
static BY_KEY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {} FROM audit_events WHERE id = $1 AND occurred_at = $2",
        columns::select_list()
    )
});

/// The rows numbered in `(after, upto]`, in `seal_seq` order (streamed: the caller keeps what
/// it needs of each row, never a window of rows).
pub fn numbered_in<'e>(
    executor: impl PgExecutor<'e> + 'e,
    after: i64,
    upto: i64,
) -> BoxStream<'e, Result<StoredRow, sqlx::Error>> {
    sqlx::query_as(&NUMBERED_IN)
        .bind(after)
        .bind(upto)
        .fetch(executor)
}

/// Every numbered row with `occurred_at` in `[from, to)` (`None`: open), in `seal_seq` order
/// (streamed).
pub fn numbered_between(
    conn: &mut PgConnection,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> BoxStream<'_, Result<StoredRow, sqlx::Error>> {
    sqlx::query_as(&NUMBERED_BETWEEN)
        .bind(from)
        .bind(to)
        .fetch(conn)
}

/// The row with key `(id, occurred_at)`, if stored.
pub async fn by_key(
    pool: &PgPool,
    id: &str,
    occurred_at: DateTime<Utc>,
) -> Result<Option<StoredRow>, sqlx::Error> {
    sqlx::query_as(&BY_KEY)
        .bind(id)
        .bind(occurred_at)
        .fetch_optional(pool)
        .await
}

/// A scan of whole rows over a window of `occurred_at` written into its text (what `verify`
/// reads in one pass over the table); it owns the text, [`RowScan::fetch`] streams it.
pub struct RowScan {
    sql: String,
}

impl RowScan {
    /// Every numbered row in `[from, to)` (`None`: open), in `seal_seq` order.
    pub fn numbered(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> RowScan {
        RowScan {
            sql: format!(
                "SELECT {} FROM audit_events WHERE seal_seq IS NOT NULL{} ORDER BY seal_seq",
                columns::select_list(),
                window(from, to)
            ),
        }
    }

    /// Every row without `seal_seq` (stored before sealing) in `[from, to)`.
    pub fn unnumbered(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> RowScan {
        RowScan {
            sql: format!(
                "SELECT {} FROM audit_events WHERE seal_seq IS NULL{}",
                columns::select_list(),
                window(from, to)
            ),
        }
    }

    pub fn fetch<'c>(
        &'c self,
        conn: &'c mut PgConnection,
    ) -> BoxStream<'c, Result<StoredRow, sqlx::Error>> {
        sqlx::query_as(&self.sql).fetch(conn)
    }
}

/// ` AND occurred_at >= '…' AND occurred_at < '…'`: the bounds are times this process
/// formats (RFC 3339), never text from outside. In the text, the planner prunes partitions
/// for them.
fn window(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    let mut s = String::new();
    if let Some(f) = from {
        s.push_str(&format!(" AND occurred_at >= '{}'", f.to_rfc3339()));
    }
    if let Some(t) = to {
        s.push_str(&format!(" AND occurred_at < '{}'", t.to_rfc3339()));
    }
    s
}

/// `(count, newest ingested_at in µs)` of the rows without `seal_seq`: the legacy boundary the
/// chain's first format-2 seal signs.
pub async fn unnumbered_summary(tx: &mut PgConnection) -> Result<(i64, Option<i64>), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), (extract(epoch FROM max(ingested_at)) * 1000000)::int8
           FROM audit_events WHERE seal_seq IS NULL",
    )
    .fetch_one(tx)
    .await
}

/// How many rows lack `seal_seq`, counting no further than `limit`.
pub async fn count_unnumbered_upto(pool: &PgPool, limit: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM audit_events WHERE seal_seq IS NULL LIMIT $1) t",
    )
    .bind(limit)
    .fetch_one(pool)
    .await
}

/// The database's clock (`clock_timestamp()`), which wrote every `ingested_at`.
pub async fn database_time(pool: &PgPool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    /// A row the sink stores reads back whole, every column by its name in the list.
    #[tokio::test]
    async fn a_stored_row_reads_back_whole() {
        let db = crate::store::scratch::ScratchDb::new().await;
        let at = Utc.timestamp_micros(1_767_225_600_123_456).unwrap();
        let row = crate::event::Row {
            id: "evt-1".into(),
            occurred_at: at,
            source: "/registry".into(),
            r#type: "t".into(),
            subject: Some("s".into()),
            actor_type: "user".into(),
            actor_id: "u-42".into(),
            resource_type: Some("beneficiary".into()),
            resource_id: None,
            action: "update".into(),
            outcome: "success".into(),
            reason: None,
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            details: Some(r#"{"b":1,"a":"é"}"#.into()),
            auth_type: Some("api_key".into()),
            auth_id: Some("svc".into()),
        };
        db.store
            .insert(std::slice::from_ref(&row))
            .await
            .expect("insert");
        let stored = by_key(db.store.pool(), "evt-1", at)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(
            (
                stored.id.as_str(),
                stored.occurred_at,
                stored.r#type.as_str()
            ),
            ("evt-1", at, "t")
        );
        assert_eq!(stored.subject, row.subject);
        assert_eq!(stored.resource_id, None);
        assert_eq!(stored.details.as_deref(), Some(r#"{"a": "é", "b": 1}"#));
        assert_eq!(
            (stored.auth_type, stored.auth_id),
            (row.auth_type, row.auth_id)
        );
        assert_eq!(stored.seal_seq, Some(1));
    }
}
