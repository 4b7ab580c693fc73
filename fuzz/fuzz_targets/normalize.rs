//! Any request body: parsing and normalizing must never panic, and an accepted event must
//! re-normalize to the same bytes (defaults are filled once, so replays keep their key).
#![no_main]

use audit_manager::event::{Limits, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    let limits = Limits::default();
    if let Ok(first) = normalize(value, now, &limits) {
        let again: serde_json::Value = serde_json::from_slice(&first.json).expect("own output");
        let second = normalize(again, now, &limits).expect("normalized event stays valid");
        assert_eq!(first.json, second.json);
        assert_eq!(first.id, second.id);
    }
});
