//! One batch of consumed records and what becomes of each (pure: no I/O).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};

use crate::event::{Row, ValidationMode};

/// A consumed Kafka record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

impl Record {
    pub fn from_message<M: rdkafka::Message>(m: &M) -> Record {
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
        }
    }
}

pub use crate::write::DeadReason;

/// The batch split into rows to store and records to dead-letter, by index into `records`.
#[derive(Debug, Default)]
pub struct Plan {
    pub rows: Vec<Row>,
    /// `records[row_src[i]]` produced `rows[i]`.
    pub row_src: Vec<usize>,
    pub dead: Vec<(usize, DeadReason)>,
}

impl Plan {
    fn push(&mut self, i: usize, outcome: Result<Row, DeadReason>) {
        match outcome {
            Ok(row) => {
                self.rows.push(row);
                self.row_src.push(i);
            }
            Err(reason) => self.dead.push((i, reason)),
        }
    }
}

/// A consumed record with what decoding made of it. The sink decodes each record as it
/// arrives, so that decoding overlaps the previous batch's database write.
#[derive(Debug)]
pub struct Consumed {
    pub record: Record,
    pub outcome: Result<Row, DeadReason>,
}

impl Consumed {
    pub fn new(
        record: Record,
        now: DateTime<Utc>,
        cutoff: Option<DateTime<Utc>>,
        mode: ValidationMode,
        privacy: &crate::privacy::Privacy,
    ) -> Consumed {
        let outcome = decode(&record, now, cutoff, mode, privacy);
        Consumed { record, outcome }
    }
}

impl Consumed {
    /// What this record counts against `sink.batch_max_bytes`: its key and value as consumed.
    /// (The decoded row takes about as much again; see `docs/memory.md`.)
    pub fn bytes(&self) -> usize {
        self.record.key.as_ref().map_or(0, Vec::len)
            + self.record.value.as_ref().map_or(0, Vec::len)
    }
}

/// Decoded records waiting for the database, in consumption order, with their byte count kept
/// up to date (the sink bounds the records it holds by bytes, not only by count) and, when it
/// has one, mirrored in a gauge (a handle taken once: a store per change, no registry lookup).
#[derive(Debug, Default)]
pub struct Queue {
    items: std::collections::VecDeque<Consumed>,
    bytes: usize,
    gauge: Option<metrics::Gauge>,
}

impl Queue {
    /// A queue whose byte count is published in `gauge`.
    pub fn gauged(gauge: metrics::Gauge) -> Queue {
        Queue {
            gauge: Some(gauge),
            ..Queue::default()
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn push(&mut self, c: Consumed) {
        self.bytes += c.bytes();
        self.items.push_back(c);
        self.publish();
    }

    pub fn pop(&mut self) -> Option<Consumed> {
        let c = self.items.pop_front()?;
        self.bytes -= c.bytes();
        self.publish();
        Some(c)
    }

    /// Drops the records of `revoked` partitions; returns how many.
    pub fn drop_revoked(&mut self, revoked: &HashSet<(String, i32)>) -> usize {
        if revoked.is_empty() {
            return 0;
        }
        let before = self.items.len();
        self.items.retain(|c| !is_revoked(&c.record, revoked));
        self.bytes = self.items.iter().map(Consumed::bytes).sum();
        self.publish();
        before - self.items.len()
    }

    /// Everything held, emptying the queue.
    pub fn take(&mut self) -> Vec<Consumed> {
        self.bytes = 0;
        self.publish();
        std::mem::take(&mut self.items).into()
    }

    /// True while it holds fewer than `max_records` records and `max_bytes` bytes.
    pub fn has_room(&self, max_records: usize, max_bytes: usize) -> bool {
        self.items.len() < max_records && self.bytes < max_bytes
    }

    fn publish(&self) {
        if let Some(g) = &self.gauge {
            g.set(self.bytes as f64);
        }
    }
}

/// Splits a batch of decoded records into the records (for their offsets and dead letters) and
/// the [`Plan`].
pub fn assemble(batch: Vec<Consumed>) -> (Vec<Record>, Plan) {
    let mut records = Vec::with_capacity(batch.len());
    let mut p = Plan {
        rows: Vec::with_capacity(batch.len()),
        row_src: Vec::with_capacity(batch.len()),
        dead: Vec::new(),
    };
    for (i, c) in batch.into_iter().enumerate() {
        records.push(c.record);
        p.push(i, c.outcome);
    }
    (records, p)
}

/// One record's fate: its row (decoded with the ingest's validation, in the same `mode`), or
/// why it goes to the DLQ (see [`crate::write::decode`], which applies `privacy` first).
pub fn decode(
    r: &Record,
    now: DateTime<Utc>,
    cutoff: Option<DateTime<Utc>>,
    mode: ValidationMode,
    privacy: &crate::privacy::Privacy,
) -> Result<Row, DeadReason> {
    crate::write::decode(r.value.as_deref(), now, cutoff, mode, privacy)
}

/// The offsets to commit: per partition, one past the highest offset in the batch.
pub fn commit_offsets(records: &[Record]) -> BTreeMap<(String, i32), i64> {
    let mut out: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for r in records {
        let next = r.offset + 1;
        out.entry((r.topic.clone(), r.partition))
            .and_modify(|o| *o = (*o).max(next))
            .or_insert(next);
    }
    out
}

/// Whether `r` belongs to one of the `revoked` partitions.
pub fn is_revoked(r: &Record, revoked: &HashSet<(String, i32)>) -> bool {
    revoked
        .iter()
        .any(|(t, p)| *p == r.partition && *t == r.topic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn rec(partition: i32, offset: i64, value: &[u8]) -> Record {
        Record {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            value: Some(value.to_vec()),
        }
    }

    fn event(id: &str, time: &str) -> Vec<u8> {
        json!({"specversion": "1.0", "id": id, "source": "s", "type": "t", "time": time,
               "data": {"actor": {"id": "u"}, "action": "a", "outcome": "success"}})
        .to_string()
        .into_bytes()
    }

    /// The batch `records` makes, each decoded on arrival.
    fn plan(records: &[Record], now: DateTime<Utc>, cutoff: Option<DateTime<Utc>>) -> Plan {
        let batch = records
            .iter()
            .map(|r| {
                Consumed::new(
                    r.clone(),
                    now,
                    cutoff,
                    ValidationMode::Strict,
                    &crate::privacy::Privacy::none(),
                )
            })
            .collect();
        let (back, p) = assemble(batch);
        assert_eq!(back, records, "records keep their order");
        p
    }

    /// A stored event, undecodable bytes, an expired event, a tombstone, the oldest retained
    /// month.
    fn mixed_records() -> Vec<Record> {
        vec![
            rec(0, 0, &event("a", "2026-11-01T00:00:00Z")),
            rec(0, 1, b"nope"),
            rec(1, 0, &event("b", "2025-10-31T23:59:59Z")),
            Record {
                value: None,
                ..rec(1, 1, b"")
            },
            rec(1, 2, &event("c", "2025-11-01T00:00:00Z")),
        ]
    }

    #[test]
    fn plan_sorts_rows_from_dead_letters() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        let cutoff = crate::store::retention_cutoff(now, 12);
        let records = mixed_records();
        let p = plan(&records, now, cutoff);
        assert_eq!(p.row_src, vec![0, 4]);
        assert_eq!(p.rows[1].id, "c", "the first retained month is kept");
        let kinds: Vec<_> = p.dead.iter().map(|(i, d)| (*i, d.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (1, "undecodable"),
                (2, "retention-expired"),
                (3, "undecodable")
            ]
        );
        assert!(
            p.dead[1]
                .1
                .header()
                .starts_with("retention-expired: occurred_at 2025-10-31")
        );
    }

    #[test]
    fn retention_zero_keeps_everything() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 0, 0, 0).unwrap();
        let p = plan(
            &[rec(0, 0, &event("old", "1990-01-01T00:00:00Z"))],
            now,
            None,
        );
        assert_eq!(p.rows.len(), 1);
    }

    #[test]
    fn commit_offsets_are_one_past_the_highest_per_partition() {
        let records = vec![
            rec(0, 5, b""),
            rec(1, 9, b""),
            rec(0, 7, b""),
            rec(0, 6, b""),
        ];
        let offsets = commit_offsets(&records);
        assert_eq!(offsets.get(&("t".into(), 0)), Some(&8));
        assert_eq!(offsets.get(&("t".into(), 1)), Some(&10));
    }

    #[test]
    fn revoked_partitions_leave_the_batch() {
        let now = Utc::now();
        let mut queue = Queue::default();
        for r in [rec(0, 1, b"ab"), rec(1, 1, b"cde"), rec(0, 2, b"f")] {
            queue.push(Consumed::new(
                r,
                now,
                None,
                ValidationMode::Strict,
                &crate::privacy::Privacy::none(),
            ));
        }
        assert_eq!(queue.bytes(), 6);
        let revoked: HashSet<_> = [("t".to_string(), 0)].into_iter().collect();
        assert_eq!(queue.drop_revoked(&revoked), 2);
        assert_eq!(queue.bytes(), 3, "the byte count follows");
        let left = queue.take();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].record, rec(1, 1, b"cde"));
    }
}
