//! Model test: random append / ack / quarantine / restart sequences against a `VecDeque` model.
//! After every step the spool's live records, in order, must equal the model's.

use std::collections::VecDeque;

use audit_manager::spool::{Record, Spool, SpoolOptions, Stored};
use proptest::prelude::*;

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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..20).prop_map(Op::Append),
        2 => (0usize..15).prop_map(Op::AckOldest),
        1 => Just(Op::AckAlternate),
        1 => Just(Op::QuarantineOldest),
        1 => Just(Op::Restart),
    ]
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
    let dir = tempfile::tempdir().unwrap();
    let opts = SpoolOptions {
        dir: dir.path().to_path_buf(),
        max_bytes: u64::MAX,
        max_pending_appends: 64,
    };
    let mut spool = Spool::open(&opts).unwrap();
    let mut model: VecDeque<(u64, String)> = VecDeque::new();
    let mut quarantined = 0u64;
    let mut counter = 0u64;
    let mut last_seq: Option<u64> = None;
    for op in ops {
        match op {
            Op::Append(n) => {
                let records: Vec<Record> = (0..n)
                    .map(|_| {
                        counter += 1;
                        Record {
                            accepted_at_ms: 1_000 + counter,
                            id: format!("id-{counter}"),
                            key: Some(format!("k{}", counter % 3)),
                            value: format!("{{\"id\":\"id-{counter}\"}}").into_bytes(),
                        }
                    })
                    .collect();
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
                spool = Spool::open(&opts).unwrap();
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
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn spool_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}

#[tokio::test]
async fn requeue_returns_quarantined_records_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SpoolOptions {
        dir: dir.path().to_path_buf(),
        max_bytes: u64::MAX,
        max_pending_appends: 8,
    };
    let spool = Spool::open(&opts).unwrap();
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
