//! The `maintain` role: keeps monthly partitions created ahead and drops expired ones.
//!
//! A pass runs at start and then every `database.partition_check_interval`; a failed pass is
//! retried sooner (after at most [`RETRY_AFTER_FAILURE`](crate::schedule::RETRY_AFTER_FAILURE)). Every pass runs under a session
//! advisory lock (`pg_try_advisory_lock`), so of several maintainers only one works at a time;
//! the others skip that pass.
//!
//! With `integrity.signing_key_file` set, the role also runs the sealer
//! ([`crate::integrity::sealer`]) on its own schedule (`integrity.seal_interval`).

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::archive::ArchiveState;
use crate::archive::run::Archiver;
use crate::config::{DatabaseConfig, Role};
use crate::integrity::sealer::SealerState;
use crate::role::{RoleContext, Started};
use crate::schedule::{PassOutcome, schedule};
use crate::shutdown::Task;
use crate::store::{MaintainReport, Store, StoreError};

mod health;
pub mod sealing;

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
            blocked = report.blocked.len(),
            "partition maintenance done"
        ),
        Err(e) => tracing::warn!(error = %e, "partition maintenance failed; will retry"),
    }
    r
}

/// Starts the maintain role: the partition loop, with `integrity.signing_key_file` the sealer
/// (a key that cannot be loaded stops the start), and with `archive.url` the archiver (which
/// retention waits for when `archive.require_before_drop`).
pub fn start(ctx: &RoleContext) -> anyhow::Result<Started> {
    let store = ctx
        .store()?
        .clone()
        .with_archive_gate(ctx.config.archive.gates_retention());
    let sealer = sealing::build(&ctx.config)?;
    let state = sealer.as_ref().map(|_| SealerState::default());
    let archiver = Archiver::from_config(&ctx.config, store.clone())?;
    let archive_state = ctx.config.archive.enabled().then(ArchiveState::default);
    let check = health::check(
        store.clone(),
        state.clone(),
        ctx.config.integrity.seal_interval,
        archive_state.clone(),
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
    if let (Some(archiver), Some(state)) = (archiver, archive_state.clone()) {
        let interval = ctx.config.database.partition_check_interval;
        let token = ctx.shutdown.child_token();
        started = started.task(Task::Archiver, async move {
            archive_loop(archiver, interval, state, token).await;
            Ok(())
        });
    }
    let (db, token) = (ctx.config.database.clone(), ctx.shutdown.child_token());
    Ok(started.task(Task::Maintain, async move {
        run(store, db, archive_state, token).await;
        Ok(())
    }))
}

/// Runs partition maintenance on schedule until `token` is cancelled.
async fn run(
    store: Store,
    db: DatabaseConfig,
    archive: Option<ArchiveState>,
    token: CancellationToken,
) {
    let interval = db.partition_check_interval;
    schedule(interval, token, || async {
        // The schema may not exist yet on a fresh database.
        if let Err(e) = store.prepare().await {
            tracing::warn!(error = %e, "maintain waiting for the database");
            return PassOutcome::Failed;
        }
        match pass(&store, &db).await {
            Ok(report) => {
                if let (Some(report), Some(state)) = (report, &archive)
                    && let Ok(mut s) = state.lock()
                {
                    s.blocked = report.blocked;
                }
                PassOutcome::Done
            }
            Err(_) => PassOutcome::Failed,
        }
    })
    .await;
}

/// Runs the archiver on schedule until `token` is cancelled: first a request proving the
/// object store answers and accepts the credentials, then a pass.
async fn archive_loop(
    archiver: Archiver,
    interval: std::time::Duration,
    state: ArchiveState,
    token: CancellationToken,
) {
    schedule(interval, token, || async {
        let r = match archiver.objects().probe().await {
            Ok(()) => archiver.pass(Utc::now(), None).await,
            Err(e) => Err(e),
        };
        let outcome = match &r {
            Ok(report) => {
                for p in &report.parts {
                    tracing::info!(month = %p.month, part = p.part, rows = p.rows, "archive part written");
                }
                PassOutcome::Done
            }
            Err(e) => {
                tracing::warn!(error = %e, "archive pass failed; will retry");
                metrics::counter!("audit_archive_failures_total").increment(1);
                PassOutcome::Failed
            }
        };
        if let Ok(mut s) = state.lock() {
            match r {
                Ok(_) => {
                    s.error = None;
                    s.last_pass = Some(Utc::now());
                }
                Err(e) => s.error = Some(e.to_string()),
            }
        }
        outcome
    })
    .await;
}
