//! The event rules as data: one [`Field`] per attribute of the envelope and of `data`, in the
//! order problems are reported.
//!
//! Three readers evaluate this one table, so a rule stated here holds everywhere:
//! - the tree validator (`validate.rs`) names every problem of an event, with the messages
//!   below, and makes every rewrite;
//! - the skim (`borrowed.rs`) asks [`Field::as_sent`] whether an event can be stored as sent
//!   (at most a default appended), and hands anything else to the tree validator;
//! - the OpenAPI `CloudEvent` schema (`schema.rs`) is built from it.
//!
//! A property test (`testgen.rs`) runs generated events through both evaluators in both modes
//! and demands the same outcome; `docs/validation.md` is checked to name every field and cap.
//!
//! What is not a field rule stays in code: `time` is read by `time.rs`, a suspicious `source`
//! is defined by `source.rs`, and the JSON itself (NUL characters, duplicated keys, nesting) is
//! checked by the parsers.

use super::ValidationMode;
use super::rules::Rule;
use super::source;
use super::time::parse_time;

/// Allowed values of `data.actor.type`.
pub const ACTOR_TYPES: [&str; 4] = ["user", "system", "service", "anonymous"];
/// Allowed values of `data.outcome`.
pub const OUTCOMES: [&str; 3] = ["success", "failure", "denied"];
/// `datacontenttype` filled in when the emitter sent none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";
/// `data.actor.type` filled in when the emitter sent none.
pub const DEFAULT_ACTOR_TYPE: &str = "user";

/// One attribute: where it is, what its value must be, what absent, `null` and `""` mean, and
/// how long it may be.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its key in the enclosing object.
    pub key: &'static str,
    /// The path errors name it by (`data.actor.id`).
    pub path: &'static str,
    pub shape: Shape,
    /// What an absent or `null` value means.
    pub absent: Absent,
    /// What `""` means (strings only).
    pub empty: Empty,
    /// The longest value in bytes of UTF-8, for the attributes stored in their own column
    /// (see [`INDEXED_CAPS`]).
    pub cap: Option<usize>,
    /// What it is, for the API documentation.
    pub doc: Option<&'static str>,
}

/// What a present value must be.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A JSON string of this format.
    String(Format),
    /// An array of strings (`data.actor.roles`).
    Strings,
    /// A JSON object with these members; other keys are kept as sent.
    Object(&'static [Field]),
    /// `time`: an RFC 3339 string, kept verbatim. `compatible` also reads the other forms of
    /// `time.rs` (and a JSON number, Unix seconds), rewritten as RFC 3339 UTC; `strict` also
    /// bounds how far ahead it may be (`ingest.max_future_skew`).
    Time,
    /// Not supported: `strict` refuses it whatever its value (even `null`) with `message`;
    /// `compatible` keeps it and counts `rule`.
    Unsupported { message: &'static str, rule: Rule },
}

/// What a string must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Any string.
    Any,
    /// This value and no other, in both modes.
    Exactly(&'static str),
    /// One of these values, in both modes.
    OneOf(&'static [&'static str]),
    /// A JSON media type (`application/json`, `*/*+json`); `compatible` keeps any other
    /// ([`Rule::DatacontenttypeNotJson`]).
    JsonMediaType,
    /// W3C Trace Context; `compatible` keeps any other ([`Rule::TraceparentNotW3c`]).
    Traceparent,
    /// No dot-segment and no bidirectional control (`source.rs`); `compatible` keeps it and
    /// counts each kind found.
    Unambiguous,
}

/// What an absent (or `null`) value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// Refused in both modes.
    Required,
    /// Refused by `strict`; `compatible` fills in `value` and counts `rule`.
    RequiredInStrict { value: &'static str, rule: Rule },
    /// Filled in (appended, or in place of the `null`).
    Filled(Fill),
    /// Nothing to do; a `null` is kept as sent.
    Optional,
    /// Nothing to do; a `null` is removed from the stored event.
    OptionalNullDropped,
}

/// A default filled in for an absent value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    Value(&'static str),
    /// A fresh UUIDv7.
    EventId,
    /// The ingest time, RFC 3339 with milliseconds and `Z`.
    IngestTime,
}

/// What `""` means for a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// An ordinary value (its format decides).
    Allowed,
    /// `strict` refuses it with this message; `compatible` keeps it ([`Rule::EmptyString`]).
    Kept(&'static str),
    /// `strict` refuses it with this message; `compatible` fills in the default as for an
    /// absent value ([`Rule::IdEmpty`]).
    Refilled(&'static str),
}

impl Format {
    /// True when `s` has this format (for [`Format::Unambiguous`]: nothing suspicious found).
    pub fn accepts(self, s: &str) -> bool {
        match self {
            Format::Any => true,
            Format::Exactly(v) => s == v,
            Format::OneOf(values) => values.contains(&s),
            Format::JsonMediaType => is_json_content_type(s),
            Format::Traceparent => is_valid_traceparent(s),
            Format::Unambiguous => source::suspicious(s).next().is_none(),
        }
    }

    /// The rule under which `compatible` keeps a value without this format; `None`: refused
    /// in both modes. (`Unambiguous` names its rules per value: `source::suspicious`.)
    pub fn compatible_rule(self) -> Option<Rule> {
        match self {
            Format::JsonMediaType => Some(Rule::DatacontenttypeNotJson),
            Format::Traceparent => Some(Rule::TraceparentNotW3c),
            Format::Any | Format::Exactly(_) | Format::OneOf(_) | Format::Unambiguous => None,
        }
    }

    /// Whether the format is still checked on a value over its cap. A traceparent of a later
    /// W3C version may be of any length: beyond the cap its length is the one problem named.
    pub fn checked_beyond_cap(self) -> bool {
        self != Format::Traceparent
    }
}

/// An attribute as the skim saw it.
#[derive(Debug, Clone, Copy)]
pub enum Seen<'a> {
    Absent,
    Null,
    Str(&'a str),
    /// Anything else (a number, an object, …).
    Other,
}

/// What storing an event as sent needs for one attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsSent {
    /// Nothing: the value is stored as sent.
    Kept,
    /// A default appended at the end of the enclosing object.
    Appended,
    /// A problem to name, a rewrite or a rule to count: the tree validator's work.
    Tree,
}

impl Field {
    /// What storing a value of this attribute as sent needs in `mode` (see [`AsSent`]): the
    /// yes/no form of what the tree validator does with it. Object and array members are the
    /// skim's to walk; `time` is kept when RFC 3339 (how far ahead it is the skim checks when
    /// it stores it).
    #[inline]
    pub fn as_sent(&self, seen: Seen<'_>, mode: ValidationMode) -> AsSent {
        let compatible = mode == ValidationMode::Compatible;
        match (seen, self.absent) {
            (_, _) if matches!(self.shape, Shape::Unsupported { .. }) => match seen {
                Seen::Absent => AsSent::Kept,
                _ => AsSent::Tree,
            },
            (Seen::Absent, Absent::Required) => AsSent::Tree,
            (Seen::Absent, Absent::RequiredInStrict { .. }) if compatible => AsSent::Appended,
            (Seen::Absent, Absent::RequiredInStrict { .. }) => AsSent::Tree,
            (Seen::Absent, Absent::Filled(_)) => AsSent::Appended,
            (Seen::Absent, Absent::Optional | Absent::OptionalNullDropped) => AsSent::Kept,
            (Seen::Null, Absent::Optional) => AsSent::Kept,
            (Seen::Null, _) => AsSent::Tree,
            (Seen::Other, _) => AsSent::Tree,
            (Seen::Str(s), _) => match self.shape {
                Shape::String(format) => {
                    let fits = !(s.is_empty() && self.empty != Empty::Allowed)
                        && self.cap.is_none_or(|cap| s.len() <= cap)
                        && format.accepts(s);
                    if fits { AsSent::Kept } else { AsSent::Tree }
                }
                Shape::Time if parse_time(s).is_some() => AsSent::Kept,
                _ => AsSent::Tree,
            },
        }
    }
}

/// The members of the event object.
pub const EVENT: &[Field] = &[
    SPECVERSION,
    ID,
    SOURCE,
    TYPE,
    SUBJECT,
    TIME,
    DATACONTENTTYPE,
    TRACEPARENT,
    DATA_BASE64,
    DATA,
];

/// A string field with no rule but its type: optional, `null` kept, `""` allowed.
const fn optional_string(key: &'static str, path: &'static str) -> Field {
    Field {
        key,
        path,
        shape: Shape::String(Format::Any),
        absent: Absent::Optional,
        empty: Empty::Allowed,
        cap: None,
        doc: None,
    }
}

/// A string field that must be present and (in `strict`) not empty.
const fn required_string(key: &'static str, path: &'static str) -> Field {
    Field {
        key,
        path,
        shape: Shape::String(Format::Any),
        absent: Absent::Required,
        empty: Empty::Kept("must not be empty"),
        cap: None,
        doc: None,
    }
}

pub const SPECVERSION: Field = Field {
    shape: Shape::String(Format::Exactly("1.0")),
    absent: Absent::RequiredInStrict {
        value: "1.0",
        rule: Rule::SpecversionMissing,
    },
    empty: Empty::Allowed,
    doc: Some("`\"1.0\"`; absent means `\"1.0\"` (`compatible`; required in `strict`)."),
    ..required_string("specversion", "specversion")
};

pub const ID: Field = Field {
    absent: Absent::Filled(Fill::EventId),
    // The reference would store every such event under the one key "" (and deduplicate them
    // into one row): each gets its own id instead.
    empty: Empty::Refilled("must not be empty"),
    cap: Some(1024),
    doc: Some(
        "Unique per `source`; with `time` it is the row's primary key, so a retried event is\n\
         stored once. Generated (UUIDv7) when absent (or empty, in `compatible`).",
    ),
    ..required_string("id", "id")
};

pub const SOURCE: Field = Field {
    shape: Shape::String(Format::Unambiguous),
    cap: Some(1024),
    doc: Some("Who emits it, e.g. `/openg2p/registry`."),
    ..required_string("source", "source")
};

pub const TYPE: Field = Field {
    cap: Some(512),
    doc: Some("What happened, e.g. `org.openg2p.beneficiary.updated`."),
    ..required_string("type", "type")
};

pub const SUBJECT: Field = Field {
    absent: Absent::OptionalNullDropped,
    empty: Empty::Kept("must not be empty if present"),
    cap: Some(1024),
    doc: Some(
        "The entity concerned, e.g. `beneficiary/b-1029`; the Kafka key (else `data.actor.id`),\n\
         so one entity's events stay in order.",
    ),
    ..optional_string("subject", "subject")
};

pub const TIME: Field = Field {
    shape: Shape::Time,
    absent: Absent::Filled(Fill::IngestTime),
    ..optional_string("time", "time")
};

pub const DATACONTENTTYPE: Field = Field {
    shape: Shape::String(Format::JsonMediaType),
    absent: Absent::Filled(Fill::Value(DEFAULT_CONTENT_TYPE)),
    doc: Some("Defaults to `application/json`."),
    ..optional_string("datacontenttype", "datacontenttype")
};

pub const TRACEPARENT: Field = Field {
    shape: Shape::String(Format::Traceparent),
    absent: Absent::OptionalNullDropped,
    cap: Some(512),
    doc: Some(
        "W3C trace context (`00-<trace-id>-<parent-id>-<flags>`); its trace-id is stored as\n\
         `trace_id`.",
    ),
    ..optional_string("traceparent", "traceparent")
};

pub const DATA_BASE64: Field = Field {
    shape: Shape::Unsupported {
        message: "not supported: data must be a JSON object in `data`",
        rule: Rule::DataBase64Kept,
    },
    ..optional_string("data_base64", "data_base64")
};

pub const DATA: Field = Field {
    shape: Shape::Object(&[ACTOR, ACTION, OUTCOME, RESOURCE, REASON]),
    absent: Absent::Required,
    ..optional_string("data", "data")
};

pub const ACTOR: Field = Field {
    shape: Shape::Object(&[
        ACTOR_TYPE,
        ACTOR_ID,
        ACTOR_NAME,
        ACTOR_ROLES,
        ACTOR_IP,
        ACTOR_SESSION_ID,
    ]),
    absent: Absent::Required,
    ..optional_string("actor", "data.actor")
};

pub const ACTOR_TYPE: Field = Field {
    shape: Shape::String(Format::OneOf(&ACTOR_TYPES)),
    absent: Absent::Filled(Fill::Value(DEFAULT_ACTOR_TYPE)),
    doc: Some("Defaults to `user`."),
    ..optional_string("type", "data.actor.type")
};

pub const ACTOR_ID: Field = Field {
    cap: Some(1024),
    ..required_string("id", "data.actor.id")
};

pub const ACTOR_NAME: Field = optional_string("name", "data.actor.name");

pub const ACTOR_ROLES: Field = Field {
    shape: Shape::Strings,
    ..optional_string("roles", "data.actor.roles")
};

pub const ACTOR_IP: Field = optional_string("ip", "data.actor.ip");

pub const ACTOR_SESSION_ID: Field = optional_string("session_id", "data.actor.session_id");

pub const ACTION: Field = Field {
    doc: Some("What was done, e.g. `beneficiary.update`."),
    ..required_string("action", "data.action")
};

pub const OUTCOME: Field = Field {
    shape: Shape::String(Format::OneOf(&OUTCOMES)),
    absent: Absent::Required,
    ..optional_string("outcome", "data.outcome")
};

pub const RESOURCE: Field = Field {
    shape: Shape::Object(&[RESOURCE_TYPE, RESOURCE_ID]),
    ..optional_string("resource", "data.resource")
};

pub const RESOURCE_TYPE: Field = Field {
    cap: Some(256),
    ..required_string("type", "data.resource.type")
};

pub const RESOURCE_ID: Field = Field {
    cap: Some(1024),
    ..optional_string("id", "data.resource.id")
};

pub const REASON: Field = Field {
    doc: Some("Why (e.g. the reason for a denial)."),
    ..optional_string("reason", "data.reason")
};

/// The longest value, in bytes of UTF-8, of each attribute stored in its own column, by path:
/// the caps of [`EVENT`], in table order.
///
/// A PostgreSQL btree index entry must fit in a third of a page (2704 bytes with 8 kB pages);
/// a longer value is refused by the insert (SQLSTATE 54000), so the event could never be
/// stored. The caps keep every index of `audit_events` well below that even for values that do
/// not compress: the widest, `(resource_type, resource_id, occurred_at)`, stays under 1.3 kB,
/// and a composite index over any two capped columns would still fit. `docs/validation.md`
/// explains each.
pub const INDEXED_CAPS: [(&str, usize); 8] = {
    let mut out = [("", 0); 8];
    // A count other than 8 fails the build here.
    assert!(collect_caps(EVENT, &mut out, 0) == out.len());
    out
};

/// Appends the caps of `fields` and their members to `out` from `n`; the new count.
const fn collect_caps(
    fields: &'static [Field],
    out: &mut [(&'static str, usize); 8],
    mut n: usize,
) -> usize {
    let mut i = 0;
    while i < fields.len() {
        let field = &fields[i];
        if let Some(cap) = field.cap {
            out[n] = (field.path, cap);
            n += 1;
        }
        if let Shape::Object(members) = field.shape {
            n = collect_caps(members, out, n);
        }
        i += 1;
    }
    n
}

/// `application/json`, or any `type/subtype+json`, optionally followed by `;` parameters.
/// Case-insensitive.
pub fn is_json_content_type(s: &str) -> bool {
    let essence = s.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return true;
    }
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    let is_token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    is_token(ty)
        && is_token(sub)
        && sub.len() > 5
        && sub
            .get(sub.len() - 5..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case("+json"))
}

/// W3C Trace Context `traceparent`: `vv-<32 lhex>-<16 lhex>-<2 lhex>`, ids not all zero,
/// version `ff` invalid. Version `00` must end after the flags; a higher version may carry
/// further `-`-separated fields (forward compatibility per the W3C spec).
pub fn is_valid_traceparent(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 55 {
        return false;
    }
    let lhex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let all_zero = |r: std::ops::Range<usize>| b[r].iter().all(|c| *c == b'0');
    if !(lhex(0..2) && b[2] == b'-' && lhex(3..35) && b[35] == b'-' && lhex(36..52))
        || b[52] != b'-'
        || !lhex(53..55)
    {
        return false;
    }
    if &b[0..2] == b"ff" || all_zero(3..35) || all_zero(36..52) {
        return false;
    }
    if &b[0..2] == b"00" {
        b.len() == 55
    } else {
        b.len() == 55 || b[55] == b'-'
    }
}

/// Every field of the table, members after their object, in table order.
pub fn all_fields() -> Vec<&'static Field> {
    fn walk(fields: &'static [Field], out: &mut Vec<&'static Field>) {
        for f in fields {
            out.push(f);
            if let Shape::Object(members) = f.shape {
                walk(members, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(EVENT, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_end_with_their_key_and_are_unique() {
        let fields = all_fields();
        let paths: std::collections::HashSet<&str> = fields.iter().map(|f| f.path).collect();
        assert_eq!(paths.len(), fields.len());
        for f in fields {
            assert!(
                f.path == f.key || f.path.ends_with(&format!(".{}", f.key)),
                "{}",
                f.path
            );
        }
    }

    #[test]
    fn the_caps_are_the_documented_ones() {
        assert_eq!(
            INDEXED_CAPS,
            [
                ("id", 1024),
                ("source", 1024),
                ("type", 512),
                ("subject", 1024),
                ("traceparent", 512),
                ("data.actor.id", 1024),
                ("data.resource.type", 256),
                ("data.resource.id", 1024),
            ]
        );
    }

    /// Every attribute and every cap of the table is in `docs/validation.md`, so a rule added
    /// here without a word for the operator fails.
    #[test]
    fn docs_validation_names_every_field_and_cap() {
        let doc = include_str!("../../docs/validation.md");
        for f in all_fields() {
            // Members of `data` may be written without the `data.` prefix (`actor.type`).
            let short = f.path.strip_prefix("data.").unwrap_or(f.path);
            assert!(
                doc.contains(&format!("`{}`", f.path)) || doc.contains(&format!("`{short}`")),
                "docs/validation.md does not mention `{}`",
                f.path
            );
        }
        for (path, cap) in INDEXED_CAPS {
            assert!(
                doc.contains(&format!("| `{path}` | {cap} |")),
                "docs/validation.md does not give the cap of `{path}` ({cap} bytes)"
            );
        }
    }
}
