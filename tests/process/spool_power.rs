//! Power loss, not only `kill -9`: the spool runs on a simulated disk that loses everything not
//! fsynced when the power is cut (see `common/power_cut.rs`). At each of many cut points while
//! clients are being answered, every event that got a 202 must be in the spool found on the
//! medium afterwards, and every batch must be there entirely or not at all.

use crate::common;
use crate::power_cut;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use audit_manager::serve::StartOptions;
use audit_manager::spool::{Spool, SpoolOptions, Stored};
use common::{TestApp, event};
use power_cut::PowerCutDisk;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const CUT_POINTS: u64 = 24;
const CLIENTS: usize = 4;
/// Bounds each client in case a cut is never reached (the test then fails, it does not hang).
const MAX_REQUESTS_PER_CLIENT: usize = 2_000;

/// Every batch a client sent, and whether it was answered 202.
#[derive(Default)]
struct Log {
    sent: Vec<(Vec<String>, bool)>,
}

/// The ids of the live events in the spool on `image`, opened as the service would at boot.
async fn ids_on(image: Vec<u8>) -> Vec<String> {
    let disk = PowerCutDisk::from_image(image);
    let opts = SpoolOptions {
        dir: PathBuf::from("unused"),
        max_bytes: u64::MAX,
        max_pending_appends: 8,
    };
    let spool = tokio::task::spawn_blocking(move || {
        Spool::open_with(
            disk.opener(),
            PathBuf::from("power-cut-disk/spool.redb"),
            &opts,
        )
    })
    .await
    .unwrap()
    .expect("the spool on the medium opens after a power cut");
    let ids = spool
        .read_from(0, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|s| match s {
            Stored::Live { record, .. } => record.id,
            Stored::Damaged { seq, error, .. } => panic!("seq {seq} damaged by the cut: {error}"),
        })
        .collect();
    spool.close().await;
    ids
}

async fn client(app: Arc<TestApp>, disk: PowerCutDisk, n: usize, log: Arc<Mutex<Log>>) {
    for i in 0..MAX_REQUESTS_PER_CLIENT {
        if disk.is_dead() {
            return;
        }
        // Single events and batches of three, alternating.
        let ids: Vec<String> = if i % 2 == 0 {
            vec![format!("c{n}-{i}")]
        } else {
            (0..3).map(|k| format!("c{n}-{i}-{k}")).collect()
        };
        let (status, _) = if ids.len() == 1 {
            app.post_json("/events", &event(&ids[0])).await
        } else {
            let events: Vec<_> = ids.iter().map(|id| event(id)).collect();
            app.post_json("/events/batch", &json!({ "events": events }))
                .await
        };
        let accepted = status == 202;
        log.lock().unwrap().sent.push((ids, accepted));
        if !accepted {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_202_survives_a_power_cut() {
    let seed = std::env::var("POWER_CUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0001u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total_accepted = 0;
    for cut in 0..CUT_POINTS {
        let disk = PowerCutDisk::new();
        let opts = StartOptions {
            spool_opener: Some(disk.opener()),
            ..StartOptions::default()
        };
        let app = Arc::new(TestApp::start_with(|_| {}, opts).await);
        // Cut points spread over the first ~50 commits under load.
        let at = 1 + cut * 2 + rng.random_range(0..2);
        disk.cut_at_sync(at);
        let log = Arc::new(Mutex::new(Log::default()));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|n| tokio::spawn(client(app.clone(), disk.clone(), n, log.clone())))
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        assert!(
            disk.is_dead(),
            "cut point {cut}: sync {at} was never reached"
        );
        let mut app = Arc::into_inner(app).expect("clients are done");
        app.stop().await;

        // None, some or all of what was written after the last fsync reached the medium.
        let keep = [0.0, 0.5, 1.0][rng.random_range(0..3)];
        let unsynced = disk.unsynced_ops();
        let image = disk.crash_image(&mut rng, keep);
        let found: HashSet<String> = ids_on(image).await.into_iter().collect();

        let log = log.lock().unwrap();
        let sent: HashSet<&String> = log.sent.iter().flat_map(|(ids, _)| ids).collect();
        for id in &found {
            assert!(sent.contains(id), "cut {cut}: {id} was never sent");
        }
        for (ids, accepted) in &log.sent {
            let present = ids.iter().filter(|id| found.contains(*id)).count();
            let ctx = format!(
                "cut point {cut} (sync {at}, seed {seed}, {unsynced} unsynced writes, keep \
                 {keep}): batch {ids:?} answered {}",
                if *accepted { "202" } else { "non-202" }
            );
            if *accepted {
                assert_eq!(present, ids.len(), "{ctx}: lost after a 202");
                total_accepted += ids.len();
            } else {
                assert!(present == 0 || present == ids.len(), "{ctx}: partly stored");
            }
        }
    }
    assert!(total_accepted > 0, "no request was ever accepted");
}
