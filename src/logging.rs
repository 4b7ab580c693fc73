//! `tracing` setup: human-readable by default, one JSON object per line with `LOG_FORMAT=json`;
//! the filter comes from `RUST_LOG` (default `info`). Text lines escape control characters in
//! every value ([`escape`]), so text from emitters or peers cannot forge or recolour a line.
//! Every line, text or JSON, goes out through [`crate::config::redact::scrubbed_stderr`], which
//! masks the configuration's secret values whoever logged them.

pub mod escape;

use tracing_subscriber::EnvFilter;

pub use escape::escape_controls;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Secret values of the configuration are masked in every line, whoever logs them.
        .with_writer(crate::config::redact::scrubbed_stderr);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .fmt_fields(escape::EscapeFields::default())
            .try_init()
    };
}
