//! File-level damage: each case ends in its documented outcome ("Damage and what happens" in
//! `spool-format.md`): startup refused with a message naming the file and the operator's
//! options, or the record quarantined. Never a panic, never a silently recreated spool.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use audit_manager::spool::store::{self, META, QUARANTINE};
use audit_manager::spool::{AppendError, Record, Spool, SpoolError, SpoolOptions, Stored};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::ReadableDatabase;

const RECORDS: u64 = 400;

fn options(dir: &Path) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_path_buf(),
        max_bytes: u64::MAX,
        max_pending_appends: 8,
    }
}

fn record(i: u64) -> Record {
    Record {
        accepted_at_ms: 1_000 + i,
        id: format!("rec-{i}"),
        key: Some(format!("k{i}")),
        value: format!("{{\"id\":\"rec-{i}\",\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes(),
    }
}

/// A cleanly closed spool under `dir` holding [`RECORDS`] records.
async fn build(dir: &Path) -> PathBuf {
    let spool = Spool::open(&options(dir)).unwrap();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(50) {
        let records: Vec<Record> = chunk.iter().map(|&i| record(i)).collect();
        spool.append(&records).await.unwrap();
    }
    spool.close().await;
    store::file_path(dir)
}

fn env(dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "AUDIT_MANAGER__SPOOL__PATH".into(),
            dir.to_string_lossy().into_owned(),
        ),
        ("AUDIT_MANAGER__HTTP__LISTEN".into(), "127.0.0.1:0".into()),
        ("AUDIT_MANAGER__ROLES".into(), "ingest".into()),
        ("RUST_LOG".into(), "warn".into()),
    ]
}

/// Runs `audit-manager ARGS` on the spool in `dir`, which must exit by itself within 60 s.
/// Returns (exit code, stdout + stderr).
fn run(dir: &Path, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_audit-manager"))
        .args(args)
        .envs(env(dir))
        .env_remove("CONFIG_PATH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn audit-manager");
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("`audit-manager {args:?}` did not exit: it started on a damaged spool");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    (status.code().unwrap_or(-1), text)
}

/// `serve` and `spool verify` both refuse the file, naming it. With `untouched`, the file must
/// be byte for byte as it was (a file redb cannot open); otherwise redb opened it to read it,
/// which rewrites header flags, and the caller checks the contents.
fn assert_refused(dir: &Path, file: &Path, expect: &str, untouched: bool) {
    let before = std::fs::read(file).unwrap();
    let name = file.to_string_lossy();
    for args in [&["serve"][..], &["spool", "verify"][..]] {
        let (code, out) = run(dir, args);
        assert_ne!(code, 0, "{args:?} must fail: {out}");
        assert!(
            out.contains(name.as_ref()),
            "{args:?} names the file: {out}"
        );
        assert!(out.contains(expect), "{args:?} says {expect:?}: {out}");
        assert!(!out.contains("panicked"), "{args:?} must not panic: {out}");
    }
    let after = std::fs::read(file).unwrap();
    if untouched {
        assert!(
            after == before,
            "the damaged file was modified or recreated"
        );
    } else {
        assert_eq!(after.len(), before.len(), "the file was recreated");
    }
}

#[tokio::test]
async fn truncated_file_refuses_startup_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let file = build(tmp.path()).await;
    let full = std::fs::metadata(&file).unwrap().len();
    for len in [full / 2, 4096, 100, 0] {
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(len).unwrap();
        drop(f);
        let err = Spool::open(&options(tmp.path()))
            .err()
            .unwrap_or_else(|| panic!("a spool truncated to {len} bytes must not open"));
        let msg = err.to_string();
        assert!(
            matches!(err, SpoolError::Open { .. } | SpoolError::Damaged { .. }),
            "{msg}"
        );
        assert!(msg.contains(file.to_string_lossy().as_ref()), "{msg}");
        assert!(msg.contains("move it aside"), "{msg}");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), len, "{msg}");
        assert_refused(tmp.path(), &file, "move it aside", true);
    }
}

#[tokio::test]
async fn unknown_format_version_refuses_startup() {
    let tmp = tempfile::tempdir().unwrap();
    let file = build(tmp.path()).await;
    {
        let db = redb::Database::open(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("format_version", 99)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Spool::open(&options(tmp.path())).err().expect("refused");
    assert!(
        matches!(err, SpoolError::FormatVersion { found: 99, .. }),
        "{err}"
    );
    assert_refused(tmp.path(), &file, "format version 99", false);
    let db = redb::Database::open(&file).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn.open_table(META).unwrap().get("format_version").unwrap();
    assert_eq!(version.map(|v| v.value()), Some(99), "left as it was");
}

#[tokio::test]
async fn second_process_on_the_same_spool_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = build(tmp.path()).await;
    // This test process is the first "service": it holds the spool open.
    let first = Spool::open(&options(tmp.path())).unwrap();
    for args in [&["serve"][..], &["spool", "verify"][..]] {
        let (code, out) = run(tmp.path(), args);
        assert_ne!(code, 0, "{args:?}: {out}");
        assert!(out.contains("in use by another process"), "{args:?}: {out}");
        assert!(
            out.contains(file.to_string_lossy().as_ref()),
            "{args:?}: {out}"
        );
    }
    // The first one is undisturbed.
    first.append(&[record(RECORDS)]).await.unwrap();
    assert_eq!(first.stats().live_events, RECORDS + 1);
    first.close().await;
}

/// Flips the last byte of every stored copy of `marker` (redb may keep older copies of a page).
fn damage(file: &Path, marker: &[u8]) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while i + marker.len() <= bytes.len() {
        if &bytes[i..i + marker.len()] == marker {
            bytes[i + marker.len() - 1] ^= 0x01;
            hits += 1;
            i += marker.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(file, bytes).unwrap();
    hits
}

#[tokio::test]
async fn damaged_quarantine_record_stays_quarantined_and_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let file = build(tmp.path()).await;
    let spool = Spool::open(&options(tmp.path())).unwrap();
    spool
        .quarantine(7, "broker said no: marker-QQQQQQQQ".into())
        .await
        .unwrap();
    spool.close().await;
    assert!(damage(&file, b"marker-QQQQQQQQ") > 0);

    // The service starts; the entry still counts as quarantined and is not requeued.
    let spool = Spool::open(&options(tmp.path())).unwrap();
    assert_eq!(spool.stats().quarantined, 1);
    assert_eq!(spool.stats().live_events, RECORDS - 1);
    assert_eq!(
        spool.requeue().await.unwrap(),
        0,
        "a damaged entry is not requeued"
    );
    assert_eq!(spool.stats().quarantined, 1);
    spool.close().await;

    let (code, out) = run(tmp.path(), &["spool", "verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("seq 7: quarantine entry itself is damaged: CRC mismatch"),
        "{out}"
    );
    let (code, out) = run(tmp.path(), &["spool", "export", "--quarantine"]);
    assert_eq!(code, 0, "{out}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["seq"], 7, "{line}");
    assert!(line["frame_error"].is_string(), "{line}");
    let db = redb::Database::open(&file).unwrap();
    let txn = db.begin_read().unwrap();
    assert!(
        txn.open_table(QUARANTINE)
            .unwrap()
            .get(7)
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn random_byte_flips_never_panic_and_never_pass_unnoticed() {
    let tmp = tempfile::tempdir().unwrap();
    let file = build(tmp.path()).await;
    let pristine = std::fs::read(&file).unwrap();
    let written: HashMap<String, Vec<u8>> = (0..RECORDS)
        .map(|i| (format!("rec-{i}"), record(i).value))
        .collect();
    let seed = std::env::var("FLIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xF11Bu64);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut refused, mut quarantined_runs, mut unharmed) = (0, 0, 0);
    for trial in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let copy = store::file_path(dir.path());
        let mut bytes = pristine.clone();
        let flips = rng.random_range(1..=8);
        for _ in 0..flips {
            // Anywhere past redb's header page: the pages holding the tables and free pages.
            let at = rng.random_range(4096..bytes.len());
            bytes[at] ^= 1 << rng.random_range(0..8);
        }
        std::fs::write(&copy, &bytes).unwrap();
        let ctx = format!("trial {trial} (seed {seed}, {flips} flips)");
        let opened = std::panic::catch_unwind(|| Spool::open(&options(dir.path())));
        let opened = opened.unwrap_or_else(|_| panic!("{ctx}: Spool::open panicked"));
        match opened {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(copy.to_string_lossy().as_ref()),
                    "{ctx}: {msg}"
                );
                assert!(msg.contains("move it aside"), "{ctx}: {msg}");
                refused += 1;
            }
            Ok(spool) => {
                let live = spool.read_from(0, usize::MAX, usize::MAX).unwrap();
                for s in &live {
                    match s {
                        Stored::Live { record, .. } => assert_eq!(
                            written.get(&record.id),
                            Some(&record.value),
                            "{ctx}: a record was altered yet passed its CRC"
                        ),
                        Stored::Damaged { seq, .. } => {
                            panic!("{ctx}: seq {seq} is damaged but was not quarantined")
                        }
                    }
                }
                let stats = spool.stats();
                assert_eq!(
                    live.len() as u64 + stats.quarantined,
                    RECORDS,
                    "{ctx}: records vanished without a word"
                );
                // The writer keeps working, or answers an error: never a dead writer thread.
                match spool.append(&[record(RECORDS + trial)]).await {
                    Ok(_) => {}
                    Err(AppendError::Storage(e)) => {
                        // The writer reopens the file with redb's integrity check and repair.
                        let again = spool.append(&[record(RECORDS + 100 + trial)]).await;
                        eprintln!("{ctx}: append failed ({e}); the next one: {again:?}");
                        assert!(
                            matches!(again, Ok(_) | Err(AppendError::Storage(_))),
                            "{ctx}: {again:?}"
                        );
                    }
                    Err(e) => panic!("{ctx}: append after open: {e}"),
                }
                if stats.quarantined > 0 {
                    quarantined_runs += 1;
                } else {
                    unharmed += 1;
                }
                spool.close().await;
            }
        }
    }
    eprintln!(
        "byte flips: {refused} refused at startup, {quarantined_runs} with records \
         quarantined, {unharmed} without effect (free pages, slack)"
    );
    assert!(refused + quarantined_runs > 0, "no trial hit anything");
}
