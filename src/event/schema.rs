//! The OpenAPI schema of a structured-mode event (`CloudEvent` and the components it refers
//! to), built from the rule table: what a property's type is, whether it is required or may be
//! `null`, which values an enumeration allows all come from [`table`](super::table), so the API
//! document and the validator cannot drift apart.
//!
//! It describes the default mode, `compatible` (the descriptions say what `strict` adds). The
//! length caps are in the descriptions rather than `maxLength`: JSON Schema counts characters,
//! the caps count bytes of UTF-8.
//!
//! The HTTP API's document uses it through a `CloudEvent` type whose `PartialSchema::schema` is
//! [`cloud_event_schema`] and whose `ToSchema::schemas` adds [`cloud_event_components`].

use serde_json::json;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    ArrayBuilder, ObjectBuilder, OneOfBuilder, RefBuilder, Schema, SchemaType, Type,
};

use super::table::{self, Absent, Field, Format, Shape};

/// The description of the `CloudEvent` schema.
const CLOUD_EVENT_DOC: &str = "A CloudEvents 1.0 audit event in structured mode, as the default validation mode\n\
    (`ingest.validation: compatible`) accepts it.\n\
    \n\
    **compatible** (default) accepts every event the reference service (OpenG2P Audit Manager)\n\
    accepts and normalizes it before it is stored: `time` without an offset is UTC, with a space\n\
    instead of `T`, a date alone (midnight UTC) or a number (Unix seconds) is written back as\n\
    RFC 3339 `Z`; a missing `specversion` is `\"1.0\"`; empty strings are kept as sent, except an\n\
    empty `id`, which is replaced by a generated one; any `traceparent` string is kept (the\n\
    stored `trace_id` comes only from a valid W3C value); any `datacontenttype` is kept; there is\n\
    no future-time limit. Each normalization is counted in\n\
    `audit_events_normalized_total{rule}`.\n\
    \n\
    **strict** refuses what CloudEvents does not allow: `specversion` is required; `id`,\n\
    `source`, `type`, `subject` and `data.actor.id`, `data.action`, `data.resource.type` must\n\
    not be empty; `time` must be RFC 3339 with `Z` or an offset and at most\n\
    `ingest.max_future_skew` ahead; `traceparent` must be W3C\n\
    (`00-<32 hex>-<16 hex>-<2 hex>`); `datacontenttype` must be JSON (`application/json` or\n\
    `*/*+json`).\n\
    \n\
    **Both modes**: `data` is an object with `actor.id`, `action` and a valid `outcome`; a NUL\n\
    character (`\\u0000`) or a key that appears twice in one object, anywhere in the event, is\n\
    refused with 422 (PostgreSQL cannot store the first; the second would let one message say\n\
    two things); `data_base64` is not supported; the size limit (`ingest.max_event_bytes`,\n\
    413) and JSON nesting (128 levels) apply. Values PostgreSQL indexes have length caps in\n\
    bytes (422 beyond): `id`, `source`, `subject`, `data.actor.id`, `data.resource.id` 1024;\n\
    `type`, `traceparent` 512; `data.resource.type` 256. `strict` refuses a `source` with a\n\
    `.`/`..` path segment or a Unicode bidi control; `compatible` keeps and counts it. \
    Defaults filled in before spooling: `id` (UUIDv7),\n\
    `time` (ingest time), `datacontenttype` (`application/json`), `data.actor.type` (`user`).\n\
    Any other top-level attribute (a CloudEvents extension) is kept. `null` for an optional\n\
    attribute means absent.";

/// The component an object or an enumerated attribute is documented as: its name and
/// description.
fn component(field: &Field) -> Option<(&'static str, Option<&'static str>)> {
    Some(match field.path {
        "specversion" => ("SpecVersion", Some("The CloudEvents version: `\"1.0\"`.")),
        "data" => (
            "AuditData",
            Some(
                "The audit payload: who did what, to what, with what outcome. Other keys \
                 (`changes`,\n`context`, …) are kept and stored in `details`.",
            ),
        ),
        "data.actor" => (
            "Actor",
            Some("Who (or what system) did it. Other keys are kept (stored in `details.actor`)."),
        ),
        "data.actor.type" => ("ActorType", None),
        "data.outcome" => ("Outcome", None),
        "data.resource" => (
            "Resource",
            Some("The object acted upon. Other keys are kept (stored in `details.resource`)."),
        ),
        _ => return None,
    })
}

/// The `CloudEvent` schema: the event object, its parts referring to the components of
/// [`cloud_event_components`].
pub fn cloud_event_schema() -> RefOr<Schema> {
    #[allow(deprecated)] // `example` (OpenAPI 3.0) is what the rest of the document uses.
    let schema = object(table::EVENT, Some(CLOUD_EVENT_DOC)).example(Some(example()));
    schema.into()
}

/// The components [`cloud_event_schema`] refers to, by name, each referring only to others of
/// the list.
pub fn cloud_event_components() -> Vec<(String, RefOr<Schema>)> {
    let mut out = Vec::new();
    components(table::EVENT, &mut out);
    out
}

fn components(fields: &[Field], out: &mut Vec<(String, RefOr<Schema>)>) {
    for field in fields {
        let Some((name, doc)) = component(field) else {
            if let Shape::Object(members) = field.shape {
                components(members, out);
            }
            continue;
        };
        let schema = match field.shape {
            Shape::Object(members) => {
                let schema = object(members, doc).into();
                out.push((name.to_owned(), schema));
                components(members, out);
                continue;
            }
            Shape::String(Format::Exactly(value)) => enumeration(&[value], doc),
            Shape::String(Format::OneOf(values)) => enumeration(values, doc),
            _ => continue,
        };
        out.push((name.to_owned(), schema));
    }
}

/// An object with `fields` as properties; those required in both modes are `required`.
fn object(fields: &[Field], doc: Option<&str>) -> ObjectBuilder {
    let mut schema = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(doc);
    for field in fields {
        if field.absent == Absent::Required {
            schema = schema.required(field.key);
        }
    }
    for field in fields {
        if let Some(property) = property(field) {
            schema = schema.property(field.key, property);
        }
    }
    schema
}

/// A string with one of `values`.
fn enumeration(values: &[&str], doc: Option<&str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(doc)
        .enum_values(Some(values.iter().copied()))
        .into()
}

/// The schema of one property; `None` for what the API does not offer (`data_base64`).
fn property(field: &Field) -> Option<RefOr<Schema>> {
    // Absent or `null` means absent, or a default, except where `compatible` requires it.
    let nullable = !matches!(
        field.absent,
        Absent::Required | Absent::RequiredInStrict { .. }
    );
    let types = |t: Type| -> SchemaType {
        if nullable {
            SchemaType::from_iter([t, Type::Null])
        } else {
            SchemaType::Type(t)
        }
    };
    if let Some((name, _)) = component(field) {
        let reference = RefOr::Ref(
            RefBuilder::new()
                .ref_location_from_schema_name(name)
                .description(field.doc)
                .build(),
        );
        return Some(if nullable {
            OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::Null))
                .item(reference)
                .into()
        } else {
            reference
        });
    }
    Some(match field.shape {
        Shape::String(_) => ObjectBuilder::new()
            .schema_type(types(Type::String))
            .description(field.doc)
            .into(),
        Shape::Strings => ArrayBuilder::new()
            .schema_type(types(Type::Array))
            .items(ObjectBuilder::new().schema_type(Type::String))
            .description(field.doc)
            .into(),
        Shape::Time => time_schema().into(),
        Shape::Object(_) | Shape::Unsupported { .. } => return None,
    })
}

/// Dates and times `compatible` validation accepts as strings: what the reference service's
/// model reads as a datetime (a date, then `T`, `t`, a space or `_` and `HH:MM[:SS[.frac]]`,
/// then `Z`, `±HH:MM`, `±HHMM`, `±HH` or nothing; a date alone; Unix seconds as a numeric
/// string). The minus sign may be U+2212, as Python prints it in some locales.
pub const TIME_PATTERN: &str = "^(\\d{4}-\\d{2}-\\d{2}([Tt _]\\d{2}:\\d{2}(:\\d{2}(\\.\\d+)?)?\
     ([Zz]|[+\\-\u{2212}]\\d{2}(:?\\d{2})?)?)?|[+\\-]?\\d+(\\.\\d+)?)$";

/// `time` as `compatible` validation accepts it.
pub fn time_schema() -> Schema {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(TIME_PATTERN))
                .description(Some(
                    "RFC 3339 (`2026-04-22T14:00:00Z`, `…+05:30`); `compatible` also accepts no \
                     offset (UTC), a space instead of `T`, no seconds, a date alone (midnight \
                     UTC) and Unix seconds as a numeric string, and writes them back as RFC \
                     3339 `Z`",
                )),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .description(Some(
                    "Unix seconds (`compatible` only; read as milliseconds beyond 2·10¹⁰, as \
                     the reference does)",
                )),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Null)
                .description(Some("absent: the ingest time")),
        )
        .description(Some(
            "When it happened; defaults to the ingest time. `strict`: RFC 3339 with `Z` or an \
             offset, at most `ingest.max_future_skew` ahead.",
        ))
        .into()
}

/// The example event of the API documentation.
fn example() -> serde_json::Value {
    json!({
        "specversion": "1.0",
        "id": "0b5f9a6e-3c1d-4b8e-9f0a-2d7c6e5b4a31",
        "source": "/openg2p/registry",
        "type": "org.openg2p.beneficiary.updated",
        "subject": "beneficiary/b-1029",
        "time": "2026-11-22T10:00:00Z",
        "data": {
            "actor": {"type": "user", "id": "officer-7", "name": "Officer Seven"},
            "action": "beneficiary.update",
            "outcome": "success",
            "resource": {"type": "beneficiary", "id": "b-1029"},
            "changes": [{"field": "phone", "old": "1", "new": "2"}]
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_time_schema_takes_the_forms_compatible_mode_reads() {
        let schema = serde_json::to_value(time_schema()).expect("schema");
        let v = jsonschema::draft202012::new(&schema).expect("valid JSON Schema");
        for ok in [
            json!("2026-04-22T14:00:00Z"),
            json!("2026-04-22T14:00:00.123456+05:30"),
            json!("2026-04-22T14:00:00"),
            json!("2026-04-22 14:00:00Z"),
            json!("2026-04-22_14:00"),
            json!("2026-04-22T14:00:00\u{2212}0300"),
            json!("2026-04-22"),
            json!("1776866400"),
            json!(1776866400),
            json!(1776866400.5),
            json!(null),
        ] {
            assert!(v.is_valid(&ok), "{ok} accepted");
        }
        for bad in [
            json!("yesterday"),
            json!("22/04/2026"),
            json!("2026-04-22T14"),
            json!("2026-04-22T14:00:00Zulu"),
            json!(true),
            json!({"t": 1}),
        ] {
            assert!(!v.is_valid(&bad), "{bad} refused");
        }
    }
}
