//! `archive restore`: a month's archived rows back into PostgreSQL for an investigation,
//! every column as archived (`seal_seq` and `ingested_at` too), after the month's archive
//! verified clean.
//!
//! Into `audit_events` (the default) the query API reads them again; into another table
//! (`--into`) they stay apart from the live data. Rows restored into `audit_events` lie in a
//! month retention dropped, so database `verify` reports the dropped partition's record as
//! contradicted until the month is dropped again (`partitions drop-expired`).

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;

use super::objects::Objects;
use super::parquet::rows_of;
use super::{ArchiveError, layout, manifest};
use crate::store::{Month, Store, archives};

/// Rows inserted per statement.
const CHUNK: usize = 5_000;

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    pub parts: usize,
    pub rows_read: u64,
    pub rows_inserted: u64,
}

/// Restores `month` from `objects` into `table` (`None`: `audit_events`). The month's archive
/// is verified first (`archive verify --month`); findings refuse the restore.
pub async fn restore(
    store: &Store,
    objects: &Objects,
    keys: &BTreeMap<[u8; 8], VerifyingKey>,
    month: Month,
    table: Option<&str>,
) -> Result<Restored, ArchiveError> {
    let mut sink = Vec::new();
    let report = super::verify::verify(objects, keys, Some(month), &mut sink).await?;
    if !report.is_clean() {
        return Err(ArchiveError::Other(format!(
            "the archive of {month} does not verify ({} finding(s)); nothing restored:\n{}",
            report.findings.len(),
            String::from_utf8_lossy(&sink).trim_end()
        )));
    }
    let pool = store.pool();
    let target = match table {
        None => {
            store
                .ensure_months([month])
                .await
                .map_err(|e| ArchiveError::Other(e.to_string()))?;
            crate::store::columns::TABLE.to_string()
        }
        Some(t) => {
            archives::create_restore_table(pool, t)
                .await
                .map_err(ArchiveError::db(format!("creating table {t}")))?;
            t.to_string()
        }
    };
    let mut done = Restored::default();
    let listed = objects.list().await?;
    let prefix = format!("{}/", layout::month_dir(month));
    for path in listed
        .iter()
        .filter(|p| p.starts_with(&prefix) && layout::is_manifest(p))
    {
        let Some(bytes) = objects.read(path).await? else {
            continue;
        };
        let m = manifest::read(&bytes, keys).map_err(ArchiveError::Other)?;
        done.parts += 1;
        for f in m.manifest.files.iter().filter(|f| f.kind == "parquet") {
            let Some(bytes) = objects.read(&f.path).await? else {
                return Err(ArchiveError::Other(format!("{} disappeared", f.path)));
            };
            let reader =
                ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)?
                    .with_batch_size(CHUNK)
                    .build()?;
            for batch in reader {
                let rows = rows_of(&batch?)?;
                done.rows_read += rows.len() as u64;
                done.rows_inserted += archives::restore_rows(pool, &target, &rows)
                    .await
                    .map_err(ArchiveError::db(format!("inserting into {target}")))?;
            }
        }
    }
    Ok(done)
}
