//! `audit-manager serve`: wires the roles of one process together and drains them on shutdown.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{Config, Role};
use crate::health::Health;
use crate::kafka::dev::EmbeddedKafka;
use crate::shutdown::{Supervisor, Task};
use crate::spool::Spool;
use crate::store::Store;

mod ingest;
mod listener;
mod query;
mod resources;

pub use crate::role::StartOptions;
use crate::role::{ApiParts, RoleContext, Started};

/// `kafka.bootstrap_servers` value that starts the in-process development broker.
pub const EMBEDDED_KAFKA: &str = "embedded";

/// A started service: its bound address and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub spool: Option<Spool>,
    /// Every role's task; a failure of one cancels the root token.
    supervisor: Supervisor,
    store: Option<Store>,
    /// Stopped last, after the forwarder flushed into it.
    embedded_kafka: Option<EmbeddedKafka>,
}

impl Running {
    /// Waits until the root token is cancelled (a signal, [`Running::stop`], or a role that
    /// failed) and everything has drained. Returns the role failure
    /// ([`crate::shutdown::TaskFailure`]) if there was one: the process must then exit non-zero.
    pub async fn wait(self) -> anyhow::Result<()> {
        // Each task returns once the token is cancelled: the HTTP server after answering every
        // request in flight (or cutting what is left after http.shutdown_grace), the forwarder after committing the acks of its outstanding
        // deliveries, the sink after committing what it stored.
        let outcome = self.supervisor.wait().await;
        if let Some(store) = &self.store {
            store.close().await;
        }
        if let Some(spool) = &self.spool {
            // Every request that was in flight has been answered: their commits are done.
            spool.close().await;
        }
        drop(self.embedded_kafka);
        match &outcome {
            Ok(()) => tracing::info!("drained; exiting"),
            Err(failure) => tracing::error!(%failure, "drained after a role failure; exiting"),
        }
        Ok(outcome?)
    }

    /// Starts draining and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.supervisor.token().cancel();
        self.wait().await
    }
}

/// Runs until SIGTERM/SIGINT, then drains and returns; returns an error after a role failure.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::shutdown::cancel_on_signal(shutdown.clone());
    let running = start(config, shutdown, StartOptions::default()).await?;
    running.wait().await
}

/// Opens what the configured roles need, binds the listener and starts every role under one
/// [`Supervisor`].
pub async fn start(
    config: Config,
    shutdown: CancellationToken,
    #[allow(unused_mut)] mut opts: StartOptions,
) -> anyhow::Result<Running> {
    // The rules' keys are read before anything opens: a missing or short key file refuses
    // startup naming the key, rather than every event being refused later.
    if let Err(e) = crate::privacy::Privacy::from_config(&config.privacy) {
        anyhow::bail!("invalid configuration: {}: {e}", e.key());
    }
    let supervisor = Supervisor::new(shutdown.clone());
    #[cfg(feature = "failpoints")]
    if let Some((task, trigger)) = opts.inject_panic.take() {
        supervisor.inject_panic(task, trigger);
    }
    let res = resources::Resources::open(config, &shutdown, opts).await?;
    let ctx = res.context;
    // Every role is built before any runs: a role that cannot start stops `serve` here, after
    // the supervisor logged it and cancelled the root token.
    let mut health = Health::supervised(supervisor.view());
    let mut api = ApiParts::default();
    let mut tasks = Vec::new();
    for role in Role::ALL.into_iter().filter(|r| ctx.config.has_role(*r)) {
        let started = match start_role(role, &ctx) {
            Ok(started) => started,
            Err(e) => {
                supervisor.start_failed(role, &e);
                return Err(e.context(format!("cannot start the {role} role")));
            }
        };
        health.register(started.role, &started.needs, started.health);
        tasks.extend(started.tasks);
        api.query = api.query.or(started.api.query);
    }
    if let Some(store) = &ctx.store {
        supervisor.watch(
            Task::DatabaseMonitor,
            store.spawn_monitor(shutdown.child_token()),
        );
    }
    for (task, fut) in tasks {
        supervisor.spawn(task, async move { fut.await.map_err(|e| format!("{e:#}")) });
    }
    let roles: Vec<String> = ctx.config.roles.iter().map(|r| r.to_string()).collect();
    let (scheme, auth_mode) = (
        if res.tls.is_some() { "https" } else { "http" },
        ctx.config.auth.mode,
    );
    let mut state = AppState::with_auth(
        ctx.config.clone(),
        ctx.spool.clone(),
        health,
        ctx.metrics.clone(),
        shutdown.clone(),
        ctx.auth.clone(),
    );
    if ctx.config.privacy.keeper_key_file.is_some() {
        // Readers see decrypted values (with `pii`) only where the keeper key is.
        let privacy = crate::privacy::writer(&ctx.config).map_err(anyhow::Error::msg)?;
        state = state.with_privacy(privacy);
    }
    if let Some((store, keys)) = api.query {
        state = state.with_query(store, keys);
    }
    if let Some(store) = &ctx.store {
        state = state.with_database(store.pool().clone());
    }
    let limits = listener::Limits::of(&state.config.http);
    let app = api::router(state);
    supervisor.spawn(
        Task::Http,
        listener::serve(res.listener, res.tls, app, limits, shutdown.clone()),
    );
    supervisor.mark_started();
    // Tests that run `serve` as a child process read `addr` from this line (LOG_FORMAT=json).
    tracing::info!(
        addr = %res.addr,
        scheme,
        auth = auth_mode.as_str(),
        roles = roles.join(","),
        "audit-manager listening"
    );
    Ok(Running {
        addr: res.addr,
        spool: ctx.spool,
        supervisor,
        embedded_kafka: res.embedded_kafka,
        store: ctx.store,
    })
}

/// One role's `start`; roles start in [`Role::ALL`]'s order.
fn start_role(role: Role, ctx: &RoleContext) -> anyhow::Result<Started> {
    match role {
        Role::Ingest => ingest::start(ctx),
        Role::Forward => crate::forward::start(ctx),
        Role::Sink => crate::sink::start(ctx),
        Role::Maintain => crate::maintain::start(ctx),
        Role::Query => query::start(ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_short_privacy_key_refuses_startup_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("hmac");
        std::fs::write(&key, b"too short").unwrap();
        let yaml = format!(
            "audit_manager:\n  spool:\n    path: {:?}\n  privacy:\n    hmac_key_file: {key:?}\n    \
             rules:\n      - {{select: $.data.actor.name, action: pseudonymise}}\n",
            dir.path().join("spool"),
        );
        let config = Config::from_yaml_str(&yaml, &[]).expect("the rules are well-formed");
        let Err(e) = start(config, CancellationToken::new(), StartOptions::default()).await else {
            panic!("started with a 9-byte HMAC key");
        };
        let message = format!("{e:#}");
        assert!(message.contains("privacy.hmac_key_file"), "{message}");
        // Nothing was opened: the spool directory was never created.
        assert!(!dir.path().join("spool").exists(), "{message}");
    }
}
