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

/// Whether a property / query-parameter name looks secret.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "sasl.jaas", "token", "key"]
        .iter()
        .any(|w| n.contains(w))
}

/// The connection string with its password (and secret-looking query parameters such as
/// `password=`) replaced by `***`. Also handles `key=value` connection strings
/// (`host=x password=y`).
pub fn redact_url(s: &str) -> String {
    let Ok(mut url) = Url::parse(s) else {
        return redact_unparsed(s);
    };
    if url.password().is_some() && url.set_password(Some(MASK)).is_err() {
        return MASK.to_string();
    }
    let secret_query = url.query_pairs().any(|(k, _)| is_secret_name(&k));
    if secret_query {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_name(&k) {
                    MASK.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
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
