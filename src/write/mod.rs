//! The storing half every writer of `audit_events` shares: the sink (records from Kafka) and the
//! direct writer of the forward role (`forward.target: postgres`, records from the spool).
//!
//! ```text
//!   bytes ──decode──▶ Row ──store_rows──▶ store::insert (COPY/UNNEST, duplicates collapse,
//!     │                                   │              partitions on demand, seal lock)
//!     └─ DeadReason                       └─ rows the database refuses, each with its reason
//! ```
//!
//! - [`decode`]: one spooled or consumed value → its row, with the ingest's validation, or why
//!   it can never be stored. Every row is made here, so a step that must see each row before it
//!   is stored belongs in this function.
//! - [`store_rows`] / [`insert_bisecting`]: the batch insert; a batch failing with a
//!   record-specific error is split until the refused rows are isolated, while a failure that
//!   would hit every row (a revoked privilege, a changed table, an outage) aborts the whole
//!   batch for the caller to retry: it never turns into dead letters (guarantee 7).
//!
//! What happens to a dead letter is the caller's business: the sink produces it to the DLQ
//! topic, the direct writer inserts it into `audit_dead_letters`.

use chrono::{DateTime, Utc};

use crate::event::{Row, ValidationMode, row_from_record_counted};
use crate::store::{Inserted, Operation, Store, StoreError};

/// Why a record can never be stored: a stable `kind` (metric label, header prefix, the
/// `reason` column of `audit_dead_letters`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadReason {
    pub kind: &'static str,
    pub message: String,
}

impl DeadReason {
    /// The `x-audit-error` header value: `kind: message`.
    pub fn header(&self) -> String {
        format!("{}: {}", self.kind, self.message)
    }
}

/// One value's fate: its row (decoded with the ingest's validation, in the same `mode`), or why
/// it can never be stored. `None` is a value-less record (a Kafka tombstone). Events older than
/// `cutoff` (the start of the oldest retained month) are not stored.
///
/// `privacy` is applied first ([`crate::privacy::Privacy::at_store`]: values sealed at ingest
/// are re-encrypted under their subject's key, and the rules are applied to a record that
/// arrived unprocessed). A record it cannot treat is not stored; it holds nothing in the clear
/// that the rules would have removed (sealed values stay sealed in the dead letter).
pub fn decode(
    value: Option<&[u8]>,
    now: DateTime<Utc>,
    cutoff: Option<DateTime<Utc>>,
    mode: ValidationMode,
    privacy: &crate::privacy::Privacy,
) -> Result<Row, DeadReason> {
    let Some(value) = value else {
        return Err(DeadReason {
            kind: "undecodable",
            message: "record has no value (tombstone)".into(),
        });
    };
    let value = privacy.at_store(value).map_err(|e| DeadReason {
        kind: "privacy",
        message: e.to_string(),
    })?;
    match row_from_record_counted(&value, now, mode) {
        // Only rewrites are counted here: tolerated values were counted at ingest.
        Ok((row, rules)) => match cutoff {
            Some(c) if row.occurred_at < c => Err(DeadReason {
                kind: "retention-expired",
                message: format!(
                    "occurred_at {} is before the retention cutoff {} \
                     (database.partition_retention_months)",
                    row.occurred_at.to_rfc3339(),
                    c.to_rfc3339()
                ),
            }),
            _ => {
                crate::metrics::count_normalizations(rules.rewrites());
                Ok(row)
            }
        },
        Err(e) => {
            let message = e.to_string();
            let message = message
                .strip_prefix(&format!("{}: ", e.kind()))
                .unwrap_or(&message)
                .to_owned();
            Err(DeadReason {
                kind: e.kind(),
                message,
            })
        }
    }
}

/// The reason kind of a row the database refused for its own data.
pub const UNSTORABLE: &str = "unstorable";

/// [`insert_bisecting`], with each refused row's error as a [`DeadReason`] (kind
/// [`UNSTORABLE`]), by index into `rows`.
pub async fn store_rows(
    store: &Store,
    rows: &[Row],
) -> Result<(Inserted, Vec<(usize, DeadReason)>), StoreError> {
    let (inserted, refused) = insert_bisecting(store, rows).await?;
    let dead = refused
        .into_iter()
        .map(|(i, e)| {
            (
                i,
                DeadReason {
                    kind: UNSTORABLE,
                    message: e.to_string(),
                },
            )
        })
        .collect();
    Ok((inserted, dead))
}

/// Inserts `rows`; a batch failing with a record-specific (data) error is split in halves until
/// the offending rows are isolated. Returns what was inserted and the rows that can never be
/// stored, by index. A transient or systemic error aborts with `Err` (the caller retries
/// everything, skipping nothing).
///
/// The bisection guard: a data error that hits every row is the table's doing (a column added
/// as NOT NULL, a changed type, a trigger), not the rows'. It is systemic when a neutral probe
/// row fails with the same SQLSTATE, or when bisection stores nothing and every row (at least
/// two) fails with the same SQLSTATE.
pub async fn insert_bisecting(
    store: &Store,
    rows: &[Row],
) -> Result<(Inserted, Vec<(usize, StoreError)>), StoreError> {
    let mut total = Inserted::default();
    let mut bad: Vec<(usize, StoreError)> = Vec::new();
    let mut stack = Vec::with_capacity(8);
    stack.push(0..rows.len());
    let mut whole_batch = true;
    while let Some(range) = stack.pop() {
        match store.insert(&rows[range.clone()]).await {
            Ok(n) => {
                total.rows += n.rows;
                total.duplicates += n.duplicates;
            }
            Err(e) if e.is_retriable() => return Err(e),
            Err(e) => {
                if whole_batch {
                    probe_table(store, &rows[0], &e).await?;
                }
                if range.len() == 1 {
                    bad.push((range.start, e));
                } else {
                    let mid = range.start + range.len() / 2;
                    stack.push(mid..range.end);
                    stack.push(range.start..mid);
                }
            }
        }
        whole_batch = false;
    }
    if let Some(e) = every_row_failed_alike(rows.len(), total, &mut bad) {
        let r = Err(e);
        store.observe_as(Operation::Write, &r);
        return r;
    }
    Ok((total, bad))
}

/// After a whole batch failed with the record-specific error `e`: `Err` (systemic) when a
/// neutral probe row fails with the same SQLSTATE, or the probe itself fails for another
/// reason that is not a verdict on a row.
async fn probe_table(store: &Store, like: &Row, e: &StoreError) -> Result<(), StoreError> {
    match store.probe_insert(like).await {
        Ok(()) => Ok(()),
        Err(p) if p.code().is_some() && p.code() == e.code() => {
            let what = format!(
                "{}: a probe row fails the same way, so audit_events rejects every row",
                e.what
            );
            let r = Err(p.systemic(what));
            store.observe_as(Operation::Write, &r);
            r
        }
        Err(p) if p.is_retriable() => Err(p),
        // The probe's own data error: no evidence either way; bisection decides.
        Err(_) => Ok(()),
    }
}

/// The bisection guard's second half: nothing of `rows` was stored and every one of them (at
/// least two) failed with one SQLSTATE. Takes that error out of `bad`, marked systemic.
fn every_row_failed_alike(
    rows: usize,
    stored: Inserted,
    bad: &mut Vec<(usize, StoreError)>,
) -> Option<StoreError> {
    if rows < 2 || bad.len() != rows || stored.rows + stored.duplicates > 0 {
        return None;
    }
    let code = bad.first()?.1.code()?;
    if bad
        .iter()
        .any(|(_, e)| e.code().as_deref() != Some(code.as_str()))
    {
        return None;
    }
    let (_, e) = bad.swap_remove(0);
    bad.clear();
    Some(e.systemic(format!(
        "inserting {rows} rows: every row failed the same way, so audit_events rejects rows of \
         this shape"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::error::tests::db_error;

    fn failed(codes: &[&'static str]) -> Vec<(usize, StoreError)> {
        codes
            .iter()
            .enumerate()
            .map(|(i, c)| (i, StoreError::new("inserting 1 rows", db_error(c))))
            .collect()
    }

    #[test]
    fn every_row_failing_alike_is_systemic() {
        let mut bad = failed(&["23502", "23502", "23502"]);
        let e = every_row_failed_alike(3, Inserted::default(), &mut bad).expect("systemic");
        assert!(e.is_retriable());
        assert_eq!(e.code().as_deref(), Some("23502"));
        assert!(bad.is_empty(), "nothing is dead-lettered");
    }

    #[test]
    fn bad_rows_among_good_ones_or_mixed_errors_are_dead_lettered() {
        let stored = Inserted {
            rows: 1,
            duplicates: 0,
        };
        let mut bad = failed(&["22P05", "22P05"]);
        assert!(every_row_failed_alike(3, Inserted::default(), &mut bad).is_none());
        assert!(every_row_failed_alike(2, stored, &mut bad).is_none());
        let mut mixed = failed(&["22P05", "23502"]);
        assert!(every_row_failed_alike(2, Inserted::default(), &mut mixed).is_none());
        assert_eq!(mixed.len(), 2);
        let mut single = failed(&["22P05"]);
        assert!(
            every_row_failed_alike(1, Inserted::default(), &mut single).is_none(),
            "one row alone is judged by the probe row"
        );
    }

    #[test]
    fn a_tombstone_and_bytes_that_are_no_event_are_dead_letters_with_their_kind() {
        let now = Utc::now();
        let kind = |v: Option<&[u8]>| {
            decode(
                v,
                now,
                None,
                ValidationMode::Strict,
                &crate::privacy::Privacy::none(),
            )
            .map(|_| ())
        };
        assert_eq!(kind(None).unwrap_err().kind, "undecodable");
        assert_eq!(kind(Some(b"nope")).unwrap_err().kind, "undecodable");
    }
}
