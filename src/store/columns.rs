//! The one list of `audit_events` columns, from which every statement naming them is built:
//! the table's DDL (`CREATE TABLE`, the columns added to an adopted table, `seal_seq`), the
//! insert paths (`UNNEST`, `COPY` and its load table) and the `SELECT` list of a whole row.
//!
//! The order is the table's: a table this service creates has its columns in this order, and
//! so does one the reference service created and this service extended (`auth_*`, then
//! `seal_seq`, are appended). The row encoding of `integrity::encoding` covers the columns in
//! this order too. A test creates the table in a scratch database and compares its catalog with
//! this list.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use crate::event::Row;

/// The table.
pub const TABLE: &str = "audit_events";
/// The primary key: every redelivery of an event collapses on it.
pub const PRIMARY_KEY: &str = "id, occurred_at";
/// The partition key (monthly range partitions, see `store::partitions`).
pub const PARTITION_KEY: &str = "occurred_at";

/// Which statement of the schema creates a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `CREATE TABLE`: a column of the reference service's table.
    Reference,
    /// `CREATE TABLE`, and `ADD COLUMN` on a table the reference (or an older release) created
    /// without it. Nullable, so adding it to a table with rows is a catalog change.
    SinceReference,
    /// Added by the integrity schema after the table (`store::integrity_schema`): without its
    /// default first, then the default is set, so an adopted table is not rewritten.
    Sealing,
}

/// How the sink sends a column's value (`None` in [`Column::sent`]: the database's default).
#[derive(Clone, Copy)]
pub enum Sent {
    /// Text, `None` for NULL.
    Text(fn(&Row) -> Option<&str>),
    /// A time.
    Time(fn(&Row) -> DateTime<Utc>),
}

/// One column of `audit_events`.
#[derive(Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    /// The type as the DDL writes it.
    pub sql_type: &'static str,
    pub not_null: bool,
    /// The default as `pg_get_expr` prints it (how the schema check compares it).
    pub default: Option<&'static str>,
    pub origin: Origin,
    pub sent: Option<Sent>,
}

impl Column {
    /// `jsonb` travels as text both ways: the sink sends the JSON text it validated, readers
    /// get PostgreSQL's rendering of the value (which `integrity::jcs` canonicalises).
    fn is_json(&self) -> bool {
        self.sql_type == "jsonb"
    }

    /// The type a value travels in (bound arrays, the load table).
    fn wire_type(&self) -> &'static str {
        if self.is_json() {
            "text"
        } else {
            self.sql_type
        }
    }

    /// The column read in a `SELECT` list.
    fn read_expr(&self) -> String {
        if self.is_json() {
            format!("{name}::text AS {name}", name = self.name)
        } else {
            self.name.to_string()
        }
    }

    /// The column, carried as its wire type, stored as its own type.
    fn write_expr(&self) -> String {
        if self.is_json() {
            format!("{}::{}", self.name, self.sql_type)
        } else {
            self.name.to_string()
        }
    }

    /// `name type [NOT NULL] [DEFAULT expr]` for `CREATE TABLE`.
    fn definition(&self) -> String {
        let mut d = format!("{} {}", self.name, self.sql_type);
        if self.not_null {
            d.push_str(" NOT NULL");
        }
        if let Some(default) = self.default {
            d.push_str(" DEFAULT ");
            d.push_str(default);
        }
        d
    }
}

const fn text(name: &'static str, not_null: bool, sent: fn(&Row) -> Option<&str>) -> Column {
    Column {
        name,
        sql_type: "text",
        not_null,
        default: None,
        origin: Origin::Reference,
        sent: Some(Sent::Text(sent)),
    }
}

/// Every column, in table order.
pub const COLUMNS: [Column; 18] = [
    text("id", true, |r| Some(&r.id)),
    Column {
        name: "occurred_at",
        sql_type: "timestamptz",
        not_null: true,
        default: None,
        origin: Origin::Reference,
        sent: Some(Sent::Time(|r| r.occurred_at)),
    },
    Column {
        name: "ingested_at",
        sql_type: "timestamptz",
        not_null: true,
        default: Some("now()"),
        origin: Origin::Reference,
        sent: None,
    },
    text("source", true, |r| Some(&r.source)),
    text("type", true, |r| Some(&r.r#type)),
    text("subject", false, |r| r.subject.as_deref()),
    text("actor_type", true, |r| Some(&r.actor_type)),
    text("actor_id", true, |r| Some(&r.actor_id)),
    text("resource_type", false, |r| r.resource_type.as_deref()),
    text("resource_id", false, |r| r.resource_id.as_deref()),
    text("action", true, |r| Some(&r.action)),
    text("outcome", true, |r| Some(&r.outcome)),
    text("reason", false, |r| r.reason.as_deref()),
    text("trace_id", false, |r| r.trace_id.as_deref()),
    Column {
        sql_type: "jsonb",
        ..text("details", false, |r| r.details.as_deref())
    },
    Column {
        origin: Origin::SinceReference,
        ..text("auth_type", false, |r| r.auth_type.as_deref())
    },
    Column {
        origin: Origin::SinceReference,
        ..text("auth_id", false, |r| r.auth_id.as_deref())
    },
    Column {
        name: "seal_seq",
        sql_type: "bigint",
        not_null: false,
        default: Some("nextval('audit_events_seal_seq'::regclass)"),
        origin: Origin::Sealing,
        sent: None,
    },
];

/// The columns the sink sends, in table order, with how each is sent.
pub fn sent() -> impl Iterator<Item = (&'static Column, Sent)> {
    COLUMNS.iter().filter_map(|c| c.sent.map(|s| (c, s)))
}

/// The column sealing adds (`seal_seq`): the list's last, and its only one of
/// [`Origin::Sealing`] (a test checks both).
pub fn sealing() -> &'static Column {
    &COLUMNS[COLUMNS.len() - 1]
}

/// The `SELECT` list reading a whole [`StoredRow`].
pub fn select_list() -> String {
    join(COLUMNS.iter().map(Column::read_expr))
}

/// The names of the columns the sink sends: `INSERT` and `COPY` column lists.
pub fn sent_list() -> String {
    join(sent().map(|(c, _)| c.name.to_string()))
}

/// The sent columns of a relation holding them as wire types, stored as their own types:
/// the `SELECT` list of an `INSERT … SELECT`.
pub fn sent_write_list() -> String {
    join(sent().map(|(c, _)| c.write_expr()))
}

/// `$1::text[], $2::timestamptz[], …`: one array parameter per sent column.
pub fn sent_array_params() -> String {
    join(
        sent()
            .enumerate()
            .map(|(i, (c, _))| format!("${}::{}[]", i + 1, c.wire_type())),
    )
}

/// `id text, occurred_at timestamptz, …`: the sent columns as wire types (a load table).
pub fn sent_wire_definitions() -> String {
    join(sent().map(|(c, _)| format!("{} {}", c.name, c.wire_type())))
}

/// `CREATE TABLE IF NOT EXISTS audit_events (…)`: every column but sealing's, the primary key,
/// partitioned by month (see `store::partitions`). The reference creates the same table
/// without the `auth_*` columns.
pub fn create_table() -> String {
    let columns: Vec<String> = COLUMNS
        .iter()
        .filter(|c| c.origin != Origin::Sealing)
        .map(Column::definition)
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (\n        {},\n        PRIMARY KEY ({PRIMARY_KEY})\n    \
         ) PARTITION BY RANGE ({PARTITION_KEY})",
        columns.join(",\n        ")
    )
}

/// `ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS name type` (without default).
pub fn add_column(c: &Column) -> String {
    format!(
        "ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {} {}",
        c.name, c.sql_type
    )
}

/// `ALTER TABLE audit_events ALTER COLUMN name SET DEFAULT expr`.
pub fn set_default(c: &Column) -> Option<String> {
    c.default.map(|d| {
        format!(
            "ALTER TABLE {TABLE} ALTER COLUMN {} SET DEFAULT {d}",
            c.name
        )
    })
}

/// Columns a table created by the reference (or an older release) may lack, with the
/// statement adding each.
pub static ADDED_COLUMNS: LazyLock<Vec<(&'static str, String)>> = LazyLock::new(|| {
    COLUMNS
        .iter()
        .filter(|c| c.origin == Origin::SinceReference)
        .map(|c| (c.name, add_column(c)))
        .collect()
});

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join(", ")
}

/// One row as stored, every column (read with [`select_list`]).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct StoredRow {
    pub id: String,
    pub occurred_at: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    pub source: String,
    pub r#type: String,
    pub subject: Option<String>,
    pub actor_type: String,
    pub actor_id: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub trace_id: Option<String>,
    /// `details` as PostgreSQL prints the jsonb value; canonicalised before hashing.
    pub details: Option<String>,
    pub auth_type: Option<String>,
    pub auth_id: Option<String>,
    /// `None` for a row stored before sealing existed (legacy).
    pub seal_seq: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_column_belongs_to_sealing_and_it_comes_last() {
        let sealing: Vec<&str> = COLUMNS
            .iter()
            .filter(|c| c.origin == Origin::Sealing)
            .map(|c| c.name)
            .collect();
        assert_eq!(sealing, ["seal_seq"]);
        assert_eq!(COLUMNS.last().map(|c| c.name), Some("seal_seq"));
    }

    #[test]
    fn the_statements_name_the_columns_in_table_order() {
        assert_eq!(
            sent_list(),
            "id, occurred_at, source, type, subject, actor_type, actor_id, resource_type, \
             resource_id, action, outcome, reason, trace_id, details, auth_type, auth_id"
        );
        assert_eq!(
            select_list(),
            "id, occurred_at, ingested_at, source, type, subject, actor_type, actor_id, \
             resource_type, resource_id, action, outcome, reason, trace_id, details::text AS \
             details, auth_type, auth_id, seal_seq"
        );
        assert!(sent_write_list().contains(", details::jsonb, "));
        assert!(sent_array_params().starts_with("$1::text[], $2::timestamptz[], $3::text[]"));
        assert!(sent_array_params().ends_with("$14::text[], $15::text[], $16::text[]"));
        assert!(sent_wire_definitions().contains("details text"));
        assert_eq!(
            ADDED_COLUMNS.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["auth_type", "auth_id"]
        );
    }

    /// The statement of the release before the list, whitespace aside: a table created by
    /// either is the same table.
    #[test]
    fn create_table_is_the_established_statement() {
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            squash(&create_table()),
            squash(
                "CREATE TABLE IF NOT EXISTS audit_events (
                    id text NOT NULL, occurred_at timestamptz NOT NULL,
                    ingested_at timestamptz NOT NULL DEFAULT now(), source text NOT NULL,
                    type text NOT NULL, subject text, actor_type text NOT NULL,
                    actor_id text NOT NULL, resource_type text, resource_id text,
                    action text NOT NULL, outcome text NOT NULL, reason text, trace_id text,
                    details jsonb, auth_type text, auth_id text,
                    PRIMARY KEY (id, occurred_at)
                ) PARTITION BY RANGE (occurred_at)"
            )
        );
    }

    /// The table as PostgreSQL created it (`Store::prepare` in a scratch database) has exactly
    /// the listed columns: names, order, types, NOT NULL and defaults.
    #[tokio::test]
    async fn the_created_table_has_exactly_the_listed_columns() {
        let db = crate::store::scratch::ScratchDb::new().await;
        let pool = db.store.pool();
        let found: Vec<(String, String, bool, Option<String>)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid)
               FROM pg_attribute a
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = 'audit_events'::regclass AND a.attnum > 0
                AND NOT a.attisdropped
              ORDER BY a.attnum",
        )
        .fetch_all(pool)
        .await
        .expect("reading the catalog");
        let mut listed = Vec::new();
        for c in &COLUMNS {
            // The catalog's spelling of the listed type (`timestamptz` is `timestamp with time
            // zone` there).
            let sql_type: String = sqlx::query_scalar("SELECT format_type($1::regtype, NULL)")
                .bind(c.sql_type)
                .fetch_one(pool)
                .await
                .expect("a type PostgreSQL knows");
            listed.push((
                c.name.to_string(),
                sql_type,
                c.not_null,
                c.default.map(str::to_string),
            ));
        }
        assert_eq!(found, listed);
        let key: String = sqlx::query_scalar(
            "SELECT pg_get_indexdef(indexrelid) FROM pg_index
              WHERE indrelid = 'audit_events'::regclass AND indisprimary",
        )
        .fetch_one(pool)
        .await
        .expect("the primary key");
        assert!(key.ends_with(&format!("({PRIMARY_KEY})")), "{key}");
    }
}
