//! audit-manager: the durable record of who did what, when, and with what outcome.
//!
//! Modules follow the data, in the order an event travels:
//!
//! - [`event`]: the CloudEvent model — validation, normalization, defaults, the Kafka key and
//!   the mapping to a table row (pure, no I/O; shared by ingest and sink);
//! - [`api`]: the axum HTTP API — envelope, routes, error → status mapping;
//! - [`spool`]: the crash-safe redb spool and its group-commit writer (202 only after fsync),
//!   with the offline tools (`spool stats|verify|export|requeue`);
//! - [`forward`]: spool → Kafka, deleting from the spool only what the broker acknowledged;
//! - [`sink`]: Kafka consumer group → batched idempotent inserts, offsets committed only after
//!   the database commit, dead letters to the DLQ topic;
//! - [`store`]: PostgreSQL — schema, monthly partitions, inserts, reachability for `/health`;
//! - [`kafka`]: every broker client (producers, consumers, admin) with the properties the
//!   delivery guarantees rest on, what a Kafka error says about the system, and the in-memory
//!   development broker (`embedded`, `dev-kafka`, `serve --dev`);
//! - [`maintain`]: the role that keeps partitions created ahead and drops expired ones;
//! - [`auth`]: principals (tokens file, reloaded on change), TLS/mTLS on the listener;
//! - [`integrity`]: tamper evidence — row encoding, seals, the sealer, `verify`;
//! - [`health`], [`metrics`], [`logging`]: what operators see;
//! - [`config`]: layered configuration (defaults < YAML < environment);
//! - [`serve`]: wires the roles of one process together; [`shutdown`]: signals and draining;
//! - [`cli`]: the command line (`serve`, `spool`, `partitions`, `dlq`, `topics`, `dev-kafka`).
//!
//! `main.rs` only parses the command line and calls into [`cli`]. The user-facing contract
//! (API, events, configuration, table, guarantees) is in `docs/contract.md`.

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod event;
pub mod forward;
pub mod health;
pub mod integrity;
pub mod kafka;
pub mod logging;
pub mod maintain;
pub mod metrics;
pub mod query;
pub mod role;
pub mod schedule;
pub mod serve;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod store;
