//! Tamper evidence: sealing, verification, writer attestation, tampering by someone with
//! database access and killing the sealer mid-write.

// Test code: a failed step panics with its message (the lints deny that in the service).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod archive;
mod attest;
mod direct_writers;
mod integrity;
mod integrity_kill;
mod integrity_tamper;
mod privacy_forget;
