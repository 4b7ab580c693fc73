//! Any request body through parsing and validation in both modes (see `check_body`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| audit_manager_fuzz::check_body(data));
