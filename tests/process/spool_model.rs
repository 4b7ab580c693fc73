//! Model test: random append / ack / quarantine / restart / power-cut sequences against a
//! `VecDeque` model. After every step the spool's live records, in order, must equal the model's.
//!
//! The spool runs on a simulated disk (`common/power_cut.rs`). A power cut strikes during an
//! append, an acknowledgement or between operations, at one of the next few fsyncs; the spool is
//! then reopened from what the medium holds: the durable image plus a random part of the writes
//! issued since the last fsync. An operation that returned `Ok` must have survived; one that
//! failed must have left all of its records or none.

use crate::power_cut;

use std::collections::VecDeque;
use std::path::PathBuf;

use audit_manager::spool::{Record, Spool, SpoolOptions, Stored};
use power_cut::PowerCutDisk;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

#[derive(Debug, Clone)]
enum Op {
    /// Append a batch of this many records.
    Append(usize),
    /// Acknowledge the n oldest live records.
    AckOldest(usize),
    /// Acknowledge every other live record (out-of-order deletes).
    AckAlternate,
    /// Quarantine the oldest live record.
    QuarantineOldest,
    /// Close and reopen the spool.
    Restart,
    /// Cut the power during `during`, at its `at_sync`-th fsync (or after it if it needs fewer),
    /// then reopen from the medium, which kept each unsynced sector with probability `keep`.
    PowerCut {
        during: During,
        at_sync: u64,
        keep: f64,
        seed: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum During {
    /// An append of this many records.
    Append(usize),
    /// Acknowledging the n oldest live records.
    AckOldest(usize),
    /// Nothing: the machine is idle.
    Idle,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..20).prop_map(Op::Append),
        2 => (0usize..15).prop_map(Op::AckOldest),
        1 => Just(Op::AckAlternate),
        1 => Just(Op::QuarantineOldest),
        1 => Just(Op::Restart),
        2 => (during(), 1u64..4, prop_oneof![Just(0.0), Just(0.5), Just(1.0)], any::<u64>())
            .prop_map(|(during, at_sync, keep, seed)| Op::PowerCut { during, at_sync, keep, seed }),
    ]
}

fn during() -> impl Strategy<Value = During> {
    prop_oneof![
        2 => (1usize..20).prop_map(During::Append),
        1 => (1usize..15).prop_map(During::AckOldest),
        1 => Just(During::Idle),
    ]
}

fn options() -> SpoolOptions {
    SpoolOptions {
        dir: PathBuf::from("unused"),
        max_bytes: u64::MAX,
        max_pending_appends: 64,
    }
}

fn open(disk: &PowerCutDisk) -> Spool {
    Spool::open_with(disk.opener(), PathBuf::from("model/spool.redb"), &options())
        .expect("the spool opens")
}

fn records(counter: &mut u64, n: usize) -> Vec<Record> {
    (0..n)
        .map(|_| {
            *counter += 1;
            let c = *counter;
            Record {
                accepted_at_ms: 1_000 + c,
                id: format!("id-{c}"),
                key: Some(format!("k{}", c % 3)),
                value: format!("{{\"id\":\"id-{c}\"}}").into_bytes(),
            }
        })
        .collect()
}

fn live(spool: &Spool) -> Vec<(u64, String)> {
    spool
        .read_from(0, usize::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|s| match s {
            Stored::Live { seq, record, .. } => (seq, record.id),
            Stored::Damaged { seq, error, .. } => panic!("seq {seq} damaged: {error}"),
        })
        .collect()
}

async fn run(ops: Vec<Op>) {
    let mut disk = PowerCutDisk::new();
    let mut spool = open(&disk);
    let mut model: VecDeque<(u64, String)> = VecDeque::new();
    let mut quarantined = 0u64;
    let mut counter = 0u64;
    let mut last_seq: Option<u64> = None;
    for op in ops {
        match op {
            Op::Append(n) => {
                let records = records(&mut counter, n);
                let seqs = spool.append(&records).await.unwrap();
                assert_eq!(seqs.len(), n);
                for (seq, r) in seqs.into_iter().zip(records) {
                    assert!(
                        last_seq.is_none_or(|l| seq > l),
                        "sequence numbers only grow"
                    );
                    last_seq = Some(seq);
                    model.push_back((seq, r.id));
                }
            }
            Op::AckOldest(n) => {
                let n = n.min(model.len());
                let seqs: Vec<u64> = model.drain(..n).map(|(s, _)| s).collect();
                spool.ack(seqs).await.unwrap();
            }
            Op::AckAlternate => {
                let (gone, keep): (Vec<_>, Vec<_>) =
                    model.drain(..).enumerate().partition(|(i, _)| i % 2 == 0);
                model = keep.into_iter().map(|(_, x)| x).collect();
                spool
                    .ack(gone.into_iter().map(|(_, (s, _))| s).collect())
                    .await
                    .unwrap();
            }
            Op::QuarantineOldest => {
                if let Some((seq, _)) = model.pop_front() {
                    spool.quarantine(seq, "test".into()).await.unwrap();
                    quarantined += 1;
                }
            }
            Op::Restart => {
                spool.close().await;
                spool = open(&disk);
            }
            Op::PowerCut {
                during,
                at_sync,
                keep,
                seed,
            } => {
                disk.cut_at_sync(at_sync);
                // What the model holds if the interrupted operation survived, and whether it
                // must have (it returned Ok).
                let (survived, must): (VecDeque<(u64, String)>, bool) = match during {
                    During::Append(n) => {
                        let records = records(&mut counter, n);
                        let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
                        match spool.append(&records).await {
                            Ok(seqs) => {
                                let mut m = model.clone();
                                m.extend(seqs.into_iter().zip(ids));
                                (m, true)
                            }
                            // The sequence numbers are unknown; taken from the reopened spool.
                            Err(_) => (VecDeque::new(), false),
                        }
                    }
                    During::AckOldest(n) => {
                        let n = n.min(model.len());
                        let mut m = model.clone();
                        let seqs: Vec<u64> = m.drain(..n).map(|(s, _)| s).collect();
                        let ok = spool.ack(seqs).await.is_ok();
                        (m, ok)
                    }
                    During::Idle => (model.clone(), true),
                };
                disk.cut_now();
                spool.close().await;
                let image = disk.crash_image(&mut StdRng::seed_from_u64(seed), keep);
                disk = PowerCutDisk::from_image(image);
                spool = open(&disk);
                let found = live(&spool);
                let before: Vec<(u64, String)> = model.iter().cloned().collect();
                let after: Vec<(u64, String)> = survived.iter().cloned().collect();
                if must {
                    assert_eq!(found, after, "{during:?} returned Ok but did not survive");
                } else if found != before {
                    match during {
                        During::Append(n) => {
                            // All of the batch, appended after everything else, or nothing.
                            assert_eq!(found.len(), before.len() + n, "{during:?}: partial");
                            assert_eq!(found[..before.len()], before[..], "{during:?}");
                        }
                        _ => assert_eq!(found, after, "{during:?}: neither before nor after"),
                    }
                }
                model = found.into_iter().collect();
                last_seq = model.back().map(|(s, _)| *s).or(last_seq);
            }
        }
        let expected: Vec<(u64, String)> = model.iter().cloned().collect();
        assert_eq!(live(&spool), expected);
        let stats = spool.stats();
        assert_eq!(stats.live_events, model.len() as u64);
        assert_eq!(stats.quarantined, quarantined);
        let expected_oldest = model
            .front()
            .map(|(_, id)| 1_000 + id.trim_start_matches("id-").parse::<u64>().unwrap());
        assert_eq!(stats.oldest_accepted_ms, expected_oldest.unwrap_or(0));
    }
    let bytes: u64 = spool
        .read_from(0, usize::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| match s {
            Stored::Live { size, .. } => *size as u64,
            Stored::Damaged { .. } => 0,
        })
        .sum();
    assert_eq!(spool.stats().live_bytes, bytes);
    spool.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn spool_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}

#[tokio::test]
async fn requeue_returns_quarantined_records_in_order() {
    let spool = open(&PowerCutDisk::new());
    let recs: Vec<Record> = (0..3)
        .map(|i| Record {
            accepted_at_ms: 1,
            id: format!("r{i}"),
            key: None,
            value: b"{}".to_vec(),
        })
        .collect();
    let seqs = spool.append(&recs).await.unwrap();
    spool
        .quarantine(seqs[1], "broker said no".into())
        .await
        .unwrap();
    assert_eq!(live(&spool).len(), 2);
    assert_eq!(spool.requeue().await.unwrap(), 1);
    let ids: Vec<String> = live(&spool).into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, vec!["r0", "r1", "r2"]);
    assert_eq!(spool.stats().quarantined, 0);
    spool.close().await;
}
