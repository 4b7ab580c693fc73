//! Tamper evidence: sealing, verification, writer attestation, tampering by someone with
//! database access and killing the sealer mid-write.

#[path = "../common/mod.rs"]
mod common;

mod attest;
mod integrity;
mod integrity_kill;
mod integrity_tamper;
