//! CloudEvent model and validation (pure: no I/O).
//!
//! Audit events arrive as CloudEvents 1.0, either in structured mode (the JSON event is the
//! request body) or in HTTP binary mode ([`from_binary`] turns `ce-*` headers plus the body into
//! the structured form). [`normalize`] then validates one event, collecting *all* problems as
//! [`FieldError`]s named by path (`data.actor.id: required`), fills in defaults and serializes
//! it compactly into a [`NormalizedEvent`] ready to spool.
//!
//! Ingest reads structured events through [`Incoming`]: an event valid as sent is checked
//! without a tree and stored as its own bytes (whitespace between tokens dropped) with the
//! defaults appended; anything else goes through [`parse_json`] and [`normalize`]. Both give
//! the same event (see `borrowed.rs`).
//!
//! # Normalization
//! Defaults are filled in before the event is stored, so the stored JSON is what gets replayed
//! and every replay maps to the same `(id, time)`:
//! - `id`: a UUIDv7 string when absent;
//! - `time`: the ingest time as RFC 3339 with milliseconds and `Z` when absent; a given time is
//!   kept verbatim (offset and precision as sent);
//! - `datacontenttype`: `application/json` when absent;
//! - `data.actor.type`: `user` when absent.
//!
//! Key order is the emitter's; filled-in defaults are appended at the end of their object.
//! Everything else (extension attributes, actor/resource extras, `changes`, `context`, …) is
//! kept as sent. A `null` optional CloudEvents attribute counts as absent (CloudEvents JSON
//! format); a `null` `subject`/`traceparent` is dropped.
//!
//! # Validation modes
//! [`Limits::mode`] selects the rule set ([`ValidationMode`]): `strict` is the rule set above;
//! `compatible` (the default) accepts what the reference service accepts and normalizes it
//! before spooling (naive, space-separated, date-only and numeric times become RFC 3339 UTC; a
//! missing `specversion` becomes `"1.0"`; an empty `id` is replaced; empty strings, any
//! `traceparent` and any `datacontenttype` are kept; no future-time limit). Each event carries
//! the [`Rule`]s it needed ([`NormalizedEvent::normalized`]) so callers can count them. The sink
//! applies the same function in the same mode. `docs/validation.md` lists every rule.
//!
//! The rules of each attribute are one table ([`table`]): [`normalize`] names problems from it,
//! the borrowed path decides from it, and the OpenAPI `CloudEvent` schema ([`schema`]) is built
//! from it. `time` is read by `time.rs`.
//!
//! In both modes [`parse_json`] refuses a NUL character and a duplicated object key anywhere in
//! the body: valid JSON, but an event PostgreSQL cannot store or one that says two things.
//!
//! # Errors
//! [`Rejection::Invalid`] (schema, → 422), [`Rejection::TimeInFuture`] (only problem is `time`
//! beyond `max_future_skew`, → 422), [`Rejection::TooLarge`] (normalized size over
//! `max_event_bytes`, → 413). [`Rejection::at_index`] prefixes paths with `events[i].` for
//! batches. [`BinaryError::NotJson`] (→ 400) is for a binary-mode body that is not JSON.

pub mod authcontext;
mod binary;
mod borrowed;
mod json;
mod mode;
mod row;
mod rules;
pub mod schema;
mod source;
pub mod table;
#[cfg(any(test, feature = "fuzzing"))]
pub mod testgen;
mod time;
mod validate;

pub use authcontext::AuthContext;
pub use binary::{BinaryError, from_binary, is_binary_mode, percent_decode};
pub use borrowed::{Borrowed, Incoming, MAX_DEPTH};
pub use json::{BatchBody, JsonError, parse_json, split_batch};
pub use mode::ValidationMode;
pub use row::{Row, RowError, row_from_record, row_from_record_counted, to_row};
pub use rules::{Normalizations, Rule};
pub use schema::{cloud_event_components, cloud_event_schema};
pub use table::{
    ACTOR_TYPES, DEFAULT_ACTOR_TYPE, DEFAULT_CONTENT_TYPE, INDEXED_CAPS, OUTCOMES,
    is_json_content_type, is_valid_traceparent,
};
pub use time::parse_time;
pub use validate::{
    FieldError, Limits, NormalizedEvent, Rejection, event_time, kafka_key, new_event_id, normalize,
    parse_normalized, str_at, validate_map,
};
