//! The record codec: how one spooled event is framed inside a redb value.
//!
//! ```text
//! byte 0      format version of the frame (currently 1)
//! bytes 1..5  CRC-32 (IEEE, crc32fast) of bytes 5.., little-endian
//! bytes 5..   postcard encoding of the body struct
//! ```
//!
//! redb checksums its own pages only during crash repair; the per-record CRC catches a damaged
//! record on every read, so a flipped bit is quarantined instead of being forwarded as an audit
//! fact. `spool-format.md` documents the layout byte for byte.

use serde::{Deserialize, Serialize};

/// Version byte written at the front of every frame.
pub const FRAME_VERSION: u8 = 1;
const HEADER_LEN: usize = 5;

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
    #[error("frame version {0} is unknown to this build (expected {FRAME_VERSION})")]
    UnknownVersion(u8),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("CRC matches but the body does not decode: {0}")]
    Body(String),
}

/// Frames any serializable body: version, CRC, postcard bytes.
pub fn encode_frame<T: Serialize>(body: &T) -> Vec<u8> {
    let mut out = vec![FRAME_VERSION, 0, 0, 0, 0];
    // Serializing plain structs of integers, strings and byte vectors into a Vec cannot fail.
    out = match postcard::to_extend(body, out) {
        Ok(v) => v,
        Err(e) => unreachable!("postcard cannot fail writing to a Vec: {e}"),
    };
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
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
}
