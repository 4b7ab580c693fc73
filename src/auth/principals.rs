//! The principals file (`auth.tokens_file`): who may call the API, how they prove it, and which
//! event `source`s an emitter may use.
//!
//! ```yaml
//! principals:
//!   - name: registry              # becomes the event's `authid`
//!     role: emitter               # emitter | reader
//!     token_sha256: "9f86d0…"     # hex SHA-256 of the token (`audit-manager token hash`)
//!     # dns_san: registry.openg2p.svc   (mtls: the client certificate's first DNS SAN)
//!     sources: ["/registry/*"]    # emitters only; `*` matches any run of characters
//! ```
//!
//! The file holds hashes only. Parsing is strict: unknown keys, duplicate names, duplicate
//! hashes or DNS SANs, an emitter without sources or a reader with some are errors naming the
//! entry.
//!
//! A file is taken only when it reads the same twice, [`SETTLE`] apart ([`read_settled`]): a
//! file caught while it is being written can be a prefix that is valid YAML, and a cut in the
//! middle of a pattern can *broaden* it (`/registry/*-internal` cut to `/registry/*`).

use std::collections::HashSet;
use std::io::Read as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May post events whose `source` matches one of its patterns.
    Emitter,
    /// May read (`GET /config`, and the query role); may emit nothing.
    Reader,
    /// A reader that may also `forget` a data subject (`POST /privacy/forget`).
    #[serde(rename = "privacy_officer")]
    PrivacyOfficer,
}

/// A `source` pattern: `*` matches any run of characters (also none, also `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePattern(String);

impl SourcePattern {
    pub fn new(pattern: impl Into<String>) -> SourcePattern {
        SourcePattern(pattern.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `source` matches. Linear-time greedy matching with one backtrack point (the
    /// classic wildcard algorithm): a hostile pattern cannot make it exponential.
    pub fn matches(&self, source: &str) -> bool {
        let p = self.0.as_bytes();
        let s = source.as_bytes();
        let (mut pi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if pi < p.len() && p[pi] == s[si] {
                pi += 1;
                si += 1;
            } else if let Some((sp, ss)) = star {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

/// One verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Unique; recorded as the event's `authid`.
    pub name: String,
    pub role: Role,
    token_sha256: Option<[u8; 32]>,
    /// The DNS SAN a client certificate of this principal carries first (`mtls`).
    pub dns_san: Option<String>,
    pub sources: Vec<SourcePattern>,
    /// Whether reads show personal data decrypted (`pii: true`; default false).
    pub pii: bool,
}

impl Principal {
    /// Whether this principal may emit events with `source` (a reader may emit none).
    pub fn may_emit(&self, source: &str) -> bool {
        self.role == Role::Emitter && self.sources.iter().any(|p| p.matches(source))
    }

    pub fn may_read(&self) -> bool {
        matches!(self.role, Role::Reader | Role::PrivacyOfficer)
    }

    /// Whether this principal may forget a data subject.
    pub fn may_forget(&self) -> bool {
        self.role == Role::PrivacyOfficer
    }

    /// Whether reads show this principal personal data in the clear.
    pub fn sees_pii(&self) -> bool {
        self.pii && self.may_read()
    }
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principals {
    list: Vec<Arc<Principal>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    principals: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    role: Role,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    dns_san: Option<String>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    pii: bool,
}

/// How long the principals file must stay unchanged between the two reads that take it.
pub const SETTLE: Duration = Duration::from_millis(250);

/// How many times [`read_settled`] reads again when the file changed between two reads.
const SETTLE_ATTEMPTS: usize = 3;

/// Why [`read_settled`] returned no content.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    #[error("cannot read it: {0} (check the path and the mount)")]
    Io(#[from] std::io::Error),
    #[error(
        "it changed while it was being read (a write in progress?), so it was not taken; it is \
         read again shortly — replace the file atomically (write a new file beside it, then \
         rename it over this one) so that no reader ever sees it half-written"
    )]
    Changing,
}

/// One read of the file: its bytes, and the length and modification time of the same open
/// file.
#[derive(PartialEq, Eq)]
struct Snapshot {
    bytes: Vec<u8>,
    len: u64,
    modified: Option<SystemTime>,
}

fn snapshot(path: &Path) -> std::io::Result<Snapshot> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.read_to_end(&mut bytes)?;
    Ok(Snapshot {
        bytes,
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// The file's content, once two reads `pause` apart agree on it, on its length (which must
/// also be the number of bytes read) and on its modification time. A writer still at work
/// changes one of them; the file is then read again, up to [`SETTLE_ATTEMPTS`] times, and
/// refused with [`SettleError::Changing`] if it never holds still. `pause` sleeps [`SETTLE`]
/// in the service (tests pass their own).
pub fn read_settled(path: &Path, pause: &mut dyn FnMut()) -> Result<Vec<u8>, SettleError> {
    let mut first = snapshot(path)?;
    for _ in 0..SETTLE_ATTEMPTS {
        pause();
        let second = snapshot(path)?;
        if second == first && second.bytes.len() as u64 == second.len {
            return Ok(second.bytes);
        }
        first = second;
    }
    Err(SettleError::Changing)
}

/// SHA-256 of a presented token.
pub fn token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Principals {
    /// Parses the file's text; the error says which entry is wrong and how.
    pub fn parse(text: &str) -> Result<Principals, String> {
        let file: File = serde_yaml_ng::from_str(text).map_err(|e| {
            format!(
                "{e} (expected `principals:` with entries of name, role (emitter|reader|privacy_officer), pii for readers, \
                 token_sha256 or dns_san, and sources for emitters)"
            )
        })?;
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut sans = HashSet::new();
        let mut list = Vec::with_capacity(file.principals.len());
        for (i, e) in file.principals.into_iter().enumerate() {
            let at = format!("principals[{i}] ({:?})", e.name);
            if e.name.trim().is_empty() {
                return Err(format!("principals[{i}]: name must not be empty"));
            }
            if !names.insert(e.name.clone()) {
                return Err(format!(
                    "{at}: duplicate name; every principal needs its own"
                ));
            }
            let token_sha256 = match &e.token_sha256 {
                None => None,
                Some(hex_text) => {
                    let mut h = [0u8; 32];
                    hex::decode_to_slice(hex_text.trim(), &mut h).map_err(|_| {
                        format!(
                            "{at}: token_sha256 must be 64 hex digits (the output of \
                             `audit-manager token hash`), not the token itself"
                        )
                    })?;
                    if !hashes.insert(h) {
                        return Err(format!(
                            "{at}: token_sha256 is also another principal's; give each \
                             principal its own token"
                        ));
                    }
                    Some(h)
                }
            };
            if let Some(san) = &e.dns_san {
                if san.trim().is_empty() {
                    return Err(format!("{at}: dns_san must not be empty"));
                }
                if !sans.insert(san.to_ascii_lowercase()) {
                    return Err(format!(
                        "{at}: dns_san {san:?} is also another principal's; a certificate must \
                         name exactly one principal"
                    ));
                }
            }
            if token_sha256.is_none() && e.dns_san.is_none() {
                return Err(format!(
                    "{at}: needs token_sha256 (auth.mode token) or dns_san (auth.mode mtls)"
                ));
            }
            match e.role {
                Role::Emitter if e.sources.is_empty() => {
                    return Err(format!(
                        "{at}: an emitter needs `sources`, the event sources it may use \
                         (e.g. [\"/registry/*\"])"
                    ));
                }
                Role::Emitter if e.pii => {
                    return Err(format!(
                        "{at}: `pii` is for readers (it decrypts what they read); remove it"
                    ));
                }
                Role::Reader | Role::PrivacyOfficer if !e.sources.is_empty() => {
                    return Err(format!(
                        "{at}: a reader emits no events; remove `sources` or make it an emitter"
                    ));
                }
                _ => {}
            }
            if let Some(bad) = e.sources.iter().find(|s| s.is_empty()) {
                return Err(format!("{at}: source pattern {bad:?} must not be empty"));
            }
            list.push(Arc::new(Principal {
                name: e.name,
                role: e.role,
                token_sha256,
                dns_san: e.dns_san,
                sources: e.sources.into_iter().map(SourcePattern).collect(),
                pii: e.pii,
            }));
        }
        Ok(Principals { list })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The principals' names (the bounded label set of the rejection metric).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|p| p.name.as_str())
    }

    /// The principal whose `token_sha256` is the SHA-256 of `token`. Every stored hash is
    /// compared in constant time and the loop never exits early, so the time taken says
    /// nothing about which hash (or how much of it) matched.
    pub fn by_token(&self, token: &[u8]) -> Option<&Arc<Principal>> {
        let presented = token_hash(token);
        let none = u64::MAX;
        let mut found = none;
        for (i, p) in self.list.iter().enumerate() {
            // A principal without a token gets an all-zero hash that never `ct_eq`s a real
            // SHA-256 output in practice, and is excluded by `has` below.
            let stored = p.token_sha256.unwrap_or([0; 32]);
            let has = subtle::Choice::from(u8::from(p.token_sha256.is_some()));
            let hit = stored.ct_eq(&presented) & has;
            found.conditional_assign(&(i as u64), hit);
        }
        (found != none).then(|| &self.list[found as usize])
    }

    /// The principal whose `dns_san` is `san` (DNS names compare case-insensitively).
    pub fn by_dns_san(&self, san: &str) -> Option<&Arc<Principal>> {
        self.list.iter().find(|p| {
            p.dns_san
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(san))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(token: &str) -> String {
        hex::encode(token_hash(token.as_bytes()))
    }

    fn sample() -> String {
        format!(
            "principals:\n  - name: registry\n    role: emitter\n    token_sha256: \"{}\"\n    \
             sources: [\"/registry/*\"]\n  - name: investigator\n    role: reader\n    \
             token_sha256: \"{}\"\n  - name: pay\n    role: emitter\n    dns_san: pay.svc\n    \
             sources: [\"/payments\"]\n",
            hex_of("t-registry"),
            hex_of("t-reader")
        )
    }

    #[test]
    fn tokens_name_their_principal_and_wrong_ones_none() {
        let p = Principals::parse(&sample()).unwrap();
        assert_eq!(p.by_token(b"t-registry").unwrap().name, "registry");
        assert_eq!(p.by_token(b"t-reader").unwrap().name, "investigator");
        assert!(p.by_token(b"t-registr").is_none());
        assert!(p.by_token(b"").is_none());
        assert_eq!(p.by_dns_san("PAY.svc").unwrap().name, "pay");
        assert!(p.by_dns_san("other.svc").is_none());
    }

    #[test]
    fn source_patterns() {
        let m = |p: &str, s: &str| SourcePattern::new(p).matches(s);
        assert!(m("/registry/*", "/registry/"));
        assert!(m("/registry/*", "/registry/a/b"));
        assert!(!m("/registry/*", "/registry"));
        assert!(!m("/registry/*", "/payments"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("/payments", "/payments"));
        assert!(!m("/payments", "/payments/x"));
        assert!(m("*/x", "a/b/x"));
        let long = "a".repeat(10_000);
        assert!(!m("*a*a*a*a*a*a*b", &long));
    }

    #[test]
    fn roles_decide_what_may_be_done() {
        let p = Principals::parse(&sample()).unwrap();
        let reg = p.by_token(b"t-registry").unwrap();
        assert!(reg.may_emit("/registry/x") && !reg.may_emit("/payments") && !reg.may_read());
        let reader = p.by_token(b"t-reader").unwrap();
        assert!(!reader.may_emit("/registry/x") && reader.may_read());
    }

    #[test]
    fn bad_files_name_the_entry() {
        let h = hex_of("x");
        let cases = [
            (
                format!(
                    "principals:\n  - {{name: a, role: reader, token_sha256: \"{h}\"}}\n  - \
                     {{name: a, role: reader, dns_san: b.svc}}\n"
                ),
                "principals[1] (\"a\"): duplicate name",
            ),
            (
                format!(
                    "principals:\n  - {{name: a, role: reader, token_sha256: \"{h}\"}}\n  - \
                     {{name: b, role: reader, token_sha256: \"{h}\"}}\n"
                ),
                "principals[1] (\"b\"): token_sha256 is also another principal's",
            ),
            (
                "principals:\n  - {name: a, role: emitter, dns_san: a.svc}\n".to_owned(),
                "an emitter needs `sources`",
            ),
            (
                "principals:\n  - {name: a, role: reader, dns_san: a.svc, sources: [x]}\n"
                    .to_owned(),
                "a reader emits no events",
            ),
            (
                "principals:\n  - {name: a, role: reader, token_sha256: secret}\n".to_owned(),
                "64 hex digits",
            ),
            (
                "principals:\n  - {name: a, role: reader}\n".to_owned(),
                "needs token_sha256",
            ),
            (
                "principals:\n  - {name: a, role: reader, dns_san: a.svc, tokn: x}\n".to_owned(),
                "unknown field `tokn`",
            ),
            (
                "principals:\n  - {name: a, role: admin, dns_san: a.svc}\n".to_owned(),
                "unknown variant `admin`",
            ),
        ];
        for (text, want) in cases {
            let e = Principals::parse(&text).unwrap_err();
            assert!(e.contains(want), "{text}\n=> {e}\nwanted {want}");
        }
    }
}
