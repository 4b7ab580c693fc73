//! `spool.max_pending_bytes` bounds the bytes of appends waiting for the group-commit writer:
//! while the writer is held in an fsync (a slow disk), appends queue up to the bound and the
//! excess is refused as overloaded (503 AUD-004 at ingest), never queued without limit.

use crate::common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use audit_manager::serve::StartOptions;
use audit_manager::spool::{AppendError, Opener, Record, Spool, SpoolOptions, record};
use common::kafka::eventually;
use common::{TestApp, code};
use redb::StorageBackend;
use redb::backends::InMemoryBackend;
use serde_json::{Value, json};

/// An in-memory disk whose `sync_data` can be held: the writer then sits in its commit while
/// appends keep arriving, as on a disk that takes long to flush.
#[derive(Debug, Clone, Default)]
struct SlowDisk {
    mem: Arc<InMemoryBackend>,
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl SlowDisk {
    fn hold(&self) {
        *self.held.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    fn release(&self) {
        *self.held.0.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.held.1.notify_all();
    }

    fn opener(&self) -> Opener {
        let disk = self.clone();
        Arc::new(move || audit_manager::spool::store::builder().create_with_backend(disk.clone()))
    }
}

impl StorageBackend for SlowDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.mem.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.mem.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.mem.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let (lock, cv) = &*self.held;
        let held = lock.lock().unwrap_or_else(PoisonError::into_inner);
        drop(
            cv.wait_while(held, |h| *h)
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.mem.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.mem.write(offset, data)
    }
}

const BOUND: u64 = 1 << 20;
const APPENDS: usize = 200;
const PER_APPEND: usize = 10;

fn batch(n: usize) -> Vec<Record> {
    (0..PER_APPEND)
        .map(|i| Record {
            accepted_at_ms: 1,
            id: format!("a{n:04}-{i}"),
            key: None,
            value: vec![b'x'; 10_000],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_bytes_never_exceed_the_bound_and_the_excess_is_overloaded() {
    let disk = SlowDisk::default();
    let opts = SpoolOptions {
        dir: PathBuf::from("unused"),
        max_bytes: u64::MAX,
        // The count bound is far away: only the byte bound can refuse anything here.
        max_pending_appends: 100_000,
    };
    let spool = Spool::open_with(disk.opener(), PathBuf::from("slow/spool.redb"), &opts)
        .unwrap()
        .with_max_pending_bytes(BOUND);
    let frame_len = record::encode_batch(&batch(0)).frame.len() as u64;
    assert!(
        frame_len * APPENDS as u64 > 10 * BOUND,
        "the flood is far larger than the bound"
    );

    disk.hold();
    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..APPENDS {
        let (spool, refused) = (spool.clone(), refused.clone());
        tasks.push(tokio::spawn(async move {
            let r = spool.append(&batch(n)).await;
            if matches!(r, Err(AppendError::Overloaded)) {
                refused.fetch_add(1, Ordering::SeqCst);
            }
            r
        }));
    }
    // Every append is decided: refused, or waiting (its bytes reserved) behind the held fsync.
    let mut highest = 0;
    let waiting = eventually(Duration::from_secs(30), "every append decided", || {
        let pending = spool.pending_bytes();
        highest = highest.max(pending);
        assert!(pending <= BOUND, "{pending} bytes pending, bound {BOUND}");
        let waiting = (pending / frame_len) as usize;
        let decided = refused.load(Ordering::SeqCst) + waiting == APPENDS;
        async move { decided.then_some(waiting) }
    })
    .await;
    assert_eq!(spool.pending_bytes() % frame_len, 0);
    assert!(
        spool.pending_bytes() + frame_len > BOUND,
        "appends are admitted up to the bound ({} of {BOUND} bytes pending)",
        spool.pending_bytes()
    );
    assert!(refused.load(Ordering::SeqCst) > 0);
    assert!(highest <= BOUND);

    disk.release();
    let mut stored = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(seqs) => {
                assert_eq!(seqs.len(), PER_APPEND);
                stored += 1;
            }
            Err(AppendError::Overloaded) => {}
            Err(e) => panic!("an append failed otherwise: {e}"),
        }
    }
    assert_eq!(stored, waiting, "every admitted append was stored");
    assert_eq!(
        spool.pending_bytes(),
        0,
        "answered appends give their bytes back"
    );
    assert_eq!(spool.stats().live_events, (waiting * PER_APPEND) as u64);
    // The writer is free again: the next append goes through.
    spool.append(&batch(APPENDS)).await.unwrap();
    spool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_503_aud004_beyond_spool_max_pending_bytes() {
    let disk = SlowDisk::default();
    let app = TestApp::start_with(
        |c| {
            c.spool.max_pending_bytes = 256 * 1024;
            c.spool.max_pending_appends = 100_000;
        },
        StartOptions {
            spool_opener: Some(disk.opener()),
            ..StartOptions::default()
        },
    )
    .await;
    let spool = app.running.as_ref().unwrap().spool.clone().unwrap();
    let app = Arc::new(app);
    disk.hold();
    const POSTS: usize = 40;
    let refused = Arc::new(AtomicUsize::new(0));
    let mut posts = Vec::new();
    for p in 0..POSTS {
        let (app, refused) = (app.clone(), refused.clone());
        posts.push(tokio::spawn(async move {
            let events: Vec<Value> = (0..100)
                .map(|i| common::event(&format!("p{p:03}-{i:03}")))
                .collect();
            let (status, body) = app
                .post_json("/events/batch", &json!({ "events": events }))
                .await;
            if status == 503 {
                refused.fetch_add(1, Ordering::SeqCst);
            }
            (status, body)
        }));
    }
    eventually(
        Duration::from_secs(30),
        "refusals while the disk is held",
        || {
            let pending = spool.pending_bytes();
            assert!(pending <= 256 * 1024, "{pending} bytes pending");
            let some = refused.load(Ordering::SeqCst) > 0;
            async move { some.then_some(()) }
        },
    )
    .await;
    disk.release();
    let (mut accepted, mut overloaded) = (0, 0);
    for p in posts {
        let (status, body) = p.await.unwrap();
        match status {
            202 => accepted += 1,
            503 => {
                assert_eq!(code(&body), "AUD-004", "{body}");
                overloaded += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(
        accepted > 0 && overloaded > 0,
        "{accepted} accepted, {overloaded} refused"
    );
    assert_eq!(spool.pending_bytes(), 0);
    assert_eq!(spool.stats().live_events, accepted * 100);
    drop(spool);
    let app = Arc::into_inner(app).expect("every request finished");
    app.shutdown().await;
}
