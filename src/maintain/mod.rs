//! The `maintain` role: keeps monthly partitions created ahead and drops expired ones.
//!
//! A pass runs at start and then every `database.partition_check_interval`; a failed pass is
//! retried sooner (after at most [`RETRY_AFTER_FAILURE`]). Every pass runs under a session
//! advisory lock (`pg_try_advisory_lock`), so of several maintainers only one works at a time;
//! the others skip that pass.
//!
//! With `integrity.signing_key_file` set, the role also runs the sealer
//! ([`crate::integrity::sealer`]) on its own schedule (`integrity.seal_interval`).

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseConfig, Role};
use crate::integrity::sealer::SealerState;
use crate::serve::role::{RoleContext, Started};
use crate::shutdown::Task;
use crate::store::{MaintainReport, Store, StoreError};

mod health;
pub mod sealing;

/// Longest wait before retrying a failed pass.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// Outcome of one pass, for scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassOutcome {
    Done,
    Failed,
}

/// When the pass after one with `outcome` is due.
pub fn next_due(now: Instant, interval: Duration, outcome: PassOutcome) -> Instant {
    match outcome {
        PassOutcome::Done => now + interval,
        PassOutcome::Failed => now + interval.min(RETRY_AFTER_FAILURE),
    }
}

/// Runs `pass` now and then on schedule until `token` is cancelled.
pub async fn schedule<F, Fut>(interval: Duration, token: CancellationToken, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = PassOutcome>,
{
    let mut due = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = token.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let outcome = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            o = pass() => o,
        };
        due = next_due(Instant::now(), interval, outcome);
    }
}

/// One maintenance pass with logging; the result as `pass` for [`schedule`].
pub async fn pass(
    store: &Store,
    db: &DatabaseConfig,
) -> Result<Option<MaintainReport>, StoreError> {
    let r = store
        .maintain(
            Utc::now(),
            db.partition_pre_create_months,
            db.partition_retention_months,
            true,
            true,
        )
        .await;
    store.observe(&r);
    match &r {
        Ok(None) => tracing::debug!("another maintainer holds the lock; skipping this pass"),
        Ok(Some(report)) => tracing::debug!(
            created = report.created.len(),
            dropped = report.dropped.len(),
            "partition maintenance done"
        ),
        Err(e) => tracing::warn!(error = %e, "partition maintenance failed; will retry"),
    }
    r
}

/// Starts the maintain role: the partition loop and, with `integrity.signing_key_file`, the
/// sealer (a key that cannot be loaded stops the start).
pub fn start(ctx: &RoleContext) -> anyhow::Result<Started> {
    let store = ctx.store()?.clone();
    let sealer = sealing::build(&ctx.config)?;
    let state = sealer.as_ref().map(|_| SealerState::default());
    let check = health::check(
        store.clone(),
        state.clone(),
        ctx.config.integrity.seal_interval,
    );
    let mut started = Started::new(
        Role::Maintain,
        check,
        &[Task::Maintain, Task::DatabaseMonitor],
    );
    if let (Some(sealer), Some(state)) = (sealer, state) {
        let (pool, token) = (store.pool().clone(), ctx.shutdown.child_token());
        started = started.task(Task::Sealer, async move {
            sealer.run(pool, state, token).await;
            Ok(())
        });
    }
    let (db, token) = (ctx.config.database.clone(), ctx.shutdown.child_token());
    Ok(started.task(Task::Maintain, async move {
        run(store, db, token).await;
        Ok(())
    }))
}

/// Runs partition maintenance on schedule until `token` is cancelled.
async fn run(store: Store, db: DatabaseConfig, token: CancellationToken) {
    let interval = db.partition_check_interval;
    schedule(interval, token, || async {
        // The schema may not exist yet on a fresh database.
        if let Err(e) = store.prepare().await {
            tracing::warn!(error = %e, "maintain waiting for the database");
            return PassOutcome::Failed;
        }
        match pass(&store, &db).await {
            Ok(_) => PassOutcome::Done,
            Err(_) => PassOutcome::Failed,
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn passes_run_at_start_then_every_interval() {
        let count = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        let c = count.clone();
        let task = tokio::spawn(schedule(
            Duration::from_secs(3600),
            token.clone(),
            move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    PassOutcome::Done
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1, "first pass at start");
        tokio::time::sleep(Duration::from_secs(3598)).await;
        assert_eq!(count.load(Ordering::SeqCst), 1, "not before the interval");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(count.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
        assert_eq!(count.load(Ordering::SeqCst), 4);
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failed_pass_is_retried_sooner() {
        let count = Arc::new(AtomicUsize::new(0));
        let token = CancellationToken::new();
        let c = count.clone();
        let task = tokio::spawn(schedule(
            Duration::from_secs(3600),
            token.clone(),
            move || {
                let c = c.clone();
                async move {
                    // Fails twice, then succeeds.
                    if c.fetch_add(1, Ordering::SeqCst) < 2 {
                        PassOutcome::Failed
                    } else {
                        PassOutcome::Done
                    }
                }
            },
        ));
        tokio::time::sleep(RETRY_AFTER_FAILURE * 2 + Duration::from_secs(1)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_secs(3000)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            3,
            "back to the hourly schedule"
        );
        token.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_loop_promptly() {
        let token = CancellationToken::new();
        let task = tokio::spawn(schedule(
            Duration::from_secs(3600),
            token.clone(),
            || async { PassOutcome::Done },
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        token.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("loop ends on cancel")
            .unwrap();
    }
}
