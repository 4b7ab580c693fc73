//! The sealer of the maintain role, built from `integrity.*` (see docs/integrity.md).

use anyhow::Context;

use crate::config::Config;
use crate::integrity::attest::{Attestor, SealCheck, WriterKeys};
use crate::integrity::publish::Publisher;
use crate::integrity::seal::{self, Signer};
use crate::integrity::sealer::{OffDatabase, Sealer};

/// The sealer when `integrity.signing_key_file` is set; warns when it is not, or when nothing
/// keeps a copy of the seals outside the database.
pub fn build(config: &Config) -> anyhow::Result<Option<Sealer>> {
    let Some(path) = &config.integrity.signing_key_file else {
        tracing::warn!(
            "integrity.signing_key_file is not set: stored rows are NOT sealed, so changes to \
             them cannot be detected. Create a key with `audit-manager keygen --out FILE` and \
             set integrity.signing_key_file (see docs/integrity.md)"
        );
        return Ok(None);
    };
    let key = seal::load_signing_key(path).context("cannot load integrity.signing_key_file")?;
    let signer = Signer::new(key);
    tracing::info!(key_id = %hex::encode(signer.key_id()), "sealing stored rows");
    // Kafka-less mode (forward.target: postgres) publishes no seal: integrity.seal_dir keeps
    // the copy.
    let topic = config.seal_topic().to_string();
    let publisher = if topic.is_empty() {
        None
    } else {
        Some(Publisher::new(&config.kafka, &topic)?)
    };
    if topic.is_empty() && config.integrity.seal_dir.is_none() {
        tracing::warn!(
            "neither integrity.seal_topic (unused when forward.target is postgres) nor \
             integrity.seal_dir is set: no copy of the seals \
             outside the database, so deleted seals go unnoticed by `verify` and, after a \
             restart, by the sealer, which would seal changed rows afresh. Set one (see \
             docs/integrity.md)"
        );
    }
    let off = OffDatabase::new(
        config.integrity.seal_dir.clone(),
        (!topic.is_empty()).then(|| (config.kafka.clone(), topic.clone())),
    );
    Ok(Some(Sealer {
        signer,
        publisher,
        off,
        check: writer_check(config)?,
        interval: config.integrity.seal_interval,
    }))
}

/// The sealer's writer attestation check: the keys of `integrity.writer_public_key_files`, and
/// the public half of `integrity.writer_key_file` when this process has one (all roles in one
/// process). Without any, rows are sealed unchecked, with a warning.
fn writer_check(config: &Config) -> anyhow::Result<Option<SealCheck>> {
    let mut keys: Vec<_> = config
        .integrity
        .writer_public_key_files
        .iter()
        .map(|p| seal::load_public_key(p))
        .collect::<Result<_, _>>()
        .context("cannot load integrity.writer_public_key_files")?;
    if let Some(path) = &config.integrity.writer_key_file {
        keys.push(
            Attestor::load(path)
                .context("cannot load integrity.writer_key_file")?
                .verifying_key(),
        );
    }
    if keys.is_empty() {
        tracing::warn!(
            "no writer key (integrity.writer_public_key_files, integrity.writer_key_file): rows \
             are sealed without checking writer attestation, so a row inserted by someone with \
             database access before the next seal is sealed as genuine. Create a writer key \
             with `audit-manager keygen --out FILE`, give FILE to the sink \
             (integrity.writer_key_file) and FILE.pub to the maintain role and verify \
             (integrity.writer_public_key_files); see docs/integrity.md"
        );
        return Ok(None);
    }
    let keys = WriterKeys::new(keys);
    tracing::info!(
        writer_keys = keys.len(),
        "sealing only rows with a writer attestation"
    );
    Ok(Some(SealCheck::new(keys)))
}
