//! The Parquet form of `audit_events` rows: an Arrow schema derived from the one column list
//! (`store::columns::COLUMNS`), written with zstd in row groups of bounded size, and read back
//! into whole rows.
//!
//! Types: `text` → UTF8 string, `timestamptz` → TIMESTAMP(MICROS, adjusted to UTC),
//! `bigint` → INT64, `jsonb` → JSON (the canonical RFC 8785 text with integers written
//! exactly, as the row hash encodes it, so the hash recomputes from the file alone). NOT NULL
//! columns are `required`.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::ArchiveError;
use crate::store::StoredRow;
use crate::store::columns::COLUMNS;

/// Rows per row group: bounded, so the writer's buffer is bounded whatever the month's size.
pub const ROW_GROUP_ROWS: usize = 65_536;
/// Rows per Arrow batch handed to the writer.
pub const BATCH_ROWS: usize = 8_192;
/// A Parquet file is closed (and the next one started) at this many rows…
pub const FILE_ROWS: usize = 1_000_000;
/// …or once it holds this many bytes: each file is uploaded in one request.
pub const FILE_BYTES: usize = 48 * 1024 * 1024;

/// The Arrow schema of an archive's Parquet files, in table column order.
pub static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<Field> = COLUMNS
        .iter()
        .map(|c| {
            let ty = match c.sql_type {
                "timestamptz" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                "bigint" => DataType::Int64,
                _ => DataType::Utf8,
            };
            let f = Field::new(c.name, ty, !c.not_null);
            if c.sql_type == "jsonb" {
                f.with_extension_type(arrow_schema::extension::Json::default())
            } else {
                f
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
});

fn props() -> Result<WriterProperties, ArchiveError> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // A fixed creator: a retry after a crash writes the same bytes.
        .set_created_by("audit-manager archive".to_string())
        .build())
}

/// `details` in its canonical text (integers exact): what the row hash encodes.
pub fn canonical_details(text: &str) -> Result<String, ArchiveError> {
    crate::integrity::jcs::canonicalize_exact(text)
        .map_err(|e| ArchiveError::Parquet(format!("details is not canonical JSON: {e}")))
}

fn text_column(rows: &[StoredRow], f: impl Fn(&StoredRow) -> Option<&str>) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
    for r in rows {
        b.append_option(f(r));
    }
    Arc::new(b.finish())
}

fn time_column(rows: &[StoredRow], f: impl Fn(&StoredRow) -> i64) -> ArrayRef {
    let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
    for r in rows {
        b.append_value(f(r));
    }
    Arc::new(b.finish())
}

/// One column of `rows` as an Arrow array (`details` already canonical).
fn column(name: &str, rows: &[StoredRow]) -> Result<ArrayRef, ArchiveError> {
    Ok(match name {
        "id" => text_column(rows, |r| Some(&r.id)),
        "occurred_at" => time_column(rows, |r| r.occurred_at.timestamp_micros()),
        "ingested_at" => time_column(rows, |r| r.ingested_at.timestamp_micros()),
        "source" => text_column(rows, |r| Some(&r.source)),
        "type" => text_column(rows, |r| Some(&r.r#type)),
        "subject" => text_column(rows, |r| r.subject.as_deref()),
        "actor_type" => text_column(rows, |r| Some(&r.actor_type)),
        "actor_id" => text_column(rows, |r| Some(&r.actor_id)),
        "resource_type" => text_column(rows, |r| r.resource_type.as_deref()),
        "resource_id" => text_column(rows, |r| r.resource_id.as_deref()),
        "action" => text_column(rows, |r| Some(&r.action)),
        "outcome" => text_column(rows, |r| Some(&r.outcome)),
        "reason" => text_column(rows, |r| r.reason.as_deref()),
        "trace_id" => text_column(rows, |r| r.trace_id.as_deref()),
        "details" => text_column(rows, |r| r.details.as_deref()),
        "auth_type" => text_column(rows, |r| r.auth_type.as_deref()),
        "auth_id" => text_column(rows, |r| r.auth_id.as_deref()),
        "seal_seq" => {
            let mut b = Int64Builder::with_capacity(rows.len());
            for r in rows {
                b.append_option(r.seal_seq);
            }
            Arc::new(b.finish())
        }
        other => {
            return Err(ArchiveError::Parquet(format!(
                "column {other} of audit_events has no Parquet mapping"
            )));
        }
    })
}

/// `rows` as one record batch of [`SCHEMA`].
pub fn batch(rows: &[StoredRow]) -> Result<RecordBatch, ArchiveError> {
    let arrays = COLUMNS
        .iter()
        .map(|c| column(c.name, rows))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(SCHEMA.clone(), arrays)?)
}

/// Writes one Parquet file in memory, batch by batch (its size is bounded by [`FILE_ROWS`] and
/// [`FILE_BYTES`]: the caller closes it when [`FileWriter::full`]).
pub struct FileWriter {
    writer: ArrowWriter<Vec<u8>>,
    pending: Vec<StoredRow>,
    rows: usize,
}

impl FileWriter {
    pub fn new() -> Result<FileWriter, ArchiveError> {
        Ok(FileWriter {
            // Sized for a full file up front: growing by doubling copied the file's bytes
            // again at every step and faulted in fresh pages for each copy (about a sixth of
            // the pass's CPU in a profile); untouched capacity costs no memory.
            writer: ArrowWriter::try_new(
                Vec::with_capacity(FILE_BYTES + FILE_BYTES / 8),
                SCHEMA.clone(),
                Some(props()?),
            )?,
            pending: Vec::with_capacity(BATCH_ROWS),
            rows: 0,
        })
    }

    /// Adds one row (its `details` canonicalised here).
    pub fn push(&mut self, mut row: StoredRow) -> Result<(), ArchiveError> {
        if let Some(d) = &row.details {
            row.details = Some(canonical_details(d)?);
        }
        self.pending.push(row);
        self.rows += 1;
        if self.pending.len() >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), ArchiveError> {
        if !self.pending.is_empty() {
            let b = batch(&self.pending)?;
            self.writer.write(&b)?;
            self.pending.clear();
        }
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether the file should be closed now.
    pub fn full(&self) -> bool {
        self.rows >= FILE_ROWS
            || self.writer.bytes_written() + self.writer.in_progress_size() >= FILE_BYTES
    }

    /// The file's bytes.
    pub fn finish(mut self) -> Result<Bytes, ArchiveError> {
        self.flush_batch()?;
        Ok(Bytes::from(self.writer.into_inner()?))
    }
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, ArchiveError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| ArchiveError::Parquet(format!("column {name} is missing or mistyped")))
}

fn text(a: &StringArray, i: usize) -> Option<String> {
    (!a.is_null(i)).then(|| a.value(i).to_string())
}

fn required(a: &StringArray, i: usize, name: &str) -> Result<String, ArchiveError> {
    text(a, i).ok_or_else(|| ArchiveError::Parquet(format!("{name} is null in row {i}")))
}

fn time(
    a: &TimestampMicrosecondArray,
    i: usize,
    name: &str,
) -> Result<chrono::DateTime<chrono::Utc>, ArchiveError> {
    (!a.is_null(i))
        .then(|| chrono::DateTime::from_timestamp_micros(a.value(i)))
        .flatten()
        .ok_or_else(|| ArchiveError::Parquet(format!("{name} is null or out of range in row {i}")))
}

/// The rows of one record batch.
pub fn rows_of(b: &RecordBatch) -> Result<Vec<StoredRow>, ArchiveError> {
    let s = |n| col::<StringArray>(b, n);
    let (id, source, ty, subject) = (s("id")?, s("source")?, s("type")?, s("subject")?);
    let (actor_type, actor_id) = (s("actor_type")?, s("actor_id")?);
    let (resource_type, resource_id) = (s("resource_type")?, s("resource_id")?);
    let (action, outcome, reason, trace_id) =
        (s("action")?, s("outcome")?, s("reason")?, s("trace_id")?);
    let (details, auth_type, auth_id) = (s("details")?, s("auth_type")?, s("auth_id")?);
    let occurred = col::<TimestampMicrosecondArray>(b, "occurred_at")?;
    let ingested = col::<TimestampMicrosecondArray>(b, "ingested_at")?;
    let seq = col::<Int64Array>(b, "seal_seq")?;
    (0..b.num_rows())
        .map(|i| {
            Ok(StoredRow {
                id: required(id, i, "id")?,
                occurred_at: time(occurred, i, "occurred_at")?,
                ingested_at: time(ingested, i, "ingested_at")?,
                source: required(source, i, "source")?,
                r#type: required(ty, i, "type")?,
                subject: text(subject, i),
                actor_type: required(actor_type, i, "actor_type")?,
                actor_id: required(actor_id, i, "actor_id")?,
                resource_type: text(resource_type, i),
                resource_id: text(resource_id, i),
                action: required(action, i, "action")?,
                outcome: required(outcome, i, "outcome")?,
                reason: text(reason, i),
                trace_id: text(trace_id, i),
                details: text(details, i),
                auth_type: text(auth_type, i),
                auth_id: text(auth_id, i),
                seal_seq: (!seq.is_null(i)).then(|| seq.value(i)),
            })
        })
        .collect()
}

/// Reads a Parquet file's rows, batch by batch, calling `f` with each batch's rows.
pub fn read_rows(
    bytes: Bytes,
    mut f: impl FnMut(Vec<StoredRow>) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .with_batch_size(BATCH_ROWS)
        .build()?;
    for b in reader {
        f(rows_of(&b?)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_a_file_with_their_hashes() {
        let mut a = crate::integrity::encoding::tests::sample();
        a.details = Some(r#"{"n": 9007199254740993, "b": [1.5, "x"]}"#.into());
        let mut b = a.clone();
        b.id = "evt-2".into();
        b.details = None;
        b.seal_seq = None;
        b.subject = Some("s".into());
        let mut w = FileWriter::new().unwrap();
        w.push(a.clone()).unwrap();
        w.push(b.clone()).unwrap();
        let bytes = w.finish().unwrap();
        let mut back = Vec::new();
        read_rows(bytes.clone(), |rows| {
            back.extend(rows);
            Ok(())
        })
        .unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1], b);
        assert_eq!(
            back[0].details.as_deref(),
            Some(r#"{"b":[1.5,"x"],"n":9007199254740993}"#)
        );
        for (x, y) in back.iter().zip([&a, &b]) {
            assert_eq!(
                crate::integrity::encoding::row_hash(x).unwrap(),
                crate::integrity::encoding::row_hash(y).unwrap()
            );
        }
        // The same rows write the same bytes (a retry after a crash compares them).
        let mut w = FileWriter::new().unwrap();
        w.push(a).unwrap();
        w.push(b).unwrap();
        assert_eq!(w.finish().unwrap(), bytes);
    }
}
