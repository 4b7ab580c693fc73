//! Which rule set validation applies: `ingest.validation` in the configuration.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The rule set applied at ingest and, identically, by the sink to what it reads from Kafka.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationMode {
    /// Accept every event the reference service accepts and normalize it before spooling
    /// (naive or space-separated times, dates, epoch seconds, a missing `specversion`, …).
    #[default]
    Compatible,
    /// CloudEvents-strict rules: what does not conform is refused with 422.
    Strict,
}

impl ValidationMode {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ValidationMode::Compatible => "compatible",
            ValidationMode::Strict => "strict",
        }
    }
}

impl fmt::Display for ValidationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
