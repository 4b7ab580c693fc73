//! Health of the roles running in this process, as `GET /health` reports it.
//!
//! Each role registers a check: a cheap closure that reads the role's current state (no I/O on
//! the request path). A role that is `Down` makes the endpoint answer 503 with the role's error
//! code; `Degraded` (e.g. Kafka unreachable while the spool absorbs events) answers 200 and
//! says why, because emitters are still being served.
//!
//! A role whose task has ended (see [`crate::shutdown::Supervisor`]) is `Down` whatever its
//! check says: a dead role is never reported UP.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::config::Role;
use crate::shutdown::{Task, TasksView};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Up,
    Degraded,
    Down,
}

/// One role's state.
#[derive(Debug, Clone, Serialize)]
pub struct RoleReport {
    pub status: Status,
    /// The error code explaining `Down` (AUD-005, AUD-006, AUD-009).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub detail: serde_json::Map<String, Value>,
}

impl RoleReport {
    pub fn up(detail: serde_json::Map<String, Value>) -> RoleReport {
        RoleReport {
            status: Status::Up,
            code: None,
            reason: None,
            detail,
        }
    }
}

pub type Check = Arc<dyn Fn() -> RoleReport + Send + Sync>;

/// The registry of role checks.
#[derive(Clone, Default)]
pub struct Health {
    checks: BTreeMap<Role, (Check, Vec<Task>)>,
    tasks: Option<TasksView>,
}

impl Health {
    /// A registry whose roles are `Down` once one of their tasks (see [`Health::register`]) has
    /// ended.
    pub fn supervised(tasks: TasksView) -> Health {
        Health {
            checks: BTreeMap::new(),
            tasks: Some(tasks),
        }
    }

    /// Registers `role` with its check and the tasks it needs running.
    pub fn register(&mut self, role: Role, tasks: &[Task], check: Check) {
        self.checks.insert(role, (check, tasks.to_vec()));
    }

    /// The supervised tasks, when there are any.
    pub fn tasks(&self) -> Option<&TasksView> {
        self.tasks.as_ref()
    }

    /// One role's report: its check, overridden by `Down` when one of its tasks has ended.
    fn role_report(&self, check: &Check, tasks: &[Task]) -> RoleReport {
        let mut report = check();
        let ended = self
            .tasks
            .as_ref()
            .and_then(|view| tasks.iter().find_map(|t| view.ended(*t).map(|r| (*t, r))));
        if let Some((task, why)) = ended {
            report.status = Status::Down;
            report.code = Some("AUD-005");
            report.reason = Some(format!(
                "the {task} task is not running ({why}); the process is shutting down and \
                 exits non-zero after a failure so that it is restarted"
            ));
        }
        report
    }

    /// Runs every check; the overall status is the worst of them.
    pub fn report(&self) -> (Status, BTreeMap<Role, RoleReport>) {
        let reports: BTreeMap<Role, RoleReport> = self
            .checks
            .iter()
            .map(|(r, (c, tasks))| (*r, self.role_report(c, tasks)))
            .collect();
        let worst = reports
            .values()
            .map(|r| r.status)
            .max()
            .unwrap_or(Status::Up);
        (worst, reports)
    }
}

/// The check of a role that needs the database (sink, maintain, query): DOWN (AUD-006) while
/// [`Store::spawn_monitor`](crate::store::Store::spawn_monitor) finds it unreachable. Ingest
/// is not affected by a database outage.
pub fn database_check(store: crate::store::Store) -> Check {
    Arc::new(move || {
        let state = store.state();
        let mut detail = serde_json::Map::new();
        detail.insert(
            "database".into(),
            serde_json::json!(if state.error.is_none() { "UP" } else { "DOWN" }),
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
