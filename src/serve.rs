//! `audit-manager serve`: wires the roles of one process together and drains them on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::Authenticator;
use crate::auth::tls::{TlsFiles, TlsReloader};
use crate::config::{AuthMode, Config, Role};
use crate::forward::{ForwardSettings, Forwarder};
use crate::health::{Health, RoleReport, Status};
use crate::kafka::dev::EmbeddedKafka;
use crate::shutdown::{Supervisor, Task};
use crate::spool::{self, Spool, SpoolOptions, now_ms};
use crate::store::Store;

mod listener;

/// Seams for tests; production uses [`StartOptions::default`].
#[derive(Default)]
pub struct StartOptions {
    /// Opens the spool database instead of the file under `spool.path` (failure injection).
    pub spool_opener: Option<spool::Opener>,
    /// Forward-loop tuning instead of [`ForwardSettings::default`] (tests shorten timings).
    pub forward: Option<ForwardSettings>,
    /// Makes the task panic once the token is cancelled (supervision tests; see
    /// [`Supervisor::inject_panic`]).
    pub inject_panic: Option<(Task, CancellationToken)>,
}

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
    mut config: Config,
    shutdown: CancellationToken,
    opts: StartOptions,
) -> anyhow::Result<Running> {
    let metrics = crate::metrics::install();
    crate::metrics::spawn_upkeep(metrics.clone(), shutdown.clone());
    let supervisor = Supervisor::new(shutdown.clone());
    if let Some((task, trigger)) = opts.inject_panic {
        supervisor.inject_panic(task, trigger);
    }
    let seals = config.has_role(Role::Maintain)
        && config.integrity.signing_key_file.is_some()
        && !config.integrity.seal_topic.is_empty();
    let uses_kafka = config.has_role(Role::Forward) || config.has_role(Role::Sink) || seals;
    let embedded_kafka = if uses_kafka && config.kafka.bootstrap_servers == EMBEDDED_KAFKA {
        let mut topics = vec![config.kafka.topic.clone(), config.kafka.dlq_topic.clone()];
        if seals {
            topics.push(config.integrity.seal_topic.clone());
        }
        let partitions = config.kafka.topic_partitions;
        let k = tokio::task::spawn_blocking(move || EmbeddedKafka::start(partitions, &topics))
            .await??;
        // Every role of this process talks to it through the ordinary client path.
        config.kafka.bootstrap_servers = k.bootstrap_servers().to_string();
        Some(k)
    } else {
        None
    };
    let roles: Vec<String> = config.roles.iter().map(|r| r.to_string()).collect();
    let spool = if config.has_role(Role::Ingest) || config.has_role(Role::Forward) {
        let so = SpoolOptions {
            dir: config.spool.path.clone(),
            max_bytes: config.spool.max_bytes,
            max_pending_appends: config.spool.max_pending_appends,
        };
        let spool = match opts.spool_opener {
            Some(opener) => {
                let file = spool::store::file_path(&so.dir);
                tokio::task::spawn_blocking(move || Spool::open_with(opener, file, &so)).await?
            }
            None => {
                let cache = usize::try_from(config.spool.cache_bytes).unwrap_or(usize::MAX);
                tokio::task::spawn_blocking(move || {
                    let opener = spool::store::file_opener_with_cache(&so.dir, cache)?;
                    Spool::open_with(opener, spool::store::file_path(&so.dir), &so)
                })
                .await?
            }
        };
        Some(spool?.with_max_pending_bytes(config.spool.max_pending_bytes))
    } else {
        None
    };
    let auth = match (config.auth.mode, &config.auth.tokens_file) {
        (AuthMode::None, _) => {
            if !config.http.listen.ip().is_loopback() {
                tracing::warn!(
                    listen = %config.http.listen,
                    "auth.mode is none and the listener is reachable beyond this host: anyone \
                     who can connect can write audit events and read GET /config. Set \
                     auth.mode to token or mtls (docs/authentication.md) unless a mesh or \
                     network policy authenticates callers"
                );
            }
            None
        }
        (mode, Some(path)) => {
            let path = path.clone();
            let auth =
                tokio::task::spawn_blocking(move || Authenticator::load(mode, &path)).await??;
            auth.spawn_reloader(shutdown.child_token());
            Some(auth)
        }
        // `Config::validate` refuses token and mtls without a tokens file.
        (mode, None) => anyhow::bail!("auth.mode {} needs auth.tokens_file", mode.as_str()),
    };
    let tls = match TlsFiles::from_config(&config.http.tls) {
        Some(files) => Some(
            tokio::task::spawn_blocking(move || TlsReloader::load(files))
                .await?
                .context("cannot start TLS on the listener")?,
        ),
        None => None,
    };
    let mut health = Health::supervised(supervisor.view());
    if let (true, Some(spool)) = (config.has_role(Role::Ingest), &spool) {
        health.register(
            Role::Ingest,
            &[Task::Http],
            ingest_check(spool.clone(), auth.clone()),
        );
    }
    let forwarder = match (config.has_role(Role::Forward), &spool) {
        (true, Some(spool)) => {
            let settings = opts.forward.unwrap_or_default().bounded_by(&config);
            let mut f = Forwarder::new(&config, spool.clone(), settings)?;
            if embedded_kafka.is_some() {
                f = f.topics_precreated();
            }
            health.register(Role::Forward, &[Task::Forward], f.health_check());
            Some(f)
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (http.listen): is another process using the port?",
                config.http.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let store = if config.has_role(Role::Sink) || config.has_role(Role::Maintain) {
        let store = Store::connect_lazy(&config.database.url, DB_POOL_SIZE)
            .context("invalid database.url")?;
        // The sink is the last thing that can fail to start: nothing runs before it.
        if config.has_role(Role::Sink) {
            health.register(
                Role::Sink,
                &[Task::Sink, Task::DatabaseMonitor],
                database_check(store.clone()),
            );
            let handle = crate::sink::spawn(&config, store.clone(), shutdown.child_token())
                .context("cannot start the sink role")?;
            supervisor.watch(Task::Sink, handle);
        }
        supervisor.watch(
            Task::DatabaseMonitor,
            store.spawn_monitor(shutdown.child_token()),
        );
        if config.has_role(Role::Maintain) {
            let sealer = start_sealer(&config, &store, &supervisor, &shutdown)?;
            health.register(
                Role::Maintain,
                &[Task::Maintain, Task::DatabaseMonitor],
                maintain_check(store.clone(), sealer, config.integrity.seal_interval),
            );
            supervisor.watch(
                Task::Maintain,
                crate::maintain::spawn(
                    store.clone(),
                    config.database.clone(),
                    shutdown.child_token(),
                ),
            );
        }
        Some(store)
    } else {
        None
    };
    let query = if config.has_role(Role::Query) {
        refuse_anonymous_reads(&config)?;
        let store = Store::connect_read_only(
            &config.database.url,
            QUERY_POOL_SIZE,
            config.query.statement_timeout,
        )
        .context("invalid database.url")?;
        health.register(
            Role::Query,
            &[Task::Http, Task::QueryMonitor],
            database_check(store.clone()),
        );
        supervisor.watch(
            Task::QueryMonitor,
            store.spawn_monitor(shutdown.child_token()),
        );
        // The keys each event's integrity is checked with; never keys from the database.
        let keys = config
            .integrity
            .public_key_files
            .iter()
            .map(|p| crate::integrity::seal::load_public_key(p))
            .collect::<Result<Vec<_>, _>>()
            .context("cannot load integrity.public_key_files for the query role")?;
        Some((store, keys))
    } else {
        None
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let auth_mode = config.auth.mode;
    let mut state = AppState::with_auth(
        Arc::new(config),
        spool.clone(),
        health,
        metrics,
        shutdown.clone(),
        auth,
    );
    if let Some((store, keys)) = query {
        state = state.with_query(store, keys);
    }
    if let Some(store) = &store {
        state = state.with_database(store.pool().clone());
    }
    let limits = listener::Limits::of(&state.config.http);
    let app = api::router(state);
    supervisor.spawn(
        Task::Http,
        listener::serve(listener, tls, app, limits, shutdown.clone()),
    );
    if let Some(f) = forwarder {
        let token = shutdown.child_token();
        supervisor.spawn(Task::Forward, async move {
            f.run(token).await;
            Ok::<(), Infallible>(())
        });
    }
    supervisor.mark_started();
    // Tests that run `serve` as a child process read `addr` from this line (LOG_FORMAT=json).
    tracing::info!(
        %addr,
        scheme,
        auth = auth_mode.as_str(),
        roles = roles.join(","),
        "audit-manager listening"
    );
    Ok(Running {
        addr,
        spool,
        supervisor,
        embedded_kafka,
        store,
    })
}

/// Connections for the sink (`DEFAULT_INSERT_PARALLELISM` statements per batch, plus partition
/// creation), maintain and the health pings, which must not wait behind the inserts.
const DB_POOL_SIZE: u32 = crate::store::DEFAULT_INSERT_PARALLELISM as u32 + 2;

/// Read-only connections of the query role: its own pool, so searches and exports never wait
/// behind the sink's inserts (nor the inserts behind them).
const QUERY_POOL_SIZE: u32 = 8;

/// The query role serves every stored event: without reader credentials it starts only when
/// that is asked for explicitly.
fn refuse_anonymous_reads(config: &Config) -> anyhow::Result<()> {
    if config.auth.mode != crate::config::AuthMode::None {
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

/// Starts the sealer when `integrity.signing_key_file` is set; warns when it is not.
fn start_sealer(
    config: &Config,
    store: &Store,
    supervisor: &Supervisor,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<crate::integrity::sealer::SealerState>> {
    use crate::integrity::{publish::Publisher, seal, sealer};
    let Some(path) = &config.integrity.signing_key_file else {
        tracing::warn!(
            "integrity.signing_key_file is not set: stored rows are NOT sealed, so changes to \
             them cannot be detected. Create a key with `audit-manager keygen --out FILE` and \
             set integrity.signing_key_file (see docs/integrity.md)"
        );
        return Ok(None);
    };
    let key = seal::load_signing_key(path).context("cannot load integrity.signing_key_file")?;
    let signer = seal::Signer::new(key);
    tracing::info!(key_id = %hex::encode(signer.key_id()), "sealing stored rows");
    let topic = &config.integrity.seal_topic;
    let publisher = if topic.is_empty() {
        None
    } else {
        Some(Publisher::new(&config.kafka, topic)?)
    };
    if topic.is_empty() && config.integrity.seal_dir.is_none() {
        tracing::warn!(
            "neither integrity.seal_topic nor integrity.seal_dir is set: no copy of the seals \
             outside the database, so deleted seals go unnoticed by `verify` and, after a \
             restart, by the sealer, which would seal changed rows afresh. Set one (see \
             docs/integrity.md)"
        );
    }
    let off = sealer::OffDatabase::new(
        config.integrity.seal_dir.clone(),
        (!topic.is_empty()).then(|| (config.kafka.clone(), topic.clone())),
    );
    let check = writer_check(config)?;
    let state = sealer::SealerState::default();
    supervisor.watch(
        Task::Sealer,
        sealer::spawn(
            store.pool().clone(),
            signer,
            publisher,
            off,
            check,
            config.integrity.seal_interval,
            state.clone(),
            shutdown.child_token(),
        ),
    );
    Ok(Some(state))
}

/// The sealer's writer attestation check: the keys of `integrity.writer_public_key_files`, and
/// the public half of `integrity.writer_key_file` when this process has one (all roles in one
/// process). Without any, rows are sealed unchecked, with a warning.
fn writer_check(config: &Config) -> anyhow::Result<Option<crate::integrity::attest::SealCheck>> {
    use crate::integrity::attest::{Attestor, SealCheck, WriterKeys};
    let mut keys: Vec<_> = config
        .integrity
        .writer_public_key_files
        .iter()
        .map(|p| crate::integrity::seal::load_public_key(p))
        .collect::<Result<_, _>>()
        .context("cannot load integrity.writer_public_key_files")?;
    if let Some(path) = &config.integrity.writer_key_file {
        keys.push(
            Attestor::load(path)
                .context("cannot load integrity.writer_key_file")?
                .verifying_key(),
        );
    }
    if keys.is_empty() {
        tracing::warn!(
            "no writer key (integrity.writer_public_key_files, integrity.writer_key_file): rows \
             are sealed without checking writer attestation, so a row inserted by someone with \
             database access before the next seal is sealed as genuine. Create a writer key \
             with `audit-manager keygen --out FILE`, give FILE to the sink \
             (integrity.writer_key_file) and FILE.pub to the maintain role and verify \
             (integrity.writer_public_key_files); see docs/integrity.md"
        );
        return Ok(None);
    }
    let keys = WriterKeys::new(keys);
    tracing::info!(
        writer_keys = keys.len(),
        "sealing only rows with a writer attestation"
    );
    Ok(Some(SealCheck::new(keys)))
}

/// The maintain role: the database check, and DEGRADED while the sealer lags more than three
/// seal intervals behind or fails, or has refused rows without a writer attestation.
fn maintain_check(
    store: Store,
    sealer: Option<crate::integrity::sealer::SealerState>,
    interval: std::time::Duration,
) -> crate::health::Check {
    let db = database_check(store);
    Arc::new(move || {
        let mut report = db();
        let Some(sealer) = &sealer else {
            report.detail.insert(
                "sealing".into(),
                json!("off (no integrity.signing_key_file)"),
            );
            return report;
        };
        let s = sealer
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        report.detail.insert(
            "sealing".into(),
            json!({
                "lag_seconds": s.lag_seconds,
                "last_seal": s.last_seal,
                "unpublished": s.unpublished,
                "attestation": match (s.attestation, s.attestation_waiting) {
                    (false, _) => "off (no writer key)",
                    (true, true) => "waiting for the first attested write",
                    (true, false) => "on",
                },
                "unattested_rows": s.unattested,
            }),
        );
        if report.status != Status::Up {
            return report;
        }
        if let Some(m) = &s.tip_mismatch {
            report.status = Status::Down;
            report.reason = Some(format!("sealing refused: {m}"));
            return report;
        }
        let limit = 3.0 * interval.as_secs_f64();
        let reason = match (&s.error, s.lag_seconds > limit) {
            // First: a refused row also fails the self-check of the seal whose range holds it.
            _ if s.unattested > 0 => Some(format!(
                "{} stored row(s) without a valid writer attestation were not sealed (inserted \
                 or changed behind the sink's back, or stored by a writer without \
                 integrity.writer_key_file); run `audit-manager verify`",
                s.unattested
            )),
            _ if s.selfcheck.is_some() => s
                .selfcheck
                .as_ref()
                .map(|p| format!("the seal self-check failed: {p}")),
            (Some(e), _) => Some(format!("sealing is failing: {e}")),
            (None, true) => Some(format!(
                "the oldest unsealed row is {:.0}s old, more than 3 x integrity.seal_interval; \
                 check the sealer's log",
                s.lag_seconds
            )),
            _ => None,
        };
        if let Some(reason) = reason {
            report.status = Status::Degraded;
            report.reason = Some(reason);
        }
        report
    })
}

/// Sink and maintain are down (AUD-006) while the database is unreachable; ingest is not
/// affected.
fn database_check(store: Store) -> crate::health::Check {
    Arc::new(move || {
        let state = store.state();
        let mut detail = serde_json::Map::new();
        detail.insert(
            "database".into(),
            json!(if state.error.is_none() { "UP" } else { "DOWN" }),
        );
        let mut report = RoleReport::up(detail);
        if let Some(error) = state.error {
            report.status = Status::Down;
            report.code = Some("AUD-006");
            report.reason = Some(format!("database unreachable: {error}"));
        }
        report
    })
}

fn ingest_check(spool: Spool, auth: Option<Authenticator>) -> crate::health::Check {
    Arc::new(move || {
        let s = spool.stats();
        let mut detail = serde_json::Map::new();
        detail.insert(
            "spool".into(),
            json!({
                "events": s.live_events,
                "bytes": s.live_bytes,
                "max_bytes": s.max_bytes,
                "oldest_event_age_seconds": s.oldest_age_secs(now_ms()),
                "quarantined": s.quarantined,
                "quarantined_bytes": s.quarantined_bytes,
                "used_bytes": s.used_bytes(),
            }),
        );
        let mut report = RoleReport::up(detail);
        if let Err(e) = spool.health() {
            report.status = Status::Down;
            report.code = Some("AUD-009");
            report.reason = Some(format!("spool writes are failing: {e}"));
            return report;
        }
        let mut degraded = Vec::new();
        // Quarantined records count toward the bound too (a quarantine flood fills it).
        if s.used_bytes().saturating_mul(10) >= s.max_bytes.saturating_mul(9) {
            degraded.push(
                "spool is at least 90% full (live events plus quarantine): ingest answers 503 \
                 AUD-004 once it is full; check the forwarder and Kafka, and the quarantine"
                    .to_owned(),
            );
        }
        if s.quarantined > 0 {
            degraded.push(format!(
                "{} record(s) in the spool quarantine (refused by Kafka or found damaged), \
                 not being delivered; inspect them with `audit-manager spool export --quarantine` \
                 and, once the cause is fixed, `audit-manager spool requeue` them",
                s.quarantined
            ));
        }
        if let Some(problem) = auth.as_ref().and_then(Authenticator::problem) {
            degraded.push(problem);
        }
        if !degraded.is_empty() {
            report.status = Status::Degraded;
            report.reason = Some(degraded.join("; "));
        }
        report
    })
}
