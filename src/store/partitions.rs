//! Monthly partitions of `audit_events`: list, create (on demand and ahead), drop expired.
//!
//! Bounds always come from the catalog (`pg_get_expr(relpartbound)`), never from table names:
//! a partition created by hand under another name still counts, and retention only drops what
//! really lies before the cutoff. Creating takes a transaction-level advisory lock so sinks and
//! maintainers racing for the same month do not collide; a maintenance pass takes a
//! session-level `pg_try_advisory_lock` so only one maintainer works at a time.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row as _};

use super::ident::quote_ident;
use super::locks::{self, AdvisoryLock};
use super::retention;
use super::{Month, Store, StoreError, months_ahead, retention_cutoff};

/// One partition as the catalog describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionInfo {
    pub name: String,
    /// Inclusive lower bound; `None` for MINVALUE or a DEFAULT partition.
    pub lower: Option<DateTime<Utc>>,
    /// Exclusive upper bound; `None` for MAXVALUE or a DEFAULT partition.
    pub upper: Option<DateTime<Utc>>,
    /// Planner estimate (`reltuples`), `-1` when never analyzed.
    pub rows_estimate: i64,
    pub bytes: i64,
}

impl PartitionInfo {
    /// Whether every instant of `month` falls inside this partition.
    fn covers(&self, month: Month) -> bool {
        let (Some(start), Some(end)) = (month.start(), month.plus(1).start()) else {
            return false;
        };
        let lower_ok = self.lower.is_none_or(|l| l <= start);
        let upper_ok = self.upper.is_none_or(|u| u >= end);
        // A DEFAULT partition has neither bound but covers nothing by range.
        (self.lower.is_some() || self.upper.is_some()) && lower_ok && upper_ok
    }
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    pub created: Vec<String>,
    pub dropped: Vec<String>,
    /// Expired partitions kept because their rows are not all archived yet, with why
    /// (`archive.require_before_drop`).
    pub blocked: Vec<(String, String)>,
}

const LIST_SQL: &str = "
    WITH p AS (
        SELECT c.oid, c.relname::text AS name, c.reltuples,
               pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_events'::regclass
    )
    SELECT name,
           (regexp_match(bound, 'FROM \\(''([^'']*)''\\)'))[1]::timestamptz AS lower,
           (regexp_match(bound, 'TO \\(''([^'']*)''\\)'))[1]::timestamptz AS upper,
           reltuples::int8 AS rows_estimate,
           pg_total_relation_size(oid) AS bytes
    FROM p
    ORDER BY lower NULLS FIRST, name";

async fn list_on(conn: &mut PgConnection) -> Result<Vec<PartitionInfo>, sqlx::Error> {
    let rows = sqlx::query(LIST_SQL).fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            Ok(PartitionInfo {
                name: r.try_get("name")?,
                lower: r.try_get("lower")?,
                upper: r.try_get("upper")?,
                rows_estimate: r.try_get("rows_estimate")?,
                bytes: r.try_get("bytes")?,
            })
        })
        .collect()
}

/// Creates the partition of each month not covered yet, under
/// [`AdvisoryLock::PartitionDdl`]; returns
/// the names created.
async fn create_missing(
    conn: &mut PgConnection,
    months: &BTreeSet<Month>,
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    locks::lock_for_transaction(&mut tx, AdvisoryLock::PartitionDdl).await?;
    let existing = list_on(&mut tx).await?;
    let mut created = Vec::new();
    for &month in months {
        if existing.iter().any(|p| p.covers(month)) {
            continue;
        }
        let (Some(start), Some(end)) = (month.start(), month.plus(1).start()) else {
            continue;
        };
        let name = month.table_name();
        let sql = format!(
            "CREATE TABLE {} PARTITION OF audit_events FOR VALUES FROM ('{}') TO ('{}')",
            quote_ident(&name),
            start.format("%Y-%m-%dT%H:%M:%SZ"),
            end.format("%Y-%m-%dT%H:%M:%SZ"),
        );
        sqlx::query(&sql).execute(&mut *tx).await?;
        created.push(name);
    }
    tx.commit().await?;
    Ok(created)
}

impl Store {
    /// Every partition of `audit_events` with its catalog bounds, oldest first.
    pub async fn list_partitions(&self) -> Result<Vec<PartitionInfo>, StoreError> {
        let mut conn = self.acquire("listing partitions").await?;
        list_on(&mut conn)
            .await
            .map_err(|e| StoreError::new("listing partitions", e))
    }

    async fn acquire(
        &self,
        what: &str,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, StoreError> {
        self.pool
            .acquire()
            .await
            .map_err(|e| StoreError::new(what, e))
    }

    /// Makes sure every month in `months` has a partition; cached, so the common case costs
    /// nothing. Returns the partitions created.
    pub async fn ensure_months(
        &self,
        months: impl IntoIterator<Item = Month>,
    ) -> Result<Vec<String>, StoreError> {
        let missing: BTreeSet<Month> = {
            let covered = self.covered.lock().map(|c| c.clone()).unwrap_or_default();
            months
                .into_iter()
                .filter(|m| !covered.contains(m))
                .collect()
        };
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        let what = format!("creating partitions for {} month(s)", missing.len());
        let mut conn = self.acquire(&what).await?;
        let created = create_missing(&mut conn, &missing)
            .await
            .map_err(|e| StoreError::new(what, e))?;
        for name in &created {
            tracing::info!(partition = %name, "created partition");
            metrics::counter!("audit_partitions_created_total").increment(1);
        }
        if let Ok(mut c) = self.covered.lock() {
            c.extend(missing);
        }
        Ok(created)
    }

    /// One maintenance pass under [`AdvisoryLock::Maintain`]: create the current month and
    /// `pre_create - 1` ahead (`ensure`), drop partitions whose upper bound is at or before
    /// the retention cutoff (`drop_expired`, never when retention is 0). `Ok(None)` when
    /// another maintainer holds the lock.
    pub async fn maintain(
        &self,
        now: DateTime<Utc>,
        pre_create: u32,
        retention_months: u32,
        ensure: bool,
        drop_expired: bool,
    ) -> Result<Option<MaintainReport>, StoreError> {
        let what = "partition maintenance";
        let mut conn = self.acquire(what).await?;
        let locked = locks::try_lock_for_session(&mut conn, AdvisoryLock::Maintain)
            .await
            .map_err(|e| StoreError::new(what, e))?;
        if !locked {
            return Ok(None);
        }
        let result = self
            .maintain_locked(
                &mut conn,
                now,
                pre_create,
                retention_months,
                ensure,
                drop_expired,
            )
            .await;
        let unlocked = locks::unlock_session(&mut conn, AdvisoryLock::Maintain).await;
        if unlocked.is_err() {
            // The lock is tied to this session: closing it releases the lock for sure.
            conn.detach();
        }
        result.map(Some)
    }

    async fn maintain_locked(
        &self,
        conn: &mut PgConnection,
        now: DateTime<Utc>,
        pre_create: u32,
        retention_months: u32,
        ensure: bool,
        drop_expired: bool,
    ) -> Result<MaintainReport, StoreError> {
        let mut report = MaintainReport::default();
        if ensure {
            let months: BTreeSet<Month> = months_ahead(now, pre_create).into_iter().collect();
            report.created = create_missing(conn, &months)
                .await
                .map_err(|e| StoreError::new("creating partitions ahead", e))?;
            for name in &report.created {
                tracing::info!(partition = %name, "created partition ahead");
                metrics::counter!("audit_partitions_created_total").increment(1);
            }
        }
        if drop_expired && let Some(cutoff) = retention_cutoff(now, retention_months) {
            let what = "dropping expired partitions";
            let parts = list_on(conn).await.map_err(|e| StoreError::new(what, e))?;
            for p in parts {
                let Some(upper) = p.upper else { continue };
                if upper > cutoff {
                    continue;
                }
                // The drop and its retention record (for verify) commit together; with the
                // archive gate, only after every row was found in a verified archive part.
                let gate = self.archive_gate;
                let dropped = async {
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    if gate {
                        let reason = match p.lower {
                            Some(lower) => {
                                super::archives::unarchived_reason(&mut tx, &p.name, lower, upper)
                                    .await?
                            }
                            None => Some(format!(
                                "{}: a partition without a lower bound is never archived",
                                p.name
                            )),
                        };
                        if let Some(reason) = reason {
                            tx.rollback().await?;
                            return Ok(Some(reason));
                        }
                    }
                    retention::record_drop(&mut tx, &p.name, p.lower, p.upper).await?;
                    sqlx::query(&format!("DROP TABLE IF EXISTS {}", quote_ident(&p.name)))
                        .execute(&mut *tx)
                        .await?;
                    crate::fault::fault_point("retention-before-commit");
                    tx.commit().await.map(|()| None)
                }
                .await;
                let blocked = dropped
                    .map_err(|e| StoreError::new(format!("dropping partition {}", p.name), e))?;
                if let Some(reason) = blocked {
                    tracing::warn!(
                        partition = %p.name, %reason,
                        "retention kept an expired partition: it is not fully archived"
                    );
                    metrics::counter!("audit_retention_blocked_total").increment(1);
                    report.blocked.push((p.name, reason));
                    continue;
                }
                tracing::info!(
                    partition = %p.name, upper = %upper, cutoff = %cutoff,
                    "dropped expired partition"
                );
                metrics::counter!("audit_partitions_dropped_total").increment(1);
                report.dropped.push(p.name);
            }
            if !report.dropped.is_empty() {
                self.forget_partitions();
            }
        }
        Ok(report)
    }
}
