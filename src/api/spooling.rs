//! Appending a request's records to the spool: one commit, after which they are durable (fsynced),
//! and every refusal of the spool mapped to its documented error. Ingest and the query role's
//! read records both write this way.

use super::error::ApiError;
use super::state::AppState;
use crate::event::NormalizedEvent;
use crate::spool::{AppendError, Record};

/// The spool record of an accepted event.
pub(super) fn to_record(e: NormalizedEvent, accepted_at_ms: u64) -> Record {
    Record {
        accepted_at_ms,
        id: e.id,
        key: e.key,
        value: e.json,
    }
}

/// Spools the records in one commit and maps refusals to their documented errors.
pub(super) async fn spool(state: &AppState, records: &[Record]) -> Result<(), ApiError> {
    let Some(spool) = &state.spool else {
        return Err(ApiError::NotReady {
            message: "the ingest role is not enabled in this process".into(),
            retry_after: state.config.spool.retry_after,
        });
    };
    let retry_after = state.config.spool.retry_after;
    match spool.append(records).await {
        Ok(_) => {
            metrics::counter!("audit_events_accepted_total").increment(records.len() as u64);
            Ok(())
        }
        Err(e @ (AppendError::Full { .. } | AppendError::Overloaded)) => {
            Err(ApiError::Backpressure {
                message: format!(
                    "{e}; nothing was stored, retry after the Retry-After delay \
                     (operators: check the forwarder and Kafka)"
                ),
                retry_after,
            })
        }
        Err(e @ AppendError::Storage(_)) => Err(ApiError::SpoolWrite {
            message: format!("{e}; nothing was stored, retry after the Retry-After delay"),
            retry_after,
        }),
        Err(AppendError::Closed) => Err(ApiError::NotReady {
            message: "shutting down; nothing was stored, retry".into(),
            retry_after,
        }),
    }
}
