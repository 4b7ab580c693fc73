//! The HTTP listener (`audit_manager.http`, `audit_manager.http.tls`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::error::{at_least_one, invalid};
use super::value::{de_byte_size, de_duration, de_int, de_socket_addr};

/// HTTP server settings (`audit_manager.http`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port the HTTP server binds to. Default `0.0.0.0:8000`, or
    /// `UVICORN_HOST:UVICORN_PORT` when those are set.
    #[serde(deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
    /// Largest accepted request body in bytes (byte size); larger bodies get 413.
    /// Default `4MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_body_bytes: u64,
    /// Bytes of ingest request bodies held at once by the whole process, from the moment a
    /// request announces (`Content-Length`) or delivers them until it is answered; a request
    /// that does not fit gets 503 AUD-004 at once. Bounds the memory a flood of batches can
    /// take (a batch costs about 3.3 bytes more per body byte while it is decoded and spooled,
    /// see `docs/memory.md`). At least `max_body_bytes`. Default `8MiB`.
    #[serde(deserialize_with = "de_byte_size")]
    pub max_in_flight_bytes: u64,
    /// Longest a client may take to send a request's complete headers (duration), counted
    /// from when the connection is ready or its previous answer was sent; the connection is
    /// then closed without an answer (so idle keep-alive connections close after it too). The
    /// TLS handshake has the same bound of its own. Default `10s`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub header_timeout: Duration,
    /// Longest an ingest request's body may take to arrive once its headers have (duration);
    /// a body still incomplete is answered 408 AUD-408, nothing of it is stored and the bytes
    /// it held in `max_in_flight_bytes` are given back. Default `30s`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub body_timeout: Duration,
    /// Connections served at once (TLS handshakes included); further ones wait in the
    /// kernel's listen backlog until one closes. Default `10000`.
    #[serde(deserialize_with = "de_int")]
    pub max_connections: usize,
    /// On SIGTERM/SIGINT: how long requests in flight may still take to finish (duration);
    /// their connections are then cut. A cut request was not answered 202, so its client
    /// retries; everything answered 202 is in the spool either way. Keep it below the
    /// orchestrator's grace period (Kubernetes `terminationGracePeriodSeconds`, 30s by
    /// default). Default `20s`.
    #[serde(
        deserialize_with = "de_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub shutdown_grace: Duration,
    /// TLS on the listener (plain HTTP when `cert_file` is not set).
    pub tls: TlsConfig,
}

/// TLS on the HTTP listener (`audit_manager.http.tls`). The files are re-read when they change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate chain (leaf first). Setting it (with `key_file`)
    /// turns TLS on. Default: none (plain HTTP).
    pub cert_file: Option<PathBuf>,
    /// PEM file with the server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    /// Default: none.
    pub key_file: Option<PathBuf>,
    /// PEM file with the CA certificate(s) client certificates must chain to: enables mutual
    /// TLS (requires `auth.mode: mtls`). Default: none.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8000)),
            max_body_bytes: 4 * 1024 * 1024,
            max_in_flight_bytes: 8 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(20),
            tls: TlsConfig::default(),
        }
    }
}

impl HttpConfig {
    /// The listener's limits; `tls` is checked with `auth` (see [`super::Config::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least_one("http.max_body_bytes", self.max_body_bytes)?;
        if self.max_in_flight_bytes < self.max_body_bytes {
            return Err(invalid(
                "http.max_in_flight_bytes",
                format!(
                    "must be at least http.max_body_bytes ({} bytes), or a request of the \
                     largest allowed size could never be accepted (got {} bytes)",
                    self.max_body_bytes, self.max_in_flight_bytes
                ),
            ));
        }
        for (key, d) in [
            ("http.header_timeout", self.header_timeout),
            ("http.body_timeout", self.body_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(
                    key,
                    "must be longer than 0s (0 would close every connection at once); e.g. \"10s\""
                        .to_string(),
                ));
            }
        }
        at_least_one("http.max_connections", self.max_connections as u64)?;
        Ok(())
    }
}

impl TlsConfig {
    /// The files come as a set: a certificate with its key, client CAs only with TLS on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, p) in [
            ("http.tls.cert_file", &self.cert_file),
            ("http.tls.key_file", &self.key_file),
            ("http.tls.client_ca_file", &self.client_ca_file),
        ] {
            if is_empty_path(p) {
                return Err(invalid(
                    key,
                    "must not be empty: give a file path or leave the key out".into(),
                ));
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(invalid(
                    "http.tls.key_file",
                    "http.tls.cert_file is set but the key is not: set http.tls.key_file to the \
                     PEM private key of the certificate (or remove cert_file for plain HTTP)"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "http.tls.cert_file",
                    "http.tls.key_file is set but the certificate is not: set \
                     http.tls.cert_file to the PEM certificate chain (or remove key_file)"
                        .into(),
                ));
            }
            _ => {}
        }
        if self.client_ca_file.is_some() && !self.enabled() {
            return Err(invalid(
                "http.tls.client_ca_file",
                "client certificates are verified during the TLS handshake, so TLS must be on: \
                 set http.tls.cert_file and http.tls.key_file too"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// A path key given with an empty value (`key: ""`), which names no file.
pub(super) fn is_empty_path(p: &Option<PathBuf>) -> bool {
    p.as_ref().is_some_and(|p| p.as_os_str().is_empty())
}
