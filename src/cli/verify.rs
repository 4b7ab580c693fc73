//! `verify`: checks stored rows and seals for tampering (see docs/integrity.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::Config;

pub async fn run(
    config: &Config,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    seals_from_topic: bool,
    seals_from_dir: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use crate::integrity::{publish, seal, verify};
    use std::io::{IsTerminal as _, Write as _};
    let files = &config.integrity.public_key_files;
    if files.is_empty() {
        anyhow::bail!(
            "integrity.public_key_files is empty: verify trusts only the public keys in its \
             configuration. List the sealer's FILE.pub (and every earlier key) there"
        );
    }
    let mut keys = std::collections::BTreeMap::new();
    for f in files {
        let k = seal::load_public_key(f)?;
        keys.insert(seal::key_id(&k), k);
    }
    let topic = if seals_from_topic {
        let kafka = config.kafka.clone();
        let name = config.integrity.seal_topic.clone();
        let t = tokio::task::spawn_blocking(move || {
            publish::read_topic(&kafka, &name, std::time::Duration::from_secs(60))
        })
        .await??;
        Some(t)
    } else {
        None
    };
    let dir = match seals_from_dir {
        Some(d) => {
            Some(tokio::task::spawn_blocking(move || publish::SealDir::new(d).read_all()).await??)
        }
        None => None,
    };
    let writer_keys =
        crate::integrity::attest::WriterKeys::load(&config.integrity.writer_public_key_files)?;
    // Two streams for the seals and rows, two more for the attestation pass.
    let store = crate::store::Store::connect_lazy(&config.database.url, 5)?.for_long_reads();
    let opts = verify::VerifyOptions {
        writer_keys,
        from,
        to,
        topic,
        dir,
        seal_interval: Some(config.integrity.seal_interval),
        progress: std::io::stderr().is_terminal(),
        retention_months: Some(config.database.partition_retention_months),
    };
    let mut out = std::io::stdout().lock();
    let started = std::time::Instant::now();
    let report = verify::verify(store.pool(), &keys, &opts, &mut out)
        .await
        .context("verify could not run")?;
    out.flush()?;
    store.close().await;
    eprintln!(
        "verify: {} seal(s), {} row(s) checked in {:.1}s; {} pending (newer than the newest \
         seal), {} legacy (stored before sealing began), {} dropped by retention; {} finding(s)",
        report.seals,
        report.rows_ok,
        started.elapsed().as_secs_f64(),
        report.pending_rows,
        report.legacy_rows,
        report.retained_rows,
        report.findings.len()
    );
    if report.attestation_checked {
        eprintln!(
            "verify: writer attestation: {} row(s) attested, {} unattested-legacy (stored before \
             attestation began)",
            report.attested_rows, report.unattested_legacy_rows
        );
    } else {
        eprintln!(
            "verify: writer attestation not checked (integrity.writer_public_key_files is empty)"
        );
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
