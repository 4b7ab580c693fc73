//! Spool frames: the harness computes the CRC over the fuzzer's payload, so the input reaches
//! the body decoding (postcard) instead of stopping at the checksum. Decoding returns an error
//! or a record/quarantine entry, never panics, and what decodes re-encodes to a frame that
//! decodes to the same value. Raw frames (bad versions, bad CRCs, truncation) are tried too.
#![no_main]

use audit_manager::spool::{QuarantineEntry, Record};
use libfuzzer_sys::fuzz_target;

/// The frame format's version byte, as the codec writes it.
fn version() -> u8 {
    let empty = Record {
        accepted_at_ms: 0,
        id: String::new(),
        key: None,
        value: Vec::new(),
    };
    empty.encode()[0]
}

fuzz_target!(|data: &[u8]| {
    let mut frame = Vec::with_capacity(data.len() + 5);
    frame.push(version());
    frame.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    frame.extend_from_slice(data);
    for f in [frame.as_slice(), data] {
        if let Ok(record) = Record::decode(f) {
            assert_eq!(Record::decode(&record.encode()).as_ref(), Ok(&record));
        }
        if let Ok(entry) = QuarantineEntry::decode(f) {
            assert_eq!(
                QuarantineEntry::decode(&entry.encode()).as_ref(),
                Ok(&entry)
            );
        }
    }
});
