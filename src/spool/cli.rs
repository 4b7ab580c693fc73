//! Offline spool commands: `spool stats`, `spool verify`, `spool export`, `spool requeue`.
//!
//! They open the spool file directly, so the service must be stopped (redb locks the file). An
//! unclean shutdown is repaired on open, exactly as the service would do at startup; nothing
//! else is modified except by `requeue`.

use std::io::{IsTerminal, Write};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use redb::{Database, ReadableDatabase, ReadableTableMetadata};
use serde_json::json;

use super::record::Record;
use super::store::{self, EVENTS, OnDamage, Opener, QUARANTINE, Stored};
use super::{SpoolError, now_ms};

const READ_CHUNK: usize = 1024;

/// Opens an existing spool for offline work, showing repair progress when needed.
pub fn open_existing(dir: &Path) -> Result<Database, SpoolError> {
    let file = store::file_path(dir);
    if !file.exists() {
        return Err(SpoolError::Unavailable(format!(
            "no spool at {} (check spool.path / --config)",
            file.display()
        )));
    }
    let path = file.clone();
    let opener: Opener = std::sync::Arc::new(move || {
        let mut b = store::builder();
        b.set_repair_callback(|session| {
            eprint!(
                "\rrepairing spool after an unclean shutdown: {:.0}%",
                session.progress() * 100.0
            );
        });
        b.open(&path)
    });
    let db = store::open_database(&opener, &file)?;
    store::check_format_version(&db, &file).map_err(|e| e.reading(&file))?;
    Ok(db)
}

/// `spool stats`.
pub fn stats(dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    store::guard(&store::file_path(dir), || stats_unguarded(dir, out))
}

fn stats_unguarded(dir: &Path, out: &mut impl Write) -> anyhow::Result<()> {
    let db = open_existing(dir)?;
    let file = store::file_path(dir);
    let rec = store::recover(&db, &file, OnDamage::Report)?;
    let on_disk = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let age = if rec.oldest_accepted_ms == 0 {
        "-".to_string()
    } else {
        let secs = now_ms().saturating_sub(rec.oldest_accepted_ms) / 1000;
        humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
    };
    writeln!(
        out,
        "spool file:        {} ({on_disk} bytes on disk)",
        file.display()
    )?;
    writeln!(out, "events:            {}", rec.live_events)?;
    writeln!(out, "bytes:             {}", rec.live_bytes)?;
    writeln!(out, "oldest event age:  {age}")?;
    writeln!(out, "quarantined:       {}", rec.quarantined)?;
    writeln!(out, "damaged (live):    {}", rec.damaged.len())?;
    writeln!(out, "next sequence:     {}", rec.next_seq)?;
    writeln!(out, "format version:    {}", rec.format_version)?;
    Ok(())
}

/// What `spool verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub live_ok: u64,
    pub live_damaged: Vec<(u64, String)>,
    pub quarantined: u64,
    pub integrity: Option<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.live_damaged.is_empty() && self.quarantined == 0 && self.integrity.is_none()
    }
}

/// `spool verify`: every record's CRC, then redb's own page-checksum integrity check.
/// Returns the report; the caller exits non-zero unless it is clean.
pub fn verify(dir: &Path, out: &mut impl Write) -> anyhow::Result<VerifyReport> {
    store::guard(&store::file_path(dir), || verify_unguarded(dir, out))
}

fn verify_unguarded(dir: &Path, out: &mut impl Write) -> anyhow::Result<VerifyReport> {
    let mut db = open_existing(dir)?;
    let mut report = VerifyReport::default();
    let total = {
        let txn = db.begin_read().map_err(SpoolError::from)?;
        report.quarantined = txn
            .open_table(QUARANTINE)
            .map_err(SpoolError::from)?
            .len()
            .map_err(SpoolError::from)?;
        txn.open_table(EVENTS)
            .map_err(SpoolError::from)?
            .len()
            .map_err(SpoolError::from)?
    };
    let bar = progress(total, "verifying records");
    let mut from = 0;
    loop {
        let chunk = store::read_from(&db, from, READ_CHUNK, usize::MAX)?;
        let Some(last) = chunk.last() else { break };
        from = last.seq() + 1;
        for s in chunk {
            match s {
                Stored::Live { .. } => report.live_ok += 1,
                Stored::Damaged { seq, error, .. } => {
                    report.live_damaged.push((seq, error.to_string()));
                }
            }
        }
        bar.set_position(report.live_ok + report.live_damaged.len() as u64);
    }
    bar.finish_and_clear();
    match db.check_integrity() {
        Ok(true) => {}
        Ok(false) => {
            report.integrity = Some("redb found inconsistent pages and repaired them".into());
        }
        Err(e) => report.integrity = Some(format!("redb integrity check failed: {e}")),
    }
    writeln!(out, "records ok:        {}", report.live_ok)?;
    writeln!(out, "records damaged:   {}", report.live_damaged.len())?;
    for (seq, e) in &report.live_damaged {
        writeln!(out, "  seq {seq}: {e}")?;
    }
    writeln!(out, "quarantined:       {}", report.quarantined)?;
    for (seq, q) in store::read_quarantine(&db)? {
        writeln!(out, "  seq {seq}: {}", q.reason)?;
    }
    match &report.integrity {
        None => writeln!(out, "page checksums:    ok")?,
        Some(e) => writeln!(out, "page checksums:    {e}")?,
    }
    if report.is_clean() {
        writeln!(out, "spool is clean")?;
    } else {
        writeln!(
            out,
            "spool has damaged or quarantined records: the service quarantines damaged records \
             at startup; inspect them with `audit-manager spool export --quarantine`"
        )?;
    }
    Ok(report)
}

/// `spool export`: one normalized CloudEvent per line (NDJSON), in spool order. With
/// `quarantine`, the quarantined records instead, each with its reason.
pub fn export(dir: &Path, quarantine: bool, out: &mut impl Write) -> anyhow::Result<u64> {
    store::guard(&store::file_path(dir), || {
        export_unguarded(dir, quarantine, out)
    })
}

fn export_unguarded(dir: &Path, quarantine: bool, out: &mut impl Write) -> anyhow::Result<u64> {
    let db = open_existing(dir)?;
    if quarantine {
        return export_quarantine(&db, out);
    }
    let total = {
        let txn = db.begin_read().map_err(SpoolError::from)?;
        txn.open_table(EVENTS)
            .map_err(SpoolError::from)?
            .len()
            .map_err(SpoolError::from)?
    };
    let bar = progress(total, "exporting");
    let (mut written, mut damaged, mut from) = (0u64, 0u64, 0u64);
    loop {
        let chunk = store::read_from(&db, from, READ_CHUNK, usize::MAX)?;
        let Some(last) = chunk.last() else { break };
        from = last.seq() + 1;
        for s in chunk {
            match s {
                Stored::Live { record, .. } => {
                    out.write_all(&record.value)?;
                    out.write_all(b"\n")?;
                    written += 1;
                }
                Stored::Damaged { seq, error, .. } => {
                    damaged += 1;
                    eprintln!("skipping damaged record seq {seq}: {error}");
                }
            }
        }
        bar.set_position(written + damaged);
    }
    bar.finish_and_clear();
    out.flush()?;
    if damaged > 0 {
        eprintln!("{damaged} damaged record(s) not exported; see `audit-manager spool verify`");
    }
    Ok(written)
}

fn export_quarantine(db: &Database, out: &mut impl Write) -> anyhow::Result<u64> {
    let mut n = 0;
    for (seq, q) in store::read_quarantine(db)? {
        let line = match Record::decode(&q.raw) {
            Ok(r) => {
                let event: serde_json::Value = serde_json::from_slice(&r.value)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(&r.value)));
                json!({"seq": seq, "reason": q.reason, "quarantined_at_ms": q.quarantined_at_ms,
                       "id": r.id, "key": r.key, "event": event})
            }
            Err(e) => json!({"seq": seq, "reason": q.reason,
                             "quarantined_at_ms": q.quarantined_at_ms,
                             "frame_error": e.to_string(),
                             "raw_lossy": String::from_utf8_lossy(&q.raw)}),
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

fn progress(total: u64, what: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({eta})") {
        bar.set_style(style);
    }
    bar.set_message(what);
    bar
}
