//! The `query` role: the HTTP API reads stored events (`api::query`) through a read-only pool
//! of its own, so searches and exports never wait behind the sink's inserts (nor the inserts
//! behind them).

use anyhow::Context;

use crate::config::{AuthMode, Config, Role};
use crate::role::{ApiParts, RoleContext, Started, joined};
use crate::shutdown::Task;
use crate::store::Store;

/// Read-only connections of the query role.
const QUERY_POOL_SIZE: u32 = 8;

/// Starts the query role: its pool, its reachability monitor and the keys seals are checked
/// with (never keys from the database).
pub fn start(ctx: &RoleContext) -> anyhow::Result<Started> {
    let config = &ctx.config;
    refuse_anonymous_reads(config)?;
    let store = Store::connect_read_only(
        &config.database.url,
        QUERY_POOL_SIZE,
        config.query.statement_timeout,
    )
    .context("invalid database.url")?;
    let keys = config
        .integrity
        .public_key_files
        .iter()
        .map(|p| crate::integrity::seal::load_public_key(p))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot load integrity.public_key_files for the query role")?;
    let check = crate::health::database_check(store.clone());
    let (monitor, token) = (store.clone(), ctx.shutdown.child_token());
    let mut started = Started::new(Role::Query, check, &[Task::Http, Task::QueryMonitor])
        .task(Task::QueryMonitor, async move {
            joined(monitor.spawn_monitor(token)).await
        });
    started.api = ApiParts {
        query: Some((store, keys)),
    };
    Ok(started)
}

/// The query role serves every stored event: without reader credentials it starts only when
/// that is asked for explicitly.
fn refuse_anonymous_reads(config: &Config) -> anyhow::Result<()> {
    if config.auth.mode != AuthMode::None {
        return Ok(());
    }
    if config.query.allow_anonymous {
        tracing::warn!(
            listen = %config.http.listen,
            "query.allow_anonymous is true: anyone who can reach this port can read every \
             stored audit event (each read is still recorded)"
        );
        return Ok(());
    }
    anyhow::bail!(
        "the query role needs reader credentials: set auth.mode to token or mtls with reader \
         principals in auth.tokens_file, or (private test setups only) query.allow_anonymous: \
         true"
    )
}
