//! Forgetting a data subject: the audit event first, durably, then the keys.
//!
//! Steps, each safe to repeat:
//! 1. the subject's pseudonyms under every HMAC key generation, and its live keys;
//! 2. the event `org.openg2p.auditmanager.subject.forgotten` (who, when, why, the pseudonym
//!    only) stored in `audit_events` and committed — unless an earlier run already stored one
//!    after the subject's newest key was made (a rerun after a crash records no second event);
//! 3. the keys destroyed and the subject marked forgotten, in one transaction (then the table
//!    vacuumed, so the destroyed keys' old row versions leave the table file).
//!
//! A crash between 2 and 3 leaves the event without the deletion: the rerun finds the event and
//! deletes. A key is never deleted before its event is committed.

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;

use super::Privacy;
use crate::store::Store;
use crate::store::subject_keys as table;

/// The type of the event recording a forget.
pub const FORGOTTEN_TYPE: &str = "org.openg2p.auditmanager.subject.forgotten";
/// Its `source`.
pub const SOURCE: &str = "/audit-manager/privacy";

/// What a forget did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ForgetReport {
    /// The pseudonym the event names (current key generation).
    pub pseudonym: String,
    /// Whether this run stored the event (false: an earlier run had).
    pub event_recorded: bool,
    /// Subject keys destroyed by this run.
    pub keys_destroyed: u64,
    /// Stored rows holding values under the destroyed keys (now unreadable).
    pub rows_unreadable: i64,
    /// Where a recoverable copy may still be, and until when.
    pub residue: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error("forget needs privacy.hmac_key_file: subjects are named by their pseudonyms")]
    NoHmacKey,
    #[error("the subject must not be empty")]
    EmptySubject,
    #[error("the reason must not be empty: it is recorded in the forget event")]
    EmptyReason,
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the forget event could not be built: {0}")]
    Event(String),
}

/// A step a test may stop the process at (`failpoints` builds only).
#[allow(unused_variables)]
fn step(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("AUDIT_MANAGER_FORGET_PAUSE_AT").is_ok_and(|s| s == name) {
        eprintln!("forget paused at {name}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Forgets `subject`: the event in `audit` (attested as `audit` attests), then its keys in
/// `keys`. `who` is recorded as the actor.
pub async fn forget(
    privacy: &Privacy,
    audit: &Store,
    keys: &PgPool,
    subject: &str,
    reason: &str,
    who: &str,
    residue: Vec<String>,
) -> Result<ForgetReport, ForgetError> {
    if subject.is_empty() {
        return Err(ForgetError::EmptySubject);
    }
    if reason.trim().is_empty() {
        return Err(ForgetError::EmptyReason);
    }
    let hmac = privacy.hmac().ok_or(ForgetError::NoHmacKey)?;
    let pseudonyms = hmac.all_pseudonyms(subject);
    let pseudonym = hmac.current.pseudonym(subject);
    table::prepare(keys).await?;
    let live = table::live_ids(keys, &pseudonyms).await?;
    let newest_key = table::newest_key_at(keys, &pseudonyms).await?;
    let last_event = table::latest_event_about(audit.pool(), FORGOTTEN_TYPE, &pseudonym).await?;
    let already = table::is_forgotten(keys, &pseudonyms).await?;
    let recorded = match (last_event, newest_key) {
        (Some(ev), Some(key)) => ev >= key,
        (Some(_), None) => true,
        (None, _) => false,
    };
    step("before-event");
    let event_recorded = if recorded || (already && live.is_empty() && last_event.is_some()) {
        false
    } else {
        let row = event_row(&pseudonym, &pseudonyms, reason, who)?;
        audit.insert(&[row]).await?;
        true
    };
    step("after-event");
    let rows_unreadable = table::count_values(audit.pool(), &live).await?;
    step("before-delete");
    let keys_destroyed = table::forget(keys, &pseudonyms).await?;
    step("after-delete");
    Ok(ForgetReport {
        pseudonym,
        event_recorded,
        keys_destroyed,
        rows_unreadable,
        residue,
    })
}

/// The forget event as a row (validated as any ingested event is).
fn event_row(
    pseudonym: &str,
    pseudonyms: &[String],
    reason: &str,
    who: &str,
) -> Result<crate::event::Row, ForgetError> {
    let now = Utc::now();
    let ev = json!({
        "specversion": "1.0",
        "id": crate::event::new_event_id(now),
        "source": SOURCE,
        "type": FORGOTTEN_TYPE,
        "time": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "subject": pseudonym,
        "data": {
            "actor": {"type": "user", "id": who},
            "action": "forget",
            "outcome": "success",
            "reason": reason,
            "resource": {"type": "data_subject", "id": pseudonym},
            "context": {"pseudonyms": pseudonyms},
        }
    });
    let bytes = serde_json::to_vec(&ev).map_err(|e| ForgetError::Event(e.to_string()))?;
    crate::event::row_from_record(&bytes, now, crate::event::ValidationMode::Strict)
        .map_err(|e| ForgetError::Event(e.to_string()))
}

/// What may still hold a recoverable copy of a forgotten subject's values, for `config`.
pub fn residue(config: &crate::config::Config) -> Vec<String> {
    let mut out = vec![
        format!(
            "Kafka topic {:?}: records of the last retention period hold the values sealed to \
             the keeper key, readable by whoever holds privacy.keeper_key_file until the \
             topic's retention.ms passes",
            config.kafka.topic
        ),
        format!(
            "Kafka topic {:?} (dead letters): the same, until its retention passes or `dlq` \
             tooling removes them",
            config.kafka.dlq_topic
        ),
        "spools of ingest nodes: records not yet forwarded (normally seconds), sealed the same \
         way"
        .to_string(),
        format!(
            "running writers may use the destroyed key for up to {}s (their cache); values \
             stored under it are unreadable all the same",
            super::subject_keys::CACHE_TTL.as_secs()
        ),
        "backups and WAL archives of the subject key database: the wrapped key, until those \
         backups expire (keep them short; see docs/privacy.md)"
            .to_string(),
    ];
    if config.privacy.keys_database_url.is_none() {
        out.push(
            "backups of the audit database: the subject keys live there too (set \
             privacy.keys_database_url to keep them apart)"
                .to_string(),
        );
    }
    out
}
