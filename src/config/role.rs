//! The parts of the pipeline a process can run (`audit_manager.roles`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A part of the pipeline that can run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// HTTP ingest into the local spool.
    Ingest,
    /// Spool -> Kafka forwarder.
    Forward,
    /// Kafka -> PostgreSQL sink.
    Sink,
    /// Maintenance: partition creation/retention.
    Maintain,
    /// The investigators' read API and page (never a default: it runs where it is asked for).
    Query,
}

impl Role {
    /// All roles, in their canonical order.
    pub const ALL: [Role; 5] = [
        Role::Ingest,
        Role::Forward,
        Role::Sink,
        Role::Maintain,
        Role::Query,
    ];
    /// The roles a process runs when `roles` is not set: the whole write pipeline. The read
    /// API (`query`) is opt-in, so it can live behind its own boundary.
    pub const DEFAULT: [Role; 4] = [Role::Ingest, Role::Forward, Role::Sink, Role::Maintain];

    /// The lowercase name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Forward => "forward",
            Role::Sink => "sink",
            Role::Maintain => "maintain",
            Role::Query => "query",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned when parsing an unknown role name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRole(pub String);

impl fmt::Display for UnknownRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown role `{}` (valid roles: ingest, forward, sink, maintain, query)",
            self.0
        )
    }
}

impl std::error::Error for UnknownRole {}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownRole(t.to_string()))
    }
}
