//! The investigators' read path (role `query`): one parameterised statement per page. Values
//! are always bound, never spliced into the SQL text.
//!
//! The shape is chosen for the table's indexes: every filter is an equality on an indexed
//! leading column (`actor_id`, `(resource_type, resource_id)`, `type`, `trace_id`), the window
//! is a range on `occurred_at` (the partition key, so only the window's months are scanned),
//! and the keyset condition is written as `occurred_at <= c AND (occurred_at < c OR id < i)`
//! so the index range starts at the cursor instead of filtering from the newest row.
//! The pool's `plan_cache_mode = force_custom_plan` makes the planner see the actual values,
//! which prunes partitions at plan time and picks the index for them.

use chrono::{DateTime, Utc};
use sqlx::{Execute as _, PgPool, Postgres, QueryBuilder, Row as _};

use super::columns::COLUMNS;

/// What a page matches.
#[derive(Debug, Clone, Default)]
pub struct Search<'a> {
    /// `column = value` conditions. The columns come from a fixed list of the caller (never
    /// from a request), each a column of `audit_events`.
    pub equal: Vec<(&'static str, &'a str)>,
    /// Inclusive lower bound of `occurred_at`.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound of `occurred_at`.
    pub to: Option<DateTime<Utc>>,
    /// Where the previous page ended, `(occurred_at, id)`: only rows after it in page order.
    pub after: Option<(DateTime<Utc>, &'a str)>,
}

/// A page of rows, each the JSON text of `row_to_json` (every column, in table order).
#[derive(Debug, Default)]
pub struct RowsPage {
    pub rows: Vec<String>,
    /// Set when more rows match: the last row's `(occurred_at, id)`, where the next page starts.
    pub next: Option<(DateTime<Utc>, String)>,
}

/// `SELECT … WHERE <filters> [AND keyset] ORDER BY occurred_at DESC, id DESC LIMIT n`.
pub fn select<'a>(search: &Search<'a>, limit: usize) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new(
        "SELECT row_to_json(e)::text AS row, e.occurred_at, e.id FROM audit_events e WHERE TRUE",
    );
    for &(column, value) in &search.equal {
        debug_assert!(
            COLUMNS.iter().any(|c| c.name == column),
            "{column} is not a column"
        );
        q.push(format_args!(" AND e.{column} = ")).push_bind(value);
    }
    if let Some(t) = search.from {
        q.push(" AND e.occurred_at >= ").push_bind(t);
    }
    if let Some(t) = search.to {
        q.push(" AND e.occurred_at < ").push_bind(t);
    }
    if let Some((occurred_at, id)) = search.after {
        q.push(" AND e.occurred_at <= ")
            .push_bind(occurred_at)
            .push(" AND (e.occurred_at < ")
            .push_bind(occurred_at)
            .push(" OR e.id < ")
            .push_bind(id)
            .push(")");
    }
    q.push(" ORDER BY e.occurred_at DESC, e.id DESC LIMIT ")
        .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    q
}

/// Reads one page: up to `limit` rows of `search`, and whether more follow. `pool` is the
/// query role's read-only pool ([`super::Store::connect_read_only`]): each statement is its
/// own read-only transaction under `query.statement_timeout`.
pub async fn page(
    pool: &PgPool,
    search: &Search<'_>,
    limit: usize,
) -> Result<RowsPage, sqlx::Error> {
    // One row more than asked tells whether another page exists without an empty last page.
    let rows = select(search, limit + 1).build().fetch_all(pool).await?;
    let mut page = RowsPage::default();
    for (i, row) in rows.iter().enumerate() {
        if i == limit {
            let prev = &rows[i - 1];
            page.next = Some((
                prev.try_get::<DateTime<Utc>, _>("occurred_at")?,
                prev.try_get("id")?,
            ));
            break;
        }
        page.rows.push(row.try_get("row")?);
    }
    Ok(page)
}

/// Every row with this `id` (one per `occurred_at`), newest first, as `row_to_json` text.
pub async fn by_id(pool: &PgPool, id: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT row_to_json(e)::text FROM audit_events e WHERE e.id = $1 \
         ORDER BY e.occurred_at DESC",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// `EXPLAIN (FORMAT JSON)` of the page statement, planned as [`page`] plans it.
pub async fn explain(
    pool: &PgPool,
    search: &Search<'_>,
    limit: usize,
) -> Result<serde_json::Value, sqlx::Error> {
    // The same statement and bound values as `page`, behind an EXPLAIN prefix.
    let mut q = select(search, limit + 1);
    let sql = format!("EXPLAIN (FORMAT JSON) {}", q.sql());
    let args = q.build().take_arguments().map_err(sqlx::Error::Encode)?;
    match args {
        Some(args) => sqlx::query_scalar_with(&sql, args).fetch_one(pool).await,
        None => sqlx::query_scalar(&sql).fetch_one(pool).await,
    }
}
