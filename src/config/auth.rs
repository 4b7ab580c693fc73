//! Who may call the API (`audit_manager.auth`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
