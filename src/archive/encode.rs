//! The Parquet encoder of `archive run`, on a thread of its own: the rows' `details` are
//! canonicalised and the rows encoded and compressed there while the reading task decodes the
//! next rows from PostgreSQL (and PostgreSQL produces them), so the three proceed in parallel.
//!
//! Rows go to the encoder in chunks through a channel of [`CHUNKS_IN_FLIGHT`] chunks; finished
//! files come back, in order, through a second channel the reader drains after each chunk.
//! Memory stays bounded: the chunks in flight, the file being written, and the files finished
//! but not uploaded yet (the reader uploads each before it reads on).

use bytes::Bytes;
use tokio::sync::mpsc;

use super::ArchiveError;
use super::parquet::{BATCH_ROWS, FileWriter};
use crate::store::StoredRow;

/// Rows per chunk handed to the encoder.
pub const CHUNK_ROWS: usize = BATCH_ROWS;
/// Chunks queued for the encoder at most.
pub const CHUNKS_IN_FLIGHT: usize = 2;

/// One finished Parquet file and its rows.
pub struct EncodedFile {
    pub bytes: Bytes,
    pub rows: u64,
}

/// The encoder thread and its two channels.
pub struct Encoder {
    rows: Option<mpsc::Sender<Vec<StoredRow>>>,
    files: mpsc::UnboundedReceiver<EncodedFile>,
    thread: tokio::task::JoinHandle<Result<(), ArchiveError>>,
}

impl Encoder {
    pub fn start() -> Result<Encoder, ArchiveError> {
        let writer = FileWriter::new()?;
        let (rows_tx, rows_rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let (files_tx, files_rx) = mpsc::unbounded_channel();
        let thread = tokio::task::spawn_blocking(move || encode(writer, rows_rx, files_tx));
        Ok(Encoder {
            rows: Some(rows_tx),
            files: files_rx,
            thread,
        })
    }

    /// Hands `chunk` to the encoder (waits while [`CHUNKS_IN_FLIGHT`] are queued).
    pub async fn send(&mut self, chunk: Vec<StoredRow>) -> Result<(), ArchiveError> {
        let sent = match &self.rows {
            Some(tx) => tx.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The encoder stopped: its error says why.
        self.rows = None;
        Err(self
            .join()
            .await
            .err()
            .unwrap_or_else(|| ArchiveError::Parquet("the Parquet encoder stopped early".into())))
    }

    /// A file the encoder finished, if one is waiting.
    pub fn finished(&mut self) -> Option<EncodedFile> {
        self.files.try_recv().ok()
    }

    /// No more rows: waits for the encoder to finish the last file; returns the files not
    /// taken yet, in order.
    pub async fn finish(mut self) -> Result<Vec<EncodedFile>, ArchiveError> {
        self.rows = None;
        self.join().await?;
        let mut rest = Vec::new();
        while let Ok(f) = self.files.try_recv() {
            rest.push(f);
        }
        Ok(rest)
    }

    async fn join(&mut self) -> Result<(), ArchiveError> {
        (&mut self.thread)
            .await
            .map_err(|e| ArchiveError::Parquet(format!("the Parquet encoder failed: {e}")))?
    }
}

/// The encoder's loop: every row into the current file; a full file is sent back and the next
/// begun; at the end the last file (also an empty one when there were no rows at all).
fn encode(
    mut writer: FileWriter,
    mut rows: mpsc::Receiver<Vec<StoredRow>>,
    files: mpsc::UnboundedSender<EncodedFile>,
) -> Result<(), ArchiveError> {
    let send = |w: FileWriter| -> Result<(), ArchiveError> {
        let rows = w.rows() as u64;
        let bytes = w.finish()?;
        files
            .send(EncodedFile { bytes, rows })
            .map_err(|_| ArchiveError::Parquet("the archive pass stopped taking files".into()))
    };
    let mut sent = 0usize;
    while let Some(chunk) = rows.blocking_recv() {
        for row in chunk {
            writer.push(row)?;
            if writer.full() {
                send(std::mem::replace(&mut writer, FileWriter::new()?))?;
                sent += 1;
            }
        }
    }
    if writer.rows() > 0 || sent == 0 {
        send(writer)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn through_encoder(rows: &[StoredRow]) -> Vec<EncodedFile> {
        let mut encoder = Encoder::start().unwrap();
        let mut files = Vec::new();
        for chunk in rows.chunks(CHUNK_ROWS) {
            encoder.send(chunk.to_vec()).await.unwrap();
            files.extend(std::iter::from_fn(|| encoder.finished()));
        }
        files.extend(encoder.finish().await.unwrap());
        files
    }

    #[tokio::test]
    async fn chunks_through_the_encoder_write_the_bytes_of_one_writer() {
        // Several chunks and batches: a retry after a crash compares bytes, so the thread must
        // not change them.
        let rows: Vec<StoredRow> = (0..(2 * CHUNK_ROWS + 17) as i64)
            .map(|i| {
                let mut r = crate::integrity::encoding::tests::sample();
                r.id = format!("evt-{i}");
                r.seal_seq = Some(i + 1);
                r.details = Some(format!(r#"{{"n": {i}, "b": "x"}}"#));
                r
            })
            .collect();
        let files = through_encoder(&rows).await;
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].rows, rows.len() as u64);
        let mut w = FileWriter::new().unwrap();
        for r in rows {
            w.push(r).unwrap();
        }
        assert_eq!(files[0].bytes, w.finish().unwrap());
    }

    #[tokio::test]
    async fn no_rows_still_make_one_empty_file() {
        let files = through_encoder(&[]).await;
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].rows, 0);
        assert_eq!(files[0].bytes, FileWriter::new().unwrap().finish().unwrap());
    }
}
