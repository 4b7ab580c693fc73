//! Quoting of SQL identifiers (table and database names), shared by every module of the store
//! that builds DDL from a name.

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
