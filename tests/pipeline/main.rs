//! Events past the spool: forwarding to Kafka (librdkafka's mock cluster), the sink into
//! PostgreSQL, topics and partitions, draining and supervision, systemic failures, TLS to the
//! backends and the reference service's configuration and database.

// Test code: a failed step panics with its message (the lints deny that in the service).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod backend_tls;
mod direct;
mod drain_under_load;
mod end_to_end;
mod forward;
mod partitions;
mod privacy;
mod reference_config;
mod reference_db;
mod sink;
mod supervision;
mod systemic_failures;
mod topics;
