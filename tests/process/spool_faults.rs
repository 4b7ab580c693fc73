//! Storage faults: a failing fsync never yields 202; a damaged record is quarantined, reported
//! by `spool verify`, and the rest is served.

use crate::common;

use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use audit_manager::serve::StartOptions;
use audit_manager::spool::Opener;
use common::{TestApp, code, event, exported_ids, run_cli};
use redb::{Builder, StorageBackend, backends::FileBackend};
use serde_json::json;

/// A file backend whose fsync fails while `fail` is set: a disk that lost its write cache.
#[derive(Debug)]
struct FlakyDisk {
    inner: FileBackend,
    fail: Arc<AtomicBool>,
}

impl StorageBackend for FlakyDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected fsync failure (EIO)"));
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)
    }
}

#[tokio::test]
async fn failed_fsync_answers_503_aud009_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let file = spool_dir.join("spool.redb");
    let fail = Arc::new(AtomicBool::new(false));
    let flag = fail.clone();
    let opener: Opener = Arc::new(move || {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&file)?;
        Builder::new().create_with_backend(FlakyDisk {
            inner: FileBackend::new(f)?,
            fail: flag.clone(),
        })
    });
    let opts = StartOptions {
        spool_opener: Some(opener),
        ..StartOptions::default()
    };
    let mut app = TestApp::start_in(dir, |_| {}, opts).await;

    let (status, _) = app.post_json("/events", &event("before")).await;
    assert_eq!(status, 202);

    fail.store(true, Ordering::SeqCst);
    let resp = app
        .client
        .post(app.url("/events"))
        .json(&event("during"))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("retry-after"));
    let (status, body) = common::read(resp).await;
    assert_eq!((status, code(&body)), (503, "AUD-009"), "{body}");
    let (status, body) = app
        .post_json(
            "/events/batch",
            &json!({"events": [event("d1"), event("d2")]}),
        )
        .await;
    assert_eq!((status, code(&body)), (503, "AUD-009"), "{body}");
    let (status, health) = app.get("/health").await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(code(&health), "AUD-009");

    fail.store(false, Ordering::SeqCst);
    let (status, body) = app.post_json("/events", &event("after")).await;
    assert_eq!(
        status, 202,
        "the spool reopens once the disk works again: {body}"
    );
    let (status, health) = app.get("/health").await;
    assert_eq!(status, 200, "{health}");

    app.stop().await;
    let ids = exported_ids(&app.spool_dir());
    assert!(
        ids.contains(&"before".to_string()) && ids.contains(&"after".to_string()),
        "{ids:?}"
    );
}

/// Flips one byte inside every stored copy of one record's payload.
fn damage(file: &std::path::Path, marker: &[u8]) -> usize {
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
async fn damaged_record_is_quarantined_reported_and_the_rest_served() {
    let app = TestApp::start().await;
    for i in 1..=5 {
        let mut ev = event(&format!("e{i}"));
        ev["data"]["reason"] = json!(format!("marker-{i}-ZZZZZZZZ"));
        let (status, _) = app.post_json("/events", &ev).await;
        assert_eq!(status, 202);
    }
    let dir = app.shutdown().await;
    let spool_dir = dir.path().join("spool");
    let spool_env = spool_dir.to_string_lossy().into_owned();
    let env = [("AUDIT_MANAGER__SPOOL__PATH", spool_env.as_str())];

    assert!(damage(&spool_dir.join("spool.redb"), b"marker-3-ZZZZZZZZ") > 0);

    let (status, out, err) = run_cli(&["spool", "verify"], &env);
    assert_eq!(status, 1, "verify must fail on damage: {out}{err}");
    assert!(out.contains("records damaged:   1"), "{out}");

    // The service starts anyway, quarantines the record and serves the rest.
    let mut app = TestApp::start_in(dir, |_| {}, StartOptions::default()).await;
    let (_, health) = app.get("/health").await;
    assert_eq!(
        health["response"]["roles"]["ingest"]["spool"]["quarantined"], 1,
        "{health}"
    );
    assert_eq!(
        health["response"]["roles"]["ingest"]["spool"]["events"], 4,
        "{health}"
    );
    let (status, _) = app.post_json("/events", &event("e6")).await;
    assert_eq!(status, 202);
    app.stop().await;

    assert_eq!(exported_ids(&spool_dir), vec!["e1", "e2", "e4", "e5", "e6"]);
    let (status, out, _) = run_cli(&["spool", "export", "--quarantine"], &env);
    assert_eq!(status, 0);
    let q: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(q["reason"].as_str().unwrap().contains("CRC"), "{q}");
    let (status, out, _) = run_cli(&["spool", "verify"], &env);
    assert_eq!(
        status, 1,
        "quarantined records keep verify red until handled: {out}"
    );
    assert!(out.contains("quarantined:       1"), "{out}");
}
