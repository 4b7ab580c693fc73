//! The `ingest` role: the HTTP API writes accepted events into the spool (`api::ingest`). It
//! has no task of its own besides the listener, which `serve` runs for every role; this is its
//! `/health` check.

use std::sync::Arc;

use serde_json::json;

use crate::auth::Authenticator;
use crate::config::Role;
use crate::health::{Check, RoleReport, Status};
use crate::role::{RoleContext, Started};
use crate::shutdown::Task;
use crate::spool::{Room, Spool, now_ms};

/// Starts the ingest role (its check; the listener is `serve`'s).
pub fn start(ctx: &RoleContext) -> anyhow::Result<Started> {
    let check = health_check(
        ctx.spool()?.clone(),
        ctx.auth.clone(),
        ctx.config.ingest.max_event_bytes,
    );
    Ok(Started::new(Role::Ingest, check, &[Task::Http]))
}

/// DOWN (AUD-009) while spool writes fail; DEGRADED while the spool is at least 90% full
/// ([`Room::Low`]), holds quarantined records, or a changed `auth.tokens_file` cannot be used.
fn health_check(spool: Spool, auth: Option<Authenticator>, max_event_bytes: u64) -> Check {
    Arc::new(move || {
        let s = spool.stats();
        let mut detail = serde_json::Map::new();
        detail.insert(
            "spool".into(),
            json!({
                "events": s.live_events,
                "bytes": s.live_bytes,
                "max_bytes": s.max_bytes,
                "oldest_event_age_seconds": s.oldest_age_secs(now_ms()),
                "quarantined": s.quarantined,
                "quarantined_bytes": s.quarantined_bytes,
                "used_bytes": s.used_bytes(),
            }),
        );
        let mut report = RoleReport::up(detail);
        if let Err(e) = spool.health() {
            report.status = Status::Down;
            report.code = Some("AUD-009");
            report.reason = Some(format!("spool writes are failing: {e}"));
            return report;
        }
        let mut degraded = Vec::new();
        // Quarantined records count toward the bound too (a quarantine flood fills it).
        if s.room(max_event_bytes) >= Room::Low {
            degraded.push(
                "spool is at least 90% full (live events plus quarantine): ingest answers 503 \
                 AUD-004 once it is full; check the forwarder and Kafka, and the quarantine"
                    .to_owned(),
            );
        }
        if s.quarantined > 0 {
            degraded.push(format!(
                "{} record(s) in the spool quarantine (refused by Kafka or found damaged), \
                 not being delivered; inspect them with `audit-manager spool export --quarantine` \
                 and, once the cause is fixed, `audit-manager spool requeue` them",
                s.quarantined
            ));
        }
        if let Some(problem) = auth.as_ref().and_then(Authenticator::problem) {
            degraded.push(problem);
        }
        if !degraded.is_empty() {
            report.status = Status::Degraded;
            report.reason = Some(degraded.join("; "));
        }
        report
    })
}

#[cfg(test)]
mod tests {
    use crate::spool::{Room, SpoolStats};

    fn stats(live_bytes: u64, quarantined_bytes: u64, max_bytes: u64) -> SpoolStats {
        SpoolStats {
            live_events: 1,
            live_bytes,
            max_bytes,
            oldest_accepted_ms: 0,
            quarantined: 0,
            quarantined_bytes,
        }
    }

    #[test]
    fn the_spool_warns_from_90_percent_and_is_full_below_one_large_event() {
        // 1 MiB events, 100 MiB bound: full once less than 1 MiB is free.
        let (event, max) = (1 << 20, 100 << 20);
        assert_eq!(stats(89 << 20, 0, max).room(event), Room::Ample);
        assert_eq!(stats(90 << 20, 0, max).room(event), Room::Low);
        assert_eq!(stats(99 << 20, 0, max).room(event), Room::Low);
        assert_eq!(stats((99 << 20) + 1, 0, max).room(event), Room::Full);
        // The quarantine counts toward the bound.
        assert_eq!(stats(50 << 20, (49 << 20) + 1, max).room(event), Room::Full);
        // A small bound: a tenth of it is the headroom.
        assert_eq!(stats(900, 0, 1000).room(event), Room::Low);
        assert_eq!(stats(901, 0, 1000).room(event), Room::Full);
    }

    #[test]
    fn a_full_spool_is_also_low() {
        for max in [1u64, 9, 10, 999, 1000, 1 << 30] {
            for used in [0, max / 2, max * 9 / 10, max - max / 10, max - 1, max] {
                let room = stats(used, 0, max).room(4096);
                if room == Room::Full {
                    assert!(used * 10 >= max * 9, "max {max} used {used}");
                }
            }
        }
    }
}
