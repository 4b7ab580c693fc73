//! The record codec: how spooled events are framed inside redb values.
//!
//! A record frame (version 1) holds one body:
//!
//! ```text
//! byte 0      frame version 1
//! bytes 1..5  CRC-32 (IEEE, crc32fast) of bytes 5.., little-endian
//! bytes 5..   postcard encoding of the body struct
//! ```
//!
//! A batch frame (version 2) holds the records of one append request, each as a complete record
//! frame with its own CRC, behind an index (count and lengths) that is stored twice, at the front
//! and at the back, each copy with its own CRC:
//!
//! ```text
//! byte 0          frame version 2
//! bytes 1..5      CRC-32 of bytes 5..9+4n (the front index), little-endian
//! bytes 5..9      n, the number of records (u32 LE, at least 1)
//! 9..9+4n         length of each record frame (u32 LE)
//! ...             the n record frames, back to back
//! last 8+4n bytes the lengths again, n again, CRC-32 of both (the back index)
//! ```
//!
//! redb checksums its own pages only during crash repair; the per-record CRC catches a damaged
//! record on every read, so a flipped bit is quarantined instead of being forwarded as an audit
//! fact. Because every record keeps its own CRC and the index survives damage to either copy,
//! a flipped bit inside a batch costs that one record, never its siblings. `spool-format.md`
//! documents the layout byte for byte.

use serde::{Deserialize, Serialize};

/// Version byte of a record frame (one record) and of a quarantine frame.
pub const FRAME_VERSION: u8 = 1;
/// Version byte of a batch frame (the records of one append request).
pub const BATCH_VERSION: u8 = 2;
const HEADER_LEN: usize = 5;
/// Bytes of a batch frame besides its record frames and their 4-byte lengths (twice): version,
/// front CRC, front count, back count, back CRC.
pub const BATCH_FIXED_LEN: usize = 17;

/// One accepted event as it sits in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Milliseconds since the Unix epoch when the ingest accepted the event.
    pub accepted_at_ms: u64,
    /// The CloudEvent `id` (after defaults were filled in).
    pub id: String,
    /// The Kafka key: `subject`, else `data.actor.id`.
    pub key: Option<String>,
    /// The normalized CloudEvent, compact JSON. (`serde_bytes`: one length-prefixed copy instead
    /// of a per-byte sequence; the postcard bytes are identical either way.)
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// A record the spool refused to serve, kept with the reason so an operator can look at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// Milliseconds since the Unix epoch when it was moved to quarantine.
    pub quarantined_at_ms: u64,
    /// Why: a CRC mismatch, a broker's permanent rejection, ...
    pub reason: String,
    /// The frame exactly as it was stored in the events table.
    #[serde(with = "serde_bytes")]
    pub raw: Vec<u8>,
}

/// Why a stored frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is {0} bytes, shorter than its 5-byte header")]
    Truncated(usize),
    #[error(
        "frame version {0} is unknown to this build (it reads {FRAME_VERSION} and {BATCH_VERSION})"
    )]
    UnknownVersion(u8),
    #[error("both copies of the batch index are damaged: {0}")]
    Index(String),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("CRC matches but the body does not decode: {0}")]
    Body(String),
}

/// Frames any serializable body: version, CRC, postcard bytes.
pub fn encode_frame<T: Serialize>(body: &T) -> Vec<u8> {
    append_frame(body, Vec::new())
}

/// Appends `body` framed (version, CRC, postcard bytes) to `out`: a batch frame writes its
/// record frames back to back into one buffer this way.
fn append_frame<T: Serialize>(body: &T, mut out: Vec<u8>) -> Vec<u8> {
    let start = out.len();
    out.extend_from_slice(&[FRAME_VERSION, 0, 0, 0, 0]);
    // Serializing plain structs of integers, strings and byte vectors into a Vec cannot fail.
    out = match postcard::to_extend(body, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail writing to a Vec: {e}"),
    };
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start + 1..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the frame's version and CRC, then decodes the body.
pub fn decode_frame<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<T, FrameError> {
    let payload = check_frame(frame)?;
    postcard::from_bytes(payload).map_err(|e| FrameError::Body(e.to_string()))
}

/// Checks version and CRC without decoding; returns the postcard payload.
pub fn check_frame(frame: &[u8]) -> Result<&[u8], FrameError> {
    if frame.len() < HEADER_LEN {
        return Err(FrameError::Truncated(frame.len()));
    }
    if frame[0] != FRAME_VERSION {
        return Err(FrameError::UnknownVersion(frame[0]));
    }
    let stored = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
    let payload = &frame[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(FrameError::Crc { stored, computed });
    }
    Ok(payload)
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self)
    }

    pub fn decode(frame: &[u8]) -> Result<Record, FrameError> {
        decode_frame(frame)
    }
}

/// A batch frame ready for the events table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The whole version-2 frame.
    pub frame: Vec<u8>,
    /// Number of records in it.
    pub events: u64,
    /// Sum of its record frames' lengths: what it adds to the live bytes (`spool.max_bytes`).
    pub record_bytes: u64,
}

/// Frames `records` (at least one) as one version-2 batch frame.
pub fn encode_batch(records: &[Record]) -> Batch {
    let n = records.len();
    let index_len = 4 + 4 * n;
    let mut out = Vec::with_capacity(HEADER_LEN + index_len + 2 * index_len + 64 * n);
    out.extend_from_slice(&[BATCH_VERSION, 0, 0, 0, 0]);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.resize(HEADER_LEN + index_len, 0);
    let mut lengths = Vec::with_capacity(n);
    for r in records {
        let start = out.len();
        out = append_frame(r, out);
        lengths.push((out.len() - start) as u32);
    }
    for (i, len) in lengths.iter().enumerate() {
        let at = HEADER_LEN + 4 + 4 * i;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    let front = crc32fast::hash(&out[HEADER_LEN..HEADER_LEN + index_len]);
    out[1..HEADER_LEN].copy_from_slice(&front.to_le_bytes());
    let back_start = out.len();
    for len in &lengths {
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(&(n as u32).to_le_bytes());
    let back = crc32fast::hash(&out[back_start..]);
    out.extend_from_slice(&back.to_le_bytes());
    Batch {
        frame: out,
        events: n as u64,
        record_bytes: lengths.iter().map(|&l| u64::from(l)).sum(),
    }
}

/// Where the record frames of a batch frame are; read from whichever index copy checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchIndex {
    /// `(offset, length)` of each record frame inside the batch frame.
    slots: Vec<(usize, usize)>,
}

impl BatchIndex {
    /// Reads the index of a version-2 frame: the front copy, else the back copy. Each copy must
    /// pass its CRC and describe exactly the frame's length. The version byte is not required
    /// to be 2 (it lies outside both CRCs; a flipped version byte must not cost n records): the
    /// caller treats a frame whose version byte is 1 as a record frame and tries this otherwise.
    pub fn read(frame: &[u8]) -> Result<BatchIndex, FrameError> {
        if frame.len() < BATCH_FIXED_LEN + 8 {
            return Err(FrameError::Index(format!(
                "frame is {} bytes, too short for a batch",
                frame.len()
            )));
        }
        let front = Self::front(frame);
        match front {
            Ok(index) => Ok(index),
            Err(front) => Self::back(frame)
                .map_err(|back| FrameError::Index(format!("front: {front}; back: {back}"))),
        }
    }

    /// The front copy (the frame is at least a minimal batch long).
    fn front(frame: &[u8]) -> Result<BatchIndex, String> {
        let n = u32_at(frame, HEADER_LEN) as usize;
        let end = n
            .checked_mul(4)
            .and_then(|l| l.checked_add(HEADER_LEN + 4))
            .filter(|&end| end <= frame.len())
            .ok_or_else(|| format!("count {n} does not fit the frame"))?;
        check_crc(u32_at(frame, 1), &frame[HEADER_LEN..end])?;
        Self::slots(frame, n, |i| u32_at(frame, HEADER_LEN + 4 + 4 * i))
    }

    /// The back copy (the frame is at least a minimal batch long).
    fn back(frame: &[u8]) -> Result<BatchIndex, String> {
        let len = frame.len();
        let n = u32_at(frame, len - 8) as usize;
        let start = n
            .checked_mul(4)
            .and_then(|l| (len - 8).checked_sub(l))
            .ok_or_else(|| format!("count {n} does not fit the frame"))?;
        check_crc(u32_at(frame, len - 4), &frame[start..len - 4])?;
        Self::slots(frame, n, |i| u32_at(frame, start + 4 * i))
    }

    fn slots(frame: &[u8], n: usize, len_of: impl Fn(usize) -> u32) -> Result<BatchIndex, String> {
        if n == 0 {
            return Err("count is 0".into());
        }
        let mut at = HEADER_LEN + 4 + 4 * n;
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let len = len_of(i) as usize;
            slots.push((at, len));
            at += len;
        }
        let expected = at + 4 * n + 8;
        if expected != frame.len() {
            return Err(format!(
                "the lengths add up to {expected} bytes, the frame has {}",
                frame.len()
            ));
        }
        Ok(BatchIndex { slots })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Length of record frame `i`: what record `i` counts toward the live bytes.
    pub fn record_len(&self, i: usize) -> u64 {
        self.slots[i].1 as u64
    }

    /// Record frame `i` of `frame` (the batch frame this index was read from).
    pub fn record<'a>(&self, frame: &'a [u8], i: usize) -> &'a [u8] {
        let (at, len) = self.slots[i];
        &frame[at..at + len]
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn check_crc(stored: u32, payload: &[u8]) -> Result<(), String> {
    let computed = crc32fast::hash(payload);
    if stored == computed {
        Ok(())
    } else {
        Err(format!(
            "CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ))
    }
}

/// Which records of a batch are gone (acknowledged or quarantined) while others are still live:
/// bit `i` (byte `i / 8`, least significant bit first) stands for the record with sequence
/// number `key + i`. Stored as a CRC-32 (LE) followed by the bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    bits: Vec<u8>,
    n: usize,
}

impl Removed {
    /// Nothing removed yet from a batch of `n` records.
    pub fn none(n: usize) -> Removed {
        Removed {
            bits: vec![0; n.div_ceil(8)],
            n,
        }
    }

    /// Decodes a stored value for a batch of `n` records. A value that fails its CRC or has the
    /// wrong length is an error: the caller then treats every record as live (re-sending a
    /// delivered record is harmless downstream; hiding a live one would lose it).
    pub fn decode(stored: &[u8], n: usize) -> Result<Removed, FrameError> {
        if stored.len() != 4 + n.div_ceil(8) {
            return Err(FrameError::Truncated(stored.len()));
        }
        let payload = &stored[4..];
        let (crc, computed) = (u32_at(stored, 0), crc32fast::hash(payload));
        if crc != computed {
            return Err(FrameError::Crc {
                stored: crc,
                computed,
            });
        }
        Ok(Removed {
            bits: payload.to_vec(),
            n,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = crc32fast::hash(&self.bits).to_le_bytes().to_vec();
        out.extend_from_slice(&self.bits);
        out
    }

    pub fn contains(&self, i: usize) -> bool {
        self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    /// Marks record `i` removed; false if it already was.
    pub fn insert(&mut self, i: usize) -> bool {
        let was = self.contains(i);
        self.bits[i / 8] |= 1 << (i % 8);
        !was
    }

    /// Marks record `i` live again; false if it already was.
    pub fn remove(&mut self, i: usize) -> bool {
        let was = self.contains(i);
        self.bits[i / 8] &= !(1 << (i % 8));
        was
    }

    /// True when every record is removed (the batch can go).
    pub fn is_full(&self) -> bool {
        (0..self.n).all(|i| self.contains(i))
    }

    /// True when no record is removed (the entry can go).
    pub fn is_clear(&self) -> bool {
        self.bits.iter().all(|&b| b == 0)
    }
}

impl QuarantineEntry {
    pub fn encode(&self) -> Vec<u8> {
        encode_frame(self)
    }

    pub fn decode(frame: &[u8]) -> Result<QuarantineEntry, FrameError> {
        decode_frame(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            accepted_at_ms: 1_700_000_000_123,
            id: "evt-1".into(),
            key: Some("beneficiary/1".into()),
            value: br#"{"specversion":"1.0","id":"evt-1"}"#.to_vec(),
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let frame = sample().encode();
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    Record::decode(&damaged).is_err(),
                    "flip at byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let frame = sample().encode();
        for len in 0..frame.len() {
            assert!(Record::decode(&frame[..len]).is_err(), "truncated to {len}");
        }
    }

    #[test]
    fn body_layout_is_the_documented_one() {
        // spool-format.md: varint accepted_at_ms, string id, option key, byte string value.
        let r = Record {
            accepted_at_ms: 300,
            id: "ab".into(),
            key: None,
            value: b"{}".to_vec(),
        };
        let frame = r.encode();
        assert_eq!(&frame[5..], &[0xac, 0x02, 2, b'a', b'b', 0, 2, b'{', b'}']);
        let crc = crc32fast::hash(&frame[5..]).to_le_bytes();
        assert_eq!(&frame[..5], &[1, crc[0], crc[1], crc[2], crc[3]]);
    }

    #[test]
    fn unknown_version_is_named() {
        let mut frame = sample().encode();
        frame[0] = 9;
        assert_eq!(Record::decode(&frame), Err(FrameError::UnknownVersion(9)));
    }

    fn batch_of(n: u64) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                accepted_at_ms: 1_700_000_000_000 + i,
                id: format!("evt-{i}"),
                key: (i % 2 == 0).then(|| format!("k{i}")),
                value: format!("{{\"id\":\"evt-{i}\"}}").into_bytes(),
            })
            .collect()
    }

    fn records_of(frame: &[u8]) -> Vec<Result<Record, FrameError>> {
        let index = BatchIndex::read(frame).unwrap();
        (0..index.len())
            .map(|i| Record::decode(index.record(frame, i)))
            .collect()
    }

    #[test]
    fn batch_round_trips_and_counts_its_record_frames() {
        let records = batch_of(5);
        let b = encode_batch(&records);
        assert_eq!(b.events, 5);
        let frames: Vec<Vec<u8>> = records.iter().map(Record::encode).collect();
        let record_bytes: usize = frames.iter().map(Vec::len).sum();
        assert_eq!(b.record_bytes, record_bytes as u64);
        assert_eq!(b.frame.len(), BATCH_FIXED_LEN + 8 * 5 + record_bytes);
        let index = BatchIndex::read(&b.frame).unwrap();
        for (i, f) in frames.iter().enumerate() {
            // Each record inside a batch is byte for byte its version-1 frame.
            assert_eq!(index.record(&b.frame, i), f.as_slice());
            assert_eq!(index.record_len(i), f.len() as u64);
        }
        let decoded: Vec<Record> = records_of(&b.frame)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(decoded, records);
    }

    #[test]
    fn batch_layout_is_the_documented_one() {
        // spool-format.md, "Batch frame": version, front CRC, n, lengths, record frames,
        // lengths, n, back CRC.
        let r = Record {
            accepted_at_ms: 300,
            id: "ab".into(),
            key: None,
            value: b"{}".to_vec(),
        };
        let one = r.encode();
        assert_eq!(one.len(), 14);
        let b = encode_batch(&[r.clone(), r]).frame;
        let mut expected = vec![2, 0, 0, 0, 0, 2, 0, 0, 0, 14, 0, 0, 0, 14, 0, 0, 0];
        let front = crc32fast::hash(&expected[5..17]).to_le_bytes();
        expected[1..5].copy_from_slice(&front);
        expected.extend_from_slice(&one);
        expected.extend_from_slice(&one);
        let back = [14, 0, 0, 0, 14, 0, 0, 0, 2, 0, 0, 0];
        expected.extend_from_slice(&back);
        expected.extend_from_slice(&crc32fast::hash(&back).to_le_bytes());
        assert_eq!(b, expected);
    }

    #[test]
    fn a_flipped_bit_in_a_batch_costs_at_most_one_record() {
        let records = batch_of(4);
        let frame = encode_batch(&records).frame;
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[byte] ^= 1 << bit;
                let index = BatchIndex::read(&damaged)
                    .unwrap_or_else(|e| panic!("flip at byte {byte} bit {bit}: {e}"));
                assert_eq!(index.len(), 4);
                let decoded = records_of(&damaged);
                let bad = decoded.iter().filter(|r| r.is_err()).count();
                assert!(
                    bad <= 1,
                    "flip at byte {byte} bit {bit}: {bad} records lost"
                );
                for (got, want) in decoded.iter().zip(&records) {
                    if let Ok(got) = got {
                        assert_eq!(got, want, "flip at byte {byte} bit {bit} passed a CRC");
                    }
                }
            }
        }
    }

    #[test]
    fn batch_with_both_index_copies_damaged_is_refused() {
        let mut frame = encode_batch(&batch_of(3)).frame;
        let len = frame.len();
        frame[6] ^= 1;
        frame[len - 6] ^= 1;
        assert!(matches!(
            BatchIndex::read(&frame),
            Err(FrameError::Index(_))
        ));
        for cut in 0..len {
            assert!(
                BatchIndex::read(&frame[..cut]).is_err(),
                "truncated to {cut}"
            );
        }
    }

    #[test]
    fn a_record_frame_is_not_mistaken_for_a_batch() {
        assert!(BatchIndex::read(&sample().encode()).is_err());
    }

    #[test]
    fn removed_set_round_trips_and_refuses_damage() {
        let mut r = Removed::none(11);
        assert!(r.is_clear() && !r.is_full());
        assert!(r.insert(0) && r.insert(10) && !r.insert(10));
        let stored = r.encode();
        assert_eq!(stored.len(), 4 + 2);
        assert_eq!(&stored[4..], &[0b0000_0001, 0b0000_0100]);
        assert_eq!(Removed::decode(&stored, 11).unwrap(), r);
        let mut damaged = stored.clone();
        damaged[5] ^= 1;
        assert!(Removed::decode(&damaged, 11).is_err());
        assert!(Removed::decode(&stored, 17).is_err(), "wrong batch size");
        for i in 0..11 {
            r.insert(i);
        }
        assert!(r.is_full());
        assert!(r.remove(3) && !r.is_full());
    }
}
