//! audit-manager: the durable record of who did what, when, and with what outcome.
//!
//! Modules follow the data, in the order an event travels:
//!
//! - [`event`]: the CloudEvent model — validation, defaults, the Kafka key (pure, no I/O);
//! - [`api`]: the axum HTTP API — envelope, routes, error → status mapping;
//! - [`spool`]: the crash-safe redb spool and its group-commit writer (202 only after fsync);
//! - [`forward`]: spool → Kafka, deleting from the spool only what the broker acknowledged;
//!   [`devkafka`]: the in-memory development broker (`embedded`, `dev-kafka`);
//! - [`health`], [`metrics`]: what operators see;
//! - [`config`]: layered configuration (defaults < YAML < environment);
//! - [`serve`]: wires the roles of one process together; [`shutdown`]: signals and draining.
//!
//! `main.rs` only parses the command line and calls into [`cli`].

pub mod api;
pub mod cli;
pub mod config;
pub mod devkafka;
pub mod event;
pub mod forward;
pub mod health;
pub mod logging;
pub mod maintain;
pub mod metrics;
pub mod serve;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod store;
