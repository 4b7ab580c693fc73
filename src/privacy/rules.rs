//! Compiled `privacy.rules`: the JSONPath selection (RFC 9535, `serde_json_path`), the `type`
//! patterns, and which parts of an event no rule may change.

use serde_json::Value;
use serde_json_path::JsonPath;

/// What a rule does to a selected value.
#[derive(Debug)]
pub enum Action {
    Drop,
    Mask {
        keep_last: usize,
    },
    Pseudonymise,
    /// Sealed to the keeper key at ingest, stored under the subject's own key.
    Encrypt {
        subject: JsonPath,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Mask { .. } => "mask",
            Action::Pseudonymise => "pseudonymise",
            Action::Encrypt { .. } => "encrypt",
        }
    }
}

/// One rule, ready to apply.
#[derive(Debug)]
pub struct CompiledRule {
    pub name: String,
    pub select: JsonPath,
    /// `type` patterns; empty: every event.
    pub types: Vec<String>,
    pub action: Action,
    /// Its `audit_privacy_rules_applied_total` series.
    pub counters: Counters,
}

/// A rule's two `audit_privacy_rules_applied_total{rule, outcome}` series, looked up in the
/// recorder once (on first use, so that a recorder installed after the rules were compiled is
/// the one counted in) instead of per event.
#[derive(Debug, Default)]
pub struct Counters(std::sync::OnceLock<[metrics::Counter; 2]>);

/// The `outcome` label: the values were treated, or an `encrypt` rule's subject was missing
/// (its values dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied = 0,
    SubjectMissing = 1,
}

impl Counters {
    pub fn increment(&self, rule: &str, outcome: Outcome) {
        let counters = self.0.get_or_init(|| {
            ["applied", "subject-missing"].map(|outcome| {
                metrics::counter!(
                    "audit_privacy_rules_applied_total",
                    "rule" => rule.to_owned(),
                    "outcome" => outcome
                )
            })
        });
        counters[outcome as usize].increment(1);
    }
}

/// Attributes a rule may not change: the event's identity and the values the row's required
/// columns are made from (a rule selecting them would make the event unstorable). The whole
/// event, `data` and the objects holding required members cannot be replaced either.
const PROTECTED: [&str; 10] = [
    "/specversion",
    "/id",
    "/source",
    "/type",
    "/time",
    "/datacontenttype",
    "/authtype",
    "/authid",
    "/data/actor/type",
    "/data/outcome",
];
const WHOLE: [&str; 4] = ["", "/data", "/data/actor", "/data/resource"];

/// Whether a value at `pointer` may be replaced by a rule.
pub fn replaceable(pointer: &str) -> bool {
    if WHOLE.contains(&pointer) || pointer.starts_with(super::MARKER_POINTER) {
        return false;
    }
    !PROTECTED
        .iter()
        .any(|p| pointer == *p || pointer.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

impl CompiledRule {
    /// Whether the rule applies to events of type `ty`.
    pub fn matches_type(&self, ty: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|p| glob(p, ty))
    }

    /// JSON pointers of the values the rule selects in `event`, leaving out what no rule may
    /// change.
    pub fn select(&self, event: &Value) -> Vec<String> {
        self.select
            .query_located(event)
            .locations()
            .map(|l| l.to_json_pointer())
            .filter(|p| replaceable(p))
            .collect()
    }
}

/// `pattern` with `*` matching any run of characters (including none), against `s`.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_runs() {
        assert!(glob("org.openg2p.*", "org.openg2p.registry.updated"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("org.openg2p.*", "org.other"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    #[test]
    fn identity_and_required_columns_are_protected() {
        for p in [
            "",
            "/id",
            "/time",
            "/data",
            "/data/actor",
            "/data/actor/type",
            "/data/_privacy",
        ] {
            assert!(!replaceable(p), "{p}");
        }
        for p in [
            "/data/actor/name",
            "/data/actor/id",
            "/subject",
            "/data/changes/0/old",
            "/idx",
        ] {
            assert!(replaceable(p), "{p}");
        }
    }
}
