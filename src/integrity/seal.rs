//! Seals: the canonical seal bytes, their hash and signature, and the signing keys (pure, no
//! database). `docs/integrity.md` documents every byte.
//!
//! A seal's canonical bytes (format 2; format 1 lacks the two fields marked †), all integers
//! big-endian:
//!
//! ```text
//! SEAL_DOMAIN                       "audit-manager/seal/v2\n" (22 bytes; v1 for format 1)
//! seal_no          u64              1, 2, 3, … without gaps
//! key_id           [u8; 8]          first 8 bytes of SHA-256(ed25519 public key)
//! created_at       i64              µs since the Unix epoch
//! watermark_at     i64              µs; when the sealer held the write lock (see sealer.rs)
//! lo               i64              covered seal_seq range: lo < seal_seq <= hi
//! hi               i64
//! prev_hash        [u8; 32]         seal hash of seal_no - 1; 32 zero bytes for seal 1
//! row_encoding †   u8               how the leaves encode rows (2; format 1 means 1)
//! legacy †         u8 0 | u8 1 then legacy_rows i64, legacy_newest_ingested_at i64 µs
//!                                   (i64::MIN when none): the rows without seal_seq when the
//!                                   chain's first format-2 seal was made (only that seal)
//! leaf_count       u32
//! leaf × leaf_count, in ascending seal_seq:
//!   seal_seq       i64
//!   occurred_at    i64              µs
//!   id_len u32, id bytes (UTF-8)
//!   row_hash       [u8; 32]
//! retention_count  u32
//! retention × retention_count:
//!   name_len u32, partition name bytes
//!   lower          i64              µs, inclusive occurred_at bound of the dropped partition
//!   upper          i64              µs, exclusive
//!   dropped_at     i64              µs
//!   rows           i64              rows the partition held when it was dropped
//!   sealed_rows    i64              of which had a seal_seq
//! ```
//!
//! seal hash = SHA-256(canonical bytes); signature = ed25519(seal hash), 64 bytes.

use std::path::Path;

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// First bytes of every seal: domain separation from row hashes and the format version.
pub const SEAL_DOMAIN: &[u8] = b"audit-manager/seal/v2\n";
/// The prefix of format 1 (before the row encoding and legacy boundary were added); such
/// seals are still read and verified.
pub const SEAL_DOMAIN_V1: &[u8] = b"audit-manager/seal/v1\n";

use super::encoding::RowEncoding;

/// The rows without `seal_seq` (stored before sealing began) when the chain's first format-2
/// seal was made: verify reports any legacy row beyond these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegacyBoundary {
    /// How many rows had no `seal_seq`.
    pub rows: i64,
    /// The newest `ingested_at` among them (µs), `i64::MIN` when there were none.
    pub newest_ingested_at_us: i64,
}

/// At most this many leaves per seal, and at most [`MAX_SEAL_BYTES`]: a seal stays well below
/// Kafka's default 1 MB message limit.
pub const MAX_LEAVES: usize = 4096;
/// Byte budget of one seal's canonical bytes (the sealer closes a seal before exceeding it).
pub const MAX_SEAL_BYTES: usize = 512 * 1024;

/// A sealed row: enough to name it when it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub seal_seq: i64,
    pub occurred_at_us: i64,
    pub id: String,
    pub row_hash: [u8; 32],
}

impl Leaf {
    /// Bytes this leaf adds to a seal.
    pub fn encoded_len(&self) -> usize {
        8 + 8 + 4 + self.id.len() + 32
    }
}

/// A partition dropped by retention, recorded so `verify` tells retention from deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRecord {
    pub partition: String,
    pub lower_us: i64,
    pub upper_us: i64,
    pub dropped_at_us: i64,
    pub rows: i64,
    pub sealed_rows: i64,
}

/// A record of `audit_retention_log` as a seal signs it.
impl From<crate::store::retention::LoggedDrop> for RetentionRecord {
    fn from(d: crate::store::retention::LoggedDrop) -> RetentionRecord {
        RetentionRecord {
            partition: d.partition,
            lower_us: d.lower_us,
            upper_us: d.upper_us,
            dropped_at_us: d.dropped_at_us,
            rows: d.rows,
            sealed_rows: d.sealed_rows,
        }
    }
}

/// The content of a seal (what is signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub seal_no: u64,
    pub key_id: [u8; 8],
    pub created_at_us: i64,
    pub watermark_at_us: i64,
    pub lo: i64,
    pub hi: i64,
    pub prev_hash: [u8; 32],
    pub leaves: Vec<Leaf>,
    pub retention: Vec<RetentionRecord>,
    /// How the leaves encode rows: [`RowEncoding::V1`] only in format 1.
    pub row_encoding: RowEncoding,
    /// Set in the chain's first format-2 seal only.
    pub legacy: Option<LegacyBoundary>,
}

/// Why seal bytes could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealFormatError {
    #[error("does not start with a seal format prefix (neither format 1 nor 2)")]
    Domain,
    #[error("names an unknown row encoding {0}")]
    RowEncoding(u8),
    #[error("is not in canonical form")]
    NotCanonical,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("{0} trailing bytes after the seal")]
    Trailing(usize),
    #[error("a name is not UTF-8")]
    Utf8,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Ids and partition names are far below 4 GiB (ingest bounds events to a few MiB).
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Seal {
    /// The format these bytes take: 1 for a seal with row encoding 1 and no legacy boundary
    /// (what earlier releases made), else 2.
    pub fn format(&self) -> u8 {
        if self.row_encoding == RowEncoding::V1 && self.legacy.is_none() {
            1
        } else {
            2
        }
    }

    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            128 + self.leaves.iter().map(Leaf::encoded_len).sum::<usize>()
                + self.retention.len() * 64,
        );
        let v2 = self.format() == 2;
        out.extend_from_slice(if v2 { SEAL_DOMAIN } else { SEAL_DOMAIN_V1 });
        out.extend_from_slice(&self.seal_no.to_be_bytes());
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.created_at_us.to_be_bytes());
        out.extend_from_slice(&self.watermark_at_us.to_be_bytes());
        out.extend_from_slice(&self.lo.to_be_bytes());
        out.extend_from_slice(&self.hi.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
        if v2 {
            out.push(self.row_encoding as u8);
            match &self.legacy {
                None => out.push(0),
                Some(l) => {
                    out.push(1);
                    out.extend_from_slice(&l.rows.to_be_bytes());
                    out.extend_from_slice(&l.newest_ingested_at_us.to_be_bytes());
                }
            }
        }
        out.extend_from_slice(&(self.leaves.len() as u32).to_be_bytes());
        for l in &self.leaves {
            out.extend_from_slice(&l.seal_seq.to_be_bytes());
            out.extend_from_slice(&l.occurred_at_us.to_be_bytes());
            put_str(&mut out, &l.id);
            out.extend_from_slice(&l.row_hash);
        }
        out.extend_from_slice(&(self.retention.len() as u32).to_be_bytes());
        for r in &self.retention {
            put_str(&mut out, &r.partition);
            for v in [
                r.lower_us,
                r.upper_us,
                r.dropped_at_us,
                r.rows,
                r.sealed_rows,
            ] {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out
    }

    /// Parses canonical bytes (the exact inverse of [`Seal::to_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Seal, SealFormatError> {
        let mut r = Reader { bytes, pos: 0 };
        let domain = r.take(SEAL_DOMAIN.len())?;
        let v2 = if domain == SEAL_DOMAIN {
            true
        } else if domain == SEAL_DOMAIN_V1 {
            false
        } else {
            return Err(SealFormatError::Domain);
        };
        let seal_no = u64::from_be_bytes(r.array()?);
        let key_id = r.array()?;
        let created_at_us = r.i64()?;
        let watermark_at_us = r.i64()?;
        let lo = r.i64()?;
        let hi = r.i64()?;
        let prev_hash = r.array()?;
        let (row_encoding, legacy) = if v2 {
            let b = r.array::<1>()?[0];
            let enc = RowEncoding::from_byte(b).ok_or(SealFormatError::RowEncoding(b))?;
            let legacy = match r.array::<1>()?[0] {
                0 => None,
                1 => Some(LegacyBoundary {
                    rows: r.i64()?,
                    newest_ingested_at_us: r.i64()?,
                }),
                _ => return Err(SealFormatError::NotCanonical),
            };
            if enc == RowEncoding::V1 && legacy.is_none() {
                return Err(SealFormatError::NotCanonical);
            }
            (enc, legacy)
        } else {
            (RowEncoding::V1, None)
        };
        let n = r.u32()? as usize;
        let mut leaves = Vec::with_capacity(n.min(MAX_LEAVES));
        for _ in 0..n {
            leaves.push(Leaf {
                seal_seq: r.i64()?,
                occurred_at_us: r.i64()?,
                id: r.string()?,
                row_hash: r.array()?,
            });
        }
        let n = r.u32()? as usize;
        let mut retention = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            retention.push(RetentionRecord {
                partition: r.string()?,
                lower_us: r.i64()?,
                upper_us: r.i64()?,
                dropped_at_us: r.i64()?,
                rows: r.i64()?,
                sealed_rows: r.i64()?,
            });
        }
        if r.pos != bytes.len() {
            return Err(SealFormatError::Trailing(bytes.len() - r.pos));
        }
        Ok(Seal {
            seal_no,
            key_id,
            created_at_us,
            watermark_at_us,
            lo,
            hi,
            prev_hash,
            leaves,
            retention,
            row_encoding,
            legacy,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SealFormatError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(SealFormatError::Truncated(self.pos))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SealFormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn i64(&mut self) -> Result<i64, SealFormatError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, SealFormatError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, SealFormatError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| SealFormatError::Utf8)
    }
}

/// SHA-256 of canonical seal bytes.
pub fn seal_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// First 8 bytes of SHA-256 of the 32-byte public key.
pub fn key_id(key: &VerifyingKey) -> [u8; 8] {
    let d = Sha256::digest(key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

/// A seal ready to store: bytes, hash, signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedSeal {
    pub seal_no: u64,
    pub bytes: Vec<u8>,
    pub hash: [u8; 32],
    pub signature: [u8; 64],
    pub key_id: [u8; 8],
}

/// The sealer's signing key with its id.
pub struct Signer {
    key: SigningKey,
    id: [u8; 8],
}

impl Signer {
    pub fn new(key: SigningKey) -> Signer {
        let id = key_id(&key.verifying_key());
        Signer { key, id }
    }
    pub fn key_id(&self) -> [u8; 8] {
        self.id
    }
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
    /// The ed25519 signature over `hash` (an archive manifest's, see `archive::manifest`).
    pub fn sign_hash(&self, hash: &[u8; 32]) -> [u8; 64] {
        self.key.sign(hash).to_bytes()
    }
    /// Serializes, hashes and signs `seal` (whose `key_id` must be this key's).
    pub fn sign(&self, seal: &Seal) -> SignedSeal {
        let bytes = seal.to_bytes();
        let hash = seal_hash(&bytes);
        let signature = self.key.sign(&hash).to_bytes();
        SignedSeal {
            seal_no: seal.seal_no,
            bytes,
            hash,
            signature,
            key_id: self.id,
        }
    }
}

/// Whether `signature` over `hash` verifies under `key`.
pub fn signature_valid(key: &VerifyingKey, hash: &[u8; 32], signature: &[u8]) -> bool {
    let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    key.verify(hash, &sig).is_ok()
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} is not an audit-manager key (expected one line of 64 hex digits, as \
         `audit-manager keygen` writes)"
    )]
    Format { path: String },
    #[error("key file {path} holds an invalid ed25519 public key")]
    Invalid { path: String },
    #[error("{path} exists already; keygen never overwrites a key (choose another --out)")]
    Exists { path: String },
}

fn read_hex32(path: &Path) -> Result<[u8; 32], KeyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: shown.clone(),
        source,
    })?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| KeyError::Format { path: shown })?;
    Ok(out)
}

/// Reads a signing key file (64 hex digits: the ed25519 seed).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&read_hex32(path)?))
}

/// Reads a public key file (64 hex digits: the ed25519 public key).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&read_hex32(path)?).map_err(|_| KeyError::Invalid {
        path: path.display().to_string(),
    })
}

/// `keygen`: writes a new signing key to `out` (mode 0600, never overwriting) and its public
/// key to `out.pub`; returns the key id.
pub fn keygen(out: &Path) -> Result<[u8; 8], KeyError> {
    use std::io::Write as _;
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let public = key.verifying_key();
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = std::path::PathBuf::from(pub_path);
    for p in [out, pub_path.as_path()] {
        if p.exists() {
            return Err(KeyError::Exists {
                path: p.display().to_string(),
            });
        }
    }
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| KeyError::Io { path, source }
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(out).map_err(io(out))?;
    writeln!(f, "{}", hex::encode(key.to_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(io(out))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&pub_path)
        .map_err(io(&pub_path))?;
    writeln!(f, "{}", hex::encode(public.to_bytes()))
        .and_then(|()| f.sync_all())
        .map_err(io(&pub_path))?;
    Ok(key_id(&public))
}

/// µs since the Unix epoch as a UTC time (`None` when out of range).
pub fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal() -> Seal {
        Seal {
            seal_no: 3,
            key_id: [1; 8],
            created_at_us: 10,
            watermark_at_us: 9,
            lo: 4,
            hi: 6,
            prev_hash: [7; 32],
            leaves: vec![Leaf {
                seal_seq: 5,
                occurred_at_us: -1,
                id: "é".into(),
                row_hash: [2; 32],
            }],
            retention: vec![RetentionRecord {
                partition: "audit_events_2019_01".into(),
                lower_us: 1,
                upper_us: 2,
                dropped_at_us: 3,
                rows: 4,
                sealed_rows: 5,
            }],
            row_encoding: RowEncoding::V2,
            legacy: Some(LegacyBoundary {
                rows: 3,
                newest_ingested_at_us: 8,
            }),
        }
    }

    #[test]
    fn bytes_round_trip_and_reject_damage() {
        let s = seal();
        let b = s.to_bytes();
        assert_eq!(Seal::from_bytes(&b).unwrap(), s);
        assert_eq!(
            Seal::from_bytes(&b[..b.len() - 1]),
            Err(SealFormatError::Truncated(b.len() - 8))
        );
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(Seal::from_bytes(&longer), Err(SealFormatError::Trailing(1)));
        assert_eq!(Seal::from_bytes(b"x"), Err(SealFormatError::Truncated(0)));
    }

    #[test]
    fn both_formats_round_trip_and_keep_the_header_offsets() {
        let v2 = seal();
        let mut v1 = seal();
        v1.row_encoding = RowEncoding::V1;
        v1.legacy = None;
        let mut plain_v2 = seal();
        plain_v2.legacy = None;
        for s in [&v2, &v1, &plain_v2] {
            let b = s.to_bytes();
            assert_eq!(&Seal::from_bytes(&b).unwrap(), s);
            // lo and hi sit at the same offsets in both formats (the query role reads them).
            assert_eq!(b[54..62], s.lo.to_be_bytes());
            assert_eq!(b[62..70], s.hi.to_be_bytes());
        }
        assert!(v1.to_bytes().starts_with(SEAL_DOMAIN_V1));
        assert!(plain_v2.to_bytes().starts_with(SEAL_DOMAIN));
        assert_eq!(v2.to_bytes().len(), v1.to_bytes().len() + 18);
        let mut bad = plain_v2.to_bytes();
        bad[22 + 8 + 8 + 8 + 8 + 8 + 8 + 32] = 9;
        assert_eq!(Seal::from_bytes(&bad), Err(SealFormatError::RowEncoding(9)));
    }

    #[test]
    fn signatures_bind_the_bytes() {
        let signer = Signer::new(SigningKey::from_bytes(&[9; 32]));
        let mut s = seal();
        s.key_id = signer.key_id();
        let signed = signer.sign(&s);
        let vk = signer.verifying_key();
        assert!(signature_valid(&vk, &signed.hash, &signed.signature));
        let mut other = s.clone();
        other.hi = 7;
        let h = seal_hash(&other.to_bytes());
        assert!(!signature_valid(&vk, &h, &signed.signature));
    }
}
