//! The store half of `encrypt`: each value encrypted under its data subject's own key.
//!
//! A subject key is 256 random bits, used with XChaCha20-Poly1305; the associated data binds
//! the event id and the value's JSON pointer in the event, so a ciphertext copied to another
//! row or field fails authentication instead of reading as another value. Keys are kept in
//! `audit_subject_keys`, wrapped to the keeper key and named by the subject's pseudonym only;
//! `forget` deletes them, which makes every value stored under them unreadable while the
//! stored ciphertext — what the seals cover — stays as it was.
//!
//! Stored form: `enc:v1:<subject-key-id>:<base64url(nonce ‖ ciphertext)>`, the plaintext being
//! the value's JSON.

use serde_json::Value;

use super::envelope::{self, CryptoError};

/// Prefix of a value stored under a subject key.
pub const STORED: &str = "enc:v1:";

/// One subject's key.
#[derive(Clone)]
pub struct SubjectKey {
    /// 16 hex digits, random: what stored values name.
    pub id: String,
    pub secret: [u8; 32],
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKey").field("id", &self.id).finish()
    }
}

impl SubjectKey {
    /// A new random key.
    pub fn generate() -> SubjectKey {
        use rand_core::RngCore as _;
        let mut secret = [0u8; 32];
        let mut id = [0u8; 8];
        rand_core::OsRng.fill_bytes(&mut secret);
        rand_core::OsRng.fill_bytes(&mut id);
        SubjectKey {
            id: hex::encode(id),
            secret,
        }
    }
}

/// Where writers and readers find subject keys.
pub trait SubjectKeys: Send + Sync {
    /// The live key of the subject with this pseudonym, created (durably) if it has none;
    /// `None` when the subject was forgotten and not re-admitted.
    fn key_for(&self, pseudonym: &str) -> Result<Option<SubjectKey>, String>;
    /// The key with this id, `None` when it was destroyed (or never existed).
    fn key_by_id(&self, id: &str) -> Result<Option<SubjectKey>, String>;
}

/// `value` encrypted under `key` for the field at `pointer` of event `event_id`.
pub fn encrypt(
    key: &SubjectKey,
    value: &Value,
    event_id: &str,
    pointer: &str,
) -> Result<String, CryptoError> {
    let msg = serde_json::to_vec(value).map_err(|_| CryptoError::Malformed("value"))?;
    let c = envelope::cipher(&key.secret);
    let sealed = envelope::seal_bytes(&c, &msg, &envelope::aad(event_id, pointer))?;
    Ok(format!("{STORED}{}:{}", key.id, envelope::b64(&sealed)))
}

/// A stored value's parts: (subject key id, ciphertext).
pub fn parse(stored: &str) -> Option<(&str, Vec<u8>)> {
    let rest = stored.strip_prefix(STORED)?;
    let (id, body) = rest.split_once(':')?;
    Some((id, envelope::unb64(body)?))
}

/// Opens a stored value with its key.
pub fn decrypt(
    key: &SubjectKey,
    body: &[u8],
    event_id: &str,
    pointer: &str,
) -> Result<Value, CryptoError> {
    let c = envelope::cipher(&key.secret);
    let pt = envelope::open_bytes(&c, body, &envelope::aad(event_id, pointer))?;
    serde_json::from_slice(&pt).map_err(|_| CryptoError::Malformed("stored value"))
}

/// Subject keys in memory (tests, benchmarks): forgetting removes the key.
#[derive(Default)]
pub struct MemoryKeys {
    inner: std::sync::Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    by_pseudonym: std::collections::HashMap<String, Option<SubjectKey>>,
    by_id: std::collections::HashMap<String, SubjectKey>,
}

impl MemoryKeys {
    /// Destroys the keys of `pseudonym`, remembering it was forgotten.
    pub fn forget(&self, pseudonym: &str) {
        if let Ok(mut g) = self.inner.lock()
            && let Some(Some(k)) = g.by_pseudonym.insert(pseudonym.to_owned(), None)
        {
            g.by_id.remove(&k.id);
        }
    }
}

impl SubjectKeys for MemoryKeys {
    fn key_for(&self, pseudonym: &str) -> Result<Option<SubjectKey>, String> {
        let mut g = self.inner.lock().map_err(|_| "poisoned".to_owned())?;
        if let Some(k) = g.by_pseudonym.get(pseudonym) {
            return Ok(k.clone());
        }
        let k = SubjectKey::generate();
        g.by_id.insert(k.id.clone(), k.clone());
        g.by_pseudonym.insert(pseudonym.to_owned(), Some(k.clone()));
        Ok(Some(k))
    }

    fn key_by_id(&self, id: &str) -> Result<Option<SubjectKey>, String> {
        let g = self.inner.lock().map_err(|_| "poisoned".to_owned())?;
        Ok(g.by_id.get(id).cloned())
    }
}

/// How long a process trusts what it read about a subject's key. A `forget` run elsewhere is
/// seen by a running writer within this time; a value it encrypts meanwhile is under the
/// destroyed key, so it is unreadable all the same once this process drops the key.
pub const CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// The same for readers: a value of a forgotten subject reads as `[erased]` within this time.
pub const READ_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

type Reply = std::sync::mpsc::SyncSender<Result<Option<SubjectKey>, String>>;

enum Request {
    For(String, Reply),
    ById(String, Reply),
}

/// Subject keys in `audit_subject_keys`, answered synchronously (the writers' decode step is
/// synchronous): a thread of its own, with its own runtime and connections, does the
/// database work, so a caller on any runtime (or none) can wait for it.
pub struct DbKeys {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<Request>>,
    cache: std::sync::Mutex<
        std::collections::HashMap<String, (Option<SubjectKey>, std::time::Instant)>,
    >,
}

impl DbKeys {
    /// Starts the thread; `url` is the database holding the table (created when missing).
    pub fn start(url: &str, keeper: super::envelope::Keeper) -> Result<DbKeys, String> {
        crate::store::connect_options(url)
            .map_err(|e| format!("privacy.keys_database_url (or database.url): {e}"))?;
        let url = url.to_owned();
        let (tx, rx) = std::sync::mpsc::channel::<Request>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the subject key thread: {e}"))?;
        std::thread::Builder::new()
            .name("subject-keys".into())
            .spawn(move || {
                // The pool is made on this thread's runtime: its connections live here.
                let pool = rt.block_on(async {
                    crate::store::Store::connect_lazy(&url, 2)
                        .map(|s| s.pool().clone())
                        .map_err(|e| e.to_string())
                });
                let mut prepared = false;
                while let Ok(req) = rx.recv() {
                    match &pool {
                        Ok(pool) => rt.block_on(async {
                            if !prepared {
                                prepared = crate::store::subject_keys::prepare(pool).await.is_ok();
                            }
                            serve(pool, &keeper, req).await;
                        }),
                        Err(e) => {
                            let (Request::For(_, reply) | Request::ById(_, reply)) = req;
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the subject key thread: {e}"))?;
        Ok(DbKeys {
            tx: std::sync::Mutex::new(tx),
            cache: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn ask(&self, req: impl FnOnce(Reply) -> Request) -> Result<Option<SubjectKey>, String> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.tx
            .lock()
            .map_err(|_| "subject key channel poisoned".to_owned())?
            .send(req(reply))
            .map_err(|_| "the subject key thread stopped".to_owned())?;
        answer
            .recv()
            .map_err(|_| "the subject key thread stopped".to_owned())?
    }

    fn cached(&self, k: &str, ttl: std::time::Duration) -> Option<Option<SubjectKey>> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(k)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(v, _)| v.clone())
    }

    fn remember(&self, k: &str, v: &Option<SubjectKey>) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(k.to_owned(), (v.clone(), std::time::Instant::now()));
        }
    }
}

/// The thread's half of one request: what the table says, unwrapped.
async fn serve(pool: &sqlx::PgPool, keeper: &super::envelope::Keeper, req: Request) {
    use crate::store::subject_keys as table;
    let unwrap = |id: String, wrapped: &str| -> Result<Option<SubjectKey>, String> {
        let secret = keeper
            .unwrap(wrapped)
            .map_err(|e| format!("subject key {id}: {e}"))?;
        Ok(Some(SubjectKey { id, secret }))
    };
    match req {
        Request::For(pseudonym, reply) => {
            let fresh = SubjectKey::generate();
            let answer = match keeper.wrap(&fresh.secret) {
                Err(e) => Err(e.to_string()),
                Ok(wrapped) => {
                    match table::get_or_create(pool, &pseudonym, &fresh.id, &wrapped).await {
                        Ok(table::KeyRow::Live(id, w)) => unwrap(id, &w),
                        Ok(table::KeyRow::Forgotten) => Ok(None),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            let _ = reply.send(answer);
        }
        Request::ById(id, reply) => {
            let answer = match table::by_id(pool, &id).await {
                Ok(Some(w)) => unwrap(id, &w),
                Ok(None) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            let _ = reply.send(answer);
        }
    }
}

impl SubjectKeys for DbKeys {
    fn key_for(&self, pseudonym: &str) -> Result<Option<SubjectKey>, String> {
        let k = format!("p:{pseudonym}");
        if let Some(v) = self.cached(&k, CACHE_TTL) {
            return Ok(v);
        }
        let v = self.ask(|r| Request::For(pseudonym.to_owned(), r))?;
        self.remember(&k, &v);
        Ok(v)
    }

    fn key_by_id(&self, id: &str) -> Result<Option<SubjectKey>, String> {
        let k = format!("i:{id}");
        if let Some(v) = self.cached(&k, READ_CACHE_TTL) {
            return Ok(v);
        }
        let v = self.ask(|r| Request::ById(id.to_owned(), r))?;
        self.remember(&k, &v);
        Ok(v)
    }
}

/// The URL of the database holding `audit_subject_keys`.
pub fn keys_url(config: &crate::config::Config) -> String {
    config
        .privacy
        .keys_database_url
        .as_ref()
        .map(|u| u.0.clone())
        .unwrap_or_else(|| config.database.url.0.clone())
}

/// The subject key store of a process holding the keeper key, `None` without one.
pub fn open_store(
    config: &crate::config::Config,
) -> Result<Option<std::sync::Arc<dyn SubjectKeys>>, String> {
    let Some(path) = &config.privacy.keeper_key_file else {
        if config.privacy.encrypts() && config.has_role(crate::config::Role::Sink) {
            return Err(
                "a process that stores rows of `encrypt` rules needs privacy.keeper_key_file \
                 (the keeper's private key) to re-encrypt them under subject keys"
                    .into(),
            );
        }
        return Ok(None);
    };
    let keeper = super::envelope::Keeper::load(path).map_err(|e| e.to_string())?;
    Ok(Some(std::sync::Arc::new(DbKeys::start(
        &keys_url(config),
        keeper,
    )?)))
}
