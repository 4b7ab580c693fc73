//! Shared pieces of the fuzz targets: the properties every accepted event must have. The
//! structured CloudEvent generator and the agreement of the two validation paths live in the
//! main crate (`event::testgen`, feature `fuzzing`), where the unit tests run them too.

use audit_manager::event::testgen::both_paths_agree;
use audit_manager::event::{
    BatchBody, INDEXED_CAPS, JsonError, Row, ValidationMode, normalize, parse_json,
    row_from_record, split_batch,
};
use serde_json::Value;

pub use audit_manager::event::testgen::{Event, limits, now};

/// The properties of validation on one body, in both modes:
/// - parsing agrees with serde_json on what is JSON, and refuses NUL and duplicate keys for
///   both modes alike (the parser has no mode);
/// - an event `strict` accepts, `compatible` accepts and stores identically;
/// - an accepted event re-normalizes to the same bytes and needs no further rewrite;
/// - the sink turns every accepted event into a row in the same mode (nothing ingest accepted
///   is dead-lettered).
pub fn check_body(body: &[u8]) {
    both_paths_agree(body);
    let ours = parse_json(body);
    let theirs = serde_json::from_slice::<Value>(body);
    check_split(body, theirs.as_ref(), ours.is_ok());
    let value = match (ours, theirs) {
        (Ok(v), Ok(t)) => {
            assert_eq!(v, t, "same value as serde_json");
            v
        }
        (Err(JsonError::Syntax(_)), Err(_)) => return,
        // NUL or duplicate key: refused before any mode applies, so both modes agree.
        (Err(JsonError::Nul(_) | JsonError::DuplicateKey(_)), Ok(_)) => return,
        (ours, theirs) => panic!("parse disagrees: ours {ours:?}, serde_json {theirs:?}"),
    };
    check_value(value);
}

/// Splitting a body as a batch agrees with parsing it whole: the same syntax verdict, the same
/// events in the same order, no refusal that parsing it whole would not make. The split only
/// skips over each event (serde_json checks escapes such as lone surrogates, and nesting depth,
/// only when it builds values), so a body refused whole may split: then one of its events is
/// refused when it is parsed on its own, which is when the batch handler parses it.
fn check_split(body: &[u8], whole: Result<&Value, &serde_json::Error>, whole_ok: bool) {
    let split = split_batch(body);
    let whole = match whole {
        Ok(whole) => whole,
        Err(e) => {
            match &split {
                Err(JsonError::Syntax(_)) => {}
                Ok(BatchBody::Events(raws)) => assert!(
                    raws.iter()
                        .any(|r| serde_json::from_str::<Value>(r.get()).is_err()),
                    "split accepts what serde_json refuses ({e}), and every event parses"
                ),
                other => panic!("split accepts what serde_json refuses ({e}): {other:?}"),
            }
            return;
        }
    };
    match split {
        Err(JsonError::Syntax(e)) => panic!("split refuses valid JSON: {e}"),
        Err(e) => assert!(!whole_ok, "split finds {e:?}, parsing it whole does not"),
        Ok(BatchBody::Events(raws)) => {
            let events = match whole {
                Value::Array(a) => a,
                Value::Object(o) => o["events"].as_array().expect("an events array"),
                other => panic!("events split out of {other}"),
            };
            assert_eq!(raws.len(), events.len());
            for (raw, event) in raws.iter().zip(events) {
                let parsed: Value = serde_json::from_str(raw.get()).expect("a split event parses");
                assert_eq!(&parsed, event);
            }
        }
        Ok(BatchBody::NoEventsArray) => {
            assert!(whole.is_object() && !whole.get("events").is_some_and(Value::is_array));
        }
        Ok(BatchBody::NotABatch) => assert!(!whole.is_object() && !whole.is_array()),
    }
}

pub fn check_value(value: Value) {
    let now = now();
    let strict = normalize(value.clone(), now, &limits(ValidationMode::Strict));
    let compat = normalize(value, now, &limits(ValidationMode::Compatible));
    if let Ok(s) = &strict {
        let c = compat
            .as_ref()
            .expect("compatible accepts what strict accepts");
        let without_id = |json: &[u8]| {
            let mut v: serde_json::Map<String, Value> =
                serde_json::from_slice(json).expect("own output");
            v.shift_remove("id");
            v
        };
        // Generated ids differ between the two calls; everything else is identical.
        assert_eq!(without_id(&s.json), without_id(&c.json));
        assert!(s.normalized.is_empty());
        settled(&s.json, ValidationMode::Strict);
    }
    if let Ok(c) = &compat {
        settled(&c.json, ValidationMode::Compatible);
    }
}

/// A stored event: re-normalizes to itself and maps to a row in `mode`.
fn settled(json: &[u8], mode: ValidationMode) {
    let again = parse_json(json).expect("own output parses");
    let second = normalize(again, now(), &limits(mode)).expect("normalized event stays valid");
    assert_eq!(second.json, json, "normalizing is idempotent");
    assert!(second.normalized.rewrites().is_empty());
    match row_from_record(json, now(), mode) {
        Ok(row) => storable(&row),
        Err(e) => panic!("the sink refuses what ingest accepted: {e}"),
    }
}

/// Every value of an accepted event that PostgreSQL indexes is within its cap, so the insert
/// cannot fail on the index (the widest index entry stays far below a third of a page).
fn storable(row: &Row) {
    let cap = |path: &str| {
        INDEXED_CAPS
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, cap)| *cap)
            .expect("a capped path")
    };
    let columns = [
        ("id", Some(&row.id)),
        ("source", Some(&row.source)),
        ("type", Some(&row.r#type)),
        ("subject", row.subject.as_ref()),
        ("data.actor.id", Some(&row.actor_id)),
        ("data.resource.type", row.resource_type.as_ref()),
        ("data.resource.id", row.resource_id.as_ref()),
    ];
    for (path, value) in columns {
        if let Some(value) = value {
            assert!(
                value.len() <= cap(path),
                "{path} of {} bytes stored",
                value.len()
            );
        }
    }
    // `trace_id` is 32 hex digits when set.
    assert!(row.trace_id.as_ref().is_none_or(|t| t.len() == 32));
}
