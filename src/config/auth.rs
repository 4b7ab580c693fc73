//! Who may call the API (`audit_manager.auth`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::invalid;
use super::http::is_empty_path;
use super::{ConfigError, TlsConfig};

/// How requests are authenticated (`audit_manager.auth`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No authentication (rely on the network or mesh); the reference's behaviour.
    #[default]
    None,
    /// `Authorization: Bearer <token>`, tokens hashed in `auth.tokens_file`.
    Token,
    /// Client certificates (`http.tls.client_ca_file`), mapped to principals by DNS SAN.
    Mtls,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Token => "token",
            AuthMode::Mtls => "mtls",
        }
    }
}

/// Authentication settings (`audit_manager.auth`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `token` or `mtls`. Default `none`.
    pub mode: AuthMode,
    /// YAML file listing the principals (token hashes, DNS SANs, allowed sources); re-read when
    /// it changes. Required with `token` and `mtls`. Default: none.
    pub tokens_file: Option<PathBuf>,
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if is_empty_path(&self.tokens_file) {
            return Err(invalid(
                "auth.tokens_file",
                "must not be empty: give a file path or leave the key out".into(),
            ));
        }
        Ok(())
    }

    /// What each mode still needs from `auth.tokens_file` and the listener's TLS (`tls`, checked
    /// on its own first).
    pub fn validate_with_tls(&self, tls: &TlsConfig) -> Result<(), ConfigError> {
        match self.mode {
            AuthMode::None => {
                if tls.client_ca_file.is_some() {
                    return Err(invalid(
                        "http.tls.client_ca_file",
                        "verifies client certificates, but auth.mode is `none`, which would \
                         ignore who they name: set auth.mode: mtls (and auth.tokens_file with \
                         the principals' dns_san), or remove client_ca_file"
                            .into(),
                    ));
                }
            }
            AuthMode::Token => {
                if self.tokens_file.is_none() {
                    return Err(invalid(
                        "auth.tokens_file",
                        "auth.mode is `token`: set auth.tokens_file to the YAML file listing \
                         the principals and their token_sha256 (see docs/authentication.md)"
                            .into(),
                    ));
                }
                if tls.client_ca_file.is_some() {
                    return Err(invalid(
                        "http.tls.client_ca_file",
                        "verifies client certificates, which only auth.mode `mtls` maps to \
                         principals: set auth.mode: mtls, or remove client_ca_file to \
                         authenticate by token"
                            .into(),
                    ));
                }
            }
            AuthMode::Mtls => {
                if !tls.enabled() {
                    return Err(invalid(
                        "http.tls.cert_file",
                        "auth.mode is `mtls`: set http.tls.cert_file, http.tls.key_file and \
                         http.tls.client_ca_file (client certificates need TLS)"
                            .into(),
                    ));
                }
                if tls.client_ca_file.is_none() {
                    return Err(invalid(
                        "http.tls.client_ca_file",
                        "auth.mode is `mtls`: set http.tls.client_ca_file to the PEM CA that \
                         signs the client certificates"
                            .into(),
                    ));
                }
                if self.tokens_file.is_none() {
                    return Err(invalid(
                        "auth.tokens_file",
                        "auth.mode is `mtls`: set auth.tokens_file to the YAML file mapping \
                         each client certificate's DNS SAN (dns_san) to a principal"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}
