//! The forward role: spool → Kafka, deleting a record from the spool only after the broker
//! acknowledged it. With `forward.target: postgres` it writes the spool straight into
//! PostgreSQL instead ([`postgres`], Kafka-less mode).
//!
//! - `config.rs`: loop tuning and the forward producer's defaults (the safe properties every
//!   producer shares are forced by [`crate::kafka::producer`]);
//! - `client.rs`: the producer and its delivery reports; whether a failure is one record's
//!   fault or an outage is [`crate::kafka::error::classify`]'s call;
//! - `runner.rs`: the loop.
//!
//! # Invariants
//!
//! - A record leaves the spool's events table only by an `ack` after a successful delivery
//!   report (acks=all, idempotent producer), or by `quarantine` after a permanent rejection
//!   (the reason is kept). A crash anywhere leaves undelivered records in the spool; the next
//!   start reads from the oldest live record, so delivery is at-least-once.
//! - Records are handed to the producer in sequence order, so one key's events reach their
//!   partition in the order they were accepted. After a failed delivery nothing new is sent
//!   until every outstanding report is in; then the loop re-reads from the oldest live record.
//! - At most `max_in_flight_events` / `max_in_flight_bytes` (`forward.max_in_flight_bytes`)
//!   are outstanding at any time.
//!
//! # Metrics
//!
//! | metric | kind | meaning |
//! |---|---|---|
//! | `audit_forward_events_produced_total` | counter | records the broker acknowledged |
//! | `audit_forward_delivery_errors_total{kind}` | counter | failed deliveries by error code |
//! | `audit_forward_quarantined_total` | counter | records quarantined on permanent rejection |
//! | `audit_forward_in_flight_events` | gauge | records handed to the producer, no report yet |
//! | `audit_forward_in_flight_bytes` | gauge | their bytes (key + value), at most `forward.max_in_flight_bytes` |
//! | `audit_forward_oldest_event_age_seconds` | gauge | age of the oldest record not yet delivered |
//!
//! The backlog is the spool's depth, `audit_spool_events`.

mod client;
mod config;
pub mod postgres;
mod runner;

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use crate::config::ForwardSettings;
pub use client::CONTENT_TYPE;
pub use config::{producer_config, producer_properties};

use crate::config::{Config, Role};
use crate::health::{Check, RoleReport, Status};
use crate::role::{RoleContext, Started};
use crate::shutdown::Task;
use crate::spool::{Spool, now_ms};

/// Errors that stop the forward role from starting.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(
        "cannot create the Kafka producer: {0}. Check kafka.bootstrap_servers and the \
         kafka.producer properties (names and values must be valid librdkafka settings)"
    )]
    Producer(#[source] rdkafka::error::KafkaError),
}

/// What the forwarder is doing, shared with `/health`.
#[derive(Debug, Default)]
pub struct ForwardState {
    inner: Mutex<StateInner>,
}

#[derive(Debug, Default)]
struct StateInner {
    /// Set while Kafka is unreachable or refusing writes; cleared by the next delivery.
    problem: Option<Problem>,
    in_flight: u64,
    delivered: u64,
    quarantined: u64,
    last_delivery_ms: u64,
}

#[derive(Debug, Clone)]
struct Problem {
    reason: String,
    since_ms: u64,
}

impl ForwardState {
    fn lock(&self) -> std::sync::MutexGuard<'_, StateInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a problem; the time it started is kept while it lasts.
    pub fn set_problem(&self, reason: String) {
        // Shown on `/health`: a client error can quote a configured secret.
        let reason = crate::config::redact::scrub(&reason).into_owned();
        let mut s = self.lock();
        let since_ms = s.problem.as_ref().map_or_else(now_ms, |p| p.since_ms);
        s.problem = Some(Problem { reason, since_ms });
    }

    pub fn clear_problem(&self) {
        let mut s = self.lock();
        if let Some(p) = s.problem.take() {
            tracing::info!(
                after_secs = now_ms().saturating_sub(p.since_ms) / 1000,
                "Kafka deliveries succeed again"
            );
        }
    }

    pub fn has_problem(&self) -> bool {
        self.lock().problem.is_some()
    }

    fn delivered(&self, n: u64) {
        let mut s = self.lock();
        s.delivered += n;
        s.last_delivery_ms = now_ms();
    }

    fn quarantined(&self) {
        self.lock().quarantined += 1;
    }

    fn set_in_flight(&self, n: usize) {
        self.lock().in_flight = n as u64;
    }

    /// The `forward` entry of `/health`: DEGRADED (not DOWN) during an outage, because ingest
    /// keeps accepting into the spool.
    pub fn report(&self, spool: &Spool) -> RoleReport {
        let s = self.lock();
        let st = spool.stats();
        let mut detail = serde_json::Map::new();
        detail.insert(
            "kafka".into(),
            json!({
                "in_flight_events": s.in_flight,
                "delivered_events": s.delivered,
                "quarantined_events": s.quarantined,
                "last_delivery_ms": s.last_delivery_ms,
            }),
        );
        detail.insert(
            "backlog".into(),
            json!({
                "events": st.live_events,
                "bytes": st.live_bytes,
                "oldest_event_age_seconds": st.oldest_age_secs(now_ms()),
            }),
        );
        let mut report = RoleReport::up(detail);
        if let Some(p) = &s.problem {
            report.status = Status::Degraded;
            report.reason = Some(format!(
                "{} (since {}s ago); events stay in the spool and are retried, ingest keeps \
                 accepting until spool.max_bytes",
                p.reason,
                now_ms().saturating_sub(p.since_ms) / 1000
            ));
        }
        report
    }
}

/// Starts the forward role: builds the producer (failing fast on invalid properties) and
/// returns the loop, which ends only once the root token is cancelled.
pub fn start(ctx: &RoleContext) -> anyhow::Result<Started> {
    if ctx.config.forward.target == crate::config::ForwardTarget::Postgres {
        return start_direct(ctx);
    }
    let settings = settings(ctx).bounded_by(&ctx.config);
    let mut f = Forwarder::new(&ctx.config, ctx.spool()?.clone(), settings)?;
    if ctx.embedded_kafka {
        f = f.topics_precreated();
    }
    let token = ctx.shutdown.child_token();
    Ok(
        Started::new(Role::Forward, f.health_check(), &[Task::Forward]).task(
            Task::Forward,
            async move {
                f.run(token).await;
                Ok(())
            },
        ),
    )
}

/// `forward.target: postgres`: the direct writer, spool → `audit_events` (see [`postgres`]).
fn start_direct(ctx: &RoleContext) -> anyhow::Result<Started> {
    let store = crate::sink::attesting(&ctx.config, ctx.store()?.clone())?;
    let settings = postgres::DirectSettings::new(&ctx.config, &settings(ctx));
    let privacy = crate::privacy::writer(&ctx.config).map_err(anyhow::Error::msg)?;
    let w =
        postgres::DirectWriter::new(ctx.spool()?.clone(), store, settings).with_privacy(privacy);
    let token = ctx.shutdown.child_token();
    Ok(Started::new(
        Role::Forward,
        w.health_check(),
        &[Task::Forward, Task::DatabaseMonitor],
    )
    .task(Task::Forward, async move {
        w.run(token).await;
        Ok(())
    }))
}

/// The loop's tuning: the defaults, or the test seam's.
fn settings(ctx: &RoleContext) -> ForwardSettings {
    #[cfg(feature = "failpoints")]
    if let Some(settings) = &ctx.options.forward {
        return settings.clone();
    }
    let _ = ctx;
    ForwardSettings::default()
}

/// The forward role, ready to run.
pub struct Forwarder {
    runner: runner::Runner,
    state: Arc<ForwardState>,
    spool: Spool,
    kafka: crate::config::KafkaConfig,
    client_config: crate::kafka::producer::ProducerConfig,
    create_topics: bool,
}

impl Forwarder {
    /// Builds the producer from `config.kafka` (fails fast on invalid properties).
    pub fn new(
        config: &Config,
        spool: Spool,
        settings: ForwardSettings,
    ) -> Result<Forwarder, ForwardError> {
        let state = Arc::new(ForwardState::default());
        let client_config = producer_config(config, &settings);
        let runner = runner::Runner::new(
            spool.clone(),
            settings,
            client_config.clone(),
            config.kafka.topic.clone(),
            state.clone(),
        )?;
        Ok(Forwarder {
            runner,
            state,
            spool,
            kafka: config.kafka.clone(),
            client_config,
            create_topics: true,
        })
    }

    /// The topics exist already (the embedded broker created them): skip CreateTopics, which
    /// the mock broker does not implement.
    pub fn topics_precreated(mut self) -> Forwarder {
        self.create_topics = false;
        self
    }

    /// The `/health` check of the forward role.
    pub fn health_check(&self) -> Check {
        let (state, spool) = (self.state.clone(), self.spool.clone());
        Arc::new(move || state.report(&spool))
    }

    /// Ensures the topics exist (in the background), then forwards until `token` is cancelled;
    /// returns once outstanding deliveries were reported and acknowledged (or the flush
    /// timeout passed).
    pub async fn run(self, token: CancellationToken) {
        let (kafka, cc) = (self.kafka, self.client_config);
        let topics = self.create_topics.then(|| {
            tokio::spawn(
                async move { crate::kafka::admin::create_missing_topics(&kafka, &cc).await },
            )
        });
        self.runner.run(token).await;
        if let Some(t) = topics {
            t.abort();
        }
    }
}
