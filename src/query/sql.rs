//! One statement per page ([`crate::store::query`] holds it): a [`Filter`] and a [`Cursor`]
//! become the store's search, its rows a [`Page`].

use sqlx::PgPool;

use super::params::{Cursor, Filter};
use crate::store::query::{self as store, Search};

/// A page of rows, each the JSON text of `row_to_json` (every column, in table order).
#[derive(Debug, Default)]
pub struct Page {
    pub rows: Vec<String>,
    /// Set when more rows match: where the next page starts.
    pub next: Option<Cursor>,
}

fn search<'a>(filter: &'a Filter, after: Option<&'a Cursor>) -> Search<'a> {
    Search {
        equal: filter.text().collect(),
        from: filter.from,
        to: filter.to,
        after: after.map(|c| (c.occurred_at, c.id.as_str())),
    }
}

/// Reads one page: up to `limit` rows after `after`, and whether more follow. `pool` is the
/// query role's read-only pool ([`crate::store::Store::connect_read_only`]): each statement is
/// its own read-only transaction under `query.statement_timeout`.
pub async fn page(
    pool: &PgPool,
    filter: &Filter,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<Page, sqlx::Error> {
    let page = store::page(pool, &search(filter, after), limit).await?;
    Ok(Page {
        rows: page.rows,
        next: page
            .next
            .map(|(occurred_at, id)| Cursor { occurred_at, id }),
    })
}

/// Every row with this `id` (one per `occurred_at`), newest first.
pub async fn by_id(pool: &PgPool, id: &str) -> Result<Vec<String>, sqlx::Error> {
    store::by_id(pool, id).await
}

/// `EXPLAIN (FORMAT JSON)` of the page statement, planned as [`page`] plans it.
pub async fn explain(
    pool: &PgPool,
    filter: &Filter,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<serde_json::Value, sqlx::Error> {
    store::explain(pool, &search(filter, after), limit).await
}
