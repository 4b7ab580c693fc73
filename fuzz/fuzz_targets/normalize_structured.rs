//! Structured CloudEvents (every attribute right, wrong, null or absent; times in every form
//! the reference reads; repeated keys) through parsing and validation in both modes.
#![no_main]

use audit_manager_fuzz::{Event, check_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|event: Event| check_body(event.to_json().as_bytes()));
