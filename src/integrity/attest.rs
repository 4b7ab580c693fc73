//! Writer attestation: every transaction that stores rows is signed by the writer (the sink)
//! with a key the database never holds, so a row inserted or changed by someone with database
//! access before it is sealed has no valid attestation. The sealer seals only attested rows;
//! `verify` reports every row without one as `row-unattested`. `docs/integrity.md` ("Writer
//! attestation") documents the bytes and the rules for third-party verifiers.
//!
//! In data-flow order:
//!
//! - [`row_digest`]: what a row's attestation entry says about it (pure): the first 16 bytes of
//!   SHA-256 over the canonical row encoding without `ingested_at` and `seal_seq`, which the
//!   writer cannot know before it writes (the transaction's `ingested_at` is signed once per
//!   attestation instead);
//! - [`Attestation`], [`Attestor`]: the signed record of one storing transaction and the writer
//!   key that signs it; the store's insert path signs each storing transaction through it
//!   (`store::Attest`) and stores the attestation in that transaction;
//! - [`WriterKeys`]: the public keys the sealer and `verify` accept;
//! - [`SealCheck`]: the sealer's test of each row before it goes into a seal;
//! - [`verify_rows`]: `verify`'s pass over every numbered row.
//!
//! Rows numbered at or below the **boundary** — the signed `lo` of the first valid attestation
//! — were stored before attestation began (*unattested-legacy*: counted, not findings). Until
//! a first valid attestation exists the sealer waits and `verify` requires attestation of
//! every row, so deleting every attestation makes every row a finding rather than legacy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use futures_util::TryStreamExt as _;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use super::IntegrityError;
use super::encoding::{StoredRow, micros};
use super::seal::{KeyError, key_id, load_public_key, load_signing_key, signature_valid};
use crate::event::Row;
use crate::store::attestations::{self, Attest, Signed, StoredAttestation};
pub use crate::store::attestations::{DIGEST_LEN, RowDigest, WriteStamp};

/// First bytes hashed for a row's digest: a row digest never equals a row or seal hash.
pub const ROW_DOMAIN: &[u8] = b"audit-manager/attested-row/v1\n";
/// First bytes of every attestation: domain separation from seals and a format version.
pub const ATTESTATION_DOMAIN: &[u8] = b"audit-manager/attestation/v1\n";
const TAG_NULL: u8 = 0x00;
const TAG_TEXT: u8 = 0x01;
const TAG_TIME: u8 = 0x02;
const TAG_JSON: u8 = 0x04;
/// `details` that has no canonical form (a number beyond a double): its text as is, which
/// the stored `jsonb` will not reproduce, so such a row is reported rather than trusted.
const TAG_RAW_JSON: u8 = 0x05;

// ---------------------------------------------------------------------------------------------
// Row digests (pure)

/// The attested columns of a row, borrowed.
struct Fields<'a> {
    id: &'a str,
    occurred_at_us: i64,
    source: &'a str,
    r#type: &'a str,
    subject: Option<&'a str>,
    actor_type: &'a str,
    actor_id: &'a str,
    resource_type: Option<&'a str>,
    resource_id: Option<&'a str>,
    action: &'a str,
    outcome: &'a str,
    reason: Option<&'a str>,
    trace_id: Option<&'a str>,
    details: Option<&'a str>,
    auth_type: Option<&'a str>,
    auth_id: Option<&'a str>,
}

/// The attested columns of `$r`, a [`Row`] or a [`StoredRow`] (they name them alike).
/// `occurred_at` is taken to the microsecond as PostgreSQL stores it (the insert path sends it
/// truncated, by `COPY` and by binding alike).
macro_rules! fields_of {
    ($r:expr) => {{
        let r = $r;
        Fields {
            id: &r.id,
            occurred_at_us: micros(r.occurred_at),
            source: &r.source,
            r#type: &r.r#type,
            subject: r.subject.as_deref(),
            actor_type: &r.actor_type,
            actor_id: &r.actor_id,
            resource_type: r.resource_type.as_deref(),
            resource_id: r.resource_id.as_deref(),
            action: &r.action,
            outcome: &r.outcome,
            reason: r.reason.as_deref(),
            trace_id: r.trace_id.as_deref(),
            details: r.details.as_deref(),
            auth_type: r.auth_type.as_deref(),
            auth_id: r.auth_id.as_deref(),
        }
    }};
}

fn put_len(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    // Values are bounded far below 4 GiB by ingest (a few MiB per event).
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.push(tag);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn put_text(buf: &mut Vec<u8>, v: Option<&str>) {
    match v {
        None => buf.push(TAG_NULL),
        Some(s) => put_len(buf, TAG_TEXT, s.as_bytes()),
    }
}

/// `details` in its canonical (JCS) form, as in the row encoding. A text with a repeated
/// member name (JCS refuses it) is first read as `jsonb` reads it, the last one winning.
fn put_details(buf: &mut Vec<u8>, v: Option<&str>) {
    let Some(text) = v else {
        buf.push(TAG_NULL);
        return;
    };
    let at = buf.len();
    buf.push(TAG_JSON);
    buf.extend_from_slice(&[0; 4]);
    let mut ok = super::jcs::write_canonical(buf, text).is_ok();
    if !ok {
        buf.truncate(at + 5);
        ok = serde_json::from_str::<serde_json::Value>(text)
            .is_ok_and(|v| super::jcs::write_canonical(buf, &v.to_string()).is_ok());
    }
    if ok {
        let len = u32::try_from(buf.len() - at - 5).unwrap_or(u32::MAX);
        buf[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
    } else {
        buf.truncate(at);
        put_len(buf, TAG_RAW_JSON, text.as_bytes());
    }
}

fn digest_fields(f: &Fields<'_>, buf: &mut Vec<u8>) -> RowDigest {
    buf.clear();
    buf.extend_from_slice(ROW_DOMAIN);
    put_text(buf, Some(f.id));
    buf.push(TAG_TIME);
    buf.extend_from_slice(&f.occurred_at_us.to_be_bytes());
    put_text(buf, Some(f.source));
    put_text(buf, Some(f.r#type));
    put_text(buf, f.subject);
    put_text(buf, Some(f.actor_type));
    put_text(buf, Some(f.actor_id));
    put_text(buf, f.resource_type);
    put_text(buf, f.resource_id);
    put_text(buf, Some(f.action));
    put_text(buf, Some(f.outcome));
    put_text(buf, f.reason);
    put_text(buf, f.trace_id);
    put_details(buf, f.details);
    put_text(buf, f.auth_type);
    put_text(buf, f.auth_id);
    let h = Sha256::digest(&buf[..]);
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&h[..DIGEST_LEN]);
    d
}

/// The digest of a row as the writer sends it (`buf` is scratch space, reused across rows).
pub fn row_digest(row: &Row, buf: &mut Vec<u8>) -> RowDigest {
    digest_fields(&fields_of!(row), buf)
}

/// The digest of a row as stored; equal to [`row_digest`] of the row that was sent when
/// nothing changed it.
pub fn stored_digest(row: &StoredRow, buf: &mut Vec<u8>) -> RowDigest {
    digest_fields(&fields_of!(row), buf)
}

// ---------------------------------------------------------------------------------------------
// Attestations (pure)

/// What one storing transaction signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// First 8 bytes of SHA-256 of the writer's public key.
    pub key_id: [u8; 8],
    /// The transaction's `now()`, which is every row's `ingested_at`, in µs.
    pub ingested_at_us: i64,
    /// `audit_events_seal_seq`'s last value when the transaction began: every row it stored
    /// has a larger `seal_seq`.
    pub lo: i64,
    /// One per row sent, in the order sent (a row skipped as a duplicate keeps its digest).
    pub digests: Vec<RowDigest>,
}

impl Attestation {
    /// The canonical bytes (all integers big-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(ATTESTATION_DOMAIN.len() + 28 + self.digests.len() * DIGEST_LEN);
        out.extend_from_slice(ATTESTATION_DOMAIN);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.ingested_at_us.to_be_bytes());
        out.extend_from_slice(&self.lo.to_be_bytes());
        let n = u32::try_from(self.digests.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for d in &self.digests {
            out.extend_from_slice(d);
        }
        out
    }

    /// Parses canonical bytes; `None` when they are not exactly an attestation.
    pub fn from_bytes(bytes: &[u8]) -> Option<Attestation> {
        let rest = bytes.strip_prefix(ATTESTATION_DOMAIN)?;
        let (key_id, rest) = rest.split_first_chunk::<8>()?;
        let (at, rest) = rest.split_first_chunk::<8>()?;
        let (lo, rest) = rest.split_first_chunk::<8>()?;
        let (n, rest) = rest.split_first_chunk::<4>()?;
        let n = u32::from_be_bytes(*n) as usize;
        if rest.len() != n.checked_mul(DIGEST_LEN)? {
            return None;
        }
        let digests = rest
            .chunks_exact(DIGEST_LEN)
            .map(|c| {
                let mut d = [0u8; DIGEST_LEN];
                d.copy_from_slice(c);
                d
            })
            .collect();
        Some(Attestation {
            key_id: *key_id,
            ingested_at_us: i64::from_be_bytes(*at),
            lo: i64::from_be_bytes(*lo),
            digests,
        })
    }
}

/// SHA-256 of an attestation's bytes: what the writer signs.
pub fn attestation_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The writer's key (`integrity.writer_key_file`). Never printed.
pub struct Attestor {
    key: SigningKey,
    id: [u8; 8],
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attestor(key id {})", hex::encode(self.id))
    }
}

impl Attestor {
    pub fn new(key: SigningKey) -> Attestor {
        let id = key_id(&key.verifying_key());
        Attestor { key, id }
    }

    /// Reads a key file written by `audit-manager keygen`.
    pub fn load(path: &Path) -> Result<Attestor, KeyError> {
        Ok(Attestor::new(load_signing_key(path)?))
    }

    pub fn key_id(&self) -> [u8; 8] {
        self.id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The digests of `rows`, in order.
    pub fn digests(rows: &[&Row]) -> Vec<RowDigest> {
        let mut buf = Vec::with_capacity(1024);
        rows.iter().map(|r| row_digest(r, &mut buf)).collect()
    }

    /// The attestation of a transaction stamped `stamp` that sent rows with `digests`, its
    /// bytes and signature.
    pub fn sign(&self, stamp: &WriteStamp, digests: &[RowDigest]) -> (Vec<u8>, [u8; 64]) {
        let bytes = Attestation {
            key_id: self.id,
            ingested_at_us: micros(stamp.ingested_at),
            lo: stamp.lo,
            digests: digests.to_vec(),
        }
        .to_bytes();
        let signature = self.key.sign(&attestation_hash(&bytes)).to_bytes();
        (bytes, signature)
    }
}

/// The store attests its writes with the writer key (see `store::insert`).
impl Attest for Attestor {
    fn digests(&self, rows: &[&Row]) -> Vec<RowDigest> {
        Attestor::digests(rows)
    }

    fn sign(&self, stamp: &WriteStamp, digests: &[RowDigest]) -> Signed {
        let (bytes, signature) = Attestor::sign(self, stamp, digests);
        Signed {
            key_id: hex::encode(self.id),
            bytes,
            signature: signature.to_vec(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checking attestations

/// Public keys of the writers whose attestations are accepted
/// (`integrity.writer_public_key_files`); keys in the database are never trusted.
#[derive(Debug, Clone, Default)]
pub struct WriterKeys(BTreeMap<[u8; 8], VerifyingKey>);

impl WriterKeys {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> WriterKeys {
        WriterKeys(keys.into_iter().map(|k| (key_id(&k), k)).collect())
    }

    /// Reads public key files (`FILE.pub` from `keygen`).
    pub fn load(paths: &[PathBuf]) -> Result<WriterKeys, KeyError> {
        let keys = paths
            .iter()
            .map(|p| load_public_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WriterKeys::new(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The attestation in `stored` when it is valid: readable, signed by a trusted key, and
    /// its copied columns equal to its signed fields.
    fn validate(&self, stored: &StoredAttestation) -> Option<Attestation> {
        let a = Attestation::from_bytes(&stored.bytes)?;
        let key = self.0.get(&a.key_id)?;
        let consistent = stored.lo_seq == a.lo
            && micros(stored.ingested_at) == a.ingested_at_us
            && stored.key_id == hex::encode(a.key_id);
        (consistent && signature_valid(key, &attestation_hash(&stored.bytes), &stored.signature))
            .then_some(a)
    }
}

/// The boundary: the signed `lo` of the first valid attestation (in `lo_seq` order), `None`
/// when there is none.
async fn boundary(
    conn: &mut PgConnection,
    keys: &WriterKeys,
) -> Result<Option<i64>, IntegrityError> {
    let mut rows = attestations::by_lo(conn);
    while let Some(stored) = rows
        .try_next()
        .await
        .map_err(IntegrityError::db("reading audit_attestations"))?
    {
        if let Some(a) = keys.validate(&stored) {
            return Ok(Some(a.lo));
        }
    }
    Ok(None)
}

/// Where an attestation's rows are, and the `ingested_at` they must have.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Which attestation (for removal).
    n: u64,
    lo: i64,
    hi: i64,
    ingested_at_us: i64,
}

/// Row digests of the attestations in view, each with where its row may be.
#[derive(Default)]
struct Index {
    by_digest: HashMap<RowDigest, Vec<Span>>,
}

impl Index {
    fn add(&mut self, span: Span, digests: &[RowDigest]) {
        for d in digests {
            self.by_digest.entry(*d).or_default().push(span);
        }
    }

    fn remove(&mut self, n: u64, digests: &[RowDigest]) {
        for d in digests {
            if let Some(spans) = self.by_digest.get_mut(d) {
                spans.retain(|s| s.n != n);
                if spans.is_empty() {
                    self.by_digest.remove(d);
                }
            }
        }
    }

    /// Whether a valid attestation lists `row` with its stored content, at its number and
    /// with its `ingested_at`.
    fn attests(&self, row: &StoredRow, buf: &mut Vec<u8>) -> bool {
        let Some(seq) = row.seal_seq else {
            return false;
        };
        let at = micros(row.ingested_at);
        self.by_digest
            .get(&stored_digest(row, buf))
            .is_some_and(|spans| {
                spans
                    .iter()
                    .any(|s| s.lo < seq && seq <= s.hi && s.ingested_at_us == at)
            })
    }
}

/// The sealer's attestation check, kept across passes.
pub struct SealCheck {
    keys: WriterKeys,
    /// The lowest boundary seen: attestations are never deleted by this service, so a higher
    /// one later means some were, and does not move it.
    boundary: Option<i64>,
    index: Index,
    buf: Vec<u8>,
    /// Rows refused and reported (by `seal_seq`): a refused row is read again by later passes
    /// until a seal's range passes it, and reported once.
    reported: HashSet<i64>,
}

impl SealCheck {
    pub fn new(keys: WriterKeys) -> SealCheck {
        SealCheck {
            keys,
            boundary: None,
            index: Index::default(),
            buf: Vec::with_capacity(1024),
            reported: HashSet::new(),
        }
    }

    /// Whether sealing waits for a first valid attestation (for `/health`).
    pub fn waiting(&self) -> bool {
        self.boundary.is_none()
    }

    /// Rows refused since start (for `/health`).
    pub fn refused(&self) -> u64 {
        self.reported.len() as u64
    }

    /// Whether attestation has begun (a valid attestation exists); the sealer waits until it
    /// has. Called once per pass.
    pub async fn begin_pass(&mut self, conn: &mut PgConnection) -> Result<bool, IntegrityError> {
        if let Some(b) = boundary(conn, &self.keys).await? {
            self.boundary = Some(self.boundary.map_or(b, |old| old.min(b)));
        }
        Ok(self.boundary.is_some())
    }

    /// Loads the attestations of rows numbered in `(after, upto]`.
    pub async fn load(
        &mut self,
        conn: &mut PgConnection,
        after: i64,
        upto: i64,
    ) -> Result<(), IntegrityError> {
        self.index = Index::default();
        let mut rows = attestations::overlapping(conn, after, upto);
        let mut n = 0;
        while let Some(stored) = rows
            .try_next()
            .await
            .map_err(IntegrityError::db("reading audit_attestations"))?
        {
            if let Some(a) = self.keys.validate(&stored) {
                n += 1;
                let span = Span {
                    n,
                    lo: a.lo,
                    hi: stored.hi_seq,
                    ingested_at_us: a.ingested_at_us,
                };
                self.index.add(span, &a.digests);
            }
        }
        Ok(())
    }

    /// Whether `row` (of the window last loaded) may be sealed: it is legacy (at or below the
    /// boundary) or attested. A refused row is logged and counted once.
    pub fn admits(&mut self, row: &StoredRow) -> bool {
        let seq = row.seal_seq.unwrap_or(i64::MIN);
        if self.boundary.is_some_and(|b| seq <= b) || self.index.attests(row, &mut self.buf) {
            return true;
        }
        if self.reported.insert(seq) {
            metrics::counter!("audit_seal_unattested_rows_total").increment(1);
            tracing::error!(
                id = %row.id,
                occurred_at = %row.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                seal_seq = seq,
                "row without a valid writer attestation NOT sealed (inserted or changed behind \
                 the sink's back, or stored by a writer without integrity.writer_key_file); run \
                 `audit-manager verify`"
            );
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------
// verify

/// The next valid attestation of `atts`, with its `hi_seq`.
async fn next_valid<S>(
    atts: &mut S,
    keys: &WriterKeys,
) -> Result<Option<(Attestation, i64)>, IntegrityError>
where
    S: futures_util::Stream<Item = Result<StoredAttestation, sqlx::Error>> + Unpin,
{
    while let Some(stored) = atts
        .try_next()
        .await
        .map_err(IntegrityError::db("reading audit_attestations"))?
    {
        if let Some(a) = keys.validate(&stored) {
            return Ok(Some((a, stored.hi_seq)));
        }
    }
    Ok(None)
}

/// What `verify`'s attestation pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowsChecked {
    /// One line per numbered row above the boundary that no valid attestation lists (each a
    /// `row-unattested` finding of `verify`).
    pub unattested: Vec<String>,
    /// Rows a valid attestation lists.
    pub attested: u64,
    /// Rows at or below the boundary without one (unattested-legacy).
    pub legacy: u64,
    /// The signed `lo` of the first valid attestation, `None` when there is none.
    pub boundary: Option<i64>,
}

/// `verify`'s attestation pass: every row with a `seal_seq` (within `from`/`to`) above the
/// boundary must be attested. A pass of its own over the rows (streamed in `seal_seq` order,
/// merged with the attestations in `lo_seq` order, so memory holds only the attestations whose
/// ranges are open).
pub async fn verify_rows(
    pool: &PgPool,
    keys: &WriterKeys,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<RowsChecked, IntegrityError> {
    let mut att_conn = pool
        .acquire()
        .await
        .map_err(IntegrityError::db("connecting"))?;
    let mut row_conn = pool
        .acquire()
        .await
        .map_err(IntegrityError::db("connecting"))?;
    let mut atts = attestations::by_lo(&mut att_conn);
    let mut rows = crate::store::rows::numbered_between(&mut row_conn, from, to);

    let mut next = next_valid(&mut atts, keys).await?;
    let boundary = next.as_ref().map(|(a, _)| a.lo);
    let mut index = Index::default();
    // Open attestations by (hi, n), for removal once rows pass their range.
    let mut open: BTreeMap<(i64, u64), Vec<RowDigest>> = BTreeMap::new();
    let mut n: u64 = 0;
    let mut buf = Vec::with_capacity(1024);
    let mut checked = RowsChecked {
        boundary,
        ..RowsChecked::default()
    };
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(IntegrityError::db("reading audit_events"))?
    {
        let seq = row.seal_seq.unwrap_or(i64::MIN);
        while let Some((a, hi)) = next.take() {
            if a.lo >= seq {
                next = Some((a, hi));
                break;
            }
            n += 1;
            let span = Span {
                n,
                lo: a.lo,
                hi,
                ingested_at_us: a.ingested_at_us,
            };
            index.add(span, &a.digests);
            open.insert((hi, n), a.digests);
            next = next_valid(&mut atts, keys).await?;
        }
        while let Some(entry) = open.first_entry() {
            if entry.key().0 >= seq {
                break;
            }
            let ((_, done), digests) = entry.remove_entry();
            index.remove(done, &digests);
        }
        if index.attests(&row, &mut buf) {
            checked.attested += 1;
        } else if boundary.is_some_and(|b| seq <= b) {
            checked.legacy += 1;
        } else {
            checked.unattested.push(format!(
                "id={} occurred_at={}: seal_seq {seq}: no valid writer attestation lists this \
                 row as stored (inserted or changed by someone without a writer key)",
                row.id,
                row.occurred_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            ));
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row() -> Row {
        Row {
            id: "evt-1".into(),
            occurred_at: Utc.timestamp_micros(1_767_225_600_123_456).unwrap(),
            source: "/registry".into(),
            r#type: "t".into(),
            subject: None,
            actor_type: "user".into(),
            actor_id: "u-42".into(),
            resource_type: Some("beneficiary".into()),
            resource_id: Some("".into()),
            action: "update".into(),
            outcome: "success".into(),
            reason: None,
            trace_id: None,
            details: Some(r#"{"b": 1.0, "a": "\u00e9", "c": [1e2, -0]}"#.into()),
            auth_type: Some("api_key".into()),
            auth_id: None,
        }
    }

    fn stored(r: &Row, details: Option<&str>) -> StoredRow {
        StoredRow {
            id: r.id.clone(),
            occurred_at: r.occurred_at,
            ingested_at: Utc.timestamp_micros(1).unwrap(),
            source: r.source.clone(),
            r#type: r.r#type.clone(),
            subject: r.subject.clone(),
            actor_type: r.actor_type.clone(),
            actor_id: r.actor_id.clone(),
            resource_type: r.resource_type.clone(),
            resource_id: r.resource_id.clone(),
            action: r.action.clone(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
            trace_id: r.trace_id.clone(),
            details: details.map(str::to_string),
            auth_type: r.auth_type.clone(),
            auth_id: r.auth_id.clone(),
            seal_seq: Some(9),
        }
    }

    #[test]
    fn the_sent_row_and_the_stored_row_have_one_digest() {
        let mut buf = Vec::new();
        let r = row();
        // jsonb's rendering of the same value: keys reordered, numbers and escapes rewritten.
        let s = stored(&r, Some(r#"{"a": "é", "b": 1.0, "c": [100, 0]}"#));
        assert_eq!(row_digest(&r, &mut buf), stored_digest(&s, &mut buf));
        // A repeated member name: jsonb keeps the last one.
        let mut dup = row();
        dup.details = Some(r#"{"k": 1, "k": 2}"#.into());
        let s = stored(&dup, Some(r#"{"k": 2}"#));
        assert_eq!(row_digest(&dup, &mut buf), stored_digest(&s, &mut buf));
    }

    #[test]
    fn every_attested_column_changes_the_digest() {
        let mut buf = Vec::new();
        let base = row_digest(&row(), &mut buf);
        let changes: Vec<fn(&mut Row)> = vec![
            |r| r.id.push('x'),
            |r| r.occurred_at += chrono::Duration::microseconds(1),
            |r| r.source.push('x'),
            |r| r.r#type.push('x'),
            |r| r.subject = Some(String::new()),
            |r| r.actor_type.push('x'),
            |r| r.actor_id.push('x'),
            |r| r.resource_type = None,
            |r| r.resource_id = None,
            |r| r.action.push('x'),
            |r| r.outcome = "failure".into(),
            |r| r.reason = Some("r".into()),
            |r| r.trace_id = Some("t".into()),
            |r| r.details = Some(r#"{"a":"é","b":2,"c":[100,0]}"#.into()),
            |r| r.auth_type = None,
            |r| r.auth_id = Some("x".into()),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut r = row();
            change(&mut r);
            assert_ne!(row_digest(&r, &mut buf), base, "column {i}");
        }
    }

    #[test]
    fn attestations_round_trip_and_bind_their_signature() {
        let attestor = Attestor::new(SigningKey::from_bytes(&[5; 32]));
        let stamp = WriteStamp {
            ingested_at: Utc.timestamp_micros(77).unwrap(),
            lo: 41,
        };
        let digests = [[1u8; DIGEST_LEN], [2u8; DIGEST_LEN]];
        let (bytes, sig) = attestor.sign(&stamp, &digests);
        let a = Attestation::from_bytes(&bytes).unwrap();
        assert_eq!(
            (a.key_id, a.ingested_at_us, a.lo, a.digests.as_slice()),
            (attestor.key_id(), 77, 41, &digests[..])
        );
        assert_eq!(a.to_bytes(), bytes);
        assert!(Attestation::from_bytes(&bytes[..bytes.len() - 1]).is_none());
        let keys = WriterKeys::new([attestor.verifying_key()]);
        let stored = |bytes: Vec<u8>, lo_seq| StoredAttestation {
            lo_seq,
            hi_seq: 50,
            ingested_at: stamp.ingested_at,
            key_id: hex::encode(attestor.key_id()),
            bytes,
            signature: sig.to_vec(),
        };
        assert!(keys.validate(&stored(bytes.clone(), 41)).is_some());
        assert!(
            keys.validate(&stored(bytes.clone(), 40)).is_none(),
            "copy differs"
        );
        let mut changed = bytes.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(
            keys.validate(&stored(changed, 41)).is_none(),
            "digest changed"
        );
        assert!(
            WriterKeys::default().validate(&stored(bytes, 41)).is_none(),
            "untrusted key"
        );
    }
}
