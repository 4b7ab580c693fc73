//! Any Kafka record value through the sink's decoding into a row, in both modes: never panics,
//! and a record `strict` maps to a row maps to the same row in `compatible`.
#![no_main]

use audit_manager::event::{ValidationMode, row_from_record};
use audit_manager_fuzz::now;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strict = row_from_record(data, now(), ValidationMode::Strict);
    let compat = row_from_record(data, now(), ValidationMode::Compatible);
    if let Ok(row) = strict {
        assert_eq!(compat.as_ref(), Ok(&row));
    }
    // A redelivery maps to the same row (ids are never drawn at random at the sink).
    if let Ok(row) = compat {
        assert_eq!(
            row_from_record(data, now(), ValidationMode::Compatible),
            Ok(row)
        );
    }
});
