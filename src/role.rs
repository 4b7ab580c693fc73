//! The one shape of a role: `start(&RoleContext) -> anyhow::Result<Started>`.
//!
//! A role is built, then run. `start` checks its configuration and builds its clients (a
//! failure there stops `serve` before anything runs), and returns its long-running tasks as
//! futures together with its `/health` check. `serve` spawns every role's tasks under one
//! [`Supervisor`](crate::shutdown::Supervisor) once all roles have started; a task that returns
//! an error is a role failure (the error text is what the supervisor logs and `serve` returns).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::config::{Config, Role};
use crate::health::Check;
use crate::shutdown::Task;
use crate::spool::Spool;
use crate::store::Store;

/// Seams for tests; production uses [`StartOptions::default`]. Without the `failpoints` cargo
/// feature (release builds) it has no fields.
#[derive(Default)]
pub struct StartOptions {
    /// Opens the spool database instead of the file under `spool.path` (failure injection).
    #[cfg(feature = "failpoints")]
    pub spool_opener: Option<crate::spool::Opener>,
    /// Forward-loop tuning instead of [`ForwardSettings::default`] (tests shorten timings).
    ///
    /// [`ForwardSettings::default`]: crate::config::ForwardSettings
    #[cfg(feature = "failpoints")]
    pub forward: Option<crate::config::ForwardSettings>,
    /// Makes the task panic once the token is cancelled (supervision tests; see
    /// [`Supervisor::inject_panic`](crate::shutdown::Supervisor::inject_panic)).
    #[cfg(feature = "failpoints")]
    pub inject_panic: Option<(Task, CancellationToken)>,
}

/// What every role starts from: the configuration and the resources `serve` opened once for
/// all of them.
pub struct RoleContext {
    pub config: Arc<Config>,
    /// The spool, when this process runs ingest or forward.
    pub spool: Option<Spool>,
    /// The database (read-write), when this process runs sink or maintain. Its reachability
    /// monitor ([`Task::DatabaseMonitor`]) runs whenever it is open.
    pub store: Option<Store>,
    /// The principals, unless `auth.mode` is `none`.
    pub auth: Option<Authenticator>,
    pub metrics: PrometheusHandle,
    /// The root token: cancelled on a shutdown signal or a role failure. Tasks take a child.
    pub shutdown: CancellationToken,
    /// The in-process development broker runs: its topics exist already.
    pub embedded_kafka: bool,
    /// Test seams.
    pub options: StartOptions,
}

impl RoleContext {
    /// The spool; `serve` opens it for ingest and forward.
    pub fn spool(&self) -> anyhow::Result<&Spool> {
        self.spool
            .as_ref()
            .context("the spool is not open (it is opened for the ingest and forward roles)")
    }

    /// The read-write database; `serve` opens it for sink and maintain.
    pub fn store(&self) -> anyhow::Result<&Store> {
        self.store
            .as_ref()
            .context("the database is not open (it is opened for the sink and maintain roles)")
    }
}

/// A long-running task of a role: it runs until the root token is cancelled, and returns an
/// error (or panics) only when the role can no longer work.
pub type RoleTask = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A started role: its tasks, ready to be spawned, and its `/health` entry.
pub struct Started {
    pub role: Role,
    pub tasks: Vec<(Task, RoleTask)>,
    pub health: Check,
    /// The tasks whose end makes the role DOWN on `/health` (its own and shared ones such as
    /// the HTTP listener or the database monitor).
    pub needs: Vec<Task>,
    /// What the role lends the HTTP API.
    pub api: ApiParts,
}

impl Started {
    /// `role` with its health check, DOWN once one of `needs` has ended.
    pub fn new(role: Role, health: Check, needs: &[Task]) -> Started {
        Started {
            role,
            tasks: Vec::new(),
            health,
            needs: needs.to_vec(),
            api: ApiParts::default(),
        }
    }

    /// Adds a long-running task.
    pub fn task<F>(mut self, task: Task, fut: F) -> Started
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.push((task, Box::pin(fut)));
        self
    }
}

/// What roles lend the HTTP API besides the shared resources.
#[derive(Default)]
pub struct ApiParts {
    /// The query role's read-only database and the keys it checks seals with.
    pub query: Option<(Store, Vec<ed25519_dalek::VerifyingKey>)>,
}

/// Waits for a task spawned elsewhere (e.g. [`Store::spawn_monitor`]); a panic inside it is a
/// panic of the waiting task, and dropping the wait aborts it.
pub async fn joined(handle: tokio::task::JoinHandle<()>) -> anyhow::Result<()> {
    match tokio_util::task::AbortOnDropHandle::new(handle).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(e.into()),
    }
}
