//! The manifest of one archive part: what the part holds (month, rows, `occurred_at` bounds,
//! each file's size and SHA-256, the `seal_seq` range and the seals naming it, their key ids)
//! and the hash of the previous manifest, signed with the integrity signing key.
//!
//! The object is JSON: `{"manifest": {…}, "hash": HEX, "key_id": HEX, "signature": HEX}`.
//! `hash` = SHA-256(`"audit-manager/archive-manifest/v1\n"` || the RFC 8785 (JCS) form of the
//! `manifest` value); `signature` = ed25519 over `hash` by the key whose id (first 8 bytes of
//! SHA-256 of the public key, as for seals) is `key_id`. Manifests chain: each names the hash
//! of the manifest numbered `sequence - 1` (`previous`, null for the first).

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};

use crate::integrity::seal::{Signer, signature_valid};

/// Domain-separation prefix of a manifest hash (a manifest hash never equals a seal's or a
/// row's).
pub const MANIFEST_DOMAIN: &[u8] = b"audit-manager/archive-manifest/v1\n";

/// The manifest format this release writes.
pub const FORMAT: u32 = 1;

/// One object of a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the archive root.
    pub path: String,
    /// `parquet` or `seals`.
    pub kind: String,
    pub bytes: u64,
    /// SHA-256 of the object, hex.
    pub sha256: String,
    /// Rows (Parquet) or seals (seals file) it holds.
    pub count: u64,
}

/// The seals a part carries (`first..=last`, consecutive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealRange {
    pub first: u64,
    pub last: u64,
}

/// What a manifest states (the signed value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// 1, 2, 3, … over the whole archive, in the order parts were written.
    pub sequence: i64,
    /// Hash (hex) of manifest `sequence - 1`; null for the first.
    pub previous: Option<String>,
    /// `YYYY-MM`.
    pub month: String,
    /// 1, 2, … within the month (later parts hold rows stored after the month was archived).
    pub part: i32,
    /// RFC 3339, when the part was begun.
    pub created_at: String,
    /// Rows in the part's Parquet files.
    pub rows: u64,
    /// Of which without `seal_seq` (stored before sealing began; no seal names them).
    pub legacy_rows: u64,
    /// `occurred_at` bounds of the rows (RFC 3339, µs), null without rows.
    pub occurred_at_min: Option<String>,
    pub occurred_at_max: Option<String>,
    /// The part holds the month's rows with `seal_after < seal_seq <= seal_upto`.
    pub seal_after: i64,
    pub seal_upto: i64,
    /// The seals whose ranges hold those rows, null when it has none.
    pub seals: Option<SealRange>,
    /// Key ids (hex) of those seals.
    pub seal_key_ids: Vec<String>,
    /// Every object of the part: Parquet files in row order, then seals files in seal order.
    pub files: Vec<FileEntry>,
}

/// A manifest with its hash and signature, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<M> {
    manifest: M,
    hash: String,
    key_id: String,
    signature: String,
}

/// The hash of a manifest value given as JSON text.
pub fn hash_of(json: &str) -> Result<[u8; 32], String> {
    let canonical = crate::integrity::jcs::canonicalize(json)
        .map_err(|e| format!("not canonicalisable: {e}"))?;
    let mut h = Sha256::new();
    h.update(MANIFEST_DOMAIN);
    h.update(canonical.as_bytes());
    Ok(h.finalize().into())
}

/// The stored bytes of `m` signed by `signer`, and its hash.
pub fn sign(m: &Manifest, signer: &Signer) -> Result<(Vec<u8>, [u8; 32]), String> {
    let json = serde_json::to_string(m).map_err(|e| e.to_string())?;
    let hash = hash_of(&json)?;
    let env = Envelope {
        manifest: m,
        hash: hex::encode(hash),
        key_id: hex::encode(signer.key_id()),
        signature: hex::encode(signer.sign_hash(&hash)),
    };
    let mut bytes = serde_json::to_vec_pretty(&env).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    Ok((bytes, hash))
}

/// A manifest read from its object, with what is wrong with it (if anything).
#[derive(Debug, Clone)]
pub struct Read {
    pub manifest: Manifest,
    /// The hash recomputed from the manifest value (not the stored `hash` field).
    pub hash: [u8; 32],
    pub key_id: String,
    /// `None` when the signature is valid under a trusted key; else what is wrong.
    pub problem: Option<Problem>,
}

/// Why a manifest's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Signed by a key that is not among the trusted ones.
    UnknownKey(String),
    /// The stored hash or the signature does not match the manifest value.
    BadSignature(String),
}

/// Parses a manifest object and checks its hash and signature against `keys`. `Err`: the
/// object is not a manifest at all.
pub fn read(bytes: &[u8], keys: &BTreeMap<[u8; 8], VerifyingKey>) -> Result<Read, String> {
    let env: Envelope<Box<RawValue>> =
        serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    let manifest: Manifest =
        serde_json::from_str(env.manifest.get()).map_err(|e| format!("not a manifest: {e}"))?;
    let hash = hash_of(env.manifest.get())?;
    let problem = (|| {
        if env.hash != hex::encode(hash) {
            return Some(Problem::BadSignature(
                "its manifest does not hash to its stored hash (edited after signing)".into(),
            ));
        }
        let mut id = [0u8; 8];
        if hex::decode_to_slice(&env.key_id, &mut id).is_err() {
            return Some(Problem::BadSignature(format!(
                "key id {} is not 16 hex digits",
                env.key_id
            )));
        }
        let Some(key) = keys.get(&id) else {
            return Some(Problem::UnknownKey(env.key_id.clone()));
        };
        let sig = hex::decode(&env.signature).unwrap_or_default();
        (!signature_valid(key, &hash, &sig)).then(|| {
            Problem::BadSignature(format!(
                "the signature does not verify under key {}",
                env.key_id
            ))
        })
    })();
    Ok(Read {
        manifest,
        hash,
        key_id: env.key_id,
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT,
            sequence: 2,
            previous: Some("00".repeat(32)),
            month: "2026-03".into(),
            part: 1,
            created_at: "2026-06-01T00:00:00.000000Z".into(),
            rows: 3,
            legacy_rows: 0,
            occurred_at_min: None,
            occurred_at_max: None,
            seal_after: 0,
            seal_upto: 3,
            seals: Some(SealRange { first: 1, last: 1 }),
            seal_key_ids: vec!["ab".into()],
            files: vec![],
        }
    }

    #[test]
    fn signed_manifests_verify_and_edits_do_not() {
        let signer = Signer::new(SigningKey::from_bytes(&[3; 32]));
        let keys = BTreeMap::from([(signer.key_id(), signer.verifying_key())]);
        let (bytes, hash) = sign(&sample(), &signer).unwrap();
        let r = read(&bytes, &keys).unwrap();
        assert_eq!((r.problem, r.hash, r.manifest), (None, hash, sample()));
        let edited = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"rows\": 3", "\"rows\": 4");
        assert!(matches!(
            read(edited.as_bytes(), &keys).unwrap().problem,
            Some(Problem::BadSignature(_))
        ));
        let other = Signer::new(SigningKey::from_bytes(&[4; 32]));
        let (bytes, _) = sign(&sample(), &other).unwrap();
        assert!(matches!(
            read(&bytes, &keys).unwrap().problem,
            Some(Problem::UnknownKey(_))
        ));
    }
}
