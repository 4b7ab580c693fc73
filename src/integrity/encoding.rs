//! The canonical encoding of one stored `audit_events` row and its hash (pure, no I/O).
//!
//! `docs/integrity.md` describes these bytes for third-party verifiers; a test parses its
//! worked example, so the document and this code cannot drift apart.
//!
//! Every column of the row is covered, in the order of the table's columns
//! (`store::columns::COLUMNS`): a change to any of them changes the hash. Each field is one tag byte followed by its value:
//!
//! | tag | meaning | value |
//! |---|---|---|
//! | `0x00` | SQL NULL | nothing |
//! | `0x01` | text | u32 big-endian byte length, then the UTF-8 bytes |
//! | `0x02` | timestamp | i64 big-endian microseconds since 1970-01-01T00:00:00Z |
//! | `0x03` | integer | i64 big-endian |
//! | `0x04` | JSON | u32 big-endian byte length, then the RFC 8785 (JCS) form of the value |
//!
//! The row hash is `SHA-256(ROW_DOMAIN || encoding)`.
//!
//! Two versions ([`RowEncoding`]) differ only in how `details` numbers are written: version 1
//! writes every number as its nearest double (RFC 8785), so integers beyond 2^53 were not
//! hashed exactly; version 2, the one new seals use, writes integers with their exact digits
//! ([`super::jcs::write_canonical_exact`]). Each seal names the version of its leaves.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Domain-separation prefix of a row hash: a row's hash can never equal a seal's. It names
/// the column layout, which both [`RowEncoding`]s share (the seal names the encoding).
pub const ROW_DOMAIN: &[u8] = b"audit-manager/row/v1\n";

/// How a seal's leaves encode rows (a byte of the seal, see `seal.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowEncoding {
    /// Numbers in `details` as their nearest double (seal format 1).
    V1 = 1,
    /// Integers in `details` with their exact digits; everything else as `V1`.
    V2 = 2,
}

impl RowEncoding {
    /// What the sealer writes now.
    pub const CURRENT: RowEncoding = RowEncoding::V2;

    pub fn from_byte(b: u8) -> Option<RowEncoding> {
        match b {
            1 => Some(RowEncoding::V1),
            2 => Some(RowEncoding::V2),
            _ => None,
        }
    }
}

const TAG_NULL: u8 = 0x00;
const TAG_TEXT: u8 = 0x01;
const TAG_TIME: u8 = 0x02;
const TAG_INT: u8 = 0x03;
const TAG_JSON: u8 = 0x04;

/// One row as stored, every column (read by `store::rows`).
pub use crate::store::StoredRow;

/// Why a row cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodingError {
    #[error("details is not JSON this verifier can canonicalise: {0}")]
    Details(String),
    #[error("a text value is longer than 4 GiB")]
    TooLong,
}

/// Microseconds since the Unix epoch (PostgreSQL's timestamp precision).
pub fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn put_len_bytes(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) -> Result<(), EncodingError> {
    let len = u32::try_from(bytes.len()).map_err(|_| EncodingError::TooLong)?;
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

fn put_text(out: &mut Vec<u8>, v: Option<&str>) -> Result<(), EncodingError> {
    match v {
        None => {
            out.push(TAG_NULL);
            Ok(())
        }
        Some(s) => put_len_bytes(out, TAG_TEXT, s.as_bytes()),
    }
}

fn put_time(out: &mut Vec<u8>, t: DateTime<Utc>) {
    out.push(TAG_TIME);
    out.extend_from_slice(&micros(t).to_be_bytes());
}

/// The canonical encoding of `row` in the current version, [`RowEncoding::V2`] (without the
/// domain prefix).
pub fn encode(row: &StoredRow) -> Result<Vec<u8>, EncodingError> {
    encode_as(RowEncoding::CURRENT, row)
}

/// Row encoding 1 (integers as doubles), for seals made before version 2.
pub fn encode_v1(row: &StoredRow) -> Result<Vec<u8>, EncodingError> {
    encode_as(RowEncoding::V1, row)
}

/// The canonical encoding of `row` in `version`.
pub fn encode_as(version: RowEncoding, row: &StoredRow) -> Result<Vec<u8>, EncodingError> {
    let mut out = Vec::with_capacity(256 + row.details.as_ref().map_or(0, String::len));
    put_text(&mut out, Some(&row.id))?;
    put_time(&mut out, row.occurred_at);
    put_time(&mut out, row.ingested_at);
    put_text(&mut out, Some(&row.source))?;
    put_text(&mut out, Some(&row.r#type))?;
    put_text(&mut out, row.subject.as_deref())?;
    put_text(&mut out, Some(&row.actor_type))?;
    put_text(&mut out, Some(&row.actor_id))?;
    put_text(&mut out, row.resource_type.as_deref())?;
    put_text(&mut out, row.resource_id.as_deref())?;
    put_text(&mut out, Some(&row.action))?;
    put_text(&mut out, Some(&row.outcome))?;
    put_text(&mut out, row.reason.as_deref())?;
    put_text(&mut out, row.trace_id.as_deref())?;
    match &row.details {
        None => out.push(TAG_NULL),
        Some(text) => {
            // Canonicalised in place: the length is written once the value is.
            out.push(TAG_JSON);
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            match version {
                RowEncoding::V1 => super::jcs::write_canonical(&mut out, text),
                RowEncoding::V2 => super::jcs::write_canonical_exact(&mut out, text),
            }
            .map_err(|e| EncodingError::Details(e.to_string()))?;
            let len = u32::try_from(out.len() - at - 4).map_err(|_| EncodingError::TooLong)?;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    put_text(&mut out, row.auth_type.as_deref())?;
    put_text(&mut out, row.auth_id.as_deref())?;
    match row.seal_seq {
        None => out.push(TAG_NULL),
        Some(n) => {
            out.push(TAG_INT);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    Ok(out)
}

/// `SHA-256(ROW_DOMAIN || encode(row))`: the hash a new seal's leaf holds (row encoding 2).
pub fn row_hash(row: &StoredRow) -> Result<[u8; 32], EncodingError> {
    row_hash_as(RowEncoding::CURRENT, row)
}

/// The row hash of row encoding 2 by its name (what [`row_hash`] computes today).
pub fn row_hash_v2(row: &StoredRow) -> Result<[u8; 32], EncodingError> {
    row_hash_as(RowEncoding::V2, row)
}

/// The row hash in `version` (a seal's leaves use the version the seal names).
pub fn row_hash_as(version: RowEncoding, row: &StoredRow) -> Result<[u8; 32], EncodingError> {
    let mut h = Sha256::new();
    h.update(ROW_DOMAIN);
    h.update(encode_as(version, row)?);
    Ok(h.finalize().into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;

    pub fn sample() -> StoredRow {
        StoredRow {
            id: "evt-1".into(),
            occurred_at: Utc.timestamp_micros(1_767_225_600_123_456).unwrap(),
            ingested_at: Utc.timestamp_micros(1_767_225_601_000_000).unwrap(),
            source: "/registry".into(),
            r#type: "org.openg2p.registry.update".into(),
            subject: None,
            actor_type: "user".into(),
            actor_id: "u-42".into(),
            resource_type: Some("beneficiary".into()),
            resource_id: Some("".into()),
            action: "update".into(),
            outcome: "success".into(),
            reason: None,
            trace_id: None,
            details: Some(r#"{"b": 1.0, "a": "é", "c": [1e2, -0]}"#.into()),
            auth_type: None,
            auth_id: None,
            seal_seq: Some(7),
        }
    }

    #[test]
    fn null_and_empty_string_differ() {
        let a = sample();
        let mut b = sample();
        b.resource_id = None;
        assert_ne!(row_hash(&a).unwrap(), row_hash(&b).unwrap());
    }

    #[test]
    fn details_are_canonicalised() {
        assert_eq!(
            crate::integrity::jcs::canonicalize(r#"{"b": 1.0, "a": "é", "c": [1e2, -0]}"#).unwrap(),
            r#"{"a":"é","b":1,"c":[100,0]}"#
        );
        let mut b = sample();
        b.details = Some(r#"{"c":[100,0],"a":"é","b":1}"#.into());
        assert_eq!(row_hash(&sample()).unwrap(), row_hash(&b).unwrap());
    }

    #[test]
    fn version_2_hashes_integers_exactly_and_equals_version_1_otherwise() {
        let mut a = sample();
        a.details = Some(r#"{"n": 9007199254740993}"#.into());
        let mut b = sample();
        b.details = Some(r#"{"n": 9007199254740992}"#.into());
        assert_eq!(
            row_hash_as(RowEncoding::V1, &a).unwrap(),
            row_hash_as(RowEncoding::V1, &b).unwrap()
        );
        assert_ne!(row_hash_v2(&a).unwrap(), row_hash_v2(&b).unwrap());
        assert_eq!(encode_v1(&sample()).unwrap(), encode(&sample()).unwrap());
    }

    #[test]
    fn every_column_changes_the_hash() {
        let base = row_hash(&sample()).unwrap();
        let mut changes: Vec<StoredRow> = Vec::new();
        macro_rules! change {
            ($f:ident, $v:expr) => {{
                let mut r = sample();
                r.$f = $v;
                changes.push(r);
            }};
        }
        change!(id, "evt-2".into());
        change!(occurred_at, Utc.timestamp_micros(1).unwrap());
        change!(ingested_at, Utc.timestamp_micros(1).unwrap());
        change!(source, "x".into());
        change!(r#type, "x".into());
        change!(subject, Some("x".into()));
        change!(actor_type, "x".into());
        change!(actor_id, "x".into());
        change!(resource_type, None);
        change!(resource_id, Some("x".into()));
        change!(action, "x".into());
        change!(outcome, "x".into());
        change!(reason, Some("x".into()));
        change!(trace_id, Some("x".into()));
        change!(details, Some(r#"{"a":"é","b":2,"c":[100,0]}"#.into()));
        change!(auth_type, Some("x".into()));
        change!(auth_id, Some("x".into()));
        change!(seal_seq, Some(8));
        assert_eq!(changes.len(), crate::store::columns::COLUMNS.len());
        for c in changes {
            assert_ne!(row_hash(&c).unwrap(), base, "{c:?}");
        }
    }
}
