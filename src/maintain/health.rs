//! The `/health` check of the maintain role.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::archive::ArchiveState;
use crate::health::{Check, Status};
use crate::integrity::sealer::SealerState;
use crate::store::Store;

/// The database check, and DEGRADED while the sealer lags more than three seal intervals
/// behind or fails, or has refused rows without a writer attestation; DOWN while the database's
/// seals disagree with their off-database copy.
pub fn check(
    store: Store,
    sealer: Option<SealerState>,
    interval: Duration,
    archive: Option<ArchiveState>,
) -> Check {
    let db = crate::health::database_check(store);
    let sealing: Check = Arc::new(move || {
        let mut report = db();
        let Some(sealer) = &sealer else {
            report.detail.insert(
                "sealing".into(),
                json!("off (no integrity.signing_key_file)"),
            );
            return report;
        };
        let s = sealer
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        report.detail.insert(
            "sealing".into(),
            json!({
                "lag_seconds": s.lag_seconds,
                "last_seal": s.last_seal,
                "unpublished": s.unpublished,
                "attestation": match (s.attestation, s.attestation_waiting) {
                    (false, _) => "off (no writer key)",
                    (true, true) => "waiting for the first attested write",
                    (true, false) => "on",
                },
                "unattested_rows": s.unattested,
            }),
        );
        if report.status != Status::Up {
            return report;
        }
        if let Some(m) = &s.tip_mismatch {
            report.status = Status::Down;
            report.reason = Some(format!("sealing refused: {m}"));
            return report;
        }
        let limit = 3.0 * interval.as_secs_f64();
        let reason = match (&s.error, s.lag_seconds > limit) {
            // First: a refused row also fails the self-check of the seal whose range holds it.
            _ if s.unattested > 0 => Some(format!(
                "{} stored row(s) without a valid writer attestation were not sealed (inserted \
                 or changed behind the sink's back, or stored by a writer without \
                 integrity.writer_key_file); run `audit-manager verify`",
                s.unattested
            )),
            _ if s.selfcheck.is_some() => s
                .selfcheck
                .as_ref()
                .map(|p| format!("the seal self-check failed: {p}")),
            (Some(e), _) => Some(format!("sealing is failing: {e}")),
            (None, true) => Some(format!(
                "the oldest unsealed row is {:.0}s old, more than 3 x integrity.seal_interval; \
                 check the sealer's log",
                s.lag_seconds
            )),
            _ => None,
        };
        if let Some(reason) = reason {
            report.status = Status::Degraded;
            report.reason = Some(reason);
        }
        report
    });
    Arc::new(move || {
        let mut report = sealing();
        if let Some(archive) = &archive {
            archive_health(&mut report, archive);
        }
        report
    })
}

/// Archiving's part of the report: DEGRADED while the last archive pass failed (the object
/// store unreachable or refusing) or retention keeps an expired month that is not fully
/// archived.
fn archive_health(report: &mut crate::health::RoleReport, archive: &ArchiveState) {
    let s = archive
        .lock()
        .map(|s| s.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    report.detail.insert(
        "archive".into(),
        json!({
            "last_pass": s.last_pass.map(|t| t.to_rfc3339()),
            "error": s.error,
            "retention_blocked": s.blocked.iter().map(|(p, why)| json!({"partition": p, "reason": why})).collect::<Vec<_>>(),
        }),
    );
    if report.status != Status::Up {
        return;
    }
    let reason = match (&s.error, s.blocked.first()) {
        (Some(e), _) => Some(format!(
            "archiving is failing: {e}; check archive.url and the object store's credentials"
        )),
        (None, Some((p, why))) => Some(format!(
            "retention is blocked: {} expired partition(s) are kept because not every row is in \
             a verified archive (first: {p}: {why}); run audit-manager archive run",
            s.blocked.len()
        )),
        _ => None,
    };
    if let Some(reason) = reason {
        report.status = Status::Degraded;
        report.reason = Some(reason);
    }
}
