//! `drop`, `mask` and `pseudonymise`: what a selected value becomes.

use std::path::Path;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a dropped value is replaced by, so readers see something was there.
pub const DROPPED: &str = "[dropped]";

/// The smallest HMAC key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// The text a value is treated as: a string as it is, anything else as its JSON.
pub fn text(v: &Value) -> std::borrow::Cow<'_, str> {
    match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

/// `*` for every character but the last `keep_last`.
pub fn mask(v: &Value, keep_last: usize) -> String {
    let t = text(v);
    let n = t.chars().count();
    let hidden = n.saturating_sub(keep_last);
    t.chars()
        .enumerate()
        .map(|(i, c)| if i < hidden { '*' } else { c })
        .collect()
}

/// One HMAC key generation.
#[derive(Clone)]
pub struct HmacKey {
    /// First 8 hex digits of the key's SHA-256: names the generation without revealing it.
    pub id: String,
    /// Keyed once; cloned per value.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKey").field("id", &self.id).finish()
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} holds {len} bytes; an HMAC key needs at least {MIN_KEY_BYTES} bytes of secret \
         (make one with `openssl rand 32 > FILE`)"
    )]
    Short { path: String, len: usize },
}

impl HmacKey {
    /// Reads a key file: its bytes (a trailing newline of a text file left out), at least
    /// [`MIN_KEY_BYTES`].
    pub fn load(path: &Path) -> Result<HmacKey, KeyFileError> {
        let shown = path.display().to_string();
        let mut secret = std::fs::read(path).map_err(|source| KeyFileError::Io {
            path: shown.clone(),
            source,
        })?;
        if std::str::from_utf8(&secret).is_ok() {
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
        }
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyFileError::Short {
                path: shown,
                len: secret.len(),
            });
        }
        HmacKey::from_secret(secret).ok_or(KeyFileError::Short {
            path: shown,
            len: 0,
        })
    }

    /// A key from its secret bytes (`None` only if HMAC refused the key, which it never does).
    pub fn from_secret(secret: Vec<u8>) -> Option<HmacKey> {
        let id = hex::encode(&Sha256::digest(&secret)[..4]);
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret).ok()?;
        Some(HmacKey { id, mac })
    }

    /// `hmac-sha256:<key-id>:<hex>` of `value`.
    pub fn pseudonym(&self, value: &str) -> String {
        format!(
            "hmac-sha256:{}:{}",
            self.id,
            hex::encode(self.digest(value))
        )
    }

    pub fn digest(&self, value: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The current key and the older generations, newest first.
#[derive(Debug, Clone)]
pub struct HmacKeys {
    pub current: HmacKey,
    pub previous: Vec<HmacKey>,
}

impl HmacKeys {
    /// The pseudonym of `value` under every generation, current first.
    pub fn all_pseudonyms(&self, value: &str) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.pseudonym(value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mask_keeps_the_last_characters() {
        assert_eq!(mask(&json!("0712345678"), 2), "********78");
        assert_eq!(mask(&json!("ab"), 5), "ab");
        assert_eq!(mask(&json!(12345), 1), "****5");
        assert_eq!(mask(&json!("é€x"), 1), "**x");
    }

    #[test]
    fn pseudonyms_correlate_and_name_their_key() {
        let k = HmacKey::from_secret(vec![7; 32]).unwrap();
        let other = HmacKey::from_secret(vec![8; 32]).unwrap();
        assert_eq!(k.pseudonym("NID-1"), k.pseudonym("NID-1"));
        assert_ne!(k.pseudonym("NID-1"), k.pseudonym("NID-2"));
        assert_ne!(k.pseudonym("NID-1"), other.pseudonym("NID-1"));
        assert!(
            k.pseudonym("x")
                .starts_with(&format!("hmac-sha256:{}:", k.id))
        );
    }

    #[test]
    fn short_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [1u8; 31]).unwrap();
        assert!(matches!(
            HmacKey::load(&p),
            Err(KeyFileError::Short { len: 31, .. })
        ));
        std::fs::write(&p, [1u8; 32]).unwrap();
        assert!(HmacKey::load(&p).is_ok());
    }
}
