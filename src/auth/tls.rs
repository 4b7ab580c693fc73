//! TLS on the HTTP listener (`http.tls.*`), with rustls and the `ring` provider.
//!
//! - The server certificate, its key and (for mutual TLS) the client CA are read from PEM files
//!   and re-read when any of them changes (checked every [`RELOAD_INTERVAL`]): every new
//!   handshake uses the newest valid set, connections already open keep theirs. A broken new
//!   set (unreadable file, key not matching the certificate, no certificate) keeps the previous
//!   one and is logged as an error; the process never restarts for a rotation.
//! - With `client_ca_file`, a certificate the client presents must chain to that CA
//!   (`WebPkiClientVerifier`), or the handshake fails, before HTTP. A client may also present
//!   none (probes, Prometheus): it reaches only the routes that need no credentials, everything
//!   else answers 401 AUD-010.
//! - Each handshake runs in its connection's own task, bounded by `http.header_timeout`
//!   (`serve::listener`), so a slow or silent client cannot hold up other connections.
//! - [`PeerInfo`] carries the client certificate's first DNS SAN into each request
//!   (`ConnectInfo<PeerInfo>`), where the middleware maps it to a principal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::RELOAD_INTERVAL;
use crate::config::TlsConfig;

/// The TLS files (paths from `http.tls`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

impl TlsFiles {
    /// The files of `tls`, when TLS is configured.
    pub fn from_config(tls: &TlsConfig) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert_file: tls.cert_file.clone()?,
            key_file: tls.key_file.clone()?,
            client_ca_file: tls.client_ca_file.clone(),
        })
    }

    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert_file.as_path(), self.key_file.as_path()];
        v.extend(self.client_ca_file.as_deref());
        v
    }

    /// SHA-256 over every file's content (an unreadable file hashes its error).
    fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for p in self.paths() {
            match std::fs::read(p) {
                Ok(b) => {
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(&b);
                }
                Err(e) => h.update(format!("error {e}").as_bytes()),
            }
        }
        h.finalize().into()
    }
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key} {}: {message}", path.display())]
pub struct TlsError {
    pub key: &'static str,
    pub path: PathBuf,
    pub message: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError {
        key,
        path: path.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err(
            "holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)".into(),
        ));
    }
    Ok(certs)
}

/// Builds the rustls server configuration from the files as they are now.
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certs("http.tls.cert_file", &files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| TlsError {
        key: "http.tls.key_file",
        path: files.key_file.clone(),
        message: format!("no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: "http.tls",
            path: files.cert_file.clone(),
            message: e.to_string(),
        })?;
    let builder = match &files.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certs("http.tls.client_ca_file", ca_path)? {
                roots.add(ca).map_err(|e| TlsError {
                    key: "http.tls.client_ca_file",
                    path: ca_path.clone(),
                    message: format!("not a usable CA certificate: {e}"),
                })?;
            }
            // A client without a certificate completes the handshake (kubelet probes and
            // Prometheus cannot present one) and gets only the public routes: the middleware
            // answers 401 AUD-010 everywhere else. A certificate that is presented must chain
            // to the CA, or the handshake fails.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError {
                key: "http.tls.client_ca_file",
                path: ca_path.clone(),
                message: format!("cannot verify clients with it: {e}"),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError {
        key: "http.tls.key_file",
        path: files.key_file.clone(),
        message: format!(
            "does not go with http.tls.cert_file {}: {e}",
            files.cert_file.display()
        ),
    })?;
    // The server speaks HTTP/1.1 (axum without its `http2` feature): offering h2 in ALPN would
    // make clients such as curl pick a protocol the connection then does not speak.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The server configuration in force, replaced when the files change.
#[derive(Clone)]
pub struct TlsReloader {
    files: TlsFiles,
    current: Arc<RwLock<(Arc<ServerConfig>, [u8; 32])>>,
    /// The fingerprint of the last broken set, so it is logged once.
    broken: Arc<RwLock<Option<[u8; 32]>>>,
}

impl TlsReloader {
    /// Loads the files; a broken set refuses the start.
    pub fn load(files: TlsFiles) -> Result<TlsReloader, TlsError> {
        let print = files.fingerprint();
        let config = server_config(&files)?;
        Ok(TlsReloader {
            files,
            current: Arc::new(RwLock::new((Arc::new(config), print))),
            broken: Arc::default(),
        })
    }

    /// Handshakes with the newest valid configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        let guard = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(guard.0.clone())
    }

    /// Re-reads the files if their content changed.
    pub fn check_files(&self) {
        let print = self.files.fingerprint();
        if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == print {
            return;
        }
        if *self.broken.read().unwrap_or_else(|p| p.into_inner()) == Some(print) {
            return;
        }
        match server_config(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) =
                    (Arc::new(config), print);
                *self.broken.write().unwrap_or_else(|p| p.into_inner()) = None;
                metrics::counter!("audit_tls_reloads_total", "outcome" => "ok").increment(1);
                tracing::info!(
                    cert_file = %self.files.cert_file.display(),
                    "reloaded the TLS certificate files; new connections use them"
                );
            }
            Err(e) => {
                *self.broken.write().unwrap_or_else(|p| p.into_inner()) = Some(print);
                metrics::counter!("audit_tls_reloads_total", "outcome" => "failed").increment(1);
                tracing::error!(
                    problem = %e,
                    "the changed TLS files are unusable; new connections keep using the \
                     previous certificate until they are fixed"
                );
            }
        }
    }

    /// Keeps checking the files for changes until `token` is cancelled.
    pub fn spawn(&self, token: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_INTERVAL) => {}
                }
                let t = this.clone();
                let _ = tokio::task::spawn_blocking(move || t.check_files()).await;
            }
        });
    }
}

/// What the connection a request arrived on says about the client.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// Whether the client presented a (verified) certificate.
    pub has_certificate: bool,
    /// The first DNS name in the certificate's subject alternative names.
    pub dns_san: Option<Arc<str>>,
}

/// The first DNS SAN of a DER certificate.
pub fn first_dns_san(cert: &CertificateDer<'_>) -> Option<String> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    cert.valid_dns_names().next().map(str::to_owned)
}

impl PeerInfo {
    /// What the completed handshake of `tls` says about the client at `addr`.
    pub fn of(tls: &TlsStream<TcpStream>, addr: SocketAddr) -> PeerInfo {
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        PeerInfo {
            addr,
            has_certificate: leaf.is_some(),
            dns_san: leaf.and_then(first_dns_san).map(Arc::from),
        }
    }
}
