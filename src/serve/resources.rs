//! What `serve` opens once for every role: the development broker, the spool, the principals,
//! the listener (with its TLS files) and the database.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::EMBEDDED_KAFKA;
use crate::auth::Authenticator;
use crate::auth::tls::{TlsFiles, TlsReloader};
use crate::config::{AuthMode, Config, Role};
use crate::kafka::dev::EmbeddedKafka;
use crate::role::{RoleContext, StartOptions};
use crate::spool::{self, Spool, SpoolOptions};
use crate::store::Store;

/// Connections for the sink (`DEFAULT_INSERT_PARALLELISM` statements per batch, plus partition
/// creation), maintain and the health pings, which must not wait behind the inserts.
const DB_POOL_SIZE: u32 = crate::store::DEFAULT_INSERT_PARALLELISM as u32 + 2;

/// The shared resources, and what only `serve` itself uses of them.
pub struct Resources {
    pub context: RoleContext,
    pub listener: TcpListener,
    pub addr: SocketAddr,
    pub tls: Option<TlsReloader>,
    /// Stopped last, after the forwarder flushed into it.
    pub embedded_kafka: Option<EmbeddedKafka>,
}

impl Resources {
    /// Opens what the configured roles need.
    pub async fn open(
        mut config: Config,
        shutdown: &CancellationToken,
        options: StartOptions,
    ) -> anyhow::Result<Resources> {
        let metrics = crate::metrics::install();
        crate::metrics::spawn_upkeep(metrics.clone(), shutdown.clone());
        let embedded_kafka = embedded_kafka(&mut config).await?;
        let spool = if config.has_role(Role::Ingest) || config.has_role(Role::Forward) {
            Some(open_spool(&config, &options).await?)
        } else {
            None
        };
        let auth = load_auth(&config, shutdown).await?;
        let tls = match TlsFiles::from_config(&config.http.tls) {
            Some(files) => Some(
                tokio::task::spawn_blocking(move || TlsReloader::load(files))
                    .await?
                    .context("cannot start TLS on the listener")?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(config.http.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (http.listen): is another process using the port?",
                    config.http.listen
                )
            })?;
        let addr = listener.local_addr()?;
        let direct = config.has_role(Role::Forward)
            && config.forward.target == crate::config::ForwardTarget::Postgres;
        let store = if config.has_role(Role::Sink) || config.has_role(Role::Maintain) || direct {
            Some(
                Store::connect_lazy(&config.database.url, DB_POOL_SIZE)
                    .context("invalid database.url")?,
            )
        } else {
            None
        };
        let context = RoleContext {
            config: std::sync::Arc::new(config),
            spool,
            store,
            auth,
            metrics,
            shutdown: shutdown.clone(),
            embedded_kafka: embedded_kafka.is_some(),
            options,
        };
        Ok(Resources {
            context,
            listener,
            addr,
            tls,
            embedded_kafka,
        })
    }
}

/// Starts the in-process development broker when `kafka.bootstrap_servers` asks for it and a
/// role uses Kafka; every role then talks to it through the ordinary client path.
async fn embedded_kafka(config: &mut Config) -> anyhow::Result<Option<EmbeddedKafka>> {
    let seals = config.has_role(Role::Maintain)
        && config.integrity.signing_key_file.is_some()
        && !config.seal_topic().is_empty();
    let forwards_to_kafka = config.has_role(Role::Forward)
        && config.forward.target == crate::config::ForwardTarget::Kafka;
    let uses_kafka = forwards_to_kafka || config.has_role(Role::Sink) || seals;
    if !uses_kafka || config.kafka.bootstrap_servers != EMBEDDED_KAFKA {
        return Ok(None);
    }
    let mut topics = vec![config.kafka.topic.clone(), config.kafka.dlq_topic.clone()];
    if seals {
        topics.push(config.seal_topic().to_string());
    }
    let partitions = config.kafka.topic_partitions;
    let k =
        tokio::task::spawn_blocking(move || EmbeddedKafka::start(partitions, &topics)).await??;
    config.kafka.bootstrap_servers = k.bootstrap_servers().to_string();
    Ok(Some(k))
}

/// Opens the spool under `spool.path` (or with the test seam's opener).
async fn open_spool(config: &Config, options: &StartOptions) -> anyhow::Result<Spool> {
    let so = SpoolOptions {
        dir: config.spool.path.clone(),
        max_bytes: config.spool.max_bytes,
        max_pending_appends: config.spool.max_pending_appends,
    };
    #[cfg(feature = "failpoints")]
    if let Some(opener) = options.spool_opener.clone() {
        let file = spool::store::file_path(&so.dir);
        let spool =
            tokio::task::spawn_blocking(move || Spool::open_with(opener, file, &so)).await??;
        return Ok(spool.with_max_pending_bytes(config.spool.max_pending_bytes));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = options;
    let cache = usize::try_from(config.spool.cache_bytes).unwrap_or(usize::MAX);
    let spool = tokio::task::spawn_blocking(move || {
        let opener = spool::store::file_opener_with_cache(&so.dir, cache)?;
        Spool::open_with(opener, spool::store::file_path(&so.dir), &so)
    })
    .await??;
    Ok(spool.with_max_pending_bytes(config.spool.max_pending_bytes))
}

/// Loads `auth.tokens_file` (and keeps reloading it) unless `auth.mode` is `none`, which is
/// warned about when the listener is reachable from other hosts.
async fn load_auth(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Authenticator>> {
    match (config.auth.mode, &config.auth.tokens_file) {
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
            Ok(None)
        }
        (mode, Some(path)) => {
            let path = path.clone();
            let auth =
                tokio::task::spawn_blocking(move || Authenticator::load(mode, &path)).await??;
            auth.spawn_reloader(shutdown.child_token());
            Ok(Some(auth))
        }
        // `Config::validate` refuses token and mtls without a tokens file.
        (mode, None) => anyhow::bail!("auth.mode {} needs auth.tokens_file", mode.as_str()),
    }
}
