//! The `audit_events` DDL, applied idempotently at startup.
//!
//! The table, its columns and its index names are those of the reference service (the OpenG2P
//! Audit Manager), so a database that service created is adopted as it is: its table is kept,
//! columns this service added since are added with `ADD COLUMN IF NOT EXISTS`, and an index is
//! created only when no index with the same definition exists on the table yet, whatever its
//! name. Without that check a database created under other index names (the reference's, or
//! this service's before it took the reference's names) would get every index twice: twice the
//! write cost on every insert, for nothing.

use sqlx::{ConnectOptions, Connection, PgConnection};

use super::columns::{self, ADDED_COLUMNS};
use super::ident::quote_ident;
use super::locks::{self, AdvisoryLock};
use super::{Store, StoreError, integrity_schema};

/// One secondary index of `audit_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSpec {
    /// The reference service's name for it.
    pub name: &'static str,
    /// The definition as `pg_get_indexdef` prints it after `USING `: what two indexes must share
    /// to be the same index.
    pub definition: &'static str,
}

/// The secondary indexes: the reference's five under its names, and the sealer's.
pub const INDEXES: &[IndexSpec] = &[
    IndexSpec {
        name: "idx_audit_events_occurred_at",
        definition: "btree (occurred_at DESC)",
    },
    IndexSpec {
        name: "idx_audit_events_actor",
        definition: "btree (actor_id, occurred_at DESC)",
    },
    IndexSpec {
        name: "idx_audit_events_resource",
        definition: "btree (resource_type, resource_id, occurred_at DESC)",
    },
    IndexSpec {
        name: "idx_audit_events_type",
        definition: "btree (type, occurred_at DESC)",
    },
    IndexSpec {
        name: "idx_audit_events_trace",
        definition: "btree (trace_id) WHERE (trace_id IS NOT NULL)",
    },
    // Not the reference's: sealing and verify read rows in `seal_seq` order.
    IndexSpec {
        name: "idx_audit_events_seal_seq",
        definition: "btree (seal_seq)",
    },
];

impl IndexSpec {
    /// `CREATE INDEX` for the partitioned table; PostgreSQL creates (or attaches an equivalent
    /// existing) index on every partition.
    pub fn create_statement(&self) -> String {
        // `btree (cols) WHERE (pred)` is valid after `USING` as it stands.
        format!(
            "CREATE INDEX IF NOT EXISTS {} ON audit_events USING {}",
            quote_ident(self.name),
            self.definition
        )
    }
}

/// The part of a `pg_get_indexdef` result after `USING `, i.e. the definition without the name.
pub fn definition_of(indexdef: &str) -> Option<&str> {
    indexdef.split_once(" USING ").map(|(_, def)| def.trim())
}

/// The indexes of [`INDEXES`] that no existing non-unique index of the table matches, given
/// the table's indexes as `(name, pg_get_indexdef)` pairs. A same-named index with another
/// definition is logged: creating ours under that name is impossible, so the table would lack
/// the index its queries expect.
pub fn missing_indexes(existing: &[(String, String)]) -> Vec<IndexSpec> {
    INDEXES
        .iter()
        .filter(|spec| {
            let same_definition = existing
                .iter()
                .any(|(_, def)| definition_of(def) == Some(spec.definition));
            if !same_definition
                && let Some((_, def)) = existing.iter().find(|(name, _)| name == spec.name)
            {
                tracing::warn!(
                    index = spec.name,
                    found = %def,
                    expected = spec.definition,
                    "an index of audit_events has the expected name but another definition; \
                     queries that need the expected one will be slow. Drop or rename it and \
                     restart to have it created"
                );
            }
            !same_definition
        })
        .copied()
        .collect()
}

/// The table's non-unique indexes as `(name, pg_get_indexdef)`.
async fn table_indexes(conn: &mut PgConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.relname::text, pg_get_indexdef(i.indexrelid)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = 'audit_events'::regclass AND NOT i.indisunique",
    )
    .fetch_all(conn)
    .await
}

impl Store {
    /// Creates the database if it is missing (when the role may), then applies the table of
    /// [`columns`], the [`ADDED_COLUMNS`] it lacks, the [`integrity_schema`] and the
    /// [`INDEXES`] the table lacks, under [`AdvisoryLock::Schema`].
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
        locks::lock_for_transaction(&mut tx, AdvisoryLock::Schema)
            .await
            .map_err(|e| StoreError::new(what, e))?;
        sqlx::query(&columns::create_table())
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(what, e))?;
        let present: Vec<String> = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute \
             WHERE attrelid = 'audit_events'::regclass AND attnum > 0 AND NOT attisdropped",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| StoreError::new(what, e))?;
        for (column, ddl) in ADDED_COLUMNS.iter() {
            if present.iter().any(|p| p == column) {
                continue;
            }
            sqlx::query(ddl)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::new(what, e))?;
        }
        integrity_schema::apply(&mut tx)
            .await
            .map_err(|e| StoreError::new(what, e))?;
        sqlx::query(super::dead_letters::DDL)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::new(what, e))?;
        super::archives::apply(&mut tx)
            .await
            .map_err(|e| StoreError::new(what, e))?;
        let existing = table_indexes(&mut tx)
            .await
            .map_err(|e| StoreError::new(what, e))?;
        for spec in missing_indexes(&existing) {
            tracing::info!(index = spec.name, "creating index on audit_events");
            sqlx::query(&spec.create_statement())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str, def: &str) -> (String, String) {
        (name.to_owned(), def.to_owned())
    }

    #[test]
    fn an_equivalent_index_under_another_name_counts_as_present() {
        let existing = [
            pair(
                "audit_events_actor_idx",
                "CREATE INDEX audit_events_actor_idx ON ONLY public.audit_events USING btree \
                 (actor_id, occurred_at DESC)",
            ),
            pair(
                "my_trace",
                "CREATE INDEX my_trace ON ONLY public.audit_events USING btree (trace_id) \
                 WHERE (trace_id IS NOT NULL)",
            ),
        ];
        let missing: Vec<&str> = missing_indexes(&existing).iter().map(|s| s.name).collect();
        assert_eq!(
            missing,
            [
                "idx_audit_events_occurred_at",
                "idx_audit_events_resource",
                "idx_audit_events_type",
                "idx_audit_events_seal_seq"
            ]
        );
    }

    #[test]
    fn a_same_named_index_with_another_definition_does_not_count() {
        let existing = [pair(
            "idx_audit_events_type",
            "CREATE INDEX idx_audit_events_type ON ONLY public.audit_events USING btree (type)",
        )];
        assert_eq!(missing_indexes(&existing).len(), INDEXES.len());
    }

    #[test]
    fn create_statements_use_the_reference_names() {
        assert_eq!(
            INDEXES[4].create_statement(),
            "CREATE INDEX IF NOT EXISTS \"idx_audit_events_trace\" ON audit_events USING btree \
             (trace_id) WHERE (trace_id IS NOT NULL)"
        );
    }
}
