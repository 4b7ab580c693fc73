//! Health of the roles running in this process, as `GET /health` reports it.
//!
//! Each role registers a check: a cheap closure that reads the role's current state (no I/O on
//! the request path). A role that is `Down` makes the endpoint answer 503 with the role's error
//! code; `Degraded` (e.g. Kafka unreachable while the spool absorbs events) answers 200 and
//! says why, because emitters are still being served.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::config::Role;

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
    checks: BTreeMap<Role, Check>,
}

impl Health {
    pub fn register(&mut self, role: Role, check: Check) {
        self.checks.insert(role, check);
    }

    /// Runs every check; the overall status is the worst of them.
    pub fn report(&self) -> (Status, BTreeMap<Role, RoleReport>) {
        let reports: BTreeMap<Role, RoleReport> =
            self.checks.iter().map(|(r, c)| (*r, c())).collect();
        let worst = reports
            .values()
            .map(|r| r.status)
            .max()
            .unwrap_or(Status::Up);
        (worst, reports)
    }
}
