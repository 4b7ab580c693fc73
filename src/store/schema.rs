//! The `audit_events` DDL (docs/contract.md, "The table"), applied idempotently at startup.

use sqlx::{ConnectOptions, Connection};

use super::{Store, StoreError};

/// Serializes schema changes between processes starting at the same time (transaction lock).
pub const SCHEMA_LOCK: i64 = 0x6175_6469_7400_0001;

/// Statements run in order inside one transaction. Every one is idempotent.
pub const DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS audit_events (
        id            text        NOT NULL,
        occurred_at   timestamptz NOT NULL,
        ingested_at   timestamptz NOT NULL DEFAULT now(),
        source        text        NOT NULL,
        type          text        NOT NULL,
        subject       text,
        actor_type    text        NOT NULL,
        actor_id      text        NOT NULL,
        resource_type text,
        resource_id   text,
        action        text        NOT NULL,
        outcome       text        NOT NULL,
        reason        text,
        trace_id      text,
        details       jsonb,
        PRIMARY KEY (id, occurred_at)
    ) PARTITION BY RANGE (occurred_at)",
    "CREATE INDEX IF NOT EXISTS audit_events_occurred_at_idx
        ON audit_events (occurred_at DESC)",
    "CREATE INDEX IF NOT EXISTS audit_events_actor_idx
        ON audit_events (actor_id, occurred_at DESC)",
    "CREATE INDEX IF NOT EXISTS audit_events_resource_idx
        ON audit_events (resource_type, resource_id, occurred_at DESC)",
    "CREATE INDEX IF NOT EXISTS audit_events_type_idx
        ON audit_events (type, occurred_at DESC)",
    "CREATE INDEX IF NOT EXISTS audit_events_trace_id_idx
        ON audit_events (trace_id) WHERE trace_id IS NOT NULL",
];

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Store {
    /// Creates the database if it is missing (when the role may), then applies [`DDL`].
    pub async fn prepare(&self) -> Result<(), StoreError> {
        let r = self.prepare_inner().await;
        self.observe(&r);
        r
    }

    async fn prepare_inner(&self) -> Result<(), StoreError> {
        if let Err(e) = self.options.connect().await {
            if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("3D000") {
                self.create_database().await?;
            } else {
                return Err(StoreError::new("connecting", e));
            }
        }
        let what = "applying the audit_events schema";
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| StoreError::new(what, e))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(what, e))?;
        for stmt in DDL {
            sqlx::query(stmt)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::new(what, e))?;
        }
        tx.commit().await.map_err(|e| StoreError::new(what, e))
    }

    async fn create_database(&self) -> Result<(), StoreError> {
        let name = self.database_name();
        let what = format!("creating the missing database {name}");
        let mut conn = self
            .options
            .clone()
            .database("postgres")
            .connect()
            .await
            .map_err(|e| StoreError::new(what.clone(), e))?;
        let r = sqlx::query(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .execute(&mut conn)
            .await;
        let _ = conn.close().await;
        match r {
            Ok(_) => {
                tracing::info!(database = %name, "created the database");
                Ok(())
            }
            // Another process created it first.
            Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42P04") => {
                Ok(())
            }
            Err(e) => Err(StoreError::new(what, e)),
        }
    }
}
