//! The `compatible`-mode rules that let an event through which `strict` would refuse, as a
//! small set so each accepted event can say which ones it needed.
//!
//! Every rule has a fixed metric label (`audit_events_normalized_total{rule="…"}`); the label
//! set is this enum and nothing else, so the metric's cardinality is bounded. `docs/validation.md`
//! describes each rule with an example.

/// One normalization (or tolerated deviation) of `compatible` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `time` without an offset: read as UTC, written back with `Z`.
    TimeNoOffset,
    /// `time` with a space (or `_`) between date and time: written back with `T`.
    TimeSpaceSeparator,
    /// `time` is a date alone: midnight UTC.
    TimeDateOnly,
    /// `time` is a number (or a numeric string): Unix seconds (milliseconds beyond ±2·10¹⁰,
    /// as the reference reads them).
    TimeUnixSeconds,
    /// `time` in another form the reference accepts (no seconds, `+0200` or `+02` offsets, a
    /// Unicode minus in the offset): written back as RFC 3339 UTC.
    TimeOtherFormat,
    /// `time` further ahead than `ingest.max_future_skew` (accepted, counted).
    TimeFuture,
    /// `specversion` absent or `null`: `"1.0"` filled in.
    SpecversionMissing,
    /// `id` is `""`: a generated id replaces it.
    IdEmpty,
    /// An empty string where `strict` requires a non-empty one (`source`, `type`, `subject`,
    /// `data.action`, `data.actor.id`, `data.resource.type`): kept as sent.
    EmptyString,
    /// A `traceparent` that is not W3C Trace Context: kept, no `trace_id` derived.
    TraceparentNotW3c,
    /// A `datacontenttype` that is not a JSON media type: kept as sent.
    DatacontenttypeNotJson,
    /// A `data_base64` attribute next to `data`: kept as an extension attribute.
    DataBase64Kept,
    /// A `source` with a `.` or `..` path segment (`/registry/../payments`): kept as sent.
    SourceDotSegment,
    /// A `source` with a Unicode bidirectional control character (U+202E, …): kept as sent.
    SourceBidiControl,
    /// `POST /events/batch` with no events: 202 with `count: 0`.
    EmptyBatch,
    /// A request without `Content-Type`: read as JSON.
    NoContentType,
    /// A request with an `application/…+json` Content-Type other than the CloudEvents ones: read
    /// as JSON.
    ContentTypeJsonSuffix,
    /// A request path with a trailing `/`: routed as without it.
    TrailingSlash,
}

impl Rule {
    /// Every rule, in documentation order.
    pub const ALL: [Rule; 18] = [
        Rule::TimeNoOffset,
        Rule::TimeSpaceSeparator,
        Rule::TimeDateOnly,
        Rule::TimeUnixSeconds,
        Rule::TimeOtherFormat,
        Rule::TimeFuture,
        Rule::SpecversionMissing,
        Rule::IdEmpty,
        Rule::EmptyString,
        Rule::TraceparentNotW3c,
        Rule::DatacontenttypeNotJson,
        Rule::DataBase64Kept,
        Rule::SourceDotSegment,
        Rule::SourceBidiControl,
        Rule::EmptyBatch,
        Rule::NoContentType,
        Rule::ContentTypeJsonSuffix,
        Rule::TrailingSlash,
    ];

    /// The `rule` label of `audit_events_normalized_total`.
    pub fn label(self) -> &'static str {
        match self {
            Rule::TimeNoOffset => "time_no_offset",
            Rule::TimeSpaceSeparator => "time_space_separator",
            Rule::TimeDateOnly => "time_date_only",
            Rule::TimeUnixSeconds => "time_unix_seconds",
            Rule::TimeOtherFormat => "time_other_format",
            Rule::TimeFuture => "time_future",
            Rule::SpecversionMissing => "specversion_missing",
            Rule::IdEmpty => "id_empty",
            Rule::EmptyString => "empty_string",
            Rule::TraceparentNotW3c => "traceparent_not_w3c",
            Rule::DatacontenttypeNotJson => "datacontenttype_not_json",
            Rule::DataBase64Kept => "data_base64_kept",
            Rule::SourceDotSegment => "source_dot_segment",
            Rule::SourceBidiControl => "source_bidi_control",
            Rule::EmptyBatch => "empty_batch",
            Rule::NoContentType => "no_content_type",
            Rule::ContentTypeJsonSuffix => "content_type_json_suffix",
            Rule::TrailingSlash => "trailing_slash",
        }
    }

    /// For the rules that let a suspicious `source` through: the `reason` label of
    /// `audit_suspicious_source_total`.
    pub fn suspicious_source(self) -> Option<&'static str> {
        match self {
            Rule::SourceDotSegment => Some("dot_segment"),
            Rule::SourceBidiControl => Some("bidi_control"),
            _ => None,
        }
    }

    /// True for the rules that change the stored event (the others only tolerate a value and
    /// keep it as sent). The sink counts only these: tolerated values were counted at ingest.
    pub fn rewrites(self) -> bool {
        matches!(
            self,
            Rule::TimeNoOffset
                | Rule::TimeSpaceSeparator
                | Rule::TimeDateOnly
                | Rule::TimeUnixSeconds
                | Rule::TimeOtherFormat
                | Rule::SpecversionMissing
                | Rule::IdEmpty
        )
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// The set of [`Rule`]s one event needed (empty for an event `strict` would accept as is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Normalizations(u32);

impl Normalizations {
    pub fn add(&mut self, rule: Rule) {
        self.0 |= rule.bit();
    }

    pub fn contains(self, rule: Rule) -> bool {
        self.0 & rule.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Only the rules that changed the event (see [`Rule::rewrites`]).
    pub fn rewrites(self) -> Normalizations {
        let mut out = Normalizations::default();
        for r in self.iter().filter(|r| r.rewrites()) {
            out.add(r);
        }
        out
    }

    /// The rules in the set, in documentation order.
    pub fn iter(self) -> impl Iterator<Item = Rule> {
        Rule::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl From<Rule> for Normalizations {
    fn from(rule: Rule) -> Self {
        let mut out = Normalizations::default();
        out.add(rule);
        out
    }
}

impl FromIterator<Rule> for Normalizations {
    fn from_iter<I: IntoIterator<Item = Rule>>(iter: I) -> Self {
        let mut out = Normalizations::default();
        for r in iter {
            out.add(r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let labels: std::collections::HashSet<&str> = Rule::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Rule::ALL.len());
        assert!(labels.iter().all(|l| {
            l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }));
    }

    #[test]
    fn set_operations() {
        let mut n = Normalizations::default();
        assert!(n.is_empty());
        n.add(Rule::EmptyString);
        n.add(Rule::TimeNoOffset);
        n.add(Rule::EmptyString);
        assert_eq!(
            n.iter().collect::<Vec<_>>(),
            [Rule::TimeNoOffset, Rule::EmptyString]
        );
        assert_eq!(
            n.rewrites().iter().collect::<Vec<_>>(),
            [Rule::TimeNoOffset]
        );
        let all: Normalizations = Rule::ALL.into_iter().collect();
        assert_eq!(all.iter().count(), Rule::ALL.len());
    }
}
