//! The HTTP surface, one service in process per test: the ingest contract and its
//! validation modes, authentication and TLS, slow clients, readiness, the query API and its
//! OpenAPI document, the dashboard's metrics and the investigators' page.

// Test code: a failed step panics with its message (the lints deny that in the service).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod body_arrival;
mod compatible_mode;
mod dashboard_metrics;
mod ingest_api;
mod openapi_drift;
mod privacy_read;
mod query;
mod ready;
mod slow_clients;
mod tls;
mod ui_browser;
