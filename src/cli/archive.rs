//! `archive run | list | verify | restore`: archives of closed months (docs/archives.md).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::ArchiveCommand;
use crate::archive::objects::Objects;
use crate::archive::run::Archiver;
use crate::archive::{layout, restore, verify};
use crate::config::Config;
use crate::integrity::seal;
use crate::store::Month;

fn month_arg(s: Option<&str>) -> anyhow::Result<Option<Month>> {
    s.map(|s| {
        layout::parse_month(s)
            .with_context(|| format!("--month {s}: expected YYYY-MM, e.g. 2026-03"))
    })
    .transpose()
}

fn trusted_keys(
    config: &Config,
    flags: &[PathBuf],
) -> anyhow::Result<BTreeMap<[u8; 8], ed25519_dalek::VerifyingKey>> {
    let files = if flags.is_empty() {
        &config.integrity.public_key_files
    } else {
        flags
    };
    if files.is_empty() {
        anyhow::bail!(
            "no trusted public key: pass --public-key FILE (the sealer's FILE.pub, and every \
             earlier key) or list them in integrity.public_key_files"
        );
    }
    let mut keys = BTreeMap::new();
    for f in files {
        let k = seal::load_public_key(f)?;
        keys.insert(seal::key_id(&k), k);
    }
    Ok(keys)
}

async fn store(config: &Config) -> anyhow::Result<crate::store::Store> {
    // One statement streams a whole month: not a slow statement worth a warning.
    let store = crate::store::Store::connect_lazy(&config.database.url, 4)?.for_long_reads();
    store.prepare().await?;
    Ok(store)
}

/// What a retention record's archive manifest hash names among the verified parts.
fn drop_archive(records: &[crate::store::archives::ArchiveRecord], hash: Option<&[u8]>) -> String {
    let Some(hash) = hash else {
        return "its retention record names no archive (dropped before archiving was on)".into();
    };
    match records
        .iter()
        .find(|r| r.manifest_hash.as_deref() == Some(hash))
    {
        Some(r) => format!(
            "archived, its retention record names manifest {} ({} part {}, sequence {})",
            hex::encode(hash),
            r.month,
            r.part,
            r.sequence
        ),
        None => format!(
            "its retention record names manifest {}, which no verified archive part has: run \
             audit-manager verify and archive verify",
            hex::encode(hash)
        ),
    }
}

pub async fn run(config: &Config, command: ArchiveCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    match command {
        ArchiveCommand::Run { month } => {
            let month = month_arg(month.as_deref())?;
            let store = store(config).await?;
            let Some(archiver) = Archiver::from_config(config, store.clone())? else {
                anyhow::bail!("archive.url is not set: there is nowhere to archive to");
            };
            let report = archiver.pass(chrono::Utc::now(), month).await?;
            if !report.locked {
                eprintln!("another archiver is working right now (advisory lock held); try again");
                return Ok(ExitCode::from(1));
            }
            for p in &report.parts {
                println!(
                    "archived {} part {} ({} rows, manifest {}){}",
                    p.month,
                    p.part,
                    p.rows,
                    p.sequence,
                    if p.resumed {
                        ", finished after an interruption"
                    } else {
                        ""
                    }
                );
            }
            if report.parts.is_empty() {
                eprintln!("archive: nothing to archive");
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCommand::List => {
            let store = store(config).await?;
            let records = crate::store::archives::records(store.pool()).await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:>8} {:<8} {:>5} {:>12} {:>23} {:<10} manifest",
                "sequence", "month", "part", "rows", "seal_seq", "state"
            )?;
            for r in &records {
                writeln!(
                    out,
                    "{:>8} {:<8} {:>5} {:>12} {:>23} {:<10} {}",
                    r.sequence,
                    r.month,
                    r.part,
                    r.rows.map_or_else(|| "-".to_string(), |n| n.to_string()),
                    format!("({}, {}]", r.seal_after, r.seal_upto),
                    if r.manifest_hash.is_some() {
                        "verified"
                    } else {
                        "writing"
                    },
                    r.manifest_path
                )?;
            }
            let drops = crate::store::retention::archive_manifests(store.pool()).await?;
            for d in drops {
                writeln!(
                    out,
                    "dropped {} at {}: {}",
                    d.partition,
                    d.dropped_at.to_rfc3339(),
                    drop_archive(&records, d.archive_manifest.as_deref())
                )?;
            }
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCommand::Verify {
            target,
            month,
            public_key,
        } => {
            let month = month_arg(month.as_deref())?;
            let keys = trusted_keys(config, &public_key)?;
            let objects = Objects::open_existing(&target)?;
            let started = std::time::Instant::now();
            let mut out = std::io::stdout().lock();
            let report = verify::verify(&objects, &keys, month, &mut out)
                .await
                .context("archive verify could not run")?;
            out.flush()?;
            eprintln!(
                "archive verify: {} manifest(s), {} part(s), {} seal(s), {} row(s) checked \
                 against their seals and {} without seal_seq in {:.1}s; {} finding(s)",
                report.manifests,
                report.parts,
                report.seals,
                report.rows_ok,
                report.legacy_rows,
                started.elapsed().as_secs_f64(),
                report.findings.len()
            );
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ArchiveCommand::Restore { month, into } => {
            let Some(month) = month_arg(Some(&month))? else {
                anyhow::bail!("--month is required");
            };
            let Some(url) = &config.archive.url else {
                anyhow::bail!("archive.url is not set: there is no archive to restore from");
            };
            let keys = trusted_keys(config, &[])?;
            let objects = Objects::open_existing(url)?;
            let store = store(config).await?;
            let done = restore::restore(&store, &objects, &keys, month, into.as_deref()).await?;
            println!(
                "restored {month}: {} part(s), {} row(s) read, {} inserted into {}",
                done.parts,
                done.rows_read,
                done.rows_inserted,
                into.as_deref().unwrap_or(crate::store::columns::TABLE)
            );
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}
