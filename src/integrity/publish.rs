//! The off-database copies of the seals, which `verify --seals-from-topic` and
//! `verify --seals-from-dir` compare with `audit_seals`, and from which the sealer learns the
//! newest seal without trusting the database (see `sealer.rs`):
//!
//! - `integrity.seal_topic`: each message is one [`SealLine`] as JSON, keyed by the seal
//!   number;
//! - `integrity.seal_dir`: one file per seal, `seal-NNNNNNNNNNNNNNNNNNNN.json` (the number in
//!   20 digits), holding the same JSON line; written atomically ([`SealDir`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::{IntegrityError, SealLine};
use crate::config::KafkaConfig;

/// The consumer group the seal-topic reader names (it assigns partitions by hand and never
/// commits, so the group keeps no position).
const READER_GROUP: &str = "audit-manager-verify";

/// How long one seal may wait for the broker's acknowledgement.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The seal producer (idempotent, `acks=all`, like every producer of the service).
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl Publisher {
    pub fn new(kafka: &KafkaConfig, topic: &str) -> Result<Publisher, IntegrityError> {
        let defaults = BTreeMap::from([(
            "message.timeout.ms".to_string(),
            DELIVERY_TIMEOUT.as_millis().to_string(),
        )]);
        let producer =
            crate::kafka::producer::future_producer("seal", kafka, defaults).map_err(|e| {
                IntegrityError::Publish(format!(
                    "cannot create the seal producer (check kafka.producer): {}",
                    crate::kafka::error::error_text(&e)
                ))
            })?;
        Ok(Publisher {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Sends one seal and waits for the broker's acknowledgement.
    pub async fn publish(&self, line: &SealLine) -> Result<(), IntegrityError> {
        let value = serde_json::to_vec(line)
            .map_err(|e| IntegrityError::Publish(format!("cannot encode seal: {e}")))?;
        let key = line.seal_no.to_string();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&value),
                DELIVERY_TIMEOUT,
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                IntegrityError::Publish(format!(
                    "cannot publish seal {} to {}: {e}; it stays unpublished and is sent again \
                     on the next pass",
                    line.seal_no, self.topic
                ))
            })
    }
}

/// Every seal on `topic`, read from the beginning to the end as it is now. A seal number seen
/// more than once keeps every distinct version (the caller reports disagreeing copies).
pub fn read_topic(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<u64, Vec<SealLine>>, IntegrityError> {
    read_partitions(kafka, topic, timeout, None)
}

/// How many of the last messages of each partition [`read_tail`] reads: a seal is published
/// again after a crash between sending and marking it, so the newest seal may sit just before
/// a repeated older one.
const TAIL_MESSAGES: i64 = 16;

/// The published seal with the highest number (`None` when the topic is empty or absent),
/// read from the last messages of each partition only. Seals are published in order, so the
/// newest is among them.
pub fn read_tail(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Option<SealLine>, IntegrityError> {
    let all = read_partitions(kafka, topic, timeout, Some(TAIL_MESSAGES))?;
    Ok(all
        .into_iter()
        .next_back()
        .and_then(|(_, mut copies)| copies.pop()))
}

/// Reads `topic` to its current end, from the beginning or (`tail`) from that many messages
/// before the end of each partition.
fn read_partitions(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    tail: Option<i64>,
) -> Result<BTreeMap<u64, Vec<SealLine>>, IntegrityError> {
    let err = |what: &str| {
        let what = what.to_string();
        let topic = topic.to_string();
        move |e: rdkafka::error::KafkaError| {
            IntegrityError::Publish(format!("{what} of seal topic {topic}: {e}"))
        }
    };
    let consumer =
        crate::kafka::consumer::reader(kafka, READER_GROUP).map_err(err("creating a consumer"))?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(err("reading the metadata"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .map_err(err("reading the offsets"))?;
        if high > low {
            ends.insert(*p, high);
            let from = match tail {
                Some(n) => Offset::Offset(low.max(high - n)),
                None => Offset::Beginning,
            };
            tpl.add_partition_offset(topic, *p, from)
                .map_err(err("assigning"))?;
        }
    }
    let mut out: BTreeMap<u64, Vec<SealLine>> = BTreeMap::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(err("assigning"))?;
    let until = std::time::Instant::now() + timeout;
    while !ends.is_empty() {
        if std::time::Instant::now() > until {
            return Err(IntegrityError::Publish(format!(
                "timed out reading seal topic {topic} to its end"
            )));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg.map_err(err("reading"))?;
        if msg.offset() + 1 >= ends.get(&msg.partition()).copied().unwrap_or(0) {
            ends.remove(&msg.partition());
        }
        let Some(payload) = msg.payload() else {
            continue;
        };
        match serde_json::from_slice::<SealLine>(payload) {
            Ok(line) => {
                let copies = out.entry(line.seal_no).or_default();
                if !copies.contains(&line) {
                    copies.push(line);
                }
            }
            Err(e) => tracing::warn!(
                partition = msg.partition(),
                offset = msg.offset(),
                error = %e,
                "a message on the seal topic is not a seal; ignored"
            ),
        }
    }
    Ok(out)
}

/// `integrity.seal_dir`: one file per seal, written after the seal is committed.
#[derive(Debug, Clone)]
pub struct SealDir {
    path: PathBuf,
}

const FILE_PREFIX: &str = "seal-";
const FILE_SUFFIX: &str = ".json";

impl SealDir {
    pub fn new(path: impl Into<PathBuf>) -> SealDir {
        SealDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file name of seal `seal_no` (fixed width, so names sort by number).
    pub fn file_name(seal_no: u64) -> String {
        format!("{FILE_PREFIX}{seal_no:020}{FILE_SUFFIX}")
    }

    fn io(&self, what: &str) -> impl FnOnce(std::io::Error) -> IntegrityError {
        let what = format!("{what} in integrity.seal_dir {}", self.path.display());
        move |e| IntegrityError::Publish(format!("{what}: {e}"))
    }

    /// The seal numbers of the files present, ascending (temporary files are not seals).
    fn numbers(&self) -> Result<Vec<u64>, IntegrityError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.io("listing the seal files")(e)),
        };
        for entry in entries {
            let entry = entry.map_err(self.io("listing the seal files"))?;
            let name = entry.file_name();
            let Some(no) = name
                .to_str()
                .and_then(|n| n.strip_prefix(FILE_PREFIX))
                .and_then(|n| n.strip_suffix(FILE_SUFFIX))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            out.push(no);
        }
        out.sort_unstable();
        Ok(out)
    }

    fn read(&self, seal_no: u64) -> Result<SealLine, IntegrityError> {
        let path = self.path.join(Self::file_name(seal_no));
        let text = std::fs::read(&path).map_err(self.io(&format!("reading seal {seal_no}")))?;
        let line: SealLine = serde_json::from_slice(&text).map_err(|e| {
            IntegrityError::Corrupt(format!("{} is not a seal file: {e}", path.display()))
        })?;
        if line.seal_no != seal_no {
            return Err(IntegrityError::Corrupt(format!(
                "{} holds seal {}, not seal {seal_no}",
                path.display(),
                line.seal_no
            )));
        }
        Ok(line)
    }

    /// The seal with the highest number, if any.
    pub fn newest(&self) -> Result<Option<SealLine>, IntegrityError> {
        match self.numbers()?.last() {
            Some(&no) => self.read(no).map(Some),
            None => Ok(None),
        }
    }

    /// Every seal file, by number (for verify). An unreadable file is an error: the copy is
    /// damaged and cannot vouch for anything.
    pub fn read_all(&self) -> Result<BTreeMap<u64, Vec<SealLine>>, IntegrityError> {
        if !self.path.is_dir() {
            return Err(IntegrityError::Config(format!(
                "{} is not a directory of seal files",
                self.path.display()
            )));
        }
        let mut out = BTreeMap::new();
        for no in self.numbers()? {
            out.insert(no, vec![self.read(no)?]);
        }
        Ok(out)
    }

    /// Writes `lines` as files, each atomically: a temporary file written and synced, renamed
    /// into place, then the directory synced once (so a crash leaves each seal's file whole
    /// or absent, never torn).
    pub fn write(&self, lines: &[SealLine]) -> Result<(), IntegrityError> {
        use std::io::Write as _;
        if lines.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.path).map_err(self.io("creating the directory"))?;
        for line in lines {
            let name = Self::file_name(line.seal_no);
            let tmp = self.path.join(format!(".{name}.tmp"));
            let mut text = serde_json::to_vec(line)
                .map_err(|e| IntegrityError::Publish(format!("cannot encode seal: {e}")))?;
            text.push(b'\n');
            let what = format!("writing seal {}", line.seal_no);
            let mut f = std::fs::File::create(&tmp).map_err(self.io(&what))?;
            f.write_all(&text)
                .and_then(|()| f.sync_all())
                .map_err(self.io(&what))?;
            drop(f);
            std::fs::rename(&tmp, self.path.join(&name)).map_err(self.io(&what))?;
        }
        std::fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(self.io("syncing the directory"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_files_are_written_whole_and_read_back_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let d = SealDir::new(dir.path().join("seals"));
        assert_eq!(d.newest().unwrap(), None);
        let lines: Vec<SealLine> = (1..=3)
            .map(|n| SealLine::new(n, &[n as u8; 10], &[0; 64], "00"))
            .collect();
        d.write(&lines).unwrap();
        std::fs::write(dir.path().join("seals/.seal-x.tmp"), "torn").unwrap();
        std::fs::write(dir.path().join("seals/notes.txt"), "ignored").unwrap();
        assert_eq!(d.newest().unwrap().as_ref(), lines.last());
        let all = d.read_all().unwrap();
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[&2], vec![lines[1].clone()]);
        // A file holding another seal's number is not believed.
        std::fs::copy(
            dir.path().join("seals").join(SealDir::file_name(1)),
            dir.path().join("seals").join(SealDir::file_name(9)),
        )
        .unwrap();
        assert!(d.newest().is_err());
    }
}
