//! The advisory locks every process of the service shares, and the statements that take them.
//!
//! The ids are ASCII "audit" followed by a number. Running deployments hold them across
//! releases (a sink of one release and a sealer of the next must exclude each other), so an
//! id never changes; a new lock takes the next number.

use sqlx::PgConnection;

/// One advisory lock of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdvisoryLock {
    /// Serializes schema changes between processes starting at the same time (transaction
    /// lock, see `store::schema`).
    Schema,
    /// Held (per transaction) while checking and creating a partition.
    PartitionDdl,
    /// Held (per session, try-lock) by the one maintainer doing a maintenance pass.
    Maintain,
    /// Every transaction writing `audit_events` holds this lock shared; the sealer takes it
    /// exclusively for an instant to find the watermark (see `integrity::sealer`).
    SealWrite,
    /// Held (per session, try-lock) by the one sealer working at a time.
    Sealer,
    /// Held (per session, try-lock) by the one archiver working at a time (`archive run`).
    Archive,
}

impl AdvisoryLock {
    /// The id PostgreSQL knows the lock by.
    pub const fn id(self) -> i64 {
        match self {
            AdvisoryLock::Schema => 0x6175_6469_7400_0001,
            AdvisoryLock::PartitionDdl => 0x6175_6469_7400_0002,
            AdvisoryLock::Maintain => 0x6175_6469_7400_0003,
            AdvisoryLock::SealWrite => 0x6175_6469_7400_0004,
            AdvisoryLock::Sealer => 0x6175_6469_7400_0005,
            AdvisoryLock::Archive => 0x6175_6469_7400_0010,
        }
    }
}

/// `pg_advisory_xact_lock`: waits for `lock` exclusively until the transaction ends.
pub async fn lock_for_transaction(
    tx: &mut PgConnection,
    lock: AdvisoryLock,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock.id())
        .execute(tx)
        .await
        .map(|_| ())
}

/// `pg_advisory_xact_lock_shared`: waits for `lock` shared until the transaction ends.
pub async fn share_for_transaction(
    tx: &mut PgConnection,
    lock: AdvisoryLock,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(lock.id())
        .execute(tx)
        .await
        .map(|_| ())
}

/// `pg_try_advisory_lock`: takes `lock` for the session when nobody holds it; `false` when
/// somebody does.
pub async fn try_lock_for_session(
    conn: &mut PgConnection,
    lock: AdvisoryLock,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock.id())
        .fetch_one(conn)
        .await
}

/// `pg_advisory_unlock`: lets go of a session lock taken by [`try_lock_for_session`].
pub async fn unlock_session(
    conn: &mut PgConnection,
    lock: AdvisoryLock,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock.id())
        .execute(conn)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ids_are_those_running_deployments_hold() {
        let ids: Vec<i64> = [
            AdvisoryLock::Schema,
            AdvisoryLock::PartitionDdl,
            AdvisoryLock::Maintain,
            AdvisoryLock::SealWrite,
            AdvisoryLock::Sealer,
        ]
        .into_iter()
        .map(AdvisoryLock::id)
        .collect();
        assert_eq!(
            ids,
            [
                7_022_629_598_034_657_281,
                7_022_629_598_034_657_282,
                7_022_629_598_034_657_283,
                7_022_629_598_034_657_284,
                7_022_629_598_034_657_285
            ]
        );
    }
}
