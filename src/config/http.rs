//! The HTTP listener (`audit_manager.http`, `audit_manager.http.tls`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
