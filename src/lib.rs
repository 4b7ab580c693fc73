//! audit-manager: the durable record of who did what, when, and with what outcome.
//!
//! Modules follow the data, in the order an event travels (`docs/architecture.md` draws it):
//!
//! - [`event`]: the CloudEvent rules as one table ([`event::table`]) with two evaluators — the
//!   tree validator that names every problem and the borrowed skim that answers yes/no without
//!   building a tree — time parsing, normalization, defaults, the Kafka key and the mapping to a
//!   table row (pure, no I/O; shared by ingest and sink);
//! - [`api`]: the axum HTTP API — one router list (handler, document, public or protected),
//!   authentication, the envelope, the error codes, the OpenAPI document;
//! - [`spool`]: the crash-safe redb spool and its group-commit writer (202 only after fsync),
//!   with the offline tools (`spool stats|verify|export|requeue`);
//! - [`forward`]: the forward role, spool → Kafka, deleting from the spool only what the broker
//!   acknowledged; or, with `forward.target: postgres` (Kafka-less mode), spool → PostgreSQL
//!   through [`write`], deleting only what the database committed;
//! - [`sink`]: the sink role, Kafka consumer group → batched idempotent inserts, offsets
//!   committed only after the database commit, dead letters to the DLQ topic;
//! - [`write`]: the storing half the sink and the direct writer share — decoding a record into
//!   its row, the bisecting batch insert that isolates rows the database refuses, dead reasons;
//! - [`maintain`]: the maintain role — partitions created ahead, expired ones dropped, and the
//!   sealer when a signing key is set;
//! - [`query`]: the investigators' read path (the query role), every read audited;
//! - [`privacy`]: personal data — rules applied once at ingest (drop, mask, pseudonymise,
//!   encrypt per data subject), the store-side half, `forget`, and what readers see;
//! - [`integrity`]: tamper evidence — row encoding, seals, writer attestation, the sealer's
//!   pass, `verify`;
//! - [`archive`]: archives of closed months in object storage (Parquet, the seals naming the
//!   rows, signed chained manifests), `archive run|list|verify|restore`, verifiable offline;
//! - [`store`]: PostgreSQL, and every SQL statement of the service — the one column list,
//!   schema, partitions, inserts, seals, attestations, queries, the advisory locks;
//! - [`kafka`]: every broker client (producers, consumers, admin) with the properties the
//!   delivery guarantees rest on, what a Kafka error says about the system, and the in-memory
//!   development broker (`embedded`, `dev-kafka`, `serve --dev`);
//! - [`auth`]: principals (tokens file, reloaded on change), TLS/mTLS on the listener;
//! - [`role`]: the one shape of a role, `start(&RoleContext) -> Started` (its tasks and its
//!   health check); [`serve`]: opens the shared resources and starts the configured roles;
//!   [`shutdown`]: signals, supervision and draining; [`schedule`]: periodic passes;
//!   [`fault`]: the crash tests' abort points (compiled only with the `failpoints` feature);
//! - [`health`], [`metrics`], [`logging`]: what operators see;
//! - [`config`]: layered configuration (defaults < YAML < environment), one file per section;
//! - [`cli`]: the command line, one file per command (`serve`, `verify`, `keygen`, `token`,
//!   `spool`, `partitions`, `dlq`, `topics`, `dev-kafka`).
//!
//! `main.rs` only parses the command line and calls into [`cli`]. The user-facing contract
//! (API, events, configuration, table, guarantees) is in `docs/contract.md`.

pub mod api;
pub mod archive;
pub mod auth;
pub mod cli;
pub mod config;
pub mod event;
pub mod fault;
pub mod forward;
pub mod health;
pub mod integrity;
pub mod kafka;
pub mod logging;
pub mod maintain;
pub mod metrics;
pub mod privacy;
pub mod query;
pub mod role;
pub mod schedule;
pub mod serve;
pub mod shutdown;
pub mod sink;
pub mod spool;
pub mod store;
pub mod write;
