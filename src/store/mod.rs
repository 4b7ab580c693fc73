//! The PostgreSQL client. Every SQL statement of the service is here (a test keeps it so);
//! other modules call the functions below, named for what they do.
//!
//! - [`columns`]: the one list of `audit_events` columns every statement naming them is built
//!   from, and [`StoredRow`], a whole row as read;
//! - [`locks`]: the advisory locks the processes share;
//! - [`schema`]: the DDL of docs/contract.md, applied idempotently (and the database created
//!   when it is missing and the role may), with [`integrity_schema`], the tables of tamper
//!   evidence;
//! - [`partitions`]: listing partitions with bounds read from the catalog, creating months on
//!   demand and ahead, dropping expired ones under an advisory lock, each drop recorded in
//!   [`retention`];
//! - [`insert`]: batched idempotent inserts (`COPY` with a fallback to `INSERT … ON CONFLICT DO
//!   NOTHING`), so every redelivery of an event collapses on the key `(id, occurred_at)`, each
//!   transaction attested in [`attestations`] when the sink has a writer key;
//! - [`rows`], [`seals`]: the reads and writes of the sealer, `verify` and `GET /seals`;
//! - [`query`]: the investigators' read path;
//! - [`dead_letters`]: `audit_dead_letters`, the dead letters of Kafka-less mode;
//! - [`month`]: the calendar arithmetic (pure).
//!
//! The [`Store`] also tracks whether the database is reachable and accepts writes, for
//! `/health` (AUD-006). A success clears only what it proves: a health ping proves the server
//! answers, not that the role may still insert, so a systemic error of a write (a revoked
//! privilege, a changed column) stays on `/health` until a write succeeds again.

pub mod archives;
pub mod attestations;
pub mod columns;
pub mod dead_letters;
pub mod error;
pub mod ident;
pub mod insert;
pub mod integrity_schema;
pub mod locks;
pub mod month;
pub mod partitions;
pub mod query;
pub mod retention;
pub mod rows;
pub mod schema;
pub mod seals;
pub mod subject_keys;

#[cfg(test)]
mod guard;
#[cfg(test)]
mod scratch;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio_util::sync::CancellationToken;

pub use crate::config::{UrlError, connect_options};
pub use attestations::Attest;
pub use columns::StoredRow;
pub use error::{ErrorClass, StoreError, classify, is_retriable};
pub use insert::{InsertMethod, Inserted};
pub use locks::AdvisoryLock;
pub use month::{Month, months_ahead, retention_cutoff};
pub use partitions::{MaintainReport, PartitionInfo};

/// How long a caller waits for a pooled connection before the attempt counts as failed.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Concurrent insert statements per batch. Each waits for its own commit's WAL flush, so more
/// statements than server cores still pay: on the 2-core reference machine four beat two by
/// ~10% end to end and two beat one by ~1.6x (see `docs/benchmark-history.md`, "PostgreSQL
/// sink").
pub const DEFAULT_INSERT_PARALLELISM: usize = 4;
/// How often the health monitor pings the database.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// Above this a statement of [`Store::for_long_reads`] is logged, at debug level only.
const SLOW_READ: Duration = Duration::from_secs(1);

/// Reachability of the database as last observed.
#[derive(Debug, Clone, Default)]
pub struct DbState {
    /// What is wrong, `None` when the last operations succeeded: a systemic error (the
    /// database refuses work until an operator acts) before a transient one. The text carries
    /// the SQLSTATE and what to do.
    pub error: Option<String>,
}

/// The kind of operation an outcome belongs to (see [`Observed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `SELECT 1` of the health monitor.
    Ping,
    /// Inserting rows into `audit_events`.
    Write,
    /// Schema and partition maintenance.
    Other,
}

impl Operation {
    const ALL: [Operation; 3] = [Operation::Write, Operation::Other, Operation::Ping];

    fn index(self) -> usize {
        match self {
            Operation::Write => 0,
            Operation::Other => 1,
            Operation::Ping => 2,
        }
    }
}

/// The last error of each kind of operation. A success of one kind clears its own error and
/// every transient one (the server answers again), but not another kind's systemic error: a
/// ping or a maintenance pass that succeeds says nothing about the INSERT privilege.
#[derive(Debug, Clone, Default)]
struct Observed {
    errors: [Option<(ErrorClass, String)>; 3],
}

impl Observed {
    fn record(&mut self, op: Operation, outcome: Result<(), (ErrorClass, String)>) {
        match outcome {
            Ok(()) => {
                self.errors[op.index()] = None;
                for e in &mut self.errors {
                    if e.as_ref().is_some_and(|(c, _)| *c == ErrorClass::Transient) {
                        *e = None;
                    }
                }
            }
            // A verdict on one row says nothing about the database.
            Err((ErrorClass::RecordSpecific, _)) => {}
            Err(e) => self.errors[op.index()] = Some(e),
        }
    }

    fn state(&self) -> DbState {
        let of_class = |class: ErrorClass| {
            Operation::ALL.iter().find_map(|op| {
                self.errors[op.index()]
                    .as_ref()
                    .filter(|(c, _)| *c == class)
                    .map(|(_, text)| text.clone())
            })
        };
        DbState {
            error: of_class(ErrorClass::Systemic).or_else(|| of_class(ErrorClass::Transient)),
        }
    }
}

/// A pooled PostgreSQL client for `audit_events`.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    options: PgConnectOptions,
    /// Months known to have a partition (saves a catalog query per batch).
    covered: Arc<Mutex<HashSet<Month>>>,
    state: Arc<Mutex<Observed>>,
    method: InsertMethod,
    /// Concurrent insert statements per batch.
    parallelism: usize,
    /// The writer key every storing transaction is attested with (`integrity.writer_key_file`).
    attestor: Option<Arc<dyn Attest>>,
    /// Retention drops a month only when every row is in a verified archive part
    /// (`archive.require_before_drop` with `archive.url`).
    archive_gate: bool,
}

impl Store {
    /// A lazily connecting pool for `url`: no connection is made until the first query, so a
    /// role can start while the database is down and report it in `/health`. Every connection
    /// of the service is made with these options ([`connect_options`]: TLS settings included).
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let parsed = connect_options(url).map_err(|e| {
            StoreError::new("parsing database.url", sqlx::Error::Configuration(e.into()))
        })?;
        parsed.warn_ignored();
        let options = parsed
            .options
            .application_name("audit-manager")
            .log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        let mut observed = Observed::default();
        observed.record(
            Operation::Ping,
            Err((ErrorClass::Transient, "not connected yet".into())),
        );
        Ok(Store {
            pool,
            options,
            covered: Arc::default(),
            state: Arc::new(Mutex::new(observed)),
            method: InsertMethod::default(),
            parallelism: DEFAULT_INSERT_PARALLELISM,
            attestor: None,
            archive_gate: false,
        })
    }

    /// The same store for a command that reads on purpose for long (`verify` streams every
    /// row in one statement): statements over a second are not logged as slow warnings.
    pub fn for_long_reads(self) -> Store {
        let options = self
            .options
            .clone()
            .log_slow_statements(tracing::log::LevelFilter::Debug, SLOW_READ);
        self.pool.set_connect_options(options.clone());
        Store { options, ..self }
    }

    /// A lazily connecting pool for reads only: every session is read-only
    /// (`default_transaction_read_only`), bounds each statement by `statement_timeout`, renders
    /// times in UTC and plans each statement for its actual values (`plan_cache_mode =
    /// force_custom_plan`: partition pruning and index choice at plan time).
    pub fn connect_read_only(
        url: &str,
        max_connections: u32,
        statement_timeout: std::time::Duration,
    ) -> Result<Store, StoreError> {
        let mut store = Store::connect_lazy(url, max_connections)?;
        let timeout_ms = statement_timeout.as_millis().max(1).to_string();
        let options = store.options.clone().options([
            ("default_transaction_read_only", "on"),
            ("statement_timeout", timeout_ms.as_str()),
            ("TimeZone", "UTC"),
            ("plan_cache_mode", "force_custom_plan"),
        ]);
        store.pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone());
        store.options = options;
        Ok(store)
    }

    /// Chooses how batches are written (both are idempotent; see `docs/benchmark-history.md`,
    /// "PostgreSQL sink").
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

    /// Attests every storing transaction with `attestor` (see `integrity::attest`).
    pub fn with_attestor(mut self, attestor: impl Attest + 'static) -> Store {
        self.attestor = Some(Arc::new(attestor));
        self
    }

    /// Makes retention drop a month only when every one of its rows is in a verified archive
    /// part (see `store::archives::unarchived_reason`).
    pub fn with_archive_gate(mut self, on: bool) -> Store {
        self.archive_gate = on;
        self
    }

    /// Whether storing transactions are attested.
    pub fn attests(&self) -> bool {
        self.attestor.is_some()
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
        self.state.lock().map(|s| s.state()).unwrap_or_default()
    }

    /// Records the outcome of a schema or maintenance operation for `/health`.
    pub fn observe<T>(&self, result: &Result<T, StoreError>) {
        self.observe_as(Operation::Other, result);
    }

    /// Records the outcome of an operation of kind `op` for `/health` (see [`Observed`]).
    pub fn observe_as<T>(&self, op: Operation, result: &Result<T, StoreError>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err(e) => Err((e.class(), e.report(Some(self.options.get_username())))),
        };
        if let Ok(mut s) = self.state.lock() {
            s.record(op, outcome);
        }
    }

    /// `SELECT 1`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let r = sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::new("checking the connection", e));
        self.observe_as(Operation::Ping, &r);
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

/// Makes the transaction `tx` just began read-only, reading one snapshot (`REPEATABLE READ`):
/// what it reads in several statements is consistent, a commit in between counted in all or
/// none.
pub async fn repeatable_read_only(tx: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(tx)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(class: ErrorClass, text: &str) -> Result<(), (ErrorClass, String)> {
        Err((class, text.to_string()))
    }

    #[test]
    fn a_ping_does_not_clear_a_systemic_write_error() {
        let mut o = Observed::default();
        o.record(Operation::Write, err(ErrorClass::Systemic, "42501"));
        o.record(Operation::Ping, Ok(()));
        o.record(Operation::Other, Ok(()));
        assert_eq!(o.state().error.as_deref(), Some("42501"));
        o.record(Operation::Write, Ok(()));
        assert_eq!(o.state().error, None);
    }

    #[test]
    fn any_success_clears_transient_errors() {
        let mut o = Observed::default();
        o.record(Operation::Write, err(ErrorClass::Transient, "reset"));
        assert_eq!(o.state().error.as_deref(), Some("reset"));
        o.record(Operation::Ping, Ok(()));
        assert_eq!(o.state().error, None);
    }

    #[test]
    fn systemic_errors_come_first_and_record_errors_are_ignored() {
        let mut o = Observed::default();
        o.record(Operation::Ping, err(ErrorClass::Transient, "reset"));
        o.record(Operation::Other, err(ErrorClass::Systemic, "disk full"));
        o.record(Operation::Write, err(ErrorClass::RecordSpecific, "22P05"));
        assert_eq!(o.state().error.as_deref(), Some("disk full"));
    }
}
