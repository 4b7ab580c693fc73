//! The ingest half of `encrypt`: values sealed so that only the keeper can open them.
//!
//! One X25519 operation per value would cost more than the whole ingest path, so ingest seals
//! with a *data key*: a random 256-bit XChaCha20-Poly1305 key, wrapped once per rotation to the
//! keeper's X25519 public key with HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305). Every record that holds a sealed value carries the wrapped
//! data key in its marker; a value names its data key by id. Ingest nodes hold the public key
//! only: once a data key is dropped from their memory (at rotation), nothing they keep can
//! open what they sealed.
//!
//! A sealed value is `sealed:v1:<data-key-id>:<base64url(nonce ‖ ciphertext)>`; the plaintext
//! is the JSON array `[subject, value]`; the AEAD's associated data binds the event id and the
//! value's JSON pointer, so a sealed value moved to another event or field does not open.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hpke::aead::ChaCha20Poly1305 as HpkeAead;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde_json::Value;
use sha2::{Digest, Sha256};

type Kem = X25519HkdfSha256;
type PublicKey = <Kem as hpke::Kem>::PublicKey;
type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// HPKE `info`: names what the wrapped secret is for.
const INFO: &[u8] = b"audit-manager privacy data key v1";
/// Prefix of a value sealed at ingest.
pub const SEALED: &str = "sealed:v1:";
/// How long ingest uses one data key before wrapping a new one.
pub const DATA_KEY_LIFETIME: Duration = Duration::from_secs(3600);
const NONCE: usize = 24;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("cannot read key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("HPKE failed: {0}")]
    Hpke(String),
    #[error("a value or key did not authenticate (moved, altered or under another key)")]
    Authentication,
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// The operating system's random numbers, for `hpke` (whose `rand_core` is a newer line than
/// the one the rest of the crate uses).
struct SysRng;

impl hpke::rand_core::RngCore for SysRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::RngCore::next_u32(&mut rand_core::OsRng)
    }

    fn next_u64(&mut self) -> u64 {
        rand_core::RngCore::next_u64(&mut rand_core::OsRng)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, dst)
    }
}

impl hpke::rand_core::CryptoRng for SysRng {}

/// `AAD`: the event id and the value's JSON pointer.
pub fn aad(event_id: &str, pointer: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(event_id.len() + pointer.len() + 1);
    a.extend_from_slice(event_id.as_bytes());
    a.push(0);
    a.extend_from_slice(pointer.as_bytes());
    a
}

/// A nonce never used before by this process or (but with negligible probability) any other:
/// 16 bytes drawn from the operating system once per process, then a 64-bit counter. One
/// `getrandom` call per value would cost more than the encryption itself; XChaCha20-Poly1305
/// asks only that a key never sees a nonce twice, and a subject key is used by every writer
/// (two share a prefix with probability 2⁻¹²⁸ per pair).
fn next_nonce() -> XNonce {
    static PREFIX: OnceLock<[u8; 16]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut p = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut OsRng, &mut p);
        p
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut nonce = XNonce::default();
    nonce[..16].copy_from_slice(prefix);
    nonce[16..].copy_from_slice(&n.to_le_bytes());
    nonce
}

/// XChaCha20-Poly1305 with a fresh nonce ([`next_nonce`]): `nonce ‖ ciphertext`.
pub fn seal_bytes(
    cipher: &XChaCha20Poly1305,
    msg: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let nonce = next_nonce();
    let ct = cipher
        .encrypt(&nonce, Payload { msg, aad })
        .map_err(|_| CryptoError::Malformed("plaintext"))?;
    let mut out = Vec::with_capacity(NONCE + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`seal_bytes`] made.
pub fn open_bytes(
    cipher: &XChaCha20Poly1305,
    sealed: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE {
        return Err(CryptoError::Malformed("ciphertext"));
    }
    let (nonce, ct) = sealed.split_at(NONCE);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| CryptoError::Authentication)
}

/// A cipher from 32 key bytes.
pub fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(Key::from_slice(key))
}

fn read_hex32(path: &Path) -> Result<[u8; 32], CryptoError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CryptoError::KeyFile {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| CryptoError::KeyFile {
        path: shown,
        message: "expected one line of 64 hex digits, as `audit-manager privacy keygen` writes"
            .into(),
    })?;
    Ok(out)
}

/// The keeper's public key: what ingest seals to.
#[derive(Clone)]
pub struct KeeperPublic(PublicKey);

impl KeeperPublic {
    pub fn load(path: &Path) -> Result<KeeperPublic, CryptoError> {
        let bytes = read_hex32(path)?;
        PublicKey::from_bytes(&bytes)
            .map(KeeperPublic)
            .map_err(|e| CryptoError::KeyFile {
                path: path.display().to_string(),
                message: format!("not an X25519 public key: {e}"),
            })
    }
}

/// The keeper's private key: opens data keys (sink, query, forget).
#[derive(Clone)]
pub struct Keeper {
    secret: PrivateKey,
    public: PublicKey,
}

impl Keeper {
    pub fn load(path: &Path) -> Result<Keeper, CryptoError> {
        let bytes = read_hex32(path)?;
        let secret = PrivateKey::from_bytes(&bytes).map_err(|e| CryptoError::KeyFile {
            path: path.display().to_string(),
            message: format!("not an X25519 private key: {e}"),
        })?;
        let public = Kem::sk_to_pk(&secret);
        Ok(Keeper { secret, public })
    }

    pub fn public(&self) -> KeeperPublic {
        KeeperPublic(self.public.clone())
    }

    /// A fresh keeper key: (private, public) as 64 hex digits each.
    pub fn generate() -> (String, String) {
        let (sk, pk) = Kem::gen_keypair(&mut SysRng);
        (hex::encode(sk.to_bytes()), hex::encode(pk.to_bytes()))
    }

    /// Wraps 32 secret bytes to this keeper (what subject keys are stored as).
    pub fn wrap(&self, secret: &[u8; 32]) -> Result<String, CryptoError> {
        wrap_to(&self.public, secret)
    }

    /// Opens what [`Keeper::wrap`] or a [`Sealer`] wrapped.
    pub fn unwrap(&self, wrapped: &str) -> Result<[u8; 32], CryptoError> {
        let raw = B64
            .decode(wrapped)
            .map_err(|_| CryptoError::Malformed("wrapped key"))?;
        if raw.len() < 32 {
            return Err(CryptoError::Malformed("wrapped key"));
        }
        let (enc, ct) = raw.split_at(32);
        let enc =
            EncappedKey::from_bytes(enc).map_err(|_| CryptoError::Malformed("wrapped key"))?;
        let pt = hpke::single_shot_open::<HpkeAead, HkdfSha256, Kem>(
            &OpModeR::Base,
            &self.secret,
            &enc,
            INFO,
            ct,
            b"",
        )
        .map_err(|_| CryptoError::Authentication)?;
        pt.try_into()
            .map_err(|_| CryptoError::Malformed("wrapped key"))
    }
}

fn wrap_to(public: &PublicKey, secret: &[u8; 32]) -> Result<String, CryptoError> {
    let (enc, ct) = hpke::single_shot_seal::<HpkeAead, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        public,
        INFO,
        secret,
        b"",
        &mut SysRng,
    )
    .map_err(|e| CryptoError::Hpke(e.to_string()))?;
    let mut raw = enc.to_bytes().to_vec();
    raw.extend_from_slice(&ct);
    Ok(B64.encode(raw))
}

/// The id of a wrapped key: 16 hex digits of its SHA-256.
pub fn wrapped_id(wrapped: &str) -> String {
    hex::encode(&Sha256::digest(wrapped.as_bytes())[..8])
}

/// One data key: its cipher, and how records name and carry it.
pub struct DataKey {
    pub id: String,
    pub wrapped: String,
    cipher: XChaCha20Poly1305,
    born: Instant,
}

/// Ingest's sealing: the current data key, replaced after [`DATA_KEY_LIFETIME`].
pub struct Sealer {
    public: KeeperPublic,
    current: Mutex<Option<Arc<DataKey>>>,
}

impl Sealer {
    pub fn new(public: KeeperPublic) -> Sealer {
        Sealer {
            public,
            current: Mutex::new(None),
        }
    }

    /// The data key to seal with now (a new one wrapped when the last one is too old).
    pub fn data_key(&self) -> Result<Arc<DataKey>, CryptoError> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| CryptoError::Hpke("data key lock poisoned".into()))?;
        if let Some(k) = current
            .as_ref()
            .filter(|k| k.born.elapsed() < DATA_KEY_LIFETIME)
        {
            return Ok(k.clone());
        }
        let secret: [u8; 32] = XChaCha20Poly1305::generate_key(&mut OsRng).into();
        let wrapped = wrap_to(&self.public.0, &secret)?;
        let key = Arc::new(DataKey {
            id: wrapped_id(&wrapped),
            wrapped,
            cipher: cipher(&secret),
            born: Instant::now(),
        });
        *current = Some(key.clone());
        Ok(key)
    }

    /// `value` of `subject`, sealed under `key` for the field at `pointer` of event `event_id`.
    pub fn seal(
        key: &DataKey,
        subject: &str,
        value: &Value,
        event_id: &str,
        pointer: &str,
    ) -> Result<String, CryptoError> {
        let msg =
            serde_json::to_vec(&(subject, value)).map_err(|_| CryptoError::Malformed("value"))?;
        let sealed = seal_bytes(&key.cipher, &msg, &aad(event_id, pointer))?;
        Ok(format!("{SEALED}{}:{}", key.id, B64.encode(sealed)))
    }
}

/// A sealed value's parts: (data key id, sealed bytes).
pub fn parse_sealed(s: &str) -> Option<(&str, Vec<u8>)> {
    let rest = s.strip_prefix(SEALED)?;
    let (kid, body) = rest.split_once(':')?;
    Some((kid, B64.decode(body).ok()?))
}

/// Opens a sealed value with its data key's cipher: (subject, value).
pub fn open_sealed(
    cipher: &XChaCha20Poly1305,
    sealed: &[u8],
    event_id: &str,
    pointer: &str,
) -> Result<(String, Value), CryptoError> {
    let pt = open_bytes(cipher, sealed, &aad(event_id, pointer))?;
    serde_json::from_slice(&pt).map_err(|_| CryptoError::Malformed("sealed value"))
}

/// Base64 (URL-safe, unpadded), as every stored ciphertext is written.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Reverses [`b64`].
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    B64.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keeper() -> Keeper {
        let (sk, _) = Keeper::generate();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, sk).unwrap();
        Keeper::load(&p).unwrap()
    }

    #[test]
    fn sealed_values_open_only_where_they_were_sealed() {
        let keeper = keeper();
        let sealer = Sealer::new(keeper.public());
        let dk = sealer.data_key().unwrap();
        let s = Sealer::seal(&dk, "person-1", &json!("0712"), "e1", "/data/x").unwrap();
        assert!(!s.contains("0712"));
        let (kid, body) = parse_sealed(&s).unwrap();
        assert_eq!(kid, dk.id);
        let secret = keeper.unwrap(&dk.wrapped).unwrap();
        let c = cipher(&secret);
        let (subject, value) = open_sealed(&c, &body, "e1", "/data/x").unwrap();
        assert_eq!((subject.as_str(), value), ("person-1", json!("0712")));
        assert!(matches!(
            open_sealed(&c, &body, "e2", "/data/x"),
            Err(CryptoError::Authentication)
        ));
        assert!(matches!(
            open_sealed(&c, &body, "e1", "/data/y"),
            Err(CryptoError::Authentication)
        ));
    }

    #[test]
    fn another_keeper_cannot_unwrap() {
        let a = keeper();
        let b = keeper();
        let w = a.wrap(&[9; 32]).unwrap();
        assert_eq!(a.unwrap(&w).unwrap(), [9; 32]);
        assert!(b.unwrap(&w).is_err());
    }
}
