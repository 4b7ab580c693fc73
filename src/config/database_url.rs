//! `database.url` → the connect options of every connection the service makes (the store's
//! pools, `verify`, `partitions`, the query role, creating the database), so TLS settings apply
//! everywhere alike.
//!
//! The URL is read with libpq's names (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, …). Three
//! things happen here rather than in the driver:
//!
//! - parameters the driver does not know are dropped before it sees the URL, and named (never
//!   their values) in a warning: the driver's own warning prints each value, and a URL is where
//!   an operator puts `sslpassword` or a misspelt `pasword`;
//! - `sslpassword` is refused: it decrypts an encrypted `sslkey`, which this client cannot read,
//!   so the connection would fail later with a less helpful error;
//! - `sslrootcert=system` (libpq ≥ 16: "the system's CAs") becomes the default it stands for.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use url::Url;

use super::redact_url;

/// Query parameters the driver applies (its spellings included).
const KNOWN: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Why `database.url` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a `postgres://` URL, or a parameter with a bad value.
    #[error(
        "`{url}` is not a PostgreSQL URL ({reason}); expected \
         postgres://user:password@host:port/dbname[?sslmode=verify-full&sslrootcert=/path/ca.pem]"
    )]
    Invalid {
        /// The URL with its secrets masked.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// `sslpassword` is set.
    #[error(
        "sslpassword is not supported: this client cannot read an encrypted client key. Store \
         the key unencrypted (`openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.pk8.pem`) in \
         a file only the service can read (e.g. a Kubernetes Secret mounted read-only), point \
         sslkey at it and remove sslpassword from database.url"
    )]
    SslPassword,
}

/// What [`connect_options`] made of a URL.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// Options for the driver.
    pub options: PgConnectOptions,
    /// Names of the query parameters that were dropped (not supported by this client).
    pub ignored: Vec<String>,
}

impl Parsed {
    /// Logs one warning per ignored parameter, by name only.
    pub fn warn_ignored(&self) {
        for name in &self.ignored {
            tracing::warn!(
                parameter = %name,
                "database.url: the parameter `{name}` is not supported by this client and is \
                 ignored; remove it from database.url (supported: sslmode, sslrootcert, sslcert, \
                 sslkey, host, port, dbname, user, password, application_name, options)"
            );
        }
    }
}

/// Parses `url` (`postgres://` or `postgresql://`) into connect options, without logging
/// anything: see the module documentation for what is dropped and refused.
pub fn connect_options(url: &str) -> Result<Parsed, UrlError> {
    let invalid = |reason: String| UrlError::Invalid {
        url: redact_url(url),
        reason,
    };
    let mut parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(invalid(
            "the scheme must be postgres:// or postgresql://".into(),
        ));
    }
    let mut kept = Vec::new();
    let mut ignored = Vec::new();
    for (key, value) in parsed.query_pairs() {
        let known = KNOWN.contains(&key.as_ref()) || key.starts_with("options[");
        match key.as_ref() {
            "sslpassword" => return Err(UrlError::SslPassword),
            "sslrootcert" if value == "system" => {}
            _ if known => kept.push((key.into_owned(), value.into_owned())),
            _ => ignored.push(key.into_owned()),
        }
    }
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    let options = PgConnectOptions::from_str(parsed.as_str())
        // The driver's messages name a parameter and its (non-secret) value.
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Parsed { options, ignored })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::postgres::PgSslMode;

    #[test]
    fn tls_parameters_reach_the_driver() {
        let p = connect_options(
            "postgres://u:p@db.example:6432/audit?sslmode=verify-full&sslrootcert=/tls/ca.pem\
             &sslcert=/tls/c.pem&sslkey=/tls/c.key",
        )
        .unwrap();
        assert!(p.ignored.is_empty());
        assert!(matches!(p.options.get_ssl_mode(), PgSslMode::VerifyFull));
        assert_eq!(p.options.get_host(), "db.example");
        assert_eq!(p.options.get_port(), 6432);
        assert_eq!(p.options.get_database(), Some("audit"));
        let back = format!("{:?}", p.options);
        assert!(back.contains("/tls/ca.pem"), "{back}");
        assert!(back.contains("/tls/c.key"), "{back}");
    }

    #[test]
    fn unknown_parameters_are_dropped_by_name() {
        let p = connect_options(
            "postgres://u@h/d?sslmode=require&connect_timeout=5&pasword=hunter2&sslrootcert=system",
        )
        .unwrap();
        assert_eq!(p.ignored, ["connect_timeout", "pasword"]);
        assert!(matches!(p.options.get_ssl_mode(), PgSslMode::Require));
        // `system` means the default: the system's CAs, not a file called "system".
        assert!(!format!("{:?}", p.options).contains("system"));
    }

    #[test]
    fn sslpassword_is_refused_without_its_value() {
        let e = connect_options("postgres://u@h/d?sslkey=/k&sslpassword=hunter2").unwrap_err();
        assert!(matches!(e, UrlError::SslPassword));
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("sslkey"), "{text}");
    }

    #[test]
    fn a_bad_url_is_reported_without_its_password() {
        let e = connect_options("mysql://u:hunter2@h/d").unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://"), "{text}");
        let e = connect_options("postgres://u:hunter2@h/d?sslmode=sometimes").unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("sometimes"), "{text}");
    }
}
