//! The PostgreSQL client: schema, monthly partitions and idempotent inserts into `audit_events`.
//!
//! - [`schema`]: the DDL of docs/contract.md, applied idempotently (and the database created
//!   when it is missing and the role may);
//! - [`partitions`]: listing partitions with bounds read from the catalog, creating months on
//!   demand and ahead, dropping expired ones under an advisory lock;
//! - [`insert`]: batched idempotent inserts (`COPY` with a fallback to `INSERT … ON CONFLICT DO
//!   NOTHING`), so every redelivery of an event collapses on the key `(id, occurred_at)`;
//! - [`month`]: the calendar arithmetic (pure).
//!
//! The [`Store`] also tracks whether the database is reachable, for `/health` (AUD-006).

pub mod error;
pub mod insert;
pub mod month;
pub mod partitions;
pub mod schema;

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

pub use error::{StoreError, is_retriable};
pub use insert::{InsertMethod, Inserted};
pub use month::{Month, months_ahead, retention_cutoff};
pub use partitions::{MaintainReport, PartitionInfo};

/// How long a caller waits for a pooled connection before the attempt counts as failed.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Concurrent insert statements per batch. Each waits for its own commit's WAL flush, so more
/// statements than server cores still pay: on the 2-core reference machine four beat two by
/// ~10% end to end and two beat one by ~1.6x (see `BENCHMARKS.md`).
pub const DEFAULT_INSERT_PARALLELISM: usize = 4;
/// How often the health monitor pings the database.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// Reachability of the database as last observed.
#[derive(Debug, Clone, Default)]
pub struct DbState {
    /// The last error, `None` after a success.
    pub error: Option<String>,
}

/// A pooled PostgreSQL client for `audit_events`.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    options: PgConnectOptions,
    /// Months known to have a partition (saves a catalog query per batch).
    covered: Arc<Mutex<HashSet<Month>>>,
    state: Arc<Mutex<DbState>>,
    method: InsertMethod,
    /// Concurrent insert statements per batch.
    parallelism: usize,
}

impl Store {
    /// A lazily connecting pool for `url`: no connection is made until the first query, so a
    /// role can start while the database is down and report it in `/health`.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::new("parsing database.url", e))?
            .application_name("audit-manager")
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        Ok(Store {
            pool,
            options,
            covered: Arc::default(),
            state: Arc::new(Mutex::new(DbState {
                error: Some("not connected yet".into()),
            })),
            method: InsertMethod::default(),
            parallelism: DEFAULT_INSERT_PARALLELISM,
        })
    }

    /// Chooses how batches are written (both are idempotent; see `BENCHMARKS.md`).
    pub fn with_insert_method(mut self, method: InsertMethod) -> Store {
        self.method = method;
        self
    }

    /// How many insert statements one batch may run at once (at least 1). Each takes a pooled
    /// connection, so keep it below the pool size.
    pub fn with_insert_parallelism(mut self, n: usize) -> Store {
        self.parallelism = n.max(1);
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database name from the URL.
    pub fn database_name(&self) -> String {
        self.options.get_database().unwrap_or("postgres").to_owned()
    }

    /// Last observed reachability.
    pub fn state(&self) -> DbState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Records the outcome of a database operation for `/health`.
    pub fn observe<T>(&self, result: &Result<T, StoreError>) {
        let error = match result {
            Ok(_) => None,
            // A data error on one batch says nothing about reachability.
            Err(e) if !e.is_retriable() => return,
            Err(e) => Some(e.to_string()),
        };
        if let Ok(mut s) = self.state.lock() {
            s.error = error;
        }
    }

    /// `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let r = sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::new("checking the connection", e));
        self.observe(&r);
        r
    }

    /// Pings the database every few seconds until `token` is cancelled, so `/health` notices
    /// an outage even when no batch is being written.
    pub fn spawn_monitor(&self, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                // ping() bounds itself by the pool's acquire timeout.
                let _ = store.ping().await;
                tokio::select! {
                    _ = tokio::time::sleep(PING_INTERVAL) => {}
                    _ = token.cancelled() => return,
                }
            }
        })
    }

    /// Forgets which months have partitions (after "no partition for row" or a drop).
    pub fn forget_partitions(&self) {
        if let Ok(mut c) = self.covered.lock() {
            c.clear();
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
