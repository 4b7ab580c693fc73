//! The process and its files: the spool under faults, damage, power cuts and upgrades, crashes,
//! the command line, the quickstart, the production image and the memory bounds.

// Test code: a failed step panics with its message (the lints deny that in the service).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/power_cut.rs"]
mod power_cut;

mod ci_postgres;
mod cli;
mod crash;
mod direct_crash;
mod forward_crash;
mod ingest_memory_factor;
mod memory_bounds;
mod packaging;
mod quickstart;
mod spool_damage;
mod spool_faults;
mod spool_model;
mod spool_pending;
mod spool_power;
mod spool_quarantine;
mod spool_upgrade;
