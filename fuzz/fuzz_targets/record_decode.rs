//! Spool frames: the harness computes the CRC over the fuzzer's payload, so the input reaches
//! the body decoding (postcard) instead of stopping at the checksum. Decoding returns an error
//! or a record/quarantine entry, never panics, and what decodes re-encodes to a frame that
//! decodes to the same value. Raw frames (bad versions, bad CRCs, truncation) are tried too.
//! The same bytes are read as a version-2 batch frame: its index is refused or names record
//! frames that lie inside the frame; and as a `removed` bitmap.
#![no_main]

use audit_manager::spool::record::{BatchIndex, Removed};
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
        if let Ok(index) = BatchIndex::read(f) {
            for i in 0..index.len() {
                let record = index.record(f, i);
                assert_eq!(record.len() as u64, index.record_len(i));
                let _ = Record::decode(record);
            }
        }
        for n in [0, 1, 7, 8, 9, 500] {
            let _ = Removed::decode(f, n);
        }
    }
});
