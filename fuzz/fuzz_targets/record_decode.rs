//! Any bytes in a spool value: decoding returns an error or a record, never panics, and a
//! decoded record re-encodes to the same frame.
#![no_main]

use audit_manager::spool::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::decode(data) {
        assert_eq!(Record::decode(&record.encode()).as_ref(), Ok(&record));
    }
});
