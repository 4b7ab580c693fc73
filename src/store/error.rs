//! Errors of the PostgreSQL client and the retry policy for them.
//!
//! Policy: every database call is wrapped in a [`StoreError`] naming what was being done and
//! what the operator can do about it. What happens next is decided by [`classify`] alone, which
//! asks first what an error says about the *system* ("would every row fail the same way?") and
//! only then whether one row is bad:
//!
//! - [`ErrorClass::Transient`]: the connection or the server is in trouble for a while
//!   (connection lost, server restarting, deadlock, a partition not there yet). Retried; any
//!   later success, even a health ping, shows the database is back.
//! - [`ErrorClass::Systemic`]: the database refuses every row until an operator acts (a revoked
//!   privilege, a changed or missing table or column, authentication, a full disk, bad
//!   `database.url`). Retried with backoff, nothing is skipped, and `/health` reports the sink and
//!   maintain DOWN until the same kind of operation succeeds again.
//! - [`ErrorClass::RecordSpecific`]: this row's data can never be stored (a data exception, a
//!   NOT NULL or CHECK violation). Only these go to the dead-letter topic.
//!
//! When in doubt the answer is *systemic*: a wrong "retry" costs a stall that shows up in
//! `/health`, a wrong "record-specific" sends good events to the DLQ.

use std::fmt;

/// What an error says about the database, and so what the caller does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Passing trouble (connection, restart, lock): retry.
    Transient,
    /// The database refuses every row until an operator acts: retry, report DOWN.
    Systemic,
    /// Only this row's data is at fault: dead-letter it.
    RecordSpecific,
}

/// A failed database operation.
#[derive(Debug, thiserror::Error)]
pub struct StoreError {
    /// What was being done, e.g. "inserting 5000 rows".
    pub what: String,
    #[source]
    pub source: sqlx::Error,
    /// Set when the caller learnt more than the error itself says (see [`StoreError::systemic`]).
    class: Option<ErrorClass>,
}

impl StoreError {
    pub fn new(what: impl Into<String>, source: sqlx::Error) -> StoreError {
        StoreError {
            what: what.into(),
            source,
            class: None,
        }
    }

    /// The same error, known to be systemic although its SQLSTATE alone names a data error:
    /// e.g. every row of a batch and a probe row failed with it, so the table refuses any row.
    pub fn systemic(mut self, what: impl Into<String>) -> StoreError {
        self.what = what.into();
        self.class = Some(ErrorClass::Systemic);
        self
    }

    pub fn class(&self) -> ErrorClass {
        self.class.unwrap_or_else(|| classify(&self.source))
    }

    /// Whether the operation may be retried (anything but a verdict on one row's data).
    pub fn is_retriable(&self) -> bool {
        self.class() != ErrorClass::RecordSpecific
    }

    /// SQLSTATE of a database error.
    pub fn code(&self) -> Option<String> {
        sqlstate(&self.source)
    }

    /// The message for `/health` and the logs, with the hint naming `role` (the user of
    /// `database.url`) where a statement for the operator needs it.
    pub fn report(&self, role: Option<&str>) -> String {
        let mut text = format!("PostgreSQL error while {}: {}", self.what, self.source);
        if let Some(code) = self.code() {
            text.push_str(&format!(" [SQLSTATE {code}]"));
        }
        let consequence = match self.class() {
            ErrorClass::Systemic => "; nothing is skipped: retried until this is fixed",
            ErrorClass::Transient | ErrorClass::RecordSpecific => "",
        };
        text.push_str(consequence);
        if let Some(hint) = hint(&self.source, self.class(), role.unwrap_or("<role>")) {
            text.push_str(&format!(" ({hint})"));
        }
        text
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report(None))
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// What the operator should check or run, for the errors that have a clear remedy.
fn hint(e: &sqlx::Error, class: ErrorClass, role: &str) -> Option<String> {
    if let Some(tls) = tls_trouble(e) {
        return Some(tls.hint().to_string());
    }
    let text = match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => {
            "is PostgreSQL running and reachable at database.url? the sink retries until it is"
                .to_string()
        }
        sqlx::Error::Configuration(_) => "check database.url (or DATABASE_URL / DB_*)".to_string(),
        sqlx::Error::Database(_) => {
            let code = sqlstate(e).unwrap_or_default();
            match code.as_str() {
                "28000" | "28P01" => "check the user and password in database.url".to_string(),
                "3D000" => "the database does not exist and this role may not create it".into(),
                "42501" => privilege_hint(e, role),
                "42P01" => "the table audit_events is missing or not on the search_path: \
                            restart audit-manager to create it, or check database.url"
                    .to_string(),
                "42703" | "42804" | "42P10" | "42883" => {
                    "audit_events no longer has the columns and types audit-manager writes; \
                     restore the documented schema"
                        .to_string()
                }
                "3F000" => "the schema of audit_events does not exist; check the search_path \
                            of the database role"
                    .to_string(),
                "53100" => "the database server is out of disk space".to_string(),
                "53300" => "the server has no free connection slots; raise max_connections or \
                            reduce the clients"
                    .to_string(),
                _ if class == ErrorClass::Systemic && code.starts_with("42") => {
                    "audit_events does not match the schema audit-manager expects, or the role \
                     lacks a privilege"
                        .to_string()
                }
                _ if code.starts_with("57") => {
                    "an operator or the server stopped the statement; it is retried".to_string()
                }
                _ if class == ErrorClass::Systemic
                    && (code.starts_with("22") || code.starts_with("23")) =>
                {
                    "every row fails this way, so the table itself rejects rows: check its \
                     columns, constraints and triggers against the documented schema"
                        .to_string()
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(text)
}

/// What went wrong setting up TLS to the server (see [`tls_trouble`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsTrouble {
    /// The server's certificate does not chain to a trusted CA.
    Untrusted,
    /// The certificate is trusted but names another host.
    WrongName,
    /// The certificate has expired or is not valid yet.
    Expired,
    /// The server does not accept TLS (`sslmode=require` or stricter).
    NotOffered,
    /// The server refused the handshake (e.g. our client certificate).
    Refused,
    /// A certificate or key file named in the URL is missing, unreadable or not PEM.
    Files,
    /// Any other handshake failure.
    Other,
}

impl TlsTrouble {
    /// What the operator should do.
    pub fn hint(self) -> &'static str {
        match self {
            TlsTrouble::Untrusted => {
                "the server's certificate is not trusted: set sslrootcert=/path/to/ca.pem in \
                 database.url to the CA that signed it (sslmode=require encrypts without \
                 checking the certificate)"
            }
            TlsTrouble::WrongName => {
                "the server's certificate does not name the host in database.url: connect by a \
                 name the certificate lists, or give the server a certificate that names this \
                 host"
            }
            TlsTrouble::Expired => {
                "the server's certificate has expired or is not valid yet: renew it (or check \
                 this machine's clock)"
            }
            TlsTrouble::NotOffered => {
                "the server does not accept TLS connections: turn ssl on in its \
                 postgresql.conf, or lower sslmode in database.url"
            }
            TlsTrouble::Refused => {
                "the server refused the TLS handshake: check the client certificate (sslcert, \
                 sslkey in database.url) and the server's ssl settings"
            }
            TlsTrouble::Files => {
                "a file named in database.url (sslrootcert, sslcert, sslkey) is missing, \
                 unreadable or not PEM: check the path and the mounted Secret"
            }
            TlsTrouble::Other => {
                "the TLS handshake with the server failed: check sslmode, sslrootcert, sslcert \
                 and sslkey in database.url"
            }
        }
    }
}

/// Whether `e` is a failure to set up TLS, and which. A certificate the client refuses is
/// reported by the TLS library inside an I/O error; the driver's own TLS errors are
/// [`sqlx::Error::Tls`].
pub fn tls_trouble(e: &sqlx::Error) -> Option<TlsTrouble> {
    use tokio_rustls::rustls::{CertificateError as C, Error as R};
    match e {
        sqlx::Error::Tls(inner) => {
            let text = inner.to_string();
            Some(if text.contains("does not support TLS") {
                TlsTrouble::NotOffered
            } else if text.contains("certificate") || text.contains("key") {
                TlsTrouble::Files
            } else {
                TlsTrouble::Other
            })
        }
        // The driver's complaints about sslcert/sslkey ("no keys found pem file", "... must be
        // given together"); not our own reading of the URL, which says what to do itself.
        sqlx::Error::Configuration(inner)
            if inner.downcast_ref::<super::UrlError>().is_none()
                && inner.to_string().contains("key") =>
        {
            Some(TlsTrouble::Files)
        }
        // Reading sslrootcert, sslcert or sslkey (a TCP connection never says "not found").
        sqlx::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            Some(TlsTrouble::Files)
        }
        sqlx::Error::Io(io) => {
            let rustls = io.get_ref().and_then(|i| i.downcast_ref::<R>())?;
            Some(match rustls {
                R::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
                    TlsTrouble::WrongName
                }
                R::InvalidCertificate(
                    C::Expired
                    | C::ExpiredContext { .. }
                    | C::NotValidYet
                    | C::NotValidYetContext { .. },
                ) => TlsTrouble::Expired,
                R::InvalidCertificate(_) => TlsTrouble::Untrusted,
                R::AlertReceived(_) => TlsTrouble::Refused,
                _ => TlsTrouble::Other,
            })
        }
        _ => None,
    }
}

/// What to grant for an "insufficient privilege" error, from what PostgreSQL says was refused.
fn privilege_hint(e: &sqlx::Error, role: &str) -> String {
    let message = match e {
        sqlx::Error::Database(db) => db.message(),
        _ => "",
    };
    if message.contains("must be owner") {
        format!(
            "creating and dropping partitions needs the owner of audit_events: run maintain as \
             that role, or ALTER TABLE audit_events OWNER TO {role}"
        )
    } else if message.contains("for schema") {
        format!(
            "the database role {role} may not use or create in the schema; as its owner run: \
             GRANT USAGE, CREATE ON SCHEMA public TO {role}"
        )
    } else {
        format!(
            "the database role {role} lacks a privilege; as the table owner run: \
             GRANT SELECT, INSERT ON audit_events TO {role}"
        )
    }
}

/// What `e` says about the database (see the module documentation).
///
/// Record-specific, and only these: data exceptions (class 22: a value PostgreSQL cannot take,
/// e.g. an untranslatable character), NOT NULL (23502), CHECK (23514 naming a constraint),
/// foreign key (23503), unique (23505, a unique index beyond the key) and exclusion (23P01)
/// violations, and an index row too large for one row (54000).
///
/// Transient: connection exceptions (08), transaction rollbacks (40: serialization, deadlock),
/// "no partition for row" (23514 without a constraint: created on retry), a lock not available
/// (55P03, 55006), operator intervention (57: cancel, admin or crash shutdown, server starting),
/// and client-side connection trouble (I/O, protocol, pool timeout). TLS that cannot be set
/// up ([`tls_trouble`]: an untrusted certificate, a missing CA file) is systemic.
///
/// Everything else is systemic, notably insufficient privilege (42501), undefined table, column
/// or function (42P01, 42703, 42883) and every other class-42 error (our statements are fixed,
/// so a syntax or definition error means the table changed), a missing schema (3F000) or
/// database (3D000), authentication (28), resources (53: disk full, out of memory, too many
/// connections), system errors (58, XX), triggers raising errors (P0), configuration errors and
/// results the code cannot decode.
pub fn classify(e: &sqlx::Error) -> ErrorClass {
    use ErrorClass::*;
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match (code.get(..2).unwrap_or(""), code.as_str()) {
                ("22", _) => RecordSpecific,
                // "no partition of relation … found for row" names no constraint.
                (_, "23514") if db.constraint().is_none() => Transient,
                (_, "23502" | "23503" | "23505" | "23514" | "23P01") => RecordSpecific,
                (_, "54000") => RecordSpecific,
                ("08" | "40" | "57", _) | (_, "55P03" | "55006") => Transient,
                _ => Systemic,
            }
        }
        // Certificates and TLS settings do not fix themselves.
        _ if tls_trouble(e).is_some() => Systemic,
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Transient,
        _ => Systemic,
    }
}

/// Whether the same statement may succeed later: anything but a verdict on one row's data
/// (see [`classify`]).
pub fn is_retriable(e: &sqlx::Error) -> bool {
    classify(e) != ErrorClass::RecordSpecific
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::borrow::Cow;

    #[derive(Debug)]
    struct FakeDbError {
        code: &'static str,
        constraint: Option<&'static str>,
        message: &'static str,
    }
    impl fmt::Display for FakeDbError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "fake {}", self.code)
        }
    }
    impl std::error::Error for FakeDbError {}
    impl sqlx::error::DatabaseError for FakeDbError {
        fn message(&self) -> &str {
            self.message
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.code))
        }
        fn constraint(&self) -> Option<&str> {
            self.constraint
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

    /// A database error with SQLSTATE `code` (for tests elsewhere in the crate too).
    pub(crate) fn db_error(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(FakeDbError {
            code,
            constraint: None,
            message: "fake",
        }))
    }

    fn db(code: &'static str) -> sqlx::Error {
        db_error(code)
    }

    fn db_constraint(code: &'static str, constraint: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(FakeDbError {
            code,
            constraint: Some(constraint),
            message: "fake",
        }))
    }

    #[test]
    fn connection_trouble_is_transient() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(classify(&sqlx::Error::Io(io)), ErrorClass::Transient);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Transient);
        for (code, what) in [
            ("57P01", "admin shutdown"),
            ("57P03", "cannot connect now"),
            ("57014", "query canceled"),
            ("08006", "connection failure"),
            ("40P01", "deadlock"),
            ("40001", "serialization failure"),
            ("55P03", "lock not available"),
        ] {
            assert_eq!(classify(&db(code)), ErrorClass::Transient, "{code} {what}");
        }
    }

    #[test]
    fn missing_partition_is_transient_but_a_check_constraint_is_the_row() {
        assert_eq!(classify(&db("23514")), ErrorClass::Transient);
        assert_eq!(
            classify(&db_constraint("23514", "audit_events_outcome_check")),
            ErrorClass::RecordSpecific
        );
    }

    /// The regression this policy exists for: a revoked privilege or a changed table used to be
    /// "permanent", so the sink dead-lettered the whole stream.
    #[test]
    fn privilege_schema_auth_and_resources_are_systemic() {
        for (code, what) in [
            ("42501", "insufficient privilege"),
            ("42703", "undefined column"),
            ("42P01", "undefined table"),
            ("42883", "undefined function"),
            ("42804", "datatype mismatch"),
            ("42601", "syntax error"),
            ("3F000", "invalid schema name"),
            ("3D000", "invalid catalog name"),
            ("28000", "invalid authorization"),
            ("28P01", "invalid password"),
            ("53100", "disk full"),
            ("53200", "out of memory"),
            ("53300", "too many connections"),
            ("58030", "io error"),
            ("XX000", "internal error"),
            ("P0001", "raised by a trigger"),
            ("25006", "read-only transaction"),
            ("0A000", "feature not supported"),
        ] {
            assert_eq!(classify(&db(code)), ErrorClass::Systemic, "{code} {what}");
            assert!(is_retriable(&db(code)), "{code} {what}");
        }
        let config = sqlx::Error::Configuration("bad url".into());
        assert_eq!(classify(&config), ErrorClass::Systemic);
        assert_eq!(
            classify(&sqlx::Error::ColumnNotFound("x".into())),
            ErrorClass::Systemic
        );
    }

    #[test]
    fn bad_data_is_record_specific() {
        for (code, what) in [
            ("22P05", "untranslatable character"),
            ("22021", "invalid byte sequence"),
            ("22008", "datetime field overflow"),
            ("23502", "not null violation"),
            ("23503", "foreign key violation"),
            ("54000", "index row too large"),
        ] {
            assert_eq!(
                classify(&db(code)),
                ErrorClass::RecordSpecific,
                "{code} {what}"
            );
            assert!(!is_retriable(&db(code)), "{code} {what}");
        }
    }

    #[test]
    fn systemic_override_wins_over_the_sqlstate() {
        let e = StoreError::new("inserting 1 rows", db("23502"));
        assert!(!e.is_retriable());
        let e = e.systemic("inserting 4 rows: every row failed");
        assert_eq!(e.class(), ErrorClass::Systemic);
        assert!(e.is_retriable());
        assert!(e.to_string().contains("[SQLSTATE 23502]"), "{e}");
        assert!(
            e.to_string().contains("the table itself rejects rows"),
            "{e}"
        );
    }

    #[test]
    fn message_tells_what_to_check() {
        let e = StoreError::new("inserting 3 rows", sqlx::Error::PoolTimedOut);
        let text = e.to_string();
        assert!(text.contains("inserting 3 rows"), "{text}");
        assert!(text.contains("database.url"), "{text}");
    }

    #[test]
    fn tls_failures_are_systemic_and_say_what_to_set() {
        use tokio_rustls::rustls::{CertificateError, Error as Rustls};
        let refused =
            |e: Rustls| sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        let cases = [
            (
                refused(Rustls::InvalidCertificate(CertificateError::UnknownIssuer)),
                "not trusted: set sslrootcert=",
            ),
            (
                refused(Rustls::InvalidCertificate(
                    CertificateError::NotValidForName,
                )),
                "does not name the host",
            ),
            (
                refused(Rustls::InvalidCertificate(CertificateError::Expired)),
                "has expired",
            ),
            (
                sqlx::Error::Tls("server does not support TLS".into()),
                "does not accept TLS",
            ),
            (
                sqlx::Error::Io(std::io::ErrorKind::NotFound.into()),
                "sslrootcert, sslcert, sslkey) is missing",
            ),
        ];
        for (e, hint) in cases {
            assert_eq!(classify(&e), ErrorClass::Systemic, "{e}");
            let text = StoreError::new("connecting", e).to_string();
            assert!(text.contains(hint), "{text}");
        }
        // Our own refusal of the URL carries its own remedy, not a file hint.
        let url =
            crate::store::connect_options("postgres://h/d?sslkey=/k&sslpassword=x").unwrap_err();
        let e = sqlx::Error::Configuration(Box::new(url));
        assert!(tls_trouble(&e).is_none());
        // A dropped connection stays transient.
        let reset = sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(classify(&reset), ErrorClass::Transient);
        assert!(tls_trouble(&reset).is_none());
    }

    #[test]
    fn privilege_report_names_the_sqlstate_and_the_grant() {
        let e = StoreError::new("copying 3 rows", db("42501"));
        let text = e.report(Some("audit_writer"));
        assert!(text.contains("[SQLSTATE 42501]"), "{text}");
        assert!(
            text.contains("GRANT SELECT, INSERT ON audit_events TO audit_writer"),
            "{text}"
        );
        assert!(text.contains("nothing is skipped"), "{text}");
    }

    #[test]
    fn ownership_and_schema_privileges_get_their_own_remedy() {
        let owner = sqlx::Error::Database(Box::new(FakeDbError {
            code: "42501",
            constraint: None,
            message: "must be owner of table audit_events",
        }));
        let text = StoreError::new("creating partition", owner).report(Some("w"));
        assert!(text.contains("OWNER TO w"), "{text}");
        let schema = sqlx::Error::Database(Box::new(FakeDbError {
            code: "42501",
            constraint: None,
            message: "permission denied for schema public",
        }));
        let text = StoreError::new("applying the schema", schema).report(Some("w"));
        assert!(text.contains("ON SCHEMA public TO w"), "{text}");
    }
}
