//! Errors of the PostgreSQL client and the retry policy for them.
//!
//! Policy: every database call is wrapped in a [`StoreError`] naming what was being done and
//! what the operator can do about it. Whether to retry is decided by [`is_retriable`] alone:
//! when in doubt it says *retry*, because the sink must never skip records — a wrong "retry"
//! costs a stall that shows up in `/health`, a wrong "give up" sends good events to the DLQ.

use std::fmt;

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
pub struct StoreError {
    /// What was being done, e.g. "inserting 5000 rows".
    pub what: String,
    #[source]
    pub source: sqlx::Error,
}

impl StoreError {
    pub fn new(what: impl Into<String>, source: sqlx::Error) -> StoreError {
        StoreError {
            what: what.into(),
            source,
        }
    }

    pub fn is_retriable(&self) -> bool {
        is_retriable(&self.source)
    }

    /// SQLSTATE of a database error.
    pub fn code(&self) -> Option<String> {
        sqlstate(&self.source)
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL error while {}: {}", self.what, self.source)?;
        if let Some(hint) = hint(&self.source) {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// What the operator should check, for the errors that have a clear remedy.
fn hint(e: &sqlx::Error) -> Option<&'static str> {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => Some(
            "is PostgreSQL running and reachable at database.url? the sink retries until it is",
        ),
        sqlx::Error::Configuration(_) => Some("check database.url (or DATABASE_URL / DB_*)"),
        sqlx::Error::Database(_) => match sqlstate(e).as_deref() {
            Some("28000" | "28P01") => Some("check the user and password in database.url"),
            Some("3D000") => Some("the database does not exist and this role may not create it"),
            Some("42501") => Some("the database role lacks a privilege on audit_events"),
            Some("53100") => Some("the database server is out of disk space"),
            _ => None,
        },
        _ => None,
    }
}

/// Whether the same statement may succeed later (connection loss, server restart, lock or
/// resource trouble), as opposed to failing the same way forever because of the data.
///
/// Permanent: data exceptions (class 22), integrity violations (23) other than "no partition
/// for row" (23514, fixed by creating the partition), and syntax/definition errors (42) other
/// than undefined table (42P01: a partition dropped under us; recreated on retry). Everything
/// else, including errors that are not from the server, is retriable.
pub fn is_retriable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(_) => {
            let code = sqlstate(e).unwrap_or_default();
            match code.get(..2) {
                Some("22") => false,
                Some("23") => code == "23514",
                Some("42") => code == "42P01",
                _ => true,
            }
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[derive(Debug)]
    struct FakeDbError(&'static str);
    impl fmt::Display for FakeDbError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "fake {}", self.0)
        }
    }
    impl std::error::Error for FakeDbError {}
    impl sqlx::error::DatabaseError for FakeDbError {
        fn message(&self) -> &str {
            "fake"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn db(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(FakeDbError(code)))
    }

    #[test]
    fn connection_trouble_is_retried() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_retriable(&sqlx::Error::Io(io)));
        assert!(is_retriable(&sqlx::Error::PoolTimedOut));
        assert!(is_retriable(&db("57P01")), "admin shutdown");
        assert!(is_retriable(&db("08006")), "connection failure");
        assert!(is_retriable(&db("40P01")), "deadlock");
        assert!(is_retriable(&db("53100")), "disk full");
    }

    #[test]
    fn missing_partition_or_table_is_retried() {
        assert!(is_retriable(&db("23514")));
        assert!(is_retriable(&db("42P01")));
    }

    #[test]
    fn bad_data_is_permanent() {
        assert!(!is_retriable(&db("22P05")), "untranslatable character");
        assert!(!is_retriable(&db("22021")), "invalid byte sequence");
        assert!(!is_retriable(&db("23502")), "not null violation");
        assert!(!is_retriable(&db("42804")), "datatype mismatch");
    }

    #[test]
    fn message_tells_what_to_check() {
        let e = StoreError::new("inserting 3 rows", sqlx::Error::PoolTimedOut);
        let text = e.to_string();
        assert!(text.contains("inserting 3 rows"), "{text}");
        assert!(text.contains("database.url"), "{text}");
    }
}
