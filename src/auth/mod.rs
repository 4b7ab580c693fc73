//! Authentication: who is calling, and what they may do.
//!
//! - [`principals`]: the principals file (`auth.tokens_file`), token and DNS SAN lookup, source
//!   patterns;
//! - [`Authenticator`]: the current principals, re-read from the file when its content changes
//!   (about every second, no restart); a broken file keeps the last good set and is reported in
//!   `/health`;
//! - [`tls`]: the rustls listener (`http.tls.*`), its certificate reloader and the client
//!   certificate a request arrived with;
//! - [`authcontext`](crate::event::authcontext) sets the event's `authtype`/`authid` from the
//!   [`Caller`] the HTTP middleware (`api::auth`) put on the request.
//!
//! Tokens are never logged: only their principal's name is.

pub mod principals;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use principals::{Principal, Principals, Role, SourcePattern, token_hash};

use crate::config::AuthMode;

/// How often the principals file (and the TLS files) are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// How a caller proved who it is: the CloudEvents `authtype` recorded on its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// A bearer token (`api_key`).
    ApiKey,
    /// A client certificate (`service_account`).
    ServiceAccount,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::ApiKey => "api_key",
            AuthType::ServiceAccount => "service_account",
        }
    }
}

/// The verified caller of one request (a request extension).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub auth_type: AuthType,
}

/// The current principals and the state of their file.
#[derive(Clone)]
pub struct Authenticator(Arc<Inner>);

struct Inner {
    mode: AuthMode,
    path: PathBuf,
    current: RwLock<Arc<Principals>>,
    /// SHA-256 of the file content last looked at (good or bad), and what was wrong with it.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    content: Option<[u8; 32]>,
    problem: Option<String>,
}

/// Why the principals file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("auth.tokens_file {}: {message}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub message: String,
}

fn read(path: &Path, pause: &mut dyn FnMut()) -> Result<(Vec<u8>, Principals), FileError> {
    let err = |message: String| FileError {
        path: path.to_owned(),
        message,
    };
    // Only a file that holds still is taken: see `principals::read_settled`.
    let bytes = principals::read_settled(path, pause).map_err(|e| err(e.to_string()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| err("not UTF-8 text".into()))?;
    let principals = Principals::parse(text).map_err(err)?;
    if principals.is_empty() {
        return Err(err(
            "lists no principals: nobody could call the API; add at least one".into(),
        ));
    }
    Ok((bytes, principals))
}

impl Authenticator {
    /// Loads the file for `mode`; an unusable file refuses the start (it names the problem).
    pub fn load(mode: AuthMode, path: &Path) -> Result<Authenticator, FileError> {
        let (bytes, principals) = read(path, &mut settle)?;
        tracing::info!(
            file = %path.display(),
            principals = principals.len(),
            mode = mode.as_str(),
            "loaded the principals"
        );
        Ok(Authenticator(Arc::new(Inner {
            mode,
            path: path.to_owned(),
            current: RwLock::new(Arc::new(principals)),
            seen: Mutex::new(Seen {
                content: Some(Sha256::digest(&bytes).into()),
                problem: None,
            }),
        })))
    }

    pub fn mode(&self) -> AuthMode {
        self.0.mode
    }

    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// The principals in force.
    pub fn principals(&self) -> Arc<Principals> {
        match self.0.current.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// What is wrong with the file on disk, while the last good principals stay in force.
    pub fn problem(&self) -> Option<String> {
        self.seen().problem.clone()
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks at the file once: a changed, valid content replaces the principals; a broken one
    /// keeps them and is reported (logged once per distinct content or error).
    pub fn check_file(&self) {
        self.check_file_with(&mut settle);
    }

    /// [`Authenticator::check_file`], pausing between the two reads of a changed file with
    /// `pause`.
    fn check_file_with(&self, pause: &mut dyn FnMut()) {
        let path = &self.0.path;
        let outcome = std::fs::read(path);
        let digest: Option<[u8; 32]> = outcome.as_ref().ok().map(|b| Sha256::digest(b).into());
        {
            let seen = self.seen();
            if digest.is_some() && digest == seen.content {
                return;
            }
        }
        match read(path, pause) {
            Ok((bytes, principals)) => {
                let n = principals.len();
                *self.0.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(principals);
                let mut seen = self.seen();
                seen.content = Some(Sha256::digest(&bytes).into());
                seen.problem = None;
                metrics::counter!("audit_auth_reloads_total", "outcome" => "ok").increment(1);
                tracing::info!(file = %path.display(), principals = n, "reloaded the principals");
            }
            Err(e) => {
                let message = format!(
                    "{e}; the principals loaded before stay in force until the file is fixed"
                );
                let mut seen = self.seen();
                if seen.problem.as_deref() != Some(&message) {
                    tracing::error!(file = %path.display(), problem = %e.message, "{message}");
                    metrics::counter!("audit_auth_reloads_total", "outcome" => "failed")
                        .increment(1);
                }
                seen.content = digest;
                seen.problem = Some(message);
            }
        }
    }

    /// Re-reads the file every [`RELOAD_INTERVAL`] until `token` is cancelled.
    pub fn spawn_reloader(&self, token: CancellationToken) -> tokio::task::JoinHandle<()> {
        let auth = self.clone();
        tokio::spawn(async move {
            let mut next = tokio::time::Instant::now() + RELOAD_INTERVAL;
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep_until(next) => {}
                }
                let a = auth.clone();
                // File I/O off the runtime's worker threads.
                let _ = tokio::task::spawn_blocking(move || a.check_file()).await;
                next = tokio::time::Instant::now() + RELOAD_INTERVAL;
            }
        })
    }

    /// Maps a bearer token to its principal.
    pub fn by_token(&self, token: &[u8]) -> Option<Arc<Principal>> {
        self.principals().by_token(token).cloned()
    }

    /// Maps a certificate's DNS SAN to its principal.
    pub fn by_dns_san(&self, san: &str) -> Option<Arc<Principal>> {
        self.principals().by_dns_san(san).cloned()
    }
}

/// The pause between the two reads of the principals file.
fn settle() {
    std::thread::sleep(principals::SETTLE);
}

/// Counts a refused request in `audit_auth_rejected_total{code,principal}`: `principal` is a
/// name from the principals file or `unknown`, so the label set stays bounded.
pub fn count_rejection(code: &'static str, principal: Option<&str>) {
    let principal = principal.unwrap_or("unknown").to_owned();
    metrics::counter!("audit_auth_rejected_total", "code" => code, "principal" => principal)
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("tokens.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn one(name: &str, token: &str) -> String {
        format!(
            "principals:\n  - name: {name}\n    role: reader\n    token_sha256: \"{}\"\n",
            hex::encode(token_hash(token.as_bytes()))
        )
    }

    #[test]
    fn a_broken_file_keeps_the_last_good_principals_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), &one("a", "ta"));
        let auth = Authenticator::load(AuthMode::Token, &p).unwrap();
        assert_eq!(auth.by_token(b"ta").unwrap().name, "a");

        std::fs::write(&p, "principals: [{name: b, role: nope}]").unwrap();
        auth.check_file();
        assert_eq!(auth.by_token(b"ta").unwrap().name, "a");
        let problem = auth.problem().unwrap();
        assert!(
            problem.contains("tokens.yaml") && problem.contains("nope"),
            "{problem}"
        );

        std::fs::write(&p, one("b", "tb")).unwrap();
        auth.check_file();
        assert!(auth.problem().is_none());
        assert!(auth.by_token(b"ta").is_none());
        assert_eq!(auth.by_token(b"tb").unwrap().name, "b");

        std::fs::remove_file(&p).unwrap();
        auth.check_file();
        assert!(auth.problem().unwrap().contains("cannot read"));
        assert_eq!(auth.by_token(b"tb").unwrap().name, "b");
    }

    /// A file caught half-written, whose prefix parses (and broadens a pattern), is not
    /// taken: the principals before stay in force and the problem says why; once the write is
    /// complete and the file holds still, it is taken.
    #[test]
    fn a_file_caught_while_it_is_written_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), &one("a", "ta"));
        let auth = Authenticator::load(AuthMode::Token, &p).unwrap();
        let whole = format!(
            "principals:\n  - name: registry\n    role: emitter\n    token_sha256: \"{}\"\n    \
             sources:\n      - /registry/*-internal\n",
            hex::encode(token_hash(b"tr"))
        );
        let cut = whole.len() - "-internal\n".len();
        let prefix = Principals::parse(&whole[..cut]).expect("the prefix parses");
        assert!(
            prefix.by_token(b"tr").unwrap().may_emit("/registry/public"),
            "the cut broadens the pattern"
        );

        // The reloader looks while the writer is still at work: every read sees more.
        std::fs::write(&p, &whole[..cut]).unwrap();
        let mut n = 0;
        auth.check_file_with(&mut || {
            n += 1;
            std::fs::write(&p, format!("{}# {n}\n", &whole[..cut])).unwrap();
        });
        assert!(auth.by_token(b"tr").is_none(), "a torn file is never taken");
        assert_eq!(
            auth.by_token(b"ta").unwrap().name,
            "a",
            "the old principals stay"
        );
        let problem = auth.problem().unwrap();
        assert!(
            problem.contains("tokens.yaml") && problem.contains("changed while it was being read"),
            "{problem}"
        );

        // Another write: it finishes while the reloader waits between two reads. The whole
        // file is taken once it holds still, never the prefix seen first.
        std::fs::write(&p, &whole[..cut - 1]).unwrap();
        let mut finish = Some(whole.clone());
        auth.check_file_with(&mut || {
            if let Some(rest) = finish.take() {
                std::fs::write(&p, rest).unwrap();
            }
        });
        assert_eq!(auth.problem(), None);
        let registry = auth.by_token(b"tr").unwrap();
        assert!(registry.may_emit("/registry/a-internal"));
        assert!(!registry.may_emit("/registry/public"));
        assert!(auth.by_token(b"ta").is_none());

        // And a complete file written in one go is taken as before.
        std::fs::write(&p, one("a", "ta")).unwrap();
        auth.check_file_with(&mut || {});
        assert!(auth.problem().is_none());
        assert_eq!(auth.by_token(b"ta").unwrap().name, "a");
        assert!(auth.by_token(b"tr").is_none());
    }

    #[test]
    fn an_unusable_file_refuses_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "principals: []\n");
        let e = Authenticator::load(AuthMode::Token, &p).err().unwrap();
        assert!(e.to_string().contains("no principals"), "{e}");
        let e = Authenticator::load(AuthMode::Token, &dir.path().join("missing"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("auth.tokens_file"), "{e}");
    }
}
