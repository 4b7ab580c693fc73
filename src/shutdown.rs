//! Process-wide shutdown and supervision of the roles' tasks.
//!
//! One root [`CancellationToken`] (cancelled by SIGTERM/SIGINT) and one [`TaskTracker`] hold
//! every long-running task of `serve`: the HTTP server, the forwarder, the sink, maintain and the
//! database monitor. Each task is spawned through a [`Supervisor`], which watches it:
//!
//! - a task that returns after the token was cancelled has drained: that is a normal stop. The
//!   HTTP task drains within `http.shutdown_grace`: requests still in flight then are cut
//!   (none of them was answered 202), and `serve` closes the spool only after it returned, so
//!   whatever their handlers had queued for the spool is still committed;
//! - a task that returns, fails or panics *before* the token was cancelled is a role failure.
//!   It is logged and recorded, and the root token is cancelled so every other role drains what
//!   it can (in-flight requests are answered, the forwarder commits its acks, the sink commits
//!   what it stored). `serve` then returns the failure and the process exits non-zero, so the
//!   orchestrator restarts it instead of leaving a process that answers but no longer works.
//!
//! The [`TasksView`] lets `/health` and `/ready` see which tasks have ended, so a dead role is
//! never reported UP.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancels `token` on the first SIGTERM or SIGINT. A second signal exits at once.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received: draining (send it again to exit at once)");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("second shutdown signal: exiting without draining");
        std::process::exit(130);
    });
}

/// Waits for the next SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the process with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The long-running tasks of `serve`; each belongs to one or more roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// The HTTP listener (API and ingest).
    Http,
    /// The forward loop (spool → Kafka).
    Forward,
    /// The sink loop (Kafka → PostgreSQL).
    Sink,
    /// Partition maintenance.
    Maintain,
    /// Sealing stored rows (maintain role).
    Sealer,
    /// Archiving closed months to object storage (maintain role, with `archive.url`).
    Archiver,
    /// The database reachability monitor shared by sink and maintain.
    DatabaseMonitor,
    /// The reachability monitor of the query role's read-only pool.
    QueryMonitor,
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Task::Http => "http",
            Task::Forward => "forward",
            Task::Sink => "sink",
            Task::Maintain => "maintain",
            Task::Sealer => "sealer",
            Task::Archiver => "archiver",
            Task::DatabaseMonitor => "database monitor",
            Task::QueryMonitor => "query database monitor",
        })
    }
}

/// A task that ended before shutdown: the reason `serve` exits non-zero.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the {task} task stopped before shutdown ({reason}); the other roles were drained and the \
     process exits non-zero so that it is restarted (see the log lines before this one)"
)]
pub struct TaskFailure {
    pub task: Task,
    /// What happened: "panicked: …", "failed: …" or "returned".
    pub reason: String,
}

#[derive(Default)]
struct TaskState {
    /// Set once, when the task has ended: `Some(reason)` for a failure, `None` for a drain.
    ended: OnceLock<Option<String>>,
}

#[derive(Default)]
struct Shared {
    tasks: Mutex<Vec<(Task, Arc<TaskState>)>>,
    /// Set by `serve` once every role of the process has been spawned.
    started: AtomicBool,
    /// The first failure; later ones are only logged.
    failure: OnceLock<TaskFailure>,
    /// Test seam: tasks that panic when their token is cancelled.
    #[cfg(feature = "failpoints")]
    injected: Mutex<Vec<(Task, CancellationToken)>>,
}

/// Spawns and watches the tasks of one `serve` process (see the module docs).
pub struct Supervisor {
    token: CancellationToken,
    tracker: TaskTracker,
    shared: Arc<Shared>,
}

impl Supervisor {
    /// A supervisor whose failures cancel `token` (the process's root token).
    pub fn new(token: CancellationToken) -> Supervisor {
        Supervisor {
            token,
            tracker: TaskTracker::new(),
            shared: Arc::default(),
        }
    }

    /// The root token: cancelled on a shutdown signal or a task failure.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// What `/health` and `/ready` read.
    pub fn view(&self) -> TasksView {
        TasksView(self.shared.clone())
    }

    /// Test seam: `task` panics (inside its own tokio task, as a bug would) when `trigger` is
    /// cancelled. Production code never calls this; `serve::StartOptions` exposes it to tests.
    #[cfg(feature = "failpoints")]
    pub fn inject_panic(&self, task: Task, trigger: CancellationToken) {
        self.shared
            .injected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((task, trigger));
    }

    /// `role` could not start: logged with its error, and the root token is cancelled so that
    /// whatever already runs drains. `serve` then returns `error` (the process exits non-zero).
    pub fn start_failed(&self, role: impl fmt::Display, error: &anyhow::Error) {
        let error = crate::config::redact::scrub(&format!("{error:#}")).into_owned();
        tracing::error!(
            %role,
            %error,
            "a role failed to start: draining the others, then exiting non-zero"
        );
        self.token.cancel();
    }

    /// Every role has been spawned: `/ready` stops answering "starting".
    pub fn mark_started(&self) {
        self.shared.started.store(true, Ordering::Release);
    }

    /// Runs `fut` as `task` under supervision. It must run until the root token is cancelled;
    /// returning earlier (with or without an error) or panicking is a role failure.
    pub fn spawn<F, E>(&self, task: Task, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let state = Arc::new(TaskState::default());
        self.shared
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((task, state.clone()));
        #[cfg(feature = "failpoints")]
        let fut = self.with_injected_panic(task, fut);
        let inner = tokio::spawn(
            self.tracker
                .track_future(async move { fut.await.map_err(|e| e.to_string()) }),
        );
        let (token, shared) = (self.token.clone(), self.shared.clone());
        self.tracker.spawn(async move {
            let failure = match inner.await {
                Ok(Ok(())) if token.is_cancelled() => None,
                Ok(Ok(())) => Some("returned".to_owned()),
                Ok(Err(e)) => Some(format!("failed: {e}")),
                Err(e) if e.is_panic() => Some(format!("panicked: {}", panic_message(e))),
                Err(e) => Some(format!("was cancelled: {e}")),
            };
            let _ = state.ended.set(failure.clone());
            let Some(reason) = failure else {
                tracing::debug!(%task, "task drained");
                return;
            };
            tracing::error!(
                %task,
                %reason,
                "a role stopped before shutdown: draining the others, then exiting non-zero so \
                 the process is restarted"
            );
            let _ = shared.failure.set(TaskFailure { task, reason });
            token.cancel();
        });
    }

    /// `fut`, made to panic once the trigger [`Supervisor::inject_panic`] set for `task` is
    /// cancelled.
    #[cfg(feature = "failpoints")]
    fn with_injected_panic<F, E>(
        &self,
        task: Task,
        fut: F,
    ) -> impl Future<Output = Result<(), E>> + Send + 'static
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Send + 'static,
    {
        let trigger = self
            .shared
            .injected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(t, _)| *t == task)
            .map(|(_, trigger)| trigger.clone());
        async move {
            match trigger {
                None => fut.await,
                Some(trigger) => tokio::select! {
                    r = fut => r,
                    _ = trigger.cancelled() => panic!("injected panic in the {task} task (test seam)"),
                },
            }
        }
    }

    /// Runs a task spawned elsewhere (its [`JoinHandle`](tokio::task::JoinHandle)) as `task`.
    /// A panic inside it is a panic of `task`; should the watcher itself panic (test seam), the
    /// task is aborted.
    pub fn watch(&self, task: Task, handle: tokio::task::JoinHandle<()>) {
        let handle = tokio_util::task::AbortOnDropHandle::new(handle);
        self.spawn(task, async move {
            match handle.await {
                Ok(()) => Ok(()),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(e),
            }
        });
    }

    /// Waits until every task has ended (they end once the root token is cancelled, which a
    /// failure does too). Returns the first failure, if a task failed.
    pub async fn wait(&self) -> Result<(), TaskFailure> {
        self.tracker.close();
        self.tracker.wait().await;
        match self.shared.failure.get() {
            Some(f) => Err(f.clone()),
            None => Ok(()),
        }
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// A read-only view of the supervised tasks, for `/health` and `/ready`.
#[derive(Clone)]
pub struct TasksView(Arc<Shared>);

impl TasksView {
    /// Why `task` is not running: `Some` once it has ended (a failure reason, or "stopped" after
    /// a drain). `None` while it runs, or if this process does not run it.
    pub fn ended(&self, task: Task) -> Option<String> {
        let tasks = self.0.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks
            .iter()
            .filter(|(t, _)| *t == task)
            .find_map(|(_, s)| s.ended.get())
            .map(|failure| failure.clone().unwrap_or_else(|| "stopped".to_owned()))
    }

    /// A task that has ended, with why: the one that failed first if any task failed (the
    /// others then only drained because of it).
    pub fn first_ended(&self) -> Option<(Task, String)> {
        if let Some(f) = self.0.failure.get() {
            return Some((f.task, f.reason.clone()));
        }
        let tasks = self.0.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.iter().find_map(|(t, s)| {
            s.ended
                .get()
                .map(|f| (*t, f.clone().unwrap_or_else(|| "stopped".to_owned())))
        })
    }

    /// Every role of the process has been spawned.
    pub fn started(&self) -> bool {
        self.0.started.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_drained_task_is_no_failure() {
        let token = CancellationToken::new();
        let sup = Supervisor::new(token.clone());
        let t = token.clone();
        sup.spawn(Task::Sink, async move {
            t.cancelled().await;
            Ok::<(), String>(())
        });
        sup.mark_started();
        assert_eq!(sup.view().ended(Task::Sink), None);
        token.cancel();
        sup.wait().await.expect("a drain is not a failure");
        assert_eq!(sup.view().ended(Task::Sink).as_deref(), Some("stopped"));
    }

    #[tokio::test]
    async fn a_panic_cancels_the_rest_and_is_returned() {
        let token = CancellationToken::new();
        let sup = Supervisor::new(token.clone());
        let t = token.clone();
        sup.spawn(Task::Http, async move {
            t.cancelled().await;
            Ok::<(), String>(())
        });
        sup.spawn(Task::Forward, async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("boom");
            #[allow(unreachable_code)]
            Ok::<(), String>(())
        });
        let failure = sup.wait().await.expect_err("the panic is a failure");
        assert_eq!(failure.task, Task::Forward);
        assert!(failure.reason.contains("panicked: boom"), "{failure}");
        assert!(token.is_cancelled(), "the failure cancelled the root token");
        let ended = sup.view().ended(Task::Forward).unwrap_or_default();
        assert!(ended.contains("boom"), "{ended}");
    }

    #[tokio::test]
    async fn returning_early_or_failing_is_a_failure() {
        for fail in [false, true] {
            let token = CancellationToken::new();
            let sup = Supervisor::new(token.clone());
            sup.spawn(Task::Maintain, async move {
                if fail {
                    Err("no route to host")
                } else {
                    Ok(())
                }
            });
            let failure = sup.wait().await.expect_err("an early end is a failure");
            let expected = if fail {
                "failed: no route to host"
            } else {
                "returned"
            };
            assert_eq!(failure.reason, expected);
            assert!(token.is_cancelled());
        }
    }

    #[tokio::test]
    async fn a_watched_handle_that_panics_is_reported_with_its_message() {
        let token = CancellationToken::new();
        let sup = Supervisor::new(token.clone());
        sup.watch(
            Task::DatabaseMonitor,
            tokio::spawn(async { panic!("monitor bug") }),
        );
        let failure = sup.wait().await.expect_err("failure");
        assert_eq!(failure.task, Task::DatabaseMonitor);
        assert_eq!(failure.reason, "panicked: monitor bug");
    }

    #[tokio::test]
    async fn a_role_that_cannot_start_drains_what_already_runs() {
        let token = CancellationToken::new();
        let sup = Supervisor::new(token.clone());
        let t = token.clone();
        sup.spawn(Task::Http, async move {
            t.cancelled().await;
            Ok::<(), String>(())
        });
        sup.start_failed(
            "sink",
            &anyhow::anyhow!("cannot load integrity.writer_key_file"),
        );
        assert!(token.is_cancelled());
        sup.wait().await.expect("what ran only drained");
        assert_eq!(sup.view().ended(Task::Http).as_deref(), Some("stopped"));
    }

    #[cfg(feature = "failpoints")]
    #[tokio::test]
    async fn the_seam_panics_the_chosen_task_only() {
        let token = CancellationToken::new();
        let sup = Supervisor::new(token.clone());
        let trigger = CancellationToken::new();
        sup.inject_panic(Task::Sink, trigger.clone());
        for task in [Task::Sink, Task::Maintain] {
            let t = token.clone();
            sup.spawn(task, async move {
                t.cancelled().await;
                Ok::<(), String>(())
            });
        }
        tokio::task::yield_now().await;
        assert_eq!(sup.view().first_ended(), None);
        trigger.cancel();
        let failure = sup.wait().await.expect_err("failure");
        assert_eq!(failure.task, Task::Sink);
        assert!(failure.reason.contains("test seam"), "{failure}");
        assert_eq!(sup.view().ended(Task::Maintain).as_deref(), Some("stopped"));
    }
}
