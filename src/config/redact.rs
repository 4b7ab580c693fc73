//! Secrets in the configuration.
//!
//! A setting that can carry a secret is a [`Redacted<T>`]: its `Debug` (logs, panics) and its
//! `Serialize` (`GET /config`) both render the masked form, so the config structs derive both
//! and no struct needs a hand-written `Debug` that someone forgets to update. Code that needs
//! the real value reads through `Deref` (`&config.database.url` is a `&str` where one is
//! expected).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize, Serializer};
use url::Url;

/// Replacement text for secrets.
pub const MASK: &str = "***";

/// How a value is shown when it must not leak.
pub trait Redact {
    /// The value with every secret part replaced by [`MASK`].
    fn redacted(&self) -> Self;
}

/// A value whose `Debug` and `Serialize` show only [`Redact::redacted`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Redacted<T>(pub T);

impl<T> Redacted<T> {
    /// The real value (for the code that uses it; never for output).
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> Deref for Redacted<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Redacted<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> From<T> for Redacted<T> {
    fn from(v: T) -> Self {
        Redacted(v)
    }
}

impl From<&str> for Redacted<String> {
    fn from(v: &str) -> Self {
        Redacted(v.to_string())
    }
}

impl PartialEq<str> for Redacted<String> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Redacted<String> {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl<'a, T> IntoIterator for &'a Redacted<T>
where
    &'a T: IntoIterator,
{
    type Item = <&'a T as IntoIterator>::Item;
    type IntoIter = <&'a T as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<T: Redact + fmt::Debug> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.redacted().fmt(f)
    }
}

impl<T: Redact + Serialize> Serialize for Redacted<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.redacted().serialize(s)
    }
}

/// A secret-bearing string is a connection string: a URL keeps everything but its password
/// and secret-looking query parameters, a libpq `key=value` string everything but its
/// secret-looking values; anything else is masked whole.
impl Redact for String {
    fn redacted(&self) -> String {
        redact_url(self)
    }
}

/// librdkafka properties: the values of secret-looking names are masked.
impl Redact for BTreeMap<String, String> {
    fn redacted(&self) -> Self {
        self.iter()
            .map(|(k, v)| {
                let v = if is_secret_name(k) {
                    MASK.to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// Whether a property / query-parameter name looks secret: passwords and passphrases,
/// secrets, tokens, keys (`ssl.key.pem`, librdkafka's `ssl_key`), JAAS configurations, and
/// every `sasl.oauthbearer.*` property (its `config` and `extensions` carry credentials).
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "passphrase",
        "secret",
        "sasl.jaas",
        "sasl.oauthbearer.",
        "token",
        "key",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Query parameters of a connection URL whose values are shown: libpq settings that hold no
/// secret. Any other parameter (`password=`, `sslpassword=`, a misspelt `pasword=`) is masked.
const SHOWN_URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "application_name",
    "options",
    "connect_timeout",
    "target_session_attrs",
    "statement-cache-capacity",
];

/// Whether the value of URL query parameter `name` may be shown.
fn shown_url_parameter(name: &str) -> bool {
    SHOWN_URL_PARAMETERS.contains(&name) && !is_secret_name(name)
}

/// The connection string with its password and the values of its query parameters other than
/// libpq's non-secret settings (`password=`, `sslpassword=`, anything unknown) replaced by
/// `***`. Also handles `key=value` connection strings (`host=x password=y`).
pub fn redact_url(s: &str) -> String {
    let Ok(mut url) = Url::parse(s) else {
        return redact_unparsed(s);
    };
    if url.password().is_some() && url.set_password(Some(MASK)).is_err() {
        return MASK.to_string();
    }
    // Pair by pair on the text as written, so the shown values keep their spelling.
    if let Some(query) = url.query().map(str::to_string) {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if !shown_url_parameter(&percent_decode(k)) => format!("{k}={MASK}"),
                _ => pair.to_string(),
            })
            .collect();
        url.set_query(Some(&masked.join("&")));
    }
    url.to_string()
}

/// What the URL parser refused: a URL whose password holds an unencoded `/`, `?` or `#`
/// (everything before the last `@` is then credentials), a libpq `key=value` string, or
/// something else that is masked whole.
fn redact_unparsed(s: &str) -> String {
    if let Some((scheme, rest)) = s.split_once("://") {
        return match rest.rfind('@') {
            Some(i) => match rest[..i].split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:{MASK}@{}", &rest[i + 1..]),
                None => s.to_string(),
            },
            None => s.to_string(),
        };
    }
    if !s.contains('=') {
        return MASK.to_string();
    }
    s.split(' ')
        .map(|part| match part.split_once('=') {
            Some((k, _)) if is_secret_name(k) => format!("{k}={MASK}"),
            _ => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// Secret values in text
// ---------------------------------------------------------------------------------------------

/// Secret values shorter than this are not searched for in text: masking every "abc" of every
/// log line would make the logs unreadable and protect little.
const MIN_SCRUBBED_LEN: usize = 4;

/// The secret values of the loaded configuration (see [`remember_secrets`]).
static SECRETS: std::sync::RwLock<Vec<String>> = std::sync::RwLock::new(Vec::new());

/// Parts of a structured secret (`sasl.oauthbearer.config` is `key=value` pairs) shorter than
/// this are not searched for on their own.
const MIN_SCRUBBED_PART_LEN: usize = 8;

/// Makes [`scrub`] (and so every log line, see [`scrubbed_stderr`]) mask these values from now
/// on. Each value is also remembered in its JSON-escaped form, the way a JSON log line carries
/// it, and a value made of `key=value` pairs also by each long enough value: an error quotes
/// the part it could not parse, not the whole setting.
pub fn remember_secrets<I: IntoIterator<Item = String>>(values: I) {
    let Ok(mut known) = SECRETS.write() else {
        return;
    };
    let mut all = Vec::new();
    for v in values {
        let parts: Vec<String> = v
            .split([' ', ',', ';', '\t', '\n'])
            .map(|part| part.split_once('=').map_or(part, |(_, value)| value))
            .filter(|part| part.len() >= MIN_SCRUBBED_PART_LEN && part.len() < v.len())
            .map(str::to_string)
            .collect();
        all.push(v);
        all.extend(parts);
    }
    for v in all {
        if v.len() < MIN_SCRUBBED_LEN {
            continue;
        }
        let escaped = serde_json::to_string(&v).unwrap_or_default();
        let escaped = escaped.trim_matches('"');
        for form in [v.as_str(), escaped] {
            if !form.is_empty() && !known.iter().any(|k| k == form) {
                known.push(form.to_string());
            }
        }
    }
    // Longest first: a secret that contains another is masked whole.
    known.sort_by_key(|k| std::cmp::Reverse(k.len()));
}

/// `text` with every remembered secret value replaced by [`MASK`]. For text that leaves the
/// process other than through the log (error messages on stderr, `/health`): a library's error
/// can quote a setting's value, and which libraries do is not ours to list.
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    let Ok(known) = SECRETS.read() else {
        return text.into();
    };
    if !known.iter().any(|k| text.contains(k.as_str())) {
        return text.into();
    }
    let mut out = text.to_string();
    for k in known.iter() {
        if out.contains(k.as_str()) {
            out = out.replace(k.as_str(), MASK);
        }
    }
    out.into()
}

/// The log's writer: standard error, with every remembered secret masked. The formatter hands
/// over one whole event per write, so a value is never split between two writes.
pub fn scrubbed_stderr() -> ScrubbedStderr {
    ScrubbedStderr
}

/// See [`scrubbed_stderr`].
pub struct ScrubbedStderr;

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut stderr = std::io::stderr().lock();
        match std::str::from_utf8(buf) {
            Ok(text) => stderr.write_all(scrub(text).as_bytes())?,
            Err(_) => stderr.write_all(scrub(&String::from_utf8_lossy(buf)).as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Names whose value is a file path or a choice, not a secret: masked in `GET /config` like any
/// secret-looking name, but not searched for in text.
fn names_no_secret_value(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("enable.")
        || [
            ".location",
            ".file",
            ".keytab",
            ".url",
            ".method",
            ".type",
            ".algorithm",
            ".id",
            ".scope",
        ]
        .iter()
        .any(|suffix| n.ends_with(suffix))
}

/// The secret values of a connection string (its password, secret-looking query parameters),
/// as written and percent-decoded.
pub fn url_secret_values(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(url) = Url::parse(s) {
        if let Some(p) = url.password() {
            out.push(p.to_string());
            out.push(percent_decode(p));
        }
        let secret = |k: &str| !shown_url_parameter(k) && !names_no_secret_value(k);
        for (k, v) in url.query_pairs() {
            if secret(&k) {
                out.push(v.into_owned());
            }
        }
        if let Some(q) = url.query() {
            for pair in q.split('&') {
                if let Some((k, v)) = pair.split_once('=')
                    && secret(k)
                {
                    out.push(v.to_string());
                }
            }
        }
    } else if let Some((_, rest)) = s.split_once("://")
        && let Some(i) = rest.rfind('@')
        && let Some((_, password)) = rest[..i].split_once(':')
    {
        out.push(password.to_string());
    }
    out
}

/// The secret values of librdkafka properties.
pub fn property_secret_values(props: &BTreeMap<String, String>) -> Vec<String> {
    props
        .iter()
        .filter(|(k, _)| is_secret_name(k) && !names_no_secret_value(k))
        .map(|(_, v)| v.clone())
        .collect()
}

/// `%XX` sequences decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
